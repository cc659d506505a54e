"""Collapse: near-duplicates of one product are shown once, in rank order."""

from __future__ import annotations

import numpy as np
import pytest

from varsitysrch import InvalidArgumentError
from varsitysrch._collapse import _COLLAPSE_THRESHOLD, check_collapse, collapse_rows
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
    kept, parent = collapse_rows(X[order], _COLLAPSE_THRESHOLD)
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
    assert _COLLAPSE_THRESHOLD == DEFAULT_THRESHOLD
    assert check_collapse(True) == DEFAULT_THRESHOLD
    assert check_collapse(False) is None and check_collapse(None) is None
    assert check_collapse(0.8) == 0.8
    for bad in (0, 1.5, "yes", -0.1):
        with pytest.raises(InvalidArgumentError, match="collapse must be"):
            check_collapse(bad)  # type: ignore[arg-type]


def test_search_collapses_planted_duplicates_and_still_returns_top_n(tmp_path) -> None:
    from varsitysrch import Searcher, train_clusters
    from varsitysrch._store import FeatureStore

    rng = np.random.default_rng(0)
    dim = 32
    base = rng.standard_normal((400, dim)).astype(np.float32)
    base /= np.linalg.norm(base, axis=1, keepdims=True)
    groups = {}
    rows = [base]
    for g in range(20):  # 20 products shot 4 times (the original + 3 near-copies, cosine ~0.99)
        c = base[g] + 0.15 * rng.standard_normal((3, dim)).astype(np.float32) / np.sqrt(dim)
        c /= np.linalg.norm(c, axis=1, keepdims=True)
        groups[g] = list(range(400 + 3 * g, 400 + 3 * g + 3))
        rows.append(c)
    X = np.concatenate(rows).astype(np.float32)
    ids = [f"p/{i:04d}.jpg" for i in range(len(X))]
    FeatureStore.write(tmp_path / "s", ids, X, {"name": "test", "dim": dim})
    (tmp_path / "a.csv").write_text("image,half\n" + "".join(f"{i},{j % 2}\n" for j, i in enumerate(ids)))
    train_clusters(
        tmp_path / "s",
        tmp_path / "m.vsm",
        tmp_path / "m.csv",
        8,
        attributes=tmp_path / "a.csv",
        show_progress=False,
    )
    s = Searcher(tmp_path / "m.vsm")
    for g, copies in groups.items():
        plain = s.search_vector(X[g], 10)
        assert {ids[c] for c in copies} <= {h.image for h in plain}  # without collapse: 4 slots for 1 product
        hits = s.search_vector(X[g], 10, collapse=True)
        assert len(hits) == 10 and [h.rank for h in hits] == list(range(1, 11))
        shown = {h.image for h in hits}
        assert not shown & {ids[c] for c in copies}  # the copies are gone ...
        assert hits[0].image == ids[g] and set(hits[0].duplicates) == {
            ids[c] for c in copies
        }  # ... folded in
        V = np.asarray(s.vectors[[ids.index(h.image) for h in hits]], np.float32)
        V /= np.linalg.norm(V, axis=1, keepdims=True)
        G = V @ V.T - 2 * np.eye(10)
        assert G.max() < _COLLAPSE_THRESHOLD  # no two shown hits are near-duplicates
        filtered = s.search_vector(X[g], 5, collapse=True, where={"half": g % 2})
        assert len(filtered) == 5 and all(int(ids.index(h.image)) % 2 == g % 2 for h in filtered)
    assert len(s.search_vector(X[0], 10, collapse=False)) == 10
