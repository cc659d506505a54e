"""Step 3: ``train_clusters`` -- feature store -> K-means -> search index -> model file + CSV.

The stages, each in its own module: :mod:`varsitysrch._kmeans` (the estimator),
:mod:`varsitysrch._searchindex` (ranking space, calibrated ``nprobe``, IVF),
:mod:`varsitysrch._modelfile` (the file format).  The Dask engine is reached only through
:func:`varsitysrch._dask.dask_assign`.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from . import _index
from ._attributes import resolve_attributes
from ._colourlabels import fit_colour_model, labels_from_attributes
from ._config import Compute, TrainOptions, settle
from ._errors import FeatureStoreError
from ._io import check_replaceable
from ._kmeans import Assigner, KMeansModel, distance_quantiles
from ._modelfile import MODEL_FORMAT, MODEL_VERSION, ModelFile, record_store, save_model_and_csv, stamp_arrays
from ._postprocess import fit_search_pca
from ._progress import say
from ._rerank import add_graph
from ._searchindex import build_search_index
from ._store import FeatureStore
from ._version import __version__

__all__ = ["train_clusters"]

log = logging.getLogger(__name__)

#: the Compute fields train_clusters uses (K-means assignment of every image, locally or on Dask)
_COMPUTE_USED = ("engine", "scheduler")

#: the catalogue's raw vectors are embedded (float16) in the model up to this many floats
_EMBED_MAX_FLOATS = 50_000_000


def train_clusters(
    features_folder: str | os.PathLike[str],
    model_filename: str | os.PathLike[str],
    csv_filename: str | os.PathLike[str],
    num_clusters: int,
    *,
    options: TrainOptions | None = None,
    compute: Compute | None = None,
    attributes: Any = None,
    attribute_types: dict[str, str] | None = None,
    show_progress: bool = True,
    **settings: Any,
) -> KMeansModel:
    """Train K-means on a feature store; write the model file and the assignments CSV.

    The CSV has columns ``Image_File`` (id: relative path with extension), ``Cluster`` (the
    original package's names) and ``distance`` (to its centroid, in the clustering space), in
    store (sorted id) order.  Prints one line (``Model saved to ... (k=20, 40 images, clusters
    of 1-4 images).``); ``show_progress=False`` silences it (it is logged at INFO either way).

    ``options``: a :class:`~varsitysrch.TrainOptions` (how to cluster and index, below);
    ``compute``: a :class:`~varsitysrch.Compute` (``engine``, ``scheduler``: where every image
    is assigned to its centroid).  Each of their fields may also be given as a keyword, as
    earlier versions took them (``n_init=5``, ``engine="dask"``); such a keyword wins over the
    same field of ``options`` / ``compute``, and a keyword that is not a setting is refused.

    Clustering: :class:`KMeansModel` with ``num_clusters``, ``n_components`` (a PCA
    clustering space), ``n_init``, ``random_state``, ``backend`` and ``max_samples`` (rows
    the centroids are trained on; every image is then assigned in chunks, on
    dask.distributed workers with ``engine="dask", scheduler=ADDRESS|Client``).

    Search (:func:`~varsitysrch._searchindex.build_search_index`): ``search_pca``
    components of a catalogue-centred PCA form the ranking space (``None`` or ``0``, the
    default: plain cosine on the raw vectors; opt-in, e.g.
    :data:`~varsitysrch._postprocess.SEARCH_PCA_DIM` = 128: measured on three dev domains, n.s. on
    fashion-dev and a loss from shelf photos to studio shots, ``docs/quality.md``),
    and the default ``nprobe`` is the fewest clusters reaching ``target_recall`` recall@10
    against exact search in that space.  Catalogues above
    :data:`varsitysrch._index.IVF_THRESHOLD` images (or ``ivf=True``) get a faiss IVF
    instead.  ``embed_index``: keep the raw vectors in the model file (``None``: up to
    50M floats); otherwise the Searcher reads them from the feature store.
    ``query_expansion``: the Searcher's default alpha-QE neighbours (``None``: 0, off; opt-in
    :data:`~varsitysrch._postprocess.QE_NEIGHBOURS` = 2): measured on the three dev domains, its
    gain's interval does not clear zero on fashion-dev, so by the team's rule it is opt-in
    (``docs/quality.md``, "Decisions on three dev domains").

    The model also records the store it was made from -- its generation and checksum
    (``model.json`` ``features``) and its colour rows: their checksum and the catalogue's
    studio share, the share of images on a plain backdrop that ``views="auto"`` decides by
    (``model.json`` ``colour``; ``null`` for a store without colour rows, said in a warning:
    re-extract to add them).  See :meth:`~varsitysrch._store.FeatureStore.colour_record`.

    ``attributes``: the catalogue's attributes for ``where=`` filters -- a CSV path
    (``image,<columns>``), ``{image: {column: value}}`` or an ``Attributes`` -- joined to
    the store's ids and stored in the model (``attribute_types`` overrides a column's
    guessed type: ``{"sku": "string"}``); see :mod:`varsitysrch._attributes` and
    ``docs/shop.md``.  ``colour_labels``: one of those columns naming each product's colour
    ("Navy Blue", ...): a colour classifier is learned from it and "match colour" ranks by it
    (:mod:`varsitysrch._colourlabels`; measured in ``docs/quality.md``).

    Returns the fitted :class:`KMeansModel`.
    """
    opts, comp, _ = settle("train_clusters", settings, TrainOptions, options, compute, _COMPUTE_USED)
    target_recall, random_state, n_components = opts.target_recall, opts.random_state, opts.n_components
    search_pca, ivf, embed_index = opts.search_pca, opts.ivf, opts.embed_index
    check_replaceable(model_filename)  # a device, FIFO or folder is refused before any work
    check_replaceable(csv_filename)
    store = FeatureStore.open(features_folder)
    attrs = resolve_attributes(attributes, store.ids, types=attribute_types)  # a bad CSV fails before K-means
    colour_names = (
        labels_from_attributes(attrs, opts.colour_labels) if opts.colour_labels is not None else None
    )
    if colour_names is not None and store.colour is None:
        raise FeatureStoreError(
            f"colour_labels={opts.colour_labels!r} needs the catalogue's colour signatures, and the feature "
            f"store {str(features_folder)!r} has no colour rows: re-extract it with extract_features"
        )
    X = store.vectors  # a memory map: float16 or float32, never copied whole
    n, dim = X.shape
    use_ivf = bool(ivf or (ivf is None and n > _index.IVF_THRESHOLD))
    n_search = 0 if use_ivf or search_pca is None else search_pca
    model = KMeansModel(
        num_clusters,
        n_init=opts.n_init,
        random_state=random_state,
        backend=opts.backend,
        n_components=n_components,
        max_samples=opts.max_samples,
    )
    model._validate(n, dim)
    # one PCA for both spaces: the clustering space is its first n_components components
    shared = fit_search_pca(X, max(n_components or 0, n_search), random_state) if n_search else None
    model.fit(X, assigner=_assigner(store, comp), pca=shared)
    space: Any = (shared[0], shared[1][:n_search]) if shared is not None else 0
    index = build_search_index(
        X,
        model.labels_,
        model,
        target_recall=target_recall,
        search_pca=space,
        ivf=use_ivf,
        random_state=random_state,
    )
    config = _model_config(store, model, Path(features_folder), Path(model_filename), target_recall)
    # the generation and checksum a store-based index is checked against, and the colour rows
    # (checksum, studio share) search decides by
    record_store(config, store)
    config["query_expansion"] = 0 if opts.query_expansion is None else opts.query_expansion
    if embed_index is None:
        embed_index = n * dim <= _EMBED_MAX_FLOATS
    config["index"] = "embedded" if embed_index else "store"
    arrays = stamp_arrays(store.ids, store.stamps())  # update_catalogue compares them to find changes
    index.apply(config, arrays)
    # the neighbour graph searches re-rank over (by default without an IVF), tied to the store
    # recorded above (_rerank)
    if opts.rerank_graph or (opts.rerank_graph is None and not use_ivf):
        add_graph(config, arrays, X, kmeans=model, labels=model.labels_)
    if attrs is not None:
        config["attributes"] = attrs.to_config()
        arrays.update(attrs.to_arrays())
    if colour_names is not None and store.colour is not None:  # "match colour" by a learned classifier
        cm = fit_colour_model(
            X, store.colour, colour_names, str(opts.colour_labels), random_state=random_state
        )
        config["colour_model"] = cm.to_config()
        arrays.update(cm.to_arrays())
    mf = ModelFile(
        config,
        model.cluster_centers_,
        model.pca_mean_,
        model.pca_components_,
        list(store.ids),
        model.labels_,
        model.distances_,
        np.asarray(X, np.float16) if embed_index else None,
        arrays,
    )
    save_model_and_csv(model_filename, csv_filename, mf)  # the model records the CSV's SHA-256
    log.info(
        "trained k=%d on %d images (%s, %.1fs); default nprobe %s",
        model.num_clusters,
        n,
        model.backend_,
        model.fit_seconds_,
        config["nprobe"],
    )
    sizes = config["training"]["cluster_sizes"]
    say(
        log,
        f"Model saved to {model_filename} and cluster assignments saved to {csv_filename} "
        f"(k={model.num_clusters}, {n} images, clusters of {min(sizes)}-{max(sizes)} images).",
        show_progress,
    )
    return model


def _assigner(store: FeatureStore, compute: Compute) -> Assigner | None:
    """Every row's nearest centroid on dask.distributed workers (``engine="dask"``), else local."""
    if compute.engine != "dask":
        return None
    from ._dask import dask_assign

    vectors_file = getattr(store.vectors, "filename", None)
    source = vectors_file if vectors_file else store.vectors
    return lambda m: dask_assign(source, m, scheduler=compute.scheduler)


def _model_config(
    store: FeatureStore, model: KMeansModel, folder: Path, model_path: Path, target_recall: float
) -> dict[str, Any]:
    n, dim = store.vectors.shape
    sizes = np.bincount(model.labels_, minlength=model.num_clusters)
    return {
        "format": MODEL_FORMAT,
        "version": MODEL_VERSION,
        "library_version": __version__,
        "k": int(model.num_clusters),
        "dim": int(dim),
        "n_images": int(n),
        "extractor": store.extractor,
        "features": {
            "path": str(folder.resolve()),
            "relative_path": os.path.relpath(folder.resolve(), model_path.resolve().parent),
            "count": int(n),
        },
        # where the images were at extraction: a record only (Searcher never uses it; the service
        # may, inside a root its operator allows)
        "image_root": store.meta.get("image_root"),
        "n_components": model.n_components,
        "target_recall": target_recall,
        "training": {
            "backend": model.backend_,
            "n_init": model.n_init,
            "random_state": model.random_state,
            "inertia": model.inertia_,
            "n_iter": model.n_iter_,
            "seconds": round(model.fit_seconds_, 3),
            "mean_distance": float(model.distances_.mean()),
            "cluster_sizes": [int(s) for s in sizes],
            "trained_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "sample_size": int(model.sample_size_),
            "distance_quantiles": distance_quantiles(model.distances_),
        },
    }
