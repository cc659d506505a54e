"""Atomic file writes (temporary file in the same folder, fsync, rename) and safe CSV/JSON.

Every text file is UTF-8 with ``surrogateescape``, so a file name that is not valid UTF-8
(``os.listdir`` hands it out as lone surrogates) is written byte-for-byte and read back as
the same ``str``.  JSON escapes such characters as ``\\udcXX`` instead (JSON stays UTF-8).

CSV cells meant for people are *neutralised* (:func:`neutralise_cell`): a text cell that a
spreadsheet would evaluate -- it starts with ``= + - @``, a tab or a carriage return -- or
that starts with ``'`` gets one leading ``'``.  :func:`read_csv` strips one leading ``'``,
so the round trip is exact.  Numbers (``int``/``float`` cells, and text that is a plain
decimal number such as ``-0.5``) are never touched.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import re
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` atomically."""
    path = Path(path)
    if path.is_dir():
        from ._errors import InvalidArgumentError

        raise InvalidArgumentError(f"{str(path)!r} is a folder; a file name is needed here")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    os.chmod(tmp_path, 0o666 & ~_umask())
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp_path, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp_path.unlink()
        raise


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike[str], mode: str = "w", **kwargs: Any) -> Iterator[IO[Any]]:
    with atomic_path(path) as tmp, open(tmp, mode, **kwargs) as f:
        yield f


#: text files: UTF-8, with undecodable file-name bytes kept as lone surrogates (and back)
ENCODING = "utf-8"
ERRORS = "surrogateescape"
_TRIGGERS = ("=", "+", "-", "@", "\t", "\r", "'")
_NUMBER = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")


def neutralise_cell(cell: Any) -> Any:
    """``cell`` as a spreadsheet-safe CSV cell (a leading ``'`` on risky text; see module docstring)."""
    if isinstance(cell, str) and cell.startswith(_TRIGGERS) and not _NUMBER.fullmatch(cell):
        return "'" + cell
    return cell


def restore_cell(cell: str) -> str:
    """Undo :func:`neutralise_cell` on a cell read back from a CSV."""
    return cell[1:] if cell.startswith("'") else cell


def stat_stamp(*paths: str | os.PathLike[str] | None) -> tuple[int, ...]:
    """``(mtime_ns, size, inode)`` of each file (``-1`` each when missing; ``None`` paths skipped).

    A cheap "did these files change" key: an atomic replace changes the inode even when the
    size and mtime are kept.
    """
    out: list[int] = []
    for p in paths:
        if p is None:
            continue
        try:
            st = os.stat(p)
            out += [st.st_mtime_ns, st.st_size, st.st_ino]
        except OSError:
            out += [-1, -1, -1]
    return tuple(out)


def write_json(path: str | os.PathLike[str], obj: Any) -> None:
    # lone surrogates (undecodable file names) become JSON \udcXX escapes: valid UTF-8, same str back
    with atomic_open(path, "w", encoding="utf-8", errors="backslashreplace") as f:
        json.dump(obj, f, indent=2, sort_keys=True, ensure_ascii=False)
        f.write("\n")


def write_csv(
    path: str | os.PathLike[str],
    header: Sequence[str],
    rows: Iterable[Sequence[Any]],
    *,
    neutralise: bool = True,
) -> None:
    """Write a CSV atomically (UTF-8 + surrogateescape); text cells neutralised unless told not to."""
    with atomic_open(path, "w", encoding=ENCODING, errors=ERRORS, newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        if neutralise:
            w.writerows([neutralise_cell(c) for c in row] for row in rows)
        else:
            w.writerows(rows)


def csv_rows(f: IO[str], *, neutralised: bool = True) -> Iterator[list[str]]:
    """Rows of an open CSV text file (header included), neutralisation undone."""
    for row in csv.reader(f):
        yield [restore_cell(c) for c in row] if neutralised else row


def read_csv(path: str | os.PathLike[str], *, neutralised: bool = True) -> tuple[list[str], list[list[str]]]:
    """``(header, rows)`` of a CSV written by :func:`write_csv` (cells as ``str``, ids exactly as written)."""
    with open(path, encoding=ENCODING, errors=ERRORS, newline="") as f:
        it = csv_rows(f, neutralised=neutralised)
        header = next(it, [])
        return header, list(it)
