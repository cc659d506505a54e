"""Atomic file writes (temporary file in the same folder, fsync, rename) and safe CSV/JSON.

Every text file is UTF-8 with ``surrogateescape``, so a file name that is not valid UTF-8
(``os.listdir`` hands it out as lone surrogates) is written byte-for-byte and read back as
the same ``str``.  JSON escapes such characters as ``\\udcXX`` instead (JSON stays UTF-8).

CSV cells meant for people are *neutralised* (:func:`_neutralise_cell`): a text cell that a
spreadsheet would evaluate -- it starts with ``= + - @``, a tab or a carriage return -- or
that starts with ``'`` gets one leading ``'``.  :func:`read_csv` strips one leading ``'``,
so the round trip is exact.  Numbers (``int``/``float`` cells, and text that is a plain
decimal number such as ``-0.5``) are never touched.

An output path that exists as anything but a regular file -- a folder, a FIFO, a device, a
socket, or a symlink to one of these -- is never replaced (:func:`atomic_path` refuses it
with one line): ``--csv /dev/null`` run as root must not turn the device into a file.
:func:`open_regular` opens a file for reading without following a final symlink and without
blocking on a FIFO, and refuses anything but a regular file.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import json
import os
import re
import stat
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any

__all__ = [
    "ENCODING",
    "ERRORS",
    "atomic_path",
    "check_output_folder",
    "check_replaceable",
    "csv_rows",
    "disk_full",
    "file_kind",
    "open_regular",
    "read_csv",
    "read_regular",
    "stat_stamp",
    "write_csv",
    "write_json",
]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def file_kind(mode: int) -> str:
    """What a ``st_mode`` is, in words ("regular file", "folder", "FIFO", ...)."""
    for test, name in (
        (stat.S_ISREG, "regular file"),
        (stat.S_ISDIR, "folder"),
        (stat.S_ISLNK, "symbolic link"),
        (stat.S_ISFIFO, "FIFO (named pipe)"),
        (stat.S_ISCHR, "character device"),
        (stat.S_ISBLK, "block device"),
        (stat.S_ISSOCK, "socket"),
    ):
        if test(mode):
            return name
    return "special file"


def check_replaceable(path: str | os.PathLike[str]) -> None:
    """Refuse (InvalidArgumentError) an output path that exists as anything but a regular file.

    Symlinks are followed for the test: a link to a regular file may be replaced (the link, not
    its target), a link to a device, FIFO or folder may not; a dangling link may be replaced.
    """
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return
    except OSError as exc:  # a symlink loop, a path through a file, no permission
        from ._errors import InvalidArgumentError

        raise InvalidArgumentError(f"output file {str(path)!r} cannot be checked ({exc.strerror})") from None
    if not stat.S_ISREG(st.st_mode):
        from ._errors import InvalidArgumentError

        kind = file_kind(st.st_mode)
        link = " (through a symbolic link)" if os.path.islink(path) else ""
        hint = "a file name is needed here" if stat.S_ISDIR(st.st_mode) else "it is left as it is"
        raise InvalidArgumentError(
            f"output file {str(path)!r} exists and is a {kind}{link}, not a regular file: "
            f"varsitysrch replaces regular files only; {hint}"
        )


def check_output_folder(path: str | os.PathLike[str], param: str) -> None:
    """Refuse (InvalidArgumentError naming ``param``) an output file whose folder does not exist.

    A typo in a folder (``-m /nonexistent/dir/m.vsm``) must not create folders silently; the message
    says how to go on.  :func:`atomic_path` itself still creates missing folders (library callers that
    want that keep it); front ends call this first.
    """
    import shlex

    from ._errors import InvalidArgumentError

    parent = Path(path).parent
    if parent.is_dir():
        return
    if parent.exists():
        raise InvalidArgumentError(f"{param} {str(path)!r}: {str(parent)!r} is not a folder", param=param)
    raise InvalidArgumentError(
        f"{param} {str(path)!r}: the folder {str(parent)!r} does not exist; correct the path, or create "
        f"the folder first (mkdir -p {shlex.quote(str(parent))})",
        param=param,
    )


def _named_for_user(exc: OSError, tmp: Path | None, path: Path) -> OSError:
    """``exc`` naming ``path`` instead of the temporary file (a user never typed ``.x.abcd1234.tmp``);
    ``exc`` itself when it names another file or carries no errno (numpy's short-write message)."""
    if exc.errno is None:
        return exc
    if tmp is not None and exc.filename is not None and os.fspath(exc.filename) != os.fspath(tmp):
        return exc
    if tmp is None or exc.filename is None:  # the temporary file could not even be created
        reason = f"cannot create a file in {str(path.parent)!r} ({exc.strerror or exc})"
    else:
        reason = exc.strerror or str(exc)
    new = OSError(exc.errno, reason, os.fspath(path))  # the errno's subclass (PermissionError, ...)
    new.__cause__ = exc
    return new


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` atomically.

    ``path`` must not exist as anything but a regular file (see :func:`check_replaceable`);
    this is checked before and again just before the rename.  An ``OSError`` about the temporary
    file (it cannot be created, the disk is full, no permission) names ``path``, the file the
    caller asked for, never the temporary name.
    """
    path = Path(path)
    check_replaceable(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise _named_for_user(exc, None, path) from exc
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        os.chmod(tmp_path, 0o666 & ~_umask())
        yield tmp_path
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        check_replaceable(path)  # it may have appeared while the file was written
        os.replace(tmp_path, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp_path.unlink()
        named = _named_for_user(exc, tmp_path, path)
        if named is exc:
            raise
        raise named from exc
    except BaseException:
        with contextlib.suppress(OSError):
            tmp_path.unlink()
        raise


@contextlib.contextmanager
def _atomic_open(path: str | os.PathLike[str], mode: str = "w", **kwargs: Any) -> Iterator[IO[Any]]:
    with atomic_path(path) as tmp, open(tmp, mode, **kwargs) as f:
        yield f


def open_regular(path: str | os.PathLike[str], what: str = "file") -> int:
    """A read-only descriptor of the regular file ``path``: a final symlink is not followed,
    a FIFO does not block (``O_NONBLOCK``), and anything but a regular file is refused.

    Raises ``FileNotFoundError`` when ``path`` does not exist and :class:`OSError` with a
    one-line message otherwise (callers turn it into their own error).
    """
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise
    except OSError as exc:
        if exc.errno == errno.ELOOP or os.path.islink(path):
            raise OSError(exc.errno, f"{what} is a symbolic link; only a regular file is read here") from None
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise OSError(errno.EINVAL, f"{what} is a {file_kind(st.st_mode)}, not a regular file")
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_regular(path: str | os.PathLike[str], what: str = "file", limit: int | None = None) -> bytes:
    """The bytes of the regular file ``path`` (see :func:`open_regular`); at most ``limit`` bytes
    are accepted (``OSError`` EINVAL beyond)."""
    fd = open_regular(path, what)
    with os.fdopen(fd, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if limit is not None and size > limit:
            raise OSError(errno.EINVAL, f"{what} is larger than {limit} bytes")
        data = f.read() if limit is None else f.read(size + 1 if size < limit else limit + 1)
    if limit is not None and len(data) > limit:
        raise OSError(errno.EINVAL, f"{what} is larger than {limit} bytes")
    return data


_DISK_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
#: numpy's message for a short write (``ndarray.tofile`` on a full disk), without an errno
_SHORT_WRITE = re.compile(r"\d+ requested and \d+ written")


def disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` says the disk (or quota) is full: ENOSPC/EDQUOT/EFBIG, or numpy's
    "N requested and M written" short write, which carries no errno."""
    if not isinstance(exc, OSError):
        return False
    if exc.errno in _DISK_FULL:
        return True
    return exc.errno is None and bool(_SHORT_WRITE.search(str(exc)))


#: text files: UTF-8, with undecodable file-name bytes kept as lone surrogates (and back)
ENCODING = "utf-8"
ERRORS = "surrogateescape"
_TRIGGERS = ("=", "+", "-", "@", "\t", "\r", "'")
_NUMBER = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")


def _neutralise_cell(cell: Any) -> Any:
    """``cell`` as a spreadsheet-safe CSV cell (a leading ``'`` on risky text; see module docstring)."""
    if isinstance(cell, str) and cell.startswith(_TRIGGERS) and not _NUMBER.fullmatch(cell):
        return "'" + cell
    return cell


def _restore_cell(cell: str) -> str:
    """Undo :func:`_neutralise_cell` on a cell read back from a CSV."""
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
    with _atomic_open(path, "w", encoding="utf-8", errors="backslashreplace") as f:
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
    with _atomic_open(path, "w", encoding=ENCODING, errors=ERRORS, newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        if neutralise:
            w.writerows([_neutralise_cell(c) for c in row] for row in rows)
        else:
            w.writerows(rows)


def csv_rows(f: IO[str], *, neutralised: bool = True, strict: bool = False) -> Iterator[list[str]]:
    """Rows of an open CSV text file (header included), neutralisation undone.

    ``strict``: a malformed quote is a ``csv.Error`` instead of being read leniently."""
    for row in csv.reader(f, strict=strict):
        yield [_restore_cell(c) for c in row] if neutralised else row


def read_csv(path: str | os.PathLike[str], *, neutralised: bool = True) -> tuple[list[str], list[list[str]]]:
    """``(header, rows)`` of a CSV written by :func:`write_csv` (cells as ``str``, ids exactly as written)."""
    with open(path, encoding=ENCODING, errors=ERRORS, newline="") as f:
        it = csv_rows(f, neutralised=neutralised)
        header = next(it, [])
        return header, list(it)
