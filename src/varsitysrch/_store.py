"""The feature store: one float matrix, an ids table and a JSON header, in one folder.

Layout of ``save_to``::

    store.json     format, version, extractor identity, dim, count, dtype, library version
    vectors.npy    float32 (or float16) [count, dim], L2-normalised rows, memory-mappable
    ids.csv        id,size,mtime_ns  -- id = POSIX path relative to the image folder
    skipped.csv    path,reason       -- images that could not be read on the last run
    parts/         checkpoints of an interrupted run (merged and removed on success)

Every file is written atomically (temporary file + rename), so an interrupted run
never leaves a half-written store; ``parts/`` lets a rerun resume where it stopped.

A *legacy* folder -- one ``<name>.npy`` per image, as the original scripts wrote -- is
read too (:func:`load_features`); its vectors are flattened and L2-normalised.
"""

from __future__ import annotations

import csv
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ._errors import FeatureStoreError
from ._io import write_csv, write_json, write_npy
from ._version import __version__

log = logging.getLogger(__name__)

STORE_FORMAT = "varsitysrch-features"
STORE_VERSION = 1
STORE_JSON = "store.json"
VECTORS = "vectors.npy"
IDS = "ids.csv"
SKIPPED = "skipped.csv"


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

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    def __len__(self) -> int:
        return len(self.ids)

    # ------------------------------------------------------------------ reading
    @classmethod
    def open(cls, folder: str | os.PathLike[str], *, mmap: bool = True) -> FeatureStore:
        """Open a store written by :func:`extract_features` (or a legacy .npy folder)."""
        folder = Path(folder)
        if not folder.is_dir():
            raise FeatureStoreError(f"features_folder {str(folder)!r} does not exist or is not a folder")
        header = folder / STORE_JSON
        if not header.exists():
            return cls._open_legacy(folder)
        try:
            meta = json.loads(header.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise FeatureStoreError(f"{header}: unreadable store header ({exc})") from exc
        if meta.get("format") != STORE_FORMAT:
            raise FeatureStoreError(f"{header}: not a varsitysrch feature store")
        if int(meta.get("version", 0)) > STORE_VERSION:
            raise FeatureStoreError(
                f"{header}: store format version {meta.get('version')} is newer than this library "
                f"understands ({STORE_VERSION}); upgrade varsitysrch"
            )
        try:
            vectors = np.load(folder / VECTORS, mmap_mode="r" if mmap else None, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise FeatureStoreError(f"{folder / VECTORS}: unreadable vectors ({exc})") from exc
        ids, sizes, mtimes = read_ids(folder / IDS)
        if (
            vectors.ndim != 2
            or vectors.shape[0] != len(ids)
            or vectors.shape[0] != int(meta.get("count", -1))
        ):
            raise FeatureStoreError(
                f"{folder}: store is inconsistent: {vectors.shape[0]} vectors, {len(ids)} ids, "
                f"count {meta.get('count')} in {STORE_JSON}"
            )
        if vectors.shape[1] != int(meta.get("dim", -1)):
            raise FeatureStoreError(
                f"{folder}: vectors have dim {vectors.shape[1]}, header says {meta.get('dim')}"
            )
        return cls(folder, ids, vectors, dict(meta.get("extractor", {})), sizes, mtimes, meta)

    @classmethod
    def _open_legacy(cls, folder: Path) -> FeatureStore:
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
            rows.append(np.asarray(a, dtype=np.float32).reshape(-1))
        dims = {r.size for r in rows}
        if len(dims) != 1:
            raise FeatureStoreError(f"{folder}: legacy .npy files have different sizes {sorted(dims)}")
        X = normalize_rows(np.stack(rows))
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
    ) -> Path:
        """Write a complete store atomically (vectors and ids first, header last)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        if vectors.ndim != 2 or vectors.shape[0] != len(ids):
            raise FeatureStoreError(f"vectors shape {vectors.shape} does not match {len(ids)} ids")
        if len(set(ids)) != len(ids):
            raise FeatureStoreError("ids must be unique")
        n = len(ids)
        sizes = list(sizes) if sizes is not None else [-1] * n
        mtimes = list(mtimes) if mtimes is not None else [-1] * n
        write_npy(folder / VECTORS, np.ascontiguousarray(vectors))
        write_csv(folder / IDS, ["id", "size", "mtime_ns"], zip(ids, sizes, mtimes, strict=True))
        write_json(
            folder / STORE_JSON, store_header(extractor, int(vectors.shape[1]), n, str(vectors.dtype), extra)
        )
        return folder


def store_header(
    extractor: dict[str, Any], dim: int, count: int, dtype: str, extra: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The ``store.json`` of a store (written last, after vectors and ids)."""
    meta: dict[str, Any] = {
        "format": STORE_FORMAT,
        "version": STORE_VERSION,
        "library_version": __version__,
        "extractor": extractor,
        "dim": int(dim),
        "count": int(count),
        "dtype": dtype,
        "vectors": VECTORS,
        "ids": IDS,
    }
    meta.update(extra or {})
    return meta


def read_ids(path: Path) -> tuple[list[str], list[int], list[int]]:
    ids: list[str] = []
    sizes: list[int] = []
    mtimes: list[int] = []
    try:
        with open(path, encoding="utf-8", newline="") as f:
            r = csv.reader(f)
            header = next(r, None)
            if header is None or header[0] != "id":
                raise FeatureStoreError(f"{path}: not an ids table (header {header})")
            for row in r:
                ids.append(row[0])
                sizes.append(int(row[1]) if len(row) > 1 else -1)
                mtimes.append(int(row[2]) if len(row) > 2 else -1)
    except OSError as exc:
        raise FeatureStoreError(f"{path}: unreadable ids table ({exc})") from exc
    return ids, sizes, mtimes


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
