"""Choosing k: elbow, silhouette, Davies-Bouldin, search recall -- and a recommended k.

:func:`get_optimal_num_clusters` (a feature store folder, or the original package's folder of
per-image ``.npy`` files) and :func:`_choose_k` (a matrix) fit K-means for every k in
``2..max_clusters`` and score each k:

* **inertia** -- sum of squared distances of *all* images to their nearest centroid (the elbow);
* **silhouette** -- scikit-learn's mean silhouette (Euclidean), in the *score space* (below), on a
  fixed random sample of ``sample_size`` images (``method="fast"``) or on all images
  (``method="exhaustive"``); with its standard error;
* **Davies-Bouldin** -- scikit-learn's formula on the same rows (lower is better);
* **retrieval** (``retrieval=True``) -- recall@10 of cluster-restricted search against exact search
  when the query's ``nprobe`` = 1, 2, 4 nearest clusters are searched, and the share of the
  catalogue that scans (see :class:`_RetrievalScores`).

The spaces
----------
Rows are L2-normalised first (feature stores already are). With ``n_components=None`` the
clustering runs in that raw feature space. With ``n_components=c`` it runs in the PCA space of
:func:`varsitysrch._pca.fit_pca` / :func:`~varsitysrch._pca.apply_pca` -- the one
``train_clusters(..., n_components=c)`` fits the same way, so the k chosen here is the k trained
there. The silhouette and Davies-Bouldin are computed in the *score space*: the top ``_SIL_DIMS``
(16) principal directions of that analysis space, rows re-normalised (the analysis space itself
when it has at most 16 dims). In the 1,280 dims of raw CNN features the distances between photos
are dominated by directions in which every class varies alike, the silhouette is flat and highest
at k=2 (300 clothing photos of 10 classes: 0.10 at k=2, 0.04-0.07 elsewhere); in the top
directions the classes separate (0.18 at k=8; figures in ``docs/choose_k.md``). Exact neighbours
for the retrieval scores are found in the raw feature space; cluster membership and the query's
nearest clusters use the analysis space.

The recommendation rule
-----------------------
Silhouettes are compared as printed, rounded to 3 decimals, so that no message contradicts itself.

1. ``knee_k``: the knee of the inertia curve, by ``kneed.KneeLocator(curve="convex",
   direction="decreasing", S=1)``; where it finds none, the k whose inertia lies farthest below
   the straight line from the first to the last point of the curve, both axes scaled to [0, 1]
   (Kneedle's difference-curve maximum without its threshold).
2. ``best_silhouette_k``: the k with the highest silhouette (the smallest such k on an exact tie).
3. The smallest k considered, ``min_k``: 2 while some k reaches a silhouette of ``_SIL_CLEAR`` (0.5,
   Kaufman and Rousseeuw's "reasonable structure"): clear groups are recommended however few.
   Below it the groups may be artificial and k is chosen for search as much as for groups:
   ``min_k = _min_k_for(n_images)``, the fewest clusters that keep a nearest-cluster search within
   twice its least cost (about 0.27 sqrt(n): 5 for 300 images, 14 for 2,640), at most max_clusters.
4. ``recommended_k``, among the ks >= ``min_k``: if the silhouette is flat there (max - min <
   ``_SIL_FLAT``), the knee (raised to ``min_k``). Otherwise, of the ks whose silhouette lies in the
   tie band -- within the standard error of the best silhouette (at least ``_SIL_TIE``, about the
   sampling error on 5,000 images) of it -- the one nearest the knee (the smaller on a tie).
5. A best silhouette under ``_SIL_WEAK`` (0.25, "no substantial structure") is said in the rule: the
   clusters overlap, so k is a speed/recall trade-off (the retrieval scores show it).

``KSelection.rule`` restates the rule with the numbers of the run; ``KSelection.explanation``
(``k=<k>: <rule>``) is the one line that ``str(selection)``, :meth:`KSelection.summary`, the plot's
caption, the JSON and the CLI print.

The fast path (``method="fast"``, default)
------------------------------------------
1. A training sample of ``max(4096, 128 * max_clusters)`` images (all, if fewer), projected on its
   top ``max(64, 4 * max_clusters)`` principal directions (``fit_pca``) when the space has more.
2. The sweep (:func:`_sweep`): for each k, 20 Lloyd iterations (faiss, :func:`_faiss_lloyd`) from
   ``n_init`` k-means++ seedings (``sklearn.cluster.kmeans_plusplus``: one sequence of
   ``max_clusters`` centres per restart, whose first k seed k) and from a *warm start* -- the k - 1
   solution plus one k-means++ centre (``sklearn.cluster.kmeans_plusplus`` weighted by the squared
   distances); then, going down, the k + 1 solution minus its least useful centre. The lowest
   inertia wins. The warm starts are kept because the benchmark needs them: without them
   independent restarts stay in local minima (one centre on two blobs, two on one) at some ks, the
   silhouette curve gets dents and the recommendation moves (``docs/choose_k.md``).
3. Each solution is lifted to the analysis space (centroids = means of the full vectors of its
   clusters) and *every* image is assigned there (:func:`~varsitysrch._neighbours.nearest_centroid`):
   inertia and labels are exact for those centroids.
4. Silhouette and Davies-Bouldin of every k on the fixed sample in one pass (:func:`_scores`).
5. Confirmation: the candidates -- the 3 best silhouettes, the knee and the recommended k -- are
   re-fitted by Lloyd (scikit-learn ``KMeans(init=...)``) on *all* images from their sweep
   centroids, rescored, and the rule re-applied until no new candidate appears
   (``KSelection.confirmed_ks``).

``method="exhaustive"`` is the reference: the same sweep with scikit-learn ``KMeans`` on all images
in the analysis space, the silhouette on all images (O(n^2) time, O(n) memory per row block).
``benchmarks/bench_choose_k.py`` compares the fast path with it and with the bare scikit-learn
fits a user would otherwise run (20,000 x 256, k = 2..30: about a third of their time, the same k).

Threads: ``n_threads`` limits BLAS/OpenMP threads (threadpoolctl) while running; by default one
thread on machines with at most 2 cores and for small inputs, and for the sweep's many small fits.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import textwrap
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import numpy as np

from ._config import ChooseKOptions, Compute, settle
from ._errors import InvalidArgumentError
from ._io import atomic_path, write_csv, write_json
from ._neighbours import centroid_order, exact_topk, nearest_centroid, probe_recall
from ._pca import apply_pca, fit_pca
from ._progress import bar as progress_bar
from ._progress import progress as progress_bars
from ._store import load_features, normalize_rows

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["KSelection", "get_optimal_num_clusters"]

log = logging.getLogger(__name__)

_Method = Literal["fast", "exhaustive"]
_T = TypeVar("_T")
_PlotPath = str | os.PathLike[str] | Literal[False] | None

#: Where :func:`get_optimal_num_clusters` writes its plot unless told otherwise (the original's name,
#: relative to the current working folder).
_DEFAULT_PLOT = "optimal_clusters.png"
_NPROBES: tuple[int, ...] = (1, 2, 4)
_RECALL_AT = 10
_SIL_TIE = 0.002  # the tie band is at least this (~ the sampling error of a silhouette on 5,000 images)
_SIL_FLAT = 0.02  # a silhouette range below this is "flat": the knee decides
_SIL_WEAK = 0.25  # a best silhouette below this means weak cluster structure
_SIL_CLEAR = 0.5  # below this best silhouette (not "reasonable structure"), k >= _min_k_for(n_images)
_N_TOP = 3  # best-silhouette ks confirmed by the fast path
_MIN_TRAIN = 4096  # fast path: training sample of max(_MIN_TRAIN, _PER_CENTROID * max_clusters) images
_PER_CENTROID = 128
_SWEEP_MIN_DIMS = 64  # the fast sweep runs in max(_SWEEP_MIN_DIMS, _SWEEP_DIMS_PER_K * max_clusters) PCA dims
_SWEEP_DIMS_PER_K = 4
_MAX_CONFIRM_ROUNDS = 3
_WARM_STARTS = True  # the sweep's warm starts (benchmarks/bench_choose_k.py --no-warm-start turns them off)
_LLOYD_ITERS = 20  # Lloyd iterations of each fast-sweep fit (faiss)
_SWEEP_THREADS: int | None = 1  # BLAS/OpenMP threads in the sweep (None: as set outside)
_SMALL = 4_000_000  # n_images * dim at or below which n_threads=None means 1 thread
_TOPK_CHUNK = 4096  # catalogue rows per exact_topk chunk in the retrieval scores
_SIL_DIMS = 16  # the silhouette and Davies-Bouldin are scored in this many principal directions (at most)
_DIST_BLOCK_ELEMS = 1 << 22  # distances per block of the one-pass silhouette (32 MiB of float64)


# --------------------------------------------------------------------------- results
@dataclass(frozen=True)
class _RetrievalScores:
    """Search quality per k: cluster-restricted search vs exact search.

    Queries are ``n_queries`` random catalogue images, each searched against all the *other*
    images (leave-one-out self-queries). Exact search: the ``top`` (10) nearest by cosine in the raw
    feature space. Cluster-restricted search: only the images in the query's ``nprobe`` nearest
    clusters, ranked exactly. ``recall_at_10[nprobe][i]`` is the share of the exact top 10 that the
    restricted search returns for ``ks[i]`` (the share of the exact top 10 lying in the probed
    clusters); ``scanned_fraction[nprobe][i]`` the mean share of the catalogue in the probed
    clusters (the cost relative to exact search). ``nprobe >= k`` scans everything (recall 1).
    """

    nprobe: tuple[int, ...]
    recall_at_10: Mapping[int, tuple[float, ...]]
    scanned_fraction: Mapping[int, tuple[float, ...]]
    n_queries: int
    top: int = _RECALL_AT

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
    NaN. ``seconds`` is the wall time of the analysis (without writing files). ``plot_path`` is
    where the plot was written (``None``: not written). ``score_dims``: the principal directions the
    silhouette and Davies-Bouldin were computed in (``None``: the analysis space itself).
    ``tie_band`` and ``tied_ks``: the band and the ks in it; ``min_k``: the smallest k considered
    (above 2 only when no k reaches a silhouette of 0.5, :func:`_min_k_for`). :attr:`explanation`
    is the one-line explanation (``k=<k>: <rule>``); ``str(selection)`` adds where the plot is.
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
    retrieval: _RetrievalScores | None
    method: str = "fast"
    silhouette_sample: int = 0
    knee_method: str = "kneed"
    confirmed_ks: tuple[int, ...] = ()
    random_state: int = 0
    plot_path: Path | None = None
    tie_band: float = _SIL_TIE
    tied_ks: tuple[int, ...] = ()
    score_dims: int | None = None
    min_k: int = 2

    def __str__(self) -> str:
        """:attr:`explanation` and where the plot went: the line get_optimal_num_clusters prints."""
        if self.plot_path is None:
            return self.explanation
        return f"{self.explanation}; plot saved to {self.plot_path}"

    @property
    def explanation(self) -> str:
        """The one-line explanation of the recommendation, ``k=<k>: <rule>``, the weak-structure warning
        included where it applies. ``str()``, :meth:`summary`, the plot's caption and the CLI print it."""
        return f"k={self.recommended_k}: {self.rule}"

    @property
    def best_silhouette(self) -> float:
        finite = [v for v in self.silhouette if math.isfinite(v)]
        return max(finite) if finite else float("nan")

    @property
    def weak_structure(self) -> bool:
        """True when even the best silhouette, as printed (3 decimals), is below ``_SIL_WEAK`` (0.25)."""
        return math.isfinite(self.best_silhouette) and _r3(self.best_silhouette) < _SIL_WEAK

    @property
    def weak_note(self) -> str:
        """The weak-structure warning (part of :attr:`rule` when :attr:`weak_structure`)."""
        return _weak_text(_r3(self.best_silhouette))

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
            "weak_structure": self.weak_structure,
            "method": self.method,
            "n_components": self.n_components,
            "space": self.space,
            "n_images": self.n_images,
            "dim": self.dim,
            "silhouette_sample": self.silhouette_sample,
            "score_dims": self.score_dims,
            "tie_band": self.tie_band,
            "tied_ks": list(self.tied_ks),
            "min_k": self.min_k,
            "explanation": self.explanation,
            "confirmed_ks": list(self.confirmed_ks),
            "random_state": self.random_state,
            "seconds": round(self.seconds, 3),
            "plot_path": None if self.plot_path is None else str(self.plot_path),
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
        lines.append(f"recommended {self.explanation}")
        return "\n".join(lines)

    def write_scores(self, path: str | os.PathLike[str]) -> tuple[Path, Path]:
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
    def plot(self, path: str | os.PathLike[str] | None = None) -> Figure:
        """Draw the figure that explains the recommendation; return it (written to ``path`` if given).

        Panels: the silhouette per k with the tie band shaded and the recommended k marked; the
        inertia (elbow) with the knee marked; with retrieval scores, recall@10 against the share of
        the catalogue scanned, one point per k, for each nprobe. Value axes start at zero. A weak
        structure (best silhouette < 0.25) is said in the silhouette panel and the caption. The
        file format comes from the suffix (.png, .svg, .pdf, ...; PNG if none); the file is written
        atomically. ``matplotlib.figure.Figure`` is used directly: no pyplot, no display needed.
        """
        from matplotlib.figure import Figure

        ncols = 3 if self.retrieval is not None else 2
        fig = Figure(figsize=(5.4 * ncols, 5.0), layout="constrained")
        axes = fig.subplots(1, ncols)
        self._plot_silhouette(axes[0])
        self._plot_inertia(axes[1])
        if self.retrieval is not None:
            self._plot_retrieval(axes[2], self.retrieval)
        fig.suptitle(
            f"Choosing k: {self.n_images:,} images, {self.space}; recommended k = {self.recommended_k}",
            fontsize="medium",
        )
        caption = f"Recommended {self.explanation}."
        fig.supxlabel(textwrap.fill(caption, width=60 * ncols), fontsize="small", ha="center")
        if path is not None:
            _save_figure(fig, Path(path))
        return fig

    def _plot_silhouette(self, ax: Axes) -> None:
        ks = np.asarray(self.ks)
        sil = np.asarray(self.silhouette, dtype=np.float64)
        rec = self.recommended_k
        ax.plot(ks, sil, "o-", color="tab:green", markersize=3.5, label="mean silhouette")
        best = self.best_silhouette
        if math.isfinite(best):
            tied = np.asarray(self.tied_ks or [self.best_silhouette_k])
            ax.axhspan(
                best - self.tie_band,
                best,
                color="tab:orange",
                alpha=0.35,
                label=f"tie band (within {self.tie_band:.3f})",
            )
            ax.plot(tied, sil[np.isin(ks, tied)], "s", color="tab:orange", markersize=6, label="tied ks")
            ax.axhline(
                _SIL_WEAK, color="tab:gray", linestyle=":", linewidth=1, label=f"weak below {_SIL_WEAK}"
            )
        if self.min_k > self.ks[0]:
            ax.axvspan(
                0,
                self.min_k - 0.5,
                color="tab:gray",
                alpha=0.15,
                label=f"k < {self.min_k}: too few for {self.n_images:,} images",
            )
        i_rec = self.ks.index(rec)
        ax.axvline(rec, color="tab:red", linewidth=1.5, alpha=0.6)
        ax.plot([rec], [sil[i_rec]], "*", color="tab:red", markersize=15, label=f"recommended k={rec}")
        finite = sil[np.isfinite(sil)]
        low = min(0.0, float(finite.min())) if len(finite) else 0.0
        high = max(_SIL_WEAK, float(finite.max())) if len(finite) else 1.0
        ax.set_ylim(low, high * 1.12)
        ax.set_xlim(0, ks[-1] + 1)
        sample = (
            "all images" if self.silhouette_sample >= self.n_images else f"{self.silhouette_sample:,} images"
        )
        dims = "" if self.score_dims is None else f", {self.score_dims} PCA dims"
        ax.set_title(f"Silhouette ({sample}{dims}; higher is better)")
        ax.set_xlabel("k (number of clusters)")
        ax.set_ylabel("mean silhouette (axis from 0)")
        if self.weak_structure:
            ax.text(
                0.03,
                0.04,
                f"weak structure: best silhouette {_r3(best):.3f} < {_SIL_WEAK}",
                transform=ax.transAxes,
                fontsize="small",
                color="tab:red",
            )
        ax.legend(loc="upper right", fontsize="x-small")
        ax.grid(alpha=0.3)

    def _plot_inertia(self, ax: Axes) -> None:
        ks = np.asarray(self.ks)
        inertia = np.asarray(self.inertia)
        rec = self.recommended_k
        ax.plot(ks, inertia, "o-", color="tab:blue", markersize=3.5, label="inertia")
        i_knee = self.ks.index(self.knee_k)
        ax.plot(
            [self.knee_k],
            [inertia[i_knee]],
            "D",
            color="black",
            markersize=8,
            label=f"knee k={self.knee_k} ({self.knee_method})",
        )
        ax.axvline(self.knee_k, color="black", linestyle="--", linewidth=1)
        ax.axvline(rec, color="tab:red", linewidth=1.5, alpha=0.6, label=f"recommended k={rec}")
        ax.set_ylim(0, float(inertia.max()) * 1.05)
        ax.set_xlim(0, ks[-1] + 1)
        ax.set_title("Elbow: inertia (all images; axis from 0)")
        ax.set_xlabel("k (number of clusters)")
        ax.set_ylabel("sum of squared distances to centroid")
        ax.legend(loc="upper right", fontsize="x-small")
        ax.grid(alpha=0.3)

    def _plot_retrieval(self, ax: Axes, ret: _RetrievalScores) -> None:
        i_rec = self.ks.index(self.recommended_k)
        for p in ret.nprobe:
            x = np.asarray(ret.scanned_fraction[p])
            y = np.asarray(ret.recall_at_10[p])
            (line,) = ax.plot(x, y, "o-", markersize=3, linewidth=1, label=f"nprobe={p}")
            ax.plot([x[i_rec]], [y[i_rec]], "*", color=line.get_color(), markersize=14, markeredgecolor="k")
            ax.annotate(
                f"k={self.recommended_k}",
                (x[i_rec], y[i_rec]),
                textcoords="offset points",
                xytext=(6, -12),
                fontsize="x-small",
            )
        ax.set_xlim(0, 1.02)
        ax.set_ylim(0, 1.02)
        ax.set_title(f"Search in the nearest clusters ({ret.n_queries:,} queries)")
        ax.set_xlabel("share of the catalogue scanned (one point per k)")
        ax.set_ylabel(f"recall@{ret.top} vs exact search")
        ax.legend(
            loc="lower right", fontsize="x-small", title="star: recommended k", title_fontsize="x-small"
        )
        ax.grid(alpha=0.3)


# --------------------------------------------------------------------------- public functions
def get_optimal_num_clusters(
    features_folder: str | os.PathLike[str],
    max_clusters: int = 30,
    n_components: int | None = None,
    *,
    options: ChooseKOptions | None = None,
    compute: Compute | None = None,
    plot_path: _PlotPath = _DEFAULT_PLOT,
    scores_path: str | os.PathLike[str] | None = None,
    show: bool | None = None,
    verbose: bool = True,
    show_progress: bool | None = None,
    **settings: Any,
) -> KSelection:
    """Score k = 2..max_clusters on a feature folder, recommend a k, save the plot, say so in one line.

    The original package's call ``get_optimal_num_clusters(features_folder, max_clusters=100,
    n_components=10)`` works unchanged: it writes the plot to ``optimal_clusters.png`` in the
    current working folder and prints one line such as ``k=23: the highest silhouette (...);
    plot saved to optimal_clusters.png``. The recommended k is ``result.recommended_k``.

    Args:
        features_folder: a feature store written by ``extract_features``, or a folder of per-image
            ``.npy`` files (the original package's layout).
        max_clusters: the largest k tried. Above ``n_images - 1`` it is lowered to that, with a
            warning (the original's examples pass 100 for small folders).
        n_components: see :func:`_choose_k`.
        options: a :class:`~varsitysrch.ChooseKOptions` (``method``, ``sample_size``, ``n_init``,
            ``random_state``, ``retrieval``, ``n_queries``: see :func:`_choose_k`).
        compute: a :class:`~varsitysrch.Compute`; only its ``threads`` is used (BLAS/OpenMP
            threads, :func:`_choose_k`'s ``n_threads``).
        plot_path: where the plot goes; default ``"optimal_clusters.png"`` (relative to the working
            folder); ``None`` or ``False``: no plot file.
        scores_path: also write the scores as ``<stem>.csv`` and ``<stem>.json``.
        show: display the figure inline. ``None`` (default): only inside a Jupyter/IPython kernel;
            ``True``: whenever IPython is there (a warning otherwise); ``False``: never. Never blocks.
        verbose: print the one-line message to stdout (it is logged at INFO either way), and show
            the progress bar unless ``show_progress`` says otherwise. ``False`` silences both.
        show_progress: a progress bar over k on stderr; ``None``: as ``verbose``.
        settings: any field of ``options`` given as a keyword, and ``threads`` (or its earlier
            name ``n_threads``), as earlier versions took them (``n_init=5``); it wins over the
            same field of the value; any other name is refused.

    Returns:
        :class:`KSelection` (``plot_path`` set to the file written).
    """
    opts, comp, _ = settle(
        "get_optimal_num_clusters", settings, ChooseKOptions, options, compute, ("threads",)
    )
    _ids, X, extractor = load_features(Path(features_folder))
    n = int(X.shape[0])
    log.info(
        "choose k on %s: %d images x %d (extractor %s)",
        features_folder,
        n,
        X.shape[1] if X.ndim == 2 else -1,
        extractor.get("name", "?"),
    )
    if _is_int(max_clusters) and n >= 3 and max_clusters > n - 1:
        _say(
            f"max_clusters={max_clusters} is more than n_images - 1 = {n - 1}: trying k = 2..{n - 1}",
            verbose,
            logging.WARNING,
        )
        max_clusters = n - 1
    result = _choose_k(
        X,
        max_clusters,
        n_components,
        plot_path=plot_path,
        scores_path=scores_path,
        show=show,
        method=opts.method,
        sample_size=opts.sample_size,
        n_init=opts.n_init,
        random_state=opts.random_state,
        retrieval=opts.retrieval,
        n_queries=opts.n_queries,
        n_threads=comp.threads,
        show_progress=verbose if show_progress is None else show_progress,
    )
    _say(str(result), verbose)
    return result


def _choose_k(
    X: np.ndarray,
    max_clusters: int = 30,
    n_components: int | None = None,
    *,
    plot_path: _PlotPath = None,
    scores_path: str | os.PathLike[str] | None = None,
    show: bool | None = False,
    method: _Method = "fast",
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
            ``[2, min(dim, n_images)]``: analyse in that many PCA dimensions (``fit_pca`` on all
            rows with ``random_state``, rows re-normalised) -- the space
            ``train_clusters(..., n_components=...)`` trains in. Either way the silhouette and
            Davies-Bouldin are scored in the top 16 principal directions of that space (module
            docstring, "The spaces").
        plot_path: write the figure there (:meth:`KSelection.plot`); ``None``/``False``: no file.
        scores_path: write the scores as ``<stem>.csv`` and ``<stem>.json``.
        show: display the figure inline: ``True`` where IPython is there (a warning otherwise),
            ``None`` only inside a notebook kernel, ``False`` never. Never blocks.
        method: ``"fast"`` (sampled sweep + confirmation, see the module docstring) or
            ``"exhaustive"`` (the sweep on all images, silhouette on all images: O(n^2)).
        sample_size: images the silhouette and Davies-Bouldin are computed on (``method="fast"``;
            ``None``: all), fixed by ``random_state``. Ignored by ``"exhaustive"``.
        n_init: K-means restarts per k (best inertia kept), >= 1.
        random_state: seeds sampling, k-means++, PCA and the retrieval queries.
        retrieval: also score cluster-restricted search per k (:class:`_RetrievalScores`).
        n_queries: retrieval queries (random catalogue images, capped at ``n_images``).
        n_threads: limit BLAS and OpenMP threads to this many while running (restored after).
            ``None``: 1 thread on machines with at most 2 cores and for small inputs
            (``n_images * dim <= 4,000,000``), elsewhere 1 thread for the sweep's small fits and
            the libraries' defaults for the large products.
        show_progress: a progress bar over k (tqdm, on stderr).

    Returns:
        :class:`KSelection`. Raises :class:`~varsitysrch.InvalidArgumentError` for bad arguments
        (checked before any work).
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
    target = None if plot_path is None or plot_path is False else Path(plot_path)
    if target is not None:
        _check_plot_format(target)

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
    display = _display_function(show)
    if target is not None or display is not None:
        fig = result.plot(target)
        if target is not None:
            result = dataclasses.replace(result, plot_path=target)
        if display is not None:
            display(fig)
    return result


def _say(message: str, verbose: bool, level: int = logging.INFO) -> None:
    """With ``verbose`` print ``message`` (stdout, as the original package did) and log it at INFO;
    without, log it at ``level`` (a warning still reaches the log, and is not shown twice when
    logging is not configured and its last-resort handler writes warnings to stderr)."""
    if verbose:
        print(message, flush=True)
        log.info("%s", message)
    else:
        log.log(level, "%s", message)


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
    # drawn either way, so that the sweep's random stream (and so the clusters) do not depend on `retrieval`
    queries = np.sort(rng.choice(n, min(n_queries, n), replace=False))
    q_idx = queries if retrieval else None

    if method == "fast":
        fits = _sweep_fast(Z, ks, perm, n_init, random_state, rng, show_progress)
    else:
        T = Z.astype(np.float64)  # scikit-learn's k-means++ is much faster on float64 than on float32
        best = _sweep(T, ks, n_init, random_state, rng, show_progress, "choose k (exhaustive)")
        fits = {k: _assign(Z, best[k].centroids) for k in ks}

    proj = _score_space(Z, random_state)  # fitted on all rows: the same space for both methods
    Zs = np.ascontiguousarray(Z[sil_idx] if proj is None else apply_pca(Z[sil_idx], *proj))
    sil, se, dbi = _scores(Zs, [fits[k].labels[sil_idx] for k in ks], show_progress)
    inertia = np.array([fits[k].inertia for k in ks])
    knee, knee_method = _knee(ks, inertia)
    choice = _recommend(ks, sil, knee, se, n)

    confirmed: list[int] = []
    if method == "fast":
        # confirm the candidates: Lloyd on all images from the sweep's centroids, until the
        # candidate set (which the new scores may change) has been confirmed entirely
        for _round in range(_MAX_CONFIRM_ROUNDS):
            todo = [k for k in _candidates(ks, sil, knee, choice.recommended_k) if k not in confirmed]
            if not todo:
                break
            for k in _progress(todo, show_progress, "confirm k"):
                confirmed.append(k)
                fits[k] = _assign(Z, _kmeans(Z, k, fits[k].centroids, 1, random_state).centroids)
                inertia[ks.index(k)] = fits[k].inertia
            idx = [ks.index(k) for k in todo]
            sil[idx], se[idx], dbi[idx] = _scores(Zs, [fits[k].labels[sil_idx] for k in todo])
            knee, knee_method = _knee(ks, inertia)
            choice = _recommend(ks, sil, knee, se, n)

    ret = None if q_idx is None else _retrieval_scores(X, Z, ks, fits, q_idx)
    return KSelection(
        ks=tuple(ks),
        inertia=tuple(float(v) for v in inertia),
        silhouette=tuple(float(v) for v in sil),
        davies_bouldin=tuple(float(v) for v in dbi),
        knee_k=int(knee),
        best_silhouette_k=choice.best_k,
        recommended_k=choice.recommended_k,
        rule=choice.rule,
        n_components=n_components,
        n_images=int(n),
        dim=int(dim),
        seconds=float(time.perf_counter() - t0),
        retrieval=ret,
        method=method,
        silhouette_sample=len(sil_idx),
        knee_method=knee_method,
        confirmed_ks=tuple(sorted(confirmed)),
        random_state=random_state,
        tie_band=choice.tie_band,
        tied_ks=choice.tied_ks,
        min_k=choice.min_k,
        score_dims=None if proj is None else len(proj[1]),
    )


def _progress(items: Sequence[_T], show: bool, desc: str) -> Iterator[_T]:
    # a bar only when stderr is a terminal (see _progress.bars_enabled)
    yield from progress_bars(items, desc=desc, unit="k", show_progress=show and len(items) >= 2, leave=False)


def _sweep_fast(
    Z: np.ndarray,
    ks: list[int],
    perm: np.ndarray,
    n_init: int,
    random_state: int,
    rng: np.random.Generator,
    show_progress: bool,
) -> dict[int, _Fit]:
    """The sweep on a training sample in its top principal directions, lifted back to ``Z``'s space.

    The sample's top ``max(64, 4 * max_clusters)`` principal directions (when the space has more)
    make each K-means fit a fraction of the cost; each solution is lifted back -- its centroids are
    the means of its clusters' full vectors -- and all images are assigned to them in the full space.
    """
    n, d = Z.shape
    kmax = ks[-1]
    T = np.ascontiguousarray(Z[perm[: min(n, max(_MIN_TRAIN, _PER_CENTROID * kmax))]])
    r = max(_SWEEP_MIN_DIMS, _SWEEP_DIMS_PER_K * kmax)
    projected = d > r and len(T) > r
    if projected:
        # centred projection, not re-normalised: only the sweep's labels are used from this space
        mean, components = fit_pca(T, r, random_state)
        Tr = (T - mean).astype(np.float64) @ components.T.astype(np.float64)
    else:
        Tr = T.astype(np.float64)  # scikit-learn's k-means++ is much faster on float64 than on float32
    from sklearn.cluster import kmeans_plusplus

    # one k-means++ sequence of max_clusters centres per restart; its first k centres seed k
    # (k-means++ is sequential, so a prefix is a k-means++ seeding: one seeding per restart
    # instead of one per restart and k)
    with _thread_limit(_SWEEP_THREADS):
        seeds = [kmeans_plusplus(Tr, kmax, random_state=random_state + i)[0] for i in range(n_init)]
    best = _sweep(Tr, ks, n_init, random_state, rng, show_progress, "choose k", seeds, _faiss_lloyd)
    fits: dict[int, _Fit] = {}
    for k in ks:
        C = best[k].centroids
        if projected:  # lift: the clusters' means in the full space
            sums, counts = _cluster_sums(best[k].labels, k, T)
            C = sums / np.maximum(counts, 1)[:, None].astype(np.float32)
            empty = counts == 0
            if empty.any():
                C[empty] = T[rng.choice(len(T), int(empty.sum()), replace=False)]
        fits[k] = _assign(Z, C)
    return fits


def _sweep(
    T: np.ndarray,
    ks: list[int],
    n_init: int,
    random_state: int,
    rng: np.random.Generator,
    show_progress: bool,
    desc: str,
    seeds: Sequence[np.ndarray] | None = None,
    lloyd: Callable[[np.ndarray, np.ndarray], _Fit] | None = None,
) -> dict[int, _Fit]:
    """K-means for every k: restarts, and warm starts from the k - 1 and k + 1 solutions.

    The restarts are ``KMeans(n_init)`` (k-means++ each), or, with ``seeds``, Lloyd from the
    first k centres of each seed sequence. ``lloyd(T, init)`` runs Lloyd from ``init``: scikit-learn
    ``KMeans(init=...)`` by default (the exhaustive reference), :func:`_faiss_lloyd` in the fast path.

    Forward over k, the k - 1 solution plus one k-means++ centre; backward, the k + 1 solution
    minus its least useful centre; the lowest inertia wins. Why the warm starts stay: independent
    k-means++ restarts get stuck, at some ks, in the local minimum with one centre on two blobs and
    two centres on one; that k's silhouette drops and the recommendation can move. Starting from a
    neighbouring k's solution escapes it (``benchmarks/bench_choose_k.py --no-warm-start`` shows
    the difference; figures in ``docs/choose_k.md``). Fits run with ``_SWEEP_THREADS`` threads:
    thousands of small fits are faster on one thread than on two (no start-up or spin-waiting).
    """
    if lloyd is None:

        def lloyd(T: np.ndarray, init: np.ndarray) -> _Fit:
            return _kmeans(T, len(init), init, 1, random_state)

    best: dict[int, _Fit] = {}
    total = 2 * len(ks) - 1 if _WARM_STARTS else len(ks)
    with (
        _thread_limit(_SWEEP_THREADS),
        progress_bar(total=total, desc=desc, unit="k", show_progress=show_progress, leave=False) as bar,
    ):
        for k in ks:
            if seeds is None:
                fit = _kmeans(T, k, None, n_init, random_state)
            else:
                fit = min((lloyd(T, seq[:k]) for seq in seeds), key=lambda f: f.inertia)
            if _WARM_STARTS and k - 1 in best:
                warm = lloyd(T, _add_centre(T, best[k - 1].centroids, rng))
                fit = min(fit, warm, key=lambda f: f.inertia)
            best[k] = fit
            bar.update()
        if _WARM_STARTS:
            for k in reversed(ks[:-1]):
                cand = lloyd(T, _drop_centre(T, best[k + 1].centroids))
                if cand.inertia < best[k].inertia:
                    best[k] = cand
                bar.update()
    return best


def _kmeans(T: np.ndarray, k: int, init: np.ndarray | None, n_init: int, random_state: int) -> _Fit:
    """scikit-learn ``KMeans``: k-means++ with ``n_init`` restarts, or Lloyd from ``init``."""
    from sklearn.cluster import KMeans

    if init is None:
        km = KMeans(n_clusters=k, init="k-means++", n_init=n_init, random_state=random_state)
    else:
        km = KMeans(n_clusters=k, init=np.asarray(init, dtype=T.dtype), n_init=1, random_state=random_state)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Number of distinct clusters")
        km.fit(T)
    return _Fit(
        np.asarray(km.cluster_centers_, dtype=np.float32), km.labels_.astype(np.int32), float(km.inertia_)
    )


def _faiss_lloyd(T: np.ndarray, init: np.ndarray) -> _Fit:
    """``_LLOYD_ITERS`` Lloyd iterations from ``init`` by faiss (``faiss.Kmeans``, all rows, no sampling).

    The fast sweep's K-means: about half the CPU of scikit-learn's ``KMeans(init=...)`` on the sweep's
    4,096 x 120 sample, whose per-fit input checks and variance cost as much as its Lloyd iterations
    (docs/choose_k.md). 20 iterations from these starts reach scikit-learn's converged inertia to 1e-5.
    Labels and inertia are those of the returned centroids.
    """
    import faiss

    T32 = np.ascontiguousarray(T, dtype=np.float32)
    k, d = init.shape
    km = faiss.Kmeans(
        d,
        k,
        niter=_LLOYD_ITERS,
        seed=1,
        verbose=False,
        max_points_per_centroid=len(T32),
        min_points_per_centroid=1,
    )
    km.train(T32, init_centroids=np.ascontiguousarray(init, dtype=np.float32))
    dist, idx = km.index.search(T32, 1)
    return _Fit(
        np.asarray(km.centroids, dtype=np.float32),
        idx[:, 0].astype(np.int32),
        float(dist.sum(dtype=np.float64)),
    )


def _add_centre(T: np.ndarray, C: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``C`` plus one k-means++ centre: a row of ``T`` drawn with probability ~ squared distance to ``C``."""
    from sklearn.cluster import kmeans_plusplus

    _labels, dist = nearest_centroid(T, C)
    weight = dist.astype(np.float64) ** 2
    seed = int(rng.integers(2**31 - 1))
    if weight.sum() <= 0:  # every row sits on a centre: any row will do
        return np.vstack([C, T[seed % len(T)]])
    centre, _idx = kmeans_plusplus(T, 1, sample_weight=weight, random_state=seed)
    return np.vstack([C, centre])


def _drop_centre(T: np.ndarray, C: np.ndarray) -> np.ndarray:
    """``C`` without the centre whose removal raises the objective least.

    Removing centre j moves each of its members to its second-nearest centre: the cost is the
    sum over j's members of (second - first) squared distance.
    """
    from sklearn.metrics.pairwise import euclidean_distances

    D = euclidean_distances(T, C, squared=True)
    two = np.partition(D, 1, axis=1)[:, :2]
    cost = np.bincount(D.argmin(axis=1), weights=two[:, 1] - two[:, 0], minlength=len(C))
    return np.delete(C, int(np.argmin(cost)), axis=0)


def _assign(Z: np.ndarray, centroids: np.ndarray) -> _Fit:
    """Every row's nearest centroid; the inertia (sum of squared distances) in float64."""
    labels, dist = nearest_centroid(Z, centroids)
    inertia = float(np.square(dist, dtype=np.float64).sum())
    return _Fit(np.ascontiguousarray(centroids, dtype=np.float32), labels, inertia)


def _cluster_sums(labels: np.ndarray, k: int, T: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(sums [k, d] of the rows of T per label, counts [k])`` via a sparse one-hot product."""
    import scipy.sparse

    counts = np.bincount(labels, minlength=k)
    indptr = np.concatenate([[0], np.cumsum(counts)])
    order = np.argsort(labels, kind="stable")
    onehot = scipy.sparse.csr_matrix((np.ones(len(T), dtype=T.dtype), order, indptr), shape=(k, len(T)))
    return np.asarray(onehot @ T), counts


def _scores(
    Zs: np.ndarray, label_sets: Sequence[np.ndarray], show_progress: bool = False
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean silhouette, its standard error and Davies-Bouldin of each labelling of ``Zs``.

    Returns three float64 arrays aligned with ``label_sets`` (NaN where a score is undefined: fewer
    than 2 or more than ``m - 1`` clusters among the rows). The silhouette is scikit-learn's
    ``silhouette_score(Zs, labels, metric="euclidean")`` (a test checks it), computed for every
    labelling in one pass: for each block of rows, its Euclidean distances to all rows times the
    stacked one-hot memberships of all labellings give each row's distance sum to every cluster of
    every k (one matrix product instead of one scikit-learn call per k, which reduces its distance
    chunks per k: 2-3x the CPU of the whole analysis, docs/choose_k.md). Memory: one block of
    distances and ``m x sum(k)`` sums, never the ``m x m`` matrix. The standard error is the
    standard deviation of the per-row silhouettes over sqrt(m) (the tie band uses it).
    Davies-Bouldin is :func:`_davies_bouldin` (scikit-learn's formula, vectorised).
    """
    m = len(Zs)
    L = len(label_sets)
    sil = np.full(L, np.nan)
    se = np.full(L, np.nan)
    dbi = np.full(L, np.nan)
    labs = [np.unique(np.asarray(lab), return_inverse=True)[1].astype(np.int64) for lab in label_sets]
    sizes = [int(lab.max()) + 1 if len(lab) else 0 for lab in labs]
    ok = [2 <= c <= m - 1 for c in sizes]
    offs = np.concatenate([[0], np.cumsum([c if good else 0 for c, good in zip(sizes, ok, strict=True)])])
    if offs[-1] > 0:
        M = np.zeros((m, int(offs[-1])), dtype=np.float32)
        rows = np.arange(m)
        for j, lab in enumerate(labs):
            if ok[j]:
                M[rows, offs[j] + lab] = 1.0
        sums = _distance_sums(Zs, M)
        counts = M.sum(axis=0, dtype=np.float64)
        for j, lab in enumerate(labs):
            if not ok[j]:
                continue
            S = sums[:, offs[j] : offs[j + 1]]
            n_c = counts[offs[j] : offs[j + 1]]
            own = S[rows, lab]
            n_own = n_c[lab]
            a = own / np.maximum(n_own - 1, 1)
            mean_d = S / n_c[None, :]
            mean_d[rows, lab] = np.inf
            b = mean_d.min(axis=1)
            with np.errstate(invalid="ignore", divide="ignore"):
                s_i = (b - a) / np.maximum(a, b)
            s_i = np.where(n_own > 1, np.nan_to_num(s_i), 0.0)  # a cluster of one: 0 (as scikit-learn)
            sil[j] = float(s_i.mean())
            se[j] = float(s_i.std() / math.sqrt(m))
    for j, lab in enumerate(_progress(labs, show_progress, "scores")):
        if ok[j]:
            dbi[j] = _davies_bouldin(Zs, lab, sizes[j])
    return sil, se, dbi


def _distance_sums(Zs: np.ndarray, M: np.ndarray) -> np.ndarray:
    """``D @ M`` for the Euclidean distance matrix ``D`` of the rows of ``Zs``, a block of rows at a time.

    Distances in float64 (no cancellation for near rows), the product in float32 (sums of at most
    ``m`` distances: relative error about ``m * 6e-8`` at worst, far below the silhouette's 3 decimals).
    """
    m = len(Zs)
    Z64 = np.asarray(Zs, dtype=np.float64)
    sq = np.einsum("ij,ij->i", Z64, Z64)
    out = np.empty((m, M.shape[1]), dtype=np.float32)
    block = max(1, min(m, _DIST_BLOCK_ELEMS // max(m, 1)))
    for s in range(0, m, block):
        e = min(m, s + block)
        D = Z64[s:e] @ Z64.T
        D *= -2.0
        D += sq[s:e, None]
        D += sq[None, :]
        np.maximum(D, 0.0, out=D)
        np.sqrt(D, out=D)
        D[np.arange(e - s), np.arange(s, e)] = 0.0
        out[s:e] = D.astype(np.float32) @ M
    return out


def _davies_bouldin(Zs: np.ndarray, lab: np.ndarray, k: int) -> float:
    """scikit-learn's ``davies_bouldin_score(Zs, lab)`` for labels ``0..k-1``, each present."""
    counts = np.bincount(lab, minlength=k).astype(np.float64)
    sums, _counts = _cluster_sums(lab.astype(np.int64), k, np.asarray(Zs, dtype=np.float64))
    C = sums / counts[:, None]
    intra = np.bincount(lab, weights=np.linalg.norm(Zs - C[lab], axis=1), minlength=k) / counts
    cd = np.sqrt(np.maximum(((C[:, None, :] - C[None, :, :]) ** 2).sum(-1), 0.0))
    if np.allclose(intra, 0) or np.allclose(cd, 0):
        return 0.0
    cd[cd == 0] = np.inf
    return float(np.mean(np.max((intra[:, None] + intra[None, :]) / cd, axis=1)))


def _score_space(Z: np.ndarray, random_state: int) -> tuple[np.ndarray, np.ndarray] | None:
    """The PCA ``(mean, components)`` the scores are computed in; ``None``: ``Z`` has <= ``_SIL_DIMS`` dims.

    The silhouette and Davies-Bouldin are computed on the rows projected on the top ``_SIL_DIMS``
    (16) principal directions of the analysis space, rows re-normalised (:func:`apply_pca`).
    """
    if Z.shape[1] <= _SIL_DIMS or len(Z) <= _SIL_DIMS:
        return None
    return fit_pca(Z, _SIL_DIMS, random_state)


def _knee(ks: Sequence[int], inertia: np.ndarray) -> tuple[int, str]:
    """Knee of the decreasing, roughly convex inertia curve: kneed, else the chord rule."""
    if len(ks) < 3:
        return int(ks[0]), "chord"
    KneeLocator = _kneed_locator()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        knee = KneeLocator(
            list(ks), list(map(float, inertia)), curve="convex", direction="decreasing", S=1.0
        ).knee
    if knee is not None:
        return int(knee), "kneed"
    log.info("kneed found no knee: using the chord rule")
    return _chord_knee(ks, inertia), "chord"


def _kneed_locator() -> Any:
    """``kneed.KneeLocator``, imported without letting kneed import ``matplotlib.pyplot``.

    kneed imports pyplot at import time for its optional plotting helpers (unused here); pyplot
    brings global figure state and backend selection into a library that only draws on
    ``matplotlib.figure.Figure``. Blocking it for the duration of that import makes kneed skip it.
    """
    import sys

    if "kneed" not in sys.modules and "matplotlib.pyplot" not in sys.modules:
        sys.modules["matplotlib.pyplot"] = None  # type: ignore[assignment]
        try:
            import kneed
        finally:
            del sys.modules["matplotlib.pyplot"]
    import kneed

    return kneed.KneeLocator


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


@dataclass(frozen=True)
class _Choice:
    best_k: int
    recommended_k: int
    rule: str
    tie_band: float
    tied_ks: tuple[int, ...]
    min_k: int


def _r3(v: float) -> float:
    """A silhouette as printed (3 decimals): the rule decides on these, so no message contradicts itself."""
    return round(float(v), 3)


def _min_k_for(n_images: int) -> int:
    """The fewest clusters that keep a nearest-cluster search of ``n_images`` within twice its least cost.

    With one probed cluster a query costs about ``k + n/k`` distance computations (the k centroids,
    then the ~n/k members of its cluster): least, ``2 sqrt(n)``, at ``k = sqrt(n)``, and at most twice
    that for ``k >= (2 - sqrt(3)) sqrt(n)``, about ``0.27 sqrt(n)``: 5 for 300 images, 14 for 2,640,
    38 for 20,000.
    """
    return max(2, math.ceil((2.0 - math.sqrt(3.0)) * math.sqrt(n_images)))


def _recommend(
    ks: Sequence[int],
    sil: np.ndarray,
    knee: int,
    se: np.ndarray | None = None,
    n_images: int | None = None,
) -> _Choice:
    """The recommendation rule (see the module docstring); decisions on silhouettes rounded to 3 decimals.

    With ``n_images``, a best silhouette under ``_SIL_CLEAR`` limits the choice to
    ``k >= _min_k_for(n_images)``.
    """
    s = np.asarray(sil, dtype=np.float64)
    finite = np.isfinite(s)
    if not finite.any():
        rule = f"no silhouette could be computed: the knee of the inertia curve (k={knee})"
        return _Choice(int(ks[0]), int(knee), rule, _SIL_TIE, (), int(ks[0]))
    best_k = int(ks[int(np.nanargmax(s))])
    best_all = _r3(np.nanmax(s))
    weak = best_all < _SIL_WEAK
    floor, lead = int(ks[0]), ""
    if n_images is not None and best_all < _SIL_CLEAR:
        f = min(_min_k_for(n_images), int(ks[-1]))
        if f > ks[0] and (finite & (np.asarray(ks) >= f)).any():
            floor = f
            why_floor = (
                _weak_text(best_all, best_k)
                if weak
                else f"the best silhouette {best_all:.3f} (k={best_k}) is under {_SIL_CLEAR}"
            )
            lead = (
                f"{why_floor}, so at least k={f} (with fewer clusters a search of {n_images:,} images "
                f"costs over twice its least); from k={f}: "
            )
    ok = finite & (np.asarray(ks) >= floor)
    i = int(np.argmax(np.where(ok, s, -np.inf)))
    top_k, best = int(ks[i]), _r3(s[i])
    spread = _r3(best - _r3(np.min(s[ok])))
    se_best = float(se[i]) if se is not None and math.isfinite(float(se[i])) else 0.0
    tie = max(_SIL_TIE, _r3(se_best))
    near = tuple(int(k) for k, v, good in zip(ks, s, ok, strict=True) if good and _r3(best - _r3(v)) <= tie)
    aim = max(int(knee), floor)
    knee_text = f"k={knee}" if aim == knee else f"k={knee}, raised to {aim}"
    why = "its standard error" if tie > _SIL_TIE else "sampling error"
    if int(ok.sum()) >= 3 and spread < _SIL_FLAT:
        rec = aim
        rule = (
            f"flat silhouette (max - min {spread:.3f} < {_SIL_FLAT}): the knee of the inertia ({knee_text})"
        )
    elif len(near) == 1:
        rec = near[0]
        rule = f"highest silhouette ({best:.3f}), no other k within {tie:.3f} ({why}); knee at {knee_text}"
    else:
        rec = min(near, key=lambda k: (abs(k - aim), k))
        rule = (
            f"highest silhouette {best:.3f} at k={top_k}; within {tie:.3f} of it ({why}): "
            f"{list(near)}; of these the nearest to the knee ({knee_text})"
        )
    if weak and not lead:
        rule += f"; {_weak_text(best_all)}"
    return _Choice(best_k, int(rec), lead + rule, tie, near, floor)


def _weak_text(best: float, k: int | None = None) -> str:
    """The weak-structure warning for a best silhouette already rounded to 3 decimals (at ``k``)."""
    at = "" if k is None else f" (k={k})"
    return (
        f"weak cluster structure: the best silhouette {best:.3f}{at} is below {_SIL_WEAK} "
        "(clusters overlap, so k is a speed/recall trade-off)"
    )


def _candidates(ks: Sequence[int], sil: np.ndarray, knee: int, rec: int) -> list[int]:
    s = np.where(np.isfinite(sil), sil, -np.inf)
    order = np.argsort(-s, kind="stable")[:_N_TOP]
    out = [int(ks[i]) for i in order]
    for k in (rec, knee):
        if k not in out:
            out.append(int(k))
    return out


def _retrieval_scores(
    X: np.ndarray, Z: np.ndarray, ks: Sequence[int], fits: Mapping[int, _Fit], q_idx: np.ndarray
) -> _RetrievalScores:
    """Recall@10 and scanned share per k and nprobe (:func:`~varsitysrch._neighbours.probe_recall`)."""
    n = len(X)
    # 4096-row chunks: the merge with the running top 10 stays in cache (docs/choose_k.md)
    exact, _scores = exact_topk(X[q_idx], X, min(_RECALL_AT, n - 1), exclude=q_idx, chunk=_TOPK_CHUNK)
    Zq = Z[q_idx]
    recall: dict[int, list[float]] = {p: [] for p in _NPROBES}
    scanned: dict[int, list[float]] = {p: [] for p in _NPROBES}
    for k in ks:
        fit = fits[k]
        order = centroid_order(Zq, fit.centroids)
        by_nprobe = probe_recall(exact, fit.labels, order)
        counts = np.bincount(fit.labels, minlength=k).astype(np.float64)
        for p in _NPROBES:
            pp = min(p, k)
            recall[p].append(float(by_nprobe[pp - 1]))
            scanned[p].append(float(counts[order[:, :pp]].sum(axis=1).mean() / n))
    return _RetrievalScores(
        nprobe=_NPROBES,
        recall_at_10={p: tuple(v) for p, v in recall.items()},
        scanned_fraction={p: tuple(v) for p, v in scanned.items()},
        n_queries=len(q_idx),
        top=int(exact.shape[1]),
    )


# --------------------------------------------------------------------------- helpers
def _json_float(v: float) -> float | None:
    return None if v is None or not math.isfinite(v) else float(v)


def _check_plot_format(path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    fmt = path.suffix.lstrip(".").lower() or "png"
    supported = FigureCanvasAgg.get_supported_filetypes()
    if fmt not in supported:
        raise InvalidArgumentError(
            f"plot_path must end in one of {', '.join('.' + f for f in sorted(supported))}; got {str(path)!r}"
        )


def _save_figure(fig: Figure, path: Path) -> None:
    _check_plot_format(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=path.suffix.lstrip(".").lower() or "png", dpi=100)


def _display_function(show: bool | None) -> Any:
    """IPython's ``display`` when the figure should be shown inline, else ``None`` (never blocks)."""
    if show is False:
        return None
    try:
        from IPython import get_ipython
        from IPython.display import display
    except ImportError:
        shell = None
    else:
        shell = get_ipython()
    if shell is None:
        if show:
            log.warning(
                "show=True displays the figure in a notebook (IPython/Jupyter) only, not here; see plot_path"
            )
        return None
    if show is None and getattr(shell, "kernel", None) is None:
        return None  # a terminal IPython: an inline figure would print its repr
    return display


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
