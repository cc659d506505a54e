"""Feature post-processing for search: the measured options (see ``docs/quality.md``).

All functions work on L2-normalised float32 rows and return L2-normalised rows.

Opt-in: the search space -- a catalogue-centred PCA (``train_clusters(search_pca=N)``;
:data:`SEARCH_PCA_DIM` components is the measured setting), fitted once by
:func:`~varsitysrch._searchindex.build_search_index`, which stores the catalogue projected;
:class:`~varsitysrch.Searcher` projects each query.  It was the default above 1,000 images until
it was measured on three dev domains: n.s. on fashion-dev and a large loss from shelf photos to a
studio catalogue (``docs/quality.md``, "Decisions on three dev domains"), so plain cosine on the
raw vectors is the default ranking space.

Catalogue side (fitted or computed once on the catalogue, stored with the model):

* :func:`neighbour_lists` / :func:`augment_rows` -- alpha-DBA: every catalogue vector is
  replaced by the similarity-weighted sum (weights ``sim ** alpha``) of itself and its
  ``n - 1`` nearest catalogue neighbours (measured by :func:`varsitysrch.evaluate`; not adopted).
* :func:`fit_whitening` / :func:`apply_whitening` -- PCA whitening fitted on the
  catalogue (mean, projection, per-component scale), optionally partial
  (``power < 0.5``) and reduced to ``dim`` components.

Query side:

* :func:`expand_query` -- alpha-QE: the query plus its top ``n`` results weighted by
  ``sim ** alpha``, searched again (a second search per query; the pipeline's ranking stage).

Colour is :mod:`varsitysrch._colour` (signatures stored at extraction, mixed in by the
pipeline's re-ranking stage).

Which of these are used by default is decided by measurement (``docs/quality.md``); the
rest stay available to :func:`varsitysrch.evaluate` so their effect can be re-measured
on a user's own catalogue.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ._errors import InvalidArgumentError
from ._neighbours import exact_topk
from ._store import normalize_rows

__all__ = [
    "DBA_NEIGHBOURS",
    "QE_NEIGHBOURS",
    "QE_SELF_COSINE",
    "QE_SELF_MARGIN",
    "SEARCH_PCA_DIM",
    "Whitening",
    "apply_whitening",
    "augment_rows",
    "expand_query",
    "fit_search_pca",
    "fit_whitening",
    "neighbour_lists",
    "to_search_space",
]


#: alpha-DBA / alpha-QE defaults (chosen by measurement: docs/quality.md).
DBA_NEIGHBOURS = 10
#: alpha-QE neighbours; also :func:`~varsitysrch.train_clusters`' default (on both dev domains)
QE_NEIGHBOURS = 2
_ALPHA = 3.0
#: a result at least this similar to the query is the query itself (or a copy of it): it
#: does not expand the query, since it adds nothing (searching with a catalogue image)
QE_SELF_COSINE = 0.99
#: extra first-pass results fetched so that such copies can be skipped
QE_SELF_MARGIN = 3
#: the measured size of the opt-in search-space PCA (``train_clusters(search_pca=SEARCH_PCA_DIM)``,
#: ``train --search-pca 128``): catalogue-centred, no whitening (``docs/quality.md``)
SEARCH_PCA_DIM = 128


# ------------------------------------------------------------------ search space (opt-in)
def fit_search_pca(X: np.ndarray, n_components: int, random_state: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``(mean, components)`` of the search space, fitted on the catalogue (seeded sample above 100k rows)."""
    from ._pca import fit_pca

    return fit_pca(X, int(min(n_components, min(X.shape))), random_state)


def to_search_space(
    X: np.ndarray, mean: np.ndarray, components: np.ndarray, chunk: int = 65536
) -> np.ndarray:
    """Rows projected into the search space and re-normalised (float32), in chunks."""
    from ._pca import apply_pca

    X = np.asarray(X)
    single = X.ndim == 1
    X2 = X.reshape(1, -1) if single else X
    out = np.empty((len(X2), len(components)), np.float32)
    for s in range(0, len(X2), chunk):
        out[s : s + chunk] = apply_pca(X2[s : s + chunk], mean, components)
    return out[0] if single else out


# ------------------------------------------------------------------ alpha-DBA
def neighbour_lists(X: np.ndarray, n: int, *, chunk: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """The ``n`` most similar rows of every row (itself first, then by similarity): ``(idx, sims)``.

    The neighbours are :func:`varsitysrch._neighbours.exact_topk` with each row held out from
    its own list (ties by row order), ``chunk`` query rows at a time.
    """
    X = np.asarray(X, np.float32)
    m = len(X)
    n = min(n, m)
    idx = np.empty((m, n), np.int64)
    sims = np.ones((m, n), np.float32)
    idx[:, 0] = np.arange(m)
    if n > 1:
        for s in range(0, m, chunk):
            rows = np.arange(s, min(m, s + chunk))
            nb, sc = exact_topk(X[rows], X, n - 1, exclude=rows, chunk=8192)
            idx[rows, 1:], sims[rows, 1:] = nb, sc
    return idx, sims


def augment_rows(X: np.ndarray, idx: np.ndarray, sims: np.ndarray, alpha: float = _ALPHA) -> np.ndarray:
    """alpha-DBA of the rows whose neighbour lists are given (``idx``/``sims`` [m, n])."""
    w = np.clip(sims, 0.0, None) ** alpha
    out = np.einsum("mn,mnd->md", w.astype(np.float32), np.asarray(X, np.float32)[idx])
    return normalize_rows(out)


# ------------------------------------------------------------------ alpha-QE
def expand_query(
    q: np.ndarray, neighbours: np.ndarray, sims: np.ndarray, alpha: float = _ALPHA
) -> np.ndarray:
    """alpha-QE: ``q + sum(sim_i**alpha * x_i)`` over the given result vectors, re-normalised."""
    q = np.asarray(q, np.float32).reshape(-1)
    if len(neighbours) == 0:
        return q
    w = np.clip(np.asarray(sims, np.float32), 0.0, None) ** alpha
    v = q + (w[:, None] * np.asarray(neighbours, np.float32)).sum(0)
    return normalize_rows(v[None])[0]


# ------------------------------------------------------------------ whitening
@dataclass(frozen=True)
class Whitening:
    """PCA whitening: ``normalize((x - mean) @ projection.T)``; ``projection`` rows are scaled components."""

    mean: np.ndarray  # [dim_in]
    projection: np.ndarray  # [dim_out, dim_in]

    def apply(self, X: np.ndarray) -> np.ndarray:
        return apply_whitening(X, self)


def fit_whitening(
    X: np.ndarray, dim: int | None = None, *, power: float = 0.5, shrinkage: float = 0.0
) -> Whitening:
    """Fit PCA whitening on catalogue rows.

    ``power=0.5`` is full whitening (unit variance per component), ``0`` is plain PCA
    (rotation + truncation), values between are partial whitening; ``shrinkage`` adds
    ``shrinkage * mean variance`` to every variance before scaling (regularisation).
    """
    X = np.asarray(X, np.float32)
    n, d = X.shape
    dim = min(d, n - 1) if dim is None else dim
    if not 1 <= dim <= min(d, n - 1):
        raise InvalidArgumentError(
            f"whitening dim must be in [1, min(dim, n-1)] = [1, {min(d, n - 1)}]; got {dim}"
        )
    from sklearn.decomposition import PCA

    pca = PCA(n_components=dim, svd_solver="full").fit(X.astype(np.float64))
    var = pca.explained_variance_ + shrinkage * float(pca.explained_variance_.mean())
    scale = np.maximum(var, 1e-12) ** -power
    return Whitening(pca.mean_.astype(np.float32), (pca.components_ * scale[:, None]).astype(np.float32))


def apply_whitening(X: np.ndarray, w: Whitening) -> np.ndarray:
    X = np.asarray(X, np.float32)
    single = X.ndim == 1
    out = normalize_rows((X.reshape(-1, X.shape[-1]) - w.mean) @ w.projection.T)
    return out[0] if single else out
