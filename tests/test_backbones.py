"""The opt-in EfficientNet-Lite1 / -Lite2 extractors, with weights the tests make.

The real weights packages (extra ``backbones``) are not needed: a fake package module hands out
a small Lite1-shaped checkpoint written by ``torchfmt`` (the loading path is the real one: import,
``get_model_file_path``, sha256 pin, ``load_torch_state_dict``, graph build, cache, ONNX Runtime).
"""

from __future__ import annotations

import sys
import types
from pathlib import Path

import numpy as np
import pytest

from torchfmt import save_zip
from varsitysrch import MissingDependencyError, ModelFileError, _extractors, get_extractor
from varsitysrch._extractors import Embedder, _sha256_file

# (expand ratio, kernel, stride, out channels): a Lite1-like layout in miniature -- a stage
# repeated (skip connections), an expansion-free first block, 3x3 and 5x5 depthwise kernels
_BLOCKS = [(1, 3, 1, 4), (6, 3, 2, 6), (6, 3, 1, 6), (6, 5, 2, 10), (6, 5, 1, 10)]
_STEM, _HEAD, _CLASSES = 8, 16, 10
_BN_EPS = 1e-3


def _fake_lite_state_dict(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    sd: dict[str, np.ndarray] = {}

    def conv(key: str, cout: int, cin: int, k: int) -> None:
        sd[f"{key}.weight"] = (rng.standard_normal((cout, cin, k, k)) * np.sqrt(2.0 / (cin * k * k))).astype(
            np.float32
        )

    def bn(key: str, c: int) -> None:
        sd[f"{key}.weight"] = rng.uniform(0.5, 1.5, c).astype(np.float32)
        sd[f"{key}.bias"] = rng.normal(0.0, 0.1, c).astype(np.float32)
        sd[f"{key}.running_mean"] = rng.normal(0.0, 0.1, c).astype(np.float32)
        sd[f"{key}.running_var"] = rng.uniform(0.5, 1.5, c).astype(np.float32)
        sd[f"{key}.num_batches_tracked"] = np.array(7, np.int64)

    conv("_conv_stem", _STEM, 3, 3)
    bn("_bn0", _STEM)
    cin = _STEM
    for i, (e, k, _s, cout) in enumerate(_BLOCKS):
        p = f"_blocks.{i}"
        mid = cin * e
        if e != 1:
            conv(f"{p}._expand_conv", mid, cin, 1)
            bn(f"{p}._bn0", mid)
        conv(f"{p}._depthwise_conv", mid, 1, k)
        bn(f"{p}._bn1", mid)
        conv(f"{p}._project_conv", cout, mid, 1)
        bn(f"{p}._bn2", cout)
        cin = cout
    conv("_conv_head", _HEAD, cin, 1)
    bn("_bn1", _HEAD)
    sd["_fc.weight"] = rng.standard_normal((_CLASSES, _HEAD)).astype(np.float32) * 0.1
    sd["_fc.bias"] = rng.standard_normal(_CLASSES).astype(np.float32) * 0.1
    return sd


# ---------------------------------------------------------------- numpy forward (the reference)
def _conv_same(x: np.ndarray, w: np.ndarray, stride: int, groups: int = 1) -> np.ndarray:
    """TF 'SAME' convolution (extra padding after), NCHW, float64."""
    h, wd = x.shape[2:]
    k = w.shape[2]
    pads = []
    for size in (h, wd):
        total = max((-(-size // stride) - 1) * stride + k - size, 0)
        pads.append((total // 2, total - total // 2))
    xp = np.pad(x, ((0, 0), (0, 0), *pads))
    win = np.lib.stride_tricks.sliding_window_view(xp, (k, k), axis=(2, 3))[:, :, ::stride, ::stride]
    if groups == 1:
        return np.einsum("nchwij,ocij->nohw", win, w)
    return np.einsum("nchwij,cij->nchw", win, w[:, 0])


def _bn(x: np.ndarray, sd: dict[str, np.ndarray], key: str) -> np.ndarray:
    g, b = sd[f"{key}.weight"], sd[f"{key}.bias"]
    m, v = sd[f"{key}.running_mean"], sd[f"{key}.running_var"]
    s = (g / np.sqrt(v + _BN_EPS))[None, :, None, None]
    return (x - m[None, :, None, None]) * s + b[None, :, None, None]


def _relu6(x: np.ndarray) -> np.ndarray:
    return np.clip(x, 0.0, 6.0)


def _forward(sd: dict[str, np.ndarray], images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """uint8 NHWC -> (last feature map, logits), as EfficientNet-Lite computes them."""
    sd = {k: v.astype(np.float64) for k, v in sd.items()}
    x = (images.astype(np.float64) - 127.0) / 128.0
    x = x.transpose(0, 3, 1, 2)
    x = _relu6(_bn(_conv_same(x, sd["_conv_stem.weight"], 2), sd, "_bn0"))
    for i, (e, _k, s, _cout) in enumerate(_BLOCKS):
        p = f"_blocks.{i}"
        h = x
        if e != 1:
            h = _relu6(_bn(_conv_same(h, sd[f"{p}._expand_conv.weight"], 1), sd, f"{p}._bn0"))
        h = _relu6(
            _bn(_conv_same(h, sd[f"{p}._depthwise_conv.weight"], s, groups=h.shape[1]), sd, f"{p}._bn1")
        )
        h = _bn(_conv_same(h, sd[f"{p}._project_conv.weight"], 1), sd, f"{p}._bn2")
        x = h + x if (s == 1 and h.shape == x.shape) else h
    fmap = _relu6(_bn(_conv_same(x, sd["_conv_head.weight"], 1), sd, "_bn1"))
    logits = fmap.mean(axis=(2, 3)) @ sd["_fc.weight"].T + sd["_fc.bias"]
    return fmap, logits


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def _images(size: int, n: int = 2, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


# ---------------------------------------------------------------- the graph
def test_lite1_shaped_graph_equals_numpy_forward() -> None:
    import onnxruntime as ort

    from test_rmac import _rmac_numpy
    from varsitysrch._nets import _rmac_regions, build_efficientnet_lite

    sd = _fake_lite_state_dict()
    sess = ort.InferenceSession(build_efficientnet_lite(sd), providers=["CPUExecutionProvider"])
    images = _images(64)
    pooled, logits, rmac = sess.run(["pooled", "logits", "rmac"], {"images": images})
    fmap, want_logits = _forward(sd, images)
    assert fmap.shape == (2, _HEAD, 8, 8)  # 64 px / 8: stem and two strided stages
    np.testing.assert_allclose(pooled, fmap.mean(axis=(2, 3)), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(logits, want_logits, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(rmac, _rmac_numpy(fmap, _rmac_regions(8, 8)), atol=1e-4)


# ---------------------------------------------------------------- the extractor (fake package)
def _install_fake_package(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, name: str, *, pin: bool = True
) -> None:
    """A stand-in for the weights package of ``name`` (its file pinned instead of the real one: ``pin``)."""
    _package, module, cls, _sha, _size = _extractors._LITE_BACKBONES[name]
    weights = save_zip(_fake_lite_state_dict(), tmp_path / f"{name}.pth")
    mod = types.ModuleType(module)
    setattr(mod, cls, type(cls, (), {"get_model_file_path": staticmethod(lambda: str(weights))}))
    monkeypatch.setitem(sys.modules, module, mod)
    if pin:
        entry = _extractors._LITE_BACKBONES[name]
        monkeypatch.setitem(_extractors._LITE_BACKBONES, name, (*entry[:3], _sha256_file(weights), entry[4]))
    monkeypatch.setenv("VARSITYSRCH_CACHE", str(tmp_path / "cache"))


@pytest.mark.parametrize(("name", "size"), [("efficientnet-lite1", 256), ("efficientnet-lite2", 288)])
def test_lite_backbone_embeds_like_numpy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, size: int
) -> None:
    _install_fake_package(monkeypatch, tmp_path, name)
    ex = get_extractor(name)
    assert (ex.name, ex.dim, ex.input_size, ex.resize, ex.pooling, ex.quantized) == (
        name,
        1280,
        size,
        "center-crop",
        "pooled",
        False,
    )
    images = _images(size)
    fmap, _ = _forward(_fake_lite_state_dict(), images)
    got = Embedder(ex, threads=1).embed(images)
    np.testing.assert_allclose(got, _unit(fmap.mean(axis=(2, 3))), atol=1e-4)
    assert list((tmp_path / "cache" / "models").glob(f"{name}-*-fp32-*.onnx"))  # cached by name
    # R-MAC works for it as for every built-in graph
    rmac = Embedder(get_extractor(name, pooling="rmac"), threads=1).embed(images)
    assert not np.allclose(rmac, got, atol=1e-3)
    np.testing.assert_allclose(np.linalg.norm(rmac, axis=1), 1.0, atol=1e-5)


def test_lite_backbone_int8_builds_a_quantised_graph(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import onnx

    _install_fake_package(monkeypatch, tmp_path, "efficientnet-lite1")
    ex = get_extractor("efficientnet-lite1", quantized=True)
    assert ex.quantized and ex.int8_scheme == _extractors._INT8_SCHEME
    images = _images(256)
    out = Embedder(ex, threads=1).embed(images)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    (graph,) = (tmp_path / "cache" / "models").glob("efficientnet-lite1-*-int8-*.onnx")
    ops = {n.op_type for n in onnx.load(str(graph)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    # the R-MAC head stays float32 after the int8 trunk, and runs (the same cached graph)
    int8_rmac = get_extractor("efficientnet-lite1", quantized=True, pooling="rmac")
    rmac = Embedder(int8_rmac, threads=1).embed(images)
    np.testing.assert_allclose(np.linalg.norm(rmac, axis=1), 1.0, atol=1e-5)
    assert list((tmp_path / "cache" / "models").glob("efficientnet-lite1-*-int8-*.onnx")) == [graph]


def test_unpinned_weights_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # the fake file is not the released checkpoint: its sha256 is not the pinned one
    _install_fake_package(monkeypatch, tmp_path, "efficientnet-lite2", pin=False)
    with pytest.raises(ModelFileError, match=r"expected 9656183e.*corrupt or altered"):
        get_extractor("efficientnet-lite2")


@pytest.mark.parametrize("name", ["efficientnet-lite1", "efficientnet-lite2"])
def test_missing_weights_package_names_package_and_extra(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    package, module, *_ = _extractors._LITE_BACKBONES[name]
    monkeypatch.setitem(sys.modules, module, None)  # import fails as if not installed
    with pytest.raises(MissingDependencyError) as info:
        get_extractor(name)
    msg = str(info.value)
    assert name in msg and repr(package) in msg and "varsitysrch[backbones]" in msg


def test_unknown_extractor_lists_the_new_names() -> None:
    from varsitysrch import InvalidArgumentError

    with pytest.raises(InvalidArgumentError, match="efficientnet-lite1, efficientnet-lite2"):
        get_extractor("efficientnet-lite3")


# ---------------------------------------------------------------- the real packages, where installed
@pytest.mark.parametrize("name", ["efficientnet-lite1", "efficientnet-lite2"])
def test_real_weights_match_their_pin_and_know_a_tshirt(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    from conftest import EXAMPLES
    from varsitysrch._images import load_image

    pytest.importorskip(_extractors._LITE_BACKBONES[name][1], reason="extra 'backbones' not installed")
    monkeypatch.setenv("VARSITYSRCH_CACHE", str(tmp_path / "cache"))
    ex = get_extractor(name)  # the installed file's sha256 is the pinned one
    photos = sorted((EXAMPLES / "t-shirt").glob("*.jpg"))[:3]
    batch = np.stack([load_image(p, ex.input_size, ex.resize) for p in photos])
    top5 = np.argsort(-Embedder(ex, threads=2).logits(batch), axis=1)[:, :5]
    assert all(610 in row for row in top5.tolist())  # ImageNet's "jersey, T-shirt"
