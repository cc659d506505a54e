"""Choosing k: elbow, silhouette, Davies-Bouldin, search recall -- and a recommended k.

:func:`get_optimal_num_clusters` (a feature store folder) and :func:`choose_k` (a matrix) fit K-means
for every k in ``2..max_clusters`` and score each k:

* **inertia** -- sum of squared distances of *all* images to their nearest centroid (the elbow);
* **silhouette** -- exact mean silhouette, on a fixed random sample of ``sample_size`` images
  (``method="fast"``) or on all images (``method="exhaustive"``), Euclidean distance;
* **Davies-Bouldin** -- on the same images as the silhouette (lower is better);
* **retrieval** (``retrieval=True``) -- recall@10 of cluster-restricted search against exact search
  when the query's ``nprobe`` = 1, 2, 4 nearest clusters are searched, and the fraction of the
  catalogue that scans (see :class:`RetrievalScores`).

The space
---------
Rows are L2-normalised first (feature stores already are). With ``n_components=None`` the analysis
runs in that raw feature space. With ``n_components=c`` it runs in a PCA space: PCA fitted on all the
features with ``random_state`` (no whitening), rows projected and re-normalised to unit length
(:func:`varsitysrch._pca.fit_pca` / :func:`~varsitysrch._pca.apply_pca`). ``train_clusters`` accepts
the same ``n_components`` and fits the same PCA the same way (stored in the model file), so the k
chosen here is the k trained there. Exact neighbours for the retrieval scores are always found in the
raw feature space (that is how results are ranked); cluster membership and the query's nearest
clusters use the analysis space.

The recommendation rule
-----------------------
1. ``knee_k``: the knee of the inertia curve, by ``kneed.KneeLocator(curve="convex",
   direction="decreasing", S=1)``. Without ``kneed`` (or where it finds none): the k whose inertia lies
   farthest below the straight line from the first to the last point of the curve, both axes scaled to
   [0, 1] (Kneedle's difference curve maximum, without its threshold).
2. ``best_silhouette_k``: the k with the highest silhouette (smallest such k on an exact tie).
3. ``recommended_k``: if the silhouette is flat -- max - min < 0.02 over the ks -- the knee.
   Otherwise, of the ks whose silhouette is within 0.002 of the best, the one nearest the knee
   (the smaller on a tie). On clearly clustered data that is the best-silhouette k; where several ks
   are practically tied, the inertia curve breaks the tie. 0.002 is about the error of a silhouette
   estimated on 5,000 images (measured: 0.001-0.002 against the full silhouette at 10,000 x 1,280),
   so sampling noise alone rarely reorders the fast path's choice.

``KSelection.rule`` restates the rule with the numbers of the run.

The fast path (``method="fast"``, default)
------------------------------------------
1. A training sample of ``max(4096, 128 * max_clusters)`` images (all, if fewer), projected on its
   top ``max(64, 4 * max_clusters)`` principal directions when the space has more dimensions.
2. For each k: Lloyd (numpy, float32, until no label changes) from ``n_init`` greedy k-means++
   seedings (one seed sequence of ``max_clusters`` centres per restart; the first k seed k), and
   from the k - 1 solution plus one k-means++ centre; then, going down, from the k + 1 solution minus
   its least useful centre. The lowest objective wins. The warm starts escape most of the local
   minima where restarts leave one centre on two blobs and two on one, which is what made single-init
   sweeps pick a wrong k.
3. Each solution is lifted to the analysis space (centroids = means of the full vectors of its
   clusters) and *every* image is assigned there: inertia and labels are exact for those centroids.
4. Silhouette and Davies-Bouldin on a fixed random sample (``sample_size``), all ks in one pass.
5. Confirmation: the candidates -- the 3 best silhouettes, the knee and the recommended k -- are
   re-fitted by Lloyd on *all* images from their sweep centroids, rescored, and the rule re-applied
   until no new candidate appears (``KSelection.confirmed_ks``).

``method="exhaustive"`` is the reference: scikit-learn ``KMeans(n_init=n_init)`` on all images for
every k plus the same two warm starts (as scikit-learn runs with ``init=``), silhouette and
Davies-Bouldin on all images (exact O(n^2) silhouette, computed in one pass over row blocks for all
ks together). ``benchmarks/bench_choose_k.py`` compares the two and prints the times.

Threads: ``n_threads`` limits BLAS/OpenMP threads (threadpoolctl) while running; by default 1 thread
on machines with at most 2 cores and for small inputs (starting and spin-waiting threads cost more
than they save there, badly so when anything else runs), and on larger machines 1 thread for the
sweep's many small products and the libraries' defaults for the large ones.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from ._errors import InvalidArgumentError, missing
from ._io import atomic_path, write_csv, write_json
from ._pca import apply_pca, fit_pca
from ._store import load_features, normalize_rows

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = [
    "KSelection",
    "RetrievalScores",
    "apply_pca",
    "choose_k",
    "fit_pca",
    "get_optimal_num_clusters",
]

log = logging.getLogger(__name__)

Method = Literal["fast", "exhaustive"]

NPROBES: tuple[int, ...] = (1, 2, 4)
RECALL_AT = 10
SIL_TIE = 0.002  # silhouettes within this of the best count as tied (~ sampling error at 5,000)
SIL_FLAT = 0.02  # a silhouette range below this is "flat": the knee decides
N_TOP = 3  # best-silhouette ks confirmed by the fast path
_MAX_ITER = 100  # Lloyd iterations at most (k-means++ seeded runs converge in ~5-15)
_TOL = 1e-4  # ... or stop when the objective improves by less than this, relatively
_MIN_TRAIN = 4096  # fast path: training sample of max(_MIN_TRAIN, _PER_CENTROID * max_clusters) images
_PER_CENTROID = 128
_SWEEP_MIN_DIMS = 64  # the fast sweep runs in max(_SWEEP_MIN_DIMS, _SWEEP_DIMS_PER_K * max_clusters) PCA dims
_SWEEP_DIMS_PER_K = 4
_SEED_POOL = 4096  # k-means++ seeds are drawn from this many images
_BLOCK_BYTES = 64 << 20  # distance block size in the silhouette pass
_MAX_CONFIRM_ROUNDS = 3
_SWEEP_THREADS: int | None = 1  # BLAS threads in the fast sweep (None: as set outside)
_SMALL = 4_000_000  # n_images * dim at or below which n_threads=None means 1 thread


# --------------------------------------------------------------------------- results
@dataclass(frozen=True)
class RetrievalScores:
    """Search quality per k: cluster-restricted search vs exact search.

    Queries are ``n_queries`` random catalogue images, each searched against all the *other*
    images (leave-one-out self-queries). Exact search: the ``top`` (10) nearest by cosine in the raw
    feature space. Cluster-restricted search: only the images in the query's ``nprobe`` nearest
    clusters, ranked exactly. ``recall_at_10[nprobe][i]`` is the share of the exact top 10 that the
    restricted search returns for ``ks[i]`` (the restricted ranking is exact, so this is the share
    of the exact top 10 lying in the probed clusters); ``scanned_fraction[nprobe][i]`` the mean share
    of the catalogue in the probed clusters (the cost relative to exact search). ``nprobe >= k``
    scans everything (recall 1).
    """

    nprobe: tuple[int, ...]
    recall_at_10: Mapping[int, tuple[float, ...]]
    scanned_fraction: Mapping[int, tuple[float, ...]]
    n_queries: int
    top: int = RECALL_AT

    def to_dict(self) -> dict[str, Any]:
        return {
            "nprobe": list(self.nprobe),
            "n_queries": self.n_queries,
            "top": self.top,
            "recall_at_10": {str(p): list(v) for p, v in self.recall_at_10.items()},
            "scanned_fraction": {str(p): list(v) for p, v in self.scanned_fraction.items()},
        }


@dataclass(frozen=True)
class KSelection:
    """Scores for k = 2..max_clusters and the recommended k (see the module docstring for the rule).

    ``inertia``, ``silhouette`` and ``davies_bouldin`` are aligned with ``ks``; a silhouette or
    Davies-Bouldin score that cannot be computed (fewer than 2 clusters among the scored images) is
    NaN. ``seconds`` is the wall time of the analysis (without writing files).
    """

    ks: tuple[int, ...]
    inertia: tuple[float, ...]
    silhouette: tuple[float, ...]
    davies_bouldin: tuple[float, ...]
    knee_k: int
    best_silhouette_k: int
    recommended_k: int
    rule: str
    n_components: int | None
    n_images: int
    dim: int
    seconds: float
    retrieval: RetrievalScores | None
    method: str = "fast"
    silhouette_sample: int = 0
    knee_method: str = "kneed"
    confirmed_ks: tuple[int, ...] = ()
    random_state: int = 0

    # ------------------------------------------------------------------ tables
    def to_rows(self) -> list[dict[str, Any]]:
        """One dict per k: k, inertia, silhouette, davies_bouldin, recall@10/scanned per nprobe."""
        rows: list[dict[str, Any]] = []
        for i, k in enumerate(self.ks):
            row: dict[str, Any] = {
                "k": k,
                "inertia": self.inertia[i],
                "silhouette": _json_float(self.silhouette[i]),
                "davies_bouldin": _json_float(self.davies_bouldin[i]),
            }
            if self.retrieval is not None:
                for p in self.retrieval.nprobe:
                    row[f"recall_at_10_nprobe{p}"] = self.retrieval.recall_at_10[p][i]
                for p in self.retrieval.nprobe:
                    row[f"scanned_nprobe{p}"] = self.retrieval.scanned_fraction[p][i]
            rows.append(row)
        return rows

    def to_dict(self) -> dict[str, Any]:
        """Everything as JSON-ready values (NaN -> None)."""
        return {
            "ks": list(self.ks),
            "inertia": list(self.inertia),
            "silhouette": [_json_float(v) for v in self.silhouette],
            "davies_bouldin": [_json_float(v) for v in self.davies_bouldin],
            "knee_k": self.knee_k,
            "knee_method": self.knee_method,
            "best_silhouette_k": self.best_silhouette_k,
            "recommended_k": self.recommended_k,
            "rule": self.rule,
            "method": self.method,
            "n_components": self.n_components,
            "space": self.space,
            "n_images": self.n_images,
            "dim": self.dim,
            "silhouette_sample": self.silhouette_sample,
            "confirmed_ks": list(self.confirmed_ks),
            "random_state": self.random_state,
            "seconds": round(self.seconds, 3),
            "retrieval": None if self.retrieval is None else self.retrieval.to_dict(),
        }

    @property
    def space(self) -> str:
        if self.n_components is None:
            return f"raw features (dim {self.dim}, L2-normalised)"
        return f"PCA {self.n_components} of {self.dim} dims, rows re-normalised"

    def summary(self) -> str:
        """A short text table for terminals and logs."""
        head = ["k", "inertia", "silhouette", "davies_bouldin"]
        if self.retrieval is not None:
            head += [f"R@10/np{p}" for p in self.retrieval.nprobe]
            head += [f"scan/np{p}" for p in self.retrieval.nprobe]
        lines = ["  ".join(f"{h:>11}" for h in head)]
        for row in self.to_rows():
            cells = [f"{row['k']:>11d}"]
            for key in list(row)[1:]:
                v = row[key]
                cells.append(f"{'nan':>11}" if v is None else f"{v:>11.4g}")
            mark = "  <- recommended" if row["k"] == self.recommended_k else ""
            lines.append("  ".join(cells) + mark)
        lines.append(f"recommended k = {self.recommended_k}: {self.rule}")
        return "\n".join(lines)

    def write_scores(self, path: str | Path) -> tuple[Path, Path]:
        """Write ``<path stem>.csv`` (one row per k) and ``<path stem>.json`` (everything) atomically.

        A ``.csv`` or ``.json`` suffix is replaced, any other name gets both appended:
        ``scores.csv``, ``scores.json`` and ``scores`` all give ``scores.csv`` + ``scores.json``.
        Returns both paths.
        """
        path = Path(path)
        base = path.with_suffix("") if path.suffix.lower() in {".csv", ".json"} else path
        csv_path = base.with_name(base.name + ".csv")
        json_path = base.with_name(base.name + ".json")
        rows = self.to_rows()
        header = list(rows[0]) if rows else ["k"]
        write_csv(csv_path, header, ([("" if r[h] is None else r[h]) for h in header] for r in rows))
        write_json(json_path, self.to_dict())
        return csv_path, json_path

    # ------------------------------------------------------------------ plot
    def plot(self, path: str | Path | None = None, *, show_retrieval: bool = False) -> Figure:
        """Draw the elbow (inertia) and silhouette panels side by side; return the Figure.

        The knee, the best silhouette and the recommended k are marked. With ``path`` the figure is
        written atomically (format from the suffix: .png, .svg, .pdf, ...; PNG if none).
        ``show_retrieval=True`` adds a third panel with recall@10 and the scanned fraction per
        nprobe. Uses ``matplotlib.figure.Figure`` directly: no display and no pyplot needed.
        Raises :class:`~varsitysrch.MissingDependencyError` without matplotlib
        (``pip install 'varsitysrch[plot]'``).
        """
        _require_matplotlib()
        from matplotlib.figure import Figure

        with_retrieval = show_retrieval and self.retrieval is not None
        ncols = 3 if with_retrieval else 2
        fig = Figure(figsize=(5.2 * ncols, 4.4), layout="constrained")
        ks = np.asarray(self.ks)
        rec = self.recommended_k

        ax1 = fig.add_subplot(1, ncols, 1)
        ax1.plot(ks, self.inertia, "o-", color="tab:blue", markersize=3.5, label="inertia")
        ax1.axvline(self.knee_k, color="tab:gray", linestyle="--", label=f"knee k={self.knee_k}")
        ax1.axvline(rec, color="tab:red", linewidth=2, alpha=0.7, label=f"recommended k={rec}")
        ax1.set_title("Elbow: inertia (all images)")
        ax1.set_xlabel("k (number of clusters)")
        ax1.set_ylabel("sum of squared distances to centroid")
        ax1.legend(loc="upper right", fontsize="small")
        ax1.grid(alpha=0.3)

        ax2 = fig.add_subplot(1, ncols, 2)
        ax2.plot(ks, self.silhouette, "o-", color="tab:green", markersize=3.5, label="silhouette")
        i_best = self.ks.index(self.best_silhouette_k)
        ax2.plot(
            [self.best_silhouette_k],
            [self.silhouette[i_best]],
            marker="*",
            markersize=14,
            color="tab:orange",
            linestyle="none",
            label=f"best silhouette k={self.best_silhouette_k}",
        )
        ax2.axvline(rec, color="tab:red", linewidth=2, alpha=0.7, label=f"recommended k={rec}")
        sample = (
            "all images" if self.silhouette_sample >= self.n_images else f"{self.silhouette_sample} images"
        )
        ax2.set_title(f"Silhouette ({sample}; higher is better)")
        ax2.set_xlabel("k (number of clusters)")
        ax2.set_ylabel("mean silhouette")
        ax2.legend(loc="best", fontsize="small")
        ax2.grid(alpha=0.3)

        if with_retrieval:
            assert self.retrieval is not None
            ax3 = fig.add_subplot(1, ncols, 3)
            for p in self.retrieval.nprobe:
                (line,) = ax3.plot(
                    ks, self.retrieval.recall_at_10[p], "o-", markersize=3, label=f"recall@10 np={p}"
                )
                ax3.plot(
                    ks,
                    self.retrieval.scanned_fraction[p],
                    ":",
                    color=line.get_color(),
                    label=f"scanned np={p}",
                )
            ax3.axvline(rec, color="tab:red", linewidth=2, alpha=0.7)
            ax3.set_ylim(0, 1.02)
            ax3.set_title(f"Search within nprobe clusters ({self.retrieval.n_queries} queries)")
            ax3.set_xlabel("k (number of clusters)")
            ax3.legend(loc="best", fontsize="x-small")
            ax3.grid(alpha=0.3)

        fig.suptitle(
            f"Choosing k: {self.n_images:,} images, {self.space}; recommended k = {rec}", fontsize="medium"
        )
        if path is not None:
            _save_figure(fig, Path(path))
        return fig


# --------------------------------------------------------------------------- public functions
def get_optimal_num_clusters(
    features_folder: str | Path,
    max_clusters: int = 30,
    n_components: int | None = None,
    *,
    plot_path: str | Path | None = None,
    scores_path: str | Path | None = None,
    show: bool = False,
    method: Method = "fast",
    sample_size: int | None = 5000,
    n_init: int = 3,
    random_state: int = 0,
    retrieval: bool = True,
    n_queries: int = 1000,
    n_threads: int | None = None,
    show_progress: bool = True,
) -> KSelection:
    """Score k = 2..max_clusters on a feature store and recommend a k (see :func:`choose_k`).

    ``features_folder`` is a folder written by ``extract_features`` (or a legacy folder of per-image
    ``.npy`` files). All other arguments are those of :func:`choose_k`.
    """
    _ids, X, extractor = load_features(features_folder)
    log.info(
        "choose k on %s: %d images x %d (extractor %s)",
        features_folder,
        X.shape[0],
        X.shape[1] if X.ndim == 2 else -1,
        extractor.get("name", "?"),
    )
    return choose_k(
        X,
        max_clusters,
        n_components,
        plot_path=plot_path,
        scores_path=scores_path,
        show=show,
        method=method,
        sample_size=sample_size,
        n_init=n_init,
        random_state=random_state,
        retrieval=retrieval,
        n_queries=n_queries,
        n_threads=n_threads,
        show_progress=show_progress,
    )


def choose_k(
    X: np.ndarray,
    max_clusters: int = 30,
    n_components: int | None = None,
    *,
    plot_path: str | Path | None = None,
    scores_path: str | Path | None = None,
    show: bool = False,
    method: Method = "fast",
    sample_size: int | None = 5000,
    n_init: int = 3,
    random_state: int = 0,
    retrieval: bool = True,
    n_queries: int = 1000,
    n_threads: int | None = None,
    show_progress: bool = True,
) -> KSelection:
    """Score k = 2..max_clusters on the rows of ``X`` and recommend a k.

    Args:
        X: ``[n_images, dim]`` features; rows are L2-normalised here (as feature stores hold them).
        max_clusters: the largest k tried; in ``[2, n_images - 1]``.
        n_components: ``None``: analyse the raw feature space. An integer in
            ``[2, min(dim, n_images)]``: analyse in that many PCA dimensions (fitted on all rows with
            ``random_state``, no whitening, rows re-normalised) -- the space
            ``train_clusters(..., n_components=...)`` trains in.
        plot_path: write the elbow + silhouette figure there (PNG unless the suffix says otherwise).
        scores_path: write the scores as ``<stem>.csv`` and ``<stem>.json``.
        show: display the figure in a Jupyter notebook (never blocks; ignored with a warning outside
            IPython).
        method: ``"fast"`` (sampled training + confirmation, see the module docstring) or
            ``"exhaustive"`` (scikit-learn KMeans on all images for every k, silhouette on all
            images: O(n^2), slow beyond ~20,000 images).
        sample_size: images the silhouette and Davies-Bouldin are computed on (``method="fast"``;
            ``None``: all). The sample is fixed by ``random_state``. Ignored by ``"exhaustive"``.
        n_init: K-means restarts per k (best inertia kept), >= 1.
        random_state: seeds sampling, k-means++, PCA and the retrieval queries.
        retrieval: also score cluster-restricted search per k (:class:`RetrievalScores`).
        n_queries: retrieval queries (random catalogue images, capped at ``n_images``).
        n_threads: limit BLAS and OpenMP threads to this many while running (restored after).
            ``None``: 1 thread on machines with at most 2 cores and for small inputs
            (``n_images * dim <= 4,000,000``); elsewhere 1 thread for the K-means sweep (thousands
            of small products) and the libraries' defaults for the large products. Measured on 2
            shared cores, 50,000 x 1,280: 28 s on 1 thread, 54 s on 2 (spin-waiting threads).
        show_progress: a progress bar over k (tqdm, on stderr).

    Returns:
        :class:`KSelection`. Raises :class:`~varsitysrch.InvalidArgumentError` for bad arguments and
        :class:`~varsitysrch.MissingDependencyError` when ``plot_path``/``show`` need matplotlib
        and it is missing (checked before any work).
    """
    X, n, dim = _check_matrix(X)
    _validate(
        n,
        dim,
        max_clusters=max_clusters,
        n_components=n_components,
        method=method,
        sample_size=sample_size,
        n_init=n_init,
        random_state=random_state,
        n_queries=n_queries,
        n_threads=n_threads,
    )
    if plot_path is not None or show:
        _require_matplotlib()

    if n_threads is None and (n * dim <= _SMALL or _cores() <= 2):
        n_threads = 1  # thread start-up and spin-waiting cost more than they save here (measured)
    with _thread_limit(n_threads):
        result = _analyse(
            X,
            max_clusters=int(max_clusters),
            n_components=None if n_components is None else int(n_components),
            method=method,
            sample_size=None if sample_size is None else int(sample_size),
            n_init=int(n_init),
            random_state=int(random_state),
            retrieval=bool(retrieval),
            n_queries=int(n_queries),
            show_progress=show_progress,
        )
    log.info("choose k: recommended k=%d (%s) in %.1f s", result.recommended_k, result.rule, result.seconds)
    if result.recommended_k == result.ks[-1] and len(result.ks) > 1:
        log.warning(
            "the recommended k is max_clusters=%d, the largest k tried; a larger one may score better",
            result.ks[-1],
        )
    if scores_path is not None:
        result.write_scores(scores_path)
    if plot_path is not None or show:
        fig = result.plot(plot_path)
        if show:
            _show(fig)
    return result


# --------------------------------------------------------------------------- validation
def _is_int(v: Any) -> bool:
    return isinstance(v, int | np.integer) and not isinstance(v, bool)


def _check_matrix(X: Any) -> tuple[np.ndarray, int, int]:
    try:
        A = np.asarray(X, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise InvalidArgumentError(
            f"X must be a numeric 2-D array [n_images, dim]; got {type(X).__name__}"
        ) from exc
    if A.ndim != 2 or A.shape[1] < 1:
        raise InvalidArgumentError(f"X must be a 2-D array [n_images, dim]; got shape {A.shape}")
    if A.shape[0] < 3:
        raise InvalidArgumentError(
            f"choosing k needs at least 3 images (k in [2, n_images - 1]); got {A.shape[0]}"
        )
    if not np.isfinite(A).all():
        raise InvalidArgumentError("X must hold finite numbers; found NaN or infinity")
    return normalize_rows(A), int(A.shape[0]), int(A.shape[1])


def _validate(
    n: int,
    dim: int,
    *,
    max_clusters: Any,
    n_components: Any,
    method: Any,
    sample_size: Any,
    n_init: Any,
    random_state: Any,
    n_queries: Any,
    n_threads: Any,
) -> None:
    if not _is_int(max_clusters) or not 2 <= max_clusters <= n - 1:
        raise InvalidArgumentError(
            f"max_clusters must be an integer in [2, n_images - 1] = [2, {n - 1}]; got {max_clusters!r}"
        )
    limit = min(dim, n)
    if n_components is not None and (not _is_int(n_components) or not 2 <= n_components <= limit):
        raise InvalidArgumentError(
            f"n_components must be None (no PCA) or an integer in [2, min(dim, n_images)] = [2, {limit}] "
            f"(dim = {dim}, n_images = {n}); got {n_components!r}"
        )
    if method not in ("fast", "exhaustive"):
        raise InvalidArgumentError(f"method must be 'fast' or 'exhaustive'; got {method!r}")
    if sample_size is not None and (not _is_int(sample_size) or sample_size < max_clusters + 1):
        raise InvalidArgumentError(
            f"sample_size must be None (all images) or an integer >= max_clusters + 1 = {max_clusters + 1}; "
            f"got {sample_size!r}"
        )
    if not _is_int(n_init) or n_init < 1:
        raise InvalidArgumentError(f"n_init must be an integer >= 1; got {n_init!r}")
    if not _is_int(random_state) or random_state < 0:
        raise InvalidArgumentError(f"random_state must be an integer >= 0; got {random_state!r}")
    if not _is_int(n_queries) or n_queries < 1:
        raise InvalidArgumentError(f"n_queries must be an integer >= 1; got {n_queries!r}")
    if n_threads is not None and (not _is_int(n_threads) or n_threads < 1):
        raise InvalidArgumentError(f"n_threads must be None or an integer >= 1; got {n_threads!r}")


def _require_matplotlib() -> None:
    try:
        import matplotlib.figure  # noqa: F401
    except ImportError as exc:
        raise missing("matplotlib", "plot", "drawing the choose-k plot") from exc


# --------------------------------------------------------------------------- the analysis
@dataclass
class _Fit:
    centroids: np.ndarray  # float32 [k, d]
    labels: np.ndarray  # int32 [n]
    inertia: float


def _analyse(
    X: np.ndarray,
    *,
    max_clusters: int,
    n_components: int | None,
    method: str,
    sample_size: int | None,
    n_init: int,
    random_state: int,
    retrieval: bool,
    n_queries: int,
    show_progress: bool,
) -> KSelection:
    t0 = time.perf_counter()
    n, dim = X.shape
    rng = np.random.default_rng(random_state)
    if n_components is not None:
        mean, components = fit_pca(X, n_components, random_state)
        Z = apply_pca(X, mean, components)
    else:
        Z = X
    ks = list(range(2, max_clusters + 1))
    log.info(
        "choose k (%s): %d images, k = 2..%d, %s",
        method,
        n,
        max_clusters,
        "raw space" if n_components is None else f"PCA {n_components}",
    )

    # fixed samples, drawn before anything else so they do not depend on the method
    if method == "fast" and sample_size is not None and sample_size < n:
        sil_idx = np.sort(rng.choice(n, sample_size, replace=False))
    else:
        sil_idx = np.arange(n)
    perm = rng.permutation(n)
    q_idx = np.sort(rng.choice(n, min(n_queries, n), replace=False)) if retrieval else None

    confirmed: list[int] = []
    if method == "fast":
        fits = _sweep_fast(Z, ks, perm, n_init, rng, show_progress)
    else:
        fits = _sweep_exhaustive(Z, ks, n_init, random_state, rng, show_progress)

    Zs = np.ascontiguousarray(Z[sil_idx])
    sil = _silhouettes(
        Zs, [fits[k].labels[sil_idx] for k in ks], show_progress=show_progress and method != "fast"
    )
    dbi = np.array([_davies_bouldin(Zs, fits[k].labels[sil_idx]) for k in ks])
    inertia = np.array([fits[k].inertia for k in ks])
    knee, knee_method = _knee(ks, inertia)
    best_k, rec, rule = _recommend(ks, sil, knee)

    if method == "fast":
        # confirm the candidates: Lloyd on all images from the sweep's centroids, until the
        # candidate set (which the new scores may change) has been confirmed entirely
        sqZ = np.einsum("ij,ij->i", Z, Z)
        for _round in range(_MAX_CONFIRM_ROUNDS):
            todo = [k for k in _candidates(ks, sil, knee, rec) if k not in confirmed]
            if not todo:
                break
            for k in _progress(todo, show_progress, "confirm k"):
                confirmed.append(k)
                C, obj, lab = _lloyd(Z, sqZ, fits[k].centroids)
                fits[k] = _Fit(C, lab, obj)
                i = ks.index(k)
                inertia[i] = obj
                sil[i] = _silhouettes(Zs, [lab[sil_idx]])[0]
                dbi[i] = _davies_bouldin(Zs, lab[sil_idx])
            knee, knee_method = _knee(ks, inertia)
            best_k, rec, rule = _recommend(ks, sil, knee)

    ret = None
    if q_idx is not None:
        ret = _retrieval_scores(X, Z, ks, fits, q_idx)

    seconds = time.perf_counter() - t0
    return KSelection(
        ks=tuple(ks),
        inertia=tuple(float(v) for v in inertia),
        silhouette=tuple(float(v) for v in sil),
        davies_bouldin=tuple(float(v) for v in dbi),
        knee_k=int(knee),
        best_silhouette_k=int(best_k),
        recommended_k=int(rec),
        rule=rule,
        n_components=n_components,
        n_images=int(n),
        dim=int(dim),
        seconds=float(seconds),
        retrieval=ret,
        method=method,
        silhouette_sample=len(sil_idx),
        knee_method=knee_method,
        confirmed_ks=tuple(sorted(confirmed)),
        random_state=random_state,
    )


def _n_train(n: int, k: int) -> int:
    return min(n, max(_MIN_TRAIN, _PER_CENTROID * k))


def _progress(items: Sequence[int], show: bool, desc: str) -> Iterator[int]:
    from tqdm.auto import tqdm

    yield from tqdm(items, desc=desc, unit="k", disable=not show, leave=False)


_FitK = Callable[[int, list[np.ndarray], bool], tuple[np.ndarray, float]]


def _sweep_fast(
    Z: np.ndarray, ks: list[int], perm: np.ndarray, n_init: int, rng: np.random.Generator, show_progress: bool
) -> dict[int, _Fit]:
    """K-means for every k on one training sample: k-means++ restarts + warm starts from k - 1 and k + 1.

    The sweep runs in the top ``max(64, 4 * max_clusters)`` principal directions of the training
    sample (when the space has more), where Lloyd costs a fraction; each solution is then lifted back:
    its centroids are the means of its clusters' full vectors, and all images are assigned to them in
    the full space (inertia, labels, silhouette are all computed there).
    """
    n, d = Z.shape
    kmax = ks[-1]
    T = np.ascontiguousarray(Z[perm[: _n_train(n, kmax)]])
    r = max(_SWEEP_MIN_DIMS, _SWEEP_DIMS_PER_K * kmax)
    Tr = _project_top(T, r, rng) if d > r and len(T) > r else T
    sq = np.einsum("ij,ij->i", Tr, Tr)
    pool = Tr[: min(len(Tr), _SEED_POOL)]
    # one greedy k-means++ sequence per restart; its first k centres seed k

    def fit_k(k: int, warm: list[np.ndarray], restarts: bool) -> tuple[np.ndarray, float]:
        inits = ([s[:k] for s in seeds] if restarts else []) + warm
        return min((_lloyd(Tr, sq, init)[:2] for init in inits), key=lambda res: res[1])

    # thousands of small matrix products: one thread is faster than two (no start/spin-wait cost)
    with _thread_limit(_SWEEP_THREADS):
        seeds = [_kmeanspp(pool, min(kmax, len(pool)), rng) for _ in range(n_init)]
        best = _sweep(ks, fit_k, Tr, sq, rng, show_progress, "choose k")
    fits: dict[int, _Fit] = {}
    for k in ks:
        C = best[k][0]
        if Tr is not T:  # lift: the clusters' means in the full space
            sums, counts = _cluster_sums(_sq_dists(Tr, sq, C).argmin(axis=1), k, T)
            C = sums / np.maximum(counts, 1)[:, None].astype(np.float32)
            empty = counts == 0
            if empty.any():
                C[empty] = T[rng.choice(len(T), int(empty.sum()), replace=False)]
        fits[k] = _assign(Z, C)
    return fits


def _project_top(T: np.ndarray, r: int, rng: np.random.Generator) -> np.ndarray:
    """Centred rows of ``T`` in its top ``r`` principal directions (randomized range finder)."""
    Tc = T - T.mean(axis=0)
    Q = _orth(Tc @ rng.standard_normal((T.shape[1], r + 10)).astype(np.float32))
    for _ in range(2):
        Q = _orth(Tc @ (Tc.T @ Q))
    _u, _s, Vt = np.linalg.svd(Q.T @ Tc, full_matrices=False)
    return np.ascontiguousarray(Tc @ Vt[:r].T.astype(np.float32))


def _orth(Y: np.ndarray) -> np.ndarray:
    """An orthonormal basis of the columns of ``Y`` (via the small Gram matrix: gemm, no QR)."""
    G = (Y.T @ Y).astype(np.float64)
    w, V = np.linalg.eigh(G)
    keep = w > w.max() * 1e-10
    return (Y @ (V[:, keep] / np.sqrt(w[keep])).astype(np.float32)).astype(np.float32)


def _sweep_exhaustive(
    Z: np.ndarray,
    ks: list[int],
    n_init: int,
    random_state: int,
    rng: np.random.Generator,
    show_progress: bool,
) -> dict[int, _Fit]:
    """scikit-learn KMeans(n_init) on all rows for every k, plus the same warm starts as the fast path."""
    from sklearn.cluster import KMeans

    Z64 = Z.astype(np.float64)  # scikit-learn's k-means++ is much faster on float64 than on float32
    sq = np.einsum("ij,ij->i", Z, Z)

    def fit_k(k: int, warm: list[np.ndarray], restarts: bool) -> tuple[np.ndarray, float]:
        runs = [KMeans(n_clusters=k, n_init=n_init, random_state=random_state)] if restarts else []
        runs += [KMeans(n_clusters=k, init=w.astype(np.float64), n_init=1) for w in warm]
        out: list[tuple[np.ndarray, float]] = []
        for km in runs:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="Number of distinct clusters")
                km.fit(Z64)
            out.append((np.asarray(km.cluster_centers_, dtype=np.float32), float(km.inertia_)))
        return min(out, key=lambda r: r[1])

    best = _sweep(ks, fit_k, Z, sq, rng, show_progress, "choose k (exhaustive)")
    return {k: _assign(Z, best[k][0]) for k in ks}


def _sweep(
    ks: list[int],
    fit_k: _FitK,
    T: np.ndarray,
    sq: np.ndarray,
    rng: np.random.Generator,
    show_progress: bool,
    desc: str,
) -> dict[int, tuple[np.ndarray, float]]:
    """Forward over k: restarts + (k - 1 solution plus one centre); backward: k + 1 solution minus one.

    Lloyd from the neighbouring k's solution escapes most of the local minima that independent
    restarts get stuck in (a centre shared by two blobs while another blob holds two).
    """
    from tqdm.auto import tqdm

    best: dict[int, tuple[np.ndarray, float]] = {}
    with tqdm(total=2 * len(ks) - 1, desc=desc, unit="k", disable=not show_progress, leave=False) as bar:
        for k in ks:
            warm = [_add_centre(T, sq, best[k - 1][0], rng)] if k - 1 in best else []
            best[k] = fit_k(k, warm, True)
            bar.update()
        for k in reversed(ks[:-1]):
            cand = fit_k(k, [_drop_centre(T, sq, best[k + 1][0])], False)
            if cand[1] < best[k][1]:
                best[k] = cand
            bar.update()
    return best


def _cluster_sums(labels: np.ndarray, k: int, T: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(sums [k, d] of the rows of T per label, counts [k])`` via a sparse one-hot product."""
    import scipy.sparse

    counts = np.bincount(labels, minlength=k)
    indptr = np.concatenate([[0], np.cumsum(counts)])
    order = np.argsort(labels, kind="stable")
    onehot = scipy.sparse.csr_matrix((np.ones(len(T), dtype=T.dtype), order, indptr), shape=(k, len(T)))
    return np.asarray(onehot @ T), counts


def _sq_dists(T: np.ndarray, sq: np.ndarray, C: np.ndarray) -> np.ndarray:
    """Squared distances [n, k] (float32, clipped at 0)."""
    D = T @ C.T
    D *= -2
    D += np.einsum("ij,ij->i", C, C)[None, :]
    D += sq[:, None]
    np.maximum(D, 0, out=D)
    return D


def _lloyd(T: np.ndarray, sq: np.ndarray, C0: np.ndarray) -> tuple[np.ndarray, float, np.ndarray]:
    """Lloyd iterations from ``C0`` until no label changes or the objective improves < 1e-4 relatively.

    Returns ``(centroids, objective, labels)``: the objective (sum of squared distances of ``T``) and
    labels belong to the returned centroids. An empty cluster moves to the point farthest from its
    centroid.
    """
    C = np.array(C0, dtype=np.float32, copy=True)
    n, k = len(T), len(C)
    rows = np.arange(n)
    prev_lab: np.ndarray | None = None
    prev_obj = math.inf
    for it in range(_MAX_ITER):
        D = _sq_dists(T, sq, C)
        lab = D.argmin(axis=1)
        dmin = D[rows, lab]
        obj = float(dmin.sum(dtype=np.float64))
        if it == _MAX_ITER - 1 or (
            prev_lab is not None and (np.array_equal(lab, prev_lab) or prev_obj - obj <= _TOL * obj)
        ):
            break
        prev_lab, prev_obj = lab, obj
        sums, counts = _cluster_sums(lab, k, T)
        C = sums / np.maximum(counts, 1)[:, None].astype(np.float32)
        empty = np.flatnonzero(counts == 0)
        if len(empty):
            far = np.argsort(-dmin, kind="stable")[: len(empty)]
            C[empty] = T[far]
    return C, obj, lab.astype(np.int32)


def _add_centre(T: np.ndarray, sq: np.ndarray, C: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``C`` plus one centre chosen by a greedy k-means++ step (D^2 sampling, best of 2 + log k)."""
    closest = _sq_dists(T, sq, C).min(axis=1)
    pot = float(closest.sum(dtype=np.float64))
    if pot <= 0:
        return np.vstack([C, T[int(rng.integers(len(T)))]])
    trials = 2 + int(math.log(len(C) + 1))
    cand = np.minimum(
        np.searchsorted(np.cumsum(closest, dtype=np.float64), rng.random(trials) * pot), len(T) - 1
    )
    pots = np.minimum(closest[None, :], _sq_dists(T, sq, T[cand]).T).sum(axis=1, dtype=np.float64)
    return np.vstack([C, T[int(cand[int(np.argmin(pots))])]])


def _drop_centre(T: np.ndarray, sq: np.ndarray, C: np.ndarray) -> np.ndarray:
    """``C`` without the centre whose removal raises the objective least."""
    D = _sq_dists(T, sq, C)
    two = np.partition(D, 1, axis=1)[:, :2]
    lab = D.argmin(axis=1)
    cost = np.bincount(lab, weights=(two[:, 1] - two[:, 0]).astype(np.float64), minlength=len(C))
    return np.delete(C, int(np.argmin(cost)), axis=0)


def _assign(Z: np.ndarray, centroids: np.ndarray) -> _Fit:
    """Nearest centroid of every row (exact, in row blocks); inertia in float64."""
    centroids = np.ascontiguousarray(centroids, dtype=np.float32)
    n = len(Z)
    labels = np.empty(n, dtype=np.int32)
    inertia = 0.0
    step = max(1024, _BLOCK_BYTES // (4 * max(1, len(centroids))))
    for s in range(0, n, step):
        blk = Z[s : s + step]
        D = _sq_dists(blk, np.einsum("ij,ij->i", blk, blk), centroids)
        lab = D.argmin(axis=1)
        labels[s : s + step] = lab
        inertia += float(D[np.arange(len(blk)), lab].sum(dtype=np.float64))
    return _Fit(centroids, labels, inertia)


def _kmeanspp(X: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """Greedy k-means++ (2 + log k local trials per centre, as scikit-learn) in float32 numpy."""
    n = len(X)
    sq = np.einsum("ij,ij->i", X, X)
    trials = 2 + int(math.log(k))
    first = int(rng.integers(n))
    idx = [first]
    closest = np.maximum(sq + sq[first] - 2 * (X @ X[first]), 0)
    pot = float(closest.sum(dtype=np.float64))
    for _ in range(1, k):
        if pot <= 0:  # fewer distinct points than k: repeat a point (Lloyd splits empty clusters)
            idx.append(int(rng.integers(n)))
            continue
        r = rng.random(trials) * pot
        cand = np.minimum(np.searchsorted(np.cumsum(closest, dtype=np.float64), r), n - 1)
        dc = np.maximum(sq[None, :] + sq[cand][:, None] - 2 * (X[cand] @ X.T), 0)
        new = np.minimum(closest[None, :], dc)
        pots = new.sum(axis=1, dtype=np.float64)
        b = int(np.argmin(pots))
        closest, pot = new[b], float(pots[b])
        idx.append(int(cand[b]))
    return np.ascontiguousarray(X[idx])


def _silhouettes(
    Zs: np.ndarray, label_sets: Sequence[np.ndarray], *, show_progress: bool = False
) -> np.ndarray:
    """Exact mean silhouette (Euclidean) of each labelling of the rows of ``Zs``, in one pass.

    Same definition as ``sklearn.metrics.silhouette_score``: a(i) mean distance to the other
    members of i's cluster, b(i) the smallest mean distance to another non-empty cluster,
    s(i) = (b - a) / max(a, b), 0 for members of singleton clusters. NaN where fewer than 2
    clusters are non-empty. Distances are computed once per row block and multiplied by the
    one-hot memberships of all labellings together, so extra labellings are nearly free.
    """
    m = len(Zs)
    if not label_sets:
        return np.zeros(0)
    sizes = [int(lab.max()) + 1 for lab in label_sets]
    offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    total = int(offsets[-1])
    onehot = np.zeros((m, total), dtype=np.float32)
    rows = np.arange(m)
    for j, lab in enumerate(label_sets):
        onehot[rows, offsets[j] + lab] = 1.0
    counts = onehot.sum(axis=0, dtype=np.float64)
    sq = np.einsum("ij,ij->i", Zs, Zs).astype(np.float32)
    ssum = np.zeros(len(label_sets))
    block = int(max(1, min(m, _BLOCK_BYTES // (4 * max(m, total)))))
    from tqdm.auto import tqdm

    for s in tqdm(
        range(0, m, block), desc="silhouette", unit="block", disable=not show_progress, leave=False
    ):
        e = min(m, s + block)
        D = Zs[s:e] @ Zs.T
        D *= -2
        D += sq[s:e, None]
        D += sq[None, :]
        np.maximum(D, 0, out=D)
        np.sqrt(D, out=D)
        D[np.arange(e - s), np.arange(s, e)] = 0.0
        P = (D @ onehot).astype(np.float64)  # [block, total] sums of distances to each cluster
        for j, lab in enumerate(label_sets):
            o, kk = offsets[j], sizes[j]
            c = counts[o : o + kk]
            S = P[:, o : o + kk]
            own = lab[s:e]
            r = np.arange(e - s)
            n_own = c[own]
            a = S[r, own] / np.maximum(n_own - 1, 1)
            with np.errstate(divide="ignore", invalid="ignore"):
                means = np.where(c > 0, S / c, np.inf)
            means[r, own] = np.inf
            b = means.min(axis=1)
            denom = np.maximum(a, b)
            with np.errstate(divide="ignore", invalid="ignore"):
                si = np.where((n_own > 1) & np.isfinite(b) & (denom > 0), (b - a) / denom, 0.0)
            ssum[j] += si.sum()
    out = ssum / m
    for j in range(len(label_sets)):
        if np.count_nonzero(counts[offsets[j] : offsets[j] + sizes[j]]) < 2:
            out[j] = np.nan
    return out


def _davies_bouldin(Zs: np.ndarray, labels: np.ndarray) -> float:
    """Davies-Bouldin index as ``sklearn.metrics.davies_bouldin_score``, vectorised; NaN below 2 clusters."""
    k = int(labels.max()) + 1
    sums, counts = _cluster_sums(labels, k, Zs)
    present = np.flatnonzero(counts)
    if len(present) < 2:
        return float("nan")
    C = (sums[present] / counts[present, None]).astype(np.float32)
    remap = np.full(k, -1)
    remap[present] = np.arange(len(present))
    lab = remap[labels]
    sqz = np.einsum("ij,ij->i", Zs, Zs)
    sqc = np.einsum("ij,ij->i", C, C)
    dot = np.einsum("ij,ij->i", Zs, C[lab]) if len(present) > 64 else (Zs @ C.T)[np.arange(len(Zs)), lab]
    dist = np.sqrt(np.maximum(sqz + sqc[lab] - 2 * dot, 0)).astype(np.float64)
    intra = np.bincount(lab, weights=dist, minlength=len(present)) / counts[present]
    C64 = C.astype(np.float64)
    sq64 = sqc.astype(np.float64)
    cd = np.sqrt(np.maximum(sq64[:, None] + sq64[None, :] - 2 * (C64 @ C64.T), 0))
    np.fill_diagonal(cd, 0.0)
    if np.allclose(intra, 0) or np.allclose(cd, 0):
        return 0.0
    cd[cd == 0] = np.inf
    return float(np.mean(np.max((intra[:, None] + intra[None, :]) / cd, axis=1)))


def _knee(ks: Sequence[int], inertia: np.ndarray) -> tuple[int, str]:
    """Knee of the decreasing, roughly convex inertia curve: kneed, else the chord rule."""
    if len(ks) < 3:
        return int(ks[0]), "chord"
    try:
        from kneed import KneeLocator
    except ImportError:
        log.info("kneed is not installed: knee found by the chord rule (pip install 'varsitysrch[plot]')")
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            knee = KneeLocator(
                list(ks), list(map(float, inertia)), curve="convex", direction="decreasing", S=1.0
            ).knee
        if knee is not None:
            return int(knee), "kneed"
        log.info("kneed found no knee: using the chord rule")
    return _chord_knee(ks, inertia), "chord"


def _chord_knee(ks: Sequence[int], inertia: np.ndarray) -> int:
    x = np.asarray(ks, dtype=np.float64)
    y = np.asarray(inertia, dtype=np.float64)
    xr = x[-1] - x[0]
    yr = y.max() - y.min()
    if xr <= 0 or yr <= 0:
        return int(ks[0])
    xn = (x - x[0]) / xr
    yn = (y - y.min()) / yr
    chord = yn[0] + (yn[-1] - yn[0]) * xn
    return int(ks[int(np.argmax(chord - yn))])


def _recommend(ks: Sequence[int], sil: np.ndarray, knee: int) -> tuple[int, int, str]:
    """(best_silhouette_k, recommended_k, rule text); see the module docstring."""
    s = np.asarray(sil, dtype=np.float64)
    finite = np.isfinite(s)
    if not finite.any():
        return (
            int(ks[0]),
            int(knee),
            f"no silhouette could be computed: the knee of the inertia curve (k={knee})",
        )
    best_i = int(np.nanargmax(s))
    best_k, best_s = int(ks[best_i]), float(s[best_i])
    spread = float(np.nanmax(s) - np.nanmin(s))
    if len(ks) >= 3 and spread < SIL_FLAT:
        return (
            best_k,
            int(knee),
            f"the silhouette is flat (max - min = {spread:.3f} < {SIL_FLAT}): the knee of the inertia curve "
            f"(k={knee})",
        )
    near = [int(k) for k, v, ok in zip(ks, s, finite, strict=True) if ok and v >= best_s - SIL_TIE]
    rec = min(near, key=lambda k: (abs(k - knee), k))
    if len(near) == 1:
        rule = f"the highest silhouette ({best_s:.3f} at k={best_k}; no other k within {SIL_TIE})"
    else:
        rule = (
            f"the highest silhouette ({best_s:.3f} at k={best_k}); ks within {SIL_TIE} of it: {near}; "
            f"of these the nearest to the knee of the inertia curve (k={knee})"
        )
    return best_k, int(rec), rule


def _candidates(ks: Sequence[int], sil: np.ndarray, knee: int, rec: int) -> list[int]:
    s = np.where(np.isfinite(sil), sil, -np.inf)
    order = np.argsort(-s, kind="stable")[:N_TOP]
    out = [int(ks[i]) for i in order]
    for k in (rec, knee):
        if k not in out:
            out.append(int(k))
    return out


def _retrieval_scores(
    X: np.ndarray, Z: np.ndarray, ks: Sequence[int], fits: Mapping[int, _Fit], q_idx: np.ndarray
) -> RetrievalScores:
    n = len(X)
    top = min(RECALL_AT, n - 1)
    nn = _exact_neighbours(X, q_idx, top)
    Zq = Z[q_idx]
    recall: dict[int, list[float]] = {p: [] for p in NPROBES}
    scanned: dict[int, list[float]] = {p: [] for p in NPROBES}
    for k in ks:
        fit = fits[k]
        counts = np.bincount(fit.labels, minlength=k).astype(np.float64)
        c = fit.centroids
        dq = (Zq * Zq).sum(1)[:, None] + (c * c).sum(1)[None, :] - 2 * (Zq @ c.T)
        probes = np.argsort(dq, axis=1, kind="stable")
        lab_nn = fit.labels[nn]  # [q, top]
        for p in NPROBES:
            pp = min(p, k)
            hit = (lab_nn[:, :, None] == probes[:, None, :pp]).any(axis=2)
            recall[p].append(float(hit.mean()))
            scanned[p].append(float(counts[probes[:, :pp]].sum(axis=1).mean() / n))
    return RetrievalScores(
        nprobe=NPROBES,
        recall_at_10={p: tuple(v) for p, v in recall.items()},
        scanned_fraction={p: tuple(v) for p, v in scanned.items()},
        n_queries=len(q_idx),
        top=top,
    )


def _exact_neighbours(X: np.ndarray, q_idx: np.ndarray, top: int) -> np.ndarray:
    """Indices [q, top] of the nearest rows of ``X`` (cosine; unit rows) to ``X[q_idx]``, self excluded."""
    out = np.empty((len(q_idx), top), dtype=np.int64)
    step = max(1, _BLOCK_BYTES // (4 * len(X)))
    for s in range(0, len(q_idx), step):
        q = q_idx[s : s + step]
        sim = X[q] @ X.T
        sim[np.arange(len(q)), q] = -np.inf
        part = np.argpartition(-sim, top - 1, axis=1)[:, :top]
        order = np.argsort(-np.take_along_axis(sim, part, axis=1), axis=1, kind="stable")
        out[s : s + step] = np.take_along_axis(part, order, axis=1)
    return out


# --------------------------------------------------------------------------- helpers
def _json_float(v: float) -> float | None:
    return None if v is None or not math.isfinite(v) else float(v)


def _save_figure(fig: Figure, path: Path) -> None:
    fmt = path.suffix.lstrip(".").lower() or "png"
    supported = fig.canvas.get_supported_filetypes()
    if fmt not in supported:
        raise InvalidArgumentError(
            f"plot_path must end in one of {', '.join('.' + f for f in sorted(supported))}; got {str(path)!r}"
        )
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=fmt, dpi=100)


def _show(fig: Figure) -> None:
    try:
        from IPython import get_ipython
        from IPython.display import display
    except ImportError:
        get_ipython = None
    if get_ipython is None or get_ipython() is None:
        log.warning(
            "show=True displays the figure in a notebook only (no IPython here); use plot_path to save it"
        )
        return
    display(fig)


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


@contextlib.contextmanager
def _thread_limit(n_threads: int | None) -> Iterator[None]:
    if n_threads is None:
        yield
        return
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=n_threads):
        yield
