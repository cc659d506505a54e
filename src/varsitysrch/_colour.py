"""The product's colour: a foreground mask, a compact colour signature, and hue-shifted copies.

* :func:`_foreground_mask` -- which pixels belong to the product: the background colour is
  estimated from the image border (median of the border pixels, so a white studio backdrop,
  a grey wall or the white padding of a letterboxed photo all work) and a pixel is
  foreground when it differs from it clearly.  When almost nothing or almost everything
  differs (a photo without a plain background) every pixel counts.
* :func:`colour_signature` -- a Hellinger-normalised HSV histogram of the foreground:
  12 hues x 3 saturations x 3 values (each soft-assigned to its two nearest bins) for
  chromatic pixels, plus 4 grey levels for achromatic ones (whose hue is noise):
  ``SIGNATURE_DIM`` = 112 numbers, stored as float16 in the feature store's generation
  beside the CNN vectors.  The cosine of two signatures is in ``[0, 1]``.
* :func:`combine_scores` -- ``(1 - w) * cosine + w * colour similarity``, the score the
  search ranks by when the user asks to match colour (``colour_weight=w``).
* :func:`plain_background` -- whether a photo is a product shot on a plain backdrop (studio
  / catalogue style: nearly all of its border is one colour) rather than a photo taken in a
  shop or at home.  Stored per image beside the colour signatures; the catalogue's share of
  such images (its *studio share*) tells a shopper's photo searched against a studio
  catalogue (``views="auto"``, :mod:`varsitysrch._query`).

Where they live: :func:`~varsitysrch.extract_features` computes each image's signature and flag
from the same decode as its vector and commits them in the same store generation
(``colour.npy``, ``plain.npy``: :mod:`varsitysrch._store`), so they are never of another
generation than the vectors; the model records their checksum and the studio share at
training (``model.json`` ``colour``: :func:`varsitysrch._store.FeatureStore.colour_record`).
A store without colour rows (bare vectors, or written by a version before them) has none: the
loaders below return ``None`` for it, a model trained on it records ``colour: null`` (no
studio share: ``views="auto"`` searches the whole photo; colour ranking is refused with advice
to re-extract), and the next :func:`~varsitysrch.extract_features` over it computes them for
every image.  The ``colour/`` sidecar folder of earlier versions is never read.

Figures (what ``w`` does to same-colour rate and same-type precision) are in
``docs/quality.md``.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import numpy as np

from ._errors import InvalidArgumentError

__all__ = [
    "COLOUR_IDENTITY",
    "MATCH_COLOUR_WEIGHT",
    "PLAIN_DECODE_SIZE",
    "SIGNATURE_DIM",
    "border_share",
    "check_colour_weight",
    "colour_inputs",
    "colour_signature",
    "colour_signatures",
    "combine_scores",
    "load_colour_signatures",
    "load_plain_flags",
    "model_colour_checksum",
    "model_studio_share",
    "plain_background",
]


_HUE_BINS = 12
_SAT_BINS = 3
_VAL_BINS = 3
_GREY_BINS = 4
SIGNATURE_DIM = _HUE_BINS * _SAT_BINS * _VAL_BINS + _GREY_BINS
#: pixels with saturation or value below this are achromatic (grey levels only)
_CHROMA_MIN = 0.2
#: a pixel is foreground when its largest channel difference to the background exceeds this
_FOREGROUND_DIFF = 40
log = logging.getLogger(__name__)
#: below / above these foreground fractions there is no plain background: every pixel counts
_FOREGROUND_MIN, _FOREGROUND_MAX = 0.05, 0.95
#: images are subsampled to about this many pixels on their short side for the signature
_SIGNATURE_SIDE = 64


def _rgb_uint8(image: np.ndarray) -> np.ndarray:
    a = np.asarray(image)
    if a.ndim != 3 or a.shape[2] != 3:
        raise InvalidArgumentError(f"image must be an RGB array [H, W, 3]; got shape {a.shape}")
    return a if a.dtype == np.uint8 else np.clip(a, 0, 255).astype(np.uint8)


def _frame(image: np.ndarray, border: int) -> np.ndarray:
    """The pixels ``[n, 3]`` of the ``border``-pixel frame of the image (corners counted twice)."""
    a = _rgb_uint8(image)
    b = max(1, min(border, a.shape[0] // 4, a.shape[1] // 4))
    return np.concatenate(
        [a[:b].reshape(-1, 3), a[-b:].reshape(-1, 3), a[:, :b].reshape(-1, 3), a[:, -b:].reshape(-1, 3)]
    )


def _background_colour(image: np.ndarray, border: int = 2) -> np.ndarray:
    """Median RGB of the ``border``-pixel frame of the image."""
    return np.median(_frame(image, border), axis=0)


#: a photo has a plain background when at least this share of its border pixels is within
#: ``_FOREGROUND_DIFF / 2`` of the border's median colour (how often dev photos have one:
#: docs/quality.md)
_PLAIN_BORDER_SHARE = 0.9
#: the border frame of a ``PLAIN_DECODE_SIZE`` px image that :func:`plain_background` inspects
_PLAIN_BORDER = 3
#: images are decoded at this size for their colour signature (letterboxed; JPEG draft decoding
#: makes it cheap) and for :func:`plain_background` (squashed: no padding) -- one decode gives both
_COLOUR_DECODE_SIZE = PLAIN_DECODE_SIZE = 64


def border_share(image: np.ndarray, border: int = _PLAIN_BORDER) -> float:
    """Share of the ``border``-pixel frame within ``_FOREGROUND_DIFF / 2`` of its median colour."""
    frame = _frame(image, border).astype(np.int16)
    bg = np.median(frame, axis=0)
    return float((np.abs(frame - bg).max(axis=1) <= _FOREGROUND_DIFF / 2).mean())


def plain_background(image: np.ndarray) -> bool:
    """Whether ``image`` (RGB, not letterboxed: padding would count as backdrop) is a product
    shot on a plain backdrop: :func:`border_share` at least :data:`_PLAIN_BORDER_SHARE`."""
    return border_share(image) >= _PLAIN_BORDER_SHARE


def _foreground_mask(image: np.ndarray) -> np.ndarray:
    """Boolean ``[H, W]``: the product's pixels (everything when there is no plain background)."""
    a = _rgb_uint8(image)
    bg = _background_colour(a)
    diff = np.abs(a.astype(np.int16) - bg.astype(np.int16)).max(axis=2)
    mask = diff > _FOREGROUND_DIFF
    frac = float(mask.mean())
    if not _FOREGROUND_MIN <= frac <= _FOREGROUND_MAX:
        return np.ones(mask.shape, bool)
    return mask


def _rgb_to_hsv(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``uint8 [..., 3]`` -> hue in ``[0, 1)``, saturation and value in ``[0, 1]`` (float32)."""
    x = np.asarray(rgb, np.float32) / 255.0
    r, g, b = x[..., 0], x[..., 1], x[..., 2]
    mx = x.max(-1)
    mn = x.min(-1)
    d = mx - mn
    safe = np.where(d > 0, d, 1.0)
    h = np.where(mx == r, (g - b) / safe, np.where(mx == g, 2.0 + (b - r) / safe, 4.0 + (r - g) / safe))
    h = np.where(d > 0, (h / 6.0) % 1.0, 0.0).astype(np.float32)
    s = np.where(mx > 0, d / np.where(mx > 0, mx, 1.0), 0.0).astype(np.float32)
    return h, s, mx.astype(np.float32)


def _fast_hsv(pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`_rgb_to_hsv` of ``uint8 [n, 3]`` pixels through Pillow's C conversion (8-bit channels)."""
    from PIL import Image

    hsv = np.asarray(Image.fromarray(np.ascontiguousarray(pixels[None], np.uint8), "RGB").convert("HSV"))[0]
    scale = np.float32(1.0 / 255.0)
    h = hsv[:, 0].astype(np.float32) * np.float32(1.0 / 256.0)
    return h, hsv[:, 1].astype(np.float32) * scale, hsv[:, 2].astype(np.float32) * scale


def colour_signature(image: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """The ``SIGNATURE_DIM`` colour signature (unit float32 vector) of the foreground of ``image``.

    Images larger than ``_SIGNATURE_SIDE`` pixels are subsampled (every n-th pixel) first: a
    histogram needs a few thousand pixels, and the signature then costs ~0.3 ms per image.
    """
    a = _rgb_uint8(image)
    if mask is not None:
        mask = np.asarray(mask, bool)
        if mask.shape != a.shape[:2]:
            raise InvalidArgumentError(f"mask shape {mask.shape} does not match the image's {a.shape[:2]}")
    step = max(1, min(a.shape[0], a.shape[1]) // _SIGNATURE_SIDE)
    if step > 1:
        a = a[::step, ::step]
        mask = None if mask is None else mask[::step, ::step]
    m = _foreground_mask(a) if mask is None else mask
    h, s, v = _fast_hsv(a[m] if m.any() else a.reshape(-1, 3))
    chroma = (s >= _CHROMA_MIN) & (v >= _CHROMA_MIN)
    # chromatic pixels: hue, saturation and value each soft-assigned between the two nearest bin
    # centres (a slightly darker shade of the same red must not jump to another bin)
    h_lo, h_w = _soft_bins(h[chroma] * _HUE_BINS - 0.5, _HUE_BINS, wrap=True)
    s_lo, s_w = _soft_bins((s[chroma] - _CHROMA_MIN) / (1 - _CHROMA_MIN) * _SAT_BINS - 0.5, _SAT_BINS)
    v_lo, v_w = _soft_bins((v[chroma] - _CHROMA_MIN) / (1 - _CHROMA_MIN) * _VAL_BINS - 0.5, _VAL_BINS)
    n_chroma = _HUE_BINS * _SAT_BINS * _VAL_BINS
    hist = np.zeros(n_chroma, np.float64)
    for hi, hw in zip(h_lo, h_w, strict=True):
        for si, sw in zip(s_lo, s_w, strict=True):
            for vi, vw in zip(v_lo, v_w, strict=True):
                hist += np.bincount((hi * _SAT_BINS + si) * _VAL_BINS + vi, hw * sw * vw, n_chroma)
    g_lo, g_w = _soft_bins(v[~chroma] * _GREY_BINS - 0.5, _GREY_BINS)
    grey = sum(np.bincount(gi, gw, _GREY_BINS) for gi, gw in zip(g_lo, g_w, strict=True))
    hist = np.concatenate([hist, np.asarray(grey, np.float64).reshape(_GREY_BINS)])
    hist = np.sqrt(hist / max(1.0, hist.sum()))
    n = float(np.linalg.norm(hist))
    return (hist / n if n > 0 else hist).astype(np.float32)


def _soft_bins(pos: np.ndarray, n: int, wrap: bool = False) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Linear soft assignment of positions (in bin units, bin centres at integers) to two bins."""
    lo = np.floor(pos).astype(np.int64)
    frac = (pos - lo).astype(np.float64)
    hi = lo + 1
    if wrap:
        return [lo % n, hi % n], [1.0 - frac, frac]
    # outside the first / last centre everything goes to the edge bin
    return [np.clip(lo, 0, n - 1), np.clip(hi, 0, n - 1)], [1.0 - frac, frac]


def colour_inputs(photo: Any) -> tuple[np.ndarray, np.ndarray]:
    """The two small images the colour row of a decoded photo (an RGB PIL image) is computed from:
    ``(letterboxed to COLOUR_DECODE_SIZE px, squashed to PLAIN_DECODE_SIZE px)`` (uint8), via one
    box reduction to about twice that size (two bilinear fits from a full decode cost more than the
    decode itself)."""
    from ._images import _fit

    side = 2 * max(_COLOUR_DECODE_SIZE, PLAIN_DECODE_SIZE)
    factor = min(photo.size) // side
    base = photo.reduce(factor) if factor > 1 else photo
    return (
        np.asarray(_fit(base, _COLOUR_DECODE_SIZE, "letterbox"), np.uint8),
        np.asarray(_fit(base, PLAIN_DECODE_SIZE, "squash"), np.uint8),
    )


def colour_signatures(images: np.ndarray) -> np.ndarray:
    """:func:`colour_signature` of each image of a ``uint8 [N, H, W, 3]`` batch -> ``float32 [N, D]``.

    Vectorised over the batch (one pass of each numpy step for all images: extraction computes a
    batch's signatures at a fraction of the per-image cost, and holds the GIL far less).  Equal
    to :func:`colour_signature` image by image up to float rounding (sums in another order).
    """
    a = np.asarray(images)
    if a.ndim != 4 or a.shape[3] != 3:
        raise InvalidArgumentError(f"images must be a uint8 batch [N, H, W, 3]; got shape {a.shape}")
    n = len(a)
    if n == 0:
        return np.zeros((0, SIGNATURE_DIM), np.float32)
    a = a if a.dtype == np.uint8 else np.clip(a, 0, 255).astype(np.uint8)
    step = max(1, min(a.shape[1], a.shape[2]) // _SIGNATURE_SIDE)
    if step > 1:
        a = a[:, ::step, ::step]
    # foreground masks, as foreground_mask does per image (median of the 2-px border frame)
    b = max(1, min(2, a.shape[1] // 4, a.shape[2] // 4))
    frame = np.concatenate(
        [
            a[:, :b].reshape(n, -1, 3),
            a[:, -b:].reshape(n, -1, 3),
            a[:, :, :b].reshape(n, -1, 3),
            a[:, :, -b:].reshape(n, -1, 3),
        ],
        axis=1,
    )
    bg = np.median(frame, axis=1).astype(np.int16)  # [n, 3]
    diff = np.abs(a.astype(np.int16) - bg[:, None, None, :]).max(axis=3)
    mask = diff > _FOREGROUND_DIFF
    frac = mask.mean(axis=(1, 2))
    mask[(frac < _FOREGROUND_MIN) | (frac > _FOREGROUND_MAX)] = True
    mask[~mask.any(axis=(1, 2))] = True  # no foreground pixel: every pixel counts
    pixels = a.reshape(-1, 3)
    weight = mask.reshape(-1).astype(np.float64)  # 0/1: a pixel outside the mask adds nothing
    image = np.repeat(np.arange(n, dtype=np.int64), a.shape[1] * a.shape[2])
    h, sat, v = _fast_hsv(pixels)
    chroma = (sat >= _CHROMA_MIN) & (v >= _CHROMA_MIN)
    n_chroma = _HUE_BINS * _SAT_BINS * _VAL_BINS
    h_lo, h_w = _soft_bins(h[chroma] * _HUE_BINS - 0.5, _HUE_BINS, wrap=True)
    s_lo, s_w = _soft_bins((sat[chroma] - _CHROMA_MIN) / (1 - _CHROMA_MIN) * _SAT_BINS - 0.5, _SAT_BINS)
    v_lo, v_w = _soft_bins((v[chroma] - _CHROMA_MIN) / (1 - _CHROMA_MIN) * _VAL_BINS - 0.5, _VAL_BINS)
    base, wc = image[chroma] * n_chroma, weight[chroma]
    hist = np.zeros(n * n_chroma, np.float64)
    for hi, hw in zip(h_lo, h_w, strict=True):
        for si, sw in zip(s_lo, s_w, strict=True):
            for vi, vw in zip(v_lo, v_w, strict=True):
                hist += np.bincount(
                    base + (hi * _SAT_BINS + si) * _VAL_BINS + vi, wc * hw * sw * vw, n * n_chroma
                )
    g_lo, g_w = _soft_bins(v[~chroma] * _GREY_BINS - 0.5, _GREY_BINS)
    gbase, wg = image[~chroma] * _GREY_BINS, weight[~chroma]
    grey = sum(np.bincount(gbase + gi, wg * gw, n * _GREY_BINS) for gi, gw in zip(g_lo, g_w, strict=True))
    out = np.concatenate(
        [hist.reshape(n, n_chroma), np.asarray(grey, np.float64).reshape(n, _GREY_BINS)], axis=1
    )
    out = np.sqrt(out / np.maximum(1.0, out.sum(axis=1, keepdims=True)))
    norms = np.linalg.norm(out, axis=1, keepdims=True)
    return (out / np.where(norms > 0, norms, 1.0)).astype(np.float32)


def check_colour_weight(weight: float) -> float:
    w = float(weight)
    if not 0.0 <= w <= 1.0 or w != w:
        raise InvalidArgumentError(f"colour_weight must be in [0, 1]; got {weight!r}")
    return w


def combine_scores(cosine: np.ndarray, colour_similarity: np.ndarray, weight: float) -> np.ndarray:
    """``(1 - weight) * cosine + weight * colour_similarity`` (float32)."""
    w = check_colour_weight(weight)
    return (
        (1.0 - w) * np.asarray(cosine, np.float32) + w * np.asarray(colour_similarity, np.float32)
    ).astype(np.float32)


# ---------------------------------------------------------------------- stored with the vectors
#: how the colour rows of a store are made (``store.json`` ``colour``); a store whose rows were made
#: otherwise is recoloured by the next extraction
COLOUR_IDENTITY: dict[str, Any] = {
    "name": "colour-signature",
    "dim": SIGNATURE_DIM,
    "bins": [_HUE_BINS, _SAT_BINS, _VAL_BINS, _GREY_BINS],
    "decode_size": _COLOUR_DECODE_SIZE,
    # 2: + each image's plain_background flag; 3: in the store's generation, from the decode
    # that gives the image's vector (one decode per image)
    "version": 3,
}


def _has_colour(store: Any) -> bool:
    """Whether a store carries colour rows of this kind (:data:`COLOUR_IDENTITY`)."""
    return (
        store.colour is not None and store.plain is not None and store.meta.get("colour") == COLOUR_IDENTITY
    )


def _colour_rows(
    features_folder: str | os.PathLike[str], ids: list[str], checksum: str | None
) -> tuple[Any, np.ndarray] | None:
    """The feature store and the row of each of ``ids`` in it, or ``None`` when the store has no
    colour rows of this kind or does not cover ``ids``.  ``checksum``: the colour checksum a model
    recorded (:meth:`~varsitysrch._store.FeatureStore.colour_record`); a store whose colour rows
    are other ones is refused (:class:`~varsitysrch.IncompatibleModelError`)."""
    from ._errors import IncompatibleModelError
    from ._store import FeatureStore

    store = FeatureStore.open(features_folder, validate=False)  # the colour rows are always hashed
    if not _has_colour(store):
        return None
    if checksum is not None:
        rec = store.colour_record()
        if rec is None or rec["checksum"] != checksum:
            raise IncompatibleModelError(
                f"the colour rows of the feature store {str(features_folder)!r} are not the ones the model "
                "was trained with (another generation of the store): retrain, run update, or pass the "
                "right store"
            )
    row = {i: j for j, i in enumerate(store.ids)}
    if any(i not in row for i in ids):
        return None
    return store, np.fromiter((row[i] for i in ids), np.int64, len(ids))


def load_plain_flags(
    features_folder: str | os.PathLike[str], ids: list[str], *, checksum: str | None = None
) -> np.ndarray | None:
    """Each image's :func:`plain_background` flag in ``ids`` order (from the store's generation),
    or ``None`` if the store has no colour rows or does not cover ``ids``."""
    found = _colour_rows(features_folder, ids, checksum)
    if found is None:
        return None
    store, rows = found
    return np.asarray(store.plain[rows, 0], np.uint8).astype(bool)


def load_colour_signatures(
    features_folder: str | os.PathLike[str], ids: list[str], *, checksum: str | None = None
) -> np.ndarray | None:
    """``float32 [len(ids), SIGNATURE_DIM]`` in ``ids`` order (from the store's generation), or
    ``None`` if the store has no colour rows or does not cover ``ids``."""
    found = _colour_rows(features_folder, ids, checksum)
    if found is None:
        return None
    store, rows = found
    return np.asarray(store.colour[rows], np.float32)


def model_studio_share(config: dict[str, Any]) -> float | None:
    """The catalogue's studio share recorded in a model (``model.json`` ``colour``), or ``None``
    for a model without colour rows (trained on a store without them, or before they were
    recorded): then ``views="auto"`` treats the catalogue as not studio shots."""
    rec = config.get("colour")
    if not isinstance(rec, dict):
        return None
    share = rec.get("studio_share")
    return float(share) if isinstance(share, int | float) and not isinstance(share, bool) else None


def model_colour_checksum(config: dict[str, Any]) -> str | None:
    """The checksum of the colour rows a model was trained with (None: the model records none)."""
    rec = config.get("colour")
    value = rec.get("checksum") if isinstance(rec, dict) else None
    return value if isinstance(value, str) else None


#: the colour weight of "match colour" (the page's control, ``--match-colour``), chosen on
#: docs/quality.md's trade-off curve
MATCH_COLOUR_WEIGHT = 0.15
