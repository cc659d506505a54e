"""The model file and the assignments CSV: the only place that knows their layout.

A model file is a zip archive (members stored, not compressed) of

* ``model.json`` -- format name, format version, k, dim, n_images, extractor identity,
  training statistics, the search configuration (``nprobe``, ``recall_curve``,
  ``search_pca``, ``ivf``, ``query_expansion``) and the update history;
* ``ids.json`` -- the catalogue ids in store order, a JSON list (any character, a newline
  or an undecodable file-name byte kept as a lone surrogate, round-trips; version 1 files
  joined ids with newlines in ``ids.txt`` and still load);
* ``.npy`` arrays read with ``allow_pickle=False``: ``centroids``, ``labels``,
  ``distances``, optional ``pca_mean``/``pca_components`` (the clustering space) and
  ``vectors`` (the embedded catalogue), and ``extra/<name>.npy`` (see :class:`ModelFile`),
  among them the catalogue's neighbour graph for k-reciprocal re-ranking (``rerank_nn``,
  ``rerank_sims``; recorded with its store generation in ``model.json`` ``rerank``, see
  :mod:`varsitysrch._rerank`).

Nothing in it can execute code, and :func:`load_model` trusts nothing: the JSON types, the
``.npy`` headers (shape and dtype checked against ``model.json`` before any data is read),
every member's size (bounded by the archive's own size before it is decompressed: no zip
bomb), label ranges, finiteness and unit norm of vectors, unique ids and the extractor's
dim are all checked, and every failure is a one-line :class:`ModelFileError`.  No path
recorded in the model is ever used to serve files: ``image_root`` (where the images were at
extraction) is a record only, and :class:`~varsitysrch.Searcher` resolves ids under the folder
its caller names (see :mod:`varsitysrch._paths`).
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import math
import os
import struct
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, TypeGuard

import numpy as np

from ._errors import IncompatibleModelError, ModelFileError
from ._io import atomic_path, read_csv, write_csv
from ._kmeans import KMeansModel
from ._version import __version__

log = logging.getLogger(__name__)

MODEL_FORMAT = "varsitysrch-model"
MODEL_VERSION = 2
#: model.json larger than this is refused before it is read
_MAX_JSON_BYTES = 64 * 2**20
#: bytes decompressed for the whole file at most: this many times the archive's size, plus slack
_MAX_EXPANSION = 16
_MAX_DIM = 1 << 16
_UNIT_TOLERANCE = 0.02  # |norm - 1| of stored catalogue vectors (float16 rounding is ~1e-3)

#: extra arrays and the shape each must have (n: images, dim, nlist, s: search dims)
_EXTRAS = {
    "store_sizes": "n",
    "store_mtimes": "n",
    "store_inodes": "n",
    "store_ctimes": "n",
    "ivf_centroids": "nlist,dim",
    "ivf_lists": "n",
    "search_mean": "dim",
    "search_components": "s,dim",
    "search_vectors": "n,s",
}


@dataclass
class ModelFile:
    """Everything a search needs, as stored in the model file."""

    config: dict[str, Any]
    centroids: np.ndarray
    pca_mean: np.ndarray | None
    pca_components: np.ndarray | None
    ids: list[str]  # catalogue ids in store order
    labels: np.ndarray  # cluster of each id
    distances: np.ndarray
    vectors: np.ndarray | None  # embedded catalogue (float16/32), store order; None = read the store
    #: further arrays, stored as ``extra/<name>.npy``: ``search_mean``/``search_components`` (the
    #: ranking-space PCA) and ``search_vectors`` (the catalogue already in that space),
    #: ``ivf_centroids``/``ivf_lists`` (the IVF of large catalogues), ``store_sizes``/
    #: ``store_mtimes`` (file stats of each id, used by update_catalogue to find changed images),
    #: ``rerank_nn``/``rerank_sims`` (the neighbour graph of k-reciprocal re-ranking)
    arrays: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def k(self) -> int:
        return int(self.centroids.shape[0])

    def to_model(self) -> KMeansModel:
        """The fitted :class:`KMeansModel` stored in the file (nothing is retrained)."""
        return KMeansModel.restore(
            self.centroids,
            int(self.config["dim"]),
            pca_mean=self.pca_mean,
            pca_components=self.pca_components,
            labels=self.labels,
            distances=self.distances,
            inertia=float(self.config.get("training", {}).get("inertia", 0.0)),
        )


#: the file stamp of each image at training or the last update: ``extra/store_<column>.npy``
_STAMP_COLUMNS = ("sizes", "mtimes", "inodes", "ctimes")


def stamp_arrays(ids: list[str], stamps: dict[str, tuple[int, int, int, int]]) -> dict[str, np.ndarray]:
    """The stamp arrays of a catalogue (``{}`` when the store has no stamps)."""
    if len(stamps) != len(ids) or not ids:
        return {}
    cols = np.asarray([stamps[rel] for rel in ids], np.int64).reshape(len(ids), 4)
    return {f"store_{c}": cols[:, j].copy() for j, c in enumerate(_STAMP_COLUMNS)}


def model_stamps(mf: ModelFile) -> dict[str, tuple[int, int, int, int]]:
    """``id -> (size, mtime_ns, inode, ctime_ns)`` recorded in the model (-1 where not recorded)."""
    a, n = mf.arrays, len(mf.ids)
    if "store_sizes" not in a or "store_mtimes" not in a:
        return {}
    cols = [a.get(f"store_{c}", np.full(n, -1, np.int64)).tolist() for c in _STAMP_COLUMNS]
    return {rel: (s, m, i, c) for rel, s, m, i, c in zip(mf.ids, *cols, strict=True)}


# ==================================================================== the store and the CSV it goes with
def record_store(config: dict[str, Any], store: Any) -> None:
    """Record in ``config["features"]`` the store generation and checksum the model is made from
    (a :class:`~varsitysrch._store.FeatureStore`; a store written before checksums records none),
    and in ``config["colour"]`` its colour rows: their checksum and the catalogue's studio share
    (:meth:`~varsitysrch._store.FeatureStore.colour_record`), or ``None`` for a store without
    colour rows -- search then has no studio share (``views="auto"`` searches the whole photo)
    and no colour signatures (colour ranking is refused with advice to re-extract)."""
    feats = config.setdefault("features", {})
    for key, value in (("generation", store.generation), ("checksum", store.checksum)):
        if value is None:
            feats.pop(key, None)
        else:
            feats[key] = value
    colour = store.colour_record() if hasattr(store, "colour_record") else None
    config["colour"] = colour
    if colour is None:
        (log.warning if store.meta.get("image_root") else log.info)(
            "the feature store %s has no colour rows (written from bare vectors or by an earlier "
            "version): the model records no studio share and no colour; run extract_features on the "
            "images again to add them",
            store.folder,
        )


def check_store_for_model(mf: ModelFile, store: Any, model_path: str | os.PathLike[str]) -> None:
    """Refuse (one line, :class:`IncompatibleModelError`) a feature store that is not the one the
    model was made from: another catalogue with the same ids, a changed or tampered store.

    The model's recorded store checksum must match the store's when both are known; otherwise
    the ids and every image's file stamp (size, mtime, inode, ctime) recorded in the model must
    match the store's."""
    where = f"feature store {str(store.folder)!r}"
    hint = "it is not the store this model was made from; retrain, run update, or pass the right store"
    feats = mf.config.get("features", {})
    want = feats.get("checksum") if isinstance(feats, dict) else None
    if want is not None and store.checksum is not None:
        if want != store.checksum:
            raise IncompatibleModelError(
                f"{where} (generation {store.generation}) does not match model {str(model_path)!r} "
                f"(made from generation {feats.get('generation')}, a store of other content): {hint}"
            )
        return
    if want is not None:
        raise IncompatibleModelError(
            f"{where} has no checksums, model {str(model_path)!r} was made from a store that had: {hint}"
        )
    if store.ids != mf.ids:
        raise IncompatibleModelError(f"{where} changed since the model was trained; retrain or update")
    ref, now = model_stamps(mf), store.stamps()
    if ref and now:
        differ = sum(1 for rel in mf.ids if rel in now and rel in ref and tuple(ref[rel]) != tuple(now[rel]))
        if differ:
            raise IncompatibleModelError(
                f"{where}: {differ} of {len(mf.ids)} images have other file stamps than model "
                f"{str(model_path)!r} records: {hint}"
            )


def _file_sha256(path: str | os.PathLike[str]) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def save_model_and_csv(
    model_path: str | os.PathLike[str], csv_path: str | os.PathLike[str], mf: ModelFile
) -> None:
    """Write the model and its assignments CSV as one unit: the model records the CSV's SHA-256
    (``config["assignments"]``), so a CSV from another run -- or the old CSV left by a kill between
    the two renames (the model is renamed first) -- is recognised (:func:`csv_matches_model`)."""
    with atomic_path(csv_path) as tmp_csv:
        _write_assignments(tmp_csv, mf.ids, mf.labels, mf.distances)
        mf.config["assignments"] = {"sha256": _file_sha256(tmp_csv), "rows": len(mf.ids)}
        _save_model(model_path, mf)


def csv_matches_model(mf: ModelFile, csv_path: str | os.PathLike[str]) -> bool | None:
    """Whether ``csv_path`` is the CSV written with the model (None: the model records no hash)."""
    rec = mf.config.get("assignments")
    if not isinstance(rec, dict) or not isinstance(rec.get("sha256"), str):
        return None
    try:
        return _file_sha256(csv_path) == rec["sha256"]
    except OSError:
        return False


def csv_mismatch_message(model_path: str | os.PathLike[str], csv_path: str | os.PathLike[str]) -> str:
    """The one line for a CSV that :func:`csv_matches_model` says is not the model's."""
    return (
        f"csv_file {str(csv_path)!r} was not written with model {str(model_path)!r} (its SHA-256 is not "
        "the one the model records): it comes from another run, or the last train/update was "
        "interrupted between writing the model and the CSV; run it again, or search without csv_file"
    )


# ==================================================================== writing
def _save_model(path: str | os.PathLike[str], mf: ModelFile) -> None:
    """Write ``mf`` atomically in the current format version."""
    config = {**mf.config, "format": MODEL_FORMAT, "version": MODEL_VERSION, "library_version": __version__}
    arrays: dict[str, np.ndarray] = {
        "centroids": np.asarray(mf.centroids, np.float32),
        "labels": np.asarray(mf.labels, np.int32),
        "distances": np.asarray(mf.distances, np.float32),
    }
    if mf.pca_components is not None and mf.pca_mean is not None:
        arrays["pca_mean"], arrays["pca_components"] = mf.pca_mean, mf.pca_components
    if mf.vectors is not None:
        arrays["vectors"] = mf.vectors
    for name, extra in mf.arrays.items():
        arrays[f"extra/{name}"] = extra
    # the members, so that a damaged directory entry (an optional member renamed) is noticed
    config["members"] = sorted(["ids.json", *(f"{name}.npy" for name in arrays)])
    with atomic_path(path) as tmp, zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as zf:
        zf.writestr("model.json", json.dumps(config, indent=2, sort_keys=True))
        zf.writestr("ids.json", json.dumps(list(mf.ids), ensure_ascii=True))
        for name, arr in arrays.items():
            with zf.open(f"{name}.npy", "w", force_zip64=True) as f:
                np.save(f, np.ascontiguousarray(arr), allow_pickle=False)


#: the assignments CSV's columns: the original vasrch package's ``Image_File`` and ``Cluster``
#: (its pandas code and tests read them), then each image's ``distance`` to its centroid
_CSV_COLUMNS = ("Image_File", "Cluster", "distance")
#: the columns varsitysrch wrote before it took the original's names (still read)
_OLD_COLUMNS = ("image", "cluster")


def _write_assignments(
    path: str | os.PathLike[str], ids: list[str], labels: np.ndarray, dists: np.ndarray
) -> None:
    """The assignments CSV: ``Image_File, Cluster, distance`` (spreadsheet-safe cells, see ``_io``).

    ``Image_File`` is the catalogue id (relative path, extension kept), ``Cluster`` an integer.
    """
    write_csv(
        path,
        list(_CSV_COLUMNS),
        ((i, int(c), f"{float(d):.6f}") for i, c, d in zip(ids, labels, dists, strict=True)),
    )


def _assignments_kind(header: list[str]) -> str | None:
    """Who wrote a CSV with this header: ``"varsitysrch"`` (``Image_File,Cluster,distance``, or
    ``image,cluster,...`` of earlier versions), ``"vasrch"`` (the original package's
    ``Image_File,Cluster`` without distances, ids without extension), or ``None`` (not one)."""
    if "image" in header and "cluster" in header:
        return "varsitysrch"
    if "Image_File" in header and "Cluster" in header:
        return "varsitysrch" if "distance" in header else "vasrch"
    return None


def read_assignments_kind(path: str | os.PathLike[str]) -> tuple[list[str], np.ndarray, str]:
    """``(ids, labels, kind)`` of an assignments CSV (``kind``: see :func:`_assignments_kind`).

    Reads what :func:`_write_assignments` writes, the ``image,cluster,distance`` CSVs of earlier
    varsitysrch versions and the original package's ``Image_File,Cluster`` CSVs.  Anything else
    is one :class:`ModelFileError`.
    """
    p = Path(path)
    if not p.is_file():
        raise ModelFileError(f"csv_file {str(p)!r} does not exist")
    try:
        header, rows = read_csv(p)
    except (OSError, ValueError, csv.Error) as exc:  # NUL bytes, a field over the csv limit, ...
        raise ModelFileError(f"{p}: unreadable cluster CSV ({exc})") from exc
    if header:
        header[0] = header[0].removeprefix("\ufeff")  # saved by a spreadsheet as "UTF-8 with BOM"
    kind = _assignments_kind(header)
    if kind is None:
        raise ModelFileError(
            f"{p}: not a cluster CSV (need columns {','.join(_CSV_COLUMNS[:2])} as train_clusters "
            f"writes them, or {','.join(_OLD_COLUMNS)}; got {','.join(header) or 'no header'})"
        )
    names = _OLD_COLUMNS if "image" in header and "cluster" in header else _CSV_COLUMNS[:2]
    ci, li = header.index(names[0]), header.index(names[1])
    ids: list[str] = []
    labels: list[int] = []
    for n, r in enumerate(rows, 2):
        try:
            ids.append(r[ci])
            labels.append(int(r[li]))
        except (IndexError, ValueError):
            raise ModelFileError(
                f"{p}: line {n} of the cluster CSV needs an image id and an integer {names[1]}; got {r!r}"
            ) from None
    if labels and not 0 <= min(labels) <= max(labels) < 2**31:
        raise ModelFileError(f"{p}: {names[1]} must be integers >= 0; got {min(labels)}..{max(labels)}")
    return ids, np.asarray(labels, np.int32), kind


def read_assignments(path: str | os.PathLike[str]) -> tuple[list[str], np.ndarray]:
    """``(ids, labels)`` of an assignments CSV (see :func:`read_assignments_kind`)."""
    ids, labels, _kind = read_assignments_kind(path)
    return ids, labels


# ==================================================================== reading
def _check_colour(p: Path, rec: Any) -> None:
    """``model.json`` ``colour``: absent, null, or the record of the store's colour rows."""
    if rec is None:
        return
    if not isinstance(rec, dict):
        raise _bad(p, f"model.json 'colour' must be an object or null; got {type(rec).__name__}")
    if not isinstance(rec.get("checksum"), str):
        raise _bad(p, f"model.json colour 'checksum' must be a string; got {rec.get('checksum')!r}")
    share: Any = rec.get("studio_share")
    if not _is_num(share) or not 0.0 <= float(share) <= 1.0:
        raise _bad(p, f"model.json colour 'studio_share' must be a number in [0, 1]; got {share!r}")
    for key in ("count", "plain_images"):
        if not _is_int(rec.get(key)) or rec[key] < 0:
            raise _bad(p, f"model.json colour {key!r} must be an integer >= 0; got {rec.get(key)!r}")


def _bad(p: Path, what: str) -> ModelFileError:
    return ModelFileError(f"{p}: corrupt model file ({what})")


def _is_int(v: Any) -> TypeGuard[int]:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return (isinstance(v, int | float) and not isinstance(v, bool)) and math.isfinite(v)


def _need_int(p: Path, cfg: dict[str, Any], key: str, lo: int, hi: int, *, required: bool = True) -> None:
    v = cfg.get(key)
    if v is None and not required:
        return
    if not _is_int(v) or not lo <= int(v) <= hi:
        raise _bad(p, f"model.json {key!r} must be an integer in [{lo}, {hi}]; got {v!r}")


def _check_config(p: Path, cfg: Any) -> dict[str, Any]:
    if not isinstance(cfg, dict):
        raise _bad(p, f"model.json must be an object; got {type(cfg).__name__}")
    if cfg.get("format") != MODEL_FORMAT:
        raise ModelFileError(f"{p} is not a varsitysrch model file (format {cfg.get('format')!r})")
    version = cfg.get("version")
    if not _is_int(version) or version < 1:
        raise _bad(p, f"model.json 'version' must be a positive integer; got {version!r}")
    if version > MODEL_VERSION:
        raise ModelFileError(
            f"{p} has model format version {version}, newer than this library ({__version__}) "
            f"understands ({MODEL_VERSION}); upgrade varsitysrch"
        )
    _need_int(p, cfg, "dim", 1, _MAX_DIM)
    _need_int(p, cfg, "n_images", 1, 2**40)
    _need_int(p, cfg, "k", 1, cfg["n_images"])
    _need_int(p, cfg, "nprobe", 1, cfg["k"], required=False)
    _need_int(p, cfg, "query_expansion", 0, 1000, required=False)
    _need_int(p, cfg, "search_pca", 1, cfg["dim"], required=False)
    _need_int(p, cfg, "churn_since_training", 0, 2**62, required=False)
    if cfg.get("n_components") is not None:
        _need_int(p, cfg, "n_components", 1, cfg["dim"])
    for key in ("training", "extractor", "features", "ivf"):
        if key in cfg and not isinstance(cfg[key], dict):
            raise _bad(p, f"model.json {key!r} must be an object; got {cfg[key]!r}")
    for key in ("recall_curve", "updates"):
        if key in cfg and not isinstance(cfg[key], list):
            raise _bad(p, f"model.json {key!r} must be a list; got {type(cfg[key]).__name__}")
    tr = cfg.get("target_recall", 0.95)
    if not _is_num(tr) or not 0 < tr <= 1:
        raise _bad(p, f"model.json 'target_recall' must be a number in (0, 1]; got {tr!r}")
    training = cfg.get("training", {})
    for key in ("inertia", "mean_distance"):
        if key in training and (not _is_num(training[key]) or training[key] < 0):
            raise _bad(p, f"training {key!r} must be a number >= 0; got {training[key]!r}")
    q = training.get("distance_quantiles", {})
    if not isinstance(q, dict) or not all(_is_num(v) for v in q.values()):
        raise _bad(p, "training 'distance_quantiles' must map quantiles to numbers")
    sizes = training.get("cluster_sizes")
    if sizes is not None and (
        not isinstance(sizes, list) or len(sizes) != cfg["k"] or not all(_is_int(s) and s >= 0 for s in sizes)
    ):
        raise _bad(p, "training 'cluster_sizes' must be k integers >= 0")
    ex = cfg.get("extractor", {})
    if "input_size" in ex:
        _need_int(p, ex, "input_size", 16, 4096)
    if "dim" in ex and ex["dim"] != cfg["dim"]:
        raise _bad(p, f"the extractor makes dim {ex['dim']!r} vectors but the model has dim {cfg['dim']}")
    if "name" in ex and not isinstance(ex["name"], str):
        raise _bad(p, f"extractor 'name' must be a string; got {ex['name']!r}")
    if "ivf" in cfg:
        _need_int(p, cfg["ivf"], "nprobe", 1, cfg["n_images"])
    if "confidence" in cfg:
        from ._confidence import ScoreCalibrator

        try:
            ScoreCalibrator.from_dict(cfg["confidence"])
        except ModelFileError as exc:
            raise _bad(p, str(exc)) from None
    if cfg.get("image_root") is not None and not isinstance(cfg["image_root"], str):
        raise _bad(p, f"model.json 'image_root' must be a string; got {cfg['image_root']!r}")
    _check_colour(p, cfg.get("colour"))
    feats = cfg.get("features", {})
    for key in ("generation", "checksum", "path", "relative_path"):
        if feats.get(key) is not None and not isinstance(feats[key], str):
            raise _bad(p, f"model.json features {key!r} must be a string; got {feats[key]!r}")
    rec = cfg.get("assignments")
    if rec is not None and (not isinstance(rec, dict) or not isinstance(rec.get("sha256"), str)):
        raise _bad(p, f"model.json 'assignments' must be an object with a 'sha256' string; got {rec!r}")
    return cfg


class _Reader:
    """Reads members of an open model zip, checking sizes before anything is decompressed."""

    def __init__(self, p: Path, zf: zipfile.ZipFile) -> None:
        self.p, self.zf = p, zf
        self.names = set(zf.namelist())
        self.budget = _MAX_EXPANSION * p.stat().st_size + 2**24
        for info in zf.infolist():  # model files store members; deflate is read, nothing else
            if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
                raise _bad(p, f"member {info.filename!r} uses compression method {info.compress_type}")
            if info.flag_bits & 0x1:
                raise _bad(p, f"member {info.filename!r} is encrypted")

    def info(self, name: str, limit: int) -> zipfile.ZipInfo:
        info = self.zf.getinfo(name)
        if info.file_size > limit or info.file_size > self.budget:
            raise _bad(self.p, f"member {name} claims {info.file_size} bytes, more than its content allows")
        self.budget -= info.file_size
        return info

    def read_text(self, name: str, limit: int) -> Any:
        self.info(name, limit)
        data = self.zf.read(name)
        try:
            return json.loads(data)
        except (ValueError, UnicodeDecodeError) as exc:
            raise _bad(self.p, f"{name} is not valid JSON: {exc}") from exc
        except RecursionError:
            raise _bad(self.p, f"{name} is nested too deeply") from None

    def array(self, name: str, shape: tuple[int | None, ...], kinds: str) -> np.ndarray | None:
        """``name.npy`` if present; its header must give ``shape`` (None: any) and a dtype of ``kinds``."""
        member = f"{name}.npy"
        if member not in self.names:
            return None
        info = self.zf.getinfo(member)
        with self.zf.open(member) as f:
            got, dtype, header_len = _npy_header(self.p, member, f)
            want = tuple(g if w is None else w for g, w in zip(got, shape, strict=False))
            if len(got) != len(shape) or got != want:
                raise _bad(self.p, f"{member} has shape {got}, expected {_shape_text(shape)}")
            if dtype.kind not in kinds or dtype.hasobject or dtype.itemsize > 8:
                raise _bad(self.p, f"{member} has dtype {dtype}, expected kind {kinds!r}")
            size = header_len + math.prod(got) * dtype.itemsize
            if info.file_size != size:
                raise _bad(self.p, f"member {member} holds {info.file_size} bytes, its header says {size}")
            self.info(member, size)
            data = f.read(size - header_len)
        if len(data) != size - header_len:
            raise _bad(self.p, f"{member} is truncated")
        return np.frombuffer(data, dtype=dtype).reshape(got).copy()


def _shape_text(shape: tuple[int | None, ...]) -> str:
    inner = ", ".join("*" if s is None else str(s) for s in shape)
    return f"({inner},)" if len(shape) == 1 else f"({inner})"


def _npy_header(p: Path, member: str, f: IO[bytes]) -> tuple[tuple[int, ...], np.dtype[Any], int]:
    fmt = np.lib.format
    try:
        version = fmt.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = fmt.read_array_header_1_0(f)
        elif version in ((2, 0), (3, 0)):
            shape, fortran, dtype = fmt.read_array_header_2_0(f)
        else:
            raise ValueError(f"unsupported .npy version {version}")
    except Exception as exc:  # numpy's header parser raises ValueError, SyntaxError, TokenError, ...
        why = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        raise _bad(p, f"{member} has no valid .npy header: {why}") from None
    if fortran:
        raise _bad(p, f"{member} is Fortran-ordered")
    return tuple(int(s) for s in shape), np.dtype(dtype), int(f.tell())  # magic + header length


def _read_ids(r: _Reader, cfg: dict[str, Any]) -> list[str]:
    n = cfg["n_images"]
    limit = 64 + n * 4096 * 6 + _MAX_JSON_BYTES
    if "ids.json" in r.names:
        ids = r.read_text("ids.json", limit)
        if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
            raise _bad(r.p, "ids.json must be a list of strings")
    elif "ids.txt" in r.names:  # format version 1
        r.info("ids.txt", limit)
        ids = r.zf.read("ids.txt").decode("utf-8", "surrogateescape").split("\n")
        ids = [] if ids == [""] else ids
    else:
        raise _bad(r.p, "no ids")
    if len(ids) != n:
        raise _bad(r.p, f"{len(ids)} ids for n_images {n}")
    bad = next((i for i in ids if not _plain_id(i)), None)
    if bad is not None:
        raise _bad(r.p, f"bad id {bad!r}: ids are relative paths inside the image folder")
    if len(set(ids)) != len(ids):
        dup = next(i for i, c in _counts(ids).items() if c > 1)
        raise _bad(r.p, f"duplicate id {dup!r}")
    return ids


def _plain_id(rel: str) -> bool:
    return bool(rel) and "\x00" not in rel and not rel.startswith("/") and ".." not in rel.split("/")


def _counts(ids: list[str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for i in ids:
        out[i] = out.get(i, 0) + 1
    return out


def _finite(p: Path, name: str, a: np.ndarray | None, *, unit: bool = False, chunk: int = 65536) -> None:
    if a is None:
        return
    flat = a.reshape(len(a), -1) if a.ndim else a.reshape(1, 1)
    for s in range(0, len(flat), chunk):
        x = np.asarray(flat[s : s + chunk], np.float32)
        if not np.isfinite(x).all():
            raise _bad(p, f"{name} holds NaN or infinite values")
        if unit and len(x) and np.abs(np.linalg.norm(x, axis=1) - 1.0).max() > _UNIT_TOLERANCE:
            raise _bad(p, f"{name} rows are not unit vectors")


def _read(p: Path, zf: zipfile.ZipFile) -> ModelFile:
    r = _Reader(p, zf)
    if "model.json" not in r.names:
        raise ModelFileError(f"{p} is not a varsitysrch model file (no model.json)")
    cfg = _check_config(p, r.read_text("model.json", _MAX_JSON_BYTES))
    n, k, dim = cfg["n_images"], cfg["k"], cfg["dim"]
    ids = _read_ids(r, cfg)
    pca_components = r.array("pca_components", (None, dim), "f")
    pca_mean = r.array("pca_mean", (dim,), "f") if pca_components is not None else None
    if pca_components is not None and (pca_mean is None or not 1 <= len(pca_components) <= dim):
        raise _bad(p, "clustering PCA incomplete")
    c = dim if pca_components is None else len(pca_components)
    centroids = r.array("centroids", (k, c), "f")
    labels = r.array("labels", (n,), "iu")
    distances = r.array("distances", (n,), "f")
    if centroids is None or labels is None or distances is None:
        raise ModelFileError(f"{p} is incomplete (centroids/labels/distances missing)")
    if len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= k):
        raise _bad(p, f"labels must be in [0, k) = [0, {k}); got {int(labels.min())}..{int(labels.max())}")
    _finite(p, "centroids", centroids)
    _finite(p, "distances", distances)
    if len(distances) and float(distances.min()) < 0:
        raise _bad(p, "negative distances")
    _finite(p, "the clustering PCA", pca_components)
    _finite(p, "the clustering PCA mean", pca_mean)
    vectors = r.array("vectors", (n, dim), "f")
    _finite(p, "vectors", vectors, unit=True)
    arrays = _read_extras(r, cfg)
    _check_members(r, cfg)
    return ModelFile(
        cfg,
        centroids.astype(np.float32),
        pca_mean,
        pca_components,
        ids,
        labels.astype(np.int32),
        distances.astype(np.float32),
        vectors,
        arrays,
    )


def _check_members(r: _Reader, cfg: dict[str, Any]) -> None:
    """The archive holds exactly the members model.json lists (recorded since issue 19; checked
    last, so that the checks of each member say what is wrong when they can)."""
    p = r.p
    members = cfg.get("members")
    if members is not None:  # recorded since issue 19: the archive must hold exactly these
        if not isinstance(members, list) or not all(isinstance(m, str) for m in members):
            raise _bad(p, "model.json 'members' must be a list of member names")
        held = r.names - {"model.json"}
        if set(members) != held or len(r.zf.infolist()) != len(members) + 1:
            odd = sorted(held.symmetric_difference(members))[:3] or ["a duplicate member"]
            raise _bad(p, f"the archive's members are not the ones model.json lists ({', '.join(odd)})")


def _read_extras(r: _Reader, cfg: dict[str, Any]) -> dict[str, np.ndarray]:
    p, n, dim = r.p, cfg["n_images"], cfg["dim"]
    comps = r.array("extra/search_components", (None, dim), "f")
    s = None if comps is None else len(comps)
    ivf_c = r.array("extra/ivf_centroids", (None, dim), "f")
    sizes = {"n": n, "dim": dim, "s": s, "nlist": None if ivf_c is None else len(ivf_c)}
    out: dict[str, np.ndarray] = {}
    for name, spec in _EXTRAS.items():
        if name == "search_components":
            a = comps
        elif name == "ivf_centroids":
            a = ivf_c
        else:
            shape = tuple(sizes[d] for d in spec.split(","))
            kinds = "f" if name.startswith("search") else "iu"
            a = r.array(f"extra/{name}", shape, kinds)
        if a is not None:
            out[name] = a
    if "attributes" in cfg:  # the attribute table (see _attributes): plain numeric arrays only
        from ._attributes import Attributes

        if not isinstance(cfg["attributes"], dict):
            raise _bad(p, "model.json 'attributes' must be an object")
        for name, (shape, kinds) in Attributes.array_specs(cfg["attributes"], n).items():
            a = r.array(f"extra/{name}", shape, kinds)
            if a is not None:
                out[name] = a
    out.update(_read_graph(r, cfg))
    if cfg.get("colour_model") is not None:  # the colour classifier (see _colourlabels)
        from ._colourlabels import ColourModel

        cm = cfg["colour_model"]
        names = cm.get("names") if isinstance(cm, dict) else None
        rows = len(names) if isinstance(names, list) else None
        colour = {
            "colour_coef": r.array("extra/colour_coef", (rows, None), "f"),
            "colour_intercept": r.array("extra/colour_intercept", (rows,), "f"),
        }
        ColourModel.from_parts(cm, {k: v for k, v in colour.items() if v is not None}, dim, str(p))
        out.update({k: v for k, v in colour.items() if v is not None})
    for name in ("search_components", "search_mean", "search_vectors", "ivf_centroids"):
        _finite(p, name, out.get(name), unit=name in ("search_vectors", "ivf_centroids"))
    if ("search_components" in out) != ("search_mean" in out):
        raise _bad(p, "search PCA incomplete")
    if "search_vectors" in out and "search_components" not in out:
        raise _bad(p, "search vectors without their PCA")
    if ("ivf_centroids" in out) != ("ivf_lists" in out):
        raise _bad(p, "IVF incomplete")
    if "ivf_lists" in out and len(out["ivf_lists"]):
        lists, nlist = out["ivf_lists"], len(out["ivf_centroids"])
        if int(lists.min()) < 0 or int(lists.max()) >= nlist:
            raise _bad(p, f"IVF lists must be in [0, {nlist})")
    return out


def _read_graph(r: _Reader, cfg: dict[str, Any]) -> dict[str, np.ndarray]:
    """The catalogue's neighbour graph (``model.json`` ``rerank``, ``extra/rerank_nn.npy`` and
    ``extra/rerank_sims.npy``; see :mod:`varsitysrch._rerank`).  A graph made for another
    catalogue size still loads (search says it is stale); its row numbers must lie in it."""
    rec = cfg.get("rerank")
    if rec is None:
        return {}
    p = r.p
    if not isinstance(rec, dict):
        raise _bad(p, f"model.json 'rerank' must be an object; got {type(rec).__name__}")
    for key, lo in (("k1", 1), ("k", 0), ("n_images", 1)):
        _need_int(p, rec, key, lo, 2**40)
    nn = r.array("extra/rerank_nn", (None, rec["k"]), "iu")
    sims = r.array("extra/rerank_sims", (None, rec["k"]), "f")
    if nn is None or sims is None or len(nn) != len(sims) or len(nn) != rec["n_images"]:
        raise _bad(p, "neighbour graph incomplete (rerank_nn / rerank_sims)")
    if nn.size and (int(nn.min()) < 0 or int(nn.max()) >= len(nn)):
        raise _bad(p, f"neighbour graph rows must be in [0, {len(nn)})")
    _finite(p, "the neighbour graph's cosines", sims)
    return {"rerank_nn": nn.astype(np.int32, copy=False), "rerank_sims": sims.astype(np.float32, copy=False)}


def load_model(path: str | os.PathLike[str]) -> ModelFile:
    """Read and validate a model file; refuses pickles and anything but JSON + plain arrays."""
    p = Path(path)
    if not p.is_file():
        raise ModelFileError(f"model_filename {str(p)!r} does not exist")
    try:
        fd = os.open(p, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
        with os.fdopen(fd, "rb") as f:
            head = f.read(4)
    except OSError as exc:
        raise ModelFileError(f"model_filename {str(p)!r} is unreadable ({exc.strerror or exc})") from None
    if head[:1] == b"\x80" or head[:1] in (b"(", b"c", b"]", b"}"):
        raise ModelFileError(
            f"{p} looks like a Python pickle: refused (varsitysrch model files are JSON + arrays and "
            "are never unpickled; retrain with train_clusters)"
        )
    if not zipfile.is_zipfile(p):
        raise ModelFileError(f"{p} is not a varsitysrch model file")
    try:
        with zipfile.ZipFile(p) as zf:
            return _read(p, zf)
    except ModelFileError:
        raise
    except (
        zipfile.BadZipFile,
        zipfile.LargeZipFile,
        ValueError,
        KeyError,
        OSError,
        EOFError,
        NotImplementedError,  # an unknown compression method
        RuntimeError,  # an encrypted member; RecursionError
        zlib.error,
        struct.error,
        OverflowError,
    ) as exc:
        msg = " ".join(str(exc).split())[:300]
        raise _bad(p, f"{type(exc).__name__}: {msg}") from exc


__all__ = [
    "MODEL_FORMAT",
    "MODEL_VERSION",
    "ModelFile",
    "check_store_for_model",
    "csv_matches_model",
    "csv_mismatch_message",
    "load_model",
    "model_stamps",
    "read_assignments",
    "read_assignments_kind",
    "record_store",
    "save_model_and_csv",
    "stamp_arrays",
]
