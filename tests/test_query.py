"""Multi-view queries: crop geometry, views, and the best-view merge (exact against brute force)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from varsitysrch import Hit, InvalidArgumentError
from varsitysrch._query import crop_boxes, merge_view_hits, query_views, view_scores


def test_crop_boxes_cover_corners_and_centre() -> None:
    boxes = crop_boxes(100, 200, 0.7)
    assert boxes[0] == (0, 0, 100, 200) and len(boxes) == 6
    for left, top, right, bottom in boxes[1:]:
        assert (right - left, bottom - top) == (70, 140)
        assert 0 <= left < right <= 100 and 0 <= top < bottom <= 200
    assert {(b[0], b[1]) for b in boxes[1:5]} == {(0, 0), (30, 0), (0, 60), (30, 60)}
    assert boxes[5] == (15, 30, 85, 170)
    with pytest.raises(InvalidArgumentError, match="fraction"):
        crop_boxes(10, 10, 0.0)


def test_query_views_shape_and_content() -> None:
    a = np.zeros((120, 160, 3), np.uint8)
    a[:, :80] = (255, 0, 0)  # left half red, right half black
    im = Image.fromarray(a)
    v = query_views(im, 32, "letterbox", crops=True, flip=True)
    assert v.shape == (12, 32, 32, 3) and v.dtype == np.uint8
    # view 0 is the whole image, view 1 its mirror; the top-left crop (view 2) is mostly red
    assert np.array_equal(v[1], v[0][:, ::-1])

    def red(x: np.ndarray) -> float:
        return float(((x[..., 0] > 200) & (x[..., 1] < 50)).mean())

    assert red(v[2]) > red(v[0]) > red(v[4])  # top-left crop: more red than the whole, top-right less
    assert query_views(im, 32, "center-crop", crops=False).shape == (1, 32, 32, 3)


def test_merged_view_hits_equal_brute_force_best_view() -> None:
    rng = np.random.default_rng(0)
    C = rng.normal(size=(200, 16)).astype(np.float32)
    C /= np.linalg.norm(C, axis=1, keepdims=True)
    V = rng.normal(size=(6, 16)).astype(np.float32)
    V /= np.linalg.norm(V, axis=1, keepdims=True)
    n = 10
    per_view = []
    for v in V:
        s = C @ v
        top = np.argsort(-s)[:n]
        per_view.append([Hit(str(i), float(s[i]), 0, 0) for i in top])
    merged = merge_view_hits(per_view, n)
    best = view_scores(V, C, "max")
    expect = np.argsort(-best)[:n]
    assert [h.image for h in merged] == [str(i) for i in expect]
    np.testing.assert_allclose([h.score for h in merged], best[expect], rtol=1e-6)
    assert [h.rank for h in merged] == list(range(1, n + 1))
    # the best view never scores below the whole-image view alone
    assert (best >= C @ V[0] - 1e-7).all()
    # one view: unchanged
    assert merge_view_hits(per_view[:1], 3) == per_view[0][:3]


def test_mean_aggregate_is_cosine_to_the_mean_view() -> None:
    V = np.array([[1.0, 0.0], [0.0, 1.0]], np.float32)
    C = np.array([[1.0, 0.0], [np.sqrt(0.5), np.sqrt(0.5)]], np.float32)
    np.testing.assert_allclose(view_scores(V, C, "mean"), [np.sqrt(0.5), 1.0], rtol=1e-6)
    np.testing.assert_allclose(view_scores(V, C, "max"), [1.0, np.sqrt(0.5)], rtol=1e-6)
    with pytest.raises(InvalidArgumentError, match="aggregate"):
        view_scores(V, C, "median")


def test_parse_views() -> None:
    from varsitysrch._query import parse_views

    assert parse_views(None) == (False, False) and parse_views("none") == (False, False)
    assert parse_views("crops") == (True, False) and parse_views("crops+flip") == (True, True)
    assert parse_views("flip") == (False, True)
    with pytest.raises(InvalidArgumentError, match="views"):
        parse_views("zoom")
