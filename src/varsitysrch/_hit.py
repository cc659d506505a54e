"""One search result: :class:`Hit`, the image's catalogue id as a ``str`` with its rank, score and cluster."""

from __future__ import annotations

from typing import Any

__all__ = ["Hit"]


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
        score: the plain cosine similarity of the query to the image in the raw feature space
            (1.0 = identical features), at every catalogue size and with every option (the
            query's best view when it was searched as several; the query and the positives
            after relevance feedback).  The ranking may use more (PCA space, query expansion,
            colour), so scores need not decrease strictly down a list (:mod:`varsitysrch._pipeline`).
        cluster: the image's cluster.
        rank: 1-based rank.
        path: the file, when the search was given the catalogue's ``image_root`` (and the file
            stays inside it); otherwise ``None``.
        confidence: 0-1, the percentile of ``score`` among the catalogue's own nearest-neighbour
            cosines (:mod:`varsitysrch._confidence`), never above a better-ranked hit's (so it and
            ``match`` are monotone in rank); ``None`` with a model trained before confidence existed.
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
