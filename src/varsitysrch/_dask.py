"""Beyond one machine: extraction and cluster assignment on a dask.distributed cluster.

``extract_features(..., engine="dask", scheduler=...)`` splits the images still to embed
into shards (whole multiples of ``batch_size``) and runs :func:`_embed_shard` on the
workers: each worker process builds the ONNX Runtime session of an extractor once
(cached in this module, keyed by the extractor's identity) and keeps it for every later
shard.  Shards come back to the client in submission order, at most two per worker
thread in flight, and go through the same checkpointing and store assembly as the local
engine, so the store written is the same (same ids and order, same ``skipped.csv``,
vectors equal to float rounding, the same colour rows: each worker decodes an image once, for
its vector and its colour signature and plain-background flag, as the local lanes do).

:func:`dask_assign` assigns the rows of a matrix, or of a feature store's memory-mapped
``vectors.npy`` read by the workers themselves, to the nearest K-means centroids in
chunks (``train_clusters(..., engine="dask")`` and ``update_catalogue(..., engine="dask")``).

The scheduler is dask's own; nothing here schedules.  ``scheduler`` is one of: an
address (``"tcp://10.0.0.5:8786"``), a scheduler file written by ``dask scheduler
--scheduler-file`` / dask-mpi (a path ending in ``.json``), a ``distributed.Client``, or
a cluster object (``LocalCluster``, ``dask_kubernetes`` ``KubeCluster``,
``dask_jobqueue`` ``SLURMCluster``/``PBSCluster``, ``SSHCluster``).  ``None`` uses the
current default client.  Clients this module opens it also closes; clients and clusters
passed in are left running.

Workers need varsitysrch (and the extractor's weights package) installed and must see
the image folder and the feature store at the same paths as the client (a shared or
mounted filesystem), as usual for dask.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ._errors import InvalidArgumentError, missing
from ._extractors import Embedder, Extractor
from ._neighbours import nearest_centroid
from ._pca import apply_pca

log = logging.getLogger(__name__)

__all__ = ["client_for", "dask_assign", "embed_shards"]


#: ``decode(root, ids, size, resize)`` -> ``(ok ids, uint8 pixels, float32 colour rows, skipped)`` of
#: one batch: the caller's image decoder (``_extract._decode_store_batch``), passed in so that this
#: engine never imports the pipeline stages that call it
_Decoder = Callable[..., tuple[list[str], np.ndarray, np.ndarray, list[tuple[str, str]]]]

#: Images per shard (``None``: a multiple of batch_size, ~4 shards per worker thread, at most 32 batches).
_SHARD_SIZE: int | None = None
#: Rows per assignment task.
_ASSIGN_CHUNK = 65536

# ------------------------------------------------------------------ worker-side state
_EMBEDDERS: dict[tuple[str, int], Embedder] = {}
_LOCK = threading.Lock()
_BUILDS = 0


def _worker_embedder(ex: Extractor, threads: int) -> Embedder:
    """The worker's Embedder for ``ex``, built on first use and kept for the process's life."""
    global _BUILDS
    key = (json.dumps(ex.identity(), sort_keys=True), threads)
    with _LOCK:
        emb = _EMBEDDERS.get(key)
        if emb is None:
            emb = _EMBEDDERS[key] = Embedder(ex, threads=threads)
            _BUILDS += 1
    return emb


def _embedder_builds() -> int:
    """How many ONNX sessions this process has built (``client.run(embedder_builds)``)."""
    return _BUILDS


def _embed_shard(
    root: str, ids: list[str], ex: Extractor, batch_size: int, threads: int, decode: _Decoder
) -> tuple[list[str], np.ndarray, np.ndarray, list[tuple[str, str]]]:
    """On a worker: decode and embed one shard -> ``(ids embedded, float32 vectors, float32 colour
    rows, skipped)``."""
    emb = _worker_embedder(ex, threads)
    ok_all: list[str] = []
    Xs: list[np.ndarray] = []
    Cs: list[np.ndarray] = []
    bad_all: list[tuple[str, str]] = []
    for s in range(0, len(ids), batch_size):
        ok_ids, batch, colour, bad = decode(Path(root), ids[s : s + batch_size], ex.input_size, ex.resize)
        bad_all.extend(bad)
        if ok_ids:
            ok_all.extend(ok_ids)
            Xs.append(emb.embed(batch))
            Cs.append(colour)
    X = np.concatenate(Xs) if Xs else np.zeros((0, ex.dim), np.float32)
    C = np.concatenate(Cs) if Cs else np.zeros((0, 0), np.float32)
    return ok_all, X, C, bad_all


def _assign_rows(
    source: str | np.ndarray, start: int, stop: int, params: tuple[np.ndarray, Any, Any]
) -> tuple[np.ndarray, np.ndarray]:
    """On a worker: project and assign rows ``start:stop`` of a ``.npy`` file (or an array chunk)."""
    centroids, pca_mean, pca_components = params
    x = np.load(source, mmap_mode="r")[start:stop] if isinstance(source, str) else source
    z = np.asarray(x, np.float32)
    if pca_components is not None:
        z = apply_pca(z, pca_mean, pca_components)
    return nearest_centroid(z, centroids)


# ------------------------------------------------------------------ client side
def _distributed() -> Any:
    try:
        import distributed
    except ImportError as exc:
        raise missing("distributed", "dask", "engine='dask'") from exc
    return distributed


@contextlib.contextmanager
def client_for(scheduler: Any = None) -> Iterator[Any]:
    """A ``distributed.Client`` for ``scheduler`` (see the module docstring); closes the ones it opens."""
    distributed = _distributed()
    Client = distributed.Client
    if isinstance(scheduler, Client):
        yield scheduler
        return
    if scheduler is None:
        try:
            client = distributed.default_client()
        except ValueError as exc:
            raise InvalidArgumentError(
                "engine='dask' needs scheduler=ADDRESS (e.g. 'tcp://host:8786'), a scheduler file, "
                "a Client or a cluster object; no default dask client is running"
            ) from exc
        yield client
        return
    if isinstance(scheduler, str | Path):
        text = str(scheduler)
        if text.endswith(".json") and Path(text).is_file():
            client = Client(scheduler_file=text)
        elif "://" in text or ":" in text:
            client = Client(text)
        else:
            raise InvalidArgumentError(
                f"scheduler must be an address like 'tcp://host:8786' or a scheduler .json file; got {text!r}"
            )
    elif hasattr(scheduler, "scheduler_address"):
        client = Client(scheduler)
    else:
        raise InvalidArgumentError(
            "scheduler must be an address, a scheduler file, a distributed.Client or a cluster; "
            f"got {scheduler!r}"
        )
    try:
        yield client
    finally:
        client.close()


def _slots(client: Any) -> int:
    nthreads = client.nthreads()
    if not nthreads:
        client.wait_for_workers(1, timeout=120)
        nthreads = client.nthreads()
    return max(1, sum(nthreads.values()))


def _shard_size(n_todo: int, batch_size: int, slots: int) -> int:
    """Images per shard: a multiple of ``batch_size``, ~4 shards per worker thread, 1..32 batches."""
    if _SHARD_SIZE is not None:
        return max(1, int(_SHARD_SIZE))
    batches = -(-n_todo // (batch_size * slots * 4))
    return batch_size * max(1, min(32, batches))


def embed_shards(
    root: Path,
    todo: list[str],
    ex: Extractor,
    *,
    decode: _Decoder,
    scheduler: Any = None,
    batch_size: int = 32,
    threads: int | None = None,
) -> Iterator[tuple[list[str], np.ndarray, np.ndarray, list[tuple[str, str]]]]:
    """Embed ``todo`` on the cluster; yield ``(ids embedded, float32 vectors, float32 colour rows,
    skipped)`` per shard, in order.

    ``decode`` is the image decoder run on the workers (see :data:`_Decoder`).

    ``threads`` is ONNX Runtime's threads per task (default 1: a worker with ``t`` threads
    runs ``t`` shards at once, one decoding and inference pipeline each).
    """
    if not todo:
        return
    with client_for(scheduler) as client:
        slots = _slots(client)
        size = _shard_size(len(todo), batch_size, slots)
        shards = [todo[i : i + size] for i in range(0, len(todo), size)]
        window = 2 * slots
        root_s = str(Path(root).resolve())
        ort_threads = max(1, threads or 1)
        log.info(
            "dask: %d images in %d shards of %d over %d worker threads", len(todo), len(shards), size, slots
        )
        pending: deque[Any] = deque()
        it = iter(shards)

        def submit(shard: list[str]) -> None:
            fut = client.submit(
                _embed_shard, root_s, shard, ex, batch_size, ort_threads, decode, pure=False, retries=1
            )
            pending.append(fut)

        try:
            for shard in it:
                submit(shard)
                if len(pending) >= window:
                    break
            while pending:
                fut = pending.popleft()
                nxt = next(it, None)
                if nxt is not None:
                    submit(nxt)
                result = fut.result()
                fut.release()
                yield result
        finally:
            for fut in pending:
                fut.cancel()


def dask_assign(
    source: str | Path | np.ndarray,
    model: Any,
    *,
    scheduler: Any = None,
    chunk: int = _ASSIGN_CHUNK,
) -> tuple[np.ndarray, np.ndarray]:
    """Nearest centroid of every row, assigned on the cluster in chunks: ``(labels, distances)``.

    ``source``: a ``.npy`` file or a feature store folder (the workers memory-map it: no
    data goes through the client), or an array (shipped chunk by chunk).  ``model`` is a
    fitted :class:`~varsitysrch.KMeansModel` (its PCA, if any, is applied on the workers).
    """
    from ._store import store_paths

    params = (
        np.asarray(model.cluster_centers_, np.float32),
        getattr(model, "pca_mean_", None),
        getattr(model, "pca_components_", None),
    )
    with client_for(scheduler) as client:
        [p_fut] = client.scatter([params], broadcast=True)
        futures = []
        if isinstance(source, str | Path):
            path = Path(source)
            if path.is_dir():
                path = store_paths(path).vectors  # the live generation (store.json names it)
            path_s = str(path.resolve())
            n = int(np.load(path_s, mmap_mode="r").shape[0])
            for s in range(0, n, chunk):
                futures.append(client.submit(_assign_rows, path_s, s, min(n, s + chunk), p_fut, pure=False))
        else:
            X = source
            n = len(X)
            for s in range(0, n, chunk):
                [part] = client.scatter([np.ascontiguousarray(X[s : s + chunk], dtype=np.float32)])
                futures.append(client.submit(_assign_rows, part, 0, 0, p_fut, pure=False))
        labels = np.empty(n, np.int32)
        dists = np.empty(n, np.float32)
        pos = 0
        for fut in futures:
            lab, dst = fut.result()
            labels[pos : pos + len(lab)] = lab
            dists[pos : pos + len(lab)] = dst
            pos += len(lab)
            fut.release()
        if pos != n:
            raise RuntimeError(f"dask assignment returned {pos} rows for {n}")
    return labels, dists
