"""Relevance feedback: "more like these, less like those" as one refined query (Rocchio).

Given the query vector ``q`` (optional), the vectors a shopper marked relevant (``P``) and
irrelevant (``N``), all L2-normalised and in the space results are ranked in::

    q' = alpha * q + beta * mean(P) - gamma * mean(N),   then L2-normalised

and ``q'`` is searched like any query (one search, so filters, collapse and the cluster
probing work unchanged).  Without a query the positives stand in for it (``alpha`` is
then unused); with no positive at all, ``q'`` is the query pushed away from the negatives.
Items already judged are left out of the refined results by default (the shopper has seen
them; a negative is never shown again).

The weights are measured, not guessed: ``benchmarks/bench_feedback.py`` simulates one round
of feedback on the top 10 (relevant = same product label) on clothing-small and
grocery-train, chooses the weights on one half of the queries and reports the gain on the
other half (figures in ``docs/shop.md``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ._errors import InvalidArgumentError

#: Rocchio weights, chosen on the fit queries of both dev domains with the default extractor
#: (docs/shop.md); the gain is flat around them, with the query weighted well below the positives
ALPHA = 1.0
BETA = 3.0
GAMMA = 2.0
#: gamma when nothing was marked relevant (negatives only): a strong push away then loses
GAMMA_NEGATIVES_ONLY = 0.5
#: at most this many feedback items per side (a request cannot make the server embed more)
MAX_FEEDBACK = 100


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
        if len(items) > MAX_FEEDBACK:
            raise InvalidArgumentError(f"{name} holds at most {MAX_FEEDBACK} items; got {len(items)}")
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
    gamma_negatives_only: float | None = GAMMA_NEGATIVES_ONLY,
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


# ====================================================================== search with feedback
def _resolve(searcher: Any, item: Any, what: str) -> tuple[np.ndarray, np.ndarray, int | None]:
    """``(raw vector, ranking-space vector, catalogue row or None)`` of a feedback item.

    An item is a catalogue id (a ``str`` the catalogue holds), an image (path, bytes, PIL
    image) or a raw feature vector (``numpy`` array of the model's dim).
    """
    if isinstance(item, str):
        row = searcher._id_index.get(item)
        if row is not None:
            return np.asarray(searcher.vectors[row], np.float32), searcher._scoring[row], int(row)
    if isinstance(item, np.ndarray):
        raw = np.asarray(item, np.float32).reshape(-1)
        if raw.shape[0] != searcher.vectors.shape[1] or not np.isfinite(raw).all():
            raise InvalidArgumentError(
                f"{what}: a vector must be {searcher.vectors.shape[1]} finite numbers; got shape {item.shape}"
            )
        raw = _unit(raw)
    else:
        if isinstance(item, str | os.PathLike) and not Path(item).exists():
            raise InvalidArgumentError(
                f"{what} item {str(item)!r} is neither a catalogue id nor an image file"
            )
        raw = searcher.embed(item)
    return raw, searcher.ranking_vector(raw), None


def feedback_search(
    searcher: Any,
    query: Any = None,
    positive: Sequence[Any] = (),
    negative: Sequence[Any] = (),
    top_n: int = 10,
    *,
    where: Any = None,
    collapse: bool | float | None = None,
    nprobe: int | None = None,
    exact: bool = False,
    alpha: float = ALPHA,
    beta: float = BETA,
    gamma: float = GAMMA,
    exclude_judged: bool = True,
) -> list[Any]:
    """:meth:`varsitysrch.Searcher.search_feedback` (see there)."""
    positive = list(positive or ())
    negative = list(negative or ())
    check_items(positive, negative, query is not None)
    check_weights(alpha, beta, gamma)
    q = None if query is None else _resolve(searcher, query, "query")
    pos = [_resolve(searcher, x, "positive") for x in positive]
    neg = [_resolve(searcher, x, "negative") for x in negative]

    def side(items: list[tuple[np.ndarray, np.ndarray, int | None]], k: int) -> np.ndarray | None:
        return np.stack([it[0] if k == 0 else it[1] for it in items]) if items else None

    kw = {"alpha": alpha, "beta": beta, "gamma": gamma}
    raw = rocchio(None if q is None else q[0], side(pos, 0), side(neg, 0), **kw)  # probes the clusters
    ranked = rocchio(None if q is None else q[1], side(pos, 1), side(neg, 1), **kw)  # ranks the rows
    exclude = {r for _, _, r in neg if r is not None}  # what was rejected is never shown again
    if exclude_judged:  # the shopper has seen the positives, and the query itself
        exclude |= {r for _, _, r in pos if r is not None}
        if q is not None and q[2] is not None:
            exclude.add(q[2])
    return list(
        searcher.search_vector(
            raw,
            top_n,
            nprobe=nprobe,
            exact=exact,
            expand=0,
            exclude=exclude,
            where=where,
            collapse=collapse,
            ranked=ranked,
        )
    )
