"""The candidates stage: the index a search scans, which owns its probe parameter.

A catalogue is searched through one of two indexes, chosen when the model was trained:

* :class:`ClusterIndex` -- the user's K-means clusters as inverted lists (catalogues up to
  :data:`varsitysrch._index.IVF_THRESHOLD` images).  ``nprobe`` counts **clusters**; the
  query's ``nprobe`` nearest clusters are scanned, more until they hold the rows asked for.
* :class:`ListIndex` -- the faiss IVF of a large catalogue (:mod:`varsitysrch._index`).
  ``nprobe`` counts **IVF lists**.

Each index checks ``nprobe`` against itself (``1 <= nprobe <= clusters`` or ``lists``), says in
:attr:`unit` what it counts, and reports what a search scanned as a :class:`Scan` (how many
clusters or lists, how many images).  ``nprobe=None`` is the value calibrated at training time
for that index.

:meth:`rank` returns the best rows for a query with their **ranking** scores: the cosine in
the space the index ranks in (the catalogue-centred PCA of :mod:`varsitysrch._searchindex`
when the model has one, else the raw feature space).  What a hit reports as its score is
decided later in the pipeline (:mod:`varsitysrch._pipeline`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ._attributes import CompiledFilter, ivf_masked_search, masked_candidates
from ._errors import InvalidArgumentError
from ._index import IVFSearch
from ._kmeans import KMeansModel

__all__ = ["ClusterIndex", "ListIndex", "Scan"]


@dataclass(frozen=True)
class Scan:
    """What one search scanned: ``probed`` of ``total`` clusters or lists (``unit``), ``images`` of ``of``."""

    unit: str  #: "clusters", "lists" (IVF) or "images" (exact search: everything)
    probed: int
    total: int
    images: int
    of: int

    def __str__(self) -> str:
        if self.unit == "images":
            return f"exact: scanned all {self.of:,} images"
        if self.unit == "lists":
            return (
                f"IVF index: probed {self.probed} of {self.total} lists, "
                f"{self.images:,} of {self.of:,} images"
            )
        return f"searched {self.probed} of {self.total} clusters, {self.images:,} of {self.of:,} images"

    def to_dict(self) -> dict[str, Any]:
        return {
            "unit": self.unit,
            "probed": self.probed,
            "total": self.total,
            "images": self.images,
            "of": self.of,
        }


def _check_probe(nprobe: Any, total: int, unit: str) -> int:
    if isinstance(nprobe, bool) or not isinstance(nprobe, int | np.integer) or not 1 <= nprobe <= total:
        raise InvalidArgumentError(
            f"nprobe must be in [1, {total}] (the {unit} of this model's search index); got {nprobe!r}"
        )
    return int(nprobe)


def _top(rows: np.ndarray, scores: np.ndarray, need: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``need`` best ``rows`` by score, best first, ties by row (catalogue order)."""
    n = min(int(need), len(rows))
    if n <= 0:
        return rows[:0], scores[:0]
    top = np.argpartition(-scores, n - 1)[:n] if n < len(rows) else np.arange(len(rows))
    top = top[np.lexsort((rows[top], -scores[top]))]
    return rows[top], scores[top]


class ClusterIndex:
    """The K-means clusters as inverted lists; ranks in the model's ranking space."""

    unit = "clusters"

    def __init__(
        self, model: KMeansModel, k: int, labels: np.ndarray, scoring: np.ndarray, default_probe: int
    ) -> None:
        self.model = model
        self.labels = np.asarray(labels, np.int32)
        self.scoring = scoring
        self.total = int(k)
        order = np.argsort(self.labels, kind="stable")
        counts = np.bincount(self.labels, minlength=self.total)
        self._offsets = np.concatenate([[0], np.cumsum(counts)])
        self._order = order.astype(np.int64)
        self.default_probe = _check_probe(max(1, min(int(default_probe), self.total)), self.total, self.unit)

    def check_probe(self, nprobe: int | None) -> int:
        """``nprobe`` checked against this index (``None``: the calibrated value)."""
        return self.default_probe if nprobe is None else _check_probe(nprobe, self.total, self.unit)

    def members(self, cluster: int) -> np.ndarray:
        """The rows of one K-means cluster."""
        return self._order[self._offsets[cluster] : self._offsets[cluster + 1]]

    def probed(self, v: np.ndarray, need: int, nprobe: int) -> np.ndarray:
        """The clusters a search for raw vector ``v`` scans: its ``nprobe`` nearest, more until
        they hold ``need`` images."""
        order = self.model.cluster_order(np.asarray(v, np.float32).reshape(1, -1))[0]
        sizes = np.diff(self._offsets)[order]
        enough = np.flatnonzero(np.cumsum(sizes) >= min(need, len(self.labels)))
        used = max(nprobe, int(enough[0]) + 1 if len(enough) else len(order))
        return np.asarray(order[:used])

    def rank(
        self,
        v: np.ndarray,
        vs: np.ndarray,
        need: int,
        nprobe: int,
        exact: bool,
        flt: CompiledFilter | None,
        exclude: np.ndarray,
    ) -> tuple[np.ndarray, np.ndarray, Scan]:
        """The ``need`` best rows by cosine to ``vs`` (ranking space; ``v``: the raw query, for
        the probe), outside ``exclude`` and inside the filter ``flt`` (exclusions already in it)."""
        n = len(self.labels)
        if flt is not None:
            if exact:
                rows = flt.rows
            else:
                order = self.model.cluster_order(np.asarray(v, np.float32)[None])[0]
                rows = masked_candidates(order, self._offsets, self._order, flt, nprobe, need)
            scan = Scan(
                "images" if exact else self.unit,
                self.total if exact else len(np.unique(self.labels[rows])),
                self.total,
                len(rows),
                n,
            )
        elif exact:
            rows = np.arange(n, dtype=np.int64)
            scan = Scan("images", self.total, self.total, n, n)
        else:
            used = self.probed(v, need + len(exclude), nprobe)
            rows = np.concatenate([self.members(int(c)) for c in used])
            scan = Scan(self.unit, len(used), self.total, len(rows), n)
        if len(exclude) and flt is None:
            rows = rows[~np.isin(rows, exclude)]
        whole = exact and flt is None and not len(exclude)  # rows == arange(n): no gather
        scores = (self.scoring if whole else self.scoring[rows]) @ vs
        got_rows, got_scores = _top(rows, scores, need)
        return got_rows, got_scores, scan


class ListIndex:
    """A faiss IVF (large catalogues); ranks by exact cosine in the raw feature space."""

    unit = "lists"

    def __init__(self, ivf: IVFSearch) -> None:
        self.ivf = ivf
        self.total = int(ivf.nlist)
        self.default_probe = _check_probe(max(1, min(int(ivf.nprobe), self.total)), self.total, self.unit)

    def check_probe(self, nprobe: int | None) -> int:
        """``nprobe`` checked against this index (``None``: the calibrated value)."""
        return self.default_probe if nprobe is None else _check_probe(nprobe, self.total, self.unit)

    def rank(
        self,
        v: np.ndarray,
        vs: np.ndarray,
        need: int,
        nprobe: int,
        exact: bool,
        flt: CompiledFilter | None,
        exclude: np.ndarray,
    ) -> tuple[np.ndarray, np.ndarray, Scan]:
        """As :meth:`ClusterIndex.rank`; ``vs`` is ``v`` (the IVF ranks in the raw space)."""
        n = int(self.ivf.index.ntotal)
        p = self.total if exact else nprobe
        if flt is not None:
            rows, sims = ivf_masked_search(self.ivf.index, self.ivf.vectors, v, int(need), p, flt)
        else:
            rows, sims = self.ivf.search(v, need + len(exclude), nprobe=p, exact=exact)
            if len(exclude):
                keep = ~np.isin(rows, exclude)
                rows, sims = rows[keep], sims[keep]
            rows, sims = rows[:need], sims[:need]
        if exact:
            return rows, sims, Scan("images", self.total, self.total, n, n)
        return rows, sims, Scan(self.unit, p, self.total, self.ivf.images_in(v, p), n)
