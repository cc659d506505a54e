"""Catalogue updates without retraining, and a drift report that says when to retrain.

:func:`update_catalogue` brings a trained model up to date with its image folder:

1. :func:`~varsitysrch.extract_features` embeds only new and changed images (same size,
   mtime, inode and ctime = unchanged, reused) and drops deleted ones from the feature store;
2. images are compared with the model: *added* (not in the model), *changed* (the file's
   stamp -- size, mtime, inode, ctime -- differs from the one recorded in the model at
   training or at the last update, or the extraction re-embedded it), *removed* (in the
   model, no longer in the store),
   *unchanged*;
3. added and changed vectors are assigned to their nearest centroid with the model's own
   projection (PCA, if any) and centroids -- nothing is retrained; unchanged images keep
   their cluster and distance exactly;
4. the search index is rebuilt by :func:`~varsitysrch._searchindex.build_search_index`
   with the trained ranking space (the new catalogue projected, ``nprobe`` recalibrated
   in that space on 200 held-out queries) and the IVF's lists kept; the model file (same
   centroids, new ids/labels/distances, an ``updates`` history entry) and the CSV are
   rewritten atomically.

Drift report and the retrain rule
---------------------------------
Measured against the training reference stored in the model (``config["training"]``):

* ``cluster_imbalance``: largest cluster / mean cluster size (and the Gini coefficient of
  the sizes), now and at training;
* ``mean_distance``: mean distance of every image to its centroid, now and at training;
* ``far_share``: share of the added and changed images farther from their centroid than
  the training distances' ``far_quantile`` (0.95: 5 % of the training images are that far);
* ``churn``: images added, changed or removed since training / images at training.

``retrain_recommended`` is true when any of these holds:

* ``n_far >= 5`` and ``far_share > 2 * (1 - far_quantile)`` -- new images do not fit the
  existing clusters (twice the rate of the training images themselves);
* ``mean_distance > 1.15 * mean_distance_at_training``;
* ``cluster_imbalance > 1.5 * cluster_imbalance_at_training``;
* ``churn > 0.5`` -- half the catalogue is not what the clusters were trained on.

The distance quantile is stored in the model at training time
(``config["training"]["distance_quantiles"]``); for models trained before that, it is
computed from the model's distances at the first update and stored then.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Collection
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ._attributes import apply_to_model as apply_attributes
from ._attributes import model_attributes
from ._config import Compute, UpdateOptions, settle
from ._errors import FeatureStoreError, IncompatibleModelError
from ._extract import ExtractionResult, check_folders, extract_features
from ._extractors import Extractor, query_extractor
from ._index import assign_lists
from ._io import check_replaceable
from ._modelfile import ModelFile, load_model, model_stamps, record_store, save_model_and_csv, stamp_arrays
from ._rerank import carry_graph, graph_state
from ._searchindex import build_search_index
from ._store import STORE_JSON, FeatureStore, Stamp, same_file, store_lock

__all__ = ["UpdateReport", "update_catalogue"]

log = logging.getLogger(__name__)

#: the retrain rule (see the module docstring)
_MIN_FAR = 5
_FAR_SHARE_FACTOR = 2.0
_MEAN_DISTANCE_RATIO = 1.15
_IMBALANCE_RATIO = 1.5
_MAX_CHURN = 0.5
#: history entries kept in the model file
_MAX_HISTORY = 100
#: the Compute fields update_catalogue uses (embedding new images, assigning them)
_COMPUTE_USED = ("engine", "scheduler", "batch_size", "num_workers", "threads")


@dataclass(frozen=True)
class UpdateReport:
    """What :func:`update_catalogue` did, and how far the catalogue has drifted from training."""

    n_images: int  #: images in the catalogue (and model) now
    added: int  #: images new to the model
    changed: int  #: images whose file changed (re-embedded, re-assigned)
    removed: int  #: images dropped from the model
    unchanged: int  #: images that kept their vector, cluster and distance
    n_embedded: int  #: images embedded by this run (0 for unchanged ones)
    skipped: int  #: unreadable images (see skipped.csv in the store)
    seconds: float
    k: int
    cluster_imbalance: float  #: largest / mean cluster size now
    cluster_imbalance_at_training: float
    gini: float  #: Gini coefficient of the cluster sizes now (0 = equal)
    gini_at_training: float
    empty_clusters: int
    mean_distance: float  #: mean distance to the centroid now
    mean_distance_at_training: float
    far_quantile: float
    far_threshold: float  #: the training distances' far_quantile
    n_far: int  #: added/changed images beyond far_threshold
    far_share: float  #: n_far / (added + changed)
    churn: float  #: images added, changed or removed since training / images at training
    nprobe: int  #: default nprobe now (recalibrated)
    nprobe_before: int
    retrain_recommended: bool
    reasons: tuple[str, ...] = ()

    @property
    def mean_distance_ratio(self) -> float:
        return self.mean_distance / self.mean_distance_at_training if self.mean_distance_at_training else 1.0

    @property
    def imbalance_ratio(self) -> float:
        ref = self.cluster_imbalance_at_training
        return self.cluster_imbalance / ref if ref else 1.0

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["reasons"] = list(self.reasons)
        d["mean_distance_ratio"] = round(self.mean_distance_ratio, 4)
        d["imbalance_ratio"] = round(self.imbalance_ratio, 4)
        return d

    def summary(self) -> str:
        head = (
            f"{self.n_images} images: {self.added} added, {self.changed} changed, {self.removed} removed, "
            f"{self.unchanged} unchanged ({self.n_embedded} embedded, {self.skipped} skipped) "
            f"in {self.seconds:.1f}s"
        )
        drift = (
            f"drift: cluster imbalance {self.cluster_imbalance:.2f} "
            f"(training {self.cluster_imbalance_at_training:.2f}), "
            f"mean distance {self.mean_distance:.4f} (training {self.mean_distance_at_training:.4f}), "
            f"{self.far_share:.0%} of new images far ({self.n_far}), churn {self.churn:.0%}; "
            f"nprobe {self.nprobe_before} -> {self.nprobe}"
        )
        verdict = (
            "retrain recommended: " + "; ".join(self.reasons)
            if self.retrain_recommended
            else "no retraining needed"
        )
        return f"{head}\n{drift}\n{verdict}"


def _gini(sizes: np.ndarray) -> float:
    """Gini coefficient of non-negative sizes (0: all equal; near 1: one holds everything)."""
    x = np.sort(np.asarray(sizes, np.float64))
    n, total = len(x), x.sum()
    if n == 0 or total <= 0:
        return 0.0
    return float((2 * np.arange(1, n + 1) - n - 1) @ x / (n * total))


def _imbalance(sizes: np.ndarray) -> float:
    s = np.asarray(sizes, np.float64)
    return float(s.max() / s.mean()) if len(s) and s.mean() > 0 else 0.0


def _retrain_reasons(
    *,
    n_new: int,
    n_far: int,
    far_quantile: float,
    mean_distance: float,
    mean_distance_at_training: float,
    imbalance: float,
    imbalance_at_training: float,
    churn: float,
) -> list[str]:
    """The retrain rule (module docstring): the reasons that hold, empty when none does."""
    out: list[str] = []
    far_share = n_far / n_new if n_new else 0.0
    if n_far >= _MIN_FAR and far_share > _FAR_SHARE_FACTOR * (1 - far_quantile):
        out.append(
            f"{far_share:.0%} of the {n_new} new or changed images lie beyond the training distances' "
            f"{far_quantile:.0%} quantile (expected {1 - far_quantile:.0%})"
        )
    if mean_distance_at_training > 0 and mean_distance > _MEAN_DISTANCE_RATIO * mean_distance_at_training:
        out.append(
            f"mean distance to the centroids grew {mean_distance / mean_distance_at_training - 1:.0%} "
            "since training"
        )
    if imbalance_at_training > 0 and imbalance > _IMBALANCE_RATIO * imbalance_at_training:
        out.append(
            f"largest cluster is {imbalance:.1f}x the mean size (training {imbalance_at_training:.1f}x)"
        )
    if churn > _MAX_CHURN:
        out.append(f"{churn:.0%} of the catalogue was added, changed or removed since training")
    return out


def update_catalogue(
    img_folder: str | os.PathLike[str],
    features_folder: str | os.PathLike[str],
    model_filename: str | os.PathLike[str],
    csv_filename: str | os.PathLike[str],
    *,
    options: UpdateOptions | None = None,
    compute: Compute | None = None,
    extractor: str | Extractor | None = None,
    attributes: Any = None,
    attribute_types: dict[str, str] | None = None,
    show_progress: bool = True,
    **settings: Any,
) -> UpdateReport:
    """Bring a trained model up to date with its image folder, without retraining.

    Embeds only new or changed images into ``features_folder``, removes deleted ones,
    assigns new vectors to their nearest centroid, keeps every unchanged image's cluster
    and distance, rebuilds the search index with the trained ranking space
    (:func:`~varsitysrch._searchindex.build_search_index`), and rewrites
    ``model_filename`` and ``csv_filename`` atomically (the model records the CSV's SHA-256).
    The store's lock is held from the first read to the last write, so a second update (or
    extract) of the same store is refused until this one is done.  The returned
    :class:`UpdateReport` holds the counts and the drift report; its
    ``retrain_recommended`` follows the rule in this module's docstring.

    Args:
        img_folder: the catalogue's image folder (as given to extract_features).
        features_folder: its feature store (updated in place).
        model_filename, csv_filename: the model file and CSV written by train_clusters.
        options: a :class:`~varsitysrch.UpdateOptions`: ``far_quantile`` (training-distance
            quantile beyond which a new image counts as far), ``recalibrate`` (recalibrate the
            default ``nprobe``, and the IVF's, on 200 held-out queries; otherwise keep the
            trained values), ``allow_empty`` (let an image folder with no readable image empty
            the store and the model; otherwise that is an error and both are kept, as in
            extract_features).
        compute: a :class:`~varsitysrch.Compute`: ``engine="dask"`` embeds and assigns on a
            dask.distributed cluster (``scheduler``); ``batch_size``, ``num_workers``,
            ``threads`` as in extract_features.
        extractor: the extractor new images are embedded with, checked against the model's
            record (default: the recorded built-in one; a user ONNX graph must be passed, as
            ``Extractor.from_onnx(PATH)`` or ``"onnx:PATH"``: a model file never names a file).
        attributes, attribute_types: a new attributes table (as in train_clusters) joined
            to the updated catalogue; ``None`` keeps the model's table (kept images keep
            their values, new images have none).
        show_progress: show the extraction progress bar.
        settings: any field of ``options`` or of ``compute`` given as a keyword, as earlier
            versions took them (``far_quantile=0.9``, ``engine="dask"``); it wins over the
            same field of the value; any other name is refused.
    """
    t0 = time.perf_counter()
    opts, comp, _ = settle("update_catalogue", settings, UpdateOptions, options, compute, _COMPUTE_USED)
    model_path, features = Path(model_filename), Path(features_folder)
    check_folders(Path(img_folder), features)
    check_replaceable(model_path)
    check_replaceable(csv_filename)
    # one lock from the first read to the last write (store, model and CSV): two updates never interleave
    with store_lock(features):
        return _update_locked(
            img_folder,
            features,
            model_path,
            Path(csv_filename),
            t0=t0,
            show_progress=show_progress,
            options=opts,
            compute=comp,
            extractor=extractor,
            attributes=attributes,
            attribute_types=attribute_types,
        )


def _update_locked(
    img_folder: str | os.PathLike[str],
    features: Path,
    model_path: Path,
    csv_filename: Path,
    *,
    t0: float,
    show_progress: bool,
    options: UpdateOptions,
    compute: Compute,
    extractor: str | Extractor | None,
    attributes: Any,
    attribute_types: dict[str, str] | None,
) -> UpdateReport:
    mf = load_model(model_path)
    ex = _extractor(mf, extractor, model_path)
    before, dtype = _store_state(features)
    with contextlib.ExitStack() as stack:
        if compute.engine == "dask":
            from ._dask import client_for

            compute = compute.replace(scheduler=stack.enter_context(client_for(compute.scheduler)))
        res = extract_features(
            img_folder,
            features,
            extractor=ex,
            compute=compute,
            dtype=dtype,
            allow_empty=options.allow_empty,
            show_progress=show_progress,
        )
        store = FeatureStore.open(features, validate=False)  # just verified and written, under our lock
        if len(store) == 0:  # allow_empty emptied the store; a model holds at least one image
            raise FeatureStoreError(
                f"no images left under {str(img_folder)!r}: the feature store {str(features)!r} was "
                f"emptied (allow_empty), the model {str(model_path)!r} and {str(csv_filename)!r} were "
                "left as they are (a model needs at least one image); train again when there are images"
            )
        if store.dim != int(mf.config["dim"]):
            raise IncompatibleModelError(f"feature store has dim {store.dim}, the model {mf.config['dim']}")
        plan = _plan(mf, store, before, res.embedded_ids)
        labels, dists = _assign(mf, store, plan, compute)
    drift = _drift(mf, plan, labels, dists, options.far_quantile)
    nprobe_before = int(mf.config.get("nprobe", mf.k))
    old_attributes = model_attributes(mf.config, mf.arrays, mf.ids)
    graph = graph_state(mf.config, mf.arrays)  # before _updated_model rewrites mf.config
    new_mf = _updated_model(mf, store, plan, labels, dists, drift, options.recalibrate, model_path)
    carry_graph(
        graph,
        new_mf.config,
        new_mf.arrays,
        store.vectors,
        plan.keep_src,
        plan.keep_rows,
        kmeans=new_mf.to_model() if graph is not None else None,
        labels=new_mf.labels,
    )
    apply_attributes(new_mf, old_attributes, attributes, attribute_types)
    save_model_and_csv(model_path, csv_filename, new_mf)
    seconds = time.perf_counter() - t0
    report = drift.report(plan, res, seconds, int(new_mf.config["nprobe"]), nprobe_before)
    log.info("%s", report.summary())
    return report


def _extractor(mf: ModelFile, extractor: str | Extractor | None, model_path: Path) -> str | Extractor:
    ident = mf.config.get("extractor", {})
    ex = query_extractor(ident, extractor, model_path)  # the operator's is checked against the model
    if ex is None:
        raise IncompatibleModelError(
            f"model {str(model_path)!r} was not made by a known extractor ({ident.get('name')!r}); "
            "pass extractor= to embed new images"
        )
    return ex


def _store_state(features: Path) -> tuple[dict[str, Stamp], str]:
    """File stamps of the store before extraction (which images this run re-embeds) and its dtype."""
    if not (features / STORE_JSON).exists():
        return {}, "float32"
    store = FeatureStore.open(features, validate=False)
    return store.stamps(), str(store.meta.get("dtype", "float32"))


@dataclass
class _Plan:
    keep_rows: np.ndarray  # store rows that keep their assignment
    keep_src: np.ndarray  # ... and their row in the old model
    new_rows: np.ndarray  # store rows to assign (added + changed), increasing
    added: int
    changed: int
    removed: int
    unchanged: int


def _plan(
    mf: ModelFile, store: FeatureStore, before: dict[str, Stamp], embedded: Collection[str] = ()
) -> _Plan:
    """Which store rows keep their assignment; ``embedded`` (ids re-embedded by this run's
    extraction) always count as changed, whatever their stamps say."""
    old_pos = {rel: j for j, rel in enumerate(mf.ids)}
    ref = model_stamps(mf)
    now_stamps = store.stamps()
    keep_rows: list[int] = []
    keep_src: list[int] = []
    new_rows: list[int] = []
    added = changed = 0
    for i, rel in enumerate(store.ids):
        j = old_pos.get(rel)
        if j is None:
            added += 1
            new_rows.append(i)
            continue
        now = now_stamps.get(rel)
        was = ref.get(rel, before.get(rel))
        if rel in embedded or (now is not None and was is not None and not same_file(was, now)):
            changed += 1
            new_rows.append(i)
        else:
            keep_rows.append(i)
            keep_src.append(j)
    removed = len(mf.ids) - len(keep_rows) - changed
    return _Plan(
        np.asarray(keep_rows, np.int64),
        np.asarray(keep_src, np.int64),
        np.asarray(new_rows, np.int64),
        added,
        changed,
        removed,
        len(keep_rows),
    )


def _assign(
    mf: ModelFile, store: FeatureStore, plan: _Plan, compute: Compute
) -> tuple[np.ndarray, np.ndarray]:
    n = len(store)
    labels = np.empty(n, np.int32)
    dists = np.empty(n, np.float32)
    labels[plan.keep_rows] = np.asarray(mf.labels)[plan.keep_src]
    dists[plan.keep_rows] = np.asarray(mf.distances)[plan.keep_src]
    if len(plan.new_rows):
        model = mf.to_model()
        X = np.asarray(store.vectors[plan.new_rows], np.float32)
        if compute.engine == "dask":
            from ._dask import dask_assign

            lab, dst = dask_assign(X, model, scheduler=compute.scheduler)
        else:
            lab, dst = model.assign_all(X)
        labels[plan.new_rows] = lab
        dists[plan.new_rows] = dst
    return labels, dists


def _ivf_lists(mf: ModelFile, store: FeatureStore, plan: _Plan) -> tuple[np.ndarray, np.ndarray] | None:
    """The model's IVF with each image's list (None without an IVF): kept or nearest list for new ones."""
    if not mf.config.get("ivf") or "ivf_lists" not in mf.arrays or "ivf_centroids" not in mf.arrays:
        return None
    C = mf.arrays["ivf_centroids"]
    lists = np.empty(len(store), np.int32)
    lists[plan.keep_rows] = mf.arrays["ivf_lists"][plan.keep_src]
    if len(plan.new_rows):
        lists[plan.new_rows] = assign_lists(store.vectors[plan.new_rows], C)
    return C, lists


@dataclass
class _Drift:
    """The drift measures of an update (module docstring)."""

    k: int
    sizes_now: np.ndarray
    sizes_tr: np.ndarray
    mean_now: float
    mean_tr: float
    far_quantile: float
    threshold: float
    n_new: int
    n_far: int
    churned: int
    churn: float
    reasons: list[str]

    def report(
        self, plan: _Plan, res: ExtractionResult, seconds: float, nprobe: int, nprobe_before: int
    ) -> UpdateReport:
        return UpdateReport(
            n_images=int(self.sizes_now.sum()),
            added=plan.added,
            changed=plan.changed,
            removed=plan.removed,
            unchanged=plan.unchanged,
            n_embedded=res.n_embedded,
            skipped=res.n_skipped,
            seconds=seconds,
            k=self.k,
            cluster_imbalance=_imbalance(self.sizes_now),
            cluster_imbalance_at_training=_imbalance(self.sizes_tr),
            gini=_gini(self.sizes_now),
            gini_at_training=_gini(self.sizes_tr),
            empty_clusters=int((self.sizes_now == 0).sum()),
            mean_distance=self.mean_now,
            mean_distance_at_training=self.mean_tr,
            far_quantile=self.far_quantile,
            far_threshold=self.threshold,
            n_far=self.n_far,
            far_share=self.n_far / self.n_new if self.n_new else 0.0,
            churn=self.churn,
            nprobe=nprobe,
            nprobe_before=nprobe_before,
            retrain_recommended=bool(self.reasons),
            reasons=tuple(self.reasons),
        )


def _drift(mf: ModelFile, plan: _Plan, labels: np.ndarray, dists: np.ndarray, far_quantile: float) -> _Drift:
    """Drift against the training reference; stores the far quantile in the model's config if new."""
    config, k = mf.config, mf.k
    training = config.setdefault("training", {})
    sizes_now = np.bincount(labels, minlength=k)
    sizes_tr = np.asarray(training.get("cluster_sizes") or np.bincount(mf.labels, minlength=k), np.float64)
    mean_now = float(dists.mean()) if len(dists) else 0.0
    mean_tr = float(training.get("mean_distance", float(mf.distances.mean()) if len(mf.distances) else 0.0))
    quantiles = training.setdefault("distance_quantiles", {})
    key = str(far_quantile)
    if key not in quantiles:
        quantiles[key] = float(np.quantile(mf.distances, far_quantile)) if len(mf.distances) else 0.0
    threshold = float(quantiles[key])
    n_new = len(plan.new_rows)
    n_far = int((dists[plan.new_rows] > threshold).sum()) if n_new else 0
    n_training = int(sizes_tr.sum()) or len(mf.ids) or 1
    churned = int(config.get("churn_since_training", 0)) + plan.added + plan.changed + plan.removed
    reasons = _retrain_reasons(
        n_new=n_new,
        n_far=n_far,
        far_quantile=far_quantile,
        mean_distance=mean_now,
        mean_distance_at_training=mean_tr,
        imbalance=_imbalance(sizes_now),
        imbalance_at_training=_imbalance(sizes_tr),
        churn=churned / n_training,
    )
    return _Drift(
        k,
        sizes_now,
        sizes_tr,
        mean_now,
        mean_tr,
        far_quantile,
        threshold,
        n_new,
        n_far,
        churned,
        churned / n_training,
        reasons,
    )


def _updated_model(
    mf: ModelFile,
    store: FeatureStore,
    plan: _Plan,
    labels: np.ndarray,
    dists: np.ndarray,
    drift: _Drift,
    recalibrate: bool,
    model_path: Path,
) -> ModelFile:
    """The model file after the update: same centroids and spaces, new catalogue, search index rebuilt."""
    config = mf.config
    arrays = {k: v for k, v in mf.arrays.items() if not k.startswith("store_")}
    arrays.update(stamp_arrays(store.ids, store.stamps()))
    space = None
    if "search_mean" in mf.arrays and "search_components" in mf.arrays:
        space = (mf.arrays["search_mean"], mf.arrays["search_components"])
    index = build_search_index(
        store.vectors,
        labels,
        mf.to_model(),
        target_recall=float(config.get("target_recall", 0.95)),
        search_pca=space if space is not None else 0,
        ivf=_ivf_lists(mf, store, plan),
        calibrate=recalibrate,
        n_queries=200,
    )
    index.apply(config, arrays)
    n = len(store)
    config["n_images"] = n
    if store.meta.get("image_root"):  # a record only, as at training
        config["image_root"] = store.meta["image_root"]
    config.setdefault("features", {}).update(
        path=str(store.folder.resolve()),
        relative_path=os.path.relpath(store.folder.resolve(), model_path.resolve().parent),
        count=n,
    )
    record_store(config, store)
    config["churn_since_training"] = drift.churned
    entry = {
        "updated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "added": plan.added,
        "changed": plan.changed,
        "removed": plan.removed,
        "n_images": n,
        "far_share": round(drift.n_far / drift.n_new, 4) if drift.n_new else 0.0,
        "mean_distance": round(drift.mean_now, 6),
        "cluster_imbalance": round(_imbalance(drift.sizes_now), 4),
        "nprobe": int(config.get("nprobe", mf.k)),
        "retrain_recommended": bool(drift.reasons),
    }
    config["updates"] = [*config.get("updates", []), entry][-_MAX_HISTORY:]
    vectors = np.asarray(store.vectors, np.float16) if mf.vectors is not None else None
    return ModelFile(
        config, mf.centroids, mf.pca_mean, mf.pca_components, list(store.ids), labels, dists, vectors, arrays
    )
