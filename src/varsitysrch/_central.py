"""A cluster's members, most central first: the one order every view of a cluster shows.

The report's contact sheets (:mod:`varsitysrch._report`) and the web page's cluster previews and
pages (:mod:`varsitysrch.service.app`) show a cluster through :func:`central_first`, so both show
the same photos: the members nearest the cluster's centre (the model file's ``distances``, in
the clustering space), ties broken by catalogue row.  A listing in catalogue order (alphabetical
ids) previews whatever sorts first: outliers and other products as often as typical members.
"""

from __future__ import annotations

import numpy as np

__all__ = ["central_first"]


def central_first(rows: np.ndarray, distances: np.ndarray) -> np.ndarray:
    """``rows`` (catalogue rows of one cluster) ordered by ``distances[row]`` to the cluster's centre,
    nearest first; equal distances by row.  The last rows are the cluster's most distant members."""
    rows = np.asarray(rows, np.int64)
    d = np.asarray(distances)[rows]
    return rows[np.lexsort((rows, d))]
