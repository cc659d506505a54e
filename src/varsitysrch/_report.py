"""See the catalogue: a self-contained static HTML report of clusters, outliers and near-duplicates.

:func:`make_report` reads a feature store, its model file and assignments CSV and writes one
folder that opens offline in any browser (no CDN, no server: plain HTML, one local style
sheet, one local script, JPEG thumbnails and PNG figures)::

    report/
      index.html          overview: catalogue size, k, extractor, build times, figures, cluster table
      clusters/c0000.html per cluster: size, spread, silhouette, nearest clusters,
                          contact sheet of the most central members, ranked outliers
      duplicates.html     near-duplicate groups (threshold stated) and colour-variant groups
      map.html            2-D PCA map: sampled points and thumbnails on a canvas (pan, zoom, hover)
      outliers.csv        exports (cells neutralised for spreadsheets)
      duplicates.csv
      clusters.csv
      figures/*.png       cluster sizes, silhouette per cluster, the choose-k plot if there is one
      thumbs/xx/*.jpg     thumbnails, keyed by id + file size + mtime: a rebuild reuses them
      report.json         what was built, with which settings, and how long it took

Bounded work for large catalogues: the store is read through its memory map in chunks;
silhouettes use a seeded sample (``silhouette_sample`` rows); duplicates come from a faiss
range search (:mod:`varsitysrch._duplicates`, IVF above 50k images), never an ``n x n``
matrix; the map draws at most ``map_points`` sampled points and ``map_thumbs`` thumbnails
(one per cell of a grid over the map), so its size does not grow with the catalogue; thumbnails
are made only for what is shown (``central + outliers`` per cluster, the shown duplicate
groups, the map).  Build time and size at 4k and 100k images are printed by
``benchmarks/bench_report.py`` (figures in ``docs/insight.md``).

The folder is written as a whole: it is built in a hidden folder beside ``out`` and swapped in
at the end with one atomic rename-exchange (Linux ``renameat2``), so a build killed at any
moment leaves the previous report (or, after the swap, the new one) in place; elsewhere the old
report is renamed aside first and put back by the next build if a kill lands between the two
renames.  Leftovers of killed builds (``.<out>.*.tmp``, ``.<out>.old-*``) are removed by the
next build (a running build holds a lock on its folder, so a concurrent one is left alone).
``out`` must be new, empty, or an earlier report.

Nothing recorded in a file is trusted: thumbnails are made only from the image folder the
operator names (``image_root`` / ``--images``; the folder recorded in ``store.json`` is never
read), image files are read only through :func:`varsitysrch._paths.resolve_image` under it, and
the one decode gate of :mod:`varsitysrch._images`; every value taken from the model file, the
feature store or a file name (ids, ``training.*``, ``extractor.*``, ...) is HTML-escaped, and the
map's data is JSON with ``<``, ``>`` and ``&`` escaped.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import html
import json
import logging
import os
import re
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ._central import central_first
from ._config import ReportOptions, settle
from ._duplicates import (
    DEFAULT_EVIDENCE,
    DEFAULT_THRESHOLD,
    VARIANT_EVIDENCE,
    VARIANT_THRESHOLD,
    build_groups,
    similar_pairs,
)
from ._errors import IncompatibleModelError, InvalidArgumentError, VarsitysrchError, missing
from ._io import write_csv, write_json
from ._progress import progress, say

__all__ = ["ReportSummary", "make_report"]

log = logging.getLogger(__name__)

_REPORT_FORMAT = "varsitysrch-report"
_REPORT_VERSION = 1
_ASSETS = Path(__file__).parent / "report_assets"
#: names of a choose-k plot looked for beside the model file and in the features folder
_CHOOSE_K_NAMES = ("choose-k.png", "choose_k.png", "optimal_clusters.png", "k.png", "choose-k.svg")
_THUMB_VERSION = "v1"
_FIGURE_SUFFIXES = (".png", ".svg", ".jpg", ".jpeg")


@dataclass
class ReportSummary:
    """What :func:`make_report` wrote."""

    path: Path
    n_images: int
    k: int
    n_duplicate_groups: int
    n_variant_groups: int
    thumbnails_made: int
    thumbnails_reused: int
    thumbnails_missing: int
    seconds: float
    bytes: int
    timings: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["path"] = str(self.path)
        return d


# ====================================================================== helpers
def _esc(s: Any) -> str:
    """HTML-escaped text; lone surrogates (undecodable file names) shown as U+FFFD."""
    text = str(s).encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    return html.escape(text, quote=True)


def _is_int(v: Any) -> bool:
    return isinstance(v, int | np.integer) and not isinstance(v, bool)


def _dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _fmt_seconds(s: float) -> str:
    return f"{s:.1f} s" if s < 120 else f"{s / 60:.1f} min"


def _page(title: str, body: str, depth: int = 0, active: str = "") -> str:
    up = "../" * depth
    nav = "".join(
        f'<a href="{up}{href}"{" class=active" if name == active else ""}>{name}</a>'
        for name, href in (
            ("Overview", "index.html"),
            ("Clusters", "index.html#clusters"),
            ("Duplicates", "duplicates.html"),
            ("Map", "map.html"),
            ("Exports", "index.html#exports"),
        )
    )
    return (
        "<!doctype html>\n<html lang=en><head><meta charset=utf-8>"
        '<meta name=viewport content="width=device-width, initial-scale=1">'
        f'<title>{_esc(title)}</title><link rel="icon" href="data:,">'
        f'<link rel=stylesheet href="{up}style.css"></head>\n'
        f"<body><header><nav>{nav}</nav></header>\n<main>\n{body}\n</main></body></html>\n"
    )


# ====================================================================== thumbnails
class _Thumbs:
    """Thumbnails of the images the report shows, made once: reused from the previous report."""

    def __init__(self, root: Path | None, out: Path, previous: Path | None, size: int) -> None:
        self.root, self.out, self.previous, self.size = root, out, previous, size
        self.rel: dict[str, str | None] = {}  # id -> path relative to the report root (None: missing)
        self.made = self.reused = self.missing = 0
        self.errors: list[tuple[str, str]] = []

    def want(self, image_id: str) -> None:
        self.rel.setdefault(image_id, "")

    def build(self, show_progress: bool) -> None:
        from ._paths import resolve_image

        todo = [i for i, r in self.rel.items() if r == ""]
        for image_id in progress(todo, desc="thumbnails", unit="img", show_progress=show_progress):
            src = resolve_image(self.root, image_id)
            try:
                st = src.stat() if src is not None else None
            except OSError:
                st = None
            if src is None or st is None or not src.is_file():
                self.rel[image_id] = None
                self.missing += 1
                continue
            key = hashlib.sha256(
                f"{_THUMB_VERSION}\0{image_id}\0{st.st_size}\0{st.st_mtime_ns}\0{self.size}".encode(
                    "utf-8", "surrogateescape"
                )
            ).hexdigest()
            rel = f"thumbs/{key[:2]}/{key}.jpg"
            dst = self.out / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            old = self.previous / rel if self.previous is not None else None
            if old is not None and old.is_file():
                try:
                    os.link(old, dst)
                except OSError:
                    shutil.copyfile(old, dst)
                self.reused += 1
                self.rel[image_id] = rel
                continue
            try:
                self._make(src, dst)
            except Exception as exc:  # ImageError and anything PIL raises on a bad file
                self.errors.append((image_id, f"{type(exc).__name__}: {exc}"))
                self.rel[image_id] = None
                self.missing += 1
                continue
            self.made += 1
            self.rel[image_id] = rel

    def _make(self, src: Path, dst: Path) -> None:
        from PIL import Image

        from ._images import load_image

        arr = load_image(src, self.size, "letterbox")
        Image.fromarray(arr).save(dst, "JPEG", quality=82, optimize=True)

    def tag(self, image_id: str, depth: int = 0, cls: str = "thumb", caption: str = "") -> str:
        rel = self.rel.get(image_id)
        title = _esc(image_id)
        cap = f"<figcaption>{caption}</figcaption>" if caption else ""
        if rel:
            img = f'<img src="{"../" * depth}{rel}" alt="{title}" title="{title}" loading=lazy>'
        else:
            img = f'<div class=noimg title="{title}">no image</div>'
        return f"<figure class={cls}>{img}{cap}<div class=id>{title}</div></figure>"


# ====================================================================== analysis
def _cluster_members(labels: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    order = np.argsort(labels, kind="stable")
    offsets = np.concatenate([[0], np.cumsum(np.bincount(labels, minlength=k))])
    return order, offsets


def _nearest_clusters(C: np.ndarray, m: int, chunk: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """The ``m`` nearest other centroids of each centroid (Euclidean), in chunks of rows."""
    k = len(C)
    m = min(m, k - 1)
    c2 = (C.astype(np.float64) ** 2).sum(1)
    idx = np.empty((k, m), np.int64)
    dst = np.empty((k, m), np.float64)
    for s in range(0, k, chunk):
        d = c2[s : s + chunk, None] - 2 * C[s : s + chunk].astype(np.float64) @ C.T.astype(np.float64) + c2
        d[np.arange(len(d)), np.arange(s, s + len(d))] = np.inf
        part = np.argpartition(d, m - 1, axis=1)[:, :m] if m < k - 1 else np.argsort(d, axis=1)[:, :m]
        pd = np.take_along_axis(d, part, 1)
        o = np.argsort(pd, axis=1, kind="stable")
        idx[s : s + chunk] = np.take_along_axis(part, o, 1)
        dst[s : s + chunk] = np.sqrt(np.maximum(np.take_along_axis(pd, o, 1), 0))
    return idx, dst


def _silhouettes(
    X: np.ndarray, labels: np.ndarray, km: Any, k: int, sample: int, rng: np.random.Generator
) -> tuple[np.ndarray, float, int]:
    """Mean silhouette per cluster (NaN where not sampled) on a seeded sample, clustering space."""
    from sklearn.metrics import silhouette_samples

    n = len(X)
    rows = np.sort(rng.choice(n, min(n, sample), replace=False))
    lab = labels[rows]
    per = np.full(k, np.nan)
    if len(np.unique(lab)) < 2 or len(np.unique(lab)) >= len(rows):
        return per, float("nan"), len(rows)
    Z = km.project(np.asarray(X[rows], np.float32))
    s = silhouette_samples(Z, lab)
    sums = np.bincount(lab, weights=s, minlength=k)
    counts = np.bincount(lab, minlength=k)
    with np.errstate(invalid="ignore", divide="ignore"):
        per = np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)
    return per, float(s.mean()), len(rows)


def _pca2(X: np.ndarray, rows: np.ndarray, fit_rows: np.ndarray, seed: int) -> np.ndarray:
    from sklearn.decomposition import PCA

    pca = PCA(2, random_state=seed).fit(np.asarray(X[fit_rows], np.float32))
    out = np.empty((len(rows), 2), np.float32)
    for s in range(0, len(rows), 65536):
        out[s : s + 65536] = pca.transform(np.asarray(X[rows[s : s + 65536]], np.float32))
    return out


def _spread_thumbs(xy: np.ndarray, m: int) -> np.ndarray:
    """Indices of at most ``m`` points, one per cell of a grid over ``xy`` (nearest the cell centre)."""
    if len(xy) == 0 or m <= 0:
        return np.zeros(0, np.int64)
    g = max(1, int(np.sqrt(m)))
    lo, hi = xy.min(0), xy.max(0)
    span = np.where(hi > lo, hi - lo, 1.0)
    u = (xy - lo) / span * g
    cell = np.minimum(u.astype(np.int64), g - 1)
    cid = cell[:, 0] * g + cell[:, 1]
    d = ((u - cell - 0.5) ** 2).sum(1)
    order = np.lexsort((d, cid))
    first = np.r_[True, cid[order][1:] != cid[order][:-1]]
    return np.sort(order[first])[:m]


# ====================================================================== figures
def _figures(fig_dir: Path, sizes: np.ndarray, sil: np.ndarray, sil_mean: float) -> dict[str, str]:
    try:
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise missing("matplotlib", "plot", "the report's figures") from exc
    fig_dir.mkdir(parents=True, exist_ok=True)
    out: dict[str, str] = {}
    fig = Figure(figsize=(7, 3.2))
    ax = fig.add_subplot(1, 1, 1)
    lo, hi = int(sizes.min()), int(sizes.max())
    bins: Any = np.arange(lo, hi + 2) - 0.5 if hi - lo < 40 else min(50, max(5, len(sizes) // 2))
    ax.hist(sizes, bins=bins, color="#4477aa", edgecolor="white")
    from matplotlib.ticker import MaxNLocator

    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("images in cluster")
    ax.set_ylabel("clusters")
    ax.set_title(f"Cluster sizes (k = {len(sizes)}, median {int(np.median(sizes))})")
    fig.tight_layout()
    fig.savefig(fig_dir / "cluster-sizes.png", dpi=100)
    out["sizes"] = "figures/cluster-sizes.png"
    fig = Figure(figsize=(7, 3.2))
    ax = fig.add_subplot(1, 1, 1)
    ok = np.isfinite(sil)
    order = np.argsort(-np.where(ok, sil, -np.inf))
    vals = sil[order][ok[order]]
    colours = ["#aa3377" if v < 0 else "#228833" for v in vals]
    ax.bar(np.arange(len(vals)), vals, color=colours, width=1.0)
    ax.axhline(sil_mean, color="k", lw=0.8, ls="--", label=f"mean {sil_mean:.3f}")
    ax.set_xlabel("clusters, best first")
    ax.set_xticks([])
    ax.set_ylabel("mean silhouette")
    ax.set_title("Silhouette per cluster (sampled)")
    ax.legend(loc="upper right")
    fig.tight_layout()
    fig.savefig(fig_dir / "silhouette.png", dpi=100)
    out["silhouette"] = "figures/silhouette.png"
    return out


def _find_choose_k(model: Path, features: Path) -> Path | None:
    for folder in (model.parent, features):
        for name in _CHOOSE_K_NAMES:
            p = folder / name
            if p.is_file():
                return p
    return None


# ====================================================================== main
def make_report(
    features_folder: str | os.PathLike[str],
    model: str | os.PathLike[str],
    csv: str | os.PathLike[str] | None,
    out: str | os.PathLike[str],
    *,
    options: ReportOptions | None = None,
    image_root: str | os.PathLike[str] | None = None,
    choose_k_plot: str | os.PathLike[str] | None = None,
    show_progress: bool = True,
    **settings: Any,
) -> ReportSummary:
    """Write the HTML report of a trained catalogue into the folder ``out`` (see the module docstring).

    Args:
        features_folder: the feature store the model was trained on.
        model, csv: the model file and its assignments CSV (``csv=None``: not checked).
        out: the report folder (new, empty, or an earlier report, which is replaced).
        options: a :class:`~varsitysrch.ReportOptions`: ``thumb_size`` (thumbnail side in
            pixels), ``central`` / ``outliers`` (members shown per cluster: most central; most
            distant, ranked), ``near_clusters`` (nearest other clusters listed per cluster),
            ``silhouette_sample`` (rows the silhouettes are computed on, a seeded sample),
            ``duplicate_threshold`` / ``variant_threshold`` (cosine thresholds of the two
            duplicate tiers), ``duplicate_method``, ``max_groups`` (duplicate groups shown on
            the page; all go to ``duplicates.csv``), ``map_points`` / ``map_thumbs`` (points
            and thumbnails drawn on the map at most), ``random_state``.
        image_root: folder of the catalogue images, for the thumbnails (``None``: no thumbnails;
            the folder recorded at extraction is never read unless it is named here).
        choose_k_plot: a choose-k plot to include (default: looked for beside the model and
            in the features folder under the names in :data:`_CHOOSE_K_NAMES`).
        show_progress: progress bars and the one-line summary.
        settings: any field of ``options`` given as a keyword, as earlier versions took them
            (``thumb_size=96``); it wins over the same field of the value; any other name is
            refused.
    """
    from ._modelfile import load_model, read_assignments
    from ._store import FeatureStore

    t_start = time.perf_counter()
    opts, _, _ = settle("make_report", settings, ReportOptions, options)
    thumb_size, central, outliers, near_clusters = (
        opts.thumb_size,
        opts.central,
        opts.outliers,
        opts.near_clusters,
    )
    silhouette_sample, max_groups, random_state = opts.silhouette_sample, opts.max_groups, opts.random_state
    duplicate_threshold, variant_threshold = opts.duplicate_threshold, opts.variant_threshold
    map_points, map_thumbs, duplicate_method = opts.map_points, opts.map_thumbs, opts.duplicate_method
    if choose_k_plot is not None and Path(choose_k_plot).suffix.lower() not in _FIGURE_SUFFIXES:
        raise InvalidArgumentError(
            f"choose_k_plot must be a .png, .svg or .jpg file; got {str(choose_k_plot)!r}"
        )
    out = Path(out)
    if image_root is not None and not Path(image_root).is_dir():
        raise InvalidArgumentError(f"image_root must be a folder; got {str(image_root)!r}")
    if out.exists() and not out.is_dir():
        raise InvalidArgumentError(f"out {str(out)!r} exists and is not a folder")
    previous: Path | None = None
    if out.is_dir() and any(out.iterdir()):
        if not (out / "report.json").is_file():
            raise InvalidArgumentError(
                f"out {str(out)!r} is a non-empty folder that is not a varsitysrch report; "
                "choose a new or empty folder"
            )
        previous = out

    timings: dict[str, float] = {}

    def lap(name: str, t0: float) -> float:
        now = time.perf_counter()
        timings[name] = round(now - t0, 3)
        return now

    t = time.perf_counter()
    store = FeatureStore.open(features_folder)
    mf = load_model(model)
    if list(mf.ids) != list(store.ids):
        raise IncompatibleModelError(
            f"model {str(model)!r} was not trained on the feature store {str(features_folder)!r} "
            f"({len(mf.ids)} ids in the model, {len(store.ids)} in the store, or in another order); "
            "pass the store the model was trained on"
        )
    if csv is not None:
        c_ids, c_labels = read_assignments(csv)
        if c_ids != list(mf.ids) or not np.array_equal(c_labels, np.asarray(mf.labels)):
            raise IncompatibleModelError(
                f"csv {str(csv)!r} does not match model {str(model)!r}; use the CSV written with this model"
            )
    X = store.vectors
    ids = store.ids
    n, k = len(ids), mf.k
    labels = np.asarray(mf.labels, np.int64)
    dists = np.asarray(mf.distances, np.float64)
    km = mf.to_model()
    # only the folder the operator names: the one recorded in store.json is information only
    root = Path(image_root) if image_root is not None else None
    if root is None:
        log.info("no image folder named: the report has no thumbnails (pass image_root / --images)")
    rng = np.random.default_rng(random_state)
    t = lap("load", t)

    # -------------------------------------------------------------- per cluster
    order, offsets = _cluster_members(labels, k)
    sizes = np.diff(offsets)
    stats: list[dict[str, Any]] = []
    central_rows: list[np.ndarray] = []
    outlier_rows: list[np.ndarray] = []
    for c in range(k):
        rows = order[offsets[c] : offsets[c + 1]]
        d = dists[rows]
        ranked = central_first(rows, dists)  # the web page's cluster previews show the same members
        central_rows.append(ranked[:central])
        outlier_rows.append(ranked[::-1][:outliers] if len(rows) > central else rows[:0])
        stats.append(
            {
                "size": len(rows),
                "mean": float(d.mean()) if len(d) else float("nan"),
                "median": float(np.median(d)) if len(d) else float("nan"),
                "p90": float(np.quantile(d, 0.9)) if len(d) else float("nan"),
            }
        )
    near_idx, near_dst = _nearest_clusters(np.asarray(mf.centroids, np.float32), near_clusters)
    out_all = np.concatenate(outlier_rows) if outlier_rows else np.zeros(0, np.int64)
    second = np.zeros(len(out_all), np.int64)
    second_d = np.zeros(len(out_all))
    for s in range(0, len(out_all), 4096):
        Z = km.project(np.asarray(X[out_all[s : s + 4096]], np.float32))
        C = np.asarray(km.cluster_centers_, np.float32)
        D = (Z**2).sum(1)[:, None] - 2.0 * Z @ C.T + (C**2).sum(1)[None, :]
        D[np.arange(len(D)), labels[out_all[s : s + 4096]]] = np.inf
        j = D.argmin(1)
        second[s : s + 4096] = j
        second_d[s : s + 4096] = np.sqrt(np.maximum(D[np.arange(len(D)), j], 0))
    outlier_info = {int(r): (int(sc), float(sd)) for r, sc, sd in zip(out_all, second, second_d, strict=True)}
    t = lap("clusters", t)
    sil, sil_mean, sil_n = _silhouettes(X, labels, km, k, silhouette_sample, rng)
    t = lap("silhouette", t)

    # -------------------------------------------------------------- duplicates
    pi, pj, ps = similar_pairs(
        X, float(variant_threshold), method=duplicate_method, show_progress=show_progress
    )
    strong = ps >= float(duplicate_threshold)
    dup_groups = build_groups(ids, pi[strong], pj[strong], ps[strong])
    var_groups_all = build_groups(ids, pi, pj, ps)
    dup_sets = {frozenset(g.ids) for g in dup_groups}
    var_groups = [g for g in var_groups_all if frozenset(g.ids) not in dup_sets]
    t = lap("duplicates", t)

    # -------------------------------------------------------------- map
    map_rows = np.arange(n) if n <= map_points else np.sort(rng.choice(n, map_points, replace=False))
    fit_rows = map_rows if len(map_rows) <= 20_000 else np.sort(rng.choice(map_rows, 20_000, replace=False))
    xy = _pca2(X, map_rows, fit_rows, random_state) if n >= 2 else np.zeros((n, 2), np.float32)
    thumb_pts = _spread_thumbs(xy, map_thumbs)
    t = lap("map", t)

    # -------------------------------------------------------------- build the folder
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        _remove_leftovers(out)
        if previous is None and out.is_dir() and (out / "report.json").is_file():
            previous = out  # put back by _remove_leftovers
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    except OSError as exc:
        raise _for_user(exc, None, out) from exc
    lock = _lock_dir(tmp)  # a concurrent build's _remove_leftovers leaves this folder alone
    try:
        thumbs = _Thumbs(root, tmp, previous, thumb_size)
        for rows in (*central_rows, *outlier_rows):
            for r in rows:
                thumbs.want(ids[int(r)])
        for g in (dup_groups[:max_groups], var_groups[:max_groups]):
            for grp in g:
                for i in grp.ids[:12]:
                    thumbs.want(i)
        for p in thumb_pts:
            thumbs.want(ids[int(map_rows[p])])
        thumbs.build(show_progress)
        t = lap("thumbnails", t)

        shutil.copyfile(_ASSETS / "style.css", tmp / "style.css")
        shutil.copyfile(_ASSETS / "map.js", tmp / "map.js")
        figs = _figures(tmp / "figures", sizes, sil, sil_mean)
        ck = (
            Path(choose_k_plot)
            if choose_k_plot is not None
            else _find_choose_k(Path(model), Path(features_folder))
        )
        ck_label: tuple[str, bool] = ("", False)
        if ck is not None and ck.is_file() and ck.suffix.lower() in _FIGURE_SUFFIXES:
            dst = tmp / "figures" / f"choose-k{ck.suffix.lower()}"
            shutil.copyfile(ck, dst)
            figs["choose_k"] = f"figures/{dst.name}"
            training = mf.config.get("training")
            trained_at = _parse_utc(training.get("trained_at") if isinstance(training, dict) else None)
            ck_label = _choose_k_label(ck, k, n, trained_at, Path(features_folder))
        _write_exports(
            tmp,
            ids,
            labels,
            dists,
            stats,
            sil,
            near_idx,
            outlier_rows,
            outlier_info,
            dup_groups,
            var_groups,
            ids_index={i: r for r, i in enumerate(ids)},
        )
        ctx = {
            "n": n,
            "k": k,
            "dim": int(X.shape[1]),
            "store": store,
            "mf": mf,
            "stats": stats,
            "sil": sil,
            "sil_mean": sil_mean,
            "sil_n": sil_n,
            "near_idx": near_idx,
            "near_dst": near_dst,
            "figs": figs,
            "_choose_k_label": ck_label,
            "dup": dup_groups,
            "var": var_groups,
            "n_pairs": int(strong.sum()),
            "n_var_pairs": len(ps),
            "dup_t": float(duplicate_threshold),
            "var_t": float(variant_threshold),
            "max_groups": max_groups,
            "root": root,
            "timings": timings,
        }
        for c in progress(range(k), desc="cluster pages", unit="page", show_progress=show_progress):
            _cluster_page(tmp, c, ctx, ids, dists, central_rows[c], outlier_rows[c], outlier_info, thumbs)
        _duplicates_page(tmp, ctx, thumbs)
        _map_page(tmp, ctx, ids, labels, map_rows, xy, thumb_pts, thumbs)
        t = lap("pages", t)
        seconds = time.perf_counter() - t_start
        _index_page(tmp, ctx, thumbs, seconds)
        size = _dir_bytes(tmp)
        summary = ReportSummary(
            out,
            n,
            k,
            len(dup_groups),
            len(var_groups),
            thumbs.made,
            thumbs.reused,
            thumbs.missing,
            round(seconds, 3),
            size,
            timings,
        )
        write_json(
            tmp / "report.json",
            {
                "format": _REPORT_FORMAT,
                "version": _REPORT_VERSION,
                "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "summary": summary.to_dict(),
                "settings": {
                    "thumb_size": thumb_size,
                    "central": central,
                    "outliers": outliers,
                    "silhouette_sample": silhouette_sample,
                    "duplicate_threshold": float(duplicate_threshold),
                    "variant_threshold": float(variant_threshold),
                    "map_points": map_points,
                    "map_thumbs": map_thumbs,
                    "random_state": random_state,
                },
                "thumbnail_errors": [{"id": i, "reason": r} for i, r in thumbs.errors[:1000]],
            },
        )
        _swap(tmp, out)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise _for_user(exc, tmp, out) from exc
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        _unlock(lock)
    say(
        log,
        f"report of {n} images, k={k}: {len(dup_groups)} duplicate groups, {thumbs.made} thumbnails made "
        f"({thumbs.reused} reused), {size / 2**20:.1f} MiB in {_fmt_seconds(seconds)} -> {out}",
        show_progress,
    )
    return summary


def _for_user(exc: OSError, tmp: Path | None, out: Path) -> OSError:
    """``exc`` naming the report folder the caller named (and the file in it), never the hidden
    folder the report is built in (``.<out>.XXXXXXXX.tmp``); ``tmp`` ``None``: that folder could not
    even be created."""
    if exc.errno is None:
        return exc
    if tmp is None:
        if exc.filename is None or Path(os.fsdecode(exc.filename)).parent != out.parent:
            return exc  # about another path (a parent folder that cannot be made): it names that
        return OSError(
            exc.errno, f"cannot create the report folder in {str(out.parent)!r} ({exc.strerror})", str(out)
        )

    def named(name: Any) -> str | None:
        if name is None:
            return None
        path = Path(os.fsdecode(name))
        return str(out / path.relative_to(tmp)) if path.is_relative_to(tmp) else str(path)

    f1, f2 = named(exc.filename), named(exc.filename2)
    if (f1, f2) == (exc.filename, exc.filename2):
        return exc
    return OSError(exc.errno, exc.strerror, f1, None, f2)


#: Names of the hidden folders a build of ``out`` makes beside it: ``.<out>.XXXXXXXX.tmp`` (the folder
#: being built; after a swap, the previous report being removed) and ``.<out>.old-<pid>-<ns>`` (the
#: previous report, renamed aside where no rename-exchange exists)
_LEFTOVER = r"\.{name}\.(?:[a-z0-9_]{{8}}\.tmp|old-\d+-\d+)"
_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically (Linux ``renameat2(RENAME_EXCHANGE)``); ``False`` where unsupported."""
    if not sys.platform.startswith("linux"):
        return False
    import ctypes

    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):  # a C library without renameat2
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    fn.restype = ctypes.c_int
    if fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP):  # kernel or file system
        return False
    raise OSError(err, os.strerror(err), str(a), None, str(b))


def _swap(tmp: Path, out: Path) -> None:
    """Put the finished folder ``tmp`` in place of ``out`` (both in one folder); at no moment is
    there no report at ``out`` (where the kernel can exchange two names atomically)."""
    os.chmod(tmp, 0o777 & ~_umask())
    if not out.exists() and not out.is_symlink():
        os.replace(tmp, out)
        return
    if _exchange(tmp, out):
        # ``tmp`` now names the previous report: remove it (a kill here leaves a leftover that the
        # next build removes, and the new report in place)
        if tmp.is_symlink():
            tmp.unlink()
        else:
            shutil.rmtree(tmp, ignore_errors=True)
        return
    # no exchange: rename the previous report aside first (the next build puts it back if a
    # kill lands before the new one is in place)
    old = out.parent / f".{out.name}.old-{os.getpid()}-{time.monotonic_ns()}"
    os.replace(out, old)
    try:
        os.replace(tmp, out)
    except BaseException:
        os.replace(old, out)
        raise
    shutil.rmtree(old, ignore_errors=True)


def _lock_dir(path: Path) -> int | None:
    """An exclusive, non-blocking ``flock`` on the folder ``path``: its fd, or ``None`` if another
    process holds it (or it cannot be opened); always a fd where ``flock`` does not exist."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no locks, leftovers are still matched by their exact names
        return -1
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    return fd


def _unlock(fd: int | None) -> None:
    if fd is not None and fd >= 0:
        with contextlib.suppress(OSError):
            os.close(fd)


def _remove_leftovers(out: Path) -> None:
    """Remove what killed builds of ``out`` left beside it (only names of the exact patterns above, only
    real folders, never one a running build holds); a previous report renamed aside by a build
    killed before it put the new one in place is put back first."""
    pattern = re.compile(_LEFTOVER.format(name=re.escape(out.name)))
    try:
        entries = sorted(os.scandir(out.parent), key=lambda e: e.name)
    except OSError:
        return
    for entry in entries:
        if not pattern.fullmatch(entry.name) or entry.is_symlink() or not entry.is_dir(follow_symlinks=False):
            continue
        path = Path(entry.path)
        fd = _lock_dir(path)
        if fd is None:  # a running build's folder
            continue
        try:
            if ".old-" in entry.name and not out.exists() and (path / "report.json").is_file():
                os.replace(path, out)
                log.warning("report %s: put back the previous report, left aside by a killed build", out)
                continue
            shutil.rmtree(path, ignore_errors=True)
            log.info("report %s: removed %s, left by a killed build", out, entry.name)
        except OSError as exc:
            log.warning("report %s: cannot remove %s (%s)", out, entry.name, exc)
        finally:
            _unlock(fd)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# ====================================================================== exports
def _write_exports(
    tmp: Path,
    ids: list[str],
    labels: np.ndarray,
    dists: np.ndarray,
    stats: list[dict[str, Any]],
    sil: np.ndarray,
    near_idx: np.ndarray,
    outlier_rows: list[np.ndarray],
    outlier_info: dict[int, tuple[int, float]],
    dup_groups: list[Any],
    var_groups: list[Any],
    ids_index: dict[str, int],
) -> None:
    rows = []
    for c, orows in enumerate(outlier_rows):
        med = stats[c]["median"]
        for r in orows:
            sc, sd = outlier_info[int(r)]
            d = float(dists[int(r)])
            rows.append((ids[int(r)], c, d, med, d / med if med > 0 else float("inf"), sc, sd, sd - d))
    rows.sort(key=lambda x: (-x[4], x[0]))
    write_csv(
        tmp / "outliers.csv",
        [
            "rank",
            "image",
            "cluster",
            "distance",
            "cluster_median_distance",
            "ratio",
            "second_cluster",
            "second_distance",
            "margin",
        ],
        (
            (i, r[0], r[1], f"{r[2]:.6f}", f"{r[3]:.6f}", f"{r[4]:.4f}", r[5], f"{r[6]:.6f}", f"{r[7]:.6f}")
            for i, r in enumerate(rows, 1)
        ),
        neutralise=True,
    )

    def group_rows() -> Any:
        for tier, groups in (("duplicate", dup_groups), ("variant", var_groups)):
            for gi, g in enumerate(groups, 1):
                for i in g.ids:
                    yield (
                        tier,
                        gi,
                        g.size,
                        f"{g.max_score:.6f}",
                        f"{g.min_score:.6f}",
                        i,
                        int(labels[ids_index[i]]),
                    )

    write_csv(
        tmp / "duplicates.csv",
        ["tier", "group", "group_size", "max_score", "min_score", "image", "cluster"],
        group_rows(),
        neutralise=True,
    )
    write_csv(
        tmp / "clusters.csv",
        [
            "cluster",
            "size",
            "mean_distance",
            "median_distance",
            "p90_distance",
            "silhouette",
            "nearest_clusters",
        ],
        (
            (
                c,
                s["size"],
                f"{s['mean']:.6f}",
                f"{s['median']:.6f}",
                f"{s['p90']:.6f}",
                "" if not np.isfinite(sil[c]) else f"{sil[c]:.4f}",
                " ".join(str(int(x)) for x in near_idx[c]),
            )
            for c, s in enumerate(stats)
        ),
        neutralise=True,
    )


# ====================================================================== pages
def _num(v: float, digits: int = 3) -> str:
    return "&ndash;" if not np.isfinite(v) else f"{v:.{digits}f}"


def _digits_beside(v: float, thresholds: tuple[float, ...], digits: int = 2) -> str:
    """``v`` with the fewest decimals (at least ``digits``) whose rounding stays on the same side of
    every threshold: 0.2496 is "0.2496", never "0.25" next to "below 0.25"."""
    for d in range(digits, 8):
        text = f"{v:.{d}f}"
        if all((float(text) < t) == (v < t) for t in thresholds):
            return text
    return repr(float(v))


#: silhouette bands and what they mean for a shop (the usual reading; 0.25 is choose-k's "weak structure")
_SILHOUETTE_WORDS = (
    (0.5, "distinct groups: most photos are much closer to their own group than to any other"),
    (0.25, "fairly distinct groups, with some overlap between neighbouring groups"),
    (
        0.0,
        "overlapping groups (weak structure): many photos sit between two groups, as is usual for "
        "catalogues of similar products; treat the groups as rough when browsing",
    ),
    (
        float("-inf"),
        "groups that mostly overlap: many photos are closer to another group than to their own; "
        "a smaller number of clusters may fit better",
    ),
)


def _silhouette_text(v: float, n_sample: int) -> str:
    if not np.isfinite(v):
        return "not measured (too few images or a single cluster)"
    words = next(w for t, w in _SILHOUETTE_WORDS if v >= t)
    number = _digits_beside(v, tuple(t for t, _ in _SILHOUETTE_WORDS if np.isfinite(t)))
    return (
        f"{words} (silhouette {number} on a scale from &minus;1 to 1, measured on {n_sample:,} "
        f"photo{'s' if n_sample != 1 else ''})"
    )


def _confidence_text(cfg: dict[str, Any]) -> str:
    """What "close match" means for this catalogue's searches (the model's confidence calibration)."""
    from ._confidence import ScoreCalibrator

    if "confidence" not in cfg:
        return "not calibrated: this model is from before search marked close matches (train it again)"
    try:  # numbers only (a model file's values, formatted as numbers or not shown)
        cal = ScoreCalibrator.from_dict(cfg["confidence"])
        score, cutoff = float(cal.cutoff_score_), float(cal.cutoff)
        very_c = float(cal.very_similar)
        very = float(cal.score_at(very_c))
    except (VarsitysrchError, TypeError, ValueError, KeyError, AttributeError):
        return "unreadable in this model file"
    return (
        f"search results scoring at least <b>{score:.3f}</b> are marked <em>close matches</em>: "
        f"{100 * (1 - cutoff):g}&nbsp;% of your catalogue photos have a look-alike in the catalogue at "
        f"least that close. From {very:.3f} a result is <em>very similar</em> (as close as "
        f"{100 * (1 - very_c):g}&nbsp;% of them get)."
    )


#: extractor settings in words (the technical-settings table); other values are shown as recorded
_POOLING_WORDS = {
    "pooled": "the network's own pooled output",
    "avg": "average over the photo",
    "mean": "average over the photo",
    "max": "strongest response over the photo",
    "gem": "generalised mean over the photo (GeM)",
    "rmac": "regional maxima over the photo (R-MAC)",
}
_RESIZE_WORDS = {
    "letterbox": "whole photo fitted in a square with white margins",
    "squash": "photo stretched to a square",
    "center-crop": "centre square of the photo",
}


def _utc(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(ts))


def _parse_utc(text: Any) -> float | None:
    """Seconds since the epoch of a ``YYYY-MM-DDTHH:MM:SSZ`` stamp (``training.trained_at``), else None."""
    import calendar

    if not isinstance(text, str):
        return None
    try:
        return float(calendar.timegm(time.strptime(text, "%Y-%m-%dT%H:%M:%SZ")))
    except (ValueError, OverflowError):
        return None


#: the PNG text chunk where a choose-k plot may record its analysis (JSON: ks, recommended_k, n_images)
_CHOOSE_K_RECORD = "varsitysrch-choose-k"


def _choose_k_record(plot: Path, made: float) -> dict[str, Any] | None:
    """What a choose-k plot says it shows: its own PNG record, or the scores JSON written beside it by
    the same run (``<stem>.json`` within an hour of the plot); ``None`` when neither says."""
    from ._io import read_regular

    raw: Any = None
    if plot.suffix.lower() == ".png":
        with contextlib.suppress(Exception):  # a plot is optional: an unreadable one records nothing
            from PIL import Image

            with Image.open(plot, formats=["PNG"]) as im:
                raw = getattr(im, "text", {}).get(_CHOOSE_K_RECORD)
    if raw is None:
        scores = plot.with_suffix(".json")
        with contextlib.suppress(OSError, ValueError):
            if abs(scores.stat().st_mtime - made) <= 3600:
                raw = read_regular(scores, "choose-k scores", limit=1 << 20).decode("utf-8")
    if raw is None:
        return None
    try:
        rec = json.loads(raw)
        ks = [int(x) for x in rec["ks"] if _is_int(x)]
        out = {"lo": min(ks), "hi": max(ks), "recommended": int(rec["recommended_k"])}
        if _is_int(rec.get("n_images")):
            out["n_images"] = int(rec["n_images"])
        if not _is_int(rec["recommended_k"]):
            return None
        return out
    except (ValueError, TypeError, KeyError, AttributeError):
        return None


def _choose_k_label(
    plot: Path, k: int, n_images: int, trained_at: float | None, features: Path
) -> tuple[str, bool]:
    """The caption of a choose-k plot shown beside a model: what it was made for, and whether it may
    be out of date for this model (``(html, stale)``).  A plot made before the model was trained, for
    another catalogue size, or over ks that leave out the model's k is labelled as such; a plot that
    records nothing says so, with the command that redraws it."""
    try:
        made = plot.stat().st_mtime
    except OSError:
        made = time.time()
    rec = _choose_k_record(plot, made)
    redraw = (
        f"To redraw it for this catalogue: <code>varsitysrch choose-k {_esc(features)} --plot "
        f"{_esc(plot)}</code>."
    )
    older = trained_at is not None and made < trained_at - 60
    trained = f" (trained {_utc(trained_at)})" if trained_at is not None else ""
    if rec is None:
        text = (
            f"This plot ({_esc(plot.name)}, file dated {_utc(made)}) does not record the k values it "
            f"tried or what it recommended. This model uses k&nbsp;=&nbsp;{k}{trained}."
        )
        if older:
            text += " The plot is older than the model: it may describe an earlier catalogue or choice."
        return f"{text} {redraw}", True
    text = (
        f"This plot was made on {_utc(made)} for k&nbsp;=&nbsp;{rec['lo']}..{rec['hi']}"
        + (f" on {rec['n_images']:,} images" if "n_images" in rec else "")
        + f" and recommends k&nbsp;=&nbsp;{rec['recommended']}; this model uses k&nbsp;=&nbsp;{k}."
    )
    stale = False
    if "n_images" in rec and rec["n_images"] != n_images:
        text += f" The catalogue has {n_images:,} images now, so the plot may be out of date."
        stale = True
    if not rec["lo"] <= k <= rec["hi"]:
        text += f" The plot does not cover k&nbsp;=&nbsp;{k}."
        stale = True
    if older:
        text += f" It was made before this model was trained{trained}."
        stale = True
    return (f"{text} {redraw}" if stale else text), stale


def _index_page(tmp: Path, ctx: dict[str, Any], thumbs: _Thumbs, seconds: float) -> None:
    mf, store = ctx["mf"], ctx["store"]
    cfg = mf.config
    ex = cfg.get("extractor") or store.extractor or {}
    tr = cfg.get("training") or {}
    if not isinstance(ex, dict):
        ex = {}
    if not isinstance(tr, dict):
        tr = {}
    n, k, dim = ctx["n"], ctx["k"], int(ctx["dim"])
    sizes = [int(st["size"]) for st in ctx["stats"]]
    # every value below that comes from a file (model.json, store.json) is escaped, whatever its type
    name = _esc(ex.get("name", "unknown"))
    compact = (
        " Its compact 8-bit version is used (faster, very slightly less exact)."
        if (ex.get("quantized") is True)
        else ""
    )
    extractor = (
        f"{name}: the neural network that turns each photo into {dim:,} numbers describing its shapes, "
        f"colours and textures; look-alike photos get similar numbers.{compact}"
    )
    seconds_trained = tr.get("seconds")
    took = f" (took {_esc(seconds_trained)} s)" if seconds_trained is not None else ""
    trained_ts = _parse_utc(tr.get("trained_at"))
    when = _utc(trained_ts) if trained_ts is not None else _esc(tr.get("trained_at", "at an unknown time"))
    trained = f"{when}{took}"
    pca = cfg.get("search_pca")
    compare = (
        f"a compressed description of each photo ({_esc(pca)} numbers instead of {dim:,}): faster, "
        "nearly the same results"
        if pca
        else f"the full description of each photo ({dim:,} numbers)"
    )
    root = ctx["root"]
    lo, hi = min(sizes, default=0), max(sizes, default=0)
    each = (
        f"{lo:,} photos each"
        if lo == hi
        else f"{lo:,} to {hi:,} photos each, typically {int(np.median(sizes)):,}"
    )
    rows = [
        ("Catalogue images", f"{n:,} photos"),
        (
            "Clusters (k)",
            f"{k:,} groups of look-alike photos, {each} (k&nbsp;=&nbsp;{k:,})",
        ),
        ("How distinct the groups are", _silhouette_text(ctx["sil_mean"], ctx["sil_n"])),
        ("Close matches", _confidence_text(cfg)),
        (
            "Duplicate groups",
            f'<a href="duplicates.html">{len(ctx["dup"]):,} groups</a> of near-identical photos: the same '
            f"photo uploaded again, resized, re-encoded or slightly cropped (similarity &ge; "
            f"{ctx['dup_t']:.2f})",
        ),
        (
            "Colour-variant groups",
            f'<a href="duplicates.html#variant-groups">{len(ctx["var"]):,} groups</a> of one product in '
            f"other colours, or of very similar products (similarity &ge; {ctx['var_t']:.2f})",
        ),
        ("Extractor", extractor),
        ("Model trained", trained),
        ("How search compares photos", compare),
        (
            "Image folder",
            f"thumbnails from {_esc(root)}"
            if root is not None
            else "none named: no thumbnails (name one with --images)",
        ),
        ("Report built", f"{_utc(time.time())} in {_fmt_seconds(seconds)}"),
    ]
    table = "".join(f"<tr><th>{a}</th><td>{b}</td></tr>" for a, b in rows)
    tech_rows = [
        ("Feature dimension", f"{dim:,}"),
        *(
            (f"extractor.{key}", _esc(ex[key]) + _tech_words(key, ex[key]))
            for key in ("name", "dim", "pooling", "resize", "input_size", "quantized")
            if key in ex
        ),
        ("Clustering", f"K-means, k = {k:,} ({_esc(tr.get('backend', '?'))} backend)"),
        ("Search space", f"PCA {_esc(pca)}" if pca else "raw cosine"),
        ("Mean silhouette", f"{_num(ctx['sil_mean'])} (sample of {ctx['sil_n']:,} images)"),
    ]
    tech = "".join(f"<tr><th>{a}</th><td>{b}</td></tr>" for a, b in tech_rows)
    figs = ctx["figs"]
    fig_parts = []
    for key, alt in (
        ("sizes", "Cluster sizes: how many photos each group holds"),
        ("silhouette", "How well each group stands apart (silhouette per cluster)"),
        ("choose_k", "Choosing k: the choose-k plot found beside the model"),
    ):
        if key not in figs:
            continue
        caption = alt
        if key == "choose_k":
            label, stale = ctx["_choose_k_label"]
            cls = "note stale" if stale else "note"
            caption = f"{alt}<p class='{cls}'>{label}</p>"
        fig_parts.append(
            f'<figure class=fig><img src="{figs[key]}" alt="{_esc(alt)}"><figcaption>{caption}</figcaption>'
            "</figure>"
        )
    fig_html = "".join(fig_parts)
    if "choose_k" not in figs:
        fig_html += "<p class=note>No choose-k plot was found beside the model or the features.</p>"
    crow = []
    for c, st in enumerate(ctx["stats"]):
        near = " ".join(f'<a href="clusters/c{int(o):04d}.html">{int(o)}</a>' for o in ctx["near_idx"][c])
        crow.append(
            f'<tr><td><a href="clusters/c{c:04d}.html">cluster {c}</a></td><td class=num>{st["size"]:,}</td>'
            f"<td class=num>{_num(st['median'])}</td><td class=num>{_num(st['p90'])}</td>"
            f"<td class=num>{_num(ctx['sil'][c])}</td><td>{near}</td></tr>"
        )
    body = f"""
<h1>Catalogue report</h1>
<section id=overview><h2>Overview</h2><table class=facts>{table}</table>
<details class=tech><summary>Technical settings (for developers)</summary><table class=tech>{tech}</table>
</details>
<div class=figs>{fig_html}</div></section>
<section id=clusters><h2>Clusters</h2>
<p>Each cluster is a group of look-alike photos; its page shows its most typical photos first and its
least typical ones (often mis-filed or unusual products) at the end. Spread: how far the photos are from
the group's centre (median and 90th percentile; smaller is tighter). Silhouette: 1 = well apart from
other groups, below 0 = closer to another group.</p>
<table class=clusters><thead><tr><th>cluster</th><th>photos</th><th>median spread</th><th>p90 spread</th>
<th>silhouette</th><th>nearest clusters</th></tr></thead><tbody>{"".join(crow)}</tbody></table></section>
<section id=exports><h2>Exports</h2><ul>
<li><a href="outliers.csv">outliers.csv</a>: the least typical photos of every cluster, ranked by distance
relative to the cluster's median, with the next-nearest cluster and the margin to it</li>
<li><a href="duplicates.csv">duplicates.csv</a>: every duplicate and colour-variant group, one photo per
row</li>
<li><a href="clusters.csv">clusters.csv</a>: size, spread, silhouette and nearest clusters of each
cluster</li>
</ul><p class=note>Text cells that a spreadsheet would run as a formula start with an
apostrophe.</p></section>
"""
    (tmp / "index.html").write_text(_page("Catalogue report", body, 0, "Overview"), encoding="utf-8")


def _tech_words(key: str, value: Any) -> str:
    """`` (in words)`` after a recorded extractor setting, where the value is one this version knows."""
    words = {"pooling": _POOLING_WORDS, "resize": _RESIZE_WORDS}.get(key, {})
    w = words.get(value) if isinstance(value, str) else None
    if key == "quantized" and isinstance(value, bool):
        w = "8-bit network" if value else "full-precision network"
    return f" ({w})" if w else ""


def _cluster_page(
    tmp: Path,
    c: int,
    ctx: dict[str, Any],
    ids: list[str],
    dists: np.ndarray,
    crows: np.ndarray,
    orows: np.ndarray,
    info: dict[int, tuple[int, float]],
    thumbs: _Thumbs,
) -> None:
    s = ctx["stats"][c]
    k = ctx["k"]
    near = "".join(
        f'<li><a href="c{int(o):04d}.html">cluster {int(o)}</a> '
        f"(centre distance {d:.3f}, {ctx['stats'][int(o)]['size']:,} images)</li>"
        for o, d in zip(ctx["near_idx"][c], ctx["near_dst"][c], strict=True)
    )
    sheet = "".join(thumbs.tag(ids[int(r)], 1, caption=f"{dists[int(r)]:.3f}") for r in crows)
    if len(orows):
        orow = []
        for rank, r in enumerate(orows, 1):
            sc, sd = info[int(r)]
            d = float(dists[int(r)])
            ratio = d / s["median"] if s["median"] > 0 else float("inf")
            orow.append(
                f"<tr><td class=num>{rank}</td><td>{thumbs.tag(ids[int(r)], 1, 'thumb small')}</td>"
                f"<td class=num>{d:.3f}</td><td class=num>{ratio:.2f}&times;</td>"
                f'<td><a href="c{sc:04d}.html">{sc}</a></td><td class=num>{sd - d:.3f}</td></tr>'
            )
        outl = (
            "<table class=outliers><thead><tr><th>rank</th><th>image</th><th>distance</th>"
            "<th>vs median</th><th>next cluster</th><th>margin</th></tr></thead><tbody>"
            + "".join(orow)
            + "</tbody></table>"
        )
    else:
        outl = "<p class=note>Cluster too small to list outliers apart from its central members.</p>"
    prev_link = f'<a href="c{c - 1:04d}.html">&larr; cluster {c - 1}</a>' if c > 0 else ""
    next_link = f'<a href="c{c + 1:04d}.html">cluster {c + 1} &rarr;</a>' if c + 1 < k else ""
    body = f"""
<h1>Cluster {c}</h1>
<p class=pager>{prev_link} {next_link}</p>
<table class=facts>
<tr><th>Size</th><td>{s["size"]:,} images</td></tr>
<tr><th>Spread</th><td>median distance {_num(s["median"])}, p90 {_num(s["p90"])},
mean {_num(s["mean"])}</td></tr>
<tr><th>Silhouette</th><td>{_num(ctx["sil"][c])}</td></tr>
</table>
<section id=central><h2>Most typical photos</h2><p class=note>The photos nearest the cluster's centre (the
same ones, in the same order, as the web page's Clusters tab); distance to the centre under each.</p>
<div class=sheet>{sheet}</div></section>
<section id=outliers><h2>Least typical photos</h2>
<p class=note>Likely mis-clustered or unusual products, most distant first. <em>Margin</em>: how much
closer the next cluster's centre would have to be to take the image (small = borderline).</p>{outl}</section>
<section id=near><h2>Nearest other clusters</h2><ul>{near}</ul></section>
"""
    folder = tmp / "clusters"
    folder.mkdir(exist_ok=True)
    (folder / f"c{c:04d}.html").write_text(_page(f"Cluster {c}", body, 1, "Clusters"), encoding="utf-8")


def _groups_html(groups: list[Any], shown: int, thumbs: _Thumbs) -> str:
    parts = []
    for gi, g in enumerate(groups[:shown], 1):
        figs = "".join(thumbs.tag(i, 0, "thumb small") for i in g.ids[:12])
        more = f"<p class=note>and {g.size - 12} more (see duplicates.csv)</p>" if g.size > 12 else ""
        parts.append(
            f"<div class=group><h3>Group {gi}: {g.size} images, similarity {g.min_score:.3f}&ndash;"
            f"{g.max_score:.3f}</h3><div class=sheet>{figs}</div>{more}</div>"
        )
    if len(groups) > shown:
        parts.append(f"<p class=note>{len(groups) - shown} more groups in duplicates.csv.</p>")
    return "".join(parts) or "<p class=note>None found.</p>"


def _duplicates_page(tmp: Path, ctx: dict[str, Any], thumbs: _Thumbs) -> None:
    n = ctx["n"]
    n_dup_imgs = sum(g.size for g in ctx["dup"])
    dup_note = (
        f"This is the default threshold. {_esc(DEFAULT_EVIDENCE)} (benchmarks/bench_duplicates.py)"
        if abs(ctx["dup_t"] - DEFAULT_THRESHOLD) < 1e-9
        else f"This threshold was set for this report; the default is {DEFAULT_THRESHOLD:.2f}."
    )
    var_note = (
        _esc(VARIANT_EVIDENCE)
        if abs(ctx["var_t"] - VARIANT_THRESHOLD) < 1e-9
        else f"Set for this report (default {VARIANT_THRESHOLD:.2f})."
    )
    body = f"""
<h1>Near-duplicates</h1>
<section id=dup-method><p>Two images are near-duplicates when the cosine similarity of their features is at
least <b>{ctx["dup_t"]:.2f}</b>; groups join images linked by such pairs (a chain can join images that are
less alike than the threshold: each group shows its weakest link). {dup_note}</p>
<p>Measured on this catalogue: <b>{ctx["n_pairs"]:,}</b> pairs in <b>{len(ctx["dup"]):,}</b> groups covering
{n_dup_imgs:,} of {n:,} images ({100 * n_dup_imgs / max(n, 1):.1f}&nbsp;%).</p></section>
<section id=dup-groups><h2>Duplicate groups (cosine &ge; {ctx["dup_t"]:.2f})</h2>
{_groups_html(ctx["dup"], ctx["max_groups"], thumbs)}</section>
<section id=variant-groups><h2>Colour variants and near-variants (cosine &ge; {ctx["var_t"]:.2f})</h2>
<p>A looser threshold for colour variants of one product. {var_note} Only groups that differ from a
duplicate group are shown: {ctx["n_var_pairs"]:,} pairs, {len(ctx["var"]):,} groups.</p>
{_groups_html(ctx["var"], ctx["max_groups"], thumbs)}</section>
"""
    (tmp / "duplicates.html").write_text(_page("Near-duplicates", body, 0, "Duplicates"), encoding="utf-8")


def _map_page(
    tmp: Path,
    ctx: dict[str, Any],
    ids: list[str],
    labels: np.ndarray,
    map_rows: np.ndarray,
    xy: np.ndarray,
    thumb_pts: np.ndarray,
    thumbs: _Thumbs,
) -> None:
    n = ctx["n"]
    data = {
        "n": n,
        "k": ctx["k"],
        "x": [round(float(v), 4) for v in xy[:, 0]],
        "y": [round(float(v), 4) for v in xy[:, 1]],
        "c": [int(labels[r]) for r in map_rows],
        "ids": [ids[int(r)] for r in map_rows] if len(map_rows) <= 20_000 else [],
        "thumbs": [
            [int(p), thumbs.rel.get(ids[int(map_rows[p])]) or ""]
            for p in thumb_pts
            if thumbs.rel.get(ids[int(map_rows[p])])
        ],
    }
    sampled = (
        " (a seeded sample: the page stays the same size at any catalogue size)" if len(map_rows) < n else ""
    )
    text = json.dumps(data, ensure_ascii=True, separators=(",", ":"))
    text = text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")  # no markup
    js = "window.VS_MAP = " + text + ";\n"
    (tmp / "map-data.js").write_text(js, encoding="ascii")
    body = f"""
<h1>Map of the catalogue</h1>
<p class=note>The catalogue projected on its first two principal components (PCA of the features). Each dot
is an image coloured by cluster; {len(data["thumbs"])} thumbnails are spread over the map (one per grid cell).
{len(map_rows):,} of {n:,} images are drawn{sampled}.
Drag to pan, wheel to zoom, hover for the image, click to open its cluster.</p>
<div id=mapwrap><canvas id=map width=1200 height=800></canvas><div id=tip></div></div>
<script src="map-data.js"></script><script src="map.js"></script>
"""
    (tmp / "map.html").write_text(_page("Map", body, 0, "Map"), encoding="utf-8")
