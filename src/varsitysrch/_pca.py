"""PCA as varsitysrch uses it: fitted once, no whitening, rows re-normalised after projection.

``get_optimal_num_clusters(..., n_components=c)`` analyses k in this space and
``train_clusters(..., n_components=c)`` trains in the same one, so the k chosen is the k
trained. Both call :func:`fit_pca` on all the features with the same ``random_state`` and
:func:`apply_pca` to project (the model file stores ``mean`` and ``components``; a query is
projected with the same two arrays).
"""

from __future__ import annotations

import numpy as np

from ._errors import InvalidArgumentError
from ._store import normalize_rows

__all__ = ["apply_pca", "fit_pca"]


#: PCA is fitted on at most this many rows (a seeded sample above it).
_PCA_MAX_ROWS = 100_000


def fit_pca(X: np.ndarray, n_components: int, random_state: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Fit PCA on the rows of ``X``; return ``(mean float32 [dim], components float32 [c, dim])``.

    scikit-learn's ``PCA(whiten=False, svd_solver="auto", random_state=random_state)``: the same
    data and ``random_state`` give the same components (the randomized solver, chosen for large
    inputs, is seeded). ``n_components`` must be in ``[1, min(n_rows, dim)]``.
    """
    from sklearn.decomposition import PCA

    if getattr(X, "ndim", 0) != 2:
        raise InvalidArgumentError(f"X must be a 2-D array [n_rows, dim]; got shape {np.shape(X)}")
    limit = min(X.shape)
    if isinstance(n_components, bool) or not isinstance(n_components, int | np.integer):
        raise InvalidArgumentError(f"n_components must be an integer; got {n_components!r}")
    if not 1 <= n_components <= limit:
        raise InvalidArgumentError(
            f"n_components must be in [1, min(n_rows, dim)] = [1, {limit}]; got {n_components}"
        )
    if len(X) > _PCA_MAX_ROWS:  # the same seeded row sample for choose-k and train_clusters
        rows = np.sort(np.random.default_rng(random_state).choice(len(X), _PCA_MAX_ROWS, replace=False))
        X = X[rows]
    X = np.asarray(X, dtype=np.float32)
    pca = PCA(n_components=int(n_components), whiten=False, svd_solver="auto", random_state=random_state)
    pca.fit(X)
    mean = np.ascontiguousarray(pca.mean_, dtype=np.float32)
    components = np.ascontiguousarray(pca.components_, dtype=np.float32)
    return mean, components


def apply_pca(X: np.ndarray, mean: np.ndarray, components: np.ndarray) -> np.ndarray:
    """Project rows on ``components`` after removing ``mean``; return float32 L2-normalised rows."""
    X = np.asarray(X, dtype=np.float32)
    mean = np.asarray(mean, dtype=np.float32)
    components = np.asarray(components, dtype=np.float32)
    if (
        X.ndim != 2
        or components.ndim != 2
        or X.shape[1] != components.shape[1]
        or mean.shape != (X.shape[1],)
    ):
        raise InvalidArgumentError(
            f"apply_pca: X {X.shape}, mean {mean.shape} and components {components.shape} do not match"
        )
    # (X - mean) @ C.T without an [n, dim] temporary
    Z = X @ components.T
    Z -= mean @ components.T
    return normalize_rows(Z)
