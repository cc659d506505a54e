"""Near-duplicate images across a feature store: pairs above a cosine threshold, grouped.

:func:`find_duplicates` reads a feature store (ids + L2-normalised vectors, a memory map is
fine) and returns every pair of images whose cosine similarity is at least ``threshold``,
and the groups they form (connected components of the pair graph): the same product
photographed twice, re-uploads, re-encoded, resized, slightly cropped or mirrored copies.
A looser threshold (:data:`VARIANT_THRESHOLD`) also joins colour variants of one product.

No ``n x n`` matrix is ever held: pairs come from a faiss range search,

* ``method="exact"``: blocked flat inner-product search -- one database block and one query
  block of ``chunk`` rows in memory at a time, ``n^2 / 2`` dot products in all;
* ``method="ivf"``: inverted lists -- a spherical k-means with about ``2 sqrt(n)`` lists, each
  image in the lists of its :data:`_IVF_ASSIGN` nearest centroids -- and each list compared with
  itself exactly, in BLAS blocks: about ``4 n^2 / nlist`` dot products, every score exact; it
  misses the pairs whose images share no list (measured against exact in
  ``benchmarks/bench_duplicates.py``: none at the default threshold);
* ``method="auto"``: exact up to :data:`_EXACT_MAX_IMAGES` images, IVF above.

The defaults were chosen on planted duplicates of clothing-small and grocery-train
(``benchmarks/bench_duplicates.py``, figures in ``docs/insight.md``).  A cosine threshold depends
on the features: the quoted figures are for the default extractor (centre crop 256, average
pooling, int8); with another extractor rerun the script on its stores.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from ._errors import InvalidArgumentError
from ._progress import bar as progress_bar
from ._progress import bars_enabled

log = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_EVIDENCE",
    "DEFAULT_THRESHOLD",
    "METHODS",
    "VARIANT_EVIDENCE",
    "VARIANT_THRESHOLD",
    "DuplicateGroup",
    "DuplicatePair",
    "DuplicateReport",
    "build_groups",
    "find_duplicates",
    "similar_pairs",
]


#: Default cosine threshold for duplicates (re-encoded, resized, cropped, mirrored copies).
DEFAULT_THRESHOLD = 0.93
#: Looser threshold that also groups colour variants of one product.
VARIANT_THRESHOLD = 0.88
#: What the two defaults were measured to do, quoted by the HTML report (``benchmarks/bench_duplicates.py``).
DEFAULT_EVIDENCE = (
    "On planted copies of 60 photos from each of two catalogues (clothing, grocery) -- re-encoded, "
    "resized to half, cropped by 5 %, mirrored -- it found 96 % and 95 % of the copies (every mirrored "
    "one, 98-100 % of the re-encoded, 88 % and 82 % of the half-size ones), no pair of different "
    "products of different types, and 8 pairs of different clothing items of the same type."
)
VARIANT_EVIDENCE = (
    "On hue-rotated copies it finds 75 % of the clothing colour variants but only 7 % of the grocery "
    "ones (packaging changes more), and it also joins different products of the same type "
    "(similar jeans on the same hanger): a list to review, not to merge."
)
#: ``method="auto"`` searches exactly up to this many images, with an IVF index above.
_EXACT_MAX_IMAGES = 50_000
#: Pairs kept at most; a threshold so low that more pairs qualify is refused (raise it).
_MAX_PAIRS = 5_000_000
_CHUNK = 8192
#: ``method="ivf"``: each image joins the lists of its this many nearest coarse centroids
_IVF_ASSIGN = 2
METHODS = ("auto", "exact", "ivf")


@dataclass(frozen=True)
class DuplicatePair:
    """Two catalogue images (ids, ``a < b`` in store order) and their cosine similarity."""

    a: str
    b: str
    score: float


@dataclass(frozen=True)
class DuplicateGroup:
    """Images joined by pairs above the threshold (a connected component), in store order."""

    ids: tuple[str, ...]
    #: highest and lowest pair score inside the group (a chain may hold weaker links)
    max_score: float
    min_score: float
    n_pairs: int

    @property
    def size(self) -> int:
        return len(self.ids)


@dataclass
class DuplicateReport:
    """What :func:`find_duplicates` found."""

    threshold: float
    n_images: int
    method: str
    pairs: list[DuplicatePair] = field(default_factory=list)
    groups: list[DuplicateGroup] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def n_duplicate_images(self) -> int:
        """Images in some group."""
        return sum(g.size for g in self.groups)

    def to_dict(self) -> dict[str, Any]:
        return {
            "threshold": self.threshold,
            "n_images": self.n_images,
            "method": self.method,
            "seconds": round(self.seconds, 3),
            "n_pairs": len(self.pairs),
            "n_groups": len(self.groups),
            "n_duplicate_images": self.n_duplicate_images,
            "groups": [
                {"ids": list(g.ids), "max_score": g.max_score, "min_score": g.min_score, "n_pairs": g.n_pairs}
                for g in self.groups
            ],
            "pairs": [asdict(p) for p in self.pairs],
        }


def _check_threshold(threshold: Any, name: str = "threshold") -> float:
    if isinstance(threshold, bool) or not isinstance(threshold, int | float | np.floating):
        raise InvalidArgumentError(f"{name} must be a number in (0, 1]; got {threshold!r}")
    t = float(threshold)
    if not 0.0 < t <= 1.0:
        raise InvalidArgumentError(f"{name} must be in (0, 1]; got {threshold!r}")
    return t


def _f32(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x, dtype=np.float32)


def _progress(it: range, total: int, show: bool, desc: str) -> Iterator[int]:
    if not bars_enabled(show):  # a bar only when stderr is a terminal (see _progress)
        yield from it
        return
    with progress_bar(total=total, desc=desc, unit="img", show_progress=show, leave=False) as bar:
        prev = 0
        for s in it:
            yield s
            bar.update(s - prev)
            prev = s
        bar.update(total - prev)


class _Pairs:
    """Growing (i, j, score) arrays with the :data:`_MAX_PAIRS` guard."""

    def __init__(self, threshold: float, max_pairs: int) -> None:
        self.parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self.count = 0
        self.threshold = threshold
        self.max_pairs = max_pairs

    def add(self, i: np.ndarray, j: np.ndarray, s: np.ndarray) -> None:
        if not len(i):
            return
        self.count += len(i)
        if self.count > self.max_pairs:
            raise InvalidArgumentError(
                f"threshold {self.threshold} is too low for this catalogue: more than {self.max_pairs:,} "
                "pairs of images are above it; raise threshold"
            )
        self.parts.append((i.astype(np.int64), j.astype(np.int64), s.astype(np.float32)))

    def result(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if not self.parts:
            return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32)
        i, j, s = (np.concatenate(p) for p in zip(*self.parts, strict=True))
        order = np.lexsort((j, i))
        i, j, s = i[order], j[order], s[order]
        first = np.r_[True, (i[1:] != i[:-1]) | (j[1:] != j[:-1])]  # a pair found in two lists: once
        return i[first], j[first], s[first]


def similar_pairs(
    X: np.ndarray,
    threshold: float = DEFAULT_THRESHOLD,
    *,
    method: str = "auto",
    chunk: int = _CHUNK,
    assign: int = _IVF_ASSIGN,
    show_progress: bool = False,
    max_pairs: int = _MAX_PAIRS,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every pair of rows ``i < j`` of ``X`` with inner product ``>= threshold``.

    ``X``: L2-normalised rows (float16/float32, a memory map is fine). Returns
    ``(i int64, j int64, score float32)`` sorted by ``(i, j)``; scores are exact inner products.
    """
    t = _check_threshold(threshold)
    if method not in METHODS:
        raise InvalidArgumentError(f"method must be one of {METHODS}; got {method!r}")
    if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
        raise InvalidArgumentError(f"chunk must be a positive integer; got {chunk!r}")
    if getattr(X, "ndim", 0) != 2:
        raise InvalidArgumentError(f"X must be a 2-D matrix; got shape {np.shape(X)}")
    n = len(X)
    if method == "auto":
        method = "exact" if n <= _EXACT_MAX_IMAGES else "ivf"
    pairs = _Pairs(t, max_pairs)
    if n < 2:
        return pairs.result()
    if method == "exact":
        _exact_pairs(X, t, chunk, pairs, show_progress)
    else:
        _ivf_pairs(X, t, chunk, assign, pairs, show_progress)
    return pairs.result()


def _exact_pairs(X: np.ndarray, t: float, chunk: int, out: _Pairs, show: bool) -> None:
    import faiss

    n, dim = X.shape
    index = faiss.IndexFlatIP(dim)
    for jb in _progress(range(0, n, chunk), n, show, "duplicates"):
        B = _f32(X[jb : jb + chunk])
        index.reset()
        index.add(B)
        end = jb + len(B)
        for ib in range(0, end, chunk):  # query blocks up to and including this one: pairs i < j
            Q = B if ib == jb else _f32(X[ib : min(ib + chunk, end)])
            lims, D, I_ = index.range_search(Q, t)
            rows = np.repeat(np.arange(ib, ib + len(Q), dtype=np.int64), np.diff(lims.astype(np.int64)))
            cols = I_.astype(np.int64) + jb
            keep = rows < cols
            out.add(rows[keep], cols[keep], D[keep])


def _ivf_pairs(X: np.ndarray, t: float, chunk: int, assign: int, out: _Pairs, show: bool) -> None:
    """Pairs inside inverted lists: a spherical k-means of ``~2 sqrt(n)`` lists, every image in the
    lists of its ``assign`` nearest centroids, and each list compared with itself exactly (BLAS
    blocks of at most ``chunk`` rows).  Work is about ``assign^2 n^2 / nlist`` dot products."""
    import faiss

    n, dim = X.shape
    nlist = int(max(1, min(round(2 * np.sqrt(n)), n // 64)))
    rng = np.random.default_rng(0)
    train = _f32(X[np.sort(rng.choice(n, min(n, 64 * nlist), replace=False))])
    km = faiss.Kmeans(dim, nlist, niter=10, spherical=True, seed=0, verbose=False)
    km.train(train)
    C = np.asarray(km.centroids, np.float32)
    a = min(assign, nlist)
    lists = np.empty((n, a), np.int64)
    for s in range(0, n, chunk):
        S = _f32(X[s : s + chunk]) @ C.T
        lists[s : s + len(S)] = np.argpartition(-S, a - 1, axis=1)[:, :a] if a < nlist else np.arange(a)
    flat = lists.ravel()
    rows_all = np.repeat(np.arange(n, dtype=np.int64), a)
    order = np.argsort(flat, kind="stable")  # rows stay sorted inside a list (memory-map friendly)
    bounds = np.searchsorted(flat[order], np.arange(nlist + 1))
    for c in _progress(range(nlist), nlist, show, "duplicates (ivf)"):
        rows = rows_all[order[bounds[c] : bounds[c + 1]]]
        if len(rows) < 2:
            continue
        B = _f32(X[rows])
        for qs in range(0, len(rows), chunk):
            sims = B[qs : qs + chunk] @ B.T
            qi, cj = np.nonzero(sims >= t)
            keep = qi + qs < cj
            qi, cj = qi[keep], cj[keep]
            out.add(rows[qi + qs], rows[cj], sims[qi, cj])


def _group_pairs(n: int, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """Connected-component label of each of ``n`` rows under the pairs ``(i, j)`` (singletons included)."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    g = coo_matrix((np.ones(len(i), np.int8), (i, j)), shape=(n, n))
    _, labels = connected_components(g, directed=False)
    return np.asarray(labels, np.int64)


def build_groups(ids: list[str], i: np.ndarray, j: np.ndarray, s: np.ndarray) -> list[DuplicateGroup]:
    """Groups of two or more images, largest first (ties: strongest, then first id)."""
    if not len(i):
        return []
    labels = _group_pairs(len(ids), i, j)
    pl = labels[i]
    po = np.argsort(pl, kind="stable")
    _, p_start, p_count = np.unique(pl[po], return_index=True, return_counts=True)
    rows = np.unique(np.concatenate([i, j]))  # sorted: members come out in store order
    ro = np.argsort(labels[rows], kind="stable")
    _, r_start, r_count = np.unique(labels[rows][ro], return_index=True, return_counts=True)
    groups = []
    for ps, pc, rs, rc in zip(p_start, p_count, r_start, r_count, strict=True):
        ss = s[po[ps : ps + pc]]
        members = rows[ro[rs : rs + rc]]
        groups.append(
            DuplicateGroup(
                tuple(ids[int(r)] for r in members),
                round(float(ss.max()), 6),
                round(float(ss.min()), 6),
                int(pc),
            )
        )
    groups.sort(key=lambda g: (-g.size, -g.max_score, g.ids[0]))
    return groups


def find_duplicates(
    features_folder: str | os.PathLike[str],
    threshold: float = DEFAULT_THRESHOLD,
    *,
    method: str = "auto",
    show_progress: bool = True,
    max_pairs: int = _MAX_PAIRS,
) -> DuplicateReport:
    """Near-duplicate pairs and groups of a feature store (see the module docstring).

    Args:
        features_folder: a store written by :func:`~varsitysrch.extract_features`.
        threshold: cosine similarity of the features, in ``(0, 1]``; :data:`DEFAULT_THRESHOLD`
            finds re-encoded, resized, slightly cropped and mirrored copies,
            :data:`VARIANT_THRESHOLD` also colour variants.
        method: ``"auto"``, ``"exact"`` or ``"ivf"``.
        show_progress: a progress bar over the catalogue.
        max_pairs: refuse thresholds that make more pairs than this.
    """
    from ._store import FeatureStore

    t = _check_threshold(threshold)
    store = FeatureStore.open(features_folder)
    t0 = time.perf_counter()
    n = len(store)
    used = method if method != "auto" else ("exact" if n <= _EXACT_MAX_IMAGES else "ivf")
    i, j, s = similar_pairs(store.vectors, t, method=used, show_progress=show_progress, max_pairs=max_pairs)
    ids = store.ids
    pairs = [DuplicatePair(ids[a], ids[b], round(float(c), 6)) for a, b, c in zip(i, j, s, strict=True)]
    groups = build_groups(ids, i, j, s)
    rep = DuplicateReport(t, n, used, pairs, groups, time.perf_counter() - t0)
    log.info(
        "%d duplicate pairs in %d groups among %d images (threshold %.3f)", len(pairs), len(groups), n, t
    )
    return rep
