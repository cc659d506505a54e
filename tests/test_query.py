"""Multi-view queries: crop geometry, views, and the best-view merge (exact against brute force)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from varsitysrch import InvalidArgumentError
from varsitysrch._pipeline import _Decoded, _merge_views, _views
from varsitysrch._query import crop_boxes


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
    whole = np.asarray(im.resize((32, 32)), np.uint8)
    v, discount, crops = _views(_Decoded(whole, im), "crops+flip", False, 32, "letterbox")
    assert v.shape == (12, 32, 32, 3) and v.dtype == np.uint8 and crops and discount == 0.0
    # view 0 is the whole image (as decoded for the extractor), view 1 its mirror; the
    # top-left crop (view 2) is mostly red
    assert np.array_equal(v[0], whole) and np.array_equal(v[1], v[0][:, ::-1])

    def red(x: np.ndarray) -> float:
        return float(((x[..., 0] > 200) & (x[..., 1] < 50)).mean())

    assert red(v[2]) > red(v[0]) > red(v[4])  # top-left crop: more red than the whole, top-right less
    assert _views(_Decoded(whole, im), None, False, 32, "center-crop")[0].shape == (1, 32, 32, 3)
    # "auto" against a catalogue that is not studio shots: the whole image only
    assert _views(_Decoded(whole, im), "auto", False, 32, "letterbox")[0].shape == (1, 32, 32, 3)


def test_merged_views_equal_brute_force_best_view() -> None:
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
        per_view.append((top.astype(np.int64), s[top]))
    rows, scores = _merge_views(per_view)
    best = (C @ V.T).max(axis=1)
    expect = np.argsort(-best)[:n]
    assert rows[:n].tolist() == expect.tolist()
    np.testing.assert_allclose(scores[:n], best[expect], rtol=1e-6)
    # the best view never scores below the whole-image view alone
    assert (best >= C @ V[0] - 1e-7).all()
    # one view: unchanged
    assert _merge_views(per_view[:1])[0].tolist() == per_view[0][0].tolist()


def test_parse_views() -> None:
    from varsitysrch._query import parse_views

    assert parse_views(None) == (False, False) and parse_views("none") == (False, False)
    assert parse_views("crops") == (True, False) and parse_views("crops+flip") == (True, True)
    assert parse_views("flip") == (False, True)
    with pytest.raises(InvalidArgumentError, match="views"):
        parse_views("zoom")
