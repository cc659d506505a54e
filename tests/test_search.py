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
    load_features,
    search_similar_images,
    train_clusters,
)


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
        scores = [h.score for h in hits]
        assert scores == sorted(scores, reverse=True)
        assert len({h.image for h in hits}) == n
    assert len(searcher.search(root / rel, 10_000)) == len(labels)
    assert isinstance(hits[0], Hit) and set(hits[0].to_dict()) == {
        "image",
        "score",
        "cluster",
        "rank",
        "path",
    }


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
        for nprobe in range(1, searcher.k + 1):
            rows = searcher.candidates(v, 3, nprobe=nprobe)
            scanned = set(searcher.labels[rows].tolist())
            brute = [j for j in np.argsort(-(X @ v), kind="stable") if searcher.labels[j] in scanned][:3]
            got = searcher.search_vector(v, 3, nprobe=nprobe)
            assert [h.image for h in got] == [searcher.ids[j] for j in brute]
            assert len(scanned) >= nprobe


def test_exact_equals_full_brute_force(searcher: Searcher) -> None:
    X = searcher.vectors
    v = X[3] + 0.1 * X[10]
    v = v / np.linalg.norm(v)
    got = [h.image for h in searcher.search_vector(v, 7, exact=True)]
    want = [searcher.ids[j] for j in np.argsort(-(X @ v), kind="stable")[:7]]
    assert got == want
    assert [h.image for h in searcher.search_vector(v, 7, nprobe=searcher.k)] == want


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
    with pytest.raises(InvalidArgumentError, match=r"nprobe must be in \[1, k\]"):
        searcher.search(q, 3, nprobe=99)
    with pytest.raises(IncompatibleModelError, match="dim"):
        searcher.search_vector(np.ones(7, np.float32))


def test_csv_must_match_model(synth_model, synth_store: Path, tmp_path: Path) -> None:
    model, _csv = synth_model
    other_model, other_csv = tmp_path / "m.vsm", tmp_path / "c.csv"
    train_clusters(synth_store, other_model, other_csv, 2, show_progress=False)
    with pytest.raises(IncompatibleModelError, match="does not match"):
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
    shutil.rmtree(store)
    with pytest.raises(OSError, match="not found"):
        Searcher(tmp_path / "m.vsm")


def test_calibrated_nprobe_reaches_target_recall() -> None:
    from sklearn.datasets import make_blobs

    from varsitysrch import KMeansModel
    from varsitysrch._searchindex import calibrate_nprobe

    X, _ = make_blobs(2000, n_features=16, centers=30, cluster_std=3.0, random_state=0)
    X = (X / np.linalg.norm(X, axis=1, keepdims=True)).astype(np.float32)
    m = KMeansModel(10).fit(X)
    nprobe, curve = calibrate_nprobe(X, m.labels_, m, 0.95)
    assert curve[nprobe - 1] >= 0.95 and (nprobe == 1 or curve[nprobe - 2] < 0.95)
    assert all(a <= b + 1e-9 for a, b in itertools.pairwise(curve))
