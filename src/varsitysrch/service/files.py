"""What the service reads from disk and from uploads, and the checks on it.

* The image folder is never taken from the model file alone: :func:`choose_root` serves the
  folder the operator names, or the one recorded at extraction only when it lies inside a
  root the operator allows.  :func:`resolve_image` keeps every id inside that folder
  (no absolute ids, no ``..``, no NUL, no symlink out of it, regular files only).
* Uploads: only the formats in :data:`UPLOAD_FORMATS` are opened at all: only their Pillow
  plugins read the header, and ``Image.format`` is checked again before any pixel is
  decoded, so a QOI, PCX, TGA, SGI, DDS, ICNS, ICO, JPEG 2000, PPM, IM, SPIDER, EPS or AVIF
  upload never reaches its decoder, whatever its name or Content-Type.  The list is the
  package's one decode gate (:data:`varsitysrch._images.DECODE_FORMATS`): catalogue files and
  library and CLI queries go through the same one (plus AVIF/HEIF where the codec is installed).
* Thumbnails are decoded by :func:`varsitysrch._images.load_image`, the one decoder of the
  package (bombs refused, EXIF orientation, draft decoding, bounded resize), letterboxed to a
  ``size`` x ``size`` JPEG.
"""

from __future__ import annotations

import io
import os
import stat
from pathlib import Path
from typing import Any

from .._errors import ImageError
from .._images import DECODE_FORMATS, DECODE_FORMATS_TEXT, UnacceptedFormat, open_allowed

#: Pillow format names accepted for uploads: the package's one decode gate
#: (:data:`varsitysrch._images.DECODE_FORMATS`, which catalogue files and library queries use too).
UPLOAD_FORMATS = DECODE_FORMATS
#: How the 415 message names them: the same list.
UPLOAD_FORMATS_TEXT = DECODE_FORMATS_TEXT


class UnsupportedFormat(Exception):
    """An upload that is not an image in one of :data:`UPLOAD_FORMATS` (HTTP 415)."""


def _real(p: str | os.PathLike[str]) -> Path:
    return Path(os.path.realpath(os.fspath(p)))


def choose_root(
    image_root: str | os.PathLike[str] | None,
    recorded: str | None,
    allow_roots: tuple[str | os.PathLike[str], ...] = (),
) -> Path | None:
    """The folder images are served from, or ``None`` (images and thumbnails then 404).

    ``image_root`` (the operator's) wins.  Otherwise the model's recorded folder is used only
    if it resolves inside one of ``allow_roots``: a model file is data, and a crafted one must
    not be able to point the service at ``/``.
    """
    if image_root is not None:
        return _real(image_root)
    if not recorded:
        return None
    rec = _real(recorded)
    for allowed in allow_roots:
        if rec.is_relative_to(_real(allowed)):
            return rec
    return None


def resolve_image(root: Path, image_id: str) -> Path | None:
    """The regular file ``image_id`` names inside ``root`` (already real), or ``None``.

    :func:`varsitysrch._paths.resolve_image` keeps the id inside the root (no absolute ids,
    no ``..``, symlinks followed); on top of it the service refuses non-canonical ids (empty
    parts, ``.``, backslashes, control characters), names without an image extension, and
    anything that is not a regular file (folders, FIFOs, devices, sockets: never opened, so
    never a hang).
    """
    from .._images import IMAGE_EXTENSIONS
    from .._paths import resolve_image as inside_root

    if not image_id or "\\" in image_id or any(ord(ch) < 32 for ch in image_id):
        return None
    if os.path.splitext(image_id)[1].lower() not in IMAGE_EXTENSIONS:
        return None
    if any(part in ("", ".", "..") for part in image_id.split("/")):
        return None
    p = inside_root(root, image_id)
    if p is None:
        return None
    try:
        st = p.stat()
    except (OSError, ValueError):  # missing, or a name the OS refuses
        return None
    return p if stat.S_ISREG(st.st_mode) else None


def open_upload(data: bytes) -> Any:
    """Open an upload lazily, allow-listed formats only.

    Only the allow-listed plugins even look at the bytes (``Image.open(..., formats=...)``):
    some others decode while opening (ICO decodes its PNG frames), so checking
    ``Image.format`` afterwards would be too late.  Raises :class:`UnsupportedFormat` (not an
    image, or a format outside the list) or :class:`~varsitysrch.ImageError` (an image that
    cannot be used: broken, a decompression bomb, ...).
    """
    from PIL import Image, UnidentifiedImageError

    try:
        return open_allowed(data, UPLOAD_FORMATS)
    except UnidentifiedImageError as exc:
        raise UnsupportedFormat() from exc
    except UnacceptedFormat as exc:  # a plugin that reports a format outside the list
        raise UnsupportedFormat(str(exc.format)) from exc
    except Image.DecompressionBombError as exc:
        raise ImageError(f"decompression bomb refused ({exc})") from exc
    except Exception as exc:  # PIL raises many kinds on garbage input
        raise ImageError(f"not a readable image ({type(exc).__name__}: {exc})") from exc


def make_thumbnail(src: Path, size: int) -> bytes:
    """A ``size`` x ``size`` JPEG of a catalogue image (letterboxed on white)."""
    from PIL import Image

    from .._images import load_image

    arr = load_image(src, size, "letterbox")
    buf = io.BytesIO()
    Image.fromarray(arr, "RGB").save(buf, "JPEG", quality=85, optimize=True)
    return buf.getvalue()
