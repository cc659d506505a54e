"""Collapse: near-duplicates of one product are shown once, in rank order."""

from __future__ import annotations

import numpy as np
import pytest

from varsitysrch import InvalidArgumentError
from varsitysrch._collapse import COLLAPSE_THRESHOLD, check_collapse, collapse_rows
from varsitysrch._duplicates import DEFAULT_THRESHOLD


def planted(n_products: int, copies: int, dim: int = 64, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Distinct products (random directions, cosine ~0) each with near-copies (cosine ~0.98)."""
    rng = np.random.default_rng(seed)
    base = rng.standard_normal((n_products, dim))
    X, owner = [], []
    for p in range(n_products):
        for _ in range(copies):
            X.append(base[p] + 0.12 * rng.standard_normal(dim))
            owner.append(p)
    X = np.asarray(X, np.float32)
    return X / np.linalg.norm(X, axis=1, keepdims=True), np.asarray(owner)


def test_planted_duplicates_collapse_to_one_hit_per_product() -> None:
    X, owner = planted(6, 4)
    order = np.random.default_rng(1).permutation(len(X))  # a "ranking" that interleaves the copies
    kept, parent = collapse_rows(X[order], COLLAPSE_THRESHOLD)
    assert sorted(owner[order][kept].tolist()) == list(range(6))  # one hit per product
    assert kept.tolist() == sorted(kept.tolist())  # rank order kept
    first = {p: int(np.flatnonzero(owner[order] == p)[0]) for p in range(6)}
    assert set(kept.tolist()) == set(first.values())  # the best-ranked copy is the one shown
    for i, pa in enumerate(parent):
        assert owner[order][i] == owner[order][pa]  # every copy points at its own product


def test_distinct_items_are_all_kept_and_threshold_one_keeps_copies() -> None:
    X, _ = planted(10, 1)
    kept, parent = collapse_rows(X)
    assert kept.tolist() == list(range(10)) and parent.tolist() == list(range(10))
    Y, _ = planted(3, 3)
    assert len(collapse_rows(Y, 1.0)[0]) == 9
    assert collapse_rows(Y[:1])[0].tolist() == [0] and len(collapse_rows(Y[:0])[0]) == 0


def test_default_threshold_is_the_duplicate_detector_s() -> None:
    assert COLLAPSE_THRESHOLD == DEFAULT_THRESHOLD
    assert check_collapse(True) == DEFAULT_THRESHOLD
    assert check_collapse(False) is None and check_collapse(None) is None
    assert check_collapse(0.8) == 0.8
    for bad in (0, 1.5, "yes", -0.1):
        with pytest.raises(InvalidArgumentError, match="collapse must be"):
            check_collapse(bad)  # type: ignore[arg-type]
