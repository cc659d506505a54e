"""Static int8 quantisation of a built-in extractor graph (ONNX Runtime, QDQ, per-channel).

:func:`quantize_static_int8` turns the float32 graph of an extractor into a static int8
one: weights are quantised per output channel, activations per tensor with ranges
measured on a calibration set.  The convolutional trunk is quantised; the input
stage and the stem convolution, the pooling heads (``pooled``, ``gem``, ``rmac``) and the
classifier stay float32 (see :func:`_float_nodes`), so the output vectors are not
rounded to 8 bits.

Calibration images, by preference:

1. ``calibration=`` given by the caller: a ``uint8 [N, S, S, 3]`` array, or image paths /
   a folder (decoded with the extractor's own resize mode);
2. otherwise :func:`_synthetic_calibration_images`: a deterministic set of "natural-ish"
   pictures (smooth gradients, filled shapes on plain or white backgrounds, stripes,
   blur and noise) generated from a fixed seed, so the quantised graph -- and therefore
   the extractor's vectors -- is the same on every machine without shipping images.

Measured on clothing-small (see ``docs/quality.md``): the synthetic set and real photos
from the catalogue give P@10 within noise of each other, so the default is synthetic.

Weights are quantised to 7 bits (``reduce_range``; recorded as
``Extractor.int8_scheme``).  With full 8-bit
weights onnxruntime's u8s8 convolution kernels differ by instruction set: on AVX2 (no VNNI) the
``vpmaddubsw`` pairwise products saturate at int16, so the same graph embeds a photo differently
on an AVX2 and on an AVX-512 VNNI CPU (cosine 0.98-0.99 to ``onnx.reference`` on AVX2).  With 7-bit
weights no pair can saturate and every kernel computes the same integers (cosine >= 0.9996 to the
reference, ``tests/test_portable.py``; ``scripts/portability.py`` prints the figures).
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ._errors import InvalidArgumentError, missing

if TYPE_CHECKING:
    from ._extractors import Extractor

log = logging.getLogger(__name__)

__all__ = ["quantize_static_int8"]


#: Number of synthetic calibration images (deterministic; seed below).
_N_SYNTHETIC = 64
_SYNTHETIC_SEED = 20240611

_CalibrationSource = np.ndarray | str | os.PathLike[str] | Sequence[str | os.PathLike[str]] | None


# ---------------------------------------------------------------- calibration images
def _smooth_field(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """A smooth random field in [0, 1]: bilinear upsampling of a coarse random grid."""
    from PIL import Image

    coarse = (rng.random((cells, cells)) * 255).astype(np.uint8)
    up = Image.fromarray(coarse, "L").resize((size, size), Image.Resampling.BICUBIC)
    return np.asarray(up, np.float32) / 255.0


def _synthetic_calibration_images(
    n: int = _N_SYNTHETIC, size: int = 224, seed: int = _SYNTHETIC_SEED
) -> np.ndarray:
    """Deterministic natural-ish RGB images ``uint8 [n, size, size, 3]``.

    Each picture mixes a background (plain, white like a letterboxed product photo, or
    a smooth colour gradient), a few filled shapes (ellipses, polygons, rectangles) in
    smoothly shaded colours, occasional stripes, a mild blur and sensor-like noise --
    enough to exercise the activation ranges that product photos produce.
    """
    from PIL import Image, ImageDraw, ImageFilter

    rng = np.random.default_rng(seed)
    out = np.empty((n, size, size, 3), np.uint8)
    for i in range(n):
        kind = i % 4
        if kind == 0:  # white background, like letterboxed product shots
            bg = np.full((size, size, 3), 255.0 - rng.uniform(0, 20), np.float32)
        elif kind == 1:  # plain coloured background
            bg = np.broadcast_to(rng.uniform(40, 230, 3).astype(np.float32), (size, size, 3)).copy()
        else:  # smooth two-colour gradient field
            a, b = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
            t = _smooth_field(rng, size, int(rng.integers(2, 6)))[..., None]
            bg = np.asarray(a * (1 - t) + b * t, np.float32)
        im = Image.fromarray(np.clip(bg, 0, 255).astype(np.uint8), "RGB")
        d = ImageDraw.Draw(im)
        for _ in range(int(rng.integers(1, 6))):
            colour = tuple(int(c) for c in rng.uniform(0, 255, 3))
            x0, y0 = rng.uniform(-0.1, 0.8, 2) * size
            w, h = rng.uniform(0.15, 0.7, 2) * size
            shape = int(rng.integers(0, 3))
            if shape == 0:
                d.ellipse([x0, y0, x0 + w, y0 + h], fill=colour)
            elif shape == 1:
                d.rectangle([x0, y0, x0 + w, y0 + h], fill=colour)
            else:
                pts = [tuple(rng.uniform(0, 1, 2) * size) for _ in range(int(rng.integers(3, 7)))]
                d.polygon(pts, fill=colour)
        if rng.random() < 0.3:  # stripes / texture patch
            period = int(rng.integers(4, 20))
            colour = tuple(int(c) for c in rng.uniform(0, 255, 3))
            x0, y0 = (rng.uniform(0, 0.5, 2) * size).astype(int)
            for y in range(y0, min(size, y0 + size // 2), period):
                d.rectangle([x0, y, x0 + size // 2, y + period // 2], fill=colour)
        im = im.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.3, 2.0))))
        arr = np.asarray(im, np.float32)
        shade = _smooth_field(rng, size, 3)[..., None] * rng.uniform(0, 60)  # soft lighting
        noisy = arr - shade + rng.normal(0.0, rng.uniform(1.0, 6.0), arr.shape)
        out[i] = np.clip(noisy, 0, 255).astype(np.uint8)
    return out


#: the synthetic calibration images of a built-in graph are made at this size whatever the
#: extractor's input size: the cached int8 graph is keyed without the input size, so it must not
#: depend on it (the graph measured in docs/quality.md was calibrated at 224 px)
_SYNTHETIC_SIZE = 224


def _calibration_batch(calibration: _CalibrationSource, ex: Extractor, limit: int) -> np.ndarray:
    size = ex.input_size
    if calibration is None:
        return _synthetic_calibration_images(_N_SYNTHETIC, size if ex.onnx_path else _SYNTHETIC_SIZE)
    if isinstance(calibration, np.ndarray):
        arr = calibration
        if arr.dtype != np.uint8 or arr.ndim != 4 or arr.shape[1:] != (size, size, 3):
            raise InvalidArgumentError(
                f"calibration array must be uint8 [N, {size}, {size}, 3]; got {arr.dtype} {arr.shape}"
            )
        return arr[:limit]
    from ._images import list_images, load_image

    if isinstance(calibration, str | os.PathLike):
        p = Path(calibration)
        if not p.is_dir():
            raise InvalidArgumentError(f"calibration folder {str(p)!r} does not exist")
        paths = [p / rel for rel in list_images(p)]
    else:
        paths = [Path(x) for x in calibration]
    if len(paths) > limit:  # an even, deterministic spread over the (sorted) list
        paths = [paths[int(j)] for j in np.linspace(0, len(paths) - 1, limit)]
    arrays = [load_image(q, size, ex.resize) for q in paths]
    if not arrays:
        raise InvalidArgumentError("calibration holds no images")
    return np.stack(arrays)


class _Reader:
    """A CalibrationDataReader over a uint8 batch (8 images per call)."""

    def __init__(self, images: np.ndarray, batch: int = 8) -> None:
        self._it: Iterator[dict[str, np.ndarray]] = iter(
            [{"images": np.ascontiguousarray(images[i : i + batch])} for i in range(0, len(images), batch)]
        )

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._it, None)

    def rewind(self) -> None:  # pragma: no cover - not used by MinMax
        pass


# ---------------------------------------------------------------- quantisation
def _float_nodes(model: Any) -> list[str]:
    """Name every node (the builders leave names empty) and return those kept in float32.

    Kept float: everything before the first ``Conv`` (cast, layout, normalisation), the
    first ``Conv`` itself and its activation, and everything after the last activation
    of the trunk (pooling heads, classifier).  Quantising the stem convolution alone
    dropped the cosine to fp32 from 1.000 to 0.864 (BatchNorm folded into 27-weight
    filters leaves channels whose large weights cancel a large bias); without it the
    int8 trunk keeps cosine 0.97 at ~3 % of the FLOPs left in float.
    """
    nodes = list(model.graph.node)
    for i, n in enumerate(nodes):
        if not n.name:
            n.name = f"vs{i}_{n.op_type}"
    names = [n.name for n in nodes]
    convs = [i for i, n in enumerate(nodes) if n.op_type == "Conv"]
    if not convs:
        return []
    first = convs[0]
    acts = [i for i, n in enumerate(nodes) if n.op_type in ("Clip", "Relu")]
    stem_end = first + 1
    if stem_end < len(nodes) and nodes[stem_end].op_type in ("Clip", "Relu"):
        stem_end += 1
    last = max([i for i in acts if i > first] or [convs[-1]])
    return names[:stem_end] + names[last + 1 :]


def quantize_static_int8(
    model_bytes: bytes,
    ex: Extractor,
    calibration: _CalibrationSource = None,
    *,
    max_calibration: int = 256,
) -> bytes:
    """Return a static int8 (QDQ, per-channel) version of a float32 extractor graph.

    Args:
        model_bytes: the float32 ONNX graph (input ``images`` uint8 NHWC).
        ex: the extractor (its ``input_size`` and ``resize`` decide the calibration images).
        calibration: ``None`` (deterministic synthetic images), a ``uint8 [N, S, S, 3]``
            array, a folder of images, or a list of image paths.
        max_calibration: at most this many calibration images are used.
    """
    try:
        import onnx
        from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    except ImportError as exc:
        raise missing("onnxruntime", "default", "int8 quantisation") from exc

    images = _calibration_batch(calibration, ex, max_calibration)
    model = onnx.load_from_string(model_bytes)
    exclude = _float_nodes(model)
    with tempfile.TemporaryDirectory(prefix="varsitysrch-q-") as tmp:
        src = Path(tmp) / "fp32.onnx"
        dst = Path(tmp) / "int8.onnx"
        onnx.save(model, str(src))
        del model
        root = logging.getLogger()
        level = root.level
        root.setLevel(max(level, logging.ERROR))  # the quantiser logs advice on the root logger
        try:
            quantize_static(
                str(src),
                str(dst),
                _Reader(images),
                quant_format=QuantFormat.QDQ,
                per_channel=True,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                reduce_range=True,  # 7-bit weights: the same integers on every CPU (module doc)
                nodes_to_exclude=exclude,
                calibrate_method=CalibrationMethod.MinMax,
            )
        finally:
            root.setLevel(level)
        data = dst.read_bytes()
    log.info("quantised %s to int8 on %d calibration images", ex.name, len(images))
    return data
