"""Catalogue ids to files, never outside the folder the operator named.

A model file is data from somewhere else: its ids (and any folder it records) must not be
able to point a search result or the service at ``/etc/passwd``.  :func:`resolve_image` is
the one place an id becomes a path: the root comes from the operator (``Searcher(...,
image_root=DIR)``, ``varsitysrch serve --images DIR``), never from the model file, and the
resolved path (symlinks followed) must stay inside it.
"""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath

__all__ = ["resolve_image"]


def _plain_relative(image_id: str) -> bool:
    if not image_id or "\x00" in image_id or image_id.startswith(("/", "\\")) or os.path.isabs(image_id):
        return False
    parts = PurePosixPath(image_id.replace("\\", "/")).parts
    return bool(parts) and ".." not in parts


def resolve_image(root: str | os.PathLike[str] | None, image_id: object) -> Path | None:
    """The file of catalogue id ``image_id`` under ``root``, or ``None``.

    ``None`` when no root is known, when ``image_id`` is not a plain relative path (absolute,
    ``..`` components, a NUL byte, not a string), or when the path resolved with symlinks
    followed is not inside the resolved ``root``.  The file need not exist.
    """
    if root is None or not isinstance(image_id, str) or not _plain_relative(image_id):
        return None
    base = Path(root).resolve()
    try:
        path = (base / image_id).resolve()
    except (OSError, RuntimeError, ValueError):  # symlink loops, unencodable names
        return None
    if path == base or not path.is_relative_to(base):
        return None
    return path
