"""Finding and decoding images, robustly.

* :func:`list_images` walks a folder recursively and returns ids (POSIX paths relative
  to the folder, extension kept) of files with an image extension, in sorted order.
* :func:`load_image` decodes a path, bytes or PIL image into a ``uint8 [size, size, 3]``
  RGB array: EXIF orientation applied, alpha composited on white, CMYK / 16-bit /
  palette / grey converted, first frame of animations, JPEG draft decoding, and
  decompression bombs refused.  Every failure raises :class:`~varsitysrch.ImageError`
  with a short reason, which the extraction step records in ``skipped.csv``.
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps

from ._errors import ImageError

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"})
#: Images with more pixels than this are refused as decompression bombs (Pillow's default).
MAX_PIXELS = 89_478_485
RESIZE_MODES = ("letterbox", "squash", "center-crop")

ImageSource = str | os.PathLike[str] | bytes | Image.Image


def list_images(folder: str | Path) -> list[str]:
    """Ids of every image under ``folder`` (recursive, any extension case, hidden files skipped)."""
    root = Path(folder)
    out: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        rel = Path(dirpath).relative_to(root)
        for name in filenames:
            if name.startswith("."):
                continue
            if os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS:
                out.append((rel / name).as_posix())
    out.sort()
    return out


def _to_rgb(im: Image.Image) -> Image.Image:
    mode = im.mode
    if mode == "RGB":
        return im
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        a = np.asarray(im, dtype=np.float32)
        hi = float(a.max()) if a.size else 0.0
        scale = 255.0 / 65535.0 if (mode.startswith("I;16") or hi > 255.0) else 1.0
        if mode == "F" and hi <= 1.0:
            scale = 255.0
        g = np.clip(a * scale, 0, 255).astype(np.uint8)
        return Image.fromarray(g, "L").convert("RGB")
    if mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
        mode = "RGBA"
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = im.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(bg, rgba).convert("RGB")
    return im.convert("RGB")


def _fit(im: Image.Image, size: int, resize: str) -> Image.Image:
    w, h = im.size
    if resize == "squash":
        return im.resize((size, size), Image.Resampling.BILINEAR)
    if resize == "center-crop":
        s = size / min(w, h)
        nw, nh = max(size, round(w * s)), max(size, round(h * s))
        im = im.resize((nw, nh), Image.Resampling.BILINEAR)
        left, top = (nw - size) // 2, (nh - size) // 2
        return im.crop((left, top, left + size, top + size))
    # letterbox: keep the whole product, pad with white
    s = size / max(w, h)
    nw, nh = max(1, round(w * s)), max(1, round(h * s))
    im = im.resize((nw, nh), Image.Resampling.BILINEAR)
    canvas = Image.new("RGB", (size, size), (255, 255, 255))
    canvas.paste(im, ((size - nw) // 2, (size - nh) // 2))
    return canvas


def open_image(source: ImageSource) -> Image.Image:
    """Open (lazily) an image from a path, bytes or PIL image; refuse bombs early."""
    if isinstance(source, Image.Image):
        im = source
    else:
        try:
            if isinstance(source, bytes | bytearray | memoryview):
                if len(source) == 0:
                    raise ImageError("empty file")
                im = Image.open(io.BytesIO(bytes(source)))
            else:
                p = Path(source)
                if p.is_file() and p.stat().st_size == 0:
                    raise ImageError("empty file")
                im = Image.open(p)
        except ImageError:
            raise
        except FileNotFoundError as exc:
            raise ImageError(f"no such file: {exc.filename}") from exc
        except Image.DecompressionBombError as exc:
            raise ImageError(f"decompression bomb refused ({exc})") from exc
        except Exception as exc:  # PIL raises many kinds on garbage input
            raise ImageError(f"not a readable image ({type(exc).__name__}: {exc})") from exc
    w, h = im.size
    if w <= 0 or h <= 0:
        raise ImageError(f"image has no pixels ({w}x{h})")
    if w * h > MAX_PIXELS:
        raise ImageError(f"decompression bomb refused: {w}x{h} = {w * h} pixels > {MAX_PIXELS}")
    return im


def load_image(source: ImageSource, size: int = 224, resize: str = "letterbox") -> np.ndarray:
    """Decode ``source`` to an RGB ``uint8`` array of shape ``(size, size, 3)``."""
    im = open_image(source)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # EXIF / palette warnings; errors still raise
            if getattr(im, "n_frames", 1) > 1:
                im.seek(0)
            if im.format == "JPEG" and im.mode in ("RGB", "L", "CMYK", "YCbCr"):
                # decode at a reduced scale (DCT scaling) that is still >= the target size
                im.draft("RGB", (size, size) if resize != "letterbox" else _draft_box(im.size, size))
            im.load()
            im = ImageOps.exif_transpose(im) or im
            im = _to_rgb(im)
            im = _fit(im, size, resize)
            arr = np.asarray(im, dtype=np.uint8)
    except ImageError:
        raise
    except Exception as exc:
        raise ImageError(f"cannot decode image ({type(exc).__name__}: {exc})") from exc
    if arr.shape != (size, size, 3):
        raise ImageError(f"unexpected decoded shape {arr.shape}")
    return arr


def _draft_box(wh: tuple[int, int], size: int) -> tuple[int, int]:
    # letterbox scales the long side to ``size``: ask for a box whose long side is ``size``
    w, h = wh
    s = size / max(w, h)
    return max(1, round(w * s)), max(1, round(h * s))


def image_info(path: str | Path) -> dict[str, Any]:
    st = os.stat(path)
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}
