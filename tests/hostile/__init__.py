"""A hostile catalogue: the files and folders an unlucky operator or an attacker puts in an image folder.

:func:`make_hostile_catalogue` writes one into ``root`` and returns what extraction must do
with each entry: ``"ok"`` (embedded, id kept exactly), ``"skip"`` (left out and listed in
``skipped.csv`` with a reason) or ``"ignore"`` (not an image: silently not listed).
Folders end with ``/``.  Entries that the platform cannot make (a socket path that is
too long, AVIF without libavif) are left out of the catalogue or marked accordingly.

Used by tests/test_hardening_store.py (ingestion and store) and available to the rest of
the suite: ``from hostile import make_hostile_catalogue``.
"""

from __future__ import annotations

import contextlib
import os
import socket
from pathlib import Path

import numpy as np
from PIL import Image

#: names that spreadsheets would evaluate if they landed first in a CSV cell
FORMULA_NAMES = ('=HYPERLINK("https:evil.invalid","x").png', "+1+2.png", "-3-4.png", "@SUM(A1).png")
#: names with characters that break line-based formats
LINE_NAMES = ("new\nline.png", "carriage\rreturn.png", "tab\tname.png", 'comma,quote".png')
#: a name that is not valid UTF-8 (os.fsdecode gives lone surrogates)
NON_UTF8_NAME = os.fsdecode(b"caf\xe9-\xff.png")


def solid(path: Path, rgb: tuple[int, int, int], size: tuple[int, int] = (48, 48), seed: int = 0) -> Path:
    """A small noisy image of one colour (distinct images embed to distinct vectors)."""
    rng = np.random.default_rng(seed)
    a = np.clip(np.array(rgb, np.float32) + rng.normal(0, 30, (size[1], size[0], 3)), 0, 255)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(a.astype(np.uint8), "RGB").save(path)
    return path


def thin(path: Path, w: int = 1, h: int = 20_000) -> Path:
    """A few hundred bytes of PNG that is ``w`` x ``h`` pixels (the centre-crop memory blow-up)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (w, h), (200, 30, 30)).save(path)
    return path


def fifo(path: Path) -> Path:
    """A named pipe: opening it for reading blocks until a writer comes (unless O_NONBLOCK)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    os.mkfifo(path)
    return path


def unix_socket(path: Path) -> Path | None:
    """A UNIX socket file (None where the path is too long for AF_UNIX)."""
    if len(os.fsencode(path)) > 100:
        return None
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.bind(os.fspath(path))
    finally:
        s.close()
    return path


def unblock_fifo(path: Path) -> None:
    """Release a reader stuck on ``path`` (opens the FIFO for writing, then closes it)."""
    with contextlib.suppress(OSError):
        os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))


def make_hostile_catalogue(root: Path) -> dict[str, str]:
    """Write the hostile catalogue (see module docstring); return ``{id: "ok" | "skip" | "ignore"}``."""
    from PIL import features

    root.mkdir(parents=True, exist_ok=True)
    out: dict[str, str] = {}
    colours = [(220, 40, 40), (40, 200, 40), (40, 40, 220), (220, 220, 40), (40, 220, 220), (220, 40, 220)]

    def good(rel: str, i: int) -> None:
        solid(root / rel, colours[i % len(colours)], seed=i)
        out[rel] = "ok"

    good("plain/a.png", 0)
    good("plain/b.jpg", 1)
    for i, name in enumerate(FORMULA_NAMES):
        good(f"formula/{name}", 2 + i)
    for i, name in enumerate(LINE_NAMES):
        good(f"lines/{name}", 6 + i)
    good(f"names/{NON_UTF8_NAME}", 10)
    good("names/ünïcødé.png", 11)
    # a symlink to a regular file is an image like any other
    (root / "links").mkdir()
    os.symlink(root / "plain" / "a.png", root / "links" / "to-a.png")
    out["links/to-a.png"] = "ok"
    # special files that must never be opened (a FIFO would block for ever)
    fifo(root / "special" / "pipe.jpg")
    out["special/pipe.jpg"] = "skip"
    if unix_socket(root / "special" / "sock.png") is not None:
        out["special/sock.png"] = "skip"
    os.symlink(root / "nowhere.png", root / "links" / "dangling.png")
    out["links/dangling.png"] = "skip"
    # images that cost far more to decode than their size says, or cannot be decoded
    thin(root / "bad" / "thin-1x20000.png")
    out["bad/thin-1x20000.png"] = "skip"
    thin(root / "bad" / "wide-20000x1.png", 20_000, 1)
    out["bad/wide-20000x1.png"] = "skip"
    (root / "bad" / "garbage.jpg").write_bytes(os.urandom(512))
    out["bad/garbage.jpg"] = "skip"
    data = (root / "plain" / "b.jpg").read_bytes()
    (root / "bad" / "truncated.jpg").write_bytes(data[: len(data) // 3])
    out["bad/truncated.jpg"] = "skip"
    (root / "bad" / "empty.png").write_bytes(b"")
    out["bad/empty.png"] = "skip"
    # formats that need an optional codec
    if features.check("avif"):
        solid(root / "formats" / "photo.avif", (90, 160, 30), seed=20)
        out["formats/photo.avif"] = "ok"
    else:
        (root / "formats").mkdir(exist_ok=True)
        (root / "formats" / "photo.avif").write_bytes(b"\x00\x00\x00\x1cftypavif")
        out["formats/photo.avif"] = "skip"
    (root / "formats").mkdir(exist_ok=True)
    (root / "formats" / "photo.heic").write_bytes(b"\x00\x00\x00\x18ftypheic" + os.urandom(64))
    out["formats/photo.heic"] = "skip"
    # folders left out: a symlinked one (never followed: it may leave the catalogue)
    outside = root.parent / (root.name + "-outside")
    solid(outside / "elsewhere.png", (1, 2, 3))
    os.symlink(outside, root / "linked-folder")
    out["linked-folder/"] = "skip"
    # not images: ignored without a line
    (root / "plain" / "notes.txt").write_text("not an image")
    out["plain/notes.txt"] = "ignore"
    (root / ".hidden.png").write_bytes(b"hidden files are ignored on purpose")
    out[".hidden.png"] = "ignore"
    return out


def expected(entries: dict[str, str], outcome: str) -> set[str]:
    return {k for k, v in entries.items() if v == outcome}
