"""Step 4: ranked search.  :class:`Searcher` loads a model once; :class:`Hit` is one result.

Every search goes through the one query pipeline, :func:`varsitysrch._pipeline.run_search`
(decode -> views -> embed -> candidates -> ranking -> re-ranking -> merge views -> collapse ->
cut-offs -> hits); the settings of a search are one :class:`~varsitysrch.SearchOptions`.  The
index a model is searched through owns ``nprobe`` (K-means clusters, or IVF lists for a large
catalogue: :mod:`varsitysrch._candidates`); if the probed part holds fewer than ``top_n``
images, more is probed, so ``top_n`` results come back whenever the catalogue has that many.
``nprobe=None`` uses the value calibrated at training time; ``exact=True`` scans everything.

Ranking space: the one stored in the model by
:func:`~varsitysrch._searchindex.build_search_index` (a catalogue-centred PCA for catalogues of
1,000 images and more), else plain cosine on the raw vectors; query expansion (the model's
``query_expansion``, 2 for models :func:`train_clusters` writes; 0 turns it off) searches with
the query plus its best results.  Whatever the ranking used, ``Hit.score`` is the plain cosine
of the query to the hit in the raw feature space (:mod:`varsitysrch._pipeline`).  The
measurements behind these defaults are in ``docs/quality.md``.

Files: a :class:`Hit` carries a ``path`` only when the caller names the catalogue's image
folder (``image_root``); ids are resolved under it by :func:`varsitysrch._paths.resolve_image`
and never leave it.  Nothing recorded in the model file is used as a filesystem root.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ._attributes import Attributes, CompiledFilter, FilterCache, model_attributes
from ._candidates import ClusterIndex, ListIndex
from ._colour import (
    check_colour_weight,
    load_colour_signatures,
    load_plain_flags,
    model_colour_checksum,
    model_studio_share,
)
from ._colourlabels import ColourModel, colour_model, label_codes
from ._confidence import ScoreCalibrator
from ._errors import FeatureStoreError, IncompatibleModelError, InvalidArgumentError
from ._extractors import Embedder, Extractor, query_extractor
from ._feedback import ALPHA as FEEDBACK_ALPHA
from ._feedback import BETA as FEEDBACK_BETA
from ._feedback import GAMMA as FEEDBACK_GAMMA
from ._hit import Hit
from ._images import ImageSource
from ._index import IVFSearch
from ._io import stat_stamp
from ._kmeans import KMeansModel
from ._modelfile import (
    ModelFile,
    check_store_for_model,
    csv_matches_model,
    csv_mismatch_message,
    load_model,
    read_assignments_kind,
)
from ._options import SearchOptions
from ._pipeline import Query, SearchResult, run_search
from ._postprocess import to_search_space
from ._progress import say
from ._query import STUDIO_CATALOGUE_SHARE
from ._store import FeatureStore

log = logging.getLogger(__name__)

__all__ = ["Hit", "Searcher", "search_feedback", "search_similar_images"]


class Searcher:
    """Loads a model once; answers queries by image (path, bytes, PIL), catalogue id or vector.

    Every search runs the one query pipeline, :func:`varsitysrch._pipeline.run_search`, with a
    :class:`~varsitysrch.SearchOptions` (the settings may also be given as keywords:
    ``search(q, 5, nprobe=3)``).

    The public surface (everything else is internal and may change):

    * searches: :meth:`search` (an image), :meth:`search_id` (a catalogue image),
      :meth:`search_vector` (a raw feature vector), :meth:`search_feedback` ("more / less like
      these"); ``len(searcher)``: the catalogue's images;
    * browsing: :meth:`members` (the catalogue rows of one K-means cluster);
    * the search index's probe, read-only: :attr:`probe_unit` (``"clusters"`` or ``"lists"``),
      :attr:`default_nprobe`, :attr:`max_nprobe`; :attr:`dim` (the raw feature dimension);
    * the loaded model, to be read and not changed: ``ids`` (row -> image id), ``labels`` (row ->
      cluster), ``k``, ``vectors`` (the raw catalogue vectors, ``[n, dim]``), ``model`` (the
      :class:`~varsitysrch.KMeansModel`), ``config`` (the model file's record), ``calibration``
      (the :class:`~varsitysrch.ScoreCalibrator` behind ``Hit.confidence``), ``attributes``
      (the columns ``where=`` filters on, ``None`` without), ``extractor`` (what queries are
      embedded with), ``model_path``, ``model_file`` (the model file as loaded: its record and
      arrays), ``image_root``; and the defaults a search starts from:
      ``colour_weight``, ``query_expansion``.

    Args:
        model_filename: a model file written by :func:`train_clusters`.
        csv_file: its assignments CSV (optional; checked against the model when given).
        nprobe: default probe of the model's search index (``None``: the calibrated value):
            K-means clusters, or IVF lists for a model with an IVF index; checked against it.
        threads: ONNX Runtime threads for embedding queries.
        image_root: folder of the catalogue images, named by the operator; hits then carry
            their file's ``path`` (resolved inside it, see :func:`varsitysrch._paths.resolve_image`).
            ``None``: no paths.  A folder recorded in the model or store is never used.
        query_expansion: alpha-QE neighbours (``None``: the model's value; 0: off).
        colour_weight: default weight of the product's colour in the ranking, in ``[0, 1]``
            (needs the feature store's colour rows (written by extract_features with the vectors)).
        features_folder: the feature store of a model whose index is not embedded (default:
            the one recorded in the model, only if it lies in the model file's folder).
        extractor: the extractor queries are embedded with (a name, ``"onnx:PATH"`` or an
            :class:`Extractor`), checked against the model's record (``None``: the recorded
            built-in one).  A model made with a user ONNX graph needs it: a model file never
            names a file to load.
    """

    def __init__(
        self,
        model_filename: str | os.PathLike[str],
        csv_file: str | os.PathLike[str] | None = None,
        *,
        nprobe: int | None = None,
        threads: int | None = None,
        image_root: str | os.PathLike[str] | None = None,
        query_expansion: int | None = None,
        features_folder: str | os.PathLike[str] | None = None,
        extractor: str | Extractor | None = None,
        colour_weight: float = 0.0,
    ) -> None:
        self._features = Path(features_folder) if features_folder is not None else None
        #: default weight of the product's colour in the ranking, ``(1 - w) cosine + w colour similarity``
        #: (0: the CNN cosine only; "match colour" = 0.15, measured in docs/quality.md)
        self.colour_weight = check_colour_weight(colour_weight)
        self._colours: np.ndarray | None = None
        self._studio: bool | None = None  # _studio_catalogue, read once
        if query_expansion is not None and (
            isinstance(query_expansion, bool) or not isinstance(query_expansion, int) or query_expansion < 0
        ):
            raise InvalidArgumentError(f"query_expansion must be an integer >= 0; got {query_expansion!r}")
        self.model_path = Path(model_filename)
        mf = load_model(self.model_path)
        #: alpha-QE: re-search with the query plus its top results (0 = off; None = the model's
        #: value, set by train_clusters). docs/quality.md
        qe = mf.config.get("query_expansion", 0) if query_expansion is None else query_expansion
        self.query_expansion = int(qe)
        self.model_file: ModelFile = mf
        self.config = mf.config
        self.k = mf.k
        self.model: KMeansModel = mf.to_model()
        self.ids = mf.ids
        self.labels = np.asarray(mf.labels, np.int32)
        if csv_file is not None:
            self._check_csv(Path(csv_file))
        vectors = mf.vectors if mf.vectors is not None else self._store_vectors()
        # large catalogues carry a faiss IVF (see _index): search goes through it, vectors stay memory-mapped
        ivf = IVFSearch.from_model(mf, vectors)
        #: the catalogue's raw feature vectors (``[n, dim]``, unit rows): what ``Hit.score`` is measured in
        self.vectors = vectors if ivf is not None else np.ascontiguousarray(vectors, dtype=np.float32)
        #: hits' confidence: the calibration stored by train_clusters (None: a model from before it)
        cal = self.config.get("confidence")
        self.calibration: ScoreCalibrator | None = ScoreCalibrator.from_dict(cal) if cal is not None else None
        if self.vectors.shape != (len(self.ids), int(self.config["dim"])):
            raise IncompatibleModelError(
                f"index has shape {self.vectors.shape}, model expects ({len(self.ids)}, {self.config['dim']})"
            )
        self._space, self._scoring = self._ranking_space(mf, ivf is not None)
        self._id_index = {i: j for j, i in enumerate(self.ids)}
        #: the catalogue's attributes (``None``: the model has none), filtered by ``where=``
        self.attributes: Attributes | None = model_attributes(mf.config, mf.arrays, self.ids)
        self._filters = FilterCache(self.attributes, self.labels, self.k) if self.attributes else None
        #: "match colour" by a colour classifier learned from the catalogue's colour names
        #: (``train_clusters(colour_labels=...)``; ``None``: by the colour signatures), and each
        #: image's colour as a row of its names (-1: none)
        self._colour_model: ColourModel | None = colour_model(mf.config, mf.arrays, str(self.model_path))
        self._colour_codes: np.ndarray | None = (
            label_codes(self._colour_model, self.attributes, len(self.ids)) if self._colour_model else None
        )
        #: the search index (the candidates stage), which owns ``nprobe``: K-means clusters or IVF lists
        self._index: ClusterIndex | ListIndex = (
            ListIndex(ivf)
            if ivf is not None
            else ClusterIndex(
                self.model, self.k, self.labels, self._scoring, int(self.config.get("nprobe", 1))
            )
        )
        if nprobe is not None:
            self._index.default_probe = self._index.check_probe(nprobe)
        self.image_root = Path(image_root).resolve() if image_root is not None else None
        self.extractor = query_extractor(self.config.get("extractor", {}), extractor, self.model_path)
        self._threads = threads
        self._embedder: Embedder | None = None

    # ------------------------------------------------------------------ the public searches
    def search(
        self,
        query: ImageSource,
        top_n: int | None = None,
        *,
        options: SearchOptions | None = None,
        **settings: Any,
    ) -> list[Hit]:
        """The ``top_n`` catalogue images most similar to ``query`` (path, bytes, PIL image), best first.

        ``options``: a :class:`~varsitysrch.SearchOptions` (``top_n`` default 10; ``views="auto"``:
        crops only for a shop photo against a studio catalogue; ``colour_weight``, ``where``,
        ``collapse``, ``min_score``, ``min_confidence``, ``nprobe``, ``exact``, ``expansion``);
        each may also be given as a keyword.  ``Hit.score`` is the plain cosine of the query to
        the hit (see :mod:`varsitysrch._pipeline`); ``min_confidence=searcher.calibration.cutoff``
        keeps the ``close`` hits.
        """
        return self._run(Query(image=query), top_n, options, settings).hits

    def search_id(
        self,
        image_id: str,
        top_n: int | None = None,
        *,
        options: SearchOptions | None = None,
        **settings: Any,
    ) -> list[Hit]:
        """Search with a catalogue image (by id) as the query; ``include_self=False`` leaves it
        out; with a colour weight its stored colour signature is used."""
        return self._run(Query(image_id=image_id), top_n, options, settings).hits

    def search_vector(
        self,
        vector: np.ndarray,
        top_n: int | None = None,
        *,
        options: SearchOptions | None = None,
        exclude: Collection[int] = (),
        **settings: Any,
    ) -> list[Hit]:
        """Search by raw feature vector (``[dim]``, or ``[V, dim]`` views of one query);
        ``exclude``: catalogue rows never returned nor used to expand the query.

        ``where``: attribute filter, a dict (``{"category": "shoes", "brand": ["a", "b"],
        "price": {"lt": 50}}``) or strings (``["category=shoes", "price<50"]``), see
        :mod:`varsitysrch._attributes`, applied while the candidates are gathered, so ``top_n``
        hits come back whenever ``top_n`` images match (``exact=True``: exact filtered search).
        ``collapse``: ``True`` or a cosine threshold: a hit that near-duplicates a better-ranked
        one is folded into its ``duplicates`` (over the merged views), and more results are
        fetched so that ``top_n`` distinct hits come back when they exist.
        """
        q = Query(vector=np.asarray(vector, np.float32), exclude=frozenset(int(r) for r in exclude))
        return self._run(q, top_n, options, settings).hits

    def search_feedback(
        self,
        query: Any = None,
        positive: Any = (),
        negative: Any = (),
        top_n: int | None = None,
        *,
        options: SearchOptions | None = None,
        alpha: float = FEEDBACK_ALPHA,
        beta: float = FEEDBACK_BETA,
        gamma: float = FEEDBACK_GAMMA,
        exclude_judged: bool = True,
        **settings: Any,
    ) -> list[Hit]:
        """One search with the Rocchio-refined query: "more like these, less like those".

        ``positive`` / ``negative``: catalogue ids, images or vectors the shopper marked
        relevant / irrelevant; ``query``: the original query (an image, a catalogue id or a
        vector; optional).  ``exclude_judged`` (default ``True``): judged catalogue items (and
        a catalogue query) are not shown again.  See :func:`varsitysrch.search_feedback` and
        ``docs/shop.md``.
        """
        pos, neg = _items(positive, "positive"), _items(negative, "negative")
        q = Query(
            **_query_kind(self, query), positive=pos, negative=neg, feedback=(alpha, beta, gamma),
            exclude_judged=exclude_judged,
        )  # fmt: skip
        return self._run(q, top_n, options, settings).hits

    def members(self, cluster: int) -> np.ndarray:
        """The catalogue rows of one K-means cluster (browsing)."""
        if isinstance(self._index, ClusterIndex):
            return self._index.members(int(cluster))
        return np.flatnonzero(self.labels == int(cluster)).astype(np.int64)

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def default_nprobe(self) -> int:
        """The search index's default probe (K-means clusters, or IVF lists)."""
        return self._index.default_probe

    @property
    def probe_unit(self) -> str:
        """What ``nprobe`` counts for this model: ``"clusters"`` or ``"lists"`` (an IVF index)."""
        return self._index.unit

    @property
    def max_nprobe(self) -> int:
        """The largest ``nprobe`` this model's index takes (its clusters or IVF lists)."""
        return self._index.total

    @property
    def dim(self) -> int:
        """The raw feature dimension."""
        return int(self.vectors.shape[1])

    @property
    def _query_embedder(self) -> Embedder:
        """The query embedder (built on first use)."""
        if self._embedder is None:
            if self.extractor is None:
                name = self.config.get("extractor", {}).get("name")
                where = (
                    " (a per-image .npy folder, the original package's layout)"
                    if name == "legacy-npy"
                    else ""
                )
                raise IncompatibleModelError(
                    f"model {str(self.model_path)!r} was trained on features without an extractor "
                    f"identity{where}, so a query image cannot be embedded the same way; re-extract the "
                    "images with `varsitysrch extract IMG_DIR FEATURES_DIR` (or extract_features) and "
                    "retrain, or search by vector with Searcher.search_vector"
                )
            self._embedder = Embedder(self.extractor, threads=self._threads)
        return self._embedder

    # ------------------------------------------------------------------ the pipeline's seams
    def _run(
        self, query: Query, top_n: int | None, options: SearchOptions | None, settings: dict[str, Any]
    ) -> SearchResult:
        if top_n is not None:
            settings = {**settings, "top_n": top_n}
        return run_search(self, query, SearchOptions.merge(options, **settings))

    def _to_ranking(self, V: np.ndarray) -> np.ndarray:
        """Raw vectors ``[m, dim]`` in the ranking space (the search PCA, if the model has one)."""
        V = np.asarray(V, np.float32)
        return V if self._space is None else to_search_space(V, *self._space)

    def _studio_catalogue(self) -> bool:
        """Whether most catalogue images are product shots on a plain backdrop: the studio share the
        model records (``model.json`` ``colour``; ``null``: a store without colour rows, not studio
        shots).  Only a model trained before the share was recorded (no ``colour`` key) reads the
        per-image flags of the store beside it (``False`` without them)."""
        if self._studio is None:
            share: float | None = None
            if "colour" in self.config:
                share = model_studio_share(self.config)
                source = "model"
            else:
                source = "store"
                for c in self._store_candidates():
                    flags = load_plain_flags(c, self.ids)
                    if flags is not None:
                        share = float(flags.mean()) if len(flags) else 0.0
                        break
            self._studio = share is not None and share >= STUDIO_CATALOGUE_SHARE
            log.info("catalogue: %s plain-background share %s (from the %s)", self.model_path, share, source)
        return self._studio

    def _colour_signatures(self) -> np.ndarray:
        """The catalogue's colour signatures, rows in ``ids`` order (read once from the feature
        store's colour rows (written by extract_features with the vectors); the rows the model
        was trained with when it records their checksum)."""
        if self._colours is None:
            if "colour" in self.config and self.config["colour"] is None:
                raise FeatureStoreError(
                    "colour_weight > 0 needs the catalogue's colour signatures, but this model was trained "
                    "on a feature store without colour rows: re-extract the catalogue with "
                    "extract_features, then train or update the model"
                )
            checksum = model_colour_checksum(self.config)
            for c in self._store_candidates():
                sig = load_colour_signatures(c, self.ids, checksum=checksum)
                if sig is not None:
                    self._colours = sig
                    break
            else:
                raise FeatureStoreError(
                    "colour_weight > 0 needs the catalogue's colour signatures, which are the feature "
                    "store's colour rows (written by extract_features with the vectors); none were found "
                    "for this model's images (re-run extract_features on the catalogue, and pass "
                    "features_folder= / --features if the store is not beside the model)"
                )
        return self._colours

    def _filter(self, where: Any, exclude: Collection[int] = ()) -> CompiledFilter | None:
        """The compiled ``where`` filter, with ``exclude`` taken out (``None``: no filter)."""
        if where is None or (hasattr(where, "__len__") and len(where) == 0):
            return None
        if self._filters is None:
            raise InvalidArgumentError(
                "where: this model has no attributes; train (or update) it with attributes=CSV "
                "(CLI: train --attributes FILE)"
            )
        flt = self._filters.get(where)
        if flt is None or not len(exclude):
            return flt
        mask = flt.mask.copy()
        mask[np.fromiter(exclude, np.int64)] = False
        rows = np.flatnonzero(mask).astype(np.int64)
        return CompiledFilter(mask, len(rows), np.bincount(self.labels[rows], minlength=self.k), rows)

    # ------------------------------------------------------------------ loading
    def _ranking_space(
        self, mf: ModelFile, ivf: bool
    ) -> tuple[tuple[np.ndarray, np.ndarray] | None, np.ndarray]:
        """``(search PCA, catalogue in the ranking space)``: as stored, or the raw vectors."""
        if ivf or "search_components" not in mf.arrays or "search_mean" not in mf.arrays:
            return None, self.vectors  # the IVF ranks in the raw space
        space = (mf.arrays["search_mean"], mf.arrays["search_components"])
        stored = mf.arrays.get("search_vectors")
        if stored is not None:
            return space, np.ascontiguousarray(stored, dtype=np.float32)
        log.info("model file of format 1: projecting the catalogue into the search space")
        return space, to_search_space(self.vectors, *space)

    def _check_csv(self, path: Path) -> None:
        matches = csv_matches_model(self.model_file, path)
        if matches:
            return
        ids, labels, kind = read_assignments_kind(path)
        if kind == "vasrch":  # the original package's CSV: its own K-means, ids without extension
            if ids == self.ids:  # the model was trained on the same per-image .npy folder
                if not np.array_equal(labels, self.labels):
                    log.warning(
                        "csv_file %r is the original vasrch package's CSV: its clusters (another "
                        "K-means) are not used; this model's clusters are in the CSV train_clusters wrote",
                        str(path),
                    )
                return
            missing = len(set(self.ids) - set(ids))
            raise IncompatibleModelError(
                f"csv_file {str(path)!r} is a CSV of the original vasrch package (columns Image_File,"
                f"Cluster; ids without extension) and does not list this model's images ({missing} of "
                f"{len(self.ids)} missing); pass the CSV that train_clusters wrote with "
                f"{str(self.model_path)!r}, or no csv_file"
            )
        if matches is False:
            raise IncompatibleModelError(csv_mismatch_message(self.model_path, path))
        if len(ids) != len(self.ids) or ids != self.ids or not np.array_equal(labels, self.labels):
            missing = len(set(self.ids) - set(ids))
            extra = len(set(ids) - set(self.ids))
            raise IncompatibleModelError(
                f"csv_file {str(path)!r} does not match model {str(self.model_path)!r}: "
                f"{len(ids)} rows vs {len(self.ids)} images ({missing} missing, {extra} unknown, "
                "or different clusters); use the CSV written with this model"
            )

    def _store_candidates(self) -> list[Path]:
        feats = self.config.get("features", {})
        rel = feats.get("relative_path")
        home = self.model_path.resolve().parent
        cands = []
        if self._features is not None:
            cands = [self._features]
        elif isinstance(rel, str) and rel and (home / rel).resolve().is_relative_to(home):
            # the recorded store is used only inside the model file's folder (a model file
            # never points the Searcher elsewhere); anywhere else the operator names it
            cands = [(home / rel).resolve()]
        return cands

    def _store_vectors(self) -> np.ndarray:
        cands = self._store_candidates()
        for c in cands:
            if (c / "store.json").exists():
                store = FeatureStore.open(c)
                check_store_for_model(self.model_file, store, self.model_path)
                return np.asarray(store.vectors)
        raise FeatureStoreError(
            f"the model's index lives in its feature store, which was not found at {[str(c) for c in cands]} "
            "(a recorded store outside the model file's folder is not used): pass "
            "features_folder=FOLDER (CLI: --features FOLDER)"
        )


def _items(items: Any, what: str) -> tuple[Any, ...]:
    if isinstance(items, str | bytes):
        raise InvalidArgumentError(
            f"{what} must be a list of ids or images; got a single {type(items).__name__}"
        )
    return tuple(items or ())


def _query_kind(searcher: Searcher, query: Any) -> dict[str, Any]:
    """A feedback call's original query as :class:`Query` fields: a catalogue id, a vector or an image."""
    if query is None:
        return {}
    if isinstance(query, str) and query in searcher._id_index:
        return {"image_id": query}
    if isinstance(query, np.ndarray):
        return {"vector": np.asarray(query, np.float32)}
    if isinstance(query, str | os.PathLike) and not Path(query).exists():
        raise InvalidArgumentError(f"query item {str(query)!r} is neither a catalogue id nor an image file")
    return {"image": query}


@functools.lru_cache(maxsize=4)
def _cached_searcher(model: str, csv: str | None, root: str | None, _stamp: tuple[int, ...]) -> Searcher:
    return Searcher(model, csv, image_root=root)


def search_similar_images(
    image_path: ImageSource,
    model_filename: str | os.PathLike[str],
    csv_file: str | os.PathLike[str] | None = None,
    top_n: int | None = 5,
    *,
    options: SearchOptions | None = None,
    image_root: str | os.PathLike[str] | None = None,
    show_progress: bool = True,
    **settings: Any,
) -> list[Hit]:
    """The ``top_n`` catalogue images most similar to ``image_path``, best first.

    ``options``: a :class:`~varsitysrch.SearchOptions` (views, colour, ``where``, ``collapse``,
    ``nprobe``, ``exact``, ``expansion``, ``min_score``, ``min_confidence``); each setting may
    also be given as a keyword (``nprobe=3``), as earlier versions took them.  ``top_n`` (the
    original package's argument, default 5) sets the options' ``top_n``; ``None`` keeps the
    options' own.  The search is the one every entry point runs
    (:func:`varsitysrch._pipeline.run_search`): the same query and options give the same hits
    as :meth:`Searcher.search`, the CLI and the HTTP service.

    Each result is a :class:`Hit`: the image's id (its path relative to the catalogue folder)
    as a ``str``, so it prints, joins and serialises as that path, with ``rank``, ``score``,
    ``cluster`` and ``path`` attributes.  Prints one line, such as ``Found 5 similar images
    (searched 3 of 20 clusters, 12 of 40 images).`` (``show_progress=False`` silences it; it
    is logged at INFO either way).

    The model (and extractor) are loaded once and cached for later calls with the same
    files (reloaded if the files change).  ``image_path`` may also be bytes or a PIL image.
    ``image_root``: the catalogue's image folder, for each hit's ``path`` (see :class:`Searcher`).
    """
    m = str(Path(model_filename).resolve())
    c = str(Path(csv_file).resolve()) if csv_file is not None else None
    r = str(Path(image_root).resolve()) if image_root is not None else None
    searcher = _cached_searcher(m, c, r, stat_stamp(m, c))
    if top_n is not None:
        settings = {**settings, "top_n": top_n}
    result = run_search(searcher, Query(image=image_path), SearchOptions.merge(options, **settings))
    if result.views > 1:  # the step line keeps its format; the views are logged
        why = " (a shop photo against studio shots)" if result.discount else ""
        log.info("query searched as %d views%s", result.views, why)
    hits = result.hits
    plural = "" if len(hits) == 1 else "s"
    say(log, f"Found {len(hits)} similar image{plural} ({result.scan}).", show_progress)
    return hits


def search_feedback(
    model_filename: str | os.PathLike[str],
    positive: Sequence[Any] = (),
    negative: Sequence[Any] = (),
    *,
    query: Any = None,
    csv_file: str | os.PathLike[str] | None = None,
    options: SearchOptions | None = None,
    image_root: str | os.PathLike[str] | None = None,
    exclude_judged: bool = True,
    **settings: Any,
) -> list[Hit]:
    """Search with relevance feedback (Rocchio): "more like these, less like those".

    ``positive`` / ``negative``: catalogue ids or images (paths, bytes, PIL images) the
    shopper marked relevant / irrelevant, e.g. among the results of a first search;
    ``query``: the original query (an image or id; optional).  The refined query
    ``alpha*q + beta*mean(positive) - gamma*mean(negative)`` is searched once (the one
    pipeline, with ``options`` as any search: ``where``, ``collapse``, ``nprobe``; the
    weights ``alpha``, ``beta``, ``gamma`` may be given as keywords); the judged catalogue
    items (and a catalogue query) are left out of the results (``exclude_judged=False``
    keeps the positives and the query).  Hits are scored against the query and the
    positives.  How much one round of feedback helps is measured in ``docs/shop.md``
    (``benchmarks/bench_feedback.py``).  The model is loaded once and cached, as in
    :func:`~varsitysrch.search_similar_images`.
    """
    m = str(Path(model_filename).resolve())
    c = str(Path(csv_file).resolve()) if csv_file is not None else None
    r = str(Path(image_root).resolve()) if image_root is not None else None
    searcher = _cached_searcher(m, c, r, stat_stamp(m, c))
    weights = {k: settings.pop(k) for k in ("alpha", "beta", "gamma") if k in settings}
    settings.setdefault("top_n", 5)
    return searcher.search_feedback(
        query, positive, negative, options=options, exclude_judged=exclude_judged, **weights, **settings
    )
