"""The feature store: one float matrix, an ids table and a JSON header, committed as a unit.

Layout of ``save_to`` (format version 2)::

    store.json        the commit record: format, version, generation, extractor identity,
                      dim, count, dtype, library version -- written last, renamed atomically
    g-<token>/        the generation store.json names (never modified once committed):
        vectors.npy   float32 (or float16) [count, dim], L2-normalised rows, memory-mappable
        ids.csv       id,size,mtime_ns,inode,ctime_ns -- id = POSIX path relative to the image folder
        colour.npy    float16 [count, 112]: each image's colour signature (:mod:`varsitysrch._colour`)
        plain.npy     uint8 [count, 1]: each image's plain-background flag (0/1)
    vectors.npy       hard links to the current generation's files, for tools that read the
    ids.csv           folder directly (refreshed after each commit; readers here use store.json)
    skipped.csv       path,reason -- files and folders left out by the last run
    parts/            checkpoints of an unfinished run (``part-<run>-NNNNN``), removed on success
    colour/           the colour sidecar of stores written before the colour rows joined the
                      generation: never read, removed by the next extraction
    .lock             held (fcntl) by the one process writing the store

The store folder is ours alone.  Every name the store creates or removes matches its exact
pattern (a generation folder ``g-<time>-<random>`` that carries the marker file
``.varsitysrch-generation``, the temporary files ``.<name>.<8 chars>.tmp`` of our own
writes, the checkpoints ``part-<run>-NNNNN.npy|csv``); anything else in the folder is never
touched or removed.  No writer follows a symlink or opens a special file there: the lock is
opened with ``O_NOFOLLOW``, every file is read through
:func:`~varsitysrch._io.open_regular` (no final symlink, no blocking on a FIFO, regular files
only), and a store whose own names (``store.json``, ``parts/``, ``colour/``, ...) exist as
something else -- a symlink, a FIFO, a device -- is refused with one line before anything is
written.

Colour rows: ``colour.npy`` and ``plain.npy`` are computed by :func:`extract_features` from the
same decode as the vectors and committed in the same generation, so they can never be of
another generation than the vectors; ``store.json``'s ``colour`` names how they were made
(:data:`varsitysrch._colour.COLOUR_IDENTITY`).  A store without them (written by
:meth:`FeatureStore.write` from bare vectors, by an older version, or a legacy folder) has
``colour = plain = None``; the next :func:`extract_features` over it computes them for every
image (vectors of unchanged images are kept).

Integrity: ``store.json`` records the size and SHA-256 of each file of its generation
(``files``, so ``sha256sum g-*/vectors.npy`` checks them by hand) and the SHA-256 of its
own content (``header_sha256``).  Opening a store checks the header's digest, the sizes and
the ids table's digest; ``validate=True`` (the default) also hashes the vectors.  A model
records the generation and :attr:`FeatureStore.checksum` it was trained on.

A commit writes a new generation folder, fsyncs it, then replaces ``store.json``: a kill at
any point leaves either the old catalogue or the new one, never a mix.  Stray generations
and temporary files of a killed writer are removed by the next writer.  A second writer
gets a :class:`~varsitysrch.FeatureStoreError` naming the holder of the lock.  A full disk
is a one-line :class:`~varsitysrch.FeatureStoreError`; vectors are written with plain
``write`` calls after ``posix_fallocate`` (no writable memory map, so no SIGBUS) and the
old store stays intact.

Stores of format version 1 (``vectors.npy``/``ids.csv``/``store.json`` side by side) are
read as before and become version 2 at their next write.  A *legacy* folder -- one
``<name>.npy`` per image, as the original scripts wrote -- is read too
(:func:`load_features`); its vectors are flattened and L2-normalised.

Opening a store validates what it trusts: JSON types, shapes and dtypes (float16/float32
only, checked against the file size before anything is read), finite unit-norm rows,
unique well-formed ids, and the extractor's dim; anything else is a one-line
:class:`~varsitysrch.FeatureStoreError`.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import fcntl
import hashlib
import io
import json
import logging
import os
import re
import secrets
import socket
import stat
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ._errors import FeatureStoreError, VarsitysrchError
from ._io import (
    ENCODING,
    ERRORS,
    csv_rows,
    disk_full,
    file_kind,
    open_regular,
    read_regular,
    write_csv,
    write_json,
)
from ._version import __version__

log = logging.getLogger(__name__)

__all__ = [
    "COLOUR",
    "COLOUR_NPY",
    "ID_COLUMNS",
    "PARTS",
    "PLAIN_NPY",
    "SKIPPED",
    "STORE_JSON",
    "TOKEN",
    "FeatureStore",
    "Stamp",
    "commit",
    "load_features",
    "log_skip",
    "new_token",
    "normalize_rows",
    "os_error",
    "recover",
    "remove_generation",
    "same_file",
    "store_header",
    "store_lock",
    "store_paths",
    "write_header",
]


_STORE_FORMAT = "varsitysrch-features"
_STORE_VERSION = 2
STORE_JSON = "store.json"
_VECTORS = "vectors.npy"
_IDS = "ids.csv"
#: the colour rows of a generation (optional, both or neither): signatures and plain-background flags
COLOUR_NPY = "colour.npy"
PLAIN_NPY = "plain.npy"
_SIDE_FILES = (COLOUR_NPY, PLAIN_NPY)
_SIDE_DTYPES = {COLOUR_NPY: "float16", PLAIN_NPY: "uint8"}
SKIPPED = "skipped.csv"
_LOCK = ".lock"
ID_COLUMNS = ("id", "size", "mtime_ns", "inode", "ctime_ns")
_DTYPES = ("float32", "float16")
#: rows whose L2 norm is farther than this from 1 make the store invalid (float16 rounds to ~1e-3)
_NORM_TOLERANCE = 0.02
PARTS = "parts"
COLOUR = "colour"
#: the marker file inside each generation folder this library wrote
_MARKER = ".varsitysrch-generation"
_MARKER_TEXT = b"varsitysrch feature store generation\n"
#: the run token of generations and checkpoints: ``<time_ns hex>-<random hex>`` (:func:`new_token`)
TOKEN = r"[0-9a-f]{8,32}-[0-9a-f]{4,32}"
_GENERATION = re.compile(rf"g-{TOKEN}")
#: temporary files of :func:`~varsitysrch._io.atomic_path` (``mkstemp``: 8 characters) and links
_TMP = re.compile(r"\.(?:store\.json|skipped\.csv|vectors\.npy|ids\.csv)\.[a-z0-9_]{8}\.tmp")
_GEN_TMP = re.compile(r"\.(?:vectors\.npy|ids\.csv|colour\.npy|plain\.npy)\.[a-z0-9_]{8}\.tmp")
#: the names of a store folder and what each must be when it exists
_ENTRIES = {STORE_JSON: "file", SKIPPED: "file", _VECTORS: "file", _IDS: "file", PARTS: "dir", COLOUR: "dir"}
#: the header's digest of its own content, and the files of its generation
_HEADER_SUM = "header_sha256"
_FILES = "files"
#: ids tables larger than this per id are refused before they are read (a path is at most 4 KiB)
_ID_ROW_BYTES = 3 * 4096 + 128

#: (size, mtime_ns, inode, ctime_ns) of a file; -1 where unknown (stores of format version 1)
Stamp = tuple[int, int, int, int]


def same_file(a: Sequence[int], b: Sequence[int]) -> bool:
    """Whether two stamps say the file is unchanged: size and mtime, and inode and ctime where both known."""
    if a[0] != b[0] or a[1] != b[1]:
        return False
    return all(x < 0 or y < 0 or x == y for x, y in zip(a[2:4], b[2:4], strict=False))


@dataclass(frozen=True)
class _StorePaths:
    """Where the live files of a store are (follow ``store.json``; never guess)."""

    folder: Path
    header: Path
    vectors: Path
    ids: Path
    generation: str | None  # None: a format-1 store (files beside store.json)


@dataclass
class FeatureStore:
    """Ids + one ``[n, dim]`` matrix + the identity of the extractor that made them."""

    folder: Path
    ids: list[str]
    vectors: np.ndarray
    extractor: dict[str, Any]
    sizes: list[int] = field(default_factory=list)
    mtimes: list[int] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)
    inodes: list[int] = field(default_factory=list)
    ctimes: list[int] = field(default_factory=list)
    #: size and sha256 of the generation's files as ``store.json`` records them (verified at open;
    #: None: a store written before checksums).  Not in ``meta``, which describes the catalogue.
    files: dict[str, Any] | None = None
    #: the generation's colour signatures ``float16 [n, SIGNATURE_DIM]`` and plain-background
    #: flags ``uint8 [n, 1]`` (memory-mapped; None: a store without colour rows)
    colour: np.ndarray | None = None
    plain: np.ndarray | None = None

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def generation(self) -> str | None:
        """The generation folder ``store.json`` names (None: a format-1 or legacy store)."""
        gen = self.meta.get("generation")
        return gen if isinstance(gen, str) else None

    @property
    def checksum(self) -> str | None:
        """``sha256:<hex>`` of the generation's recorded file digests (None: a store written
        before checksums); a model records it to recognise the store it was trained on."""
        return _files_checksum(self.files)

    def colour_record(self) -> dict[str, Any] | None:
        """What a model records of the store's colour rows (None: the store has none):
        ``checksum`` (``sha256:`` over the records of ``colour.npy`` and ``plain.npy``), how
        they were made (``kind``), ``count``, ``plain_images`` and ``studio_share`` (the share
        of images on a plain backdrop)."""
        if self.colour is None or self.plain is None or not self.files or COLOUR_NPY not in self.files:
            return None
        n = len(self.ids)
        plain = int(np.count_nonzero(np.asarray(self.plain))) if n else 0
        return {
            "checksum": _files_checksum({name: self.files[name] for name in _SIDE_FILES}),
            "kind": self.meta.get("colour"),
            "count": n,
            "plain_images": plain,
            "studio_share": round(plain / n, 6) if n else 0.0,
        }

    def stamps(self) -> dict[str, Stamp]:
        """``id -> (size, mtime_ns, inode, ctime_ns)`` recorded at extraction (empty for legacy stores)."""
        if not self.sizes:
            return {}
        n = len(self.ids)
        ino = self.inodes if len(self.inodes) == n else [-1] * n
        ct = self.ctimes if len(self.ctimes) == n else [-1] * n
        return {
            rel: (s, m, i, c)
            for rel, s, m, i, c in zip(self.ids, self.sizes, self.mtimes, ino, ct, strict=True)
        }

    # ------------------------------------------------------------------ reading
    @classmethod
    def open(
        cls, folder: str | os.PathLike[str], *, mmap: bool = True, validate: bool = True
    ) -> FeatureStore:
        """Open a store written by :func:`extract_features` (or a legacy .npy folder).

        ``validate`` also checks every row is finite and of unit norm (one pass over the
        vectors, in chunks); shapes, dtypes, ids and the header are always checked.
        """
        folder = Path(folder)
        if not folder.is_dir():
            raise FeatureStoreError(f"features_folder {str(folder)!r} does not exist or is not a folder")
        if not (folder / STORE_JSON).exists():
            if (folder / "ids.csv").exists() or any(folder.glob("*/ids.csv")):
                # a store whose header was lost, not a legacy per-image folder: refuse, do not
                # read its vectors.npy files as if each were one image's features
                raise FeatureStoreError(
                    f"{folder}: {STORE_JSON} is missing but the folder holds a feature store's files; "
                    "run extract_features again (into a new folder)"
                )
            return cls._open_legacy(folder)
        # a writer may commit (and remove the generation we just read about) between our
        # reads: then store.json names a newer generation, and we read again
        for attempt in range(5):
            try:
                return cls._open_once(folder, mmap=mmap, validate=validate)
            except _Moved:
                time.sleep(0.01 * (attempt + 1))
        return cls._open_once(folder, mmap=mmap, validate=validate)

    @classmethod
    def _open_once(cls, folder: Path, *, mmap: bool, validate: bool) -> FeatureStore:
        meta, header_ok = _read_header(folder / STORE_JSON)
        paths = _paths(folder, meta)
        try:
            _check_generation_folder(paths)
            raw_ids = _read_ids_bytes(paths.ids, int(meta["count"]))
            ids, cols = _parse_id_table(raw_ids, paths.ids)
            vectors, digest = _load_vectors(paths.vectors, meta, mmap=mmap, digest=validate)
        except FileNotFoundError as exc:
            if paths.generation is not None and _read_store_header(folder / STORE_JSON).get("generation") != (
                paths.generation
            ):
                raise _Moved from exc
            raise FeatureStoreError(f"{exc.filename}: missing from the feature store") from exc
        if vectors.shape[0] != len(ids) or vectors.shape[0] != meta["count"]:
            raise FeatureStoreError(
                f"{folder}: store is inconsistent: {vectors.shape[0]} vectors, {len(ids)} ids, "
                f"count {meta['count']} in {STORE_JSON}"
            )
        if validate:
            _check_rows(vectors, str(paths.vectors))
        # integrity last: the checks above say *what* is wrong when they can
        if header_ok is False:
            raise FeatureStoreError(
                f"{paths.header}: the header does not match its recorded checksum ({_HEADER_SUM}): "
                "it was changed after it was written; extract the catalogue again"
            )
        files = meta.pop(_FILES, None)
        meta.pop(_HEADER_SUM, None)
        if files is not None:
            _verify_file(paths.ids, files, _IDS, len(raw_ids), _sha256(raw_ids))
            vbytes = _vectors_bytes(meta)
            _verify_file(paths.vectors, files, _VECTORS, vbytes, digest)
        side = _load_side(paths, meta, files, mmap=mmap)
        ex = dict(meta["extractor"])
        return cls(
            folder, ids, vectors, ex, cols[0], cols[1], meta, cols[2], cols[3], files, side[0], side[1]
        )

    @classmethod
    def _open_legacy(cls, folder: Path) -> FeatureStore:
        if (
            os.path.lexists(folder / _LOCK)
            or (folder / PARTS).is_dir()
            or any(_GENERATION.fullmatch(n) for n in os.listdir(folder))
        ):
            raise FeatureStoreError(
                f"features_folder {str(folder)!r} holds an unfinished feature store (nothing committed "
                "yet); rerun extract_features to finish it"
            )
        files = sorted(p for p in folder.rglob("*.npy") if p.is_file())
        if not files:
            raise FeatureStoreError(
                f"features_folder {str(folder)!r} holds no feature store ({STORE_JSON}) and no .npy files; "
                "run extract_features first"
            )
        rows = []
        for p in files:
            try:
                a = np.load(p, allow_pickle=False)
            except (OSError, ValueError) as exc:
                raise FeatureStoreError(f"{p}: unreadable legacy feature file ({exc})") from exc
            if a.dtype.kind not in "fiu":
                raise FeatureStoreError(f"{p}: legacy feature file holds {a.dtype}, not numbers")
            rows.append(np.asarray(a, dtype=np.float32).reshape(-1))
        dims = {r.size for r in rows}
        if len(dims) != 1:
            raise FeatureStoreError(f"{folder}: legacy .npy files have different sizes {sorted(dims)}")
        X = np.stack(rows)
        if not np.isfinite(X).all():
            raise FeatureStoreError(f"{folder}: legacy .npy files hold NaN or infinite values")
        X = normalize_rows(X)
        ids = [p.relative_to(folder).with_suffix("").as_posix() for p in files]
        log.info("read %d legacy per-image .npy feature files from %s", len(ids), folder)
        extractor = {"name": "legacy-npy", "dim": int(X.shape[1])}
        return cls(folder, ids, X, extractor, [], [], {"legacy": True})

    # ------------------------------------------------------------------ writing
    @staticmethod
    def write(
        folder: str | Path,
        ids: Sequence[str],
        vectors: np.ndarray,
        extractor: dict[str, Any],
        *,
        sizes: Sequence[int] | None = None,
        mtimes: Sequence[int] | None = None,
        extra: dict[str, Any] | None = None,
        inodes: Sequence[int] | None = None,
        ctimes: Sequence[int] | None = None,
        allow_empty: bool = False,
    ) -> Path:
        """Write a complete store as one commit, holding the store's lock.

        ``vectors`` must be float32/float16 rows that are finite and L2-normalised, ``ids``
        unique relative paths.  An empty ``ids`` never replaces a non-empty store unless
        ``allow_empty``.
        """
        folder = Path(folder)
        vectors = np.asarray(vectors)
        if vectors.ndim != 2 or vectors.shape[0] != len(ids):
            raise FeatureStoreError(f"vectors shape {vectors.shape} does not match {len(ids)} ids")
        dtype = str(vectors.dtype)
        if dtype not in _DTYPES:
            raise FeatureStoreError(f"vectors must be float32 or float16; got {dtype}")
        n = len(ids)

        def col(v: Sequence[int] | None) -> list[int]:
            return [int(x) for x in v] if v is not None else [-1] * n

        stamps = list(zip(col(sizes), col(mtimes), col(inodes), col(ctimes), strict=True))
        _check_ids(list(ids), "ids")
        _check_rows(vectors, "vectors")
        header = store_header(extractor, int(vectors.shape[1]), n, dtype, extra)
        with store_lock(folder):
            recover(folder)
            if n == 0 and not allow_empty:
                _refuse_empty(folder, "no ids given")

            def chunks() -> Iterator[np.ndarray]:
                for s in range(0, n, 16384):
                    yield vectors[s : s + 16384]

            commit(folder, list(ids), stamps, chunks(), header)
        return folder


class _Moved(Exception):
    """store.json moved on to a newer generation while we were reading."""


def _refuse_empty(folder: Path, why: str) -> None:
    n = 0
    if (folder / STORE_JSON).exists():
        with contextlib.suppress(FeatureStoreError):
            n = _read_store_header(folder / STORE_JSON)["count"]
    if n > 0:
        raise FeatureStoreError(
            f"{why}: the feature store {str(folder)!r} holds {n} images and was left as it is "
            "(pass allow_empty=True, or --allow-empty, to empty it)"
        )


def store_header(
    extractor: dict[str, Any], dim: int, count: int, dtype: str, extra: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The ``store.json`` of a store (the generation is added at commit)."""
    meta: dict[str, Any] = {
        "format": _STORE_FORMAT,
        "version": _STORE_VERSION,
        "library_version": __version__,
        "extractor": extractor,
        "dim": int(dim),
        "count": int(count),
        "dtype": dtype,
        "vectors": _VECTORS,
        "ids": _IDS,
    }
    meta.update(extra or {})
    return meta


# ---------------------------------------------------------------------- validation
def _int(meta: dict[str, Any], key: str, path: Path, lo: int) -> int:
    v = meta.get(key)
    if isinstance(v, bool) or not isinstance(v, int) or v < lo:
        raise FeatureStoreError(f"{path}: {key!r} must be an integer >= {lo}; got {v!r}")
    return v


#: store.json larger than this is refused before it is read
_MAX_HEADER_BYTES = 64 * 2**20


def _canonical(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, ensure_ascii=True, separators=(",", ":")).encode("ascii")


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _header_digest(meta: dict[str, Any]) -> str:
    """The SHA-256 of a header's content without its own digest (canonical JSON)."""
    return _sha256(_canonical({k: v for k, v in meta.items() if k != _HEADER_SUM}))


def _files_checksum(files: Any) -> str | None:
    """``sha256:<hex>`` over a generation's file records (None when there are none)."""
    if not isinstance(files, dict) or not files:
        return None
    return "sha256:" + _sha256(_canonical(files))


def _read_store_header(path: Path) -> dict[str, Any]:
    """``store.json`` checked for types (one-line FeatureStoreError otherwise)."""
    return _read_header(path)[0]


def _read_header(path: Path) -> tuple[dict[str, Any], bool | None]:
    """``(header, whether it matches its recorded digest)`` (None: no digest recorded).

    The file is read without following a symlink or blocking on a FIFO; its types are checked
    here, its digest by the caller once the more specific checks have had their say."""
    try:
        raw = read_regular(path, STORE_JSON, _MAX_HEADER_BYTES)
        meta = json.loads(raw.decode("utf-8"))
    except FileNotFoundError as exc:
        raise FeatureStoreError(f"{path}: unreadable store header (no such file)") from exc
    except (OSError, ValueError, RecursionError) as exc:
        why = (
            "nested too deeply" if isinstance(exc, RecursionError) else getattr(exc, "strerror", None) or exc
        )
        raise FeatureStoreError(f"{path}: unreadable store header ({why})") from None
    if not isinstance(meta, dict):
        raise FeatureStoreError(f"{path}: store header must be a JSON object; got {type(meta).__name__}")
    ok: bool | None = None
    if _HEADER_SUM in meta:
        try:
            ok = meta[_HEADER_SUM] == _header_digest(meta)
        except (TypeError, ValueError, RecursionError):
            ok = False
    if meta.get("format") != _STORE_FORMAT:
        raise FeatureStoreError(f"{path}: not a varsitysrch feature store")
    version = _int(meta, "version", path, 1)
    if version > _STORE_VERSION:
        raise FeatureStoreError(
            f"{path}: store format version {version} is newer than this library "
            f"understands ({_STORE_VERSION}); upgrade varsitysrch"
        )
    _int(meta, "count", path, 0)
    dim = _int(meta, "dim", path, 0)
    if meta.get("dtype", "float32") not in _DTYPES:
        raise FeatureStoreError(f"{path}: dtype must be one of {_DTYPES}; got {meta.get('dtype')!r}")
    meta.setdefault("dtype", "float32")
    ex = meta.get("extractor", {})
    if not isinstance(ex, dict):
        raise FeatureStoreError(f"{path}: 'extractor' must be a JSON object; got {type(ex).__name__}")
    meta["extractor"] = ex
    ex_dim = ex.get("dim")
    # a post-processed store (a projection of the extractor's vectors) has its own dim
    if isinstance(ex_dim, int) and not meta.get("postprocess") and ex_dim != dim and meta["count"] > 0:
        raise FeatureStoreError(
            f"{path}: vectors have dim {dim} but the extractor {ex.get('name')!r} makes {ex_dim}-d vectors"
        )
    if version >= 2:
        gen = meta.get("generation")
        if not isinstance(gen, str) or not _GENERATION.fullmatch(gen):
            raise FeatureStoreError(f"{path}: bad generation {gen!r}")
    for key in ("image_root", "features"):  # records of folders: text or nothing
        if meta.get(key) is not None and not isinstance(meta[key], str):
            raise FeatureStoreError(f"{path}: {key!r} must be a string (a folder); got {meta[key]!r}")
    if version < 2:  # checksums belong to a generation: a format-1 store has none
        ok = None
        meta.pop(_FILES, None)
    files = meta.get(_FILES)
    if files is not None and not _good_files(files):
        raise FeatureStoreError(
            f"{path}: {_FILES!r} must map {_VECTORS} and {_IDS} (and optionally {COLOUR_NPY} with "
            f"{PLAIN_NPY}) to their size and sha256; got {files!r}"[:300]
        )
    if files is not None and COLOUR_NPY in files:
        col = meta.get("colour")
        if not isinstance(col, dict) or not _is_count(col.get("dim")) or col.get("dim") == 0:
            raise FeatureStoreError(
                f"{path}: 'colour' must describe the colour rows (an object with their 'dim'); got {col!r}"[
                    :300
                ]
            )
    return meta, ok


def _is_count(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


_HEX64 = re.compile(r"[0-9a-f]{64}")


def _good_files(files: Any) -> bool:
    if not isinstance(files, dict) or not {_VECTORS, _IDS} <= set(files) <= {_VECTORS, _IDS, *_SIDE_FILES}:
        return False
    if (COLOUR_NPY in files) != (PLAIN_NPY in files):
        return False
    for rec in files.values():
        if not isinstance(rec, dict) or set(rec) != {"bytes", "sha256"}:
            return False
        n, h = rec["bytes"], rec["sha256"]
        if isinstance(n, bool) or not isinstance(n, int) or n < 0 or not isinstance(h, str):
            return False
        if not _HEX64.fullmatch(h):
            return False
    return True


def _vectors_bytes(meta: dict[str, Any]) -> int:
    """Size of a generation's vectors.npy as written by :func:`_write_vectors_file` (header + rows)."""
    shape = (int(meta["count"]), int(meta["dim"]))
    buf = io.BytesIO()
    header = {"descr": np.lib.format.dtype_to_descr(np.dtype(meta["dtype"])), "fortran_order": False}
    np.lib.format.write_array_header_1_0(buf, {**header, "shape": shape})
    return buf.tell() + shape[0] * shape[1] * np.dtype(meta["dtype"]).itemsize


def _verify_file(path: Path, files: dict[str, Any], name: str, size: int, digest: str | None) -> None:
    rec = files[name]
    if size != rec["bytes"]:
        raise FeatureStoreError(
            f"{path}: {size} bytes, {STORE_JSON} records {rec['bytes']}: the store was changed after "
            "it was written; extract the catalogue again"
        )
    if digest is not None and digest != rec["sha256"]:
        raise FeatureStoreError(
            f"{path}: content does not match the sha256 recorded in {STORE_JSON} (the file was changed "
            "or damaged after it was written); extract the catalogue again"
        )


def _check_generation_folder(paths: _StorePaths) -> None:
    """The generation ``store.json`` names must be a real folder (not a symlink to one)."""
    if paths.generation is None:
        return
    gdir = paths.folder / paths.generation
    st = os.lstat(gdir)  # FileNotFoundError: a concurrent commit (the caller re-reads)
    if not stat.S_ISDIR(st.st_mode):
        raise FeatureStoreError(
            f"{gdir}: the store's generation is a {file_kind(st.st_mode)}, not the folder varsitysrch "
            "wrote; extract the catalogue again"
        )


def _paths(folder: Path, meta: dict[str, Any]) -> _StorePaths:
    gen = meta.get("generation") if meta.get("version", 1) >= 2 else None
    base = folder / gen if gen else folder
    return _StorePaths(folder, folder / STORE_JSON, base / _VECTORS, base / _IDS, gen)


def store_paths(folder: str | os.PathLike[str]) -> _StorePaths:
    """The live files of the store in ``folder`` (as ``store.json`` names them)."""
    folder = Path(folder)
    return _paths(folder, _read_store_header(folder / STORE_JSON))


def _load_vectors(
    path: Path, meta: dict[str, Any], *, mmap: bool, digest: bool = False
) -> tuple[np.ndarray, str | None]:
    """``(vectors, sha256 of the file or None)``, with shape and dtype checked against the header
    and the file size first (``digest``: hash the whole file too).

    The file is opened once (a concurrent commit may unlink it; the open file stays valid),
    without following a symlink or blocking on a FIFO.
    """
    return _load_matrix(path, _VECTORS, (int(meta["count"]), int(meta["dim"])), meta["dtype"], mmap, digest)


def _load_matrix(
    path: Path, name: str, want_shape: tuple[int, int], want_dtype: str, mmap: bool, digest: bool
) -> tuple[np.ndarray, str | None]:
    """A ``[rows, cols]`` .npy of a generation (``name``), checked against the shape and dtype its
    header must have, and (``digest``) hashed."""
    try:
        f = os.fdopen(open_regular(path, name), "rb")
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise FeatureStoreError(f"{path}: unreadable {name} ({exc.strerror or exc})") from exc
    what = "vectors" if name == _VECTORS else name
    with f:
        try:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, fortran, dt = np.lib.format.read_array_header_1_0(f)
            elif version == (2, 0):
                shape, fortran, dt = np.lib.format.read_array_header_2_0(f)
            else:
                raise ValueError(f"unsupported .npy version {version}")
            offset = f.tell()
            size = os.fstat(f.fileno()).st_size
        except Exception as exc:  # numpy's header parser raises ValueError, SyntaxError, TokenError, ...
            why = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
            raise FeatureStoreError(f"{path}: unreadable {what} ({why})") from None
        allowed = _DTYPES if name == _VECTORS else (want_dtype,)
        if not isinstance(dt, np.dtype) or dt.name not in allowed or dt.byteorder == ">" or fortran:
            kinds = "float32/float16" if name == _VECTORS else want_dtype
            raise FeatureStoreError(f"{path}: {what} must be little-endian {kinds} rows; got {dt}")
        if dt.name != want_dtype:
            raise FeatureStoreError(f"{path}: {what} are {dt.name}, header says {want_dtype}")
        if len(shape) != 2:
            raise FeatureStoreError(f"{path}: {what} must be a [count, dim] matrix; got shape {shape}")
        if tuple(shape) != tuple(want_shape):
            raise FeatureStoreError(
                f"{path}: store is inconsistent: {what} are {shape[0]} x {shape[1]}, "
                f"{STORE_JSON} says count {want_shape[0]}, dim {want_shape[1]}"
            )
        want = offset + shape[0] * shape[1] * dt.itemsize
        if size != want:
            raise FeatureStoreError(f"{path}: {what} file is {size} bytes, its header needs {want}")
        try:
            sha = None
            if digest:
                f.seek(0)
                sha = hashlib.file_digest(f, "sha256").hexdigest()
                f.seek(offset)
            if shape[0] == 0 or shape[1] == 0:
                return np.zeros(shape, dt), sha
            if mmap:
                return np.memmap(f, dtype=dt, mode="r", offset=offset, shape=tuple(shape)), sha
            X = np.fromfile(f, dtype=dt, count=shape[0] * shape[1])
            return X.reshape(shape), sha
        except (OSError, ValueError) as exc:
            raise FeatureStoreError(f"{path}: unreadable {what} ({exc})") from exc


def _side_bytes(rows: int, cols: int, dtype: str) -> int:
    return _vectors_bytes({"count": rows, "dim": cols, "dtype": dtype})


def _load_side(
    paths: _StorePaths, meta: dict[str, Any], files: dict[str, Any] | None, *, mmap: bool
) -> tuple[np.ndarray | None, np.ndarray | None]:
    """The generation's colour rows ``(colour, plain)``, checked against their records (sizes always,
    sha256 always: they are small), or ``(None, None)`` for a store without them."""
    if files is None or COLOUR_NPY not in files or paths.generation is None:
        return None, None
    n, d = int(meta["count"]), int(meta["colour"]["dim"])
    gdir = paths.folder / paths.generation
    out: list[np.ndarray] = []
    for name, cols in ((COLOUR_NPY, d), (PLAIN_NPY, 1)):
        try:
            arr, sha = _load_matrix(gdir / name, name, (n, cols), _SIDE_DTYPES[name], mmap, True)
        except FileNotFoundError as exc:
            if _read_store_header(paths.header).get("generation") != paths.generation:
                raise _Moved from exc
            raise FeatureStoreError(f"{exc.filename}: missing from the feature store") from exc
        _verify_file(gdir / name, files, name, _side_bytes(n, cols, _SIDE_DTYPES[name]), sha)
        out.append(arr)
    colour, plain = out
    if len(plain) and int(np.max(plain)) > 1:
        raise FeatureStoreError(f"{gdir / PLAIN_NPY}: plain-background flags must be 0 or 1")
    return colour, plain


def _check_side(side: dict[str, np.ndarray] | None, n: int) -> dict[str, np.ndarray]:
    """The colour rows handed to :func:`commit`: both files or none, ``n`` rows each, finite."""
    if not side:
        return {}
    if set(side) != set(_SIDE_FILES):
        raise FeatureStoreError(f"colour rows must be given as {_SIDE_FILES}; got {sorted(side)}")
    out = {name: np.ascontiguousarray(side[name], _SIDE_DTYPES[name]) for name in _SIDE_FILES}
    for name, arr in out.items():
        if arr.ndim != 2 or len(arr) != n:
            raise FeatureStoreError(f"{name}: shape {arr.shape} for a store of {n} images")
    if out[PLAIN_NPY].shape[1] != 1 or (n and int(out[PLAIN_NPY].max()) > 1):
        raise FeatureStoreError(f"{PLAIN_NPY}: one 0/1 flag per image")
    if not np.isfinite(out[COLOUR_NPY]).all():
        raise FeatureStoreError(f"{COLOUR_NPY}: NaN or infinite colour values")
    return out


def _check_rows(X: np.ndarray, what: str, chunk: int = 8192) -> None:
    """Every row finite and of unit L2 norm (within :data:`_NORM_TOLERANCE`), in chunks."""
    for s in range(0, len(X), chunk):
        block = np.asarray(X[s : s + chunk], np.float32)
        with np.errstate(over="ignore", invalid="ignore"):
            norms = np.sqrt(np.einsum("ij,ij->i", block, block))
        bad = ~np.isfinite(norms) | (np.abs(norms - 1.0) > _NORM_TOLERANCE)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            finite = bool(np.isfinite(block[i]).all())
            why = f"norm {norms[i]:.4g}, not 1" if finite else "NaN or infinite values"
            raise FeatureStoreError(
                f"{what}: row {s + i} is not a unit vector ({why}; {int(bad.sum())} such rows in this "
                "block): vectors must be finite and L2-normalised"
            )


def _check_ids(ids: list[str], where: str) -> None:
    seen: set[str] = set()
    for n, rel in enumerate(ids):
        _check_id(rel, f"{where}, row {n + 1}")
        if rel in seen:
            raise FeatureStoreError(f"{where}, row {n + 1}: duplicate id {rel!r}")
        seen.add(rel)


def _check_id(rel: str, where: str) -> None:
    if not rel or "\x00" in rel or rel.startswith("/") or ".." in rel.split("/"):
        raise FeatureStoreError(f"{where}: bad id {rel!r} (ids are relative paths inside the image folder)")


def _read_ids_bytes(path: Path, count: int) -> bytes:
    """The raw ids table of a store of ``count`` images (no symlink, no FIFO, bounded size)."""
    try:
        return read_regular(path, _IDS, 4096 + (count + 1) * _ID_ROW_BYTES)
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise FeatureStoreError(f"{path}: unreadable ids table ({exc.strerror or exc})") from None


#: a stamp cell: a plain ASCII decimal integer (int() would also take " 1", "1_0", "+1", "١")
_INT = re.compile(r"-?[0-9]{1,20}")


def _parse_id_table(
    raw: bytes, path: Path
) -> tuple[list[str], tuple[list[int], list[int], list[int], list[int]]]:
    """The ids table in ``raw`` (the bytes of ``path``): every row and cell checked."""
    ids: list[str] = []
    cols: tuple[list[int], list[int], list[int], list[int]] = ([], [], [], [])
    seen: set[str] = set()
    try:
        text = raw.decode(ENCODING, ERRORS)
        rows = csv_rows(io.StringIO(text, newline=""), strict=True)
        header = next(rows, None)
        if not header or header[0] != "id" or tuple(header) != ID_COLUMNS[: len(header)]:
            raise FeatureStoreError(f"{path}: not an ids table (header {header})")
        width = len(header)
        for n, row in enumerate(rows, start=2):
            where = f"{path}, line {n}"
            if len(row) != width:
                raise FeatureStoreError(f"{where}: {len(row)} fields, the header has {width}")
            rel = row[0]
            _check_id(rel, where)
            if rel in seen:
                raise FeatureStoreError(f"{where}: duplicate id {rel!r}")
            seen.add(rel)
            ids.append(rel)
            for k in range(4):
                if k + 1 < width:
                    cell = row[k + 1]
                    if not _INT.fullmatch(cell) or (k in (0, 2) and int(cell) < -1):
                        raise FeatureStoreError(
                            f"{where}: {ID_COLUMNS[k + 1]} must be an integer; got {cell!r}"[:300]
                        )
                    cols[k].append(int(cell))
                else:
                    cols[k].append(-1)
    except (UnicodeError, ValueError, csv.Error) as exc:
        raise FeatureStoreError(f"{path}: unreadable ids table ({exc})") from exc
    return ids, cols


def normalize_rows(X: np.ndarray) -> np.ndarray:
    """L2-normalise rows (float32); zero rows stay zero."""
    X = np.asarray(X, dtype=np.float32)
    norms = np.linalg.norm(X, axis=1, keepdims=True)
    np.maximum(norms, 1e-12, out=norms)
    return (X / norms).astype(np.float32, copy=False)


def load_features(features_folder: str | Path) -> tuple[list[str], np.ndarray, dict[str, Any]]:
    """Return ``(ids, float32 matrix, extractor identity)`` of a feature store folder."""
    store = FeatureStore.open(features_folder)
    return store.ids, np.asarray(store.vectors, dtype=np.float32), store.extractor


# ---------------------------------------------------------------------- the lock
_HELD = threading.local()  # .folders: the stores this thread holds the lock of (re-entrant)


def _held() -> set[str]:
    folders: set[str] | None = getattr(_HELD, "folders", None)
    if folders is None:
        folders = _HELD.folders = set()
    return folders


@contextlib.contextmanager
def store_lock(folder: str | os.PathLike[str]) -> Iterator[None]:
    """Hold the store's writer lock (``.lock``, fcntl ``flock``); a second writer gets a clear error.

    Re-entrant within one thread (``update_catalogue`` holds it across its extraction, model and
    CSV).  ``.lock`` is opened without following a symlink and must be a regular file.
    """
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise os_error(exc, f"cannot lock the feature store {str(folder)!r}") from exc
    key = str(folder.resolve())
    if key in _held():  # this thread holds it already
        yield
        return
    flags = os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(folder / _LOCK, flags, 0o644)
    except OSError as exc:
        if exc.errno == errno.ELOOP or os.path.islink(folder / _LOCK):
            raise FeatureStoreError(
                f"cannot lock the feature store {str(folder)!r}: {folder / _LOCK} is a symbolic link "
                "(varsitysrch never writes through one); remove it and retry"
            ) from None
        raise os_error(exc, f"cannot lock the feature store {str(folder)!r}") from exc
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise FeatureStoreError(
                f"cannot lock the feature store {str(folder)!r}: {folder / _LOCK} is a {file_kind(mode)}, "
                "not the regular file varsitysrch writes; remove it and retry"
            )
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = ""
            for _ in range(50):  # the holder writes its pid just after taking the lock: wait for it
                holder = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip()
                if holder:
                    break
                time.sleep(0.01)
            holder = holder or "unknown process"
            raise FeatureStoreError(
                f"the feature store {str(folder)!r} is being written by another process ({holder}); "
                "wait for it to finish or stop it, then retry"
            ) from None
        info = (
            f"pid {os.getpid()} on {socket.gethostname()}, "
            f"since {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}"
        )
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
            os.pwrite(fd, info.encode(), 0)
        _held().add(key)
        try:
            yield
        finally:
            _held().discard(key)
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
    finally:
        os.close(fd)  # releases the flock


def os_error(exc: OSError, what: str) -> FeatureStoreError:
    """A one-line FeatureStoreError for an OSError (disk full said plainly)."""
    if isinstance(exc, VarsitysrchError):
        return exc  # type: ignore[return-value]
    if disk_full(exc):
        why = exc.strerror or f"short write: {exc}"
        return FeatureStoreError(
            f"{what}: disk full ({why}); nothing was changed -- the previous store is intact; "
            "free some space and rerun"
        )
    name = f" {exc.filename}" if exc.filename else ""
    return FeatureStoreError(f"{what}:{name} {exc.strerror or exc}")


def log_skip(rel: str, reason: str) -> None:
    """The one place a file left out of a catalogue is reported (logger ``varsitysrch.skipped``,
    WARNING): a front end may silence that logger and print the count instead (each run's
    result and ``skipped.csv`` keep every file and reason)."""
    _SKIP_LOG.warning("skipped %s: %s", rel, reason)


#: the logger of per-file skip warnings (:func:`log_skip`)
_SKIP_LOG = logging.getLogger("varsitysrch.skipped")


# ---------------------------------------------------------------------- commit and recovery
def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def new_token() -> str:
    return f"{time.time_ns():016x}-{secrets.token_hex(4)}"


def _check_entries(folder: Path) -> None:
    """Refuse a store folder whose own names exist as something else than what we write there:
    a symlink, FIFO, device or socket in place of ``store.json``, ``parts/``, ``colour/``, ...
    (a writer must never follow one or replace it)."""
    for name, kind in _ENTRIES.items():
        try:
            mode = os.lstat(folder / name).st_mode
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise os_error(exc, f"cannot check the feature store {str(folder)!r}") from exc
        if not (stat.S_ISREG(mode) if kind == "file" else stat.S_ISDIR(mode)):
            want = "regular file" if kind == "file" else "folder"
            raise FeatureStoreError(
                f"{folder / name} is a {file_kind(mode)}, not the {want} varsitysrch writes there: "
                "the feature store folder holds only its own files (remove or rename it, then retry)"
            )


def recover(folder: Path) -> None:
    """Under the lock: drop generations store.json does not name and temp files of killed writers.

    Only names of our exact patterns are removed, and a generation folder only when it carries
    our marker (or is empty) and holds nothing but our files: whatever else is in the folder
    stays.  A store whose own names are not what we write there is refused (:func:`_check_entries`).
    """
    if not folder.is_dir():
        return
    _check_entries(folder)
    live: str | None = None
    if os.path.lexists(folder / STORE_JSON):
        try:
            meta = _read_store_header(folder / STORE_JSON)
            live = meta.get("generation") if meta["version"] >= 2 else None
        except FeatureStoreError:
            return  # a damaged store: touch nothing
    for entry in os.scandir(folder):
        name = entry.name
        if _GENERATION.fullmatch(name) and name != live:
            remove_generation(folder / name, require_marker=True)
        elif _TMP.fullmatch(name) and entry.is_file(follow_symlinks=False):
            with contextlib.suppress(OSError):
                os.unlink(entry.path)
    if live:
        _link_compat(folder, folder / live)


def remove_generation(gdir: Path, *, require_marker: bool) -> bool:
    """Remove a generation folder we wrote; anything that is not one is left (returns False).

    Ours: a real folder (not a symlink) holding only ``vectors.npy``, ``ids.csv``, the colour rows
    (``colour.npy``, ``plain.npy``), our marker and
    temp files of our writes -- with the marker when ``require_marker`` (a generation that
    ``store.json`` named is known to be ours without it: stores written before the marker).
    """
    try:
        if not stat.S_ISDIR(os.lstat(gdir).st_mode):
            return False
        names = os.listdir(gdir)
    except OSError:
        return False
    if require_marker and names and _MARKER not in names:
        log.info("leaving %s: not a generation folder varsitysrch wrote (no %s)", gdir, _MARKER)
        return False
    strangers = [
        n for n in names if n not in (_VECTORS, _IDS, _MARKER, *_SIDE_FILES) and not _GEN_TMP.fullmatch(n)
    ]
    if strangers:
        log.warning("leaving %s: it holds files varsitysrch did not write (%s)", gdir, strangers[0])
        return False
    log.info("removing unfinished or superseded generation %s", gdir)
    try:
        for n in names:
            os.unlink(gdir / n)  # a symlink is removed, never followed
        os.rmdir(gdir)
    except OSError as exc:
        log.warning("could not remove %s (%s)", gdir, exc)
        return False
    return True


def _link_compat(folder: Path, gdir: Path) -> None:
    """Top-level ``vectors.npy``/``ids.csv`` as hard links to the live generation (best effort)."""
    for name in (_VECTORS, _IDS):
        src, dst = gdir / name, folder / name
        try:
            if dst.exists() and os.path.samefile(src, dst):
                continue
            tmp = folder / f".{name}.{secrets.token_hex(4)}.tmp"
            os.link(src, tmp)
            os.replace(tmp, dst)
        except OSError as exc:
            log.debug("no compatibility link %s (%s)", dst, exc)
            with contextlib.suppress(OSError, UnboundLocalError):
                tmp.unlink()


def _write_vectors_file(
    path: Path, n: int, dim: int, dtype: str, chunks: Iterable[np.ndarray]
) -> tuple[int, str]:
    """A ``.npy`` of ``n`` rows from ``chunks``: space reserved first, plain writes (no mmap), fsync.

    Returns ``(bytes written, sha256 of the file)``.  ``path`` must not exist (``O_EXCL``)."""
    dt = np.dtype(dtype)
    header = {"descr": np.lib.format.dtype_to_descr(dt), "fortran_order": False, "shape": (n, dim)}
    h = hashlib.sha256()
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | getattr(os, "O_NOFOLLOW", 0)
    with open(path, "wb", opener=lambda p, _f: os.open(p, flags, 0o666)) as f:
        head = io.BytesIO()
        np.lib.format.write_array_header_1_0(head, header)
        f.write(head.getvalue())
        h.update(head.getvalue())
        f.flush()
        total = f.tell() + n * dim * dt.itemsize
        try:
            os.posix_fallocate(f.fileno(), 0, total)
        except OSError as exc:
            if disk_full(exc):
                raise
            # the filesystem cannot preallocate: plain writes still fail with ENOSPC, never SIGBUS
        rows = 0
        for block in chunks:
            block = np.ascontiguousarray(block, dtype=dt)
            if block.ndim != 2 or block.shape[1] != dim:
                raise FeatureStoreError(f"vectors of shape {block.shape} in a store of dim {dim}")
            data = block.tobytes()
            f.write(data)
            h.update(data)
            rows += len(block)
        if rows != n:
            raise FeatureStoreError(f"{rows} vectors written, {n} expected")
        f.flush()
        os.fsync(f.fileno())
        return f.tell(), h.hexdigest()


def _file_record(path: Path) -> dict[str, Any]:
    """``{"bytes", "sha256"}`` of a regular file (read without following a symlink)."""
    with os.fdopen(open_regular(path, path.name), "rb") as f:
        return {"bytes": os.fstat(f.fileno()).st_size, "sha256": hashlib.file_digest(f, "sha256").hexdigest()}


def write_header(
    folder: Path, header: dict[str, Any], generation: str, files: dict[str, Any] | None = None
) -> None:
    """Commit ``store.json`` naming ``generation``, with its files' records and its own digest.

    ``files``: the generation's records (computed from its files when None or malformed)."""
    if files is None or not _good_files(files):
        gdir = folder / generation
        files = {_VECTORS: _file_record(gdir / _VECTORS), _IDS: _file_record(gdir / _IDS)}
        if all((gdir / name).exists() for name in _SIDE_FILES):
            files.update({name: _file_record(gdir / name) for name in _SIDE_FILES})
    meta = {**header, "generation": generation, _FILES: files}
    meta.pop(_HEADER_SUM, None)
    meta[_HEADER_SUM] = _header_digest(meta)
    write_json(folder / STORE_JSON, meta)


#: test hook: called with a step name before each step of a commit ("vectors", "ids", "header", "cleanup")
_commit_hook: Callable[[str], None] | None = None


def _step(name: str) -> None:
    if _commit_hook is not None:
        _commit_hook(name)


def commit(
    folder: Path,
    ids: list[str],
    stamps: Sequence[Sequence[int]],
    chunks: Iterable[np.ndarray],
    header: dict[str, Any],
    side: dict[str, np.ndarray] | None = None,
) -> str:
    """Write a new generation and make it the store (the caller holds :func:`store_lock`).

    ``side``: the colour rows of the generation (``{COLOUR_NPY: float16 [n, d], PLAIN_NPY: uint8
    [n, 1]}``, both or neither; ``header["colour"]`` says how they were made), written and
    fsynced with the vectors before the header commits them.

    Returns the generation name.  On any failure the generation is removed and the
    previous store is untouched; an OSError becomes a one-line FeatureStoreError.
    """
    _check_entries(folder)
    previous: str | None = None
    with contextlib.suppress(FeatureStoreError):
        if os.path.lexists(folder / STORE_JSON):
            previous = _read_store_header(folder / STORE_JSON).get("generation")
    gen = f"g-{new_token()}"
    gdir = folder / gen
    n, dim, dtype = int(header["count"]), int(header["dim"]), str(header["dtype"])
    try:
        folder.mkdir(parents=True, exist_ok=True)
        gdir.mkdir()
        fd = os.open(gdir / _MARKER, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        try:
            os.write(fd, _MARKER_TEXT)
        finally:
            os.close(fd)
        _step("vectors")
        vbytes, vsha = _write_vectors_file(gdir / _VECTORS, n, dim, dtype, chunks)
        _step("ids")
        write_csv(gdir / _IDS, list(ID_COLUMNS), ((rel, *st) for rel, st in zip(ids, stamps, strict=True)))
        files = {_VECTORS: {"bytes": vbytes, "sha256": vsha}, _IDS: _file_record(gdir / _IDS)}
        for name, arr in _check_side(side, n).items():
            _step(name)
            sbytes, ssha = _write_vectors_file(gdir / name, n, arr.shape[1], _SIDE_DTYPES[name], [arr])
            files[name] = {"bytes": sbytes, "sha256": ssha}
        _fsync_dir(gdir)
        _step("header")
        write_header(folder, header, gen, files)  # the commit
        _fsync_dir(folder)
    except BaseException as exc:
        remove_generation(gdir, require_marker=False)
        if isinstance(exc, OSError) and not isinstance(exc, VarsitysrchError):
            raise os_error(exc, f"cannot write the feature store {str(folder)!r}") from exc
        raise
    try:
        _step("cleanup")
        if previous and previous != gen and _GENERATION.fullmatch(previous):
            remove_generation(folder / previous, require_marker=False)  # store.json named it: ours
        recover(folder)
    except Exception as exc:  # the commit stands; leftovers go at the next write
        log.warning("feature store %s committed; cleanup failed (%s)", folder, exc)
    return gen
