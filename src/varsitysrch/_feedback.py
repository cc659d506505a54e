"""Relevance feedback: "more like these, less like those" as one refined query (Rocchio).

Given the query vector ``q`` (optional), the vectors a shopper marked relevant (``P``) and
irrelevant (``N``), all L2-normalised and in the space results are ranked in::

    q' = alpha * q + beta * mean(P) - gamma * mean(N),   then L2-normalised

and ``q'`` is searched like any query (one search through :func:`varsitysrch._pipeline.run_search`,
so filters, collapse and the index's probing work unchanged; hits are scored against the
positive side ``alpha * q + beta * mean(P)``, so confidence stays meaningful after feedback).
Without a query the positives stand in for it (``alpha`` is
then unused); with no positive at all, ``q'`` is the query pushed away from the negatives.
Items already judged are left out of the refined results by default (the shopper has seen
them; a negative is never shown again).

The weights are measured, not guessed: ``benchmarks/bench_feedback.py`` simulates one round
of feedback on the top 10 (relevant = same product label) on clothing-small and
grocery-train, chooses the weights on one half of the queries and reports the gain on the
other half (figures in ``docs/shop.md``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ._errors import InvalidArgumentError

__all__ = ["ALPHA", "BETA", "GAMMA", "check_items", "check_weights", "rocchio"]


#: Rocchio weights, chosen on the fit queries of both dev domains with the default extractor
#: (docs/shop.md); the gain is flat around them, with the query weighted well below the positives
ALPHA = 1.0
BETA = 3.0
GAMMA = 2.0
#: gamma when nothing was marked relevant (negatives only): a strong push away then loses
_GAMMA_NEGATIVES_ONLY = 0.5
#: at most this many feedback items per side (a request cannot make the server embed more)
_MAX_FEEDBACK = 100


def check_weights(alpha: float, beta: float, gamma: float) -> None:
    for name, v in (("alpha", alpha), ("beta", beta), ("gamma", gamma)):
        if isinstance(v, bool) or not isinstance(v, int | float | np.integer | np.floating):
            raise InvalidArgumentError(f"{name} must be a number >= 0; got {v!r}")
        if not np.isfinite(v) or v < 0:
            raise InvalidArgumentError(f"{name} must be a finite number >= 0; got {v!r}")


def check_items(positive: Sequence[object], negative: Sequence[object], has_query: bool) -> None:
    for name, items in (("positive", positive), ("negative", negative)):
        if isinstance(items, str | bytes):
            raise InvalidArgumentError(
                f"{name} must be a list of ids or images; got a single {type(items).__name__}"
            )
        if len(items) > _MAX_FEEDBACK:
            raise InvalidArgumentError(f"{name} holds at most {_MAX_FEEDBACK} items; got {len(items)}")
    if not has_query and not len(positive):
        raise InvalidArgumentError(
            "feedback needs a query or at least one positive item (negatives alone say nothing to look for)"
        )


def _unit(v: np.ndarray) -> np.ndarray:
    n = float(np.linalg.norm(v))
    return v / n if n > 1e-12 else v


def rocchio(
    query: np.ndarray | None,
    positive: np.ndarray | None = None,
    negative: np.ndarray | None = None,
    *,
    alpha: float = ALPHA,
    beta: float = BETA,
    gamma: float = GAMMA,
    gamma_negatives_only: float | None = _GAMMA_NEGATIVES_ONLY,
) -> np.ndarray:
    """The refined, L2-normalised query ``alpha*q + beta*mean(P) - gamma*mean(N)`` (float32).

    ``query``: ``[dim]`` or ``None``; ``positive`` / ``negative``: ``[m, dim]`` (may be empty).
    Without a query the positives' mean is the query.  With negatives only, ``gamma`` is
    ``gamma_negatives_only`` (``None``: ``gamma``).  Falls back to ``query`` (or the
    positives' mean) when the combination cancels out.
    """
    check_weights(alpha, beta, gamma)
    if gamma_negatives_only is not None:
        check_weights(alpha, beta, gamma_negatives_only)
    P = (
        None
        if positive is None or len(positive) == 0
        else np.asarray(positive, np.float32).reshape(len(positive), -1)
    )
    N = (
        None
        if negative is None or len(negative) == 0
        else np.asarray(negative, np.float32).reshape(len(negative), -1)
    )
    if query is None and P is None:
        raise InvalidArgumentError("feedback needs a query or at least one positive item")
    dim = (P if P is not None else np.asarray(query)).shape[-1]
    out = np.zeros(dim, np.float64)
    if query is not None:
        q = np.asarray(query, np.float64).reshape(-1)
        if q.shape[0] != dim:
            raise InvalidArgumentError(f"query has dim {q.shape[0]}, the feedback items have {dim}")
        out += alpha * q
        base = q
    else:
        assert P is not None
        base = P.mean(0).astype(np.float64)
        out += alpha * base
    if P is not None:
        out += beta * P.mean(0)
    if N is not None:
        if N.shape[1] != dim:
            raise InvalidArgumentError(f"negative items have dim {N.shape[1]}, the query has {dim}")
        g = gamma if P is not None or gamma_negatives_only is None else gamma_negatives_only
        out -= g * N.mean(0)
    if not np.isfinite(out).all() or float(np.linalg.norm(out)) < 1e-6:
        out = base
    return _unit(out).astype(np.float32)
