"""The search index of large catalogues: a faiss IVF beside the user's K-means clusters.

The user's ``k`` clusters are chosen for browsing (tens to a few thousand); as a search
partition they are too coarse at scale (measured in ``docs/scale.md``).  Above
:data:`IVF_THRESHOLD` images, :func:`~varsitysrch._searchindex.build_search_index`
therefore builds a finer inverted-file partition used only for search:

* ``nlist = round(4 * sqrt(N))`` lists (at most ``N / 39``: faiss's floor of training
  points per list), spherical K-means (cosine), trained in two levels: ``sqrt(nlist)``
  coarse cells, then each cell is split into lists in proportion to its size.  Training
  and assignment are matrix products over one cell at a time instead of comparing every
  vector with every list; an item's list is the nearest list of its cell (queries compare
  against all ``nlist`` centroids; the calibrated ``nprobe`` absorbs the difference).
  Build times are in ``docs/scale.md`` (``benchmarks/bench_scale.py``).
* vectors are stored as float16 codes (faiss ``IndexIVFScalarQuantizer``, ``QT_fp16``,
  inner product, no residual): half the memory of float32.
* ``nprobe`` is calibrated at build time: the fewest lists whose search reaches the
  target recall@10 (0.95) against exact search, on held-out catalogue queries.

The model file stores the list centroids (``nlist x dim`` float32) and each image's list
(int32) as plain ``.npy`` arrays -- never a serialized faiss index or a pickle.  A
:class:`~varsitysrch.Searcher` rebuilds the faiss index from them and the feature store
at load time (encoding only, no clustering: a few seconds per million vectors).  Hits
still report the image's K-means cluster; only the candidate generation differs.

In IVF mode ``nprobe=None`` uses the IVF's calibrated value, an explicit ``nprobe`` is a
number of IVF lists (checked against ``[1, nlist]`` by :class:`varsitysrch._candidates.ListIndex`),
and ``exact=True`` scans every list.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from ._errors import ModelFileError
from ._neighbours import exact_topk, list_recall, nearest_centroid

log = logging.getLogger(__name__)

__all__ = [
    "IVF_THRESHOLD",
    "IVFParts",
    "IVFSearch",
    "assign_lists",
    "build_faiss_index",
    "build_ivf",
    "calibrate_ivf",
]


#: Catalogues with more images than this get an IVF search index (``ivf=None`` in train_clusters).
IVF_THRESHOLD = 200_000
#: faiss warns below 39 training points per centroid; lists never hold fewer on average.
_MIN_POINTS_PER_LIST = 39
#: Cells with more than this many lists are trained in two levels.
_TWO_LEVEL_ABOVE = 256
_CHUNK = 65536
_SMALL_KMEANS = 2_000_000_000  # points x centroids x dim below which K-means runs on one thread


def _default_nlist(n: int) -> int:
    """``round(4 * sqrt(n))``, at most ``n // 39``, at least 1."""
    return int(max(1, min(round(4 * math.sqrt(n)), n // _MIN_POINTS_PER_LIST)))


def _f32(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x, dtype=np.float32)


# ---------------------------------------------------------------------------- training
def _spherical_kmeans(x: np.ndarray, k: int, seed: int, niter: int = 20) -> np.ndarray:
    x = _f32(x)
    if k <= 1 or len(x) <= k:
        c = x.mean(0, keepdims=True) if k <= 1 else x[:k].copy()
        return c / np.maximum(np.linalg.norm(c, axis=1, keepdims=True), 1e-12)
    import faiss

    # small problems run single-threaded: OpenMP's barriers cost more than they save (14x slower
    # with 2 threads on a busy 2-core machine), and a cell's K-means is small
    threads = 1 if len(x) * k * x.shape[1] < _SMALL_KMEANS else faiss.omp_get_max_threads()
    km = faiss.Kmeans(
        x.shape[1],
        k,
        niter=niter,
        seed=seed,
        spherical=True,
        verbose=False,
        max_points_per_centroid=max(1, -(-len(x) // k)),
        min_points_per_centroid=1,
    )
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(threads)
    try:
        km.train(x)
    finally:
        faiss.omp_set_num_threads(before)
    return np.asarray(km.centroids, np.float32)


def assign_lists(X: np.ndarray, centroids: np.ndarray, chunk: int = _CHUNK) -> np.ndarray:
    """Nearest list of every row (chunked): ``int32 [n]``.

    List centroids are unit vectors (spherical K-means), so the nearest by Euclidean distance
    is the nearest by inner product.
    """
    return nearest_centroid(X, centroids, chunk)[0]


def _split(total: int, sizes: np.ndarray) -> np.ndarray:
    """Share ``total`` lists among cells in proportion to ``sizes`` (largest remainder, >= 1 each)."""
    nz = sizes > 0
    want = total * sizes / max(1, sizes.sum())
    got = np.where(nz, np.maximum(1, np.floor(want)), 0).astype(np.int64)
    got = np.minimum(got, sizes)
    rem = want - got
    for c in np.argsort(-rem):
        if got.sum() >= total:
            break
        if nz[c] and got[c] < sizes[c]:
            got[c] += 1
    return got


def _train_ivf(
    X: np.ndarray,
    nlist: int | None = None,
    *,
    random_state: int = 0,
    points_per_list: int = 64,
    chunk: int = _CHUNK,
) -> tuple[np.ndarray, np.ndarray]:
    """List centroids and each row's list: ``(float32 [nlist, dim], int32 [n])``.

    One level up to :data:`_TWO_LEVEL_ABOVE` lists; above, ``sqrt(nlist)`` coarse cells
    then proportional lists per cell.  Each K-means trains on at most
    ``points_per_list`` points per centroid.
    """
    n = len(X)
    nlist = _default_nlist(n) if nlist is None else max(1, min(int(nlist), n))
    rng = np.random.default_rng(random_state)

    def sample(rows: np.ndarray | None, size: int, m: int) -> np.ndarray:
        if size <= m:
            return np.arange(size) if rows is None else rows
        pick = np.sort(rng.choice(size, m, replace=False))
        return pick if rows is None else rows[pick]

    if nlist <= _TWO_LEVEL_ABOVE:
        C = _spherical_kmeans(X[sample(None, n, nlist * points_per_list)], nlist, random_state)
        return C, assign_lists(X, C, chunk)
    nc1 = round(math.sqrt(nlist))
    C1 = _spherical_kmeans(X[sample(None, n, nc1 * 256)], nc1, random_state)
    a1 = assign_lists(X, C1, chunk)
    order = np.argsort(a1, kind="stable")
    sizes = np.bincount(a1, minlength=nc1)
    starts = np.concatenate([[0], np.cumsum(sizes)])
    share = _split(nlist, sizes)
    cents: list[np.ndarray] = []
    lists = np.empty(n, np.int32)
    offset = 0
    for c in range(nc1):
        if share[c] == 0:
            continue
        members = np.sort(order[starts[c] : starts[c + 1]])
        tr = sample(members, len(members), int(share[c]) * points_per_list)
        Cc = _spherical_kmeans(X[tr], int(share[c]), random_state + 1 + c)
        for s in range(0, len(members), chunk):
            rows = members[s : s + chunk]
            lists[rows] = offset + assign_lists(X[rows], Cc, chunk)
        cents.append(Cc)
        offset += len(Cc)
    return np.concatenate(cents).astype(np.float32), lists


# ---------------------------------------------------------------------------- the faiss index
def _probe(nprobe: int) -> Any:
    """Per-call search parameters (thread-safe: the index's own ``nprobe`` is never changed)."""
    import faiss

    params = faiss.SearchParametersIVF()
    params.nprobe = int(nprobe)
    return params


def build_faiss_index(centroids: np.ndarray, lists: np.ndarray, X: np.ndarray, chunk: int = _CHUNK) -> Any:
    """An ``IndexIVFScalarQuantizer`` (fp16 codes, inner product, no residual) filled with preassigned rows.

    The fp16 code of a vector is its IEEE half-precision bytes, so the inverted lists are
    filled directly with the (float16) rows -- no encoding pass -- about ``chunk`` rows at a
    time in list order.
    """
    import faiss

    C = _f32(centroids)
    nlist, d = C.shape
    quantizer = faiss.IndexFlatIP(d)
    quantizer.add(C)
    index = faiss.IndexIVFScalarQuantizer(
        quantizer, d, nlist, faiss.ScalarQuantizer.QT_fp16, faiss.METRIC_INNER_PRODUCT, False
    )
    index.train(C)  # the quantizer already holds nlist centroids: nothing is clustered
    # (faiss's Python constructor keeps a reference to the quantizer)
    lists = np.asarray(lists)
    order = np.argsort(lists, kind="stable")
    starts = np.concatenate([[0], np.cumsum(np.bincount(lists, minlength=nlist))])
    invlists = index.invlists
    assert invlists is not None
    lo = 0
    while lo < nlist:
        hi = lo + 1
        while hi < nlist and starts[hi + 1] - starts[lo] <= chunk:
            hi += 1
        rows = order[starts[lo] : starts[hi]]
        sel = np.sort(rows)  # read the store in file order, then put the rows in list order
        codes = np.asarray(X[sel], dtype=np.float16)[np.searchsorted(sel, rows)].view(np.uint8)
        ids = np.ascontiguousarray(rows, dtype=np.int64)
        for li in range(lo, hi):
            a, b = int(starts[li] - starts[lo]), int(starts[li + 1] - starts[lo])
            if b > a:
                invlists.add_entries(li, b - a, faiss.swig_ptr(ids[a:b]), faiss.swig_ptr(codes[a:b]))
        lo = hi
    index.ntotal = len(lists)
    return index


def calibrate_ivf(
    index: Any,
    X: np.ndarray,
    target_recall: float = 0.95,
    *,
    n_queries: int = 200,
    top: int = 10,
    random_state: int = 0,
) -> tuple[int, dict[str, float]]:
    """Fewest lists whose search reaches ``target_recall`` recall@``top`` vs exact (held-out self-queries).

    Returns ``(nprobe, {nprobe: recall})`` over a roughly geometric grid of ``nprobe``.
    """

    n, nlist = len(X), int(index.nlist)
    if n <= top + 1:
        return nlist, {str(nlist): 1.0}
    rng = np.random.default_rng(random_state)
    q = rng.choice(n, size=min(n_queries, n), replace=False)
    Q = _f32(X[q])
    exact, _ = exact_topk(Q, X, top, exclude=q)
    grid = sorted({min(nlist, max(1, round(1.5**i))) for i in range(0, 64)} | {nlist})
    curve: dict[str, float] = {}
    chosen = nlist
    for p in grid:
        _, got = index.search(Q, top + 1, params=_probe(p))
        found = [[r for r in got[i] if r != q[i] and r >= 0][:top] for i in range(len(q))]
        rec = float(list_recall(found, exact.tolist(), top).mean())
        curve[str(p)] = round(rec, 4)
        if rec >= target_recall:
            chosen = p
            break
    return int(chosen), curve


@dataclass
class IVFParts:
    """What the model file holds about the IVF: centroids, lists and the calibrated nprobe."""

    centroids: np.ndarray
    lists: np.ndarray
    nprobe: int
    curve: dict[str, float]
    seconds: float = 0.0

    @property
    def nlist(self) -> int:
        return len(self.centroids)

    def config(self, target_recall: float) -> dict[str, Any]:
        return {
            "nlist": self.nlist,
            "nprobe": int(self.nprobe),
            "target_recall": target_recall,
            "recall_curve": self.curve,
            "storage": "SQfp16",
            "metric": "inner_product",
            "seconds": round(self.seconds, 3),
        }

    def arrays(self) -> dict[str, np.ndarray]:
        return {"ivf_centroids": _f32(self.centroids), "ivf_lists": self.lists.astype(np.int32)}


def build_ivf(
    X: np.ndarray,
    *,
    nlist: int | None = None,
    target_recall: float = 0.95,
    random_state: int = 0,
    n_queries: int = 200,
) -> tuple[IVFParts, Any]:
    """Train, fill and calibrate an IVF over ``X``: ``(parts for the model file, faiss index)``."""
    t0 = time.perf_counter()
    C, lists = _train_ivf(X, nlist, random_state=random_state)
    index = build_faiss_index(C, lists, X)
    nprobe, curve = calibrate_ivf(index, X, target_recall, n_queries=n_queries, random_state=random_state)
    parts = IVFParts(C, lists, nprobe, curve, time.perf_counter() - t0)
    log.info(
        "IVF: %d lists over %d vectors, nprobe %d (recall@10 %s) in %.1fs",
        parts.nlist,
        len(X),
        nprobe,
        curve.get(str(nprobe)),
        parts.seconds,
    )
    return parts, index


class IVFSearch:
    """A faiss IVF index rebuilt from the model file's arrays and the catalogue vectors."""

    def __init__(
        self, centroids: np.ndarray, lists: np.ndarray, vectors: np.ndarray, nprobe: int, *, index: Any = None
    ) -> None:
        if len(lists) != len(vectors):
            raise ModelFileError(f"IVF lists ({len(lists)}) and vectors ({len(vectors)}) differ in length")
        self.vectors = vectors
        self.index = index if index is not None else build_faiss_index(centroids, lists, vectors)
        self.nlist = len(centroids)
        self.nprobe = int(max(1, min(nprobe, self.nlist)))
        self._centroids = _f32(centroids)
        self._sizes = np.bincount(np.asarray(lists, np.int64), minlength=self.nlist)

    def images_in(self, v: np.ndarray, nprobe: int) -> int:
        """How many images the ``nprobe`` lists nearest to ``v`` hold (what a search at ``nprobe`` scans)."""
        near = np.argsort(-(self._centroids @ _f32(v).reshape(-1)), kind="stable")[: max(1, int(nprobe))]
        return int(self._sizes[near].sum())

    @classmethod
    def from_model(cls, mf: Any, vectors: np.ndarray) -> IVFSearch | None:
        """The IVF of a model file (``None`` when it has none)."""
        cfg = mf.config.get("ivf")
        arrays = getattr(mf, "arrays", {}) or {}
        if not cfg or "ivf_centroids" not in arrays or "ivf_lists" not in arrays:
            return None
        C, lists = arrays["ivf_centroids"], arrays["ivf_lists"]
        if C.ndim != 2 or C.shape[1] != vectors.shape[1] or int(lists.max(initial=0)) >= len(C):
            raise ModelFileError("corrupt model file (IVF centroids or lists do not match the index)")
        t0 = time.perf_counter()
        ivf = cls(C, lists, vectors, int(cfg.get("nprobe", 1)))
        log.info(
            "rebuilt the IVF index (%d lists, %d vectors) in %.1fs",
            ivf.nlist,
            len(vectors),
            time.perf_counter() - t0,
        )
        return ivf

    def search(
        self, v: np.ndarray, top_n: int, *, nprobe: int | None = None, exact: bool = False
    ) -> tuple[np.ndarray, np.ndarray]:
        """``(rows, cosine scores)`` of the best ``top_n`` rows, best first (ties by row)."""

        n = int(self.index.ntotal)
        need = min(int(top_n), n)
        p = self.nprobe if nprobe is None else max(1, min(int(nprobe), self.nlist))
        if exact:
            p = self.nlist
        q = _f32(v.reshape(1, -1))
        while True:
            _, idx = self.index.search(q, need, params=_probe(p))
            rows = idx[0][idx[0] >= 0]
            if len(rows) >= need or p >= self.nlist:
                break
            p = min(self.nlist, p * 2)  # the probed lists hold fewer than top_n images
        rows = rows.astype(np.int64)
        scores = _f32(self.vectors[np.sort(rows)]) @ q[0]  # exact scores, not float16 ones
        rows = np.sort(rows)
        order = np.lexsort((rows, -scores))
        return rows[order], scores[order]
