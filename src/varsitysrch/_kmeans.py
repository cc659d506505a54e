"""Step 3a: the K-means estimator (no files, no search index).

:class:`KMeansModel` is a scikit-learn estimator (``BaseEstimator``: ``get_params``,
``set_params`` and ``sklearn.base.clone`` work; ``__init__`` only stores arguments, ``fit``
returns self, every learned attribute ends in ``_``, ``NotFittedError`` before fit).

Backend choice (``backend="auto"``): scikit-learn's Lloyd K-means with k-means++ and
``n_init`` restarts while ``sample * k * dim`` <= :data:`_SMALL_PROBLEM` (best inertia),
faiss above it (much faster at scale, slightly worse inertia; MiniBatchKMeans is not
offered: it leaves empty clusters).  Measured figures are in ``docs/`` with the benchmark
that prints them (``benchmarks/bench_scale.py``).  Training uses a sample (see
:func:`_training_sample_size`) and every row is then assigned in chunks with
:func:`varsitysrch._neighbours.nearest_centroid`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator

from ._errors import IncompatibleModelError, InvalidArgumentError, NotFittedError
from ._neighbours import centroid_order, nearest_centroid
from ._pca import apply_pca, fit_pca

log = logging.getLogger(__name__)

__all__ = ["Assigner", "KMeansModel", "distance_quantiles"]


_SMALL_PROBLEM = 2_000_000_000  # sample * k * dim up to which "auto" uses sklearn
_MIN_SAMPLE = 50_000  # K-means trains on max(256 * k, MIN_SAMPLE) sampled rows (all rows if fewer)
_POINTS_PER_CENTROID = 256
_CHUNK = 65536


def _training_sample_size(n: int, k: int, max_samples: int | None = None) -> int:
    """Rows K-means trains on: ``min(n, max(256 * k, 50_000))`` unless ``max_samples`` is given.

    256 points per centroid is faiss's own default (more barely moves the centroids);
    the 50,000 floor keeps small k well estimated.  Every row is then assigned in chunks.
    """
    m = max(_POINTS_PER_CENTROID * k, _MIN_SAMPLE) if max_samples is None else int(max_samples)
    return int(min(n, max(m, k)))


def _all_finite(X: np.ndarray, chunk: int = _CHUNK) -> bool:
    return all(bool(np.isfinite(X[s : s + chunk]).all()) for s in range(0, len(X), chunk))


Assigner = Callable[["KMeansModel"], tuple[np.ndarray, np.ndarray]]


class KMeansModel(BaseEstimator):
    """K-means on unit-normalised image features (optionally in a PCA space).

    Args:
        num_clusters: k, in ``[2, n_images]``.
        n_init: restarts (best inertia kept).
        max_iter: Lloyd iterations per restart.
        random_state: seed; the same data and seed give the same model.
        backend: ``"auto"``, ``"sklearn"`` or ``"faiss"`` (see the module docstring).
        n_components: cluster in a PCA space of this many dimensions (``None``: raw space).
            This is the clustering space only; the search ranks in its own space (see
            :func:`varsitysrch._searchindex.build_search_index`).
        max_samples: rows the centroids are trained on (``None``: ``max(256 * k, 50_000)``,
            see :func:`_training_sample_size`); every row is then assigned in chunks, so a
            memory-mapped float16 store is never copied whole.
    """

    cluster_centers_: np.ndarray
    labels_: np.ndarray
    distances_: np.ndarray
    pca_mean_: np.ndarray | None
    pca_components_: np.ndarray | None
    inertia_: float
    n_iter_: int
    backend_: str
    n_features_in_: int
    sample_size_: int
    fit_seconds_: float

    def __init__(
        self,
        num_clusters: int = 8,
        *,
        n_init: int = 3,
        max_iter: int = 300,
        random_state: int = 0,
        backend: str = "auto",
        n_components: int | None = None,
        max_samples: int | None = None,
    ) -> None:
        self.num_clusters = num_clusters
        self.n_init = n_init
        self.max_iter = max_iter
        self.random_state = random_state
        self.backend = backend
        self.n_components = n_components
        self.max_samples = max_samples

    # ---------------------------------------------------------------- fitting
    def _validate(self, n: int, dim: int) -> None:
        k = self.num_clusters
        if isinstance(k, bool) or not isinstance(k, int | np.integer):
            raise InvalidArgumentError(f"num_clusters must be an integer; got {k!r}")
        if not 2 <= k <= n:
            raise InvalidArgumentError(f"num_clusters must be in [2, n_images] = [2, {n}]; got {k}")
        if isinstance(self.n_init, bool) or not isinstance(self.n_init, int) or self.n_init < 1:
            raise InvalidArgumentError(f"n_init must be an integer >= 1; got {self.n_init!r}")
        if self.backend not in ("auto", "sklearn", "faiss"):
            raise InvalidArgumentError(f"backend must be 'auto', 'sklearn' or 'faiss'; got {self.backend!r}")
        c = self.n_components
        if c is not None and (
            isinstance(c, bool) or not isinstance(c, int | np.integer) or not 1 <= c <= min(dim, n)
        ):
            raise InvalidArgumentError(
                f"n_components must be an integer in [1, min(dim, n_images)] = [1, {min(dim, n)}]; got {c!r}"
            )

    def fit(
        self,
        X: np.ndarray,
        y: Any = None,
        *,
        assigner: Assigner | None = None,
        pca: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> KMeansModel:
        """Train on a sample of ``X`` (see ``max_samples``), then assign every row in chunks.

        ``X`` may be a memory map (float16 or float32): only the sample is copied.
        ``assigner(model)`` (e.g. the Dask engine's) replaces the local assignment of every
        row; it returns ``(labels, distances)``.  ``pca``: an already fitted ``(mean,
        components)`` with at least ``n_components`` rows, whose leading components are used
        instead of fitting a PCA again (train_clusters shares the search-space PCA this way).
        """
        X = np.asarray(X)
        if X.ndim != 2 or len(X) == 0:
            raise InvalidArgumentError(f"X must be a non-empty 2-d matrix; got shape {X.shape}")
        if X.dtype.kind != "f":
            X = X.astype(np.float32)
        if not _all_finite(X):
            raise InvalidArgumentError("X contains NaN or infinite values")
        n, dim = X.shape
        self._validate(n, dim)
        t0 = time.perf_counter()
        k = int(self.num_clusters)
        m = _training_sample_size(n, k, self.max_samples)
        rows = (
            np.sort(np.random.default_rng(self.random_state).choice(n, m, replace=False)) if m < n else None
        )
        S = np.asarray(X if rows is None else X[rows], np.float32)
        self.n_features_in_ = dim
        self._fit_pca(X, pca)
        Z = self._to_space(S)
        self.sample_size_ = m
        backend = self.backend
        if backend == "auto":
            backend = "sklearn" if m * k * Z.shape[1] <= _SMALL_PROBLEM else "faiss"
        self.cluster_centers_, self.n_iter_ = (
            self._sklearn(Z, k) if backend == "sklearn" else self._faiss(Z, k)
        )
        self.backend_ = backend
        if assigner is not None:
            labels, dists = assigner(self)
        elif rows is None:
            labels, dists = nearest_centroid(Z, self.cluster_centers_)
        else:
            labels, dists = self.assign_all(X)
        self.labels_ = np.asarray(labels, np.int32)
        self.distances_ = np.asarray(dists, np.float32)
        self.inertia_ = float((self.distances_.astype(np.float64) ** 2).sum())
        self.fit_seconds_ = time.perf_counter() - t0
        sizes = np.bincount(self.labels_, minlength=k)
        if (sizes == 0).any():
            log.warning("%d of %d clusters are empty", int((sizes == 0).sum()), k)
        return self

    def _fit_pca(self, X: np.ndarray, pca: tuple[np.ndarray, np.ndarray] | None) -> None:
        c = self.n_components
        if c is None:
            self.pca_mean_ = self.pca_components_ = None
        elif pca is not None and len(pca[1]) >= c and pca[1].shape[1] == X.shape[1]:
            self.pca_mean_ = np.asarray(pca[0], np.float32)
            self.pca_components_ = np.ascontiguousarray(pca[1][:c], np.float32)
        else:
            Xp = X if X.dtype == np.float32 or len(X) > 100_000 else np.asarray(X, np.float32)
            self.pca_mean_, self.pca_components_ = fit_pca(Xp, int(c), self.random_state)

    def _sklearn(self, Z: np.ndarray, k: int) -> tuple[np.ndarray, int]:
        from sklearn.cluster import KMeans

        km = KMeans(
            k, init="k-means++", n_init=self.n_init, max_iter=self.max_iter, random_state=self.random_state
        ).fit(Z)
        return km.cluster_centers_.astype(np.float32), int(km.n_iter_)

    def _faiss(self, Z: np.ndarray, k: int) -> tuple[np.ndarray, int]:
        import faiss

        niter = min(self.max_iter, 50)
        km = faiss.Kmeans(
            Z.shape[1],
            k,
            niter=niter,
            nredo=self.n_init,
            seed=self.random_state,
            verbose=False,
            max_points_per_centroid=max(_POINTS_PER_CENTROID, -(-len(Z) // k)),
        )
        km.train(np.ascontiguousarray(Z))
        return np.asarray(km.centroids, np.float32), niter

    @classmethod
    def restore(
        cls,
        centroids: np.ndarray,
        n_features_in: int,
        *,
        pca_mean: np.ndarray | None = None,
        pca_components: np.ndarray | None = None,
        labels: np.ndarray | None = None,
        distances: np.ndarray | None = None,
        inertia: float = 0.0,
        **params: Any,
    ) -> KMeansModel:
        """A fitted model from stored state (the model file's arrays); nothing is trained."""
        m = cls(
            len(centroids),
            n_components=None if pca_components is None else len(pca_components),
            **params,
        )
        m.cluster_centers_ = np.asarray(centroids, np.float32)
        m.n_features_in_ = int(n_features_in)
        m.pca_mean_, m.pca_components_ = pca_mean, pca_components
        if labels is not None:
            m.labels_ = np.asarray(labels, np.int32)
        if distances is not None:
            m.distances_ = np.asarray(distances, np.float32)
        m.inertia_ = float(inertia)
        return m

    # ---------------------------------------------------------------- using
    def _check_fitted(self) -> None:
        if not hasattr(self, "cluster_centers_"):
            raise NotFittedError("this KMeansModel is not fitted yet: call fit(X) first")

    def _to_space(self, X: np.ndarray) -> np.ndarray:
        if self.pca_components_ is not None and self.pca_mean_ is not None:
            return apply_pca(X, self.pca_mean_, self.pca_components_)
        return np.asarray(X, np.float32)

    def project(self, X: np.ndarray) -> np.ndarray:
        """Rows in the clustering space (PCA applied if the model has one)."""
        self._check_fitted()
        X = np.asarray(X, np.float32)
        if X.ndim == 1:
            X = X[None, :]
        if X.shape[1] != self.n_features_in_:
            raise IncompatibleModelError(
                f"features have dim {X.shape[1]} but the model was trained on dim {self.n_features_in_}"
            )
        return self._to_space(X)

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Nearest centroid of each row."""
        return self.assign_all(X)[0]

    def assign_all(self, X: np.ndarray, chunk: int = _CHUNK) -> tuple[np.ndarray, np.ndarray]:
        """``(labels, distances)`` of every row, projecting and assigning ``chunk`` rows at a time."""
        self._check_fitted()
        labels = np.empty(len(X), np.int32)
        dists = np.empty(len(X), np.float32)
        for s in range(0, len(X), chunk):
            lab, dst = nearest_centroid(self.project(X[s : s + chunk]), self.cluster_centers_, chunk)
            labels[s : s + len(lab)] = lab
            dists[s : s + len(lab)] = dst
        return labels, dists

    def cluster_order(self, Q: np.ndarray) -> np.ndarray:
        """Clusters nearest first for each query row (``[q, k]``), in the clustering space."""
        return centroid_order(self.project(Q), self.cluster_centers_)


def distance_quantiles(
    distances: np.ndarray, qs: tuple[float, ...] = (0.5, 0.9, 0.95, 0.99)
) -> dict[str, float]:
    """Quantiles of distances to the centroid, keyed ``"0.95"`` etc. (the drift reference)."""
    d = np.asarray(distances, np.float64)
    return {str(q): float(np.quantile(d, q)) for q in qs} if len(d) else {}
