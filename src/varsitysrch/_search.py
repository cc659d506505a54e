"""Step 4: ranked search through the query's nearest clusters.

A :class:`Searcher` loads a model file once (and the extractor the catalogue was
embedded with) and answers many queries.  A query is embedded, its ``nprobe`` nearest
clusters are scanned, and the members are ranked by cosine similarity; if those
clusters hold fewer than ``top_n`` images, more clusters are probed, so ``top_n``
results come back whenever the catalogue has that many.  ``nprobe=None`` uses the
value calibrated at training time (recall@10 >= 0.95 against exact search on
held-out catalogue queries); ``exact=True`` scans everything.

Ranking space: the one stored in the model by
:func:`~varsitysrch._searchindex.build_search_index` (by default a catalogue-centred PCA
for catalogues of 1,000 images and more; the catalogue is stored already projected, so
loading projects nothing), else plain cosine on the raw vectors.  Query expansion (on by
default for models :func:`train_clusters` writes: ``query_expansion=2``; ``0`` turns it off)
searches twice: the query is expanded once with its top ``n`` results (alpha-QE, results at
least :data:`~varsitysrch._postprocess.QE_SELF_COSINE` similar to the query -- the query
image itself -- skipped), and the catalogue is ranked by cosine to the expanded query, so a
catalogue image scores a little under 1.0 against itself; each hit's ``confidence`` is still
measured on its plain cosine to the query.  The measurements behind these defaults are in
``docs/quality.md``.

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

from ._attributes import (
    Attributes,
    CompiledFilter,
    FilterCache,
    ivf_masked_search,
    masked_candidates,
    model_attributes,
)
from ._collapse import check_collapse, collapse_rows
from ._colour import (
    COLOUR_DECODE_SIZE,
    PLAIN_DECODE_SIZE,
    border_share,
    check_colour_weight,
    colour_signature,
    combine_scores,
    load_colour_signatures,
    load_plain_flags,
)
from ._confidence import ScoreCalibrator
from ._errors import FeatureStoreError, IncompatibleModelError, InvalidArgumentError
from ._extractors import Embedder, Extractor, query_extractor
from ._feedback import ALPHA as FEEDBACK_ALPHA
from ._feedback import BETA as FEEDBACK_BETA
from ._feedback import GAMMA as FEEDBACK_GAMMA
from ._feedback import feedback_search
from ._images import ImageSource, load_image
from ._index import IVFSearch
from ._io import stat_stamp
from ._kmeans import KMeansModel
from ._modelfile import ModelFile, load_model, read_assignments_kind
from ._paths import resolve_image
from ._postprocess import QE_SELF_COSINE, QE_SELF_MARGIN, expand_query, to_search_space
from ._progress import say
from ._query import (
    AUTO_CROP_DISCOUNT,
    CLUTTERED_BORDER_SHARE,
    STUDIO_CATALOGUE_SHARE,
    check_views,
    decode_rgb,
    merge_view_hits,
    parse_views,
    query_views,
)
from ._store import FeatureStore

log = logging.getLogger(__name__)

#: with a colour weight, the colour signature re-scores the top ``COLOUR_POOL * top_n`` by cosine
COLOUR_POOL = 5


class Hit(str):
    """One search result: the image's catalogue id, as a ``str``, carrying its rank, score and cluster.

    A hit *is* its id (the image's path relative to the catalogue folder, extension kept), so
    code written for the original package, whose results were plain path strings, keeps
    working: ``print(hit)``, ``hit.endswith(".jpg")``, ``os.path.join(folder, hit)``,
    ``json.dumps(hits)``, ``hit in ids``, sorting and hashing all see the id.  Equality and
    hash are those of the id (two hits of the same image are equal whatever their scores).
    Hits are immutable, and pickle and copy as hits.

    Attributes:
        image: the catalogue id as a plain ``str`` (``str(hit)`` gives the same).
        score: cosine similarity to the query (1.0 = identical features).
        cluster: the image's cluster.
        rank: 1-based rank.
        path: the file, when the search was given the catalogue's ``image_root`` (and the file
            stays inside it); otherwise ``None``.
        confidence: 0-1, the percentile of the hit's plain cosine to the query among the
            catalogue's own nearest-neighbour scores (:mod:`varsitysrch._confidence`); ``None``
            with a model trained before confidence existed.
        match: ``"very similar"``, ``"similar"`` or ``"loosely related"`` (``None`` likewise).
        close: whether ``confidence`` reaches the model's cut-off (``None`` likewise).
        duplicates: ids of the near-duplicates folded into this hit (``collapse=True``), best
            first; ``()`` otherwise.
    """

    score: float
    cluster: int
    rank: int
    path: str | None
    confidence: float | None
    match: str | None
    close: bool | None
    duplicates: tuple[str, ...]

    def __new__(
        cls,
        image: str,
        score: float,
        cluster: int,
        rank: int,
        path: str | None = None,
        confidence: float | None = None,
        match: str | None = None,
        close: bool | None = None,
        duplicates: tuple[str, ...] = (),
    ) -> Hit:
        self = super().__new__(cls, image)
        for name, value in (
            ("score", float(score)),
            ("cluster", int(cluster)),
            ("rank", int(rank)),
            ("path", None if path is None else str(path)),
            ("confidence", None if confidence is None else float(confidence)),
            ("match", None if match is None else str(match)),
            ("close", None if close is None else bool(close)),
            ("duplicates", tuple(str(d) for d in duplicates)),
        ):
            object.__setattr__(self, name, value)
        return self

    @property
    def image(self) -> str:
        """The catalogue id as a plain ``str``."""
        return str.__str__(self)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"Hit is immutable: cannot set {name!r}")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"Hit is immutable: cannot delete {name!r}")

    def __repr__(self) -> str:
        where = "" if self.path is None else f", path={self.path!r}"
        return f"Hit({self.image!r}, score={self.score:.3f}, rank={self.rank}, cluster={self.cluster}{where})"

    def __reduce__(self) -> tuple[Any, ...]:
        return (
            Hit,
            (
                self.image,
                self.score,
                self.cluster,
                self.rank,
                self.path,
                *self._confidence(),
                self.duplicates,
            ),
        )

    def _confidence(self) -> tuple[float | None, str | None, bool | None]:
        return self.confidence, self.match, self.close

    def __copy__(self) -> Hit:
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> Hit:
        return self

    def with_score(self, score: float) -> Hit:
        """The same hit with another score (a discounted crop view, a colour-mixed score)."""
        return Hit(
            self.image, score, self.cluster, self.rank, self.path, *self._confidence(), self.duplicates
        )

    def with_rank(self, rank: int) -> Hit:
        """The same hit at another rank (results re-ranked after filtering or merging)."""
        return Hit(
            self.image, self.score, self.cluster, rank, self.path, *self._confidence(), self.duplicates
        )

    def to_dict(self) -> dict[str, Any]:
        """``{"image", "score", "cluster", "rank", "path", "confidence", "match", "close"}`` with plain
        values (for JSON records)."""
        return {
            "image": self.image,
            "score": self.score,
            "cluster": self.cluster,
            "rank": self.rank,
            "path": self.path,
            "confidence": self.confidence,
            "match": self.match,
            "close": self.close,
            **({"duplicates": list(self.duplicates)} if self.duplicates else {}),  # collapsed results
        }


class Searcher:
    """Loads a model once; answers queries by image (path, bytes, PIL) or by vector.

    Args:
        model_filename: a model file written by :func:`train_clusters`.
        csv_file: its assignments CSV (optional; checked against the model when given).
        nprobe: default clusters to scan (``None``: the calibrated value).
        threads: ONNX Runtime threads for embedding queries.
        image_root: folder of the catalogue images, named by the operator; hits then carry
            their file's ``path`` (resolved inside it, see :func:`varsitysrch._paths.resolve_image`).
            ``None``: no paths.  A folder recorded in the model or store is never used.
        query_expansion: alpha-QE neighbours (``None``: the model's value; 0: off).
        colour_weight: default weight of the product's colour in the score, in ``[0, 1]``
            (needs the colour signatures ``extract_features`` stores in ``<features>/colour``).
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
        #: weight of the product's colour in the score, ``(1 - w) cosine + w colour similarity``
        #: (0: the CNN cosine only; "match colour" = 0.15, measured in docs/quality.md)
        self.colour_weight = check_colour_weight(colour_weight)
        self._colours: np.ndarray | None = None
        self._studio: bool | None = None  # studio_catalogue, read once
        if query_expansion is not None and (
            isinstance(query_expansion, bool) or not isinstance(query_expansion, int) or query_expansion < 0
        ):
            raise InvalidArgumentError(f"query_expansion must be an integer >= 0; got {query_expansion!r}")
        self.model_path = Path(model_filename)
        mf = load_model(self.model_path)
        #: alpha-QE: re-search with the query plus its top results (0 = off; None = the model's
        #: value, set by train_clusters); scores are then cosines to the expanded query. docs/quality.md
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
        self._ivf = IVFSearch.from_model(mf, vectors)
        self.vectors = vectors if self._ivf is not None else np.ascontiguousarray(vectors, dtype=np.float32)
        #: hits' confidence: the calibration stored by train_clusters (None: a model from before it)
        cal = self.config.get("confidence")
        self.calibration: ScoreCalibrator | None = ScoreCalibrator.from_dict(cal) if cal is not None else None
        if self.vectors.shape != (len(self.ids), int(self.config["dim"])):
            raise IncompatibleModelError(
                f"index has shape {self.vectors.shape}, model expects ({len(self.ids)}, {self.config['dim']})"
            )
        self._space, self._scoring = self._ranking_space(mf)
        # inverted lists: member rows of each cluster
        order = np.argsort(self.labels, kind="stable")
        counts = np.bincount(self.labels, minlength=self.k)
        self._offsets = np.concatenate([[0], np.cumsum(counts)])
        self._order = order.astype(np.int64)
        self._id_index = {i: j for j, i in enumerate(self.ids)}
        #: the catalogue's attributes (``None``: the model has none), filtered by ``where=``
        self.attributes: Attributes | None = model_attributes(mf.config, mf.arrays, self.ids)
        self._filters = FilterCache(self.attributes, self.labels, self.k) if self.attributes else None
        self.default_nprobe = int(self.config.get("nprobe", 1))
        if nprobe is not None:
            self._check_nprobe(nprobe)
            self.default_nprobe = nprobe
        self.image_root = Path(image_root).resolve() if image_root is not None else None
        self.extractor = query_extractor(self.config.get("extractor", {}), extractor, self.model_path)
        self._threads = threads
        self._embedder: Embedder | None = None

    # ------------------------------------------------------------------ loading
    def _ranking_space(self, mf: ModelFile) -> tuple[tuple[np.ndarray, np.ndarray] | None, np.ndarray]:
        """``(search PCA, catalogue in the ranking space)``: as stored, or the raw vectors."""
        if self._ivf is not None or "search_components" not in mf.arrays or "search_mean" not in mf.arrays:
            return None, self.vectors  # the IVF ranks in the raw space
        space = (mf.arrays["search_mean"], mf.arrays["search_components"])
        stored = mf.arrays.get("search_vectors")
        if stored is not None:
            return space, np.ascontiguousarray(stored, dtype=np.float32)
        log.info("model file of format 1: projecting the catalogue into the search space")
        return space, to_search_space(self.vectors, *space)

    def _check_csv(self, path: Path) -> None:
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
                if store.ids != self.ids:
                    raise IncompatibleModelError(
                        f"feature store {str(c)!r} changed since the model was trained; retrain or update"
                    )
                return np.asarray(store.vectors)
        raise FeatureStoreError(
            f"the model's index lives in its feature store, which was not found at {[str(c) for c in cands]} "
            "(a recorded store outside the model file's folder is not used): pass "
            "features_folder=FOLDER (CLI: --features FOLDER)"
        )

    def _check_nprobe(self, nprobe: int) -> None:
        if isinstance(nprobe, bool) or not isinstance(nprobe, int | np.integer) or not 1 <= nprobe <= self.k:
            raise InvalidArgumentError(f"nprobe must be in [1, k] = [1, {self.k}]; got {nprobe!r}")

    @property
    def embedder(self) -> Embedder:
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

    def __len__(self) -> int:
        return len(self.ids)

    # ------------------------------------------------------------------ queries
    def embed(self, query: ImageSource) -> np.ndarray:
        ex = self.embedder.extractor
        arr = load_image(query, ex.input_size, ex.resize)
        return self.embedder.embed(arr[None])[0]

    @property
    def studio_catalogue(self) -> bool:
        """Whether most catalogue images are product shots on a plain backdrop (the per-image flags
        ``extract_features`` stores with the colour signatures; ``False`` without them)."""
        if self._studio is None:
            share = None
            for c in self._store_candidates():
                flags = load_plain_flags(c, self.ids)
                if flags is not None:
                    share = float(flags.mean()) if len(flags) else 0.0
                    break
            self._studio = share is not None and share >= STUDIO_CATALOGUE_SHARE
            log.info("catalogue: %s plain-background share %s", self.model_path, share)
        return self._studio

    def auto_crops(self, query: ImageSource) -> bool:
        """``views="auto"``: search with crops -- a cluttered photo against a studio catalogue
        (:mod:`varsitysrch._query`)."""
        if not self.studio_catalogue:
            return False
        return border_share(load_image(query, PLAIN_DECODE_SIZE, "squash")) < CLUTTERED_BORDER_SHARE

    def resolve_views(self, query: ImageSource, views: str | None = "auto") -> tuple[str | None, float]:
        """``views`` with ``"auto"`` decided (:meth:`auto_crops`): ``("crops",``
        :data:`~varsitysrch._query.AUTO_CROP_DISCOUNT` ``)`` or ``(None, 0.0)``; any other value
        as given (``"none"`` -> ``None``), with no discount."""
        v = check_views(views)
        if v != "auto":
            return v, 0.0
        return ("crops", AUTO_CROP_DISCOUNT) if self.auto_crops(query) else (None, 0.0)

    def query_vectors(self, query: ImageSource, views: str | None = "auto") -> tuple[np.ndarray, float]:
        """The query's view vectors (:meth:`embed_views`) and the discount of its crop views
        (:meth:`resolve_views`)."""
        resolved, discount = self.resolve_views(query, views)
        return self.embed_views(query, resolved), discount

    def embed_views(self, query: ImageSource, views: str | None = None) -> np.ndarray:
        """Unit vectors ``[V, dim]`` of the query's views: ``None`` the image itself, ``"crops"`` it
        and five 70 % crops, ``"flip"`` / ``"crops+flip"`` with mirrors (:mod:`varsitysrch._query`);
        ``"auto"``: see :meth:`query_vectors`."""
        if check_views(views) == "auto":
            return self.query_vectors(query, views)[0]
        crops, flip = parse_views(views)
        if not (crops or flip):
            return self.embed(query)[None]
        ex = self.embedder.extractor
        batch = query_views(decode_rgb(query), ex.input_size, ex.resize, crops=crops, flip=flip)
        return self.embedder.embed(batch)

    def query_colour(self, query: ImageSource) -> np.ndarray:
        """The colour signature of a query image (decoded as the catalogue's were)."""
        return colour_signature(load_image(query, COLOUR_DECODE_SIZE, "letterbox"))

    def colour_signatures(self) -> np.ndarray:
        """The catalogue's colour signatures, rows in ``ids`` order (read once from ``<features>/colour``)."""
        if self._colours is None:
            for c in self._store_candidates():
                sig = load_colour_signatures(c, self.ids)
                if sig is not None:
                    self._colours = sig
                    break
            else:
                raise FeatureStoreError(
                    "colour_weight > 0 needs the catalogue's colour signatures, which extract_features "
                    "writes to <features>/colour; none were found for this model's images (re-run "
                    "extract_features on the catalogue, and pass features_folder= / --features if the "
                    "store is not beside the model)"
                )
        return self._colours

    def search_views(
        self,
        vectors: np.ndarray,
        top_n: int = 10,
        *,
        nprobe: int | None = None,
        exact: bool = False,
        colour: np.ndarray | None = None,
        colour_weight: float | None = None,
        min_confidence: float | None = None,
        min_score: float | None = None,
        where: Any = None,
        collapse: bool | float | None = None,
        view_discount: float = 0.0,
    ) -> list[Hit]:
        """Search with one or more vectors of a query (``[V, dim]``), optionally matching colour.

        Each catalogue image keeps its best view (:func:`varsitysrch._query.merge_view_hits`;
        ``view_discount`` is taken off the scores of every view but the first);
        with a colour weight ``w`` the top ``COLOUR_POOL * top_n`` are re-scored by
        ``(1 - w) cosine + w colour similarity`` (``colour``: the query's signature,
        :meth:`query_colour`), which becomes the hits' ``score``.
        """
        w = self.colour_weight if colour_weight is None else check_colour_weight(colour_weight)
        V = np.asarray(vectors, np.float32).reshape(-1, self.vectors.shape[1])
        if w == 0 and len(V) == 1:
            return self.search_vector(
                V[0], top_n, nprobe=nprobe, exact=exact, min_confidence=min_confidence, min_score=min_score,
                where=where, collapse=collapse,
            )  # fmt: skip
        if w > 0 and colour is None:
            raise InvalidArgumentError(
                "colour_weight > 0 needs the query's colour signature: search by image, or pass "
                "colour=Searcher.query_colour(image)"
            )
        pool = top_n * COLOUR_POOL if w > 0 else top_n
        hits = merge_view_hits(
            [
                self.search_vector(v, pool, nprobe=nprobe, exact=exact, where=where, collapse=collapse)
                for v in V
            ],
            pool,
            view_discount,
        )
        if w > 0 and hits:
            rows = np.array([self._id_index[h.image] for h in hits])
            mixed = combine_scores(
                np.array([h.score for h in hits], np.float32), self.colour_signatures()[rows] @ colour, w
            )
            order = np.argsort(-mixed, kind="stable")
            hits = [hits[j].with_score(float(mixed[j])).with_rank(r) for r, j in enumerate(order, 1)]
        return self._keep(hits[:top_n], min_confidence, min_score)

    def search_feedback(
        self,
        query: Any = None,
        positive: Any = (),
        negative: Any = (),
        top_n: int = 10,
        **options: Any,
    ) -> list[Hit]:
        """One search with the Rocchio-refined query: "more like these, less like those".

        ``positive`` / ``negative``: catalogue ids, images or vectors the shopper marked
        relevant / irrelevant; ``query``: the original query (optional).  Options: ``where``,
        ``collapse``, ``nprobe``, ``exact``, ``alpha``, ``beta``, ``gamma``,
        ``exclude_judged`` (default ``True``: judged catalogue items are not shown again).
        See :func:`varsitysrch.search_feedback` and ``docs/shop.md``.
        """
        return feedback_search(self, query, positive, negative, top_n, **options)

    def ranking_vector(self, v: np.ndarray) -> np.ndarray:
        """A raw query vector in the ranking space (the search PCA, if the model has one)."""
        v = np.asarray(v, np.float32).reshape(-1)
        return v if self._space is None else to_search_space(v, *self._space)

    def members(self, cluster: int) -> np.ndarray:
        return self._order[self._offsets[cluster] : self._offsets[cluster + 1]]

    def search(
        self,
        query: ImageSource,
        top_n: int = 10,
        *,
        nprobe: int | None = None,
        exact: bool = False,
        min_confidence: float | None = None,
        min_score: float | None = None,
        colour_weight: float | None = None,
        views: str | None = "auto",
        where: Any = None,
        collapse: bool | float | None = None,
    ) -> list[Hit]:
        """The ``top_n`` catalogue images most similar to ``query``, best first.

        ``where``: only images whose attributes match; ``collapse``: near-duplicates shown
        once (see :meth:`search_vector`).

        ``colour_weight``: weight of the product's colour (``None``: the Searcher's); ``views``:
        ``"crops"`` / ``"flip"`` / ``"crops+flip"`` also searches with crops / mirrors of the query,
        each catalogue image keeping its best view (cluttered shoppers' photos; docs/quality.md);
        ``"auto"`` (default) uses the crops only for a photo that is not a studio shot against a
        studio catalogue (:meth:`query_vectors`); ``None``: the whole image only.

        ``min_confidence`` / ``min_score``: only hits at or above them come back (fewer than
        ``top_n``, possibly none: "no close match"); ``min_confidence=searcher.calibration.cutoff``
        keeps the ``close`` hits.
        """
        w = self.colour_weight if colour_weight is None else check_colour_weight(colour_weight)
        vecs, discount = self.query_vectors(query, views)
        return self.search_views(
            vecs, top_n, nprobe=nprobe, exact=exact,
            colour=self.query_colour(query) if w > 0 else None, colour_weight=w,
            min_confidence=min_confidence, min_score=min_score, where=where, collapse=collapse,
            view_discount=discount,
        )  # fmt: skip

    def search_id(
        self,
        image_id: str,
        top_n: int = 10,
        *,
        nprobe: int | None = None,
        exact: bool = False,
        include_self: bool = True,
        min_confidence: float | None = None,
        min_score: float | None = None,
        colour_weight: float | None = None,
        where: Any = None,
        collapse: bool | float | None = None,
    ) -> list[Hit]:
        """Search with a catalogue image (by id) as the query (its stored colour signature, if weighted)."""
        j = self._id_index.get(image_id)
        if j is None:
            raise InvalidArgumentError(f"image_id {image_id!r} is not in the catalogue")
        w = self.colour_weight if colour_weight is None else check_colour_weight(colour_weight)
        hits = self.search_views(
            np.asarray(self.vectors[j], np.float32)[None], top_n + (0 if include_self else 1),
            nprobe=nprobe, exact=exact, colour=self.colour_signatures()[j] if w > 0 else None,
            colour_weight=w, min_confidence=min_confidence, min_score=min_score,
            where=where, collapse=collapse,
        )  # fmt: skip
        if not include_self:
            hits = [h for h in hits if h.image != image_id][:top_n]
            hits = [h.with_rank(r) for r, h in enumerate(hits, 1)]
        return hits

    def search_vector(
        self,
        vector: np.ndarray,
        top_n: int = 10,
        *,
        nprobe: int | None = None,
        exact: bool = False,
        expand: int | None = None,
        exclude: Collection[int] = (),
        min_confidence: float | None = None,
        min_score: float | None = None,
        where: Any = None,
        collapse: bool | float | None = None,
        ranked: np.ndarray | None = None,
    ) -> list[Hit]:
        """Search by vector. ``expand``: alpha-QE neighbours (``None``: the Searcher's
        ``query_expansion``); ``exclude``: catalogue rows never returned nor used to expand;
        ``min_confidence`` / ``min_score``: see :meth:`search`.

        ``where``: attribute filter, a dict (``{"category": "shoes", "brand": ["a", "b"],
        "price": {"lt": 50}}``) or strings (``["category=shoes", "price<50"]``), see
        :mod:`varsitysrch._attributes`.  It is applied while the candidates are gathered:
        the query's nearest clusters are probed, skipping rows that do not match, until
        twice as many matching rows are scored as the unfiltered search scores rows (and at
        least ``top_n``); a filter matching fewer rows than that is searched exactly.  So
        ``top_n`` hits come back whenever ``top_n`` images match, and ``exact=True`` (or
        ``nprobe=k``) is exact filtered search.  ``collapse``: ``True`` (threshold
        :data:`varsitysrch._collapse.COLLAPSE_THRESHOLD`) or a cosine threshold: a hit
        that near-duplicates a better-ranked one is folded into its ``duplicates``, and
        more results are fetched so that ``top_n`` distinct hits come back when they exist.
        ``ranked``: the query already in the ranking space (relevance feedback).
        """
        if isinstance(top_n, bool) or not isinstance(top_n, int | np.integer) or top_n < 1:
            raise InvalidArgumentError(f"top_n must be a positive integer; got {top_n!r}")
        self._check_minimums(min_confidence, min_score)
        v = np.asarray(vector, np.float32).reshape(-1)
        if v.shape[0] != self.vectors.shape[1]:
            raise IncompatibleModelError(f"query has dim {v.shape[0]}, the index has {self.vectors.shape[1]}")
        threshold = check_collapse(collapse)
        if threshold is not None:
            return self._collapsed(
                v, int(top_n), threshold, nprobe=nprobe, exact=exact, expand=expand, exclude=exclude,
                min_confidence=min_confidence, min_score=min_score, where=where, ranked=ranked,
            )  # fmt: skip
        flt = self._filter(where, exclude)
        if flt is not None and flt.count == 0:
            return []
        q0 = v  # the query as given: each hit's confidence is measured on its plain cosine to it
        vs = self.ranking_vector(v) if ranked is None else np.asarray(ranked, np.float32).reshape(-1)
        qe = self.query_expansion if expand is None else expand
        copies: list[Hit] = []
        if qe:  # alpha-QE: scores are then cosines to the expanded query
            first = self.search_vector(
                v, qe + QE_SELF_MARGIN, nprobe=nprobe, exact=exact, expand=0, exclude=exclude, where=where,
                ranked=vs,
            )  # fmt: skip
            # the query's own image (or an identical copy) adds nothing to the expansion; it still
            # ranks first, at its plain cosine
            copies = [h for h in first if h.score >= QE_SELF_COSINE]
            first = [h for h in first if h.score < QE_SELF_COSINE][:qe]
            rows_ = [self._id_index[h.image] for h in first]
            sims_ = np.array([h.score for h in first], np.float32)
            v_raw = expand_query(v, np.asarray(self.vectors[rows_], np.float32), sims_)
            vs = v_raw if self._space is None else expand_query(vs, self._scoring[rows_], sims_)
            v = v_raw
        hits = self._ranked(v, vs, q0, int(top_n) + len(copies), nprobe, exact, exclude, flt)
        if copies:
            seen = {h.image for h in copies}
            hits = copies + [h for h in hits if h.image not in seen]
            hits = [h.with_rank(r) for r, h in enumerate(hits[: int(top_n)], 1)]
        return self._keep(hits, min_confidence, min_score)

    def _ranked(
        self,
        v: np.ndarray,
        vs: np.ndarray,
        q0: np.ndarray,
        top_n: int,
        nprobe: int | None,
        exact: bool,
        exclude: Collection[int],
        flt: Any,
    ) -> list[Hit]:
        """The ``top_n`` rows by cosine to ``vs`` (ranking space; ``v``: the raw query for the
        probe), after ``exclude`` and the filter ``flt``; confidences on the plain query ``q0``."""
        if self._ivf is not None and flt is not None:
            p = self._ivf.nlist if exact else self._ivf.nprobe if nprobe is None else nprobe
            found, sims = ivf_masked_search(
                self._ivf.index, self._ivf.vectors, v, int(top_n), max(1, min(int(p), self._ivf.nlist)), flt
            )
            pairs = enumerate(zip(found, sims, strict=True), 1)
            return [self._hit(int(r), float(s), i, q0) for i, (r, s) in pairs]
        if self._ivf is not None:  # IVF mode: nprobe counts IVF lists; hits report their K-means cluster
            found, sims = self._ivf.search(v, top_n + len(exclude), nprobe=nprobe, exact=exact)
            kept = [(r, s) for r, s in zip(found, sims, strict=True) if int(r) not in exclude][:top_n]
            return [self._hit(int(r), float(s), i, q0) for i, (r, s) in enumerate(kept, 1)]
        if flt is not None:  # exclusions are in the filter's mask
            rows = flt.rows if exact else self._masked_candidates(v, int(top_n), nprobe, flt)
            exact, exclude = False, ()
        else:
            rows = self.candidates(v, top_n + len(exclude), nprobe=nprobe, exact=exact)
        if len(exclude):
            rows = rows[~np.isin(rows, np.fromiter(exclude, np.int64))]
            exact = False
        scores = (self._scoring if exact else self._scoring[rows]) @ vs
        n = min(top_n, len(rows))
        top = np.argpartition(-scores, n - 1)[:n] if n < len(rows) else np.arange(len(rows))
        top = top[np.lexsort((rows[top], -scores[top]))]  # by score, ties by catalogue order
        return [self._hit(int(rows[t]), float(scores[t]), r, q0) for r, t in enumerate(top, 1)]

    def _check_minimums(self, min_confidence: float | None, min_score: float | None) -> None:
        for name, v, lo in (("min_confidence", min_confidence, 0.0), ("min_score", min_score, -1.0)):
            if v is None:
                continue
            number = isinstance(v, int | float | np.floating) and not isinstance(v, bool)
            if not number or not lo <= float(v) <= 1.0:  # NaN fails too
                raise InvalidArgumentError(f"{name} must be a number in [{lo:g}, 1]; got {v!r}")
        if min_confidence is not None and self.calibration is None:
            raise InvalidArgumentError(
                "min_confidence needs a model with a confidence calibration (trained by this version); "
                "retrain with train_clusters, or use min_score"
            )

    @staticmethod
    def _keep(hits: list[Hit], min_confidence: float | None, min_score: float | None) -> list[Hit]:
        """The hits at or above ``min_confidence`` / ``min_score``, ranks renumbered."""
        if min_confidence is None and min_score is None:
            return hits
        kept = [
            h
            for h in hits
            if (min_score is None or h.score >= min_score)
            and (min_confidence is None or (h.confidence is not None and h.confidence >= min_confidence))
        ]
        return [h.with_rank(r) for r, h in enumerate(kept, 1)]

    def candidates(
        self, v: np.ndarray, top_n: int, *, nprobe: int | None = None, exact: bool = False
    ) -> np.ndarray:
        """Rows scanned for a query: its ``nprobe`` nearest clusters, more until ``top_n``."""
        if exact:
            return np.arange(len(self.ids))
        return np.concatenate([self.members(int(c)) for c in self.scanned_clusters(v, top_n, nprobe=nprobe)])

    def scanned_clusters(
        self, v: np.ndarray, top_n: int = 10, *, nprobe: int | None = None, exact: bool = False
    ) -> np.ndarray:
        """The K-means clusters a search for vector ``v`` scans, nearest first: its ``nprobe``
        nearest, more until they hold ``top_n`` images (every cluster with ``exact``).  In IVF
        mode a search scans IVF lists instead (see :mod:`varsitysrch._index`)."""
        if exact:
            return np.arange(self.k)
        p = self.default_nprobe if nprobe is None else nprobe
        self._check_nprobe(p)
        order = self.model.cluster_order(np.asarray(v, np.float32).reshape(1, -1))[0]
        need = min(top_n, len(self.ids))
        total = 0
        used = 0
        for c in order:
            total += int(self._offsets[c + 1] - self._offsets[c])
            used += 1
            if used >= p and total >= need:
                break
        return np.asarray(order[:used])

    def scan_note(
        self, v: np.ndarray, top_n: int = 10, *, nprobe: int | None = None, exact: bool = False
    ) -> str:
        """What a search for ``v`` scans, in words: ``"searched 3 of 20 clusters, 412 of 3,781 images"``."""
        n = len(self.ids)
        if exact:
            return f"exact: scanned all {n:,} images"
        if self._ivf is not None:
            p = self._ivf.nprobe if nprobe is None else max(1, min(int(nprobe), self._ivf.nlist))
            return f"IVF index: probed {p} of {self._ivf.nlist} lists over {n:,} images"
        used = self.scanned_clusters(v, top_n, nprobe=nprobe)
        rows = int(sum(self._offsets[c + 1] - self._offsets[c] for c in used))
        return f"searched {len(used)} of {self.k} clusters, {rows:,} of {n:,} images"

    def _filter(self, where: Any, exclude: Collection[int]) -> CompiledFilter | None:
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

    def _masked_candidates(
        self, v: np.ndarray, top_n: int, nprobe: int | None, flt: CompiledFilter
    ) -> np.ndarray:
        p = self.default_nprobe if nprobe is None else nprobe
        self._check_nprobe(p)
        order = self.model.cluster_order(v[None])[0]
        return masked_candidates(order, self._offsets, self._order, flt, p, top_n)

    def _collapsed(self, v: np.ndarray, top_n: int, threshold: float, **search: Any) -> list[Hit]:
        """``top_n`` hits with near-duplicates folded into the best-ranked copy (see search_vector)."""
        want = min(len(self.ids), max(2 * top_n, top_n + 10))
        while True:
            hits = self.search_vector(v, want, **search)
            rows = np.array([self._id_index[h.image] for h in hits], np.int64)
            kept, parent = collapse_rows(np.asarray(self.vectors[rows], np.float32), threshold)
            if len(kept) >= top_n or len(hits) < want or want >= len(self.ids):
                break
            want = min(len(self.ids), want * 2)
        out = []
        for rank, k in enumerate(kept[:top_n], 1):
            h = hits[int(k)]
            dups = tuple(hits[int(i)].image for i in np.flatnonzero(parent == k) if i != k)
            out.append(Hit(h.image, h.score, h.cluster, rank, h.path, *h._confidence(), dups))
        return out

    def _hit(self, row: int, score: float, rank: int, query: np.ndarray | None = None) -> Hit:
        rel = self.ids[row]
        file = resolve_image(self.image_root, rel)
        path = str(file) if file is not None else None
        conf: float | None = None
        match: str | None = None
        close: bool | None = None
        if self.calibration is not None and query is not None:
            # the plain cosine: the ranking space (this catalogue's PCA) makes photos from elsewhere
            # look close (docs/insight.md)
            c = float(self.calibration.confidence(float(np.asarray(self.vectors[row], np.float32) @ query)))
            conf, match, close = round(c, 4), self.calibration.words(c)[0], c >= self.calibration.cutoff
        return Hit(
            rel,
            min(score, 1.0) if score > 1.0 and score < 1.0 + 1e-3 else score,
            int(self.labels[row]),
            rank,
            path,
            conf,
            match,
            close,
        )


@functools.lru_cache(maxsize=4)
def _cached_searcher(model: str, csv: str | None, root: str | None, _stamp: tuple[int, ...]) -> Searcher:
    return Searcher(model, csv, image_root=root)


_stamp = stat_stamp  # the cache key of _cached_searcher


def search_similar_images(
    image_path: ImageSource,
    model_filename: str | os.PathLike[str],
    csv_file: str | os.PathLike[str] | None = None,
    top_n: int = 5,
    *,
    nprobe: int | None = None,
    exact: bool = False,
    image_root: str | os.PathLike[str] | None = None,
    show_progress: bool = True,
    min_confidence: float | None = None,
    min_score: float | None = None,
    colour_weight: float = 0.0,
    views: str | None = "auto",
    where: Any = None,
    collapse: bool | float | None = None,
) -> list[Hit]:
    """The ``top_n`` catalogue images most similar to ``image_path``, best first.

    Ranked by cosine similarity to the query expanded with its two best matches (the model's
    ``query_expansion``; the query image itself, if it is in the catalogue, comes first).

    ``where`` (attribute filter) and ``collapse`` (near-duplicates once): see
    :meth:`Searcher.search_vector` and ``docs/shop.md``.

    ``colour_weight``: how much the product's colour counts, ``(1 - w) cosine + w colour
    similarity`` (0: not at all; 0.15 = "match colour"); ``views="crops"``: the query is also
    searched as five 70 % crops, each catalogue image keeping its best view (shoppers' photos);
    ``"auto"`` (default): crops only for a photo that is not a studio shot searched against a
    studio catalogue (see :meth:`Searcher.query_vectors`); ``None``: the whole image.

    ``min_confidence`` / ``min_score`` drop hits below them (see :meth:`Searcher.search`).

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
    w = check_colour_weight(colour_weight)
    vecs, discount = searcher.query_vectors(image_path, views)
    hits = searcher.search_views(
        vecs, top_n, nprobe=nprobe, exact=exact, colour=searcher.query_colour(image_path) if w > 0 else None,
        colour_weight=w, min_confidence=min_confidence, min_score=min_score, where=where, collapse=collapse,
        view_discount=discount,
    )  # fmt: skip
    note = searcher.scan_note(vecs[0], top_n, nprobe=nprobe, exact=exact)
    if len(vecs) > 1:  # the step line keeps its format; the views are logged
        log.info(
            "query searched as %d views%s", len(vecs), " (a shop photo against studio shots)" * bool(discount)
        )
    plural = "" if len(hits) == 1 else "s"
    say(log, f"Found {len(hits)} similar image{plural} ({note}).", show_progress)
    return hits


def search_feedback(
    model_filename: str | os.PathLike[str],
    positive: Sequence[Any] = (),
    negative: Sequence[Any] = (),
    *,
    query: Any = None,
    csv_file: str | os.PathLike[str] | None = None,
    top_n: int = 5,
    where: Any = None,
    collapse: bool | float | None = None,
    nprobe: int | None = None,
    exact: bool = False,
    image_root: str | os.PathLike[str] | None = None,
    alpha: float = FEEDBACK_ALPHA,
    beta: float = FEEDBACK_BETA,
    gamma: float = FEEDBACK_GAMMA,
    exclude_judged: bool = True,
) -> list[Any]:
    """Search with relevance feedback (Rocchio): "more like these, less like those".

    ``positive`` / ``negative``: catalogue ids or images (paths, bytes, PIL images) the
    shopper marked relevant / irrelevant, e.g. among the results of a first search;
    ``query``: the original query (an image or id; optional).  The refined query
    ``alpha*q + beta*mean(positive) - gamma*mean(negative)`` is searched once, with the
    same ``where`` filter, ``collapse`` and ``nprobe`` as any search; the judged catalogue
    items (and a catalogue query) are left out of the results (``exclude_judged=False``
    keeps the positives and the query).
    How much one round of feedback helps is measured in ``docs/shop.md``
    (``benchmarks/bench_feedback.py``).  The model is loaded once and cached, as in
    :func:`~varsitysrch.search_similar_images`.
    """
    m = str(Path(model_filename).resolve())
    c = str(Path(csv_file).resolve()) if csv_file is not None else None
    r = str(Path(image_root).resolve()) if image_root is not None else None
    searcher = _cached_searcher(m, c, r, _stamp(m, c))
    return feedback_search(
        searcher,
        query,
        positive,
        negative,
        top_n,
        where=where,
        collapse=collapse,
        nprobe=nprobe,
        exact=exact,
        alpha=alpha,
        beta=beta,
        gamma=gamma,
        exclude_judged=exclude_judged,
    )
