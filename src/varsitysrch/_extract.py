"""Step 1: embed every image of a folder into a feature store.

The pipeline runs in ``num_workers`` lanes (threads): a lane decodes a batch -- each image
once, with JPEG draft (DCT-scaled) decoding -- and embeds it with its own ONNX Runtime session
of ``threads`` intra-op threads (default: the CPUs shared out between the lanes, so nothing is
oversubscribed and no lane waits on another's straggling thread).  PIL and ONNX Runtime release
the GIL, so the lanes run in parallel.  From the same decode each image's colour signature and
plain-background flag are computed (:mod:`varsitysrch._colour`); they are checkpointed with the
vectors and committed in the same store generation (``colour.npy``, ``plain.npy``), so they
can never be stale.  Progress is checkpointed to ``save_to/parts/`` every ``checkpoint_every`` images: an
interrupted run resumes from there, and a rerun on an unchanged folder only checks file
stamps -- size, mtime, inode and ctime -- (new or changed images are embedded, deleted
ones dropped, the rest reused).  The store is written as one commit under a lock
(see :mod:`varsitysrch._store`).
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import dataclasses
import io
import json
import logging
import os
import re
import stat
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import _colour
from ._config import Compute, ExtractOptions, settle
from ._errors import (
    FeatureStoreError,
    ImageError,
    IncompatibleModelError,
    InvalidArgumentError,
    VarsitysrchError,
)
from ._extractors import Embedder, Extractor, get_extractor
from ._images import _fit, decode_failure, decode_rgb, load_image, open_image, scan_images
from ._io import ENCODING, ERRORS, atomic_path, csv_rows, open_regular, read_regular, write_csv, write_json
from ._progress import bar as progress_bar
from ._progress import say
from ._store import (
    COLOUR,
    COLOUR_NPY,
    ID_COLUMNS,
    PARTS,
    PLAIN_NPY,
    SKIPPED,
    STORE_JSON,
    TOKEN,
    FeatureStore,
    Stamp,
    _refuse_empty,
    commit,
    log_skip,
    new_token,
    os_error,
    recover,
    remove_generation,
    same_file,
    store_header,
    store_lock,
    store_paths,
    write_header,
)

__all__ = ["ExtractionResult", "check_folders", "extract_features"]

log = logging.getLogger(__name__)

#: the Compute fields extract_features uses (all of them)
_COMPUTE_USED = ("engine", "scheduler", "threads", "num_workers", "batch_size", "checkpoint_every")
#: the keywords extract_features hands to the extractor (:func:`~varsitysrch.get_extractor`): a field of
#: :class:`Extractor`, or ``weights`` (vgg16-block5pool's file)
_EX_OPTS = frozenset({f.name for f in dataclasses.fields(Extractor)} - {"extra"} | {"weights"})

#: the files of ``parts/`` (and the temporary files of their atomic writes): nothing else is removed
_PARTS_JSON = "parts.json"
_PART = re.compile(rf"part-{TOKEN}-[0-9]{{5}}\.(?:npy|csv)")
_PART_TMP = re.compile(rf"\.(?:part-{TOKEN}-[0-9]{{5}}\.(?:npy|csv)|parts\.json)\.[a-z0-9_]{{8}}\.tmp")
#: the colour columns of a checkpoint part's rows, after the vector: the colour signature, then the
#: plain-background flag (0/1)
_COLOUR_COLS = _colour.SIGNATURE_DIM + 1
#: automatic checkpoints are at least this many seconds apart (a kill loses at most about this
#: much work; each checkpoint costs two fsyncs, tens of milliseconds on a busy disk)
_CHECKPOINT_MIN_SECONDS = 5.0
#: lanes (threads, each with its own ONNX Runtime session and a batch in flight) when
#: ``num_workers`` is not given: one per CPU, at most this many
_MAX_LANES = 8


@dataclass(frozen=True)
class ExtractionResult:
    """What :func:`extract_features` did."""

    store: Path
    n_images: int
    n_embedded: int
    n_reused: int
    n_removed: int
    skipped: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0
    #: ids whose vector this run (or the interrupted run it resumed) embedded
    embedded_ids: frozenset[str] = frozenset()
    #: images whose vector was reused but whose colour row was computed (a store without colour rows)
    n_coloured: int = 0
    #: of ``seconds``, preparing the extractor before the first image: its graph (built once per
    #: machine, then read from the cache) and an ONNX Runtime session; not in :attr:`images_per_second`
    setup_seconds: float = 0.0

    @property
    def n_skipped(self) -> int:
        return len(self.skipped)

    @property
    def images_per_second(self) -> float:
        """Images embedded per second of extraction proper (:attr:`setup_seconds` left out)."""
        busy = self.seconds - self.setup_seconds
        return self.n_embedded / busy if busy > 0 else 0.0

    def summary(self) -> str:
        return (
            f"{self.n_images} images in {self.store}: {self.n_embedded} embedded, {self.n_reused} reused, "
            f"{self.n_removed} removed, {self.n_skipped} skipped ({self.images_per_second:.1f} img/s)"
        )


def _decode_batch(
    root: Path, ids: Sequence[str], size: int, resize: str
) -> tuple[np.ndarray, list[int], list[tuple[str, str]]]:
    arrays: list[np.ndarray] = []
    ok: list[int] = []
    bad: list[tuple[str, str]] = []
    for i, rel in enumerate(ids):
        try:
            arrays.append(load_image(root / rel, size, resize))
            ok.append(i)
        except ImageError as exc:
            bad.append((rel, str(exc)))
        except Exception as exc:  # never let one file stop the run
            bad.append((rel, f"{type(exc).__name__}: {exc}"))
    batch = np.stack(arrays) if arrays else np.zeros((0, size, size, 3), np.uint8)
    return batch, ok, bad


def _iter_decoded(
    root: Path, ids: Sequence[str], *, batch_size: int, size: int, resize: str, workers: int, prefetch: int
) -> Iterator[tuple[list[str], np.ndarray, list[tuple[str, str]]]]:
    """Yield ``(ids_ok, uint8 batch, skipped)`` per batch, decoding ahead in threads (bounded)."""
    chunks = [ids[i : i + batch_size] for i in range(0, len(ids), batch_size)]
    if workers <= 0:
        for chunk in chunks:
            batch, ok, bad = _decode_batch(root, chunk, size, resize)
            yield [chunk[i] for i in ok], batch, bad
        return
    # each chunk is split across the workers, and at most ``prefetch`` chunks are in flight
    with cf.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="varsitysrch-decode") as pool:

        def submit(chunk: Sequence[str]) -> list[cf.Future[Any]]:
            step = -(-len(chunk) // workers)
            return [
                pool.submit(_decode_batch, root, chunk[j : j + step], size, resize)
                for j in range(0, len(chunk), step)
            ]

        pending: list[tuple[Sequence[str], list[cf.Future[Any]]]] = []
        it = iter(chunks)
        for chunk in it:
            pending.append((chunk, submit(chunk)))
            if len(pending) >= prefetch:
                break
        while pending:
            chunk, futs = pending.pop(0)
            nxt = next(it, None)
            if nxt is not None:
                pending.append((nxt, submit(nxt)))
            step = -(-len(chunk) // workers)
            ok_ids: list[str] = []
            parts: list[np.ndarray] = []
            bad_all: list[tuple[str, str]] = []
            for j, fut in enumerate(futs):
                batch, ok, bad = fut.result()
                sub = chunk[j * step : (j + 1) * step]
                ok_ids.extend(sub[i] for i in ok)
                parts.append(batch)
                bad_all.extend(bad)
            yield ok_ids, np.concatenate(parts) if parts else np.zeros((0, size, size, 3), np.uint8), bad_all


def _decode_for_store(path: Path, size: int, resize: str) -> tuple[np.ndarray, np.ndarray]:
    """One decode of a catalogue image -> ``(uint8 [size, size, 3] model input, float32 [_COLOUR_COLS]
    colour row)`` (:func:`_decode_store_batch` does a batch, with one vectorised signature pass).

    The model input is exactly :func:`~varsitysrch._images.load_image`'s (JPEG draft decoding
    to the model's size, EXIF orientation, RGB): a query of the same file embeds the same.  The
    colour row comes from the same decoded photo (:func:`varsitysrch._colour.colour_inputs`): the
    colour signature of the photo letterboxed to ``COLOUR_DECODE_SIZE`` px, then its
    plain-background flag (squashed to ``PLAIN_DECODE_SIZE`` px).
    """
    px, small, square = _decode_one(path, size, resize)
    row = np.empty(_COLOUR_COLS, np.float32)
    row[:-1] = _colour.colour_signatures(small[None])[0]
    row[-1] = float(_colour.plain_background(square))  # looked up at call time (tests count calls)
    return px, row


def _decode_one(path: Path, size: int, resize: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(model input, colour letterbox, plain-test square)`` of one decode (uint8 arrays)."""
    im = decode_rgb(open_image(path), size, resize == "letterbox")
    try:
        whole = np.asarray(_fit(im, size, resize), dtype=np.uint8)
        small, square = _colour.colour_inputs(im)
    except ImageError:
        raise
    except Exception as exc:
        raise decode_failure(exc) from exc
    if whole.shape != (size, size, 3):
        raise ImageError(f"unexpected decoded shape {whole.shape}")
    return whole, small, square


def _decode_store_batch(
    root: Path, ids: Sequence[str], size: int, resize: str
) -> tuple[list[str], np.ndarray, np.ndarray, list[tuple[str, str]]]:
    """:func:`_decode_for_store` of each image -> ``(ids decoded, uint8 pixels, float32 colour rows,
    skipped)``; a file that fails is skipped with its reason, never stops the batch."""
    ok: list[str] = []
    pixels: list[np.ndarray] = []
    smalls: list[np.ndarray] = []
    plain: list[float] = []
    bad: list[tuple[str, str]] = []
    for rel in ids:
        try:
            px, small, square = _decode_one(root / rel, size, resize)
            flag = float(_colour.plain_background(square))  # looked up at call time (tests count calls)
        except ImageError as exc:
            bad.append((rel, str(exc)))
            continue
        except Exception as exc:  # never let one file stop the run
            bad.append((rel, f"{type(exc).__name__}: {exc}"))
            continue
        ok.append(rel)
        pixels.append(px)
        smalls.append(small)
        plain.append(flag)
    P = np.stack(pixels) if pixels else np.zeros((0, size, size, 3), np.uint8)
    C = np.zeros((len(ok), _COLOUR_COLS), np.float32)
    if ok:
        C[:, :-1] = _colour.colour_signatures(np.stack(smalls))
        C[:, -1] = plain
    return ok, P, C, bad


@dataclass
class _Done:
    """One batch through the pipeline."""

    ids: list[str]  #: decoded (and embedded) images, in the batch's order
    vectors: np.ndarray | None  #: float32 ``[n, dim]``; None for a colour-only batch
    colour: np.ndarray  #: float32 ``[n, _COLOUR_COLS]``
    skipped: list[tuple[str, str]]


def _default_lanes(num_workers: int | None) -> int:
    """Pipeline lanes: ``num_workers``, or one per CPU (at most :data:`_MAX_LANES`)."""
    return min(_MAX_LANES, os.cpu_count() or 1) if num_workers is None else num_workers


class _SessionPool:
    """Idle ONNX Runtime sessions of the last extractor used, kept between runs.

    A lane takes a session (or builds one: at most one per lane in use) and gives it back after
    each batch; the sessions of the most recent ``(extractor, threads)`` stay loaded (at most
    :data:`_MAX_LANES`), so repeated extractions and updates in one process do not rebuild them
    (about 0.1 s of CPU each).  :func:`release_sessions` frees them.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._key: tuple[str, int] | None = None
        self._idle: list[Embedder] = []

    @staticmethod
    def _key_of(ex: Extractor, threads: int) -> tuple[str, int]:
        return json.dumps(ex.identity(), sort_keys=True, default=str), threads

    def take(self, ex: Extractor, threads: int) -> Embedder:
        key = self._key_of(ex, threads)
        with self._lock:
            if self._key == key and self._idle:
                return self._idle.pop()
        return Embedder(ex, threads=threads)

    def give(self, ex: Extractor, threads: int, emb: Embedder) -> None:
        key = self._key_of(ex, threads)
        with self._lock:
            if self._key != key:
                self._key, self._idle = key, []
            if len(self._idle) < _MAX_LANES:
                self._idle.append(emb)

    def release(self) -> None:
        with self._lock:
            self._key, self._idle = None, []


_SESSIONS = _SessionPool()


def _lane_threads(threads: int | None, workers: int) -> int:
    """ONNX Runtime threads per lane: ``threads``, else the CPUs shared out between the lanes."""
    return threads or max(1, (os.cpu_count() or 1) // max(1, workers))


def _lane_batches(
    root: Path,
    jobs: Sequence[tuple[Sequence[str], bool]],
    ex: Extractor,
    *,
    workers: int,
    threads: int | None,
) -> Iterator[_Done]:
    """Run ``(ids, embed?)`` jobs through the lanes, results in job order.

    Each of ``workers`` threads decodes a whole batch and embeds it with a session of its own
    (built on first use; ``threads`` intra-op threads each, default the CPUs shared out between
    the lanes), so decoding and inference overlap across lanes without oversubscribing the
    CPUs.  At most ``2 * workers`` batches are in flight.  ``workers == 0``: everything in the
    calling thread.
    """
    size, resize = ex.input_size, ex.resize
    per = _lane_threads(threads, workers)

    def run(chunk: Sequence[str], embed: bool) -> _Done:
        ok, pixels, colour, bad = _decode_store_batch(root, chunk, size, resize)
        if not embed:
            return _Done(ok, None, colour, bad)
        if not ok:
            return _Done(ok, np.zeros((0, ex.dim), np.float32), colour, bad)
        emb = _SESSIONS.take(ex, per)
        try:
            return _Done(ok, emb.embed(pixels), colour, bad)
        finally:
            _SESSIONS.give(ex, per, emb)

    if workers <= 0:
        for chunk, embed in jobs:
            yield run(chunk, embed)
        return
    with cf.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="varsitysrch-extract") as pool:
        pending: list[cf.Future[_Done]] = []
        it = iter(jobs)
        try:
            for chunk, embed in it:
                pending.append(pool.submit(run, chunk, embed))
                if len(pending) >= 2 * workers:
                    break
            while pending:
                fut = pending.pop(0)
                nxt = next(it, None)
                if nxt is not None:
                    pending.append(pool.submit(run, *nxt))
                yield fut.result()
        finally:
            for fut in pending:  # interrupted: start nothing more
                fut.cancel()


class _Parts:
    """Checkpoints of unfinished runs: ``parts/part-<run>-NNNNN.npy`` + ``.csv``, and ``parts.json``.

    Each run names its parts with its own token, so parts of two runs can never be taken
    for one another; a part counts only when its ``.csv`` (written after its ``.npy``)
    and ``.npy`` agree.  A part's rows are the vector followed by the image's
    :data:`_COLOUR_COLS` colour columns (parts of older versions, without them, are re-embedded).
    Only the process holding the store lock touches ``parts/``.
    """

    def __init__(self, folder: Path, extractor: Extractor, run: str | None = None) -> None:
        self.dir = folder / PARTS
        self.extractor = extractor
        self.run = run or new_token()
        self.n = 0
        self._arrays: dict[int, np.ndarray] = {}

    def index(self) -> dict[str, tuple[int, int, Stamp]]:
        """``id -> (part number, row, stamp)`` of every checkpointed image (latest wins).

        Only the ``.csv`` tables and ``.npy`` headers are read: the vectors stay on disk
        until :meth:`array` hands out a part's memory map.
        """
        out: dict[str, tuple[int, int, Stamp]] = {}
        self._arrays = {}
        head = self.dir / _PARTS_JSON
        if not head.exists():
            return out
        try:
            meta = json.loads(read_regular(head, _PARTS_JSON, 2**20).decode("utf-8"))
            if not isinstance(meta, dict) or not self.extractor.compatible_with(meta.get("extractor", {})):
                log.info("discarding checkpoints made with another extractor")
                self.clear()
                return out
            names = sorted(n for n in os.listdir(self.dir) if _PART.fullmatch(n) and n.endswith(".npy"))
            for num, name in enumerate(names):
                npy = self.dir / name
                table = npy.with_suffix(".csv")
                if not table.exists():
                    continue  # killed between the two files: the .npy alone means nothing
                os.close(open_regular(npy, name))  # a regular file: no symlink, no FIFO
                X = np.load(npy, mmap_mode="r", allow_pickle=False)
                text = read_regular(table, table.name).decode(ENCODING, ERRORS)
                header, *rows = list(csv_rows(io.StringIO(text, newline=""))) or [[]]
                if (
                    X.ndim != 2
                    or len(rows) != len(X)
                    or X.shape[1] != self.extractor.dim + _COLOUR_COLS
                    or X.dtype.name not in ("float32", "float16")
                ):
                    continue
                self._arrays[num] = X
                width = len(header)
                for r, row in enumerate(rows):
                    st = tuple(int(v) for v in row[1:width]) + (-1,) * (5 - width)
                    out[row[0]] = (num, r, st)  # type: ignore[assignment]
        except Exception as exc:  # anything unreadable (numpy's header parser raises TokenError too)
            log.warning("ignoring unreadable checkpoints in %s (%s)", self.dir, exc)
            self.clear()
            return {}
        return out

    def array(self, num: int) -> np.ndarray:
        """The memory-mapped vectors of part ``num`` (after :meth:`index`)."""
        return self._arrays[num]

    def save(self, ids: list[str], X: np.ndarray, stats: Sequence[Sequence[int]]) -> None:
        if not ids:
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        mode = os.lstat(self.dir).st_mode  # never write checkpoints through a symlink
        if not stat.S_ISDIR(mode):
            raise FeatureStoreError(f"{self.dir} is not a folder varsitysrch made (a symlink?); remove it")
        if not (self.dir / _PARTS_JSON).exists():
            write_json(self.dir / _PARTS_JSON, {"extractor": self.extractor.identity()})
        stem = self.dir / f"part-{self.run}-{self.n:05d}"
        with atomic_path(stem.with_suffix(".npy")) as tmp, open(tmp, "wb") as f:
            np.save(f, X, allow_pickle=False)
        write_csv(
            stem.with_suffix(".csv"), list(ID_COLUMNS), [(i, *st) for i, st in zip(ids, stats, strict=True)]
        )
        self.n += 1

    def clear(self) -> None:
        """Remove our checkpoint files (exact names only) and ``parts/`` if nothing else is in it."""
        self.n = 0
        self._arrays = {}
        try:
            if not stat.S_ISDIR(os.lstat(self.dir).st_mode):
                return
            names = os.listdir(self.dir)
        except OSError:
            return
        for name in names:
            if name == _PARTS_JSON or _PART.fullmatch(name) or _PART_TMP.fullmatch(name):
                with contextlib.suppress(OSError):
                    os.unlink(self.dir / name)  # a symlink is removed, never followed
        try:
            os.rmdir(self.dir)
        except OSError:
            log.info("left %s: it holds files varsitysrch did not write", self.dir)


class _Saver:
    """Checkpoint parts written in order by one background thread, so that the pipeline never waits
    on a checkpoint's fsyncs (at most :attr:`MAX_PENDING` parts queued)."""

    MAX_PENDING = 2

    def __init__(self, parts: _Parts) -> None:
        self.parts = parts
        self.pool = cf.ThreadPoolExecutor(max_workers=1, thread_name_prefix="varsitysrch-checkpoint")
        self.pending: list[cf.Future[None]] = []
        self.closed = False

    def save(self, ids: list[str], X: np.ndarray, stats: list[Stamp]) -> None:
        while self.pending and (self.pending[0].done() or len(self.pending) >= self.MAX_PENDING):
            self.pending.pop(0).result()  # a failed checkpoint fails the run, as a direct write would
        self.pending.append(self.pool.submit(self.parts.save, ids, X, stats))

    def finish(self) -> None:
        """Wait for every queued part; the first failure is raised."""
        try:
            while self.pending:
                self.pending.pop(0).result()
        finally:
            self.abandon()

    def abandon(self) -> None:
        """Wait for the queued parts (an interrupted run keeps what was done), ignoring failures."""
        if self.closed:
            return
        self.closed = True
        for fut in self.pending:
            with contextlib.suppress(BaseException):
                fut.result()
        self.pending = []
        self.pool.shutdown(wait=True)


def _auto_checkpoint(n_todo: int, batch_size: int) -> int:
    """Images per checkpoint when none is given: about 16 per run, at most 2,048."""
    return max(batch_size, min(2048, -(-n_todo // 16)))


def extract_features(
    img_folder: str | os.PathLike[str],
    save_to: str | os.PathLike[str],
    *,
    options: ExtractOptions | None = None,
    compute: Compute | None = None,
    extractor: str | Extractor | None = None,
    show_progress: bool = True,
    **settings: Any,
) -> ExtractionResult:
    """Embed every image under ``img_folder`` (recursively) into the feature store ``save_to``.

    Files and folders left out (unreadable, special files, undecodable formats, ...) are
    listed with the reason in ``save_to/skipped.csv``.  A rerun reuses the vectors of
    unchanged images (same size, mtime, inode and ctime) and embeds only new or changed
    ones; a store made with another extractor is an error unless the folder is emptied
    first.  The store is committed as a unit and locked while it is written: a second
    writer gets a :class:`~varsitysrch.FeatureStoreError`.

    Args:
        img_folder: folder of catalogue images (searched recursively).
        save_to: folder of the feature store (created if missing).
        options: an :class:`~varsitysrch.ExtractOptions`: ``dtype`` (``"float32"`` or
            ``"float16"`` storage) and ``allow_empty`` (let a listing with no readable image
            replace a non-empty store; otherwise that is an error and the store is kept: an
            unmounted or emptied folder never wipes a catalogue).
        compute: a :class:`~varsitysrch.Compute`, how the work runs:

            * ``batch_size``: images per inference batch.
            * ``num_workers``: pipeline lanes: threads that each decode a batch and embed it
              with an ONNX Runtime session of their own (default: one per CPU, at most 8;
              ``0``: decode and embed in the calling thread).
            * ``threads``: ONNX Runtime intra-op threads of each lane's session (default: the
              CPUs shared out between the lanes, 1 on a machine with one lane per CPU -- no
              oversubscription; with ``num_workers=0``, the number of CPUs).
            * ``checkpoint_every``: images between checkpoints of an unfinished run (default:
              about 16 checkpoints per run, at most 2,048 images apart, at least 5 seconds
              apart, and at least one a minute).
            * ``engine``: ``"local"`` (decoding threads + ONNX Runtime here) or ``"dask"``:
              image shards are embedded on dask.distributed workers (each loads the model
              once) and the same store is written.  Workers must see ``img_folder`` at the
              same path.
            * ``scheduler``: with ``engine="dask"``: a scheduler address
              (``"tcp://host:8786"``), a scheduler file (``.json``), a ``distributed.Client``
              or a cluster object (``LocalCluster``, dask-kubernetes, dask-jobqueue,
              ``SSHCluster``); ``None`` uses the current default client.
        extractor: ``"efficientnet-lite0"`` (default), ``"efficientnet-lite1"``,
            ``"efficientnet-lite2"``, ``"ensemble-lite0-lite2"`` (both networks in one graph,
            2560-d; opt-in, the ``backbones`` extra), ``"mobilenet-v2"``,
            ``"vgg16-block5pool"``, ``"onnx:PATH"`` or an :class:`Extractor`; extractor options
            such as ``pooling="rmac"`` (regional maxima, opt-in) or ``quantized=True`` as keywords.
        show_progress: a progress bar (when stderr is a terminal) and the one-line summary
            (``Feature extraction completed: ...``, on stdout; logged at INFO either way).
        settings: any field of ``options`` or ``compute`` given as a keyword, as earlier
            versions took them (``batch_size=16``, ``dtype="float16"``; it wins over the same
            field of the value), and the extractor's options (``quantized=True``,
            ``resize="letterbox"``, ``input_size``, ``pooling``, ``weights`` for vgg16, the
            ``Extractor.from_onnx`` options for ``"onnx:PATH"``); any other name is refused.

    Each image is decoded once: its vector, its colour signature and its plain-background
    flag come from that decode and are committed together, in one store generation
    (:mod:`varsitysrch._colour`); unchanged images keep their vector and colour row.  A
    store without colour rows (older, or bare vectors) gets them computed for every image
    by the next run, its vectors kept (``ExtractionResult.n_coloured``).

    Memory stays bounded whatever the catalogue size: a few batches of decoded images per
    lane, at most ``checkpoint_every`` vectors (then streamed to ``save_to/parts/``), the id
    tables and the colour rows (226 bytes per image); the final store is assembled from the
    previous store and the parts through memory maps.
    """
    t0 = time.perf_counter()
    root = Path(img_folder)
    out = Path(save_to)
    if not root.is_dir():
        raise InvalidArgumentError(f"img_folder {str(root)!r} does not exist or is not a folder")
    opts, comp, extractor_options = settle(
        "extract_features",
        settings,
        ExtractOptions,
        options,
        compute,
        _COMPUTE_USED,
        extra=_EX_OPTS,
    )
    check_folders(root, out)
    ex = get_extractor(extractor, **extractor_options)
    with store_lock(out):
        try:
            return _extract_locked(
                root,
                out,
                ex,
                t0=t0,
                batch_size=comp.batch_size,
                num_workers=comp.num_workers,
                threads=comp.threads,
                dtype=opts.dtype,
                checkpoint_every=comp.checkpoint_every,
                show_progress=show_progress,
                engine=comp.engine,
                scheduler=comp.scheduler,
                allow_empty=opts.allow_empty,
            )
        except OSError as exc:
            if isinstance(exc, VarsitysrchError):
                raise
            raise os_error(exc, f"extracting into {str(out)!r}") from exc


def check_folders(root: Path, out: Path) -> None:
    """The image folder must not be the store folder or inside it (the store folder is ours: its
    cleanup would remove the images).  A store inside the image folder is fine (left out of the scan)."""
    r, o = root.resolve(), out.resolve()
    if r == o or r.is_relative_to(o):
        where = "is" if r == o else "is inside"
        raise InvalidArgumentError(
            f"img_folder {str(root)!r} {where} the feature store folder save_to {str(out)!r}: the store "
            "folder belongs to varsitysrch; put the images or the store elsewhere"
        )


def _extract_locked(
    root: Path,
    out: Path,
    ex: Extractor,
    *,
    t0: float,
    batch_size: int,
    num_workers: int | None,
    threads: int | None,
    dtype: str,
    checkpoint_every: int | None,
    show_progress: bool,
    engine: str,
    scheduler: Any,
    allow_empty: bool,
) -> ExtractionResult:
    recover(out)
    exclude: list[str] = []
    # never index the store itself when it lives inside the image folder
    with contextlib.suppress(ValueError):
        exclude.append(out.resolve().relative_to(root.resolve()).as_posix())
    listing = scan_images(root, exclude)
    stats = listing.stamps
    ids = listing.ids
    skipped: list[tuple[str, str]] = list(listing.skipped)

    # ---- what can be reused: the previous store, then checkpoints of an interrupted run
    old: FeatureStore | None = None
    if (out / STORE_JSON).exists():
        old = FeatureStore.open(out)
        try:
            ex.check_compatible(old.extractor, f"the feature store {str(out)!r}")
        except IncompatibleModelError as exc:
            raise IncompatibleModelError(f"{exc}; use a new save_to folder or delete the old store") from exc
    reuse: dict[str, int] = {}
    if old is not None:
        old_stamps = old.stamps()
        for j, rel in enumerate(old.ids):
            if rel in stats and rel in old_stamps and same_file(stats[rel], old_stamps[rel]):
                reuse[rel] = j
    # the colour rows of reused images come with them, unless the old store has none (or of another
    # kind): then they are computed now, from one decode of each image (no embedding)
    old_colour = old is not None and old.colour is not None and old.meta.get("colour") == _colour_identity()
    parts = _Parts(out, ex)
    resumed = {
        k for k, v in parts.index().items() if k in stats and same_file(stats[k], v[2]) and k not in reuse
    }
    todo = [rel for rel in ids if rel not in reuse and rel not in resumed]
    colour_todo = [] if old_colour else [rel for rel in ids if rel in reuse]
    n_removed = 0 if old is None else sum(1 for rel in old.ids if rel not in stats)
    log.info(
        "%d images: %d reused, %d resumed, %d to embed, %d reused without colour rows (computed now)",
        len(ids), len(reuse), len(resumed), len(todo), len(colour_todo),
    )  # fmt: skip

    new_ids: set[str] = set()  # embedded by this run; their vectors stream into parts/
    coloured: dict[str, np.ndarray] = {}  # colour rows of reused images computed by this run
    setup = 0.0
    if todo and engine != "dask":  # the graph and one session, timed apart from the images/s
        t_setup = time.perf_counter()
        per = _lane_threads(threads, _default_lanes(num_workers))
        _SESSIONS.give(ex, per, _SESSIONS.take(ex, per))  # the key _lane_batches' lanes take
        setup = time.perf_counter() - t_setup
    if todo or colour_todo:
        every = checkpoint_every or _auto_checkpoint(len(todo), batch_size)
        max_seconds = 60.0 if checkpoint_every is None else float("inf")
        min_seconds = _CHECKPOINT_MIN_SECONDS if checkpoint_every is None else 0.0
        bar = progress_bar(
            total=len(todo) + len(colour_todo), unit="img", desc="extract", show_progress=show_progress
        )
        buf_ids: list[str] = []
        buf_X: list[np.ndarray] = []
        last = time.monotonic()
        saver = _Saver(parts)
        try:
            for done in _embedded_batches(
                root,
                todo,
                colour_todo,
                ex,
                engine=engine,
                scheduler=scheduler,
                batch_size=batch_size,
                num_workers=num_workers,
                threads=threads,
            ):
                bar.update(len(done.ids) + len(done.skipped))
                if done.vectors is None:  # colour rows of reused vectors
                    coloured.update(zip(done.ids, done.colour, strict=True))
                    for rel, reason in done.skipped:  # its vector stays; its colour row is empty
                        log.warning("colour of %s not computed (%s): an empty colour row", rel, reason)
                    continue
                skipped.extend(done.skipped)
                for rel, reason in done.skipped:
                    log_skip(rel, reason)
                if len(done.ids):
                    buf_ids.extend(done.ids)
                    buf_X.append(np.concatenate([done.vectors, done.colour], axis=1).astype(dtype))
                    new_ids.update(done.ids)
                since = time.monotonic() - last
                if (len(buf_ids) >= every and since >= min_seconds) or (buf_ids and since > max_seconds):
                    saver.save(buf_ids, np.concatenate(buf_X), [stats[r] for r in buf_ids])
                    buf_ids, buf_X = [], []
                    last = time.monotonic()
            if buf_ids:
                saver.save(buf_ids, np.concatenate(buf_X), [stats[r] for r in buf_ids])
                buf_ids, buf_X = [], []
            saver.finish()
        finally:
            bar.close()
            if buf_ids:  # interrupted: keep what was done
                with contextlib.suppress(BaseException):
                    saver.save(buf_ids, np.concatenate(buf_X), [stats[r] for r in buf_ids])
            saver.abandon()

    # ---- assemble the final store in id order from the old store and the parts, via memory maps
    done_parts = parts.index() if (new_ids or resumed) else {}
    from_parts = {
        rel: (p, r)
        for rel, (p, r, stamp) in done_parts.items()
        if rel not in reuse and rel in stats and same_file(stats[rel], stamp)
    }
    final_ids = [rel for rel in ids if rel in reuse or rel in from_parts]
    skipped.sort()
    write_csv(out / SKIPPED, ["path", "reason"], skipped)
    if not final_ids and not allow_empty:
        _refuse_empty(out, f"no readable images under {str(root)!r}")
        raise FeatureStoreError(
            f"no readable images under {str(root)!r} ({len(skipped)} skipped; see {out / SKIPPED})"
        )
    dim = ex.dim
    if from_parts:
        dim = parts.array(next(iter(from_parts.values()))[0]).shape[1] - _COLOUR_COLS
    elif final_ids and old is not None:
        dim = old.dim
    extra = {"image_root": str(root.resolve()), "skipped": len(skipped), "colour": _colour_identity()}
    header = store_header(ex.identity(), dim, len(final_ids), dtype, extra)
    new_stamps = [stats[r] for r in final_ids]
    if (
        old is not None
        and old.meta.get("generation")
        and old_colour
        and not from_parts
        and final_ids == old.ids
        and old.meta.get("dtype") == dtype
        and old.dim == dim
        and new_stamps == [old.stamps()[r] for r in final_ids]
    ):
        # nothing changed: keep the generation (no rewrite of the vectors), refresh the header only
        write_header(out, header, old.meta["generation"], old.files)
    else:
        side = _colour_rows(final_ids, dim, old if old_colour else None, reuse, parts, from_parts, coloured)
        chunks = _vector_chunks(final_ids, dim, dtype, old, reuse, parts, from_parts)
        commit(out, final_ids, new_stamps, chunks, header, side)
    parts.clear()
    _remove_colour_sidecar(out)
    res = ExtractionResult(
        out,
        len(final_ids),
        len(new_ids),
        len(reuse) + len(resumed),
        n_removed,
        skipped,
        time.perf_counter() - t0,
        frozenset(new_ids | {r for r in resumed if r in from_parts}),
        len(coloured),
        setup,
    )
    where = f"; skipped files are listed in {out / SKIPPED}" if skipped else ""
    if setup >= 1.0:
        where = f"; extractor prepared in {setup:.1f} s, not counted in img/s{where}"
    say(
        log,
        f"Feature extraction completed: {res.n_images} images in {out} ({res.n_embedded} embedded, "
        f"{res.n_reused} reused, {res.n_removed} removed, {res.n_skipped} skipped; "
        f"{res.images_per_second:.1f} img/s){where}.",
        show_progress,
    )
    return res


def _colour_identity() -> dict[str, Any]:
    """How the colour rows are made (``store.json``'s ``colour``): a store with another is recoloured."""
    return dict(_colour.COLOUR_IDENTITY)


def _embedded_batches(
    root: Path,
    todo: list[str],
    colour_todo: list[str],
    ex: Extractor,
    *,
    engine: str,
    scheduler: Any,
    batch_size: int,
    num_workers: int | None,
    threads: int | None,
) -> Iterator[_Done]:
    """The batches of ``todo`` (embedded, with their colour rows), in order, then those of
    ``colour_todo`` (colour rows only).  ``engine="dask"`` embeds ``todo`` on the cluster (the
    colour-only batches, a one-off for stores written before colour rows, run here)."""
    colour_jobs = [(colour_todo[i : i + batch_size], False) for i in range(0, len(colour_todo), batch_size)]
    workers = _default_lanes(num_workers)
    if engine == "dask":
        from ._dask import embed_shards

        for ok, X, C, bad in embed_shards(
            root,
            todo,
            ex,
            decode=_decode_store_batch,
            scheduler=scheduler,
            batch_size=batch_size,
            threads=threads,
        ):
            yield _Done(ok, X, C, bad)
        yield from _lane_batches(root, colour_jobs, ex, workers=workers, threads=threads)
        return
    jobs = [(todo[i : i + batch_size], True) for i in range(0, len(todo), batch_size)]
    yield from _lane_batches(root, jobs + colour_jobs, ex, workers=workers, threads=threads)


def _vector_chunks(
    final_ids: list[str],
    dim: int,
    dtype: str,
    old: FeatureStore | None,
    reuse: dict[str, int],
    parts: _Parts,
    from_parts: dict[str, tuple[int, int]],
    chunk: int = 16384,
) -> Iterator[np.ndarray]:
    """The rows of the new store in ``final_ids`` order, ``chunk`` at a time, gathered from the
    old store and the parts (both memory-mapped read-only)."""
    for s in range(0, len(final_ids), chunk):
        ids = final_ids[s : s + chunk]
        block = np.empty((len(ids), dim), np.dtype(dtype))
        old_dst = [i for i, rel in enumerate(ids) if rel in reuse]
        if old_dst:
            assert old is not None
            src = np.fromiter((reuse[ids[i]] for i in old_dst), np.int64, len(old_dst))
            order = np.argsort(src)  # read the old store forward
            block[np.asarray(old_dst, np.int64)[order]] = old.vectors[src[order]]
        by_part: dict[int, list[tuple[int, int]]] = {}
        for i, rel in enumerate(ids):
            if rel not in reuse:
                p, r = from_parts[rel]
                by_part.setdefault(p, []).append((i, r))
        for p, pairs in sorted(by_part.items()):
            d, r = np.asarray(pairs, np.int64).T
            block[d] = parts.array(p)[r, :dim]
        yield block


def _colour_rows(
    final_ids: list[str],
    dim: int,
    old: FeatureStore | None,
    reuse: dict[str, int],
    parts: _Parts,
    from_parts: dict[str, tuple[int, int]],
    coloured: dict[str, np.ndarray],
) -> dict[str, np.ndarray]:
    """The generation's colour rows in ``final_ids`` order: from the old store (``old``: one with
    colour rows of this kind), the parts, or computed by this run (``coloured``); an image whose
    colour could not be computed gets an all-zero signature (colour similarity 0) and no plain flag."""
    n, d = len(final_ids), _colour.SIGNATURE_DIM
    colour = np.zeros((n, d), np.float16)
    plain = np.zeros((n, 1), np.uint8)
    if old is not None and old.colour is not None and old.plain is not None:
        dst = [i for i, rel in enumerate(final_ids) if rel in reuse]
        if dst:
            src = np.fromiter((reuse[final_ids[i]] for i in dst), np.int64, len(dst))
            colour[dst] = old.colour[src]
            plain[dst] = old.plain[src]
    by_part: dict[int, list[tuple[int, int]]] = {}
    for i, rel in enumerate(final_ids):
        if rel in from_parts:
            p, r = from_parts[rel]
            by_part.setdefault(p, []).append((i, r))
        elif rel in coloured:
            colour[i] = coloured[rel][:d]
            plain[i, 0] = coloured[rel][d] > 0.5
    for p, pairs in sorted(by_part.items()):
        dst_a, r = np.asarray(pairs, np.int64).T
        rows = np.asarray(parts.array(p)[r, dim:], np.float32)
        colour[dst_a] = rows[:, :d]
        plain[dst_a, 0] = rows[:, d] > 0.5
    return {COLOUR_NPY: colour, PLAIN_NPY: plain}


#: the files of the colour sidecar ``<store>/colour/`` that stores of earlier versions kept
_SIDECAR_FILES = ("store.json", "vectors.npy", "ids.csv", "skipped.csv", ".lock")


def _remove_colour_sidecar(out: Path) -> None:
    """Remove ``<store>/colour/``, the colour sidecar of earlier versions (never read since the
    colour rows joined the generation): only its own files, and only when it holds nothing else."""
    side = out / COLOUR
    try:
        if not stat.S_ISDIR(os.lstat(side).st_mode):
            return
    except OSError:
        return
    try:
        recover(side)  # its stray generations and temp files
        paths = store_paths(side) if (side / STORE_JSON).exists() else None
        if (
            paths is not None
            and paths.generation
            and not remove_generation(side / paths.generation, require_marker=False)
        ):
            return
        for name in _SIDECAR_FILES:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(side / name)
        os.rmdir(side)
        log.info(
            "removed the colour sidecar %s of an earlier version (colour rows are in the store now)", side
        )
    except (OSError, VarsitysrchError) as exc:
        log.info("left %s (%s)", side, exc)
