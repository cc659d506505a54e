"""k-reciprocal re-ranking (Zhong et al., CVPR 2017) over the catalogue's own neighbour graph.

A search stage, on by default: models trained by default store the graph
(``TrainOptions.rerank_graph=None``: every model without an IVF) and ``SearchOptions.rerank=None``
re-ranks when the model has a current graph (:func:`model_graph`; ``"none"``: off); measured on the
three dev domains in ``docs/quality.md``, "Phase B".  Two halves:

**Offline, in the model file** (:class:`NeighbourGraph`): every catalogue image's ``k1``
nearest catalogue images in the ranking space (the search PCA when the model has one, else
the raw vectors; the image itself left out), best first, ties by row: ``rerank_nn``
(``int32 [n, k]``) and their cosines ``rerank_sims`` (``float32 [n, k]``), ``k = min(k1,
n - 1)``; 8 bytes per neighbour, 160 bytes per image at ``k1 = 20``.  :func:`_build_graph` finds
them exactly, ``_BLOCK`` images at a time against the whole catalogue
(:func:`varsitysrch._neighbours.exact_topk`, memory bounded by the block): ``n**2 * d``
multiply-adds, the cost stated in ``docs/quality.md``.  Above :data:`_EXACT_MAX` images a K-means
model builds it through its own clusters at the calibrated ``nprobe`` instead
(:func:`_cluster_graph`, about ``nprobe / clusters`` of that; approximate as a probed search is),
and an update rebuilds it that way.  :func:`_update_graph` keeps it equal to a
rebuild after ``update`` (ties aside): new images get their lists; a kept image whose list loses
a removed image is searched again; every other kept image merges the new images into its list
(one of them beats its ``k1``-th neighbour only if it enters the top ``k1``).  A large catalogue
(a model with an IVF, above ``_index.IVF_THRESHOLD`` images) builds it through its IVF instead
(:func:`_ivf_graph`: each image searched at the calibrated ``nprobe``, approximate as the IVF's
search is) and an update rebuilds it that way.  The model records
the graph with the store generation it was made for (``model.json`` ``rerank``): a graph that
does not match the model's catalogue is *stale* and searching with it is refused in words.

**Per query** (:func:`rerank`), over the pipeline's top :data:`POOL` candidates, vectorised:
the k-reciprocal sets ``R(i, k1)`` (``i`` and the neighbours that have ``i`` among their own
``k1``), expanded by each member's ``R(j, k1/2)`` when two thirds of it lie in the set,
``exp(-d)`` weights (``d = 2 - 2 cos``), local query expansion over each image's ``k2``
nearest, and the Jaccard distance between the query's weights and each candidate's;
candidates are ordered by ``(1 - lambda) Jaccard + lambda d / 2``.  The query's own set is made
from its top-``k1`` candidates: a candidate ``j`` is in it when the query is closer to ``j`` than
``j``'s ``k1``-th neighbour (a catalogue image searched by id uses its own set).  A catalogue
image's own weights depend only on the graph, so each is computed once per loaded model and
kept (a cache of at most ``_CACHE_ROWS`` rows): a query then costs about 2-3 ms on the dev
domains, 10-25 ms while the rows it touches are first computed.
**Keep first**: the first hit (after any copies of the query in front) keeps its place, only
the rest is re-ordered -- the variant measured without a recall@1 loss.
"""

from __future__ import annotations

import functools
import logging
import time
import weakref
from dataclasses import dataclass
from typing import Any

import numpy as np

from ._errors import IncompatibleModelError, InvalidArgumentError
from ._neighbours import exact_topk

log = logging.getLogger(__name__)

#: neighbours per image in the graph, and the local query expansion's group size
_K1, _K2 = 20, 6
#: weight of the plain distance in the final distance (the rest: Jaccard)
_LAMBDA = 0.3
#: candidates re-ordered per query (fetched from the index when the search needs fewer)
POOL = 100
#: catalogue images searched at a time while building the graph (memory: _BLOCK x chunk scores)
_BLOCK = 256
#: the largest catalogue whose graph is built exactly (``n**2 * d``, 1280-d: 1.9 s at 10k images,
#: 0.23x train_clusters there; 17.5 s at 20k, as long as training); above it a K-means model's graph
#: is built through its clusters (:func:`_cluster_graph`: 0.09x train_clusters at 20k and 100k,
#: 0.94-0.97 of the exact lists; ``docs/quality.md``, Phase B)
_EXACT_MAX = 10_000
#: the first-pass score at which a candidate is a copy of the query (kept in front; query
#: expansion's ``_postprocess.QE_SELF_COSINE``)
_COPY_COSINE = 0.99


def check_rerank(value: Any) -> str | None:
    """``SearchOptions.rerank``: ``None`` (the model's: on when it has a neighbour graph),
    ``"none"`` (off) or ``"k-reciprocal"`` (on; a model without a graph is refused)."""
    if value is None:
        return None
    if isinstance(value, str):
        v = value.strip().lower()
        if v == "":
            return None
        if v in ("none", "off"):
            return "none"
        if v in ("k-reciprocal", "kreciprocal", "k_reciprocal"):
            return "k-reciprocal"
    raise InvalidArgumentError(
        f"rerank must be None (the model's), 'none' or 'k-reciprocal'; got {value!r}", param="rerank"
    )


def model_graph(
    config: dict[str, Any], arrays: dict[str, np.ndarray], model_path: Any, rerank: str | None
) -> NeighbourGraph | None:
    """The graph a search uses: ``rerank="k-reciprocal"`` -> the model's (refused in words when it
    has none or a stale one, :func:`searcher_graph`); ``"none"`` -> none; ``None`` (the default)
    -> the model's when it has a current one, else none (a model trained without a graph, or
    before this version, searches as before; a stale graph is skipped with a warning)."""
    if rerank == "none":
        return None
    if rerank is not None:
        return searcher_graph(config, arrays, model_path)
    g = _graph_from_model(config, arrays, int(config.get("n_images", 0)))
    if g is None:
        return None
    why = _stale_reason(config, arrays, g)
    if why is not None:
        _warn_stale(str(model_path), why)
        return None
    return g


@functools.lru_cache(maxsize=64)
def _warn_stale(model_path: str, why: str) -> None:
    """Said once per model and reason, not on every search of a stale model (the search path)."""
    log.warning("model %s: its neighbour graph is stale (%s); searching without re-ranking", model_path, why)


# ====================================================================== the graph
@dataclass(frozen=True)
class NeighbourGraph:
    """The catalogue's ``k1``-NN graph in the ranking space (see the module docstring)."""

    nn: np.ndarray  #: int32 [n, k]: each row's nearest rows, best first (itself left out)
    sims: np.ndarray  #: float32 [n, k]: their cosines
    k1: int  #: the neighbours asked for (``k = min(k1, n - 1)``)

    @property
    def k(self) -> int:
        return int(self.nn.shape[1])

    @property
    def kh(self) -> int:
        """The half neighbourhood of the set expansion, ``round(k1 / 2)`` (at most ``k``)."""
        return min(self.k, max(1, round(self.k1 / 2)))

    @property
    def nbytes(self) -> int:
        return int(self.nn.nbytes + self.sims.nbytes)


def _f32(X: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(X, dtype=np.float32)


def _topk_rows(C: np.ndarray, rows: np.ndarray, k: int, block: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-``k`` of ``rows`` against all of ``C`` (each row left out of its own list)."""
    nn = np.empty((len(rows), k), np.int32)
    sims = np.empty((len(rows), k), np.float32)
    for s in range(0, len(rows), block):
        b = rows[s : s + block]
        i, v = exact_topk(_f32(C[b]), C, k, exclude=b)
        nn[s : s + len(b)], sims[s : s + len(b)] = i, v
    return nn, sims


def _build_graph(C: np.ndarray, k1: int = _K1, *, block: int = _BLOCK) -> NeighbourGraph:
    """The exact ``k1``-NN graph of the catalogue ``C`` (``[n, d]`` unit rows, ranking space),
    ``block`` rows at a time."""
    if isinstance(k1, bool) or not isinstance(k1, int | np.integer) or k1 < 1:
        raise InvalidArgumentError(f"k1 must be a positive integer; got {k1!r}", param="k1")
    n = len(C)
    k = min(int(k1), n - 1)
    if k < 1:
        return NeighbourGraph(np.zeros((n, 0), np.int32), np.zeros((n, 0), np.float32), int(k1))
    nn, sims = _topk_rows(C, np.arange(n), k, block)
    return NeighbourGraph(nn, sims, int(k1))


def _ivf_graph(
    X: np.ndarray, centroids: np.ndarray, lists: np.ndarray, nprobe: int, k1: int = _K1, *, block: int = 16384
) -> NeighbourGraph:
    """The ``k1``-NN graph of a large catalogue through its IVF (the raw space it ranks in):
    each image searched at ``nprobe`` lists (faiss, every core), ``block`` at a time, with the
    IVF's own scores (its float16 codes: exact for a float16 store, within float16 rounding of
    a float32 one), sorted as :func:`_build_graph` sorts them.  Approximate: a neighbour outside
    the probed lists is missed (the IVF's calibrated recall)."""
    from ._index import _probe, build_faiss_index

    n = len(X)
    k = min(int(k1), n - 1)
    index = build_faiss_index(centroids, lists, X)
    params = _probe(max(1, int(nprobe)))
    nn = np.empty((n, k), np.int32)
    sims = np.empty((n, k), np.float32)
    for s in range(0, n, block):
        Q = _f32(X[s : s + block])
        rows = np.arange(s, s + len(Q))
        score, found = index.search(Q, k + 1, params=params)
        ok = (found >= 0) & (found != rows[:, None])  # not the image itself, nor a missing result
        score = np.where(ok, score, -np.inf).astype(np.float32)
        order = np.lexsort((np.where(ok, found, n), -score), axis=1)[:, :k]
        nn[s : s + len(Q)] = np.take_along_axis(np.where(ok, found, 0), order, 1)
        sims[s : s + len(Q)] = np.take_along_axis(score, order, 1)
    if not np.isfinite(sims).all():  # a probe that found fewer than k others: search those exactly
        short = np.flatnonzero(~np.isfinite(sims).all(axis=1))
        nn[short], sims[short] = _topk_rows(X, short, k, _BLOCK)
    return NeighbourGraph(nn, sims, int(k1))


def _cluster_graph(
    C: np.ndarray,
    X: np.ndarray,
    kmeans: Any,
    labels: np.ndarray,
    nprobe: int,
    k1: int = _K1,
    *,
    block: int = 4096,
) -> NeighbourGraph:
    """The ``k1``-NN graph of a K-means model's catalogue through its own clusters: each image
    searched as a search by id searches it (:meth:`varsitysrch._candidates.ClusterIndex.probed`):
    the ``nprobe`` clusters nearest to its raw vector ``X[i]`` (``kmeans.cluster_order``), more
    until they hold ``k + 1`` images, exact within them in the ranking space ``C``.  Vectorised
    per cluster: every image that probes a cluster is scored against its members in one
    product (``block`` images at a time) and its running top ``k`` merged; the work is the sum
    of the probed clusters' sizes, about ``nprobe / clusters`` of the exact build's.
    Approximate as the search's probe is: a neighbour outside the probed clusters is missed."""
    n = len(C)
    k = min(int(k1), n - 1)
    if k < 1:
        return _build_graph(C, k1)
    labels = np.asarray(labels, np.int64)
    ncl = len(kmeans.cluster_centers_)
    sizes = np.bincount(labels, minlength=ncl)
    members_order = np.argsort(labels, kind="stable")
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    # (image, cluster) pairs: each image's probed clusters
    pr_rows: list[np.ndarray] = []
    pr_cl: list[np.ndarray] = []
    nprobe = max(1, min(int(nprobe), ncl))
    for s in range(0, n, 16384):
        order = kmeans.cluster_order(_f32(X[s : s + 16384]))
        cum = np.cumsum(sizes[order], axis=1)
        enough = np.argmax(cum >= k + 1, axis=1) + 1  # clusters that hold k + 1 images (itself too)
        used = np.maximum(nprobe, enough)
        mask = np.arange(ncl)[None, :] < used[:, None]
        r, c = np.nonzero(mask)
        pr_rows.append(r + s)
        pr_cl.append(order[r, c])
    rows_all, cl_all = np.concatenate(pr_rows), np.concatenate(pr_cl)
    by = np.argsort(cl_all, kind="stable")
    rows_all, cl_all = rows_all[by], cl_all[by]
    starts = np.searchsorted(cl_all, np.arange(ncl + 1))
    best_s = np.full((n, k), -np.inf, np.float32)
    best_i = np.full((n, k), n, np.int64)
    for cl in range(ncl):
        qs = rows_all[starts[cl] : starts[cl + 1]]
        mem = members_order[offsets[cl] : offsets[cl + 1]]
        if not len(qs) or not len(mem):
            continue
        M = _f32(C[mem])
        for s in range(0, len(qs), block):
            q = qs[s : s + block]
            S = _f32(C[q]) @ M.T
            S[q[:, None] == mem[None, :]] = -np.inf  # not the image itself
            ci = np.broadcast_to(mem, S.shape)
            if S.shape[1] > k:
                part = np.argpartition(-S, k - 1, axis=1)[:, :k]
                S, ci = np.take_along_axis(S, part, 1), np.take_along_axis(ci, part, 1)
            cs = np.concatenate([best_s[q], S], axis=1)
            cc = np.concatenate([best_i[q], ci], axis=1)
            top = np.argpartition(-cs, k - 1, axis=1)[:, :k]
            best_s[q], best_i[q] = np.take_along_axis(cs, top, 1), np.take_along_axis(cc, top, 1)
    order = np.lexsort((best_i, -best_s), axis=1)
    nn = np.take_along_axis(best_i, order, 1)
    sims = np.take_along_axis(best_s, order, 1)
    short = np.flatnonzero(~np.isfinite(sims).all(axis=1))
    if len(short):  # cannot happen (the probe holds k + 1 images), kept as a guard
        nn[short], sims[short] = _topk_rows(C, short, k, _BLOCK)
    return NeighbourGraph(nn.astype(np.int32), sims.astype(np.float32), int(k1))


def _update_graph(
    g: NeighbourGraph,
    C: np.ndarray,
    keep_src: np.ndarray,
    keep_rows: np.ndarray,
    *,
    block: int = _BLOCK,
) -> NeighbourGraph:
    """The graph of the updated catalogue ``C`` (its rows ``keep_rows`` are the old rows
    ``keep_src``, unchanged; every other row is new), equal to :func:`_build_graph` on ``C``
    (ties aside) without searching the kept images again unless a removed image was in their
    list."""
    n = len(C)
    keep_src = np.asarray(keep_src, np.int64)
    keep_rows = np.asarray(keep_rows, np.int64)
    k = min(g.k1, n - 1)
    if k != g.k or k < 1:  # the catalogue crossed k1 + 1 images: the lists change length
        return _build_graph(C, g.k1, block=block)
    old_to_new = np.full(len(g.nn), -1, np.int64)
    old_to_new[keep_src] = keep_rows
    listed = old_to_new[g.nn[keep_src]]  # [kept, k]
    broken = (listed < 0).any(axis=1)  # a removed (or changed) image was in the list
    new_rows = np.setdiff1d(np.arange(n), keep_rows)
    nn = np.empty((n, k), np.int32)
    sims = np.empty((n, k), np.float32)
    redo = np.concatenate([new_rows, keep_rows[broken]])
    if len(redo):
        nn[redo], sims[redo] = _topk_rows(C, redo, k, block)
    ok_rows, ok_src = keep_rows[~broken], keep_src[~broken]
    nn[ok_rows], sims[ok_rows] = listed[~broken], g.sims[ok_src]
    if len(new_rows) and len(ok_rows):  # new images enter the kept lists they beat
        Cn = _f32(C[new_rows])
        for s in range(0, len(ok_rows), block):
            b = ok_rows[s : s + block]
            S = _f32(C[b]) @ Cn.T
            cs = np.concatenate([sims[b], S], axis=1)
            ci = np.concatenate([nn[b].astype(np.int64), np.broadcast_to(new_rows, S.shape)], axis=1)
            if cs.shape[1] > k:
                part = np.argpartition(-cs, k - 1, axis=1)[:, :k]
                cs, ci = np.take_along_axis(cs, part, 1), np.take_along_axis(ci, part, 1)
            order = np.lexsort((ci, -cs), axis=1)
            nn[b], sims[b] = np.take_along_axis(ci, order, 1), np.take_along_axis(cs, order, 1)
    log.info(
        "neighbour graph updated: %d new images searched, %d kept images searched again, %d merged",
        len(new_rows),
        int(broken.sum()),
        len(ok_rows),
    )
    return NeighbourGraph(nn, sims, g.k1)


# ====================================================================== in the model file
#: ``model.json`` key and ``extra/`` array names of the graph
_RECORD = "rerank"
_ARRAYS = ("rerank_nn", "rerank_sims")


def _ranking_vectors(config: dict[str, Any], arrays: dict[str, np.ndarray], raw: np.ndarray) -> np.ndarray:
    """The catalogue in the space the Searcher ranks in: the stored search-PCA vectors, or the
    raw vectors (a model with an IVF ranks in the raw space)."""
    if not config.get("ivf") and "search_vectors" in arrays:
        return arrays["search_vectors"]
    return raw


def _space_name(config: dict[str, Any], arrays: dict[str, np.ndarray]) -> str:
    return "search_pca" if not config.get("ivf") and "search_vectors" in arrays else "raw"


def _stamp(config: dict[str, Any]) -> dict[str, Any]:
    feats = config.get("features") or {}
    return {key: feats.get(key) for key in ("generation", "checksum")}


def _attach_graph(
    config: dict[str, Any], arrays: dict[str, np.ndarray], g: NeighbourGraph, seconds: float, how: str
) -> None:
    """Store ``g`` in a model's ``config`` / ``arrays``, tied to the store generation and
    checksum the model records (call it after :func:`~varsitysrch._modelfile.record_store`)."""
    n = len(g.nn)
    arrays["rerank_nn"] = np.ascontiguousarray(g.nn, np.int32)
    arrays["rerank_sims"] = np.ascontiguousarray(g.sims, np.float32)
    config[_RECORD] = {
        "method": "k-reciprocal",
        "k1": int(g.k1),
        "k": g.k,
        "n_images": n,
        "space": _space_name(config, arrays),
        "features": _stamp(config),
        "built": how,
        "seconds": round(float(seconds), 1),  # tenths: the model file's bytes do not vary with the clock
        "bytes_per_image": round(g.nbytes / max(n, 1), 1),
    }


def _drop_graph(config: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
    config.pop(_RECORD, None)
    for name in _ARRAYS:
        arrays.pop(name, None)


def _build_for(
    config: dict[str, Any],
    arrays: dict[str, np.ndarray],
    raw: np.ndarray,
    k1: int,
    block: int = _BLOCK,
    *,
    kmeans: Any = None,
    labels: np.ndarray | None = None,
) -> tuple[NeighbourGraph, str]:
    """A model's graph from nothing: through its IVF when it has one (large catalogues); through
    its K-means clusters (:func:`_cluster_graph`) above :data:`_EXACT_MAX` images when the fitted
    ``kmeans`` and the catalogue's cluster ``labels`` are given; else exact."""
    ivf = config.get("ivf")
    if ivf and "ivf_centroids" in arrays and "ivf_lists" in arrays:
        nprobe = int(ivf.get("nprobe", 1))
        g = _ivf_graph(raw, arrays["ivf_centroids"], arrays["ivf_lists"], nprobe, k1)
        return g, f"ivf, nprobe {nprobe}"
    C = _ranking_vectors(config, arrays, raw)
    if kmeans is not None and labels is not None and len(raw) > _EXACT_MAX and config.get("nprobe"):
        nprobe = int(config["nprobe"])
        return _cluster_graph(C, raw, kmeans, labels, nprobe, k1), f"clusters, nprobe {nprobe}"
    return _build_graph(C, k1, block=block), "exact"


def add_graph(
    config: dict[str, Any],
    arrays: dict[str, np.ndarray],
    raw: np.ndarray,
    k1: int = _K1,
    *,
    block: int = _BLOCK,
    kmeans: Any = None,
    labels: np.ndarray | None = None,
) -> NeighbourGraph:
    """Build the graph of a model's catalogue (``raw``: its raw vectors, store order; ``kmeans``
    and ``labels``: the fitted model and each image's cluster, for the cluster-probed build above
    :data:`_EXACT_MAX` images) and store it (:func:`_attach_graph`).  Training calls this."""
    t0 = time.perf_counter()
    g, how = _build_for(config, arrays, raw, k1, block, kmeans=kmeans, labels=labels)
    seconds = time.perf_counter() - t0
    _attach_graph(config, arrays, g, seconds, how)
    log.info(
        "neighbour graph (%s): k1=%d over %d images in %.1fs (%d bytes)",
        how,
        k1,
        len(g.nn),
        seconds,
        g.nbytes,
    )
    return g


@dataclass(frozen=True)
class _GraphState:
    """A model's graph as an update finds it (read before the update rewrites the model)."""

    graph: NeighbourGraph | None  #: ``None``: stale, rebuilt after the update
    k1: int
    space: str | None
    built: str = "exact"  #: how it was built (``model.json``: ``exact``, ``clusters, ...``, ``ivf, ...``)


def graph_state(config: dict[str, Any], arrays: dict[str, np.ndarray]) -> _GraphState | None:
    """The graph of a model about to be updated (``None``: it has none)."""
    if _RECORD not in config:
        return None
    rec = config[_RECORD]
    g = _graph_from_model(config, arrays, int(config.get("n_images", 0)))
    usable = g is not None and _stale_reason(config, arrays, g) is None
    built = str(rec.get("built", "exact"))
    return _GraphState(g if usable else None, int(rec.get("k1", _K1)), rec.get("space"), built)


def carry_graph(
    state: _GraphState | None,
    config: dict[str, Any],
    arrays: dict[str, np.ndarray],
    raw: np.ndarray,
    keep_src: np.ndarray,
    keep_rows: np.ndarray,
    *,
    kmeans: Any = None,
    labels: np.ndarray | None = None,
) -> NeighbourGraph | None:
    """After an update: the model's graph (``state``, from :func:`graph_state`) brought to the
    new catalogue -- :func:`_update_graph`, or rebuilt when it was stale -- and stored in the
    updated model's ``config`` / ``arrays`` (after its store record); ``raw``: the new raw
    vectors, ``keep_rows`` the new rows of the unchanged old rows ``keep_src``; ``kmeans`` /
    ``labels``: the model and the new catalogue's clusters.  A graph built through the IVF or
    the K-means clusters is rebuilt that way (an approximate list is not what
    :func:`_update_graph` assumes: the exact top ``k1``).  ``None``: the model has no graph (and
    gets none)."""
    if state is None:
        _drop_graph(config, arrays)
        return None
    t0 = time.perf_counter()
    approx = config.get("ivf") or not state.built.startswith("exact")
    if state.graph is None or state.space != _space_name(config, arrays) or approx:
        g, how = _build_for(config, arrays, raw, state.k1, kmeans=kmeans, labels=labels)
    else:
        C = _ranking_vectors(config, arrays, raw)
        g, how = _update_graph(state.graph, C, keep_src, keep_rows), "exact, updated"
    _attach_graph(config, arrays, g, time.perf_counter() - t0, how)
    return g


def _graph_from_model(config: dict[str, Any], arrays: dict[str, np.ndarray], n: int) -> NeighbourGraph | None:
    """The graph a model stores (``None``: none), not checked for staleness."""
    if _RECORD not in config or "rerank_nn" not in arrays or "rerank_sims" not in arrays:
        return None
    return NeighbourGraph(arrays["rerank_nn"], arrays["rerank_sims"], int(config[_RECORD].get("k1", _K1)))


def _stale_reason(config: dict[str, Any], arrays: dict[str, np.ndarray], g: NeighbourGraph) -> str | None:
    """Why the stored graph does not describe the model's catalogue (``None``: it does)."""
    rec = config.get(_RECORD) or {}
    n = int(config.get("n_images", -1))
    if len(g.nn) != n:
        return f"made for {len(g.nn)} images, the model has {n}"
    if rec.get("features") != _stamp(config):
        made = (rec.get("features") or {}).get("generation")
        return f"made for store generation {made}, the model is at {_stamp(config)['generation']}"
    if rec.get("space") != _space_name(config, arrays):
        now = _space_name(config, arrays)
        return f"made in the {rec.get('space')} space, the model ranks in the {now} space"
    return None


def searcher_graph(config: dict[str, Any], arrays: dict[str, np.ndarray], model_path: Any) -> NeighbourGraph:
    """The graph a search with ``rerank="k-reciprocal"`` uses, or a one-line error saying how to
    get one."""
    g = _graph_from_model(config, arrays, int(config.get("n_images", 0)))
    how = (
        "train it with a neighbour graph (train_clusters(..., rerank_graph=True); CLI: "
        "`varsitysrch train ... --rerank-graph`), or search with rerank='none'"
    )
    if g is None:
        raise IncompatibleModelError(
            f"rerank='k-reciprocal' needs the catalogue's neighbour graph, which model {str(model_path)!r} "
            f"does not have: {how}",
            param="rerank",
        )
    why = _stale_reason(config, arrays, g)
    if why is not None:
        raise IncompatibleModelError(
            f"the neighbour graph in model {str(model_path)!r} is stale ({why}): run update with this "
            f"version (it keeps the graph up to date), or {how}",
            param="rerank",
        )
    return g


# ====================================================================== per query
def _recip(g: NeighbourGraph, rows: np.ndarray, width: int) -> np.ndarray:
    """``R(i, width)`` of each row: itself, then its ``width`` nearest that have it among their
    own ``width`` nearest (``-1``: not reciprocal).  ``[len(rows), width + 1]``."""
    nb = g.nn[rows, :width].astype(np.int64)
    back = (g.nn[nb, :width] == rows[:, None, None]).any(-1)
    return np.concatenate([rows[:, None], np.where(back, nb, -1)], axis=1)


def _expand(g: NeighbourGraph, R: np.ndarray, owner: np.ndarray) -> np.ndarray:
    """Each set of ``R`` (``[r, L]``, ``-1`` padded) with the half sets ``R(j, k1/2)`` of its
    members ``j`` (the owner itself skipped) that share more than two thirds of their
    elements with it; ``[r, L * (kh + 2)]``, ``-1`` padded, with repeats."""
    r, L = R.shape
    kh = g.kh
    valid = R >= 0
    members, at = np.unique(np.where(valid, R, 0), return_inverse=True)
    H = _recip(g, members, kh)[at.reshape(r, L)]  # [r, L, kh + 1]: each member's half set
    Hv = H >= 0
    # is each element of a member's half set in the set itself? (keys of (set, row), sorted)
    span = len(g.nn) + 1
    sets = np.arange(r, dtype=np.int64)
    rkeys = np.sort((sets[:, None] * span + R + 1).ravel())
    hkeys = (sets[:, None, None] * span + H + 1).ravel()
    pos = np.minimum(np.searchsorted(rkeys, hkeys), len(rkeys) - 1)
    inside = (rkeys[pos] == hkeys).reshape(H.shape) & Hv
    take = valid & (inside.sum(-1) > (2.0 / 3.0) * Hv.sum(-1)) & (owner[:, None] != R)
    return np.concatenate([R, np.where(take[..., None], H, -1).reshape(r, -1)], axis=1)


def _weights(
    C: np.ndarray, E: np.ndarray, vecs: np.ndarray, universe: list[np.ndarray]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``exp(-d)`` weights of each set of ``E`` (``[r, W]``, ``-1`` padded, repeats counted
    once) to its owner's vector ``vecs[i]``, normalised to sum 1: ``(set, column, weight)``.
    Each catalogue row is read from ``C`` (and converted to float32) once, however many sets
    hold it: the sets of neighbouring rows overlap (about 12 sets per row on a 250,000-image
    catalogue), and a model with an IVF ranks over its float16 store, whose conversion was most
    of a cold query's cost (1M images: 22 -> 13 ms CPU, ``docs/figures.md``)."""
    r, W = E.shape
    flat = E.ravel()
    owner = np.repeat(np.arange(r, dtype=np.int64), W)
    ok = flat >= 0
    n = int(C.shape[0])
    key = np.unique(owner[ok] * n + flat[ok])
    row, col = key // n, key % n
    cols, at = np.unique(col, return_inverse=True)
    s = np.einsum("ij,ij->i", _f32(C[cols])[at], vecs[row]).astype(np.float64)
    w = np.exp(-np.maximum(0.0, 2.0 - 2.0 * s))
    w /= np.bincount(row, w, minlength=r)[row]
    universe.append(col)
    return row, col, w


#: catalogue rows whose own weights are kept per model (a row's weights depend only on the graph
#: and the catalogue, so they are computed once per loaded model; the cache is emptied past this:
#: about 60 columns a row at 16 bytes, ~50 MB)
_CACHE_ROWS = 50_000
_caches: dict[int, tuple[weakref.ref[np.ndarray], dict[int, tuple[np.ndarray, np.ndarray]]]] = {}


def _row_cache(g: NeighbourGraph) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """The weights cache of the model whose graph is ``g`` (keyed by its loaded array)."""
    hit = _caches.get(id(g.nn))
    if hit is not None and hit[0]() is g.nn:
        return hit[1]
    for key in [k for k, (ref, _) in _caches.items() if ref() is None]:  # models no longer loaded
        _caches.pop(key, None)
    cache: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    _caches[id(g.nn)] = (weakref.ref(g.nn), cache)
    return cache


def _row_weights(g: NeighbourGraph, C: np.ndarray, U: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """Each catalogue row's own normalised weights ``(columns, weights)`` (its expanded
    k-reciprocal set, before local query expansion), from the model's cache; the rows not in it
    are computed together (:func:`_expand`, :func:`_weights`) and kept."""
    cache = _row_cache(g)
    got = [cache.get(u) for u in U.tolist()]
    todo = np.asarray([u for u, x in zip(U.tolist(), got, strict=True) if x is None], np.int64)
    if len(todo):
        E = _expand(g, _recip(g, todo, g.k), todo)
        r, c, w = _weights(C, E, _f32(C[todo]), [])
        bounds = np.searchsorted(r, np.arange(len(todo) + 1))
        if len(cache) + len(todo) > _CACHE_ROWS:
            cache.clear()
        new = {}
        for i, u in enumerate(todo.tolist()):
            new[u] = (c[bounds[i] : bounds[i + 1]], w[bounds[i] : bounds[i + 1]])
        cache.update(new)
        got = [x if x is not None else new[u] for u, x in zip(U.tolist(), got, strict=True)]
    return [x for x in got if x is not None]


def rerank(
    g: NeighbourGraph,
    C: np.ndarray,
    query: np.ndarray,
    rows: np.ndarray,
    sims: np.ndarray,
    *,
    self_row: int | None = None,
    keep: int = 1,
    k2: int = _K2,
    lam: float = _LAMBDA,
) -> tuple[np.ndarray, np.ndarray]:
    """The candidates ``rows`` (best first, ranking-space cosines ``sims`` to the ranking-space
    ``query``) re-ordered by the k-reciprocal distance; the first ``keep`` stay in place.

    Returns ``(rows, scores)``: ``score = 1 - ((1 - lam) Jaccard + lam (1 - cos))``, falling
    down the list except the kept rows (their score is at least the best of the rest, so that a
    later stage that sorts by score keeps them in front).  ``self_row``: the query is this
    catalogue image (its own k-reciprocal set is used).  See the module docstring.
    """
    rows = np.asarray(rows, np.int64)
    sims = np.asarray(sims, np.float32)
    m = len(rows)
    if m - keep < 2 or g.k < 1:
        return rows, sims
    k1 = g.k
    q = _f32(query).reshape(-1)
    cand = rows

    def groups_of(x: np.ndarray) -> np.ndarray:  # the local query expansion's group of each row
        return np.concatenate([x[:, None], g.nn[x, : max(0, min(k2 - 1, g.k))].astype(np.int64)], axis=1)

    G = groups_of(cand)  # [m, k2]
    if self_row is not None:
        Gq = groups_of(np.asarray([self_row], np.int64))[0]
        Rq = None
    else:
        nbr, nd = cand[:k1], np.maximum(0.0, 2.0 - 2.0 * sims[:k1])
        kth = np.maximum(0.0, 2.0 - 2.0 * g.sims[nbr, -1])
        Rq = nbr[nd <= kth]
        if not len(Rq):
            return rows, sims
        Gq = cand[: max(0, min(k2 - 1, m))]
    U = np.unique(np.concatenate([G.ravel(), Gq]))  # the rows whose own weights are needed
    own = _row_weights(g, C, U)
    ur = np.repeat(np.arange(len(U)), [len(c) for c, _ in own])
    uc = np.concatenate([c for c, _ in own])
    uw = np.concatenate([w for _, w in own])
    universe: list[np.ndarray] = [uc]
    if Rq is not None:
        Eq = _expand(g, np.concatenate([Rq, np.full(k1 + 1 - len(Rq), -1)])[None], np.asarray([-1]))
        _, qc, qw = _weights(C, Eq, q[None], universe)
    cols = np.unique(np.concatenate(universe))
    raw = np.zeros((len(U), len(cols)))
    raw[ur, np.searchsorted(cols, uc)] = uw
    V = raw[np.searchsorted(U, G)].mean(axis=1)  # [m, cols]: each candidate after local query expansion
    if Rq is None:
        vq = raw[np.searchsorted(U, Gq)].mean(axis=0)
    else:
        vq_own = np.zeros(len(cols))
        vq_own[np.searchsorted(cols, qc)] = qw
        vq = (vq_own + V[: len(Gq)].sum(0)) / (1 + len(Gq))  # Gq: the first candidates
    mn = np.minimum(V, vq[None]).sum(1)
    jd = 1.0 - mn / (vq.sum() + V.sum(1) - mn)
    score = 1.0 - ((1.0 - lam) * jd + lam * np.maximum(0.0, 1.0 - sims.astype(np.float64)))
    rest = keep + np.argsort(-score[keep:], kind="stable")
    order = np.concatenate([np.arange(keep), rest])
    out = score[order]
    if keep:
        out[:keep] = np.maximum(out[:keep], out[keep])
    return rows[order], out.astype(np.float32)


def keep_count(sims: np.ndarray) -> int:
    """Rows kept in front by the keep-first rule: the leading copies of the query (first-pass
    score at least :data:`_COPY_COSINE`) and the first hit after them."""
    copy = np.asarray(sims) >= _COPY_COSINE
    copies = len(copy) if copy.all() else int(np.argmin(copy))
    return min(len(copy), copies + 1)


__all__ = [
    "POOL",
    "NeighbourGraph",
    "add_graph",
    "carry_graph",
    "check_rerank",
    "graph_state",
    "keep_count",
    "model_graph",
    "rerank",
    "searcher_graph",
]
