"""The neighbour primitives every stage shares, each written once.

* :func:`nearest_centroid` - the nearest centroid (squared Euclidean) of every row, in chunks.
  K-means assignment, choose-k, updates, IVF lists and the Dask engine all call it.
* :func:`exact_topk` - exact top-k rows by inner product, streaming the catalogue in chunks
  (a float16 memory map is fine), with optional held-out self-queries.
* :func:`probe_recall` - recall@top of cluster-restricted search against exact search, for
  every number of probed clusters, given the exact neighbours and each query's cluster order.
  ``nprobe`` calibration at training time and choose-k's retrieval panel both use it.
* :func:`list_recall` - recall of returned lists against reference lists (IVF calibration,
  evaluation).

Everything here is plain numpy over float32 and has no state.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["centroid_order", "exact_topk", "list_recall", "nearest_centroid", "probe_recall"]


_CHUNK = 65536


def _f32(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x, dtype=np.float32)


def nearest_centroid(
    X: np.ndarray, centroids: np.ndarray, chunk: int = _CHUNK
) -> tuple[np.ndarray, np.ndarray]:
    """Nearest centroid (squared Euclidean) of every row of ``X``: ``(labels int32, distances float32)``.

    ``X`` may be a memory map of any float dtype; one chunk is converted at a time.
    Distances are Euclidean (the square root of the squared distance, clipped at 0).
    """
    C = _f32(centroids)
    labels = np.empty(len(X), np.int32)
    dists = np.empty(len(X), np.float32)
    c2 = (C**2).sum(1)
    for s in range(0, len(X), chunk):
        x = _f32(X[s : s + chunk])
        d = x @ C.T  # ||x||^2 is the same for every centroid: add it after the argmin
        d *= -2.0
        d += c2[None, :]
        j = d.argmin(1)
        labels[s : s + chunk] = j
        best = d[np.arange(len(x)), j] + np.einsum("ij,ij->i", x, x)
        dists[s : s + chunk] = np.sqrt(np.maximum(best, 0.0))
    return labels, dists


def centroid_order(Q: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Clusters sorted from nearest to farthest for each query row: int64 ``[q, k]``."""
    Qf, C = _f32(Q), _f32(centroids)
    d = (Qf**2).sum(1)[:, None] + (C**2).sum(1)[None, :] - 2.0 * (Qf @ C.T)
    return np.argsort(d, axis=1, kind="stable")


def exact_topk(
    Q: np.ndarray, X: np.ndarray, k: int, *, exclude: np.ndarray | None = None, chunk: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-``k`` rows of ``X`` by inner product for each query, streaming ``X`` in chunks.

    ``X`` may be a float16 memory map; only one chunk is converted at a time.  ``exclude[i]``
    (a row of ``X``) is never returned for query ``i`` (held-out self-queries).
    Returns ``(rows [q, k] int64, scores [q, k] float32)``, best first (ties by row order).
    ``chunk`` (rows of ``X`` per step) defaults to about 4M scores per step: small chunks keep
    the per-chunk partial sort cheap for many queries, large ones the matrix product efficient.
    """
    Q = _f32(Q)
    nq, n = len(Q), len(X)
    if chunk is None:
        chunk = int(min(_CHUNK, max(1024, (1 << 22) // max(nq, 1))))
    k = min(k, n - (1 if exclude is not None else 0))
    best_s = np.full((nq, k), -np.inf, np.float32)
    best_i = np.full((nq, k), -1, np.int64)
    ar = np.arange(nq)
    for s in range(0, n, chunk):
        x = _f32(X[s : s + chunk])
        S = Q @ x.T
        if exclude is not None:
            hit = (exclude >= s) & (exclude < s + len(x))
            S[ar[hit], exclude[hit] - s] = -np.inf
        # the chunk's own top k first (cheap), then merge with the running best
        if S.shape[1] > k:
            part = np.argpartition(-S, k - 1, axis=1)[:, :k]
            cs_new = np.take_along_axis(S, part, 1)
            ci_new = part + s
        else:
            cs_new = S
            ci_new = np.broadcast_to(np.arange(s, s + len(x)), S.shape)
        cs = np.concatenate([best_s, cs_new], axis=1)
        ci = np.concatenate([best_i, ci_new], axis=1)
        top = np.argpartition(-cs, k - 1, axis=1)[:, :k]
        best_s = np.take_along_axis(cs, top, 1)
        best_i = np.take_along_axis(ci, top, 1)
    order = np.lexsort((best_i, -best_s), axis=1) if nq else np.zeros((0, k), np.int64)
    return np.take_along_axis(best_i, order, 1), np.take_along_axis(best_s, order, 1)


def probe_recall(exact: np.ndarray, labels: np.ndarray, order: np.ndarray) -> np.ndarray:
    """Recall of cluster-restricted search vs exact, for nprobe = 1..k: float64 ``[k]``.

    ``exact`` [q, top] are each query's exact neighbours (rows), ``labels`` every row's
    cluster, ``order`` [q, k] each query's clusters nearest first (:func:`centroid_order`).
    Ranking inside the probed clusters is exact, so an exact neighbour is found exactly
    when its cluster is among the first ``nprobe``: ``recall[p-1]`` is the share of exact
    neighbours whose cluster has probe rank < p.
    """
    q, k = order.shape
    if exact.size == 0:
        return np.ones(k)
    rank_of = np.empty_like(order)
    rank_of[np.arange(q)[:, None], order] = np.arange(k)[None, :]
    vis = np.take_along_axis(rank_of, np.asarray(labels)[exact], axis=1)
    return np.cumsum(np.bincount(vis.ravel(), minlength=k)) / vis.size


def list_recall(found: Sequence[Sequence[int]], reference: Sequence[Sequence[int]], top: int) -> np.ndarray:
    """Per query, the share of ``reference[i][:top]`` present in ``found[i][:top]``."""
    out = np.empty(len(reference))
    for i, (f, r) in enumerate(zip(found, reference, strict=True)):
        ref = [int(x) for x in list(r)[:top] if int(x) >= 0]
        got = {int(x) for x in list(f)[:top] if int(x) >= 0}
        out[i] = len(got.intersection(ref)) / len(ref) if ref else 1.0
    return out
