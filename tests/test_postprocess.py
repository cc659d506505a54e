"""Feature post-processing: DBA neighbour lists, QE, whitening; the search-space PCA and QE in search."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from varsitysrch import InvalidArgumentError, Searcher, train_clusters
from varsitysrch._postprocess import (
    QE_NEIGHBOURS,
    SEARCH_PCA_DIM,
    expand_query,
    fit_whitening,
    neighbour_lists,
    to_search_space,
)
from varsitysrch._store import FeatureStore, normalize_rows


def _unit(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    return normalize_rows(rng.standard_normal((n, d)).astype(np.float32))


def test_neighbour_lists_put_self_first_then_by_similarity() -> None:
    X = _unit(np.random.default_rng(0), 50, 8)
    idx, sims = neighbour_lists(X, 4, chunk=16)
    assert (idx[:, 0] == np.arange(50)).all() and (sims[:, 0] == 1.0).all()
    S = X @ X.T
    np.fill_diagonal(S, -np.inf)
    np.testing.assert_array_equal(idx[:, 1], S.argmax(1))
    assert (np.diff(sims, axis=1) <= 1e-6).all()


def test_expand_query_weights_by_similarity_power() -> None:
    q = np.array([1.0, 0.0], np.float32)
    nb = np.array([[0.0, 1.0], [0.0, -1.0]], np.float32)
    out = expand_query(q, nb, np.array([0.5, -0.2], np.float32), alpha=1.0)  # negative sims get weight 0
    np.testing.assert_allclose(out, normalize_rows(np.array([[1.0, 0.5]], np.float32))[0], atol=1e-6)
    np.testing.assert_array_equal(expand_query(q, nb[:0], np.zeros(0)), q)


def test_whitening_full_partial_and_pca() -> None:
    rng = np.random.default_rng(1)
    X = normalize_rows(rng.standard_normal((300, 16)).astype(np.float32) * np.linspace(5, 0.1, 16))
    w = fit_whitening(X, 8)
    Z = (X - w.mean) @ w.projection.T
    np.testing.assert_allclose(np.cov(Z.T, ddof=1), np.eye(8), atol=1e-3)  # unit variance, decorrelated
    assert w.apply(X).shape == (300, 8) and w.apply(X[0]).shape == (8,)
    p = fit_whitening(X, 8, power=0.0)  # plain PCA: orthonormal rows
    np.testing.assert_allclose(p.projection @ p.projection.T, np.eye(8), atol=1e-5)
    with pytest.raises(InvalidArgumentError):
        fit_whitening(X, 400)


# ------------------------------------------------------------------ hooks in train_clusters / Searcher
def test_the_search_space_pca_is_opt_in(pca_model) -> None:
    """Plain cosine on the raw vectors is the default ranking space at any catalogue size (the
    PCA space was the default from 1,000 images until measured on three dev domains)."""
    d, X = pca_model
    s = Searcher(d / "default.vsm")
    assert len(s) == 1200 and "search_pca" not in s.config and s._space is None
    hits = s.search_vector(X[7], 5, exact=True, rerank="none")  # the plain cosine order
    want = np.argsort(-(X @ X[7]), kind="stable")[:5]
    assert [s._id_index[h.image] for h in hits] == want.tolist()


@pytest.fixture(scope="module")
def pca_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray]:
    rng = np.random.default_rng(3)
    centres = rng.standard_normal((12, 300)).astype(np.float32)
    X = normalize_rows(
        centres[rng.integers(0, 12, 1200)] + 0.8 * rng.standard_normal((1200, 300)).astype(np.float32)
    )
    d = tmp_path_factory.mktemp("pca")
    FeatureStore.write(d / "f", [f"c/{i:05d}.jpg" for i in range(len(X))], X, {"name": "test", "dim": 300})
    train_clusters(d / "f", d / "m.vsm", d / "c.csv", 6, show_progress=False, search_pca=SEARCH_PCA_DIM)
    train_clusters(d / "f", d / "default.vsm", d / "default.csv", 6, show_progress=False)
    train_clusters(d / "f", d / "raw.vsm", d / "raw.csv", 6, show_progress=False, search_pca=0)
    return d, X


def test_search_space_pca_is_stored_and_used(pca_model) -> None:
    d, X = pca_model
    s = Searcher(d / "m.vsm")
    assert s.config["search_pca"] == SEARCH_PCA_DIM and s._scoring.shape == (1200, SEARCH_PCA_DIM)
    mean, comps = s.model_file.arrays["search_mean"], s.model_file.arrays["search_components"]
    Z = to_search_space(X, mean, comps)
    q = X[7]
    want = np.argsort(-(Z @ to_search_space(q, mean, comps)), kind="stable")[:5]
    # query expansion is opt-in (docs/quality.md: its gain's interval reaches below 0 on fashion-dev)
    assert s.query_expansion == s.config["query_expansion"] == 0 and QE_NEIGHBOURS == 2
    hits = s.search_vector(q, 5, exact=True, expand=0, rerank="none")
    assert [s._id_index[h.image] for h in hits] == want.tolist()
    assert hits[0].image == s.ids[7] and hits[0].score == pytest.approx(1.0, abs=1e-4)
    raw = Searcher(d / "raw.vsm")
    assert raw._space is None and "search_pca" not in raw.config and raw._scoring is raw.vectors
    assert raw.query_expansion == 0
    # the query's own image still comes first at its plain cosine; the rest rank by the expanded query
    with_qe = s.search_vector(q, 5, exact=True)
    assert with_qe[0].image == s.ids[7] and with_qe[0].score == pytest.approx(1.0, abs=1e-4)
    loo = s.search_vector(q, 4, exact=True, exclude={7})
    assert [h.image for h in with_qe[1:]] == [h.image for h in loo]
    # whatever ranked them, the scores are the plain cosines of the query to the hits (raw space)
    want_scores = [float(X[s._id_index[h.image]] @ q) for h in with_qe]
    assert [h.score for h in with_qe] == pytest.approx(want_scores, abs=1e-3)  # (a float16 store)
    off = Searcher(d / "m.vsm", query_expansion=0)
    assert off.query_expansion == 0 and off.search_vector(q, 5, exact=True)[0].score == pytest.approx(
        1.0, abs=1e-4
    )


def test_exclude_and_query_expansion(pca_model) -> None:
    d, X = pca_model
    s = Searcher(d / "raw.vsm")
    q = X[3]
    plain = s.search_vector(q, 6, exact=True, rerank="none")
    assert plain[0].image == s.ids[3]
    ex = s.search_vector(q, 5, exact=True, exclude={3}, rerank="none")
    assert [h.image for h in ex] == [h.image for h in plain[1:6]]
    assert len(s.search_vector(q, 5, nprobe=1, exclude={3})) == 5
    # alpha-QE by hand: the query plus its top-2 (itself excluded), weighted by sim**3
    S = X @ q
    S[3] = -np.inf
    top2 = np.argsort(-S)[:2]
    v = normalize_rows((q + ((S[top2] ** 3)[:, None] * X[top2]).sum(0))[None])[0]
    S2 = X @ v
    S2[3] = -np.inf
    want = np.argsort(-S2, kind="stable")[:5]
    got = s.search_vector(q, 5, exact=True, expand=2, exclude={3}, rerank="none")  # QE's own order
    assert [s._id_index[h.image] for h in got] == want.tolist()
    qe = Searcher(d / "raw.vsm", query_expansion=2)
    assert [h.image for h in qe.search_vector(q, 5, exact=True, exclude={3}, rerank="none")] == [
        h.image for h in got
    ]
    # searching with a catalogue image: its own row (cosine 1) does not expand the query, so the
    # ranking after it is the leave-one-out expansion's (the bug: self took one of the 2 slots)
    with_self = qe.search_vector(q, 6, exact=True, rerank="none")
    assert with_self[0].image == s.ids[3]
    assert [h.image for h in with_self[1:]] == [h.image for h in got]
    assert [h.score for h in with_self[1:]] == pytest.approx([h.score for h in got], abs=1e-5)
    with pytest.raises(InvalidArgumentError, match="query_expansion"):
        Searcher(d / "raw.vsm", query_expansion=-1)
