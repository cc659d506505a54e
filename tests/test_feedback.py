"""Relevance feedback: the refined query moves toward what was liked, away from what was not."""

from __future__ import annotations

import numpy as np
import pytest

from varsitysrch import InvalidArgumentError
from varsitysrch._feedback import check_items, rocchio


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def test_rocchio_moves_toward_positives_and_away_from_negatives() -> None:
    rng = np.random.default_rng(0)
    for _ in range(50):
        q = unit(rng.standard_normal(32))
        P = unit(rng.standard_normal((3, 32)))
        N = unit(rng.standard_normal((2, 32)))
        r = rocchio(q, P, N)
        assert abs(np.linalg.norm(r) - 1) < 1e-5
        pm, nm = unit(P.mean(0)), unit(N.mean(0))
        assert r @ pm > q @ pm
        assert r @ nm < q @ nm
        only_pos = rocchio(q, P, None)
        only_neg = rocchio(q, None, N)
        assert only_pos @ pm > q @ pm and only_neg @ nm < q @ nm
        np.testing.assert_allclose(rocchio(q, None, None), q, atol=1e-6)


def test_without_a_query_the_positives_are_the_query() -> None:
    rng = np.random.default_rng(1)
    P = unit(rng.standard_normal((4, 16)))
    np.testing.assert_allclose(rocchio(None, P, None), unit(P.mean(0)), atol=1e-6)
    with pytest.raises(InvalidArgumentError, match="at least one positive"):
        rocchio(None, None, P)


def test_weights_and_items_are_checked() -> None:
    q = unit(np.ones(4))
    for bad in ({"beta": -1.0}, {"gamma": float("nan")}, {"alpha": True}, {"beta": "1"}):
        with pytest.raises(InvalidArgumentError, match="must be"):
            rocchio(q, q[None], None, **bad)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError, match="dim"):
        rocchio(q, np.ones((1, 5)), None)
    with pytest.raises(InvalidArgumentError, match="single str"):
        check_items("a.jpg", [], True)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError, match="at most 100"):
        check_items(["a"] * 101, [], True)
    with pytest.raises(InvalidArgumentError, match="a query or at least one positive"):
        check_items([], ["a"], False)


def test_cancelling_feedback_falls_back_to_the_query() -> None:
    q = unit(np.array([1.0, 0, 0, 0]))
    r = rocchio(q, None, q[None], alpha=1.0, gamma=1.0, gamma_negatives_only=None)
    np.testing.assert_allclose(r, q)
