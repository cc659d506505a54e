"""Ranked, scored search: properties that hold for any catalogue."""

from __future__ import annotations

import itertools
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from varsitysrch import (
    Hit,
    IncompatibleModelError,
    InvalidArgumentError,
    ModelFileError,
    Searcher,
    SearchOptions,
    load_features,
    search_similar_images,
    train_clusters,
)
from varsitysrch._pipeline import Query, run_search


@pytest.fixture(scope="module")
def searcher(synth_model) -> Searcher:
    model, csv = synth_model
    return Searcher(model, csv)


def test_catalogue_image_as_query_comes_back_first_with_score_one(
    searcher: Searcher, synth_catalogue
) -> None:
    root, labels = synth_catalogue
    for rel in list(labels)[:6]:
        hits = searcher.search(root / rel, 5)
        assert hits[0].image == rel and hits[0].score == pytest.approx(1.0, abs=1e-3)


def test_results_are_ranked_scored_and_complete(searcher: Searcher, synth_catalogue) -> None:
    root, labels = synth_catalogue
    rel = next(iter(labels))
    for n in (1, 5, len(labels)):
        hits = searcher.search(root / rel, n, nprobe=1)
        assert len(hits) == n  # always top_n when the catalogue has that many
        assert [h.rank for h in hits] == list(range(1, n + 1))
        confidences = [h.confidence for h in hits]  # monotone in rank, whatever ranked them
        assert confidences == sorted(confidences, reverse=True)
        assert len({h.image for h in hits}) == n
        # ranked by plain cosine (no expansion, raw space here): the scores decrease
        scores = [h.score for h in searcher.search(root / rel, n, nprobe=1, expansion=0, rerank="none")]
        assert scores == sorted(scores, reverse=True)
    assert len(searcher.search(root / rel, 10_000)) == len(labels)
    assert isinstance(hits[0], Hit) and set(hits[0].to_dict()) == {
        "image",
        "score",
        "cluster",
        "rank",
        "path",
        "confidence",
        "match",
        "close",
    }
    assert hits[0].confidence is not None and 0.0 <= hits[0].confidence <= 1.0
    assert hits[0].match in {"very similar", "similar", "loosely related"}


def test_same_class_first(searcher: Searcher, synth_catalogue) -> None:
    root, labels = synth_catalogue
    for rel, cls in list(labels.items())[::5]:
        hits = searcher.search(root / rel, 4)
        assert sum(labels[h.image] == cls for h in hits) >= 3


def test_cluster_restricted_search_equals_brute_force_within_scanned_clusters(searcher: Searcher) -> None:
    rng = np.random.default_rng(0)
    X = searcher.vectors
    for _ in range(20):
        v = rng.standard_normal(X.shape[1]).astype(np.float32)
        v /= np.linalg.norm(v)
        order = searcher.model.cluster_order(v[None])[0]  # the clusters nearest the query first
        for nprobe in range(1, searcher.k + 1):
            res = run_search(searcher, Query(vector=v), SearchOptions(top_n=3, nprobe=nprobe, expansion=0))
            assert res.scan.unit == "clusters" and res.scan.probed >= nprobe
            scanned = set(order[: res.scan.probed].tolist())  # the nearest `probed` clusters
            assert res.scan.images == int(np.isin(searcher.labels, list(scanned)).sum())
            brute = [j for j in np.argsort(-(X @ v), kind="stable") if searcher.labels[j] in scanned][:3]
            assert [h.image for h in res.hits] == [searcher.ids[j] for j in brute]
            got = searcher.search_vector(v, 3, nprobe=nprobe, expansion=0)
            assert [h.image for h in got] == [h.image for h in res.hits]


def test_exact_equals_full_brute_force(searcher: Searcher) -> None:
    X = searcher.vectors
    v = X[3] + 0.1 * X[10]
    v = v / np.linalg.norm(v)
    got = [h.image for h in searcher.search_vector(v, 7, exact=True, expansion=0)]
    want = [searcher.ids[j] for j in np.argsort(-(X @ v), kind="stable")[:7]]
    assert got == want
    assert [h.image for h in searcher.search_vector(v, 7, nprobe=searcher.k, expansion=0)] == want


def test_query_as_bytes_pil_and_function_form(synth_model, synth_catalogue) -> None:
    model, csv = synth_model
    root, labels = synth_catalogue
    rel = sorted(labels)[0]
    a = search_similar_images(root / rel, model, csv, 3)
    b = search_similar_images((root / rel).read_bytes(), model, csv, 3)
    c = search_similar_images(Image.open(root / rel), model, csv, top_n=3)
    assert [h.image for h in a] == [h.image for h in b] == [h.image for h in c]
    assert a[0].image == rel


def test_search_by_catalogue_id(searcher: Searcher) -> None:
    rel = searcher.ids[5]
    assert searcher.search_id(rel, 3)[0].image == rel
    others = searcher.search_id(rel, 3, include_self=False)
    assert rel not in {h.image for h in others} and [h.rank for h in others] == [1, 2, 3]
    with pytest.raises(InvalidArgumentError, match="not in the catalogue"):
        searcher.search_id("nope.jpg")


def test_bad_arguments(searcher: Searcher, synth_catalogue) -> None:
    root, labels = synth_catalogue
    q = root / next(iter(labels))
    with pytest.raises(InvalidArgumentError, match="top_n"):
        searcher.search(q, 0)
    with pytest.raises(InvalidArgumentError, match=r"nprobe must be in \[1, 4\] \(the clusters"):
        searcher.search(q, 3, nprobe=99)
    with pytest.raises(IncompatibleModelError, match="dim"):
        searcher.search_vector(np.ones(7, np.float32))


def test_csv_must_match_model(synth_model, synth_store: Path, tmp_path: Path) -> None:
    model, _csv = synth_model
    other_model, other_csv = tmp_path / "m.vsm", tmp_path / "c.csv"
    train_clusters(synth_store, other_model, other_csv, 2, show_progress=False)
    with pytest.raises(IncompatibleModelError, match="was not written with model"):
        Searcher(model, other_csv)
    with pytest.raises(ModelFileError, match="does not exist"):
        Searcher(model, tmp_path / "missing.csv")
    (tmp_path / "bad.csv").write_text("a,b\n1,2\n")
    with pytest.raises(ModelFileError, match="not a cluster CSV"):
        Searcher(model, tmp_path / "bad.csv")


def test_index_in_store_instead_of_model(synth_store: Path, tmp_path: Path) -> None:
    store = tmp_path / "feat"
    shutil.copytree(synth_store, store)
    train_clusters(store, tmp_path / "m.vsm", tmp_path / "c.csv", 3, embed_index=False, show_progress=False)
    s = Searcher(tmp_path / "m.vsm", tmp_path / "c.csv")
    ids, X, _ = load_features(store)
    assert s.search_vector(X[2], 1)[0].image == ids[2]
    moved = tmp_path / "moved"
    shutil.move(store, moved)
    with pytest.raises(OSError, match="not found"):
        Searcher(tmp_path / "m.vsm")
    s2 = Searcher(tmp_path / "m.vsm", features_folder=moved)  # the operator names the store
    assert s2.search_vector(X[2], 1)[0].image == ids[2]


def test_calibrated_nprobe_reaches_target_recall() -> None:
    from sklearn.datasets import make_blobs

    from varsitysrch import KMeansModel
    from varsitysrch._searchindex import _calibrate_nprobe

    X, _ = make_blobs(2000, n_features=16, centers=30, cluster_std=3.0, random_state=0)
    X = (X / np.linalg.norm(X, axis=1, keepdims=True)).astype(np.float32)
    m = KMeansModel(10).fit(X)
    nprobe, curve = _calibrate_nprobe(X, m.labels_, m, 0.95)
    assert curve[nprobe - 1] >= 0.95 and (nprobe == 1 or curve[nprobe - 2] < 0.95)
    assert all(a <= b + 1e-9 for a, b in itertools.pairwise(curve))


def _generated_store(folder: Path, n: int, dim: int, seed: int) -> tuple[list[str], np.ndarray]:
    from varsitysrch._store import FeatureStore

    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((12, dim)).astype(np.float32)
    # a large shared offset: raw cosine and the catalogue-centred PCA space rank differently
    X = 3.0 + centres[rng.integers(0, 12, n)] + 0.8 * rng.standard_normal((n, dim)).astype(np.float32)
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    ids = [f"g/{i:05d}.jpg" for i in range(n)]
    FeatureStore.write(folder, ids, X, {"name": "generated", "dim": dim})
    return ids, X


def test_nprobe_is_calibrated_in_the_space_the_searcher_ranks_in(tmp_path: Path) -> None:
    """The stored recall curve is what the Searcher itself measures, nprobe by nprobe (held-out queries)."""
    _generated_store(tmp_path / "f", 400, 40, seed=5)
    train_clusters(
        tmp_path / "f", tmp_path / "m.vsm", tmp_path / "c.csv", 8, search_pca=4, show_progress=False
    )
    s = Searcher(tmp_path / "m.vsm")
    curve = s.config["recall_curve"]
    assert s.config["search_pca"] == 4 and len(curve) == s.k
    measured = np.zeros(s.k)
    for j in range(len(s)):  # 400 < 500 calibration queries: every image was a query
        v = np.asarray(s.vectors[j], np.float32)
        exact = {h.image for h in s.search_vector(v, 10, exact=True, exclude={j}, expand=0, rerank="none")}
        for p in range(1, s.k + 1):
            got = {h.image for h in s.search_vector(v, 10, nprobe=p, exclude={j}, expand=0, rerank="none")}
            measured[p - 1] += len(got & exact) / 10
    measured /= len(s)
    np.testing.assert_allclose(curve, measured, atol=2e-3)
    assert s.default_nprobe == next(p for p, r in enumerate(measured, 1) if r >= 0.95 - 2e-3)


def test_catalogue_is_stored_projected_and_not_projected_at_load(tmp_path: Path, monkeypatch) -> None:
    from varsitysrch import _search
    from varsitysrch._modelfile import load_model

    _generated_store(tmp_path / "f", 300, 40, seed=6)
    train_clusters(
        tmp_path / "f", tmp_path / "m.vsm", tmp_path / "c.csv", 5, search_pca=6, show_progress=False
    )
    rows: list[int] = []
    real = _search.to_search_space

    def counting(X, *a):
        rows.append(np.atleast_2d(X).shape[0])
        return real(X, *a)

    monkeypatch.setattr(_search, "to_search_space", counting)
    s = Searcher(tmp_path / "m.vsm")
    assert rows == []  # nothing projected at load
    s.search_id("g/00007.jpg", 3)
    assert rows == [1]  # the query only
    mf = load_model(tmp_path / "m.vsm")
    assert mf.arrays["search_vectors"].shape == (300, 6) and s._scoring.shape == (300, 6)


def test_n_components_model_into_a_searcher(synth_store: Path, synth_catalogue, tmp_path: Path) -> None:
    """Clustering in a PCA space and ranking in the (shared, wider) search PCA space, end to end."""
    from varsitysrch._modelfile import load_model

    root, labels = synth_catalogue
    km = train_clusters(
        synth_store,
        tmp_path / "m.vsm",
        tmp_path / "c.csv",
        4,
        n_components=5,
        search_pca=8,
        show_progress=False,
    )
    assert km.pca_components_.shape == (5, 1280)
    mf = load_model(tmp_path / "m.vsm")
    # one PCA fit: the clustering space is the search space's first components
    np.testing.assert_array_equal(mf.pca_components, mf.arrays["search_components"][:5])
    np.testing.assert_array_equal(mf.pca_mean, mf.arrays["search_mean"])
    s = Searcher(tmp_path / "m.vsm", tmp_path / "c.csv")
    np.testing.assert_array_equal(s.model.predict(s.vectors), s.labels)
    for rel in sorted(labels)[::5]:
        hits = s.search(root / rel, 3)
        assert hits[0].image == rel and hits[0].score == pytest.approx(1.0, abs=1e-3)
        assert hits[0].cluster == int(s.labels[s.ids.index(rel)])


def test_search_cache_reloads_when_the_files_change(
    synth_store: Path, synth_catalogue, tmp_path: Path
) -> None:
    from varsitysrch import _search

    root, labels = synth_catalogue
    rel = sorted(labels)[0]
    model, csv_path = tmp_path / "m.vsm", tmp_path / "c.csv"
    train_clusters(synth_store, model, csv_path, 4, show_progress=False)
    _search._cached_searcher.cache_clear()
    a = search_similar_images(root / rel, model, csv_path, 3)
    b = search_similar_images(root / rel, model, csv_path, 3)
    assert _search._cached_searcher.cache_info().misses == 1 and [h.image for h in a] == [h.image for h in b]
    train_clusters(synth_store, model, csv_path, 2, show_progress=False)  # same paths, new files
    c = search_similar_images(root / rel, model, csv_path, 3)
    assert _search._cached_searcher.cache_info().misses == 2
    assert all(h.cluster in (0, 1) for h in c) and c[0].image == rel
    assert a[0].path is None
    d = search_similar_images(root / rel, model, csv_path, 3, image_root=root)
    assert d[0].path == str((root / rel).resolve())


def test_the_search_cache_key_sees_an_atomic_replace(tmp_path: Path) -> None:
    # one stamp for the search cache and the service's reload: a file replaced atomically with
    # the same size and mtime is a new file
    import os

    from varsitysrch._io import stat_stamp as _stamp  # the key of the search cache (_search)
    from varsitysrch.service.models import file_stamp

    a, b = tmp_path / "m.vsm", tmp_path / "new.vsm"
    a.write_bytes(b"x" * 100)
    b.write_bytes(b"y" * 100)
    st = a.stat()
    os.utime(b, ns=(st.st_atime_ns, st.st_mtime_ns))
    before = _stamp(str(a), None)
    assert before == file_stamp(a)
    os.replace(b, a)
    assert _stamp(str(a), None) != before and file_stamp(a) != before
    assert _stamp(str(tmp_path / "missing")) == (-1, -1, -1)
