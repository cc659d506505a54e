"""Colour learned from the catalogue's own colour names (a string column of its attributes).

A shop's catalogue usually says what colour each product is ("Navy Blue", "Black", ...).
``train_clusters(..., attributes=CSV, colour_labels="colour")`` learns, from the labelled
catalogue images, a multinomial logistic regression (scikit-learn, ``C =`` :data:`_COLOUR_C`)
from each image's CNN vector (unit length) and colour signature (:mod:`varsitysrch._colour`) to
its colour name, on at most :data:`_MAX_FIT_ROWS` labelled images (seeded sample), and stores it
in the model file: ``model.json`` ``colour_model`` (the column, the colour names, the scale, how
it was fitted) and the arrays ``extra/colour_coef.npy`` (``float32 [names, dim + 112]``) and
``extra/colour_intercept.npy``; never a pickle.

When a search matches colour (``colour_weight > 0``) on such a model, the colour similarity of a
candidate is ``scale * p(the query's colour is the candidate's colour)``: the query's colour
probabilities come from the classifier (its whole-photo vector and colour signature); the
candidate's colour is its label in the model's attributes, or, for an image without one (added
by ``update`` without attributes, or a name the classifier never saw), its own predicted colour
distribution (``scale * sum_c p_query(c) p_candidate(c)``).  The score the search ranks by is
then :func:`~varsitysrch._colour.combine_scores`' ``(1 - w) score + w similarity``, as with the
signatures; :data:`_COLOUR_SCALE` makes "match colour" (:data:`~varsitysrch._colour.MATCH_COLOUR_WEIGHT`)
the trade-off measured in ``docs/quality.md`` ("Colour learned from the catalogue's labels").
A model without a colour model matches colour by the signatures' cosine, as before.

The classifier is the catalogue's own: nothing learned elsewhere ships with the library.
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ._colour import SIGNATURE_DIM
from ._errors import InvalidArgumentError, ModelFileError

log = logging.getLogger(__name__)

__all__ = [
    "ColourModel",
    "colour_model",
    "fit_colour_model",
    "label_codes",
    "labels_from_attributes",
]

#: inverse regularisation of the logistic regression (scikit-learn's ``C``); chosen on the
#: fashion-dev tune half (``benchmarks/colour_labels.py``), docs/quality.md
_COLOUR_C = 10.0
#: labelled images the classifier is fitted on at most (a seeded sample above it)
_MAX_FIT_ROWS = 20_000
#: the solver's tolerance (scikit-learn's ``tol``; its default 1e-4 took twice the time for the
#: same held-out accuracy on fashion-dev: 0.650 vs 0.647, 5-fold)
_COLOUR_TOL = 1e-3
#: the learned colour similarity is this times a probability, so that "match colour"
#: (``colour_weight`` 0.15) over the default ranking (k-reciprocal re-ranked scores) gives the
#: trade-off chosen on the fashion-dev tune half: ``benchmarks/colour_labels.py`` chose weight 0.3
#: at scale 0.3 (same-type P@10 within 0.01 of the default's), and 0.15 x 0.73 / 0.85 = 0.3 x 0.3 / 0.7
_COLOUR_SCALE = 0.73
#: labelled images needed, and at least two colour names among them
_MIN_LABELLED = 10


def _features(vectors: np.ndarray, signatures: np.ndarray) -> np.ndarray:
    """The classifier's input: unit CNN vectors beside the colour signatures (float32)."""
    V = np.asarray(vectors, np.float32)
    V = V / np.maximum(np.linalg.norm(V, axis=-1, keepdims=True), 1e-12)
    return np.concatenate([V, np.asarray(signatures, np.float32)], axis=-1)


@dataclass(frozen=True)
class ColourModel:
    """A colour classifier learned from a catalogue's colour names (see the module docstring)."""

    column: str  #: the attributes column it was learned from
    names: tuple[str, ...]  #: the colour names, in the order of ``coef``'s rows
    coef: np.ndarray  #: ``float32 [len(names), dim + SIGNATURE_DIM]``
    intercept: np.ndarray  #: ``float32 [len(names)]``
    scale: float = _COLOUR_SCALE
    fitted_on: int = 0  #: labelled images the classifier saw
    seconds: float = 0.0

    @property
    def dim(self) -> int:
        """The CNN vectors' dimension it takes."""
        return int(self.coef.shape[1]) - SIGNATURE_DIM

    def proba(self, vectors: np.ndarray, signatures: np.ndarray) -> np.ndarray:
        """``float32 [n, len(names)]``: each image's colour probabilities (rows sum to 1)."""
        F = _features(np.atleast_2d(vectors), np.atleast_2d(signatures))
        z = F @ self.coef.T + self.intercept
        z -= z.max(axis=1, keepdims=True)
        e = np.exp(z)
        return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)

    def similarity(
        self,
        query: np.ndarray,
        codes: np.ndarray,
        inputs: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]],
    ) -> np.ndarray:
        """``scale * p(query's colour = each candidate's)``: ``query`` = the query's colour
        probabilities, ``codes`` = each candidate's colour (row of ``names``; -1: unknown, then its
        predicted distribution from ``inputs(positions)`` = those candidates' vectors and colour
        signatures, asked for only when some candidate has no colour)."""
        codes = np.asarray(codes, np.int64)
        out = np.empty(len(codes), np.float32)
        known = codes >= 0
        out[known] = query[codes[known]]
        if not known.all():
            unknown = np.flatnonzero(~known)
            out[unknown] = self.proba(*inputs(unknown)) @ query
        return (self.scale * out).astype(np.float32)

    # ------------------------------------------------------------------ the model file
    def to_config(self) -> dict[str, Any]:
        return {
            "column": self.column,
            "names": list(self.names),
            "scale": self.scale,
            "features": "unit CNN vector + colour signature",
            "classifier": "multinomial logistic regression",
            "C": _COLOUR_C,
            "fitted_on": self.fitted_on,
            "seconds": round(self.seconds, 1),
        }

    def to_arrays(self) -> dict[str, np.ndarray]:
        return {"colour_coef": self.coef, "colour_intercept": self.intercept}

    @classmethod
    def from_parts(cls, cfg: Any, arrays: Mapping[str, np.ndarray], dim: int, where: str) -> ColourModel:
        """From ``model.json`` ``colour_model`` and its arrays; a damaged or tampered record is a
        :class:`~varsitysrch.ModelFileError` naming what is wrong."""

        def bad(what: str) -> ModelFileError:
            return ModelFileError(f"corrupt model file {where}: colour model: {what}")

        if not isinstance(cfg, Mapping):
            raise bad(f"'colour_model' must be an object; got {type(cfg).__name__}")
        column, names, scale = cfg.get("column"), cfg.get("names"), cfg.get("scale")
        if not isinstance(column, str) or not column:
            raise bad("'column' must be a non-empty string")
        if (
            not isinstance(names, list)
            or len(names) < 2
            or not all(isinstance(x, str) for x in names)
            or len(set(names)) != len(names)
        ):
            raise bad("'names' must be a list of at least two distinct strings")
        if isinstance(scale, bool) or not isinstance(scale, int | float) or not 0.0 < float(scale) <= 1.0:
            raise bad(f"'scale' must be a number in (0, 1]; got {scale!r}")
        coef, intercept = arrays.get("colour_coef"), arrays.get("colour_intercept")
        if coef is None or intercept is None:
            raise bad("colour_coef / colour_intercept missing")
        if coef.shape != (len(names), dim + SIGNATURE_DIM) or intercept.shape != (len(names),):
            raise bad(
                f"arrays of shape {coef.shape} and {intercept.shape}; expected "
                f"({len(names)}, {dim + SIGNATURE_DIM}) and ({len(names)},)"
            )
        if not (np.isfinite(coef).all() and np.isfinite(intercept).all()):
            raise bad("non-finite coefficients")
        fitted = cfg.get("fitted_on", 0)
        seconds = cfg.get("seconds", 0.0)
        return cls(
            column,
            tuple(names),
            np.asarray(coef, np.float32),
            np.asarray(intercept, np.float32),
            float(scale),
            int(fitted) if isinstance(fitted, int) and not isinstance(fitted, bool) else 0,
            float(seconds) if isinstance(seconds, int | float) and not isinstance(seconds, bool) else 0.0,
        )


def fit_colour_model(
    vectors: np.ndarray,
    signatures: np.ndarray,
    labels: Sequence[str | None],
    column: str,
    *,
    random_state: int = 0,
) -> ColourModel:
    """Learn the colour classifier from the images whose label is not ``None``.

    ``vectors``: the catalogue's CNN vectors (any float dtype; a memory map is read by rows);
    ``signatures``: their colour signatures; ``labels``: each image's colour name or ``None``.
    Refused (:class:`~varsitysrch.InvalidArgumentError` naming ``colour_labels``) with fewer than
    10 labelled images or fewer than two colour names.
    """
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    n = len(labels)
    if len(vectors) != n or len(signatures) != n:
        raise InvalidArgumentError(
            f"colour_labels: {n} labels for {len(vectors)} vectors and {len(signatures)} signatures"
        )
    rows = np.fromiter((i for i, x in enumerate(labels) if x is not None), np.int64)
    names = sorted({labels[i] for i in rows.tolist()})
    if len(rows) < _MIN_LABELLED or len(names) < 2:
        raise InvalidArgumentError(
            f"colour_labels={column!r}: the column must name a colour for at least {_MIN_LABELLED} "
            f"catalogue images, with at least two different colours; got {len(rows)} labelled images "
            f"and {len(names)} colour name(s)"
        )
    if len(rows) > _MAX_FIT_ROWS:
        rng = np.random.default_rng(random_state)
        rows = np.sort(rng.choice(rows, _MAX_FIT_ROWS, replace=False))
    code = {c: i for i, c in enumerate(names)}
    y = np.fromiter((code[labels[i]] for i in rows.tolist()), np.int64)
    F = _features(np.asarray(vectors[rows], np.float32), np.asarray(signatures[rows], np.float32))
    t0 = time.perf_counter()
    clf = LogisticRegression(C=_COLOUR_C, tol=_COLOUR_TOL, max_iter=1000, random_state=random_state)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        clf.fit(F, y)
    if any(issubclass(w.category, ConvergenceWarning) for w in caught):
        log.info("colour classifier: the solver stopped at its iteration limit (1000)")
    seconds = time.perf_counter() - t0
    coef = np.zeros((len(names), F.shape[1]), np.float32)
    intercept = np.full(len(names), -1e4, np.float32)  # a name absent from the sample: never predicted
    if len(clf.classes_) == 2:  # scikit-learn's binary case: one row for class 1
        w, b = clf.coef_[0] / 2, clf.intercept_[0] / 2
        coef[clf.classes_] = np.stack([-w, w])
        intercept[clf.classes_] = [-b, b]
    else:
        coef[clf.classes_] = clf.coef_
        intercept[clf.classes_] = clf.intercept_
    log.info(
        "colour classifier from %r: %d colour names, fitted on %d labelled images in %.1fs",
        column,
        len(names),
        len(rows),
        seconds,
    )
    return ColourModel(column, tuple(names), coef, intercept, _COLOUR_SCALE, len(rows), seconds)


def colour_model(
    config: Mapping[str, Any], arrays: Mapping[str, np.ndarray], where: str
) -> ColourModel | None:
    """The model file's colour model (``None``: it has none)."""
    cfg = config.get("colour_model")
    if cfg is None:
        return None
    return ColourModel.from_parts(cfg, arrays, int(config["dim"]), where)


def label_codes(model: ColourModel, attributes: Any, n: int) -> np.ndarray:
    """``int32 [n]``: each catalogue image's colour as a row of ``model.names`` (-1: none, or a
    name the classifier does not know), from the model's attributes column ``model.column``."""
    out = np.full(n, -1, np.int32)
    col = None if attributes is None else attributes.columns.get(model.column)
    if col is None or col.kind != "string":
        return out
    lookup = {c: i for i, c in enumerate(model.names)}
    table = np.array([lookup.get(c, -1) for c in col.categories] + [-1], np.int32)  # code -1 -> last
    values = np.asarray(col.values, np.int64)
    return table[np.where(values >= 0, values, len(col.categories))]


def labels_from_attributes(attributes: Any, column: str) -> list[str | None]:
    """Each catalogue image's value of the string column ``column`` (``None`` when missing);
    refused, naming ``colour_labels``, when the model has no such string column."""
    if attributes is None or column not in attributes.columns:
        have = [] if attributes is None else attributes.names
        raise InvalidArgumentError(
            f"colour_labels={column!r}: the catalogue's attributes have no such column "
            f"({'columns: ' + ', '.join(have) if have else 'no attributes given: pass attributes=CSV'})"
        )
    col = attributes.columns[column]
    if col.kind != "string":
        raise InvalidArgumentError(
            f"colour_labels={column!r}: the column must hold colour names (text); it is {col.kind}"
        )
    cats = col.categories
    return [cats[int(v)] if v >= 0 else None for v in np.asarray(col.values).tolist()]
