"""No path recorded in a model file or a feature store is opened unless the operator names it.

A user ONNX graph (``onnx:PATH``) is loaded only from a file the operator passes
(``extractor=Extractor.from_onnx(PATH)``, ``--extractor onnx:PATH``) and only if its sha256
is the one recorded; a feature store recorded in a model is used only inside the model
file's folder.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from imagegen import make_synthetic_catalogue
from varsitysrch import (
    Extractor,
    FeatureStoreError,
    IncompatibleModelError,
    ModelFileError,
    Searcher,
    _extractors,
    extract_features,
    train_clusters,
)
from varsitysrch._modelfile import _save_model, load_model
from varsitysrch.cli import app


def _tiny_onnx(path: Path, seed: int) -> Path:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = np.random.default_rng(seed).standard_normal((8, 3, 3, 3)).astype(np.float32)
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


@pytest.fixture
def onnx_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    """A catalogue embedded and trained with a user ONNX graph, then a 'new process'."""
    graph = _tiny_onnx(tmp_path / "mine.onnx", 0)
    cat = tmp_path / "cat"
    make_synthetic_catalogue(cat, n_classes=2, per_class=4, size=64, seed=1)
    ex = Extractor.from_onnx(graph, input_size=64)
    extract_features(cat, tmp_path / "feat", extractor=ex, show_progress=False)
    model, csv = tmp_path / "m.vsm", tmp_path / "c.csv"
    train_clusters(tmp_path / "feat", model, csv, 2, show_progress=False)
    # what this process learned from from_onnx is gone in the operator's next process
    monkeypatch.setattr(_extractors, "_OPERATOR_GRAPHS", {}, raising=False)
    query = sorted(p for p in cat.rglob("*") if p.is_file())[0]
    return {"graph": graph, "model": model, "csv": csv, "cat": cat, "query": query, "tmp": tmp_path}


def _tamper(model: Path, **fields: object) -> None:
    mf = load_model(model)
    mf.config["extractor"].update(fields)
    _save_model(model, mf)


def test_a_graph_path_named_by_the_model_file_is_never_loaded(onnx_model: dict[str, Path]) -> None:
    # the attacker's model names a working graph of its own, with its sha256
    evil = _tiny_onnx(onnx_model["tmp"] / "evil.onnx", 7)
    _tamper(onnx_model["model"], onnx_path=str(evil), weights_sha256=_extractors._sha256_file(evil))
    s = Searcher(onnx_model["model"])
    with pytest.raises(ModelFileError, match=r"pass it explicitly.*from_onnx\(PATH\).*onnx:PATH") as e:
        s.search(onnx_model["query"], 1)
    assert "\n" not in str(e.value)


def test_the_recorded_graph_is_not_loaded_either(onnx_model: dict[str, Path]) -> None:
    # even the graph the catalogue was really made with: the operator names it
    with pytest.raises(ModelFileError, match="pass it explicitly"):
        Searcher(onnx_model["model"]).search(onnx_model["query"], 1)


def test_the_operator_passes_the_graph_and_its_sha256_must_match(onnx_model: dict[str, Path]) -> None:
    moved = onnx_model["tmp"] / "elsewhere" / "renamed.onnx"
    moved.parent.mkdir()
    shutil.copy(onnx_model["graph"], moved)  # a moved/renamed file with the same graph is fine
    s = Searcher(onnx_model["model"], extractor=Extractor.from_onnx(moved, input_size=64))
    hit = s.search(onnx_model["query"], 1)[0]
    assert hit.image == onnx_model["query"].relative_to(onnx_model["cat"]).as_posix()
    assert hit.score == pytest.approx(1.0, abs=1e-4)
    other = _tiny_onnx(onnx_model["tmp"] / "other.onnx", 3)
    with pytest.raises(IncompatibleModelError, match="weights_sha256"):
        Searcher(onnx_model["model"], extractor=Extractor.from_onnx(other, input_size=64))
    with pytest.raises(IncompatibleModelError, match="different extractor"):
        Searcher(onnx_model["model"], extractor="efficientnet-lite0")


def test_cli_search_needs_and_takes_the_onnx_extractor(onnx_model: dict[str, Path]) -> None:
    runner = CliRunner()
    base = ["search", str(onnx_model["query"]), "--model", str(onnx_model["model"]), "--plain"]
    res = runner.invoke(app, base)
    assert res.exit_code == 2 and "--extractor onnx:PATH" in res.output
    assert "Traceback" not in res.output
    res = runner.invoke(app, [*base, "--extractor", f"onnx:{onnx_model['graph']}"])
    assert res.exit_code == 0, res.output  # the file, with the model's preprocessing (64 px)
    _rank, score, _, image, *_ = res.output.splitlines()[1].split("\t")
    assert image == onnx_model["query"].relative_to(onnx_model["cat"]).as_posix()
    assert float(score) == pytest.approx(1.0, abs=1e-3)


def test_update_with_an_onnx_model_needs_the_graph(onnx_model: dict[str, Path]) -> None:
    from varsitysrch import update_catalogue

    m, c, cat, feat = onnx_model["model"], onnx_model["csv"], onnx_model["cat"], onnx_model["tmp"] / "feat"
    shutil.copy(onnx_model["query"], cat / "new.png")  # something to embed
    with pytest.raises(ModelFileError, match="pass it explicitly"):
        update_catalogue(cat, feat, m, c, show_progress=False)
    ex = Extractor.from_onnx(onnx_model["graph"], input_size=64)
    rep = update_catalogue(cat, feat, m, c, extractor=ex, show_progress=False)
    assert rep.added == 1 and rep.n_images == 9


def test_a_recorded_name_never_makes_a_cache_path(synth_model: tuple[Path, Path], tmp_path: Path) -> None:
    import hashlib
    import json

    model = tmp_path / "m.vsm"
    shutil.copy(synth_model[0], model)
    outside = tmp_path / "planted"
    outside.mkdir()
    _tamper(model, name=f"../../../../../../../../..{outside}/x")
    # a verified-looking graph where that name points, outside the cache
    where = _extractors._graph_cache_path(Extractor.from_identity(load_model(model).config["extractor"]))
    assert not where.resolve().is_relative_to(_extractors.cache_dir().resolve())
    data = _tiny_onnx(tmp_path / "evil.onnx", 5).read_bytes()
    where.parent.mkdir(parents=True, exist_ok=True)
    where.write_bytes(data)
    sidecar = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
    where.with_name(where.name + ".json").write_text(json.dumps(sidecar))
    with pytest.raises(ModelFileError, match="unknown extractor"):
        Searcher(model)._query_embedder  # noqa: B018


def test_a_recorded_weights_hash_must_be_a_sha256(synth_model: tuple[Path, Path], tmp_path: Path) -> None:
    model = tmp_path / "m.vsm"
    shutil.copy(synth_model[0], model)
    _tamper(model, weights_sha256="../../etc/passwd")
    with pytest.raises(ModelFileError, match="64 hex digits"):
        Searcher(model)


def test_a_recorded_store_outside_the_model_folder_is_not_opened(synth_store: Path, tmp_path: Path) -> None:
    store = tmp_path / "a" / "feat"
    shutil.copytree(synth_store, store)
    (tmp_path / "b").mkdir()
    model = tmp_path / "b" / "m.vsm"
    train_clusters(store, model, tmp_path / "b" / "c.csv", 3, embed_index=False, show_progress=False)
    assert load_model(model).config["features"]["relative_path"] == "../a/feat"
    with pytest.raises(FeatureStoreError, match="features_folder"):
        Searcher(model)
    assert len(Searcher(model, features_folder=store)) == len(load_model(model).ids)
    res = CliRunner().invoke(app, ["search", "q.jpg", "--model", str(model)])
    assert res.exit_code == 2 and "--features" in res.output
