"""k-reciprocal re-ranking as the default (docs/quality.md, Phase B "Decision"): models trained by
default store the catalogue's neighbour graph and searches re-rank over it (``rerank=None``: the
model's); ``rerank="none"`` switches it off; a model without a graph (``rerank_graph=False``, an IVF
model, or one written before) searches exactly as before.  Above ``_rerank._EXACT_MAX`` images a
K-means model's graph is built through its own clusters (``_cluster_graph``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from imagegen import SYNTHETIC_CLASSES, make_synthetic_catalogue
from test_rerank import _copy, _same_graph
from varsitysrch import Searcher, _rerank, train_clusters
from varsitysrch._extract import extract_features
from varsitysrch._modelfile import load_model
from varsitysrch._rerank import _K1, NeighbourGraph, _build_graph, _cluster_graph
from varsitysrch._store import FeatureStore, normalize_rows
from varsitysrch._update import update_catalogue

DATA = Path(__file__).parent / "data"


def _store(folder: Path, X: np.ndarray) -> Path:
    ids = [f"c/{i:05d}.jpg" for i in range(len(X))]
    FeatureStore.write(folder, ids, X, {"name": "test", "dim": X.shape[1]})
    return folder


def _hub_catalogue(seed: int = 7) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """tests/test_rerank.py's planted hubs: 30 products of 8 photos around a common direction,
    and 6 'hub' images close to every product.  ``(catalogue, product centres, common)``."""
    rng = np.random.default_rng(seed)
    d, per, classes = 32, 8, 30
    common = rng.standard_normal(d)
    centres = common + rng.standard_normal((classes, d))
    X = centres.repeat(per, axis=0) + 0.7 * rng.standard_normal((classes * per, d))
    hubs = common + 0.3 * rng.standard_normal((6, d))
    return normalize_rows(np.vstack([X, hubs]).astype(np.float32)), centres, common


def _graph(mf: object) -> NeighbourGraph:
    arrays = mf.arrays  # type: ignore[attr-defined]
    return NeighbourGraph(arrays["rerank_nn"], arrays["rerank_sims"], _K1)


def test_default_training_stores_the_graph_and_default_search_reranks(tmp_path: Path) -> None:
    C, centres, _ = _hub_catalogue()
    feats = _store(tmp_path / "f", C)
    train_clusters(feats, tmp_path / "m.vsm", tmp_path / "m.csv", 6, show_progress=False)
    mf = load_model(tmp_path / "m.vsm")
    assert mf.config["rerank"]["built"] == "exact" and mf.config["rerank"]["k1"] == _K1
    _same_graph(_graph(mf), _build_graph(C, _K1))
    s = Searcher(tmp_path / "m.vsm", tmp_path / "m.csv")
    rng = np.random.default_rng(8)
    differ = 0
    for c in range(len(centres)):
        q = normalize_rows((centres[c] + 0.7 * rng.standard_normal(C.shape[1]))[None].astype(np.float32))[0]
        default = [h.image for h in s.search_vector(q, 10)]
        assert default == [h.image for h in s.search_vector(q, 10, rerank="k-reciprocal")]
        plain = [h.image for h in s.search_vector(q, 10, rerank="none")]
        assert default[0] == plain[0]  # keep-first
        differ += default != plain
    assert differ >= len(centres) // 3  # the hubs move: the default is not the plain order
    ids = s.ids
    assert [h.image for h in s.search_id(ids[0], 10)] == [
        h.image for h in s.search_id(ids[0], 10, rerank="k-reciprocal")
    ]


def test_no_graph_models_search_as_before(tmp_path: Path) -> None:
    """rerank_graph=False, and a model trained before the graph existed (tests/data/model-v1.vsm):
    no graph, and the default search is the plain one (not refused)."""
    C, centres, _ = _hub_catalogue()
    feats = _store(tmp_path / "f", C)
    train_clusters(feats, tmp_path / "m.vsm", tmp_path / "m.csv", 6, rerank_graph=False, show_progress=False)
    assert "rerank" not in load_model(tmp_path / "m.vsm").config
    s = Searcher(tmp_path / "m.vsm", tmp_path / "m.csv")
    for c in range(0, len(centres), 5):
        q = normalize_rows(centres[c][None].astype(np.float32))[0]
        exact = np.argsort(-(C @ q), kind="stable")[:10]
        assert [h.image for h in s.search_vector(q, 10, exact=True)] == [s.ids[i] for i in exact]
        assert s.search_vector(q, 10) == s.search_vector(q, 10, rerank="none")
    old = Searcher(DATA / "model-v1.vsm", DATA / "clusters-v1.csv")
    assert "rerank" not in old.config
    for j in (0, 57, 159):
        assert old.search_id(old.ids[j], 5) == old.search_id(old.ids[j], 5, rerank="none")


def test_an_ivf_model_gets_no_graph_by_default(tmp_path: Path) -> None:
    C, _, _ = _hub_catalogue()
    feats = _store(tmp_path / "f", C.astype(np.float16))
    train_clusters(feats, tmp_path / "m.vsm", tmp_path / "m.csv", 4, ivf=True, show_progress=False)
    assert "rerank" not in load_model(tmp_path / "m.vsm").config  # above IVF_THRESHOLD: opt-in


def _separated(seed: int, clusters: int = 12, per: int = 40, d: int = 24) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = 10.0 * np.eye(d)[:clusters] if clusters <= d else 10.0 * rng.standard_normal((clusters, d))
    return normalize_rows(
        (centres.repeat(per, axis=0) + rng.standard_normal((clusters * per, d))).astype(np.float32)
    )


def test_cluster_probed_graph_equals_the_exact_one_on_separated_clusters(tmp_path: Path) -> None:
    """Each image's 20 nearest lie in its own K-means cluster (40 images, far from the others):
    searched through one cluster, the lists are the exact lists."""
    X = _separated(1)
    train_clusters(_store(tmp_path / "f", X), tmp_path / "m.vsm", tmp_path / "m.csv", 12, show_progress=False)
    mf = load_model(tmp_path / "m.vsm")
    g = _cluster_graph(X, X, mf.to_model(), mf.labels, 1)
    _same_graph(g, _build_graph(X, _K1))


def test_cluster_probed_graph_reaches_its_recall_on_overlapping_clusters(tmp_path: Path) -> None:
    """Overlapping classes, 16 clusters, the calibrated nprobe: at least 0.9 of the exact lists
    (0.94-0.97 measured on generated 20k/100k catalogues and the fashion dev store,
    docs/quality.md); every probe holds k + 1 images, so no list is short."""
    rng = np.random.default_rng(3)
    centres = rng.standard_normal((40, 16))
    X = normalize_rows(
        (centres[rng.integers(0, 40, 1600)] + 0.5 * rng.standard_normal((1600, 16))).astype(np.float32)
    )
    train_clusters(_store(tmp_path / "f", X), tmp_path / "m.vsm", tmp_path / "m.csv", 16, show_progress=False)
    mf = load_model(tmp_path / "m.vsm")
    g = _cluster_graph(X, X, mf.to_model(), mf.labels, int(mf.config["nprobe"]))
    ex = _build_graph(X, _K1)
    found = np.mean([len(set(a) & set(b)) / _K1 for a, b in zip(g.nn.tolist(), ex.nn.tolist(), strict=True)])
    assert found >= 0.9
    assert (g.nn != np.arange(len(X))[:, None]).all() and np.isfinite(g.sims).all()
    assert (np.diff(g.sims, axis=1) <= 0).all()  # best first
    more = _cluster_graph(X, X, mf.to_model(), mf.labels, int(mf.config["nprobe"]) + 3)
    found_more = np.mean(
        [len(set(a) & set(b)) / _K1 for a, b in zip(more.nn.tolist(), ex.nn.tolist(), strict=True)]
    )
    assert found < found_more  # what the probe costs: more clusters find more
    every = _cluster_graph(X, X, mf.to_model(), mf.labels, 16)
    _same_graph(every, ex)  # every cluster probed: exact


def test_training_above_exact_max_builds_through_the_clusters(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(_rerank, "_EXACT_MAX", 100)
    X = _separated(2)
    train_clusters(_store(tmp_path / "f", X), tmp_path / "m.vsm", tmp_path / "m.csv", 12, show_progress=False)
    mf = load_model(tmp_path / "m.vsm")
    assert mf.config["rerank"]["built"] == f"clusters, nprobe {mf.config['nprobe']}"
    _same_graph(_graph(mf), _cluster_graph(X, X, mf.to_model(), mf.labels, int(mf.config["nprobe"])))
    s = Searcher(tmp_path / "m.vsm", tmp_path / "m.csv")
    assert s.search_vector(X[5], 10) == s.search_vector(X[5], 10, rerank="k-reciprocal")


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    root = tmp_path_factory.mktemp("rr-default-source")
    labels = make_synthetic_catalogue(root, n_classes=len(SYNTHETIC_CLASSES), per_class=8, size=96, seed=6)
    return root, labels


def test_update_rebuilds_a_cluster_probed_graph_through_the_clusters(
    monkeypatch: pytest.MonkeyPatch, images: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    """An approximate graph is not what the incremental (exact) update assumes: update rebuilds
    it through the clusters, tied to the new store generation, equal to a fresh build."""
    monkeypatch.setattr(_rerank, "_EXACT_MAX", 20)
    src, labels = images
    rels = sorted(labels)
    cat, feats, model, csv = tmp_path / "cat", tmp_path / "f", tmp_path / "m.vsm", tmp_path / "m.csv"
    _copy(src, cat, rels[:-8])
    extract_features(cat, feats, show_progress=False)
    train_clusters(feats, model, csv, 4, show_progress=False)
    assert load_model(model).config["rerank"]["built"].startswith("clusters, nprobe")
    _copy(src, cat, rels[-8:])
    for r in rels[2:5]:
        (cat / r).unlink()
    update_catalogue(cat, feats, model, csv, show_progress=False)
    mf = load_model(model)
    assert mf.config["rerank"]["built"] == f"clusters, nprobe {mf.config['nprobe']}"
    assert mf.config["rerank"]["features"]["generation"] == mf.config["features"]["generation"]
    X = np.asarray(FeatureStore.open(feats).vectors, np.float32)
    assert len(X) == len(rels) - 3 == len(mf.labels)
    _same_graph(_graph(mf), _cluster_graph(X, X, mf.to_model(), mf.labels, int(mf.config["nprobe"])))
    s = Searcher(model, csv)
    assert s.search_id(mf.ids[0], 5) == s.search_id(mf.ids[0], 5, rerank="k-reciprocal")


def test_cli_train_stores_the_graph_unless_told_not_to(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from varsitysrch.cli import app

    C, _, _ = _hub_catalogue()
    feats = _store(tmp_path / "f", C)
    for name, extra in (("on", []), ("off", ["--no-rerank-graph"]), ("asked", ["--rerank-graph"])):
        model = tmp_path / f"{name}.vsm"
        args = ["train", str(feats), "-m", str(model), "-c", str(tmp_path / f"{name}.csv"), "-k", "6", "-q"]
        res = CliRunner().invoke(app, [*args, *extra])
        assert res.exit_code == 0, res.output
        assert ("rerank" in load_model(model).config) is (name != "off"), name


def test_a_stale_graph_is_not_used_by_default(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A graph that does not describe the catalogue (another store generation): the default search
    is the plain one, with a warning; asking for the re-ranking still refuses (tests/test_rerank.py)."""
    from varsitysrch._modelfile import _save_model

    C, centres, _ = _hub_catalogue()
    train_clusters(_store(tmp_path / "f", C), tmp_path / "m.vsm", tmp_path / "m.csv", 6, show_progress=False)
    mf = load_model(tmp_path / "m.vsm")
    mf.config["features"]["generation"] = "g-another"
    _save_model(tmp_path / "stale.vsm", mf)
    s = Searcher(tmp_path / "stale.vsm")
    q = normalize_rows(centres[0][None].astype(np.float32))[0]
    with caplog.at_level("WARNING", logger="varsitysrch._rerank"):
        got = s.search_vector(q, 10)
    assert got == s.search_vector(q, 10, rerank="none")
    assert "neighbour graph is stale" in caplog.text
    with caplog.at_level("WARNING", logger="varsitysrch._rerank"):
        s.search_vector(q, 10)
        s.search_vector(q, 10)
    assert caplog.text.count("neighbour graph is stale") == 1  # once per model, not per search
