"""Deterministic generators of test images (Pillow + numpy only).

Not a test module: tests import it (``from imagegen import ...``; ``tests/`` is on
``sys.path`` under pytest's default rootdir-based import mode).

* :func:`make_synthetic_catalogue` writes images with a known, visually obvious
  class structure, so that clustering / search results can be checked.
* :func:`make_bad_corpus` writes odd-but-valid images (must be embedded) and broken
  inputs (must be skipped and reported), and says which is which.
* :func:`make_exif_rotated` writes a JPEG whose EXIF orientation tag asks viewers
  to rotate it.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, features

__all__ = [
    "BOMB_SIZE",
    "SYNTHETIC_CLASSES",
    "make_bad_corpus",
    "make_bomb_png",
    "make_exif_rotated",
    "make_synthetic_catalogue",
    "make_truncated_jpeg",
]

# --------------------------------------------------------------------------- #
# Synthetic catalogue
# --------------------------------------------------------------------------- #

Painter = Callable[[np.random.Generator, int], Image.Image]


def _jit(rng: np.random.Generator, base: tuple[int, int, int], amount: int = 25) -> tuple[int, int, int]:
    """A shade of ``base``: each channel moved by up to +-amount, clipped to 0..255."""
    c = np.clip(np.asarray(base) + rng.integers(-amount, amount + 1, size=3), 0, 255)
    return (int(c[0]), int(c[1]), int(c[2]))


def _paint_red_circles(rng: np.random.Generator, size: int) -> Image.Image:
    im = Image.new("RGB", (size, size), _jit(rng, (250, 250, 250), 5))
    d = ImageDraw.Draw(im)
    for _ in range(int(rng.integers(2, 5))):
        r = size * rng.uniform(0.12, 0.25)
        cx, cy = rng.uniform(r, size - r, size=2)
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=_jit(rng, (220, 20, 30)))
    return im


def _paint_blue_stripes(rng: np.random.Generator, size: int) -> Image.Image:
    period = size * rng.uniform(0.12, 0.2)
    phase = rng.uniform(0, period)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    angle = rng.uniform(-0.3, 0.3)  # roughly horizontal stripes, slightly tilted
    t = (yy * np.cos(angle) + xx * np.sin(angle) + phase) % period
    blue = np.asarray(_jit(rng, (30, 60, 230)), dtype=np.float64)
    black = np.asarray(_jit(rng, (10, 10, 20), 8), dtype=np.float64)
    arr = np.where((t < period / 2)[..., None], blue, black)
    return Image.fromarray(arr.astype(np.uint8), "RGB")


def _paint_green_checker(rng: np.random.Generator, size: int) -> Image.Image:
    cell = int(size * rng.uniform(0.1, 0.17))
    ox, oy = rng.integers(0, cell, size=2)
    yy, xx = np.mgrid[0:size, 0:size]
    mask = (((yy + oy) // cell + (xx + ox) // cell) % 2).astype(bool)
    green = np.asarray(_jit(rng, (30, 170, 40)), dtype=np.float64)
    light = np.asarray(_jit(rng, (220, 245, 215), 10), dtype=np.float64)
    arr = np.where(mask[..., None], green, light)
    return Image.fromarray(arr.astype(np.uint8), "RGB")


def _paint_yellow_triangles(rng: np.random.Generator, size: int) -> Image.Image:
    im = Image.new("RGB", (size, size), _jit(rng, (25, 25, 45), 10))
    d = ImageDraw.Draw(im)
    for _ in range(int(rng.integers(1, 4))):
        s = size * rng.uniform(0.25, 0.45)
        cx, cy = rng.uniform(s / 2, size - s / 2, size=2)
        pts = [(cx, cy - s / 2), (cx - s / 2, cy + s / 2), (cx + s / 2, cy + s / 2)]
        d.polygon(pts, fill=_jit(rng, (245, 215, 20)))
    return im


def _paint_magenta_rings(rng: np.random.Generator, size: int) -> Image.Image:
    im = Image.new("RGB", (size, size), _jit(rng, (235, 225, 240), 8))
    d = ImageDraw.Draw(im)
    cx, cy = rng.uniform(size * 0.35, size * 0.65, size=2)
    step = size * rng.uniform(0.07, 0.1)
    colour = _jit(rng, (200, 30, 190))
    width = max(2, int(step / 2.5))
    r = step
    while r < size * 0.7:
        d.ellipse([cx - r, cy - r, cx + r, cy + r], outline=colour, width=width)
        r += step
    return im


def _paint_orange_speckle(rng: np.random.Generator, size: int) -> Image.Image:
    base = np.asarray(_jit(rng, (120, 120, 120), 10), dtype=np.float64)
    dot = np.asarray(_jit(rng, (250, 130, 10)), dtype=np.float64)
    small = rng.random((size // 4 + 1, size // 4 + 1)) < rng.uniform(0.35, 0.5)
    mask = np.kron(small, np.ones((4, 4), dtype=bool))[:size, :size]
    arr = np.where(mask[..., None], dot, base)
    return Image.fromarray(arr.astype(np.uint8), "RGB")


def _paint_cyan_gradient(rng: np.random.Generator, size: int) -> Image.Image:
    lo = np.asarray(_jit(rng, (0, 90, 110), 15), dtype=np.float64)
    hi = np.asarray(_jit(rng, (150, 255, 255), 15), dtype=np.float64)
    ramp = np.linspace(0.0, 1.0, size)
    if rng.random() < 0.5:
        ramp = ramp[::-1]
    arr = lo + (hi - lo) * ramp[:, None, None]
    arr = np.broadcast_to(arr, (size, size, 3))
    return Image.fromarray(arr.astype(np.uint8), "RGB")


def _paint_black_text_lines(rng: np.random.Generator, size: int) -> Image.Image:
    im = Image.new("RGB", (size, size), _jit(rng, (245, 240, 220), 8))
    d = ImageDraw.Draw(im)
    y = size * rng.uniform(0.05, 0.12)
    line_h = max(3, int(size * 0.05))
    while y < size - line_h:
        x = size * rng.uniform(0.04, 0.1)
        while x < size * 0.92:
            w = size * rng.uniform(0.04, 0.14)
            d.rectangle([x, y, min(x + w, size * 0.95), y + line_h], fill=_jit(rng, (20, 20, 20), 10))
            x += w + size * 0.03
        y += line_h * 2.2
    return im


SYNTHETIC_CLASSES: list[tuple[str, Painter]] = [
    ("red_circles", _paint_red_circles),
    ("blue_stripes", _paint_blue_stripes),
    ("green_checker", _paint_green_checker),
    ("yellow_triangles", _paint_yellow_triangles),
    ("magenta_rings", _paint_magenta_rings),
    ("orange_speckle", _paint_orange_speckle),
    ("cyan_gradient", _paint_cyan_gradient),
    ("black_text_lines", _paint_black_text_lines),
]
"""(class name, painter) in class-index order; at most this many classes."""


def _add_noise(im: Image.Image, rng: np.random.Generator, sigma: float) -> Image.Image:
    arr = np.asarray(im, dtype=np.float64)
    arr = arr + rng.normal(0.0, sigma, size=arr.shape)
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")


def make_synthetic_catalogue(
    root: Path, n_classes: int = 4, per_class: int = 6, size: int = 96, seed: int = 0
) -> dict[str, str]:
    """Write ``n_classes * per_class`` generated images under ``root/<class>/``.

    Files are ``img_00.png``, ``img_01.jpg``, ``img_02.png``, ... (even index PNG,
    odd index JPEG). Classes (see :data:`SYNTHETIC_CLASSES`) are very different in
    colour and texture; within a class, position, scale, shade and pixel noise are
    jittered. The output is a pure function of the arguments.

    Returns ``{relative posix path: class name}``.
    """
    if not 1 <= n_classes <= len(SYNTHETIC_CLASSES):
        raise ValueError(f"n_classes must be in 1..{len(SYNTHETIC_CLASSES)}, got {n_classes}")
    if per_class < 1 or size < 8:
        raise ValueError("per_class must be >= 1 and size >= 8")
    root = Path(root)
    out: dict[str, str] = {}
    for ci, (name, paint) in enumerate(SYNTHETIC_CLASSES[:n_classes]):
        cdir = root / name
        cdir.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            rng = np.random.default_rng([seed, ci, i])
            im = _add_noise(paint(rng, size), rng, sigma=float(rng.uniform(2.0, 8.0)))
            ext = "png" if i % 2 == 0 else "jpg"
            fname = f"img_{i:02d}.{ext}"
            if ext == "png":
                im.save(cdir / fname, "PNG")
            else:
                im.save(cdir / fname, "JPEG", quality=92)
            out[f"{name}/{fname}"] = name
    return out


# --------------------------------------------------------------------------- #
# Bad / odd input corpus
# --------------------------------------------------------------------------- #

BOMB_SIZE = (15000, 15000)
"""225 Mpx: more than 2 x Pillow's default MAX_IMAGE_PIXELS (89,478,485), so
``Image.open`` raises ``DecompressionBombError`` (not just a warning)."""


def _noise_rgb(rng: np.random.Generator, w: int, h: int) -> Image.Image:
    return Image.fromarray(rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8), "RGB")


def _png_chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)


def make_bomb_png(path: Path, size: tuple[int, int] = BOMB_SIZE) -> Path:
    """Write a valid, all-black 1-bit grayscale PNG of ``size`` pixels.

    Written by hand (Pillow would allocate one byte per pixel for mode "1"): the
    zero rows compress ~1000:1, so a 15000x15000 file is ~30 KB and takes well
    under a second to write.
    """
    w, h = size
    row = b"\x00" * (1 + (w + 7) // 8)  # filter byte 0 + packed bits
    comp = zlib.compressobj(9)
    parts = []
    rows_per_block = max(1, (1 << 20) // len(row))
    block = row * rows_per_block
    done = 0
    while done < h:
        n = min(rows_per_block, h - done)
        parts.append(comp.compress(block if n == rows_per_block else row * n))
        done += n
    parts.append(comp.flush())
    ihdr = struct.pack(">IIBBBBB", w, h, 1, 0, 0, 0, 0)  # bit depth 1, grayscale
    data = (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", b"".join(parts))
        + _png_chunk(b"IEND", b"")
    )
    path = Path(path)
    path.write_bytes(data)
    return path


def make_truncated_jpeg(path: Path, keep: float = 0.5, seed: int = 0) -> Path:
    """Write a noisy 200x150 baseline JPEG cut to ``keep`` of its bytes.

    The header survives, so ``Image.open`` succeeds, but ``load()`` raises
    ``OSError("image file is truncated ...")`` unless ``ImageFile.LOAD_TRUNCATED_IMAGES``
    is set. (Noise keeps the entropy-coded data large, so the cut lands well inside
    the scan.)
    """
    import io

    buf = io.BytesIO()
    _noise_rgb(np.random.default_rng(seed), 200, 150).save(buf, "JPEG", quality=90)
    data = buf.getvalue()
    path = Path(path)
    path.write_bytes(data[: int(len(data) * keep)])
    return path


def make_exif_rotated(path: Path, orientation: int = 6, size: tuple[int, int] = (120, 60)) -> Path:
    """Write a JPEG of ``size`` (stored pixels) tagged with EXIF ``orientation``.

    The stored image is left half red, right half blue. With orientation 6
    ("rotate 90 CW to display"), ``ImageOps.exif_transpose`` gives a 60x120 image
    whose top half is red.
    """
    w, h = size
    im = Image.new("RGB", (w, h), (20, 40, 220))
    ImageDraw.Draw(im).rectangle([0, 0, w // 2 - 1, h - 1], fill=(220, 30, 30))
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = Path(path)
    im.save(path, "JPEG", quality=90, exif=exif.tobytes())
    return path


def make_bad_corpus(root: Path) -> dict[str, str]:
    """Write odd and broken inputs under ``root``.

    Returns ``{relative posix path: expected}`` where expected is

    * ``"ok"``: a valid (if odd) image that must be embedded;
    * ``"skip"``: must be skipped and reported (not decodable, or a decompression bomb);
    * ``"ignored"``: not an image extension; must not even be considered.

    WebP is only written when Pillow was built with WebP support.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1234)
    out: dict[str, str] = {}

    def p(rel: str) -> Path:
        f = root / rel
        f.parent.mkdir(parents=True, exist_ok=True)
        return f

    # ---- must be skipped ------------------------------------------------ #
    make_truncated_jpeg(p("truncated.jpg"), keep=0.5)
    out["truncated.jpg"] = "skip"

    p("empty.jpg").write_bytes(b"")
    out["empty.jpg"] = "skip"

    p("notes.jpg").write_text("These are not pixels.\nJust some notes saved with the wrong extension.\n")
    out["notes.jpg"] = "skip"

    make_bomb_png(p("bomb.png"))
    out["bomb.png"] = "skip"

    # ---- ignored (not an image extension) -------------------------------- #
    p("readme.txt").write_text("Not an image; the extension filter must ignore this file.\n")
    out["readme.txt"] = "ignored"

    # ---- odd but valid: must be embedded --------------------------------- #
    Image.new("CMYK", (64, 48), (0, 200, 200, 10)).save(p("cmyk.jpg"), "JPEG", quality=90)
    out["cmyk.jpg"] = "ok"

    grad16 = (np.arange(64 * 64, dtype=np.uint32).reshape(64, 64) * 16).astype(np.uint16)
    Image.fromarray(grad16).save(p("gray16.png"), "PNG")  # mode "I;16"
    out["gray16.png"] = "ok"

    pal = Image.new("P", (64, 64), 0)
    pal.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0, 0, 0, 255] + [0, 0, 0] * 252)
    ImageDraw.Draw(pal).ellipse([8, 8, 56, 56], fill=1)
    ImageDraw.Draw(pal).rectangle([24, 24, 40, 40], fill=2)
    pal.save(p("palette_transparent.png"), "PNG", transparency=0)
    out["palette_transparent.png"] = "ok"

    rgba = np.zeros((64, 64, 4), dtype=np.uint8)
    rgba[..., 0] = 200
    rgba[..., 2] = np.linspace(0, 255, 64, dtype=np.uint8)[None, :]
    rgba[..., 3] = np.linspace(0, 255, 64, dtype=np.uint8)[:, None]
    Image.fromarray(rgba, "RGBA").save(p("rgba.png"), "PNG")
    out["rgba.png"] = "ok"

    la = np.stack(
        [np.full((48, 48), 128, np.uint8), np.linspace(0, 255, 48 * 48).reshape(48, 48).astype(np.uint8)], -1
    )
    Image.fromarray(la, "LA").save(p("la.png"), "PNG")
    out["la.png"] = "ok"

    Image.fromarray(np.tile(np.linspace(0, 255, 64, dtype=np.uint8), (64, 1)), "L").save(p("gray.png"), "PNG")
    out["gray.png"] = "ok"
    Image.fromarray(np.tile(np.linspace(255, 0, 64, dtype=np.uint8), (48, 1)), "L").save(
        p("gray_l.jpg"), "JPEG", quality=90
    )
    out["gray_l.jpg"] = "ok"

    frames = [Image.new("RGB", (48, 48), c) for c in ((230, 20, 20), (20, 230, 20), (20, 20, 230))]
    frames[0].save(p("animated.gif"), "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    out["animated.gif"] = "ok"

    make_exif_rotated(p("exif_rot6.jpg"), orientation=6)
    out["exif_rot6.jpg"] = "ok"

    _noise_rgb(rng, 40, 30).save(p("ünïcødé 商品.png"), "PNG")
    out["ünïcødé 商品.png"] = "ok"

    Image.new("RGB", (50, 50), (240, 120, 0)).save(p("a/same.jpg"), "JPEG", quality=90)
    out["a/same.jpg"] = "ok"
    Image.new("RGB", (50, 50), (0, 120, 240)).save(p("b/same.jpg"), "JPEG", quality=90)
    out["b/same.jpg"] = "ok"

    _noise_rgb(rng, 40, 40).save(p("UPPER.JPG"), "JPEG", quality=90)
    out["UPPER.JPG"] = "ok"

    if features.check("webp"):
        _noise_rgb(rng, 40, 40).save(p("image.webp"), "WEBP", quality=80)
        out["image.webp"] = "ok"

    _noise_rgb(rng, 33, 21).save(p("image.bmp"), "BMP")
    out["image.bmp"] = "ok"
    _noise_rgb(rng, 40, 30).save(p("image.tiff"), "TIFF")
    out["image.tiff"] = "ok"

    Image.new("RGB", (1, 1), (10, 200, 10)).save(p("tiny_1x1.png"), "PNG")
    out["tiny_1x1.png"] = "ok"

    elong = np.zeros((20, 2000, 3), dtype=np.uint8)
    elong[..., 0] = np.linspace(0, 255, 2000, dtype=np.uint8)[None, :]
    elong[..., 1] = 80
    Image.fromarray(elong, "RGB").save(p("elongated_2000x20.png"), "PNG")
    out["elongated_2000x20.png"] = "ok"

    # PNG bytes behind a .jpg name: Pillow sniffs the content, so this is fine.
    _noise_rgb(rng, 32, 32).save(p("png_named.jpg"), "PNG")
    out["png_named.jpg"] = "ok"

    _noise_rgb(rng, 32, 32).save(p("nested/deeper/still/deep.png"), "PNG")
    out["nested/deeper/still/deep.png"] = "ok"

    return out
