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


@pytest.fixture(scope="module")
def two_products(tmp_path_factory: pytest.TempPathFactory):
    """Two look-alike products A and B (and others); a query halfway between A and B."""
    from varsitysrch import Searcher, train_clusters
    from varsitysrch._store import FeatureStore

    tmp = tmp_path_factory.mktemp("fb")
    rng = np.random.default_rng(0)
    dim = 32
    cA, cB = unit(rng.standard_normal(dim)), unit(rng.standard_normal(dim))
    cB = unit(cA + 0.6 * cB)  # B looks like A
    others = unit(rng.standard_normal((8, dim)))
    X, lab = [], []
    for name, c, m in [("A", cA, 60), ("B", cB, 60)] + [(f"o{i}", others[i], 40) for i in range(8)]:
        X.append(unit(c + 0.35 * rng.standard_normal((m, dim)) / np.sqrt(dim) * 3))
        lab += [name] * m
    X = np.concatenate(X).astype(np.float32)
    ids = [f"{lab[i]}/{i:04d}.jpg" for i in range(len(X))]
    FeatureStore.write(tmp / "s", ids, X, {"name": "test", "dim": dim})
    (tmp / "a.csv").write_text("image,product\n" + "".join(f"{i},{i.split('/')[0]}\n" for i in ids))
    train_clusters(tmp / "s", tmp / "m.vsm", tmp / "m.csv", 6, attributes=tmp / "a.csv", show_progress=False)
    return Searcher(tmp / "m.vsm"), X, ids, unit(cA + cB), tmp


def test_feedback_moves_results_toward_the_positives(two_products) -> None:
    s, X, ids, q, _ = two_products
    first = s.search_vector(q, 10)
    pos = [h.image for h in first if h.image.startswith("A/")]
    neg = [h.image for h in first if not h.image.startswith("A/")]
    assert pos and neg  # the first page mixes A and B
    after = s.search_feedback(q, pos, neg, 10)
    assert len(after) == 10
    judged = set(pos) | set(neg)
    assert not judged & {h.image for h in after}  # judged items are not shown again
    share_before = np.mean([h.image.startswith("A/") for h in s.search_vector(q, 20)[10:]])
    share_after = np.mean([h.image.startswith("A/") for h in after])
    assert share_after > share_before and share_after >= 0.9
    kept = s.search_feedback(q, pos, neg, 10, exclude_judged=False)
    assert set(pos) & {h.image for h in kept} and not set(neg) & {h.image for h in kept}
    # positives only, no query: the positives' mean is the query
    only = s.search_feedback(None, pos, (), 10)
    assert np.mean([h.image.startswith("A/") for h in only]) > np.mean(
        [h.image.startswith("A/") for h in first]
    )
    # vectors work as items too, and feedback respects filters and collapse
    vec = s.search_feedback(q, [X[ids.index(pos[0])]], [], 5, where={"product": ["A", "B"]}, collapse=True)
    assert len(vec) == 5 and all(h.image[0] in "AB" for h in vec)


def test_feedback_errors(two_products) -> None:
    s, _, ids, q, _tmp = two_products
    with pytest.raises(InvalidArgumentError, match="neither a catalogue id nor an image file"):
        s.search_feedback(q, ["no/such.jpg"], [], 5)
    with pytest.raises(InvalidArgumentError, match="a query or at least one positive"):
        s.search_feedback(None, [], [ids[0]], 5)
    with pytest.raises(InvalidArgumentError, match="must be"):
        s.search_feedback(q, [ids[0]], [], 5, beta=-1)


def test_module_level_search_feedback(two_products) -> None:
    import varsitysrch

    s, _, ids, _q, tmp = two_products
    assert "search_feedback" in varsitysrch.__all__
    hits = varsitysrch.search_feedback(tmp / "m.vsm", [ids[0], ids[1]], [ids[100]], top_n=4)
    assert len(hits) == 4 and not {ids[0], ids[1], ids[100]} & {h.image for h in hits}
    assert hits == s.search_feedback(None, [ids[0], ids[1]], [ids[100]], 4)
