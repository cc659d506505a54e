"""The settings of one search, grouped in one value: :class:`SearchOptions`.

Every entry point (:meth:`varsitysrch.Searcher.search` and its siblings,
:func:`varsitysrch.search_similar_images`, :class:`varsitysrch.VaSrch`, the CLI, the HTTP
routes, :func:`varsitysrch.evaluate`) hands one ``SearchOptions`` to the one query pipeline
(:func:`varsitysrch._pipeline.run_search`), so the same query with the same options gives the
same hits wherever it comes from.  The value is frozen and validated when it is made (errors
name the setting, the value and the rule); :meth:`SearchOptions.replace` derives another.

For backward compatibility the public functions still accept each setting as a keyword
(``search(q, 5, nprobe=3)``): :meth:`SearchOptions.merge` folds such keywords into an
options value and refuses any name that is not a setting.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np

from ._collapse import check_collapse
from ._colour import check_colour_weight
from ._errors import InvalidArgumentError
from ._query import check_views
from ._rerank import check_rerank

#: keywords earlier versions used for a setting: old name -> field
_ALIASES = {"expand": "expansion", "query_expansion": "expansion"}


def _is_int(v: Any) -> bool:
    return isinstance(v, int | np.integer) and not isinstance(v, bool)


@dataclass(frozen=True)
class SearchOptions:
    """How to search (every field has the default a plain search uses).

    Attributes:
        top_n: how many hits (at most; fewer when the cut-offs drop some).
        nprobe: how much of the index to scan, in the index's own unit: K-means clusters for a
            catalogue searched through its clusters, IVF lists for one with an IVF search index
            (large catalogues, :mod:`varsitysrch._index`).  ``None``: the value calibrated at
            training time.  Checked against the index in use (``1 <= nprobe <= clusters or lists``).
        exact: scan the whole catalogue (exact search; ``nprobe`` is then unused).
        expansion: query-expansion neighbours (alpha-QE; ``0``: off; ``None``: the model's value).
        views: ``"auto"`` (crops only for a shop photo against a studio catalogue), ``None`` /
            ``"none"`` (the whole image), ``"crops"``, ``"flip"`` or ``"crops+flip"``.
        colour_weight: weight of the product's colour in the ranking, in ``[0, 1]`` (``None``:
            the Searcher's default, 0 unless it was given one).
        where: attribute filter (:mod:`varsitysrch._attributes`), ``None`` for none.
        collapse: ``True`` (the default threshold), a cosine threshold in ``(0, 1]``, or
            ``None`` / ``False``: near-duplicates shown once.
        min_score: drop hits whose :attr:`~varsitysrch.Hit.score` is below it (``[-1, 1]``).
        min_confidence: drop hits whose confidence is below it (``[0, 1]``).
        include_self: a search by catalogue id keeps the query image in its results.
        rerank: ``None`` (the default: the model's -- on when it has a neighbour graph, as
            models trained by default up to ``_index.IVF_THRESHOLD`` images do), ``"none"`` (off)
            or ``"k-reciprocal"`` (on; a model without a graph is refused): the top candidates
            re-ordered over the catalogue's own neighbour graph (the first hit kept;
            :mod:`varsitysrch._rerank`, measured in ``docs/quality.md``, Phase B).
    """

    top_n: int = 10
    nprobe: int | None = None
    exact: bool = False
    expansion: int | None = None
    views: str | None = None
    colour_weight: float | None = None
    where: Any = None
    collapse: bool | float | None = None
    min_score: float | None = None
    min_confidence: float | None = None
    include_self: bool = True
    rerank: str | None = None

    def __post_init__(self) -> None:
        if not _is_int(self.top_n) or self.top_n < 1:
            raise InvalidArgumentError(f"top_n must be a positive integer; got {self.top_n!r}")
        if self.nprobe is not None and (not _is_int(self.nprobe) or self.nprobe < 1):
            raise InvalidArgumentError(f"nprobe must be a positive integer or None; got {self.nprobe!r}")
        if not isinstance(self.exact, bool | np.bool_):
            raise InvalidArgumentError(f"exact must be true or false; got {self.exact!r}")
        if self.expansion is not None and (not _is_int(self.expansion) or self.expansion < 0):
            raise InvalidArgumentError(f"expansion must be an integer >= 0 or None; got {self.expansion!r}")
        object.__setattr__(self, "views", check_views(self.views))
        if self.colour_weight is not None:
            object.__setattr__(self, "colour_weight", check_colour_weight(self.colour_weight))
        check_collapse(self.collapse)
        for name, v, lo in (
            ("min_confidence", self.min_confidence, 0.0),
            ("min_score", self.min_score, -1.0),
        ):
            if v is None:
                continue
            number = isinstance(v, int | float | np.floating) and not isinstance(v, bool)
            if not number or not lo <= float(v) <= 1.0:  # NaN fails too
                raise InvalidArgumentError(f"{name} must be a number in [{lo:g}, 1]; got {v!r}")
        if not isinstance(self.include_self, bool | np.bool_):
            raise InvalidArgumentError(f"include_self must be true or false; got {self.include_self!r}")
        object.__setattr__(self, "rerank", check_rerank(self.rerank))

    @property
    def collapse_threshold(self) -> float | None:
        """``collapse`` as a cosine threshold (``None``: off)."""
        return check_collapse(self.collapse)

    def replace(self, **changes: Any) -> SearchOptions:
        """A copy with ``changes`` (validated like a new value)."""
        return dataclasses.replace(self, **changes)

    @classmethod
    def merge(cls, options: SearchOptions | None, **settings: Any) -> SearchOptions:
        """``options`` (default: a plain search) with the given settings on top.

        The keyword form of the public functions: each keyword must name a field (or an
        earlier name of one: ``expand``, ``query_expansion``); ``None`` leaves a field as it is
        for ``colour_weight`` only when no options value was given.
        """
        base = cls() if options is None else options
        if not isinstance(base, SearchOptions):
            raise InvalidArgumentError(f"options must be a SearchOptions; got {type(options).__name__}")
        fields = {f.name for f in dataclasses.fields(cls)}
        changes: dict[str, Any] = {}
        for key, value in settings.items():
            name = _ALIASES.get(key, key)
            if name not in fields:
                known = ", ".join(sorted(fields))
                raise InvalidArgumentError(f"unknown search setting {key!r}; the settings are: {known}")
            if name in changes and changes[name] != value:
                raise InvalidArgumentError(f"{key!r} and another name of {name!r} were both given")
            changes[name] = value
        return dataclasses.replace(base, **changes) if changes else base


__all__ = ["SearchOptions"]
