"""Scale on one machine: IVF search, float16 stores, sample-trained K-means, streaming extraction."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest

from varsitysrch import KMeansModel, train_clusters
from varsitysrch import _index as index_mod
from varsitysrch._extract import _Parts, extract_features
from varsitysrch._index import _default_nlist
from varsitysrch._kmeans import _training_sample_size
from varsitysrch._modelfile import load_model
from varsitysrch._neighbours import exact_topk
from varsitysrch._search import Searcher
from varsitysrch._searchindex import _calibrate_nprobe
from varsitysrch._store import FeatureStore


def clustered(n: int, dim: int, n_centres: int, seed: int = 0, noise: float = 0.35) -> np.ndarray:
    """Unit rows around random centres in a low-dimensional subspace (like CNN features)."""
    rng = np.random.default_rng(seed)
    latent = rng.standard_normal((n_centres, 16)).astype(np.float32)
    lift = rng.standard_normal((16, dim)).astype(np.float32)
    z = latent[rng.integers(0, n_centres, n)] + noise * rng.standard_normal((n, 16)).astype(np.float32)
    X = z @ lift + 0.3 * rng.standard_normal((n, dim)).astype(np.float32)
    return X / np.linalg.norm(X, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def big_store(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray]:
    X = clustered(20_000, 64, 300, seed=1)
    folder = tmp_path_factory.mktemp("scale") / "features"
    ids = [f"p/{i:06d}.jpg" for i in range(len(X))]
    FeatureStore.write(folder, ids, X.astype(np.float16), {"name": "test", "dim": 64})
    return folder, X


def test_ivf_search_reaches_recall_and_reports_kmeans_clusters(
    big_store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder, _ = big_store
    monkeypatch.setattr(index_mod, "IVF_THRESHOLD", 5_000)  # a low threshold: ivf=None builds one
    model, csv_path = tmp_path / "m.vsm", tmp_path / "c.csv"
    km = train_clusters(folder, model, csv_path, 8, backend="faiss", n_init=1, show_progress=False)
    mf = load_model(model)
    ivf = mf.config["ivf"]
    assert ivf["nlist"] == _default_nlist(20_000) == 512 and ivf["storage"] == "SQfp16"
    assert ivf["recall_curve"][str(ivf["nprobe"])] >= 0.95
    assert mf.arrays["ivf_centroids"].shape == (512, 64) and mf.arrays["ivf_lists"].shape == (20_000,)
    assert km.sample_size_ == 20_000

    s = Searcher(model, csv_path)
    assert s.probe_unit == "lists" and s.max_nprobe == 512  # searched through the IVF
    assert s.vectors.dtype == np.float16  # memory-mapped store, not a float32 copy
    V = np.asarray(s.vectors, np.float32)
    rng = np.random.default_rng(7)
    rows = rng.choice(len(V), 200, replace=False)
    Q = V[rows] + 0.05 * rng.standard_normal((200, 64)).astype(np.float32)
    Q /= np.linalg.norm(Q, axis=1, keepdims=True)
    truth = np.argsort(-(Q @ V.T), axis=1)[:, :10]
    recall = []
    for q, t in zip(Q, truth, strict=True):
        hits = s.search_vector(q, 10, expand=0)  # the index against exact plain cosine
        assert len(hits) == 10 and [h.rank for h in hits] == list(range(1, 11))
        assert all(h.cluster == int(km.labels_[s._id_index[h.image]]) for h in hits)
        assert all(a.score >= b.score for a, b in itertools.pairwise(hits))
        recall.append(len({s._id_index[h.image] for h in hits} & set(t.tolist())) / 10)
    assert np.mean(recall) >= 0.95
    # the default query expansion through the IVF: close to the exactly expanded search
    qe_recall = [
        len({h.image for h in s.search_vector(q, 10)} & {h.image for h in s.search_vector(q, 10, exact=True)})
        / 10
        for q in Q[:50]
    ]
    assert np.mean(qe_recall) >= 0.9
    exact = s.search_vector(Q[0], 10, exact=True, expand=0)
    assert [s._id_index[h.image] for h in exact] == truth[0].tolist()
    assert s.search_id(s.ids[5], 1)[0].image == s.ids[5]
    assert len(s.search_vector(Q[0], 50, nprobe=1)) == 50  # more lists are probed to fill top_n


def test_small_catalogue_has_no_ivf(synth_model) -> None:
    model, csv_path = synth_model
    assert "ivf" not in load_model(model).config
    assert Searcher(model, csv_path).probe_unit == "clusters"


def test_float16_store_round_trip(synth_catalogue, synth_store: Path, tmp_path: Path) -> None:
    root, _ = synth_catalogue
    res = extract_features(root, tmp_path / "f16", dtype="float16", show_progress=False)
    st16, st32 = FeatureStore.open(tmp_path / "f16"), FeatureStore.open(synth_store)
    assert st16.vectors.dtype == np.float16 and st16.meta["dtype"] == "float16" and res.n_images == 24
    assert st16.ids == st32.ids
    np.testing.assert_allclose(np.asarray(st16.vectors, np.float32), np.asarray(st32.vectors), atol=2e-3)
    model, csv_path = tmp_path / "m.vsm", tmp_path / "c.csv"
    km = train_clusters(tmp_path / "f16", model, csv_path, 4, show_progress=False)
    assert km.labels_.shape == (24,)
    s = Searcher(model, csv_path)
    for rel in st16.ids[:4]:
        assert s.search(root / rel, top_n=1)[0].image == rel
    # a rerun keeps the dtype and reuses everything
    again = extract_features(root, tmp_path / "f16", dtype="float16", show_progress=False)
    assert again.n_embedded == 0 and FeatureStore.open(tmp_path / "f16").vectors.dtype == np.float16


def test_kmeans_trains_on_a_sample_and_assigns_everything(tmp_path: Path) -> None:
    assert _training_sample_size(1_000_000, 100) == 50_000
    assert _training_sample_size(1_000_000, 1000) == 256_000
    assert _training_sample_size(1000, 10) == 1000
    assert _training_sample_size(10_000, 5, max_samples=600) == 600
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((5, 16)).astype(np.float32) * 4
    truth = rng.integers(0, 5, 6000)
    X = (centres[truth] + rng.standard_normal((6000, 16)).astype(np.float32)).astype(np.float32)
    np.save(tmp_path / "x.npy", X.astype(np.float16))
    X16 = np.load(tmp_path / "x.npy", mmap_mode="r")
    m = KMeansModel(5, max_samples=600, random_state=0).fit(X16)
    assert m.sample_size_ == 600 and m.labels_.shape == (6000,) and m.distances_.shape == (6000,)
    np.testing.assert_array_equal(m.labels_, m.predict(np.asarray(X16, np.float32)))
    from sklearn.metrics import adjusted_rand_score

    assert adjusted_rand_score(truth, m.labels_) > 0.95
    m32 = KMeansModel(5, max_samples=600, random_state=0).fit(np.asarray(X16, np.float32))
    np.testing.assert_array_equal(m.cluster_centers_, m32.cluster_centers_)
    for backend in ("faiss", "sklearn"):
        mb = KMeansModel(5, max_samples=600, backend=backend, n_components=8).fit(X16)
        assert mb.labels_.shape == (6000,) and adjusted_rand_score(truth, mb.labels_) > 0.95


def _calibrate_reference(X, labels, model, target, n_queries=500, top=10, random_state=0):
    """The original all-in-memory calibration, as a reference."""
    n, k = len(X), len(model.cluster_centers_)
    q = np.random.default_rng(random_state).choice(n, size=min(n_queries, n), replace=False)
    sims = X[q] @ X.T
    sims[np.arange(len(q)), q] = -np.inf
    exact = np.argpartition(-sims, top, axis=1)[:, :top]
    C = model.cluster_centers_
    order = np.argsort(((X[q][:, None, :] - C[None]) ** 2).sum(-1), axis=1)
    rank_of = np.empty_like(order)
    rank_of[np.arange(len(q))[:, None], order] = np.arange(k)[None, :]
    vis = rank_of[:, labels]
    curve = []
    for p in range(1, k + 1):
        got = np.argpartition(-np.where(vis < p, sims, -np.inf), top, axis=1)[:, :top]
        hits = [len(set(a) & set(b)) / top for a, b in zip(exact, got, strict=True)]
        curve.append(round(float(np.mean(hits)), 4))
    return curve


def test_streaming_calibration_matches_the_reference() -> None:
    X = clustered(3000, 32, 40, seed=3)
    m = KMeansModel(12, random_state=0).fit(X)
    nprobe, curve = _calibrate_nprobe(X, m.labels_, m, 0.95)
    ref = _calibrate_reference(X, m.labels_, m, 0.95)
    assert np.allclose(curve, ref[: len(curve)], atol=2e-3)
    assert nprobe == next(p for p, r in enumerate(ref, 1) if r >= 0.95)


def test_exact_topk_streams_and_excludes() -> None:
    X = clustered(5000, 24, 30, seed=4).astype(np.float16)
    Q = np.asarray(X[:7], np.float32)
    rows, scores = exact_topk(Q, X, 5, exclude=np.arange(7), chunk=333)
    S = Q @ np.asarray(X, np.float32).T
    S[np.arange(7), np.arange(7)] = -np.inf
    ref = np.argsort(-S, axis=1, kind="stable")[:, :5]
    np.testing.assert_allclose(scores, np.take_along_axis(S, ref, 1), atol=1e-5)
    assert all(i not in rows[i] for i in range(7))


def test_extraction_streams_vectors_through_checkpoints(
    synth_catalogue, synth_store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Vectors never pile up in memory: every ``checkpoint_every`` images go to parts/, then the store."""
    root, _ = synth_catalogue
    saved: list[int] = []
    real = _Parts.save

    def spy(self, ids, X, stats):
        saved.append(len(ids))
        return real(self, ids, X, stats)

    monkeypatch.setattr(_Parts, "save", spy)
    res = extract_features(root, tmp_path / "f", batch_size=4, checkpoint_every=8, show_progress=False)
    assert saved == [8, 8, 8] and res.n_embedded == 24
    assert not (tmp_path / "f" / "parts").exists()
    np.testing.assert_allclose(
        np.asarray(FeatureStore.open(tmp_path / "f").vectors),
        np.asarray(FeatureStore.open(synth_store).vectors),
        atol=1e-5,
    )
