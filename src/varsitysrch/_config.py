"""The settings of the pipeline's steps, grouped in a few values (the way httpx groups ``Timeout``).

* :class:`Compute` -- how heavy work runs: local threads or a Dask cluster, batch size,
  workers, threads, checkpoints.  Shared by every function that runs such work.
* :class:`ExtractOptions`, :class:`ChooseKOptions`, :class:`TrainOptions`,
  :class:`UpdateOptions`, :class:`ReportOptions`, :class:`EvalOptions` -- what one step
  does (:func:`~varsitysrch.extract_features`, :func:`~varsitysrch.get_optimal_num_clusters`,
  :func:`~varsitysrch.train_clusters`, :func:`~varsitysrch.update_catalogue`,
  :func:`~varsitysrch.make_report`, :func:`~varsitysrch.evaluate`).

Each value is frozen and validated when it is made: a bad field raises
:class:`~varsitysrch.InvalidArgumentError` naming the field, the value and the rule.  Every
field's default is the one the step uses when the field is not given.  ``value.replace(**changes)``
derives another value; ``Cls.merge(value, **settings)`` folds settings given one by one into a
value (``None``: the defaults) and refuses a name that is not a field.

The public functions take ``options=`` and ``compute=`` and, as earlier versions did, each
setting as a plain keyword (``train_clusters(..., n_init=5, engine="dask")``): such a keyword
is routed by its name to the options value or to :class:`Compute`, and wins over the same field
of a value given as well (``options=TrainOptions(n_init=3), n_init=5`` trains with 5).  A
keyword that is not a setting of that function is refused, with the list of its settings.
A :class:`Compute` field the function does not use must keep its default (so a Dask scheduler
is never silently ignored).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, Self, TypeVar

import numpy as np

from ._duplicates import DEFAULT_THRESHOLD, METHODS, VARIANT_THRESHOLD
from ._errors import InvalidArgumentError
from ._extractors import DEFAULT_EXTRACTOR

__all__ = [
    "DEFAULT_CONFIGS",
    "ChooseKOptions",
    "Compute",
    "EvalOptions",
    "ExtractOptions",
    "ReportOptions",
    "TrainOptions",
    "UpdateOptions",
    "settle",
]

#: :func:`~varsitysrch._searchindex.build_search_index`'s target recall@10 against exact
#: search (``_searchindex.TARGET_RECALL``; written out here so that making a settings value
#: does not import scikit-learn: tests/test_api_options.py checks that the two agree)
_TARGET_RECALL = 0.95

#: :func:`~varsitysrch.evaluate`'s configurations: plain cosine on the default features (the
#: obvious baseline), the library default (search PCA + query expansion), and the default without
#: query expansion: one feature store, three pipelines
DEFAULT_CONFIGS: tuple[str, ...] = (
    f"{DEFAULT_EXTRACTOR}+pca=0+qe=0",
    DEFAULT_EXTRACTOR,
    f"{DEFAULT_EXTRACTOR}+qe=0",
)

_O = TypeVar("_O", bound="_Settings")


# ------------------------------------------------------------------------------------ rules
def _is_int(v: Any) -> bool:
    return isinstance(v, int | np.integer) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float | np.integer | np.floating) and not isinstance(v, bool)


def _fail(name: str, rule: str, value: Any) -> InvalidArgumentError:
    return InvalidArgumentError(f"{name} must be {rule}; got {value!r}")


def _int(
    obj: Any, name: str, lo: int, hi: int | None = None, *, optional: bool = False, rule: str = ""
) -> None:
    """Field ``name`` must be an integer in ``[lo, hi]`` (or ``None`` when ``optional``); kept as an int."""
    v = getattr(obj, name)
    if v is None and optional:
        return
    if not _is_int(v) or v < lo or (hi is not None and v > hi):
        if not rule:
            rule = f"an integer >= {lo}" if hi is None else f"an integer in [{lo}, {hi}]"
            rule = f"None or {rule}" if optional else rule
        raise _fail(name, rule, v)
    object.__setattr__(obj, name, int(v))


def _bool(obj: Any, name: str) -> None:
    v = getattr(obj, name)
    if not isinstance(v, bool | np.bool_):
        raise _fail(name, "true or false", v)
    object.__setattr__(obj, name, bool(v))


def _choice(obj: Any, name: str, choices: Sequence[Any]) -> None:
    v = getattr(obj, name)
    if not isinstance(v, str) or v not in choices:
        *head, last = [repr(c) for c in choices]
        raise _fail(name, f"{', '.join(head)} or {last}" if head else last, v)


def _ints(obj: Any, name: str, *, nprobes: bool = False) -> None:
    """Field ``name`` must be a sequence of integers >= 1: ``k_values`` at least one, ``nprobes``
    (``nprobes=True``) any number, ``None`` items too (the calibrated value); kept as a tuple."""
    v = getattr(obj, name)
    also = " (or None: the calibrated value)" if nprobes else ""
    if isinstance(v, str | bytes) or not isinstance(v, Sequence):
        raise _fail(name, f"a list of integers >= 1{also}", v)
    if not v and not nprobes:
        raise _fail(name, "a list naming at least one k", v)
    items: list[Any] = list(v)
    for p in items:
        if p is None and nprobes:
            continue
        if not _is_int(p) or p < 1:
            raise InvalidArgumentError(f"{name} must be integers >= 1{also}; got {p!r}")
    object.__setattr__(obj, name, tuple(None if p is None else int(p) for p in items))


# ----------------------------------------------------------------------------- the base
class _Settings:
    """What every settings value shares: ``replace`` and ``merge`` (the dataclasses below)."""

    #: earlier keyword names of a field: old name -> field
    _aliases: ClassVar[Mapping[str, str]] = {}

    @classmethod
    def _names(cls) -> tuple[str, ...]:
        """The names of the settings this value holds."""
        return tuple(f.name for f in dataclasses.fields(cls))  # type: ignore[arg-type]

    def replace(self, **changes: Any) -> Self:
        """A copy with ``changes`` (validated like a new value; an unknown name is refused)."""
        return _merge(type(self), self, changes)

    @classmethod
    def merge(cls, value: Self | None, **settings: Any) -> Self:
        """``value`` (``None``: the defaults) with ``settings`` on top; each must name a field."""
        return _merge(cls, value, settings)


def _merge(cls: type[_O], value: _O | None, settings: Mapping[str, Any]) -> _O:
    """The one merge of every settings value: ``value`` or ``cls()``, then ``settings`` by field name."""
    base = cls() if value is None else value
    if not isinstance(base, cls):
        raise InvalidArgumentError(
            f"{_role(cls)} must be a {cls.__name__} (or None); got {type(value).__name__}"
        )
    fields = set(cls._names())
    changes: dict[str, Any] = {}
    for key, v in settings.items():
        name = cls._aliases.get(key, key)
        if name not in fields:
            known = ", ".join(sorted(fields | set(cls._aliases)))
            raise InvalidArgumentError(f"unknown {cls.__name__} setting {key!r}; the settings are: {known}")
        if name in changes and changes[name] is not v and changes[name] != v:
            raise InvalidArgumentError(f"{key!r} and another name of {name!r} were both given")
        changes[name] = v
    return dataclasses.replace(base, **changes) if changes else base  # type: ignore[type-var]


def _role(cls: type) -> str:
    return "compute" if cls is Compute else "options"


def settle(
    where: str,
    settings: Mapping[str, Any],
    options_cls: type[_O],
    options: _O | None,
    compute: Compute | None = None,
    uses: Collection[str] = (),
    *,
    extra: Collection[str] = (),
) -> tuple[_O, Compute, dict[str, Any]]:
    """A public function's settings: its options value, its :class:`Compute`, and the rest.

    ``settings`` (the function's ``**settings``) are routed by name: a field (or alias) of
    ``options_cls``, a field (or alias) of :class:`Compute` among ``uses`` (the ones the function
    uses), or a name in ``extra`` (returned as they are, e.g. extractor options); anything else
    raises :class:`InvalidArgumentError` listing the valid names.  Flat settings win over the
    values' fields.  A ``compute`` field outside ``uses`` must keep its default.
    """
    mine: dict[str, Any] = {}
    comp: dict[str, Any] = {}
    rest: dict[str, Any] = {}
    used = set(uses)
    for key, v in settings.items():
        name = options_cls._aliases.get(key, key)
        cname = Compute._aliases.get(key, key)
        if name in options_cls._names():
            mine[key] = v
        elif cname in used:
            comp[key] = v
        elif key in extra:
            rest[key] = v
        else:
            known = set(options_cls._names()) | set(options_cls._aliases) | used | set(extra)
            known |= {a for a, f in Compute._aliases.items() if f in used}
            raise InvalidArgumentError(
                f"{where}() got an unknown setting {key!r}; its settings are: {', '.join(sorted(known))}"
            )
    opts = _merge(options_cls, options, mine)
    compute_value = _merge(Compute, compute, comp)
    default = Compute()
    for f in Compute._names():
        if f not in used and getattr(compute_value, f) != getattr(default, f):
            raise InvalidArgumentError(
                f"{where}() does not use compute.{f} (got {getattr(compute_value, f)!r}); "
                f"it uses {', '.join(sorted(used)) or 'none of them'}"
            )
    return opts, compute_value, rest


# ---------------------------------------------------------------------------- the values
@dataclass(frozen=True)
class Compute(_Settings):
    """How heavy work runs (embedding, K-means assignment, the K sweep, ONNX Runtime).

    Attributes:
        engine: ``"local"`` (threads here) or ``"dask"`` (dask.distributed workers; the image
            folder must be visible to them at the same path).
        scheduler: with ``engine="dask"``: a scheduler address (``"tcp://host:8786"``), a
            scheduler file (``.json``), a ``distributed.Client`` or a cluster object;
            ``None``: the current default client.
        threads: ONNX Runtime intra-op threads per lane (extraction) or the threads of the
            K sweep (choose-k; its earlier keyword ``n_threads``); ``None``: from the CPUs.
        num_workers: extraction pipeline lanes (``None``: one per CPU, at most 8; ``0``: the
            calling thread).
        batch_size: images per inference batch.
        checkpoint_every: images between checkpoints of an unfinished extraction (``None``:
            about 16 per run).
    """

    engine: Literal["local", "dask"] = "local"
    scheduler: Any = None
    threads: int | None = None
    num_workers: int | None = None
    batch_size: int = 8
    checkpoint_every: int | None = None

    _aliases: ClassVar[Mapping[str, str]] = {"n_threads": "threads"}

    def __post_init__(self) -> None:
        _choice(self, "engine", ("local", "dask"))
        _int(self, "threads", 1, optional=True)
        _int(self, "num_workers", 0, optional=True)
        _int(self, "batch_size", 1)
        _int(self, "checkpoint_every", 1, optional=True)


@dataclass(frozen=True)
class ExtractOptions(_Settings):
    """What :func:`~varsitysrch.extract_features` stores (besides the extractor and :class:`Compute`).

    Attributes:
        dtype: ``"float32"`` or ``"float16"`` storage of the vectors.
        allow_empty: let a listing with no readable image replace a non-empty store (otherwise
            that is an error and the store is kept: an unmounted folder never wipes a catalogue).
    """

    dtype: Literal["float32", "float16"] = "float32"
    allow_empty: bool = False

    def __post_init__(self) -> None:
        _choice(self, "dtype", ("float32", "float16"))
        _bool(self, "allow_empty")


@dataclass(frozen=True)
class ChooseKOptions(_Settings):
    """How :func:`~varsitysrch.get_optimal_num_clusters` scores each k (see ``_selectk._choose_k``).

    Attributes:
        method: ``"fast"`` (sampled sweep + confirmation) or ``"exhaustive"``.
        sample_size: images the silhouette and Davies-Bouldin are computed on (``None``: all;
            at least ``max_clusters + 1``, checked against the data).
        n_init: K-means restarts per k.
        random_state: seeds sampling, k-means++, PCA and the retrieval queries (>= 0).
        retrieval: also score cluster-restricted search per k.
        n_queries: retrieval queries (capped at the number of images).
    """

    method: Literal["fast", "exhaustive"] = "fast"
    sample_size: int | None = 5000
    n_init: int = 3
    random_state: int = 0
    retrieval: bool = True
    n_queries: int = 1000

    def __post_init__(self) -> None:
        _choice(self, "method", ("fast", "exhaustive"))
        _int(self, "sample_size", 3, optional=True, rule="None (all images) or an integer >= 3")
        _int(self, "n_init", 1)
        _int(self, "random_state", 0)
        _bool(self, "retrieval")
        _int(self, "n_queries", 1)


@dataclass(frozen=True)
class TrainOptions(_Settings):
    """How :func:`~varsitysrch.train_clusters` clusters and builds the search index.

    Attributes:
        n_components: a PCA clustering space of this many components (``None``: raw features;
            at most ``min(dim, n_images)``, checked against the data).
        n_init: K-means restarts (best inertia kept).
        random_state: seed of sampling, k-means++, PCA and calibration.
        backend: ``"auto"``, ``"sklearn"`` or ``"faiss"``.
        max_samples: rows the centroids are trained on (``None``: ``max(256 * k, 50_000)``).
        ivf: a faiss IVF search index (``None``: above ``_index.IVF_THRESHOLD`` images).
        embed_index: keep the raw vectors in the model file (``None``: up to 50M floats).
        target_recall: recall@10 against exact search the default ``nprobe`` reaches, in (0, 1].
        search_pca: components of a catalogue-centred PCA ranking space (``None`` / ``0``, the
            default: plain cosine on the raw vectors; opt-in, 128 measured: ``docs/quality.md``).
        query_expansion: the Searcher's default alpha-QE neighbours (``None``: 0, off).
        rerank_graph: store the catalogue's neighbour graph, so that searches re-rank by default
            (k-reciprocal, :mod:`varsitysrch._rerank`; kept up to date by ``update_catalogue``).
            ``None`` (the default): for a model without an IVF (up to ``_index.IVF_THRESHOLD``
            images), not above it (opt-in there: ``True``); ``False``: none.
        colour_labels: a string column of the catalogue's ``attributes`` naming each product's
            colour: "match colour" then ranks by a colour classifier learned from it
            (:mod:`varsitysrch._colourlabels`; ``None``, the default: by the colour signatures).
    """

    n_components: int | None = None
    n_init: int = 3
    random_state: int = 0
    backend: Literal["auto", "sklearn", "faiss"] = "auto"
    max_samples: int | None = None
    ivf: bool | None = None
    embed_index: bool | None = None
    target_recall: float = _TARGET_RECALL
    search_pca: int | None = None
    query_expansion: int | None = None
    rerank_graph: bool | None = None
    colour_labels: str | None = None

    def __post_init__(self) -> None:
        _int(self, "n_components", 1, optional=True)
        _int(self, "n_init", 1)
        _int(self, "random_state", 0)
        _choice(self, "backend", ("auto", "sklearn", "faiss"))
        _int(self, "max_samples", 1, optional=True)
        for name in ("ivf", "embed_index", "rerank_graph"):
            if getattr(self, name) is not None:
                _bool(self, name)
        t = self.target_recall
        if not _is_number(t) or not 0.0 < float(t) <= 1.0:  # NaN fails too
            raise _fail("target_recall", "a number in (0, 1]", t)
        _int(self, "search_pca", 0, optional=True, rule="an integer >= 0 or None")
        _int(self, "query_expansion", 0, optional=True, rule="an integer >= 0 or None")
        c = self.colour_labels
        if c is not None and (not isinstance(c, str) or not c.strip()):
            raise _fail("colour_labels", "an attributes column name (a non-empty string) or None", c)


@dataclass(frozen=True)
class UpdateOptions(_Settings):
    """How :func:`~varsitysrch.update_catalogue` updates a model and judges its drift.

    Attributes:
        far_quantile: training-distance quantile beyond which a new image counts as far, in (0, 1).
        recalibrate: recalibrate the default ``nprobe`` (and the IVF's) on 200 held-out queries.
        allow_empty: let an image folder with no readable image empty the store (as in extraction).
    """

    far_quantile: float = 0.95
    recalibrate: bool = True
    allow_empty: bool = False

    def __post_init__(self) -> None:
        q = self.far_quantile
        if not _is_number(q) or not 0.0 < float(q) < 1.0:
            raise _fail("far_quantile", "a number in (0, 1)", q)
        _bool(self, "recalibrate")
        _bool(self, "allow_empty")


@dataclass(frozen=True)
class ReportOptions(_Settings):
    """What :func:`~varsitysrch.make_report` shows.

    Attributes:
        thumb_size: thumbnail side in pixels, in [16, 1024].
        central, outliers: members shown per cluster (most central; most distant), in [1, 1000].
        near_clusters: nearest other clusters listed per cluster, in [1, 100].
        silhouette_sample: rows the silhouettes are computed on (seeded sample), >= 2.
        duplicate_threshold, variant_threshold: cosine thresholds of the two duplicate tiers,
            in (0, 1], ``variant_threshold <= duplicate_threshold``.
        duplicate_method: ``"auto"``, ``"exact"`` or ``"ivf"`` (see ``find_duplicates``).
        max_groups: duplicate groups shown on the page (all go to ``duplicates.csv``).
        map_points, map_thumbs: points and thumbnails drawn on the map at most.
        random_state: seed of the samples.
    """

    thumb_size: int = 160
    central: int = 12
    outliers: int = 12
    near_clusters: int = 5
    silhouette_sample: int = 5000
    duplicate_threshold: float = DEFAULT_THRESHOLD
    variant_threshold: float = VARIANT_THRESHOLD
    duplicate_method: str = "auto"
    max_groups: int = 200
    map_points: int = 20_000
    map_thumbs: int = 400
    random_state: int = 0

    def __post_init__(self) -> None:
        _int(self, "thumb_size", 16, 1024)
        _int(self, "central", 1, 1000)
        _int(self, "outliers", 1, 1000)
        _int(self, "near_clusters", 1, 100)
        _int(self, "silhouette_sample", 2)
        _int(self, "max_groups", 0)
        _int(self, "map_points", 1)
        _int(self, "map_thumbs", 0)
        for name in ("duplicate_threshold", "variant_threshold"):
            v = getattr(self, name)
            if not _is_number(v) or not 0.0 < float(v) <= 1.0:
                raise _fail(name, "a number in (0, 1]", v)
        if self.variant_threshold > self.duplicate_threshold:
            rule = f"<= duplicate_threshold ({self.duplicate_threshold})"
            raise _fail("variant_threshold", rule, self.variant_threshold)
        _choice(self, "duplicate_method", METHODS)
        _int(self, "random_state", 0)


@dataclass(frozen=True)
class EvalOptions(_Settings):
    """What :func:`~varsitysrch.evaluate` measures.

    Attributes:
        configs: configuration strings (``_evaluate``'s module docstring) or ``EvalConfig`` values.
        k_values: numbers of clusters to train.
        nprobes: clusters scanned by the ranked search; ``None`` items: the calibrated default.
        query_split: ``None``/``"leave-one-out"``, a fraction in (0, 1) held out from the
            catalogue, or a list (or file) of query ids held out (checked against the data).
        top_k: results per query (the ``k`` of P@k, mAP@k, recall@k).
        n_queries: at most this many queries (``None``: every eligible image).
        random_state: seed of the query sample and of K-means.
        n_latency: queries whose image is decoded and embedded for the embed+search latency.
        seed_baseline: include the seed method's rows.
        report_stem: file names of the report in ``out_dir`` (``<stem>.json`` etc.).
    """

    configs: Sequence[Any] = DEFAULT_CONFIGS
    k_values: Sequence[int] = (20,)
    nprobes: Sequence[int | None] = (1, 2, 4, None)
    query_split: Any = None
    top_k: int = 10
    n_queries: int | None = 2000
    random_state: int = 0
    n_latency: int = 50
    seed_baseline: bool = True
    report_stem: str = "eval"

    def __post_init__(self) -> None:
        c = self.configs
        if isinstance(c, str | bytes) or not isinstance(c, Sequence) or not c:
            raise _fail("configs", "a non-empty list of configurations", c)
        object.__setattr__(self, "configs", tuple(c))
        _ints(self, "k_values")
        _ints(self, "nprobes", nprobes=True)
        _int(self, "top_k", 1, rule="a positive integer")
        _int(self, "n_queries", 1, optional=True, rule=">= 1 or None")
        _int(self, "random_state", 0)
        _int(self, "n_latency", 0)
        _bool(self, "seed_baseline")
        if not isinstance(self.report_stem, str) or not self.report_stem:
            raise _fail("report_stem", "a non-empty string", self.report_stem)
