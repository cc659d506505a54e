"""Finding and decoding images, robustly.

* :func:`scan_images` walks a folder recursively and returns ids (POSIX paths relative
  to the folder, extension kept) of regular files (or symlinks to them) with an image
  extension, in sorted order, their stat stamps, and every file or folder it left out
  with the reason: FIFOs, sockets and devices (never opened, so never a hang), dangling
  symlinks, files that vanish, unreadable or symlinked folders, formats this Pillow
  cannot decode (AVIF without libavif, HEIC/HEIF without pillow-heif), folders nested deeper
  than ``_MAX_DEPTH`` (walked with an explicit stack: no depth can raise ``RecursionError``).
  Hidden files and folders (``.name``) are ignored on purpose.  :func:`list_images` returns just the ids.
* :func:`load_image` decodes a path, bytes or PIL image into a ``uint8 [size, size, 3]``
  RGB array: EXIF orientation applied, alpha composited on white, CMYK / 16-bit /
  palette / grey converted, first frame of animations, JPEG draft decoding, and
  decompression bombs and images thinner than 1:``_MAX_ASPECT`` refused.  One decode gate:
  only the Pillow plugins of :data:`DECODE_FORMATS` (the HTTP uploads' list, plus AVIF/HEIF where
  their codec is installed) ever read the bytes, whatever the file's name, so PostScript/EPS,
  PDF or any format with an external helper is refused, never decoded.  A path is opened
  non-blocking and checked to be a regular file (``fstat``) before a byte is read; the
  resize never allocates more than the output (centre crop crops in source coordinates).
  Every failure raises :class:`~varsitysrch.ImageError` with a short reason in words (never a
  Python object's repr; the decoder's own exception is chained for ``-v``), which the extraction
  step records in ``skipped.csv``.  A path that does not exist is ``no such file: '<path>'``
  (:class:`_MissingImageFile`).
"""

from __future__ import annotations

import functools
import io
import os
import stat
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ._errors import ImageError

__all__ = [
    "DECODE_FORMATS",
    "DECODE_FORMATS_TEXT",
    "IMAGE_EXTENSIONS",
    "RESIZE_MODES",
    "ImageSource",
    "UnacceptedFormat",
    "decode_failure",
    "decode_rgb",
    "list_images",
    "load_image",
    "load_image_fits",
    "open_allowed",
    "open_image",
    "scan_images",
]


IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"})
#: image formats that need an optional codec: extension -> (codec check, what to install)
_OPTIONAL_FORMATS = {
    ".avif": ("avif", "a Pillow built with libavif (Pillow >= 11.2 wheels have it)"),
    ".heic": ("heif", "the pillow-heif plugin (pip install pillow-heif)"),
    ".heif": ("heif", "the pillow-heif plugin (pip install pillow-heif)"),
}
#: Images with more pixels than this are refused as decompression bombs (Pillow's default).
_MAX_PIXELS = 89_478_485
#: Images longer than this many times their width (or wider than tall) are refused: not a product photo,
#: and a centre crop of one would be all blur
_MAX_ASPECT = 200
#: Files bigger than this are refused before they are read
_MAX_FILE_BYTES = 1 << 30
#: Folders nested deeper than this below the image folder are left out (reported in ``skipped``)
_MAX_DEPTH = 256
#: The one decode gate: the Pillow formats an image is ever opened as, wherever it comes from
#: (catalogue files, library and CLI queries as paths or bytes, HTTP uploads).  Only these plugins
#: even look at the bytes, so a PostScript file named ``.jpg`` never reaches Ghostscript.  MPO (the
#: multi-picture JPEG of phone cameras) opens through the JPEG plugin.
DECODE_FORMATS = frozenset({"JPEG", "MPO", "PNG", "WEBP", "GIF", "BMP", "TIFF"})
#: What error messages call :data:`DECODE_FORMATS`
DECODE_FORMATS_TEXT = "JPEG, PNG, WebP, GIF, BMP or TIFF"
#: The message for bytes no allowed decoder recognises (a text file named ``.jpg``, a PDF, ...)
_NOT_AN_IMAGE = f"not an image file this version can read (accepted formats: {DECODE_FORMATS_TEXT})"
#: The message for an image whose decoder gives up half-way (truncated download, corrupt data)
_DAMAGED_IMAGE = "damaged or truncated image file: it cannot be decoded"
#: Formats opened only where their optional codec is installed, and never for HTTP uploads:
#: codec check -> Pillow format name (the catalogue's ``.avif`` / ``.heic`` files)
_OPTIONAL_DECODE_FORMATS = {"avif": "AVIF", "heif": "HEIF"}
#: How :func:`load_image` fits an image into its square (the extractors' ``resize``)
RESIZE_MODES = ("letterbox", "squash", "center-crop")

ImageSource = str | os.PathLike[str] | bytes | Image.Image


@functools.cache
def _codec(name: str) -> bool:
    if name == "avif":
        from PIL import features

        return bool(features.check("avif"))
    if name == "heif":
        try:
            import pillow_heif

            pillow_heif.register_heif_opener()
            return True
        except Exception:
            return False
    return False


class _MissingImageFile(ImageError):
    """An image path that does not exist (``.path``: the path as given)."""

    def __init__(self, path: object) -> None:
        super().__init__(f"no such file: {str(path)!r}")
        self.path = path


class UnacceptedFormat(ImageError):
    """An image whose Pillow plugin reports a format outside the decode gate (``.format``: its name)."""

    def __init__(self, fmt: str | None) -> None:
        super().__init__(f"{fmt} files are not read (only {DECODE_FORMATS_TEXT})")
        self.format = fmt


def _decode_formats() -> frozenset[str]:
    """Pillow formats files and library queries are opened as: :data:`DECODE_FORMATS` plus the
    optional codecs installed here."""
    return DECODE_FORMATS | {f for codec, f in _OPTIONAL_DECODE_FORMATS.items() if _codec(codec)}


def open_allowed(data: bytes, formats: frozenset[str]) -> Image.Image:
    """Open ``data`` lazily with only the Pillow plugins of ``formats`` (the decode gate).

    Raises :class:`PIL.UnidentifiedImageError` when no allowed plugin recognises the bytes,
    and :class:`UnacceptedFormat` when a plugin reports a format outside ``formats``.
    """
    im = Image.open(io.BytesIO(data), formats=sorted(formats - {"MPO"}))
    if im.format not in formats:  # a plugin that reports another name: refuse it too
        fmt = im.format
        im.close()
        raise UnacceptedFormat(fmt)
    return im


def _image_extensions() -> frozenset[str]:
    """Extensions this installation decodes (the base set plus AVIF/HEIC where a codec is present)."""
    return IMAGE_EXTENSIONS | {e for e, (codec, _) in _OPTIONAL_FORMATS.items() if _codec(codec)}


_KIND = {
    stat.S_IFIFO: "a FIFO",
    stat.S_IFSOCK: "a socket",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFDIR: "a folder",
}


def _not_regular(mode: int) -> str:
    return f"not a regular file ({_KIND.get(stat.S_IFMT(mode), 'special file')}): not opened"


@dataclass
class _Listing:
    """What :func:`scan_images` found: ids, their ``(size, mtime_ns, inode, ctime_ns)``, what it left out."""

    ids: list[str] = field(default_factory=list)
    stamps: dict[str, tuple[int, int, int, int]] = field(default_factory=dict)
    skipped: list[tuple[str, str]] = field(default_factory=list)


def _rel(root: str, path: str) -> str:
    r = os.path.relpath(path, root)
    return "." if r == "." else Path(r).as_posix()


def _walk(
    top: str, onerror: Callable[[OSError], None] | None = None
) -> Iterator[tuple[str, list[str], list[str]]]:
    """``os.walk(top, onerror=onerror)`` (top-down; prune by editing ``dirnames``; symlinked folders
    listed, not entered) with an explicit stack: ``os.walk`` recurses on Python < 3.12, and a tree
    1,000 folders deep raised ``RecursionError``."""
    stack = [top]
    while stack:
        dirpath = stack.pop()
        try:
            with os.scandir(dirpath) as it:
                entries = list(it)
        except OSError as exc:
            if onerror is not None:
                onerror(exc)
            continue
        dirnames: list[str] = []
        filenames: list[str] = []
        for entry in entries:
            try:
                is_dir = entry.is_dir()  # follows symlinks, as os.walk does
            except OSError:
                is_dir = False
            (dirnames if is_dir else filenames).append(entry.name)
        yield dirpath, dirnames, filenames
        for d in reversed(dirnames):
            path = os.path.join(dirpath, d)
            if not os.path.islink(path):
                stack.append(path)


def scan_images(folder: str | Path, exclude: Iterable[str] = ()) -> _Listing:
    """Every image under ``folder`` (see the module docstring); ``exclude``: relative folders to leave out."""
    root = os.fspath(folder)
    excluded = {e.rstrip("/") for e in exclude}
    exts = _image_extensions()
    out = _Listing()

    def onerror(exc: OSError) -> None:
        where = _rel(root, exc.filename) if exc.filename else "."
        out.skipped.append((where + "/", f"unreadable folder ({exc.strerror or exc}): left out"))

    for dirpath, dirnames, filenames in _walk(root, onerror=onerror):
        rel_dir = _rel(root, dirpath)
        depth = 0 if rel_dir == "." else rel_dir.count("/") + 1
        keep = []
        for d in sorted(dirnames):
            rel = d if rel_dir == "." else f"{rel_dir}/{d}"
            if d.startswith(".") or rel in excluded:
                continue
            if os.path.islink(os.path.join(dirpath, d)):
                out.skipped.append((rel + "/", "symlinked folder: not followed"))
                continue
            if depth >= _MAX_DEPTH:
                out.skipped.append((rel + "/", f"folder nested deeper than {_MAX_DEPTH} levels: left out"))
                continue
            keep.append(d)
        dirnames[:] = keep
        for name in filenames:
            if name.startswith("."):
                continue
            rel = name if rel_dir == "." else f"{rel_dir}/{name}"
            ext = os.path.splitext(name)[1].lower()
            if ext not in exts:
                if ext in _OPTIONAL_FORMATS:
                    out.skipped.append((rel, f"cannot decode {ext} here: needs {_OPTIONAL_FORMATS[ext][1]}"))
                continue
            path = os.path.join(dirpath, name)
            try:
                st = os.stat(path)  # follows symlinks to files
            except FileNotFoundError:
                reason = "dangling symlink" if os.path.islink(path) else "vanished while listing"
                out.skipped.append((rel, reason))
                continue
            except OSError as exc:
                out.skipped.append((rel, f"cannot stat ({exc.strerror or exc})"))
                continue
            if not stat.S_ISREG(st.st_mode):
                out.skipped.append((rel, _not_regular(st.st_mode)))
                continue
            out.ids.append(rel)
            out.stamps[rel] = (int(st.st_size), int(st.st_mtime_ns), int(st.st_ino), int(st.st_ctime_ns))
    out.ids.sort()
    out.skipped.sort()
    return out


def list_images(folder: str | Path) -> list[str]:
    """Ids of every image under ``folder`` (recursive, any extension case, hidden files skipped)."""
    return scan_images(folder).ids


def _read_image_file(path: str | os.PathLike[str]) -> bytes:
    """The bytes of a regular file, opened non-blocking (a FIFO or device is refused, never waited on)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError as exc:
        raise _MissingImageFile(path) from exc
    except OSError as exc:
        raise ImageError(f"cannot open {str(path)!r} ({_reason(exc)})") from exc
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ImageError(_not_regular(st.st_mode))
        if st.st_size == 0:
            raise ImageError("empty file")
        if st.st_size > _MAX_FILE_BYTES:
            raise ImageError(f"file of {st.st_size} bytes is larger than {_MAX_FILE_BYTES}")
        with os.fdopen(os.dup(fd), "rb") as f:
            data = f.read(_MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise ImageError(f"cannot read {str(path)!r} ({_reason(exc)})") from exc
    finally:
        os.close(fd)
    if not data:
        raise ImageError("empty file")
    return data


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
        # crop the centred square in source coordinates, then resize it: nothing larger than the
        # output is ever allocated, whatever the aspect ratio
        side = min(w, h)
        left, top = (w - side) / 2, (h - side) / 2
        return im.resize((size, size), Image.Resampling.BILINEAR, box=(left, top, left + side, top + side))
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
                im = open_allowed(bytes(source), _decode_formats())
            else:
                im = open_allowed(_read_image_file(source), _decode_formats())
        except ImageError:
            raise
        except UnidentifiedImageError as exc:  # PostScript, SVG, PDF, text, ...: never handed to a decoder
            raise ImageError(_NOT_AN_IMAGE) from exc
        except FileNotFoundError as exc:
            raise _MissingImageFile(exc.filename if exc.filename is not None else source) from exc
        except Image.DecompressionBombError as exc:
            raise ImageError(
                f"image refused as a possible decompression bomb (more than {_MAX_PIXELS:,} pixels)"
            ) from exc
        except Exception as exc:  # PIL raises many kinds on garbage input (its text may hold reprs)
            raise ImageError(_NOT_AN_IMAGE) from exc
    w, h = im.size
    if w <= 0 or h <= 0:
        raise ImageError(f"image has no pixels ({w}x{h})")
    if w * h > _MAX_PIXELS:
        raise ImageError(
            f"image of {w}x{h} = {w * h:,} pixels refused as a possible decompression bomb "
            f"(the limit is {_MAX_PIXELS:,})"
        )
    if max(w, h) > _MAX_ASPECT * min(w, h):
        raise ImageError(f"image of {w}x{h} is thinner than 1:{_MAX_ASPECT}: not a product photo")
    return im


def load_image(source: ImageSource, size: int = 224, resize: str = "letterbox") -> np.ndarray:
    """Decode ``source`` to an RGB ``uint8`` array of shape ``(size, size, 3)``."""
    return load_image_fits(source, size, (resize,))[0]


def decode_rgb(im: Image.Image, size: int, letterbox_only: bool) -> Image.Image:
    """The one decode of an opened image: first frame, JPEG at the reduced DCT scale that is still
    >= ``size`` (``letterbox_only``: the long side may shrink further, as a letterbox needs), EXIF
    orientation applied, RGB.  The catalogue (extraction) and every query (the pipeline) decode
    through it, so a photo is embedded from the same pixels wherever it comes from."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # EXIF / palette warnings; errors still raise
            if getattr(im, "n_frames", 1) > 1:
                im.seek(0)
            if im.format == "JPEG" and im.mode in ("RGB", "L", "CMYK", "YCbCr"):
                im.draft("RGB", _draft_box(im.size, size) if letterbox_only else (size, size))
            im.load()
            im = ImageOps.exif_transpose(im) or im
            return _to_rgb(im)
    except ImageError:
        raise
    except Exception as exc:
        raise decode_failure(exc) from exc


def load_image_fits(source: ImageSource, size: int, resizes: tuple[str, ...]) -> list[np.ndarray]:
    """One decode of ``source``, fitted to ``size`` once per mode in ``resizes`` (RGB ``uint8``)."""
    im = decode_rgb(open_image(source), size, resizes == ("letterbox",))
    try:
        arrs = [np.asarray(_fit(im, size, r), dtype=np.uint8) for r in resizes]
    except ImageError:
        raise
    except Exception as exc:
        raise decode_failure(exc) from exc
    for arr in arrs:
        if arr.shape != (size, size, 3):
            raise ImageError(f"unexpected decoded shape {arr.shape}")
    return arrs


def decode_failure(exc: BaseException) -> ImageError:
    """The :class:`~varsitysrch.ImageError` for an exception raised while an opened image was decoded
    (Pillow raises ``OSError``, ``ValueError``, ``SyntaxError`` ... whose text may hold reprs): in
    words, the original to be chained (``raise decode_failure(exc) from exc``)."""
    if isinstance(exc, ImageError):
        return exc
    if isinstance(exc, MemoryError | Image.DecompressionBombError):
        return ImageError("image too large to decode in the memory available")
    return ImageError(_DAMAGED_IMAGE)


def _reason(exc: OSError) -> str:
    """An OS error's reason in words (``permission denied``), never ``[Errno N]`` or a repr."""
    text = exc.strerror or type(exc).__name__
    return text[0].lower() + text[1:] if text else text


def _draft_box(wh: tuple[int, int], size: int) -> tuple[int, int]:
    # letterbox scales the long side to ``size``: ask for a box whose long side is ``size``
    w, h = wh
    s = size / max(w, h)
    return max(1, round(w * s)), max(1, round(h * s))
