"""Collapse near-duplicates in a result list: one product shot several times is shown once.

Greedy, in rank order: a hit is kept unless its cosine similarity to a hit already kept is
at least ``threshold``; a dropped hit is attached to the kept hit it is most similar to
(the page can show "3 more photos of this").  Similarities are those of the feature
store's L2-normalised vectors -- the space :func:`varsitysrch.find_duplicates` measures
in -- so the default threshold is its :data:`~varsitysrch._duplicates.DEFAULT_THRESHOLD`
(chosen on planted re-encoded, resized, cropped and mirrored copies of clothing-small and
grocery-train; what collapse does with it is measured in ``docs/shop.md``).  The cost is one
``m x m`` product over the ``m`` hits considered.
"""

from __future__ import annotations

import numpy as np

from ._duplicates import DEFAULT_THRESHOLD
from ._errors import InvalidArgumentError

__all__ = ["check_collapse", "collapse_rows"]


#: cosine threshold above which two hits count as the same product (find_duplicates' default)
_COLLAPSE_THRESHOLD = DEFAULT_THRESHOLD


def check_collapse(collapse: bool | float | None) -> float | None:
    """``collapse`` as a threshold (``None`` = off): ``True`` is the default threshold."""
    if collapse is None or collapse is False:
        return None
    if collapse is True:
        return _COLLAPSE_THRESHOLD
    if isinstance(collapse, int | float | np.floating) and 0.0 < float(collapse) <= 1.0:
        return float(collapse)
    raise InvalidArgumentError(
        f"collapse must be true, false or a cosine threshold in (0, 1]; got {collapse!r}"
    )


def collapse_rows(
    vectors: np.ndarray, threshold: float = _COLLAPSE_THRESHOLD
) -> tuple[np.ndarray, np.ndarray]:
    """Greedy collapse of ``m`` hits given in rank order by their vectors ``[m, dim]``.

    Returns ``(kept, parent)``: the positions kept (ascending, so rank order is kept) and,
    for every position, the kept position it belongs to (itself when kept).
    """
    V = np.asarray(vectors, np.float32)
    m = len(V)
    parent = np.arange(m)
    if m < 2:
        return parent.copy(), parent
    V = V / np.maximum(np.linalg.norm(V, axis=1, keepdims=True), 1e-12)
    G = V @ V.T
    kept: list[int] = [0]
    for i in range(1, m):
        sims = G[i, kept]
        j = int(np.argmax(sims))
        if sims[j] >= threshold:
            parent[i] = kept[j]
        else:
            kept.append(i)
    return np.asarray(kept, np.int64), parent
