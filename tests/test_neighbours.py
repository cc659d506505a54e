"""The shared neighbour primitives against brute force on generated data."""

from __future__ import annotations

import numpy as np
import pytest

from varsitysrch._neighbours import centroid_order, exact_topk, list_recall, nearest_centroid, probe_recall


def _unit(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    X = rng.normal(size=(n, d)).astype(np.float32)
    return X / np.linalg.norm(X, axis=1, keepdims=True)


@pytest.mark.parametrize("chunk", [None, 7, 64, 1000])
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_exact_topk_is_brute_force_with_self_excluded(chunk: int | None, dtype: type) -> None:
    rng = np.random.default_rng(1)
    X = _unit(rng, 300, 16).astype(dtype)
    q = rng.choice(300, 25, replace=False)
    rows, scores = exact_topk(X[q], X, 10, exclude=q, chunk=chunk)
    S = X[q].astype(np.float32) @ X.astype(np.float32).T
    S[np.arange(len(q)), q] = -np.inf
    ref = np.argsort(-S, axis=1, kind="stable")[:, :10]
    np.testing.assert_array_equal(rows, ref)
    np.testing.assert_allclose(scores, np.take_along_axis(S, ref, 1), rtol=1e-5, atol=1e-6)
    assert not (rows == q[:, None]).any()
    assert (np.diff(scores, axis=1) <= 0).all()


def test_exact_topk_caps_k_at_the_catalogue() -> None:
    X = _unit(np.random.default_rng(2), 5, 4)
    rows, _ = exact_topk(X[:2], X, 50, exclude=np.array([0, 1]))
    assert rows.shape == (2, 4)
    assert {tuple(sorted(r)) for r in rows.tolist()} == {(1, 2, 3, 4), (0, 2, 3, 4)}


def test_nearest_centroid_matches_brute_force() -> None:
    rng = np.random.default_rng(3)
    X, C = _unit(rng, 500, 8), _unit(rng, 12, 8)
    labels, dists = nearest_centroid(X, C, chunk=33)
    D = np.linalg.norm(X[:, None, :] - C[None, :, :], axis=2)
    np.testing.assert_array_equal(labels, D.argmin(1))
    np.testing.assert_allclose(dists, D.min(1), atol=1e-3)
    order = centroid_order(X[:20], C)
    np.testing.assert_array_equal(order, np.argsort(D[:20], axis=1, kind="stable"))


def test_probe_recall_is_monotone_and_complete_at_k() -> None:
    rng = np.random.default_rng(4)
    X, C = _unit(rng, 400, 8), _unit(rng, 6, 8)
    labels, _ = nearest_centroid(X, C)
    q = np.arange(30)
    exact, _ = exact_topk(X[q], X, 10, exclude=q)
    curve = probe_recall(exact, labels, centroid_order(X[q], C))
    assert curve.shape == (6,)
    assert (np.diff(curve) >= 0).all() and curve[-1] == pytest.approx(1.0)
    # recall at nprobe=1 is the share of exact neighbours in the query's nearest cluster
    first = centroid_order(X[q], C)[:, 0]
    assert curve[0] == pytest.approx(float((labels[exact] == first[:, None]).mean()))


def test_list_recall() -> None:
    got = list_recall([[1, 2, 3], [4, 5, 6], []], [[1, 2, 9], [7, 8, 9], []], 3)
    np.testing.assert_allclose(got, [2 / 3, 0.0, 1.0])
