"""Step 3b: the search index over a clustered catalogue, built the same way at training and update.

:func:`build_search_index` takes the catalogue vectors, their K-means clusters and the fitted
:class:`~varsitysrch.KMeansModel` and returns what :class:`~varsitysrch.Searcher` needs:

1. the ranking space: a catalogue-centred PCA without whitening (``search_pca``
   components; none by default: plain cosine on the raw vectors), fitted once
   (at training; an update reuses it) and the catalogue stored already projected, so loading
   a model projects nothing;
2. the default ``nprobe``: the fewest nearest clusters whose ranked search reaches
   ``target_recall`` recall@10 against exact search, both **in the ranking space** the
   Searcher uses, on held-out catalogue queries (:func:`_calibrate_nprobe`);
3. for large catalogues (more than :data:`varsitysrch._index.IVF_THRESHOLD` images, or
   ``ivf=True``) a faiss IVF over the raw vectors instead of the PCA space
   (:mod:`varsitysrch._index`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import _index
from ._errors import InvalidArgumentError
from ._index import IVFParts, build_faiss_index, build_ivf, calibrate_ivf
from ._kmeans import KMeansModel
from ._neighbours import exact_topk, probe_recall
from ._postprocess import fit_search_pca, to_search_space

log = logging.getLogger(__name__)

__all__ = ["build_search_index"]


_TARGET_RECALL = 0.95
_TOP = 10


def _calibrate_nprobe(
    X: np.ndarray,
    labels: np.ndarray,
    model: KMeansModel,
    target_recall: float,
    *,
    ranking: np.ndarray | None = None,
    n_queries: int = 500,
    top: int = _TOP,
    random_state: int = 0,
) -> tuple[int, list[float]]:
    """Smallest nprobe whose cluster-restricted top-``top`` reaches ``target_recall`` vs exact.

    ``X`` are the raw catalogue vectors (the clusters a query probes are the nearest to its
    projection into the clustering space), ``ranking`` the catalogue in the space the search
    ranks in (``None``: ``X`` itself); exact neighbours are found there.  Queries are sampled
    catalogue images, each excluded from its own results.  Returns ``(nprobe, recall for
    nprobe = 1..k)`` (the curve stops at 1.0 once recall reaches 0.999).
    """
    R = X if ranking is None else ranking
    n, k = len(X), len(model.cluster_centers_)
    if n <= top + 1:
        return k, [1.0] * k
    q = np.random.default_rng(random_state).choice(n, size=min(n_queries, n), replace=False)
    exact, _ = exact_topk(np.asarray(R[q], np.float32), R, top, exclude=q)
    found = probe_recall(exact, labels, model.cluster_order(np.asarray(X[q], np.float32)))
    curve: list[float] = []
    chosen = k
    for p in range(1, k + 1):
        rec = float(found[p - 1])
        curve.append(round(rec, 4))
        if rec >= target_recall and chosen == k:
            chosen = p
        if rec >= 0.999:
            curve.extend([1.0] * (k - p))
            break
    return chosen, curve


@dataclass
class _SearchIndex:
    """The search side of a model file (see :func:`build_search_index`)."""

    nprobe: int | None  #: calibrated default nprobe (None: not recalibrated)
    recall_curve: list[float] | None
    search_pca: tuple[np.ndarray, np.ndarray] | None  #: (mean, components) of the ranking space
    search_vectors: np.ndarray | None  #: the catalogue in the ranking space, float32
    ivf: IVFParts | None
    #: the confidence calibration (:class:`~varsitysrch._confidence.ScoreCalibrator` as JSON); None: keep
    confidence: dict[str, Any] | None = None

    def apply(self, config: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        """Write this index into a model's ``config`` and ``arrays`` (stale entries removed)."""
        if self.nprobe is not None:
            config["nprobe"], config["recall_curve"] = int(self.nprobe), self.recall_curve
        if self.confidence is not None:
            config["confidence"] = self.confidence
        for name in ("search_mean", "search_components", "search_vectors", "ivf_centroids", "ivf_lists"):
            arrays.pop(name, None)
        config.pop("search_pca", None)
        if self.search_pca is not None and self.search_vectors is not None:
            arrays["search_mean"], arrays["search_components"] = self.search_pca
            arrays["search_vectors"] = self.search_vectors
            config["search_pca"] = len(self.search_pca[1])
        if self.ivf is not None:
            old = config.get("ivf") or {}
            config["ivf"] = self.ivf.config(float(config.get("target_recall", _TARGET_RECALL)))
            if self.ivf.nprobe <= 0:  # not recalibrated: keep the previous calibration
                config["ivf"].update({k: old[k] for k in ("nprobe", "recall_curve") if k in old})
            arrays.update(self.ivf.arrays())
        else:
            config.pop("ivf", None)


def build_search_index(
    vectors: np.ndarray,
    labels: np.ndarray,
    kmeans: KMeansModel,
    *,
    target_recall: float = _TARGET_RECALL,
    search_pca: int | tuple[np.ndarray, np.ndarray] | None = None,
    ivf: bool | tuple[np.ndarray, np.ndarray] | None = None,
    calibrate: bool = True,
    n_queries: int | None = None,
    random_state: int = 0,
) -> _SearchIndex:
    """The ranking space, calibrated ``nprobe`` and (large catalogues) IVF of a clustered catalogue.

    Args:
        vectors: the catalogue, ``[n, dim]`` unit rows (a float16 memory map is fine).
        labels: each row's K-means cluster; ``kmeans`` the fitted model.
        search_pca: components of the ranking-space PCA (``None``: the default rule, ``0``:
            plain cosine on the raw vectors), or an already fitted ``(mean, components)``
            (an update keeps the trained space).
        ivf: build a faiss IVF (``None``: above ``IVF_THRESHOLD`` images), or the
            ``(centroids, lists)`` of an existing one (an update keeps its lists).
        calibrate: calibrate ``nprobe`` (otherwise the caller keeps its previous values).
        n_queries: held-out calibration queries (``None``: 500, 200 above 200k images).
    """
    if not 0.0 < target_recall <= 1.0:
        raise InvalidArgumentError(f"target_recall must be in (0, 1]; got {target_recall}")
    n = len(vectors)
    nq = n_queries if n_queries is not None else (500 if n <= 200_000 else 200)
    parts = _ivf(vectors, ivf, target_recall, calibrate, random_state)
    space = None if parts is not None else _space(vectors, search_pca, random_state)
    ranking = to_search_space(vectors, *space) if space is not None else None
    nprobe, curve = None, None
    if calibrate:
        nprobe, curve = _calibrate_nprobe(
            vectors, labels, kmeans, target_recall, ranking=ranking, n_queries=nq, random_state=random_state
        )
    log.info(
        "search index: %s, nprobe %s%s",
        f"PCA {len(space[1])}" if space is not None else "raw space",
        nprobe,
        f", IVF {parts.nlist} lists" if parts is not None else "",
    )
    confidence = None
    if calibrate:  # hits' confidence: percentiles of the catalogue's own nearest-neighbour scores
        from ._confidence import ScoreCalibrator

        cal = ScoreCalibrator(2000 if n <= 200_000 else 500, random_state=random_state)
        confidence = cal.fit(vectors, ranking=ranking).to_dict()
    return _SearchIndex(nprobe, curve, space, ranking, parts, confidence)


def _space(
    X: np.ndarray, search_pca: int | tuple[np.ndarray, np.ndarray] | None, random_state: int
) -> tuple[np.ndarray, np.ndarray] | None:
    if isinstance(search_pca, tuple):
        return search_pca
    n_search = 0 if search_pca is None else search_pca
    if isinstance(n_search, bool) or not isinstance(n_search, int | np.integer) or n_search < 0:
        raise InvalidArgumentError(f"search_pca must be an integer >= 0; got {search_pca!r}")
    return fit_search_pca(X, int(n_search), random_state) if n_search > 0 else None


def _ivf(
    X: np.ndarray,
    ivf: bool | tuple[np.ndarray, np.ndarray] | None,
    target_recall: float,
    calibrate: bool,
    random_state: int,
) -> IVFParts | None:
    if isinstance(ivf, tuple):
        centroids, lists = ivf
        nprobe, curve = 0, dict[str, float]()
        if calibrate:
            index = build_faiss_index(centroids, lists, X)
            nprobe, curve = calibrate_ivf(index, X, target_recall, random_state=random_state)
        return IVFParts(centroids, lists, nprobe, curve)
    if ivf or (ivf is None and len(X) > _index.IVF_THRESHOLD):
        return build_ivf(X, target_recall=target_recall, random_state=random_state)[0]
    return None
