"""Calibrated confidence for search scores: how close a hit is, compared with the catalogue itself.

A cosine score means little on its own (0.45 can be a good match in one catalogue and noise
in another).  :class:`ScoreCalibrator` is fitted on the catalogue vectors *in the search
space* (the space :class:`~varsitysrch.Searcher` ranks in): a seeded sample of catalogue
images is searched against the rest of the catalogue (each image held out from its own
search) and the distribution of their nearest-neighbour scores is kept as quantiles.  A hit's
**confidence** is the percentile of its score in that distribution -- ``0.5`` means "as close
as a typical catalogue image is to its nearest other catalogue image", ``0.02`` "less close
than 98 % of them".  A query drawn from the same kind of photos as the catalogue therefore
has a best hit at or above the cut-off ``cutoff`` with probability about ``1 - cutoff`` by
construction; a query from elsewhere (a car in a clothing shop) usually does not.

Words for people (:func:`_match_words`):

* ``"very similar"`` -- confidence >= :data:`_VERY_SIMILAR` (closer than the median catalogue
  neighbour);
* ``"similar"`` -- at or above the cut-off;
* ``"loosely related"`` -- below the cut-off; such a hit is not ``close`` and a result list
  without a close hit says :data:`_NO_CLOSE_MATCH`.

The state is a few plain numbers (:meth:`ScoreCalibrator.to_dict`), stored in the model file's
JSON.  The default cut-off was chosen on both dev domains with out-of-domain queries
(``benchmarks/bench_confidence.py``, figures in ``docs/insight.md``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ._errors import InvalidArgumentError, ModelFileError, NotFittedError

__all__ = ["ScoreCalibrator", "monotone_in_rank"]


#: Default cut-off on confidence: a hit at or above it is ``close``.
_CUTOFF = 0.05
#: Confidence from which a hit is called "very similar".
_VERY_SIMILAR = 0.5
_WORDS = ("very similar", "similar", "loosely related")
_NO_CLOSE_MATCH = "no close match"
_CALIBRATION_FORMAT = "nn-score-quantiles"
_N_QUANTILES = 101


def _is_int(v: Any) -> bool:
    return isinstance(v, int | np.integer) and not isinstance(v, bool)


def _check_unit(name: str, v: Any, *, open_low: bool = False) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float | np.floating | np.integer):
        raise InvalidArgumentError(f"{name} must be a number in [0, 1]; got {v!r}")
    f = float(v)
    if not (0.0 < f <= 1.0 if open_low else 0.0 <= f <= 1.0):
        raise InvalidArgumentError(f"{name} must be in {'(0, 1]' if open_low else '[0, 1]'}; got {v!r}")
    return f


class ScoreCalibrator:
    """Maps search scores to confidence (0-1), words and a ``close`` flag.

    Args:
        n_queries: catalogue images sampled as reference queries (all of them if fewer).
        cutoff: confidence at or above which a hit is ``close``.
        very_similar: confidence from which a hit is "very similar" (``>= cutoff``).
        n_quantiles: quantiles of the reference score distribution kept.
        random_state: seed of the sample.

    Learned state: ``quantiles_`` (scores at ``levels_``), ``n_reference_``,
    ``cutoff_score_`` (the score that has confidence ``cutoff``).
    """

    quantiles_: np.ndarray
    levels_: np.ndarray
    n_reference_: int
    cutoff_score_: float

    def __init__(
        self,
        n_queries: int = 2000,
        *,
        cutoff: float = _CUTOFF,
        very_similar: float = _VERY_SIMILAR,
        n_quantiles: int = _N_QUANTILES,
        random_state: int = 0,
    ) -> None:
        self.n_queries = n_queries
        self.cutoff = cutoff
        self.very_similar = very_similar
        self.n_quantiles = n_quantiles
        self.random_state = random_state

    def _validate(self) -> None:
        if not _is_int(self.n_queries) or self.n_queries < 1:
            raise InvalidArgumentError(f"n_queries must be a positive integer; got {self.n_queries!r}")
        if not _is_int(self.n_quantiles) or self.n_quantiles < 2:
            raise InvalidArgumentError(f"n_quantiles must be an integer >= 2; got {self.n_quantiles!r}")
        c = _check_unit("cutoff", self.cutoff)
        v = _check_unit("very_similar", self.very_similar)
        if v < c:
            raise InvalidArgumentError(f"very_similar must be >= cutoff ({c}); got {v}")

    def fit(self, X: np.ndarray, y: Any = None, *, ranking: np.ndarray | None = None) -> ScoreCalibrator:
        """Fit on the catalogue rows ``X`` (L2-normalised; a memory map is fine).

        ``X`` is the space the scores to calibrate are measured in.  ``ranking`` (the same rows
        in another space, e.g. the search-space PCA) is where each reference query's nearest
        neighbour is found, when search ranks in a different space than it scores confidence in.
        """
        from ._neighbours import exact_topk

        self._validate()
        if getattr(X, "ndim", 0) != 2 or len(X) < 2:
            raise InvalidArgumentError(
                f"X must be a 2-D matrix of at least 2 catalogue vectors; got shape {np.shape(X)}"
            )
        n = len(X)
        rng = np.random.default_rng(self.random_state)
        q = np.sort(rng.choice(n, min(int(self.n_queries), n), replace=False)).astype(np.int64)
        if ranking is None:
            _, scores = exact_topk(np.asarray(X[q], np.float32), X, 1, exclude=q)
            s = scores[:, 0].astype(np.float64)
        else:
            if getattr(ranking, "ndim", 0) != 2 or len(ranking) != n:
                raise InvalidArgumentError(
                    f"ranking must have one row per row of X ({n}); got shape {np.shape(ranking)}"
                )
            nn, _ = exact_topk(np.asarray(ranking[q], np.float32), ranking, 1, exclude=q)
            Xq = np.asarray(X[q], np.float32)
            s = np.einsum("ij,ij->i", Xq, np.asarray(X[nn[:, 0]], np.float32)).astype(np.float64)
        s = np.clip(s[np.isfinite(s)], -1.0, 1.0)  # cosines; float rounding can step past 1
        if not len(s):
            raise InvalidArgumentError("X has no finite nearest-neighbour scores (NaN or empty rows?)")
        self.levels_ = np.linspace(0.0, 1.0, int(self.n_quantiles))
        self.quantiles_ = np.quantile(s, self.levels_).astype(np.float64)
        self.n_reference_ = len(s)
        self.cutoff_score_ = self.score_at(float(self.cutoff))
        return self

    def _check_fitted(self) -> None:
        if not hasattr(self, "quantiles_"):
            raise NotFittedError("this ScoreCalibrator is not fitted yet: call fit(X) first")

    def confidence(self, scores: Any) -> np.ndarray:
        """Confidence in ``[0, 1]`` of each score: its percentile among the reference scores."""
        self._check_fitted()
        s = np.clip(np.asarray(scores, np.float64), -1.0, 1.0)
        xp = self.quantiles_
        # flat stretches (many equal reference scores, e.g. exact duplicates) map to their upper level
        uniq, last = np.unique(xp[::-1], return_index=True)
        fp = self.levels_[::-1][last]
        out = np.interp(s, uniq, fp, left=0.0, right=1.0)
        out = np.where(s < xp[0], 0.0, out)
        return np.clip(np.where(np.isfinite(s), out, 0.0), 0.0, 1.0)

    def score_at(self, confidence: float) -> float:
        """The score whose confidence is ``confidence`` (a quantile of the reference scores)."""
        self._check_fitted()
        c = _check_unit("confidence", confidence)
        return float(np.interp(c, self.levels_, self.quantiles_))

    def close(self, confidence: Any) -> np.ndarray:
        return np.asarray(confidence, np.float64) >= float(self.cutoff)

    def words(self, confidence: Any) -> list[str]:
        return _match_words(confidence, float(self.cutoff), float(self.very_similar))

    # ---------------------------------------------------------------- persistence
    def to_dict(self) -> dict[str, Any]:
        """Plain JSON: the quantiles and the settings (stored in the model file's ``model.json``)."""
        self._check_fitted()
        return {
            "format": _CALIBRATION_FORMAT,
            "levels": [round(float(v), 6) for v in self.levels_],
            "quantiles": [float(v) for v in self.quantiles_],
            "n_reference": int(self.n_reference_),
            "cutoff": float(self.cutoff),
            "very_similar": float(self.very_similar),
            "random_state": int(self.random_state),
        }

    @classmethod
    def from_dict(cls, d: Any) -> ScoreCalibrator:
        """Rebuild from :meth:`to_dict`; a malformed entry is a :class:`~varsitysrch.ModelFileError`."""
        try:
            if not isinstance(d, dict) or d.get("format") != _CALIBRATION_FORMAT:
                raise ValueError(
                    f"unknown calibration format {d.get('format') if isinstance(d, dict) else d!r}"
                )
            levels = np.asarray(d["levels"], np.float64)
            quantiles = np.asarray(d["quantiles"], np.float64)
            if (
                levels.ndim != 1
                or levels.shape != quantiles.shape
                or len(levels) < 2
                or not np.isfinite(quantiles).all()
                or not np.isfinite(levels).all()
                or (np.diff(levels) <= 0).any()
                or (np.diff(quantiles) < 0).any()
                or levels[0] != 0.0
                or levels[-1] != 1.0
            ):
                raise ValueError("levels/quantiles must be finite, increasing and of one length, levels 0..1")
            cal = cls(
                cutoff=float(d["cutoff"]),
                very_similar=float(d["very_similar"]),
                n_quantiles=len(levels),
                random_state=int(d.get("random_state", 0)),
            )
            cal._validate()
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelFileError(f"model file has a malformed confidence calibration ({exc})") from exc
        cal.levels_, cal.quantiles_ = levels, quantiles
        cal.n_reference_ = int(d.get("n_reference", 0))
        cal.cutoff_score_ = cal.score_at(cal.cutoff)
        return cal


def _match_words(confidence: Any, cutoff: float = _CUTOFF, very_similar: float = _VERY_SIMILAR) -> list[str]:
    """``"very similar"`` / ``"similar"`` / ``"loosely related"`` for each confidence."""
    c = np.atleast_1d(np.asarray(confidence, np.float64))
    return [_WORDS[0] if v >= very_similar else _WORDS[1] if v >= cutoff else _WORDS[2] for v in c]


def monotone_in_rank(confidence: Any) -> np.ndarray:
    """Confidences of a ranked list made non-increasing in rank: the least-squares non-increasing
    fit (isotonic regression, pool-adjacent-violators).

    A list is ranked by more than the plain cosine (query expansion, the search PCA, colour,
    the crop discount), so the confidences of its hits, measured on the plain cosine, need not
    decrease down it; a lower hit must not read "more similar" than a higher one.  Where the
    order disagrees, the hits involved share their mean confidence.
    """
    c = np.asarray(confidence, np.float64).reshape(-1)
    blocks: list[list[float]] = []  # [sum, count] of pooled runs, each run's mean below the last's
    for v in c:
        blocks.append([float(v), 1.0])
        while len(blocks) > 1 and blocks[-2][0] / blocks[-2][1] < blocks[-1][0] / blocks[-1][1]:
            s, n = blocks.pop()
            blocks[-1][0] += s
            blocks[-1][1] += n
    out = np.concatenate([np.full(int(n), s / n) for s, n in blocks]) if blocks else np.zeros(0)
    return np.clip(out, 0.0, 1.0)
