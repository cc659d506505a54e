"""Colour signature: foreground only, known colours, hue shifts with known answers."""

from __future__ import annotations

import numpy as np
import pytest

from varsitysrch import InvalidArgumentError
from varsitysrch._colour import (
    SIGNATURE_DIM,
    _foreground_mask,
    _rgb_to_hsv,
    colour_signature,
    combine_scores,
)


# the known-answer generator of the hue tests (the library keeps only rgb_to_hsv, which search uses)
def hsv_to_rgb(h: np.ndarray, s: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Inverse of ``rgb_to_hsv`` -> ``uint8 [..., 3]``."""
    h6 = (np.asarray(h, np.float32) % 1.0) * 6.0
    i = np.floor(h6).astype(np.int32) % 6
    f = h6 - np.floor(h6)
    s = np.asarray(s, np.float32)
    v = np.asarray(v, np.float32)
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    choices = [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)]
    out = np.zeros((*h6.shape, 3), np.float32)
    for k, (r, g, b) in enumerate(choices):
        m = i == k
        out[m, 0], out[m, 1], out[m, 2] = r[m], g[m], b[m]
    return np.clip(np.rint(out * 255.0), 0, 255).astype(np.uint8)


def hue_shift(image: np.ndarray, degrees: float) -> np.ndarray:
    """The image with every hue rotated by ``degrees`` (saturation, value and greys unchanged)."""
    h, s, v = _rgb_to_hsv(np.asarray(image, np.uint8))
    return hsv_to_rgb(h + float(degrees) / 360.0, s, v)


def product(colour: tuple[int, int, int], background: tuple[int, int, int], size: int = 96) -> np.ndarray:
    """A filled disc of ``colour`` (with some shading) on a plain ``background``."""
    yy, xx = np.mgrid[0:size, 0:size]
    im = np.empty((size, size, 3), np.uint8)
    im[:] = background
    disc = (yy - size / 2) ** 2 + (xx - size / 2) ** 2 < (size / 3) ** 2
    shade = (0.8 + 0.2 * (xx / size))[..., None]
    im[disc] = np.clip(np.asarray(colour) * shade, 0, 255).astype(np.uint8)[disc]
    return im


RED, GREEN, BLUE = (210, 30, 40), (40, 190, 60), (40, 60, 200)
WHITE, GREY, BEIGE = (255, 255, 255), (128, 128, 128), (225, 210, 180)


def test_hsv_round_trip_and_hue_shift_keeps_greys() -> None:
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, size=(50, 50, 3), dtype=np.uint8)
    back = hsv_to_rgb(*_rgb_to_hsv(rgb))
    assert np.abs(back.astype(int) - rgb).max() <= 1
    grey = np.full((8, 8, 3), 77, np.uint8)
    assert np.array_equal(hue_shift(grey, 123), grey)
    # three shifts of 120 degrees come back to the start; red -> green -> blue
    im = product(RED, WHITE)
    assert np.abs(hue_shift(hue_shift(hue_shift(im, 120), 120), 120).astype(int) - im).max() <= 2
    h, _, _ = _rgb_to_hsv(np.array([[[255, 0, 0]]], np.uint8))
    h2, _, _ = _rgb_to_hsv(hue_shift(np.array([[[255, 0, 0]]], np.uint8), 120))
    assert float(h[0, 0]) == pytest.approx(0.0) and float(h2[0, 0]) == pytest.approx(1 / 3, abs=1e-3)


def test_foreground_mask_finds_the_product_on_any_plain_background() -> None:
    for bg in (WHITE, GREY, BEIGE):
        im = product(RED, bg)
        m = _foreground_mask(im)
        disc_frac = np.pi / 9  # area of the disc / area of the image
        assert m.mean() == pytest.approx(disc_frac, abs=0.03)
        assert not m[0].any() and m[48, 48]
    # no plain background (noise everywhere): every pixel counts
    noise = np.random.default_rng(1).integers(0, 256, size=(64, 64, 3), dtype=np.uint8)
    assert _foreground_mask(noise).all()


def test_signature_is_the_products_colour_not_the_backgrounds() -> None:
    sig = {(c, b): colour_signature(product(c, b)) for c in (RED, GREEN, BLUE) for b in (WHITE, GREY, BEIGE)}
    for s in sig.values():
        assert s.shape == (SIGNATURE_DIM,) and s.dtype == np.float32
        assert float(np.linalg.norm(s)) == pytest.approx(1.0, abs=1e-5) and (s >= 0).all()
    for c in (RED, GREEN, BLUE):
        same_colour = [float(sig[(c, WHITE)] @ sig[(c, b)]) for b in (GREY, BEIGE)]
        other_colour = [float(sig[(c, WHITE)] @ sig[(o, WHITE)]) for o in (RED, GREEN, BLUE) if o != c]
        # the same product on another background is far closer than another colour on the same one
        assert min(same_colour) > 0.9 > 0.3 > max(other_colour)


def test_hue_shifted_copies_rank_by_hue_distance() -> None:
    im = product(RED, WHITE)
    s0 = colour_signature(im)
    sims = [float(s0 @ colour_signature(hue_shift(im, d))) for d in (0, 30, 90, 180)]
    assert sims[0] == pytest.approx(1.0, abs=1e-5)
    assert sims[0] > sims[1] > sims[2] >= sims[3] - 1e-6


def test_combine_scores_and_weight_checked() -> None:
    cos = np.array([0.9, 0.8], np.float32)
    col = np.array([0.1, 1.0], np.float32)
    np.testing.assert_allclose(combine_scores(cos, col, 0.0), cos)
    np.testing.assert_allclose(combine_scores(cos, col, 1.0), col)
    # enough colour weight reverses the order
    assert np.argmax(combine_scores(cos, col, 0.5)) == 1
    for bad in (-0.1, 1.5, float("nan")):
        with pytest.raises(InvalidArgumentError, match="colour_weight"):
            combine_scores(cos, col, bad)
    with pytest.raises(InvalidArgumentError, match="RGB"):
        colour_signature(np.zeros((4, 4), np.uint8))


def test_colour_store_beside_the_vectors_is_kept_for_unchanged_images(
    synth_catalogue: tuple, tmp_path
) -> None:
    import shutil

    from PIL import Image

    from varsitysrch import extract_features
    from varsitysrch._colour import (
        _COLOUR_DECODE_SIZE,
        load_colour_signatures,
    )
    from varsitysrch._images import load_image
    from varsitysrch._store import FeatureStore

    src, _ = synth_catalogue
    root = tmp_path / "imgs"
    shutil.copytree(src, root)
    feats = tmp_path / "features"
    extract_features(root, feats, show_progress=False)  # writes the colour rows with the vectors
    ids = FeatureStore.open(feats).ids
    sig = load_colour_signatures(feats, ids)
    assert sig is not None and sig.shape == (len(ids), SIGNATURE_DIM)
    for j in (0, 7):
        expect = colour_signature(load_image(root / ids[j], _COLOUR_DECODE_SIZE, "letterbox"))
        np.testing.assert_allclose(sig[j], expect, atol=2e-3)  # stored as float16
    # the feature store itself is untouched and still opens
    assert FeatureStore.open(feats).ids == ids
    # an image that changes colour is recomputed; the others are kept
    victim = ids[0]
    Image.fromarray(product(BLUE, WHITE)).save(root / victim)
    extract_features(root, feats, show_progress=False)  # writes the colour rows with the vectors
    sig2 = load_colour_signatures(feats, ids)
    assert sig2 is not None
    assert float(sig2[0] @ sig[0]) < 0.9
    np.testing.assert_array_equal(sig2[1:], sig[1:])
    # ids the colour store does not know: no signatures rather than wrong ones
    assert load_colour_signatures(feats, [*ids, "nope.png"]) is None
