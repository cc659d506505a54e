"""The one query pipeline: every search, from every entry point, is :func:`run_search`.

:meth:`varsitysrch.Searcher.search` / ``search_id`` / ``search_vector`` / ``search_feedback``,
:func:`varsitysrch.search_similar_images`, :class:`varsitysrch.VaSrch`, the CLI and the HTTP
routes all build a :class:`Query` and a :class:`~varsitysrch.SearchOptions` and call
:func:`run_search`, so the same query with the same options gives the same hits and scores
wherever it comes from.  The stages run in this order, each written once, below in this file:

1. **decode** (:func:`_decode`) -- one bounded decode through the decode gate
   (:func:`varsitysrch._images.open_image`: allow-listed formats, bomb and aspect limits).
   The photo the views need is kept at most :data:`WORK_SIDE` pixels on its long side.
   A caller may run this stage elsewhere (:class:`Stages`: the service runs it in its
   bounded decode pool).
2. **views** (:func:`_views`) -- the whole photo, plus five crops / mirrors when asked, or
   when ``views="auto"`` decides that a shop photo is searched against a studio catalogue.
3. **embed** (:func:`_embed`) -- every view of the query in one batch (:class:`Stages`: the
   service embeds through its micro-batcher).  A catalogue id or a vector skips 1-3; relevance
   feedback forms one refined vector here (Rocchio, :mod:`varsitysrch._feedback`).
4. **candidates** -- the index's best rows (:mod:`varsitysrch._candidates`: ``nprobe``
   clusters or IVF lists, the ``where`` filter applied while gathering).
5. **ranking** (:func:`_ranked`) -- query expansion: the query plus its best results, searched again.
6. **k-reciprocal re-ranking** (:func:`_graph_rerank`, on when the model has a neighbour graph,
   as models trained by default do; ``rerank="none"`` switches it off) -- the
   top :data:`~varsitysrch._rerank.POOL` candidates re-ordered over the catalogue's neighbour
   graph stored in the model (:mod:`varsitysrch._rerank`), the first hit kept in place.
7. **colour re-ranking** (:func:`_colour_rerank`) -- the product's colour mixed into the ranking.
8. **merge views** (:func:`_merge_views`) -- each catalogue image at its best view.
9. **collapse** (:func:`_collapse`) -- near-duplicates folded into the best-ranked copy, over the
   merged list (more results fetched until ``top_n`` distinct ones come back, when they exist).
10. **cut-offs** and **hits** (:func:`_hits`) -- ``include_self``, ``min_score``,
    ``min_confidence`` and ``top_n``; each hit with its score and confidence.

**The score.**  ``Hit.score`` has one meaning at every catalogue size and with every option:
the plain cosine similarity, in the raw feature space of the extractor, between the hit's
stored vector and the query (its best view, when it was searched as several views; the
positives' side of the refined query after relevance feedback).  The ranking may use another
space and other signals (the catalogue-centred PCA, query expansion, the crop discount, colour,
the negatives of feedback, k-reciprocal re-ranking), so scores need not decrease strictly down
the list.
``confidence`` is the percentile of the score among the catalogue's own nearest-neighbour
cosines (:mod:`varsitysrch._confidence`), made monotone in rank (the least-squares
non-increasing fit, :func:`~varsitysrch._confidence.monotone_in_rank`): a hit is never more
confident than a better-ranked one, so the match words never improve down a list.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
from PIL import Image

from ._candidates import Scan
from ._collapse import collapse_rows
from ._colour import (
    PLAIN_DECODE_SIZE,
    border_share,
    colour_inputs,
    colour_signature,
    combine_scores,
)
from ._confidence import monotone_in_rank
from ._errors import ImageError, IncompatibleModelError, InvalidArgumentError
from ._feedback import ALPHA, BETA, GAMMA, check_items, check_weights, rocchio
from ._hit import Hit
from ._images import ImageSource, _fit, decode_failure, decode_rgb, load_image_fits, open_image
from ._options import SearchOptions
from ._paths import resolve_image
from ._postprocess import QE_SELF_COSINE, QE_SELF_MARGIN, expand_query
from ._query import AUTO_CROP_DISCOUNT, CLUTTERED_BORDER_SHARE, check_views, crop_boxes, parse_views
from ._rerank import POOL as RERANK_POOL
from ._rerank import NeighbourGraph, keep_count, model_graph, rerank

if TYPE_CHECKING:
    from ._search import Searcher

_T = TypeVar("_T")

#: the decoded photo kept for views, the border test and colour is at most this many pixels
#: on its long side, times the extractor's input size (crops of 70 % still have more pixels
#: than the extractor reads); the full decode is dropped as soon as it is reduced
_WORK_SIDE_FACTOR = 2
#: with a colour weight, colour re-scores the top ``_COLOUR_POOL * top_n`` of the ranking
_COLOUR_POOL = 5


# ====================================================================== what is searched
@dataclass(frozen=True)
class Query:
    """One query: an ``image`` (path, bytes or PIL image), a catalogue ``image_id`` or a raw
    feature ``vector`` (``[dim]``, or ``[V, dim]`` views), optionally refined by relevance
    feedback (``positive`` / ``negative``: ids, images or vectors; then ``image`` / ``image_id``
    / ``vector`` may be left out).

    ``colour``: the colour signature of a vector query (colour needs it); ``discount``: for a
    vector query of several views (the whole photo first), what the crop views' scores count
    less in the ranking (as ``views="auto"`` does); ``exclude``:
    catalogue rows never returned nor used to expand the query; ``feedback``: the Rocchio
    weights ``(alpha, beta, gamma)``; ``exclude_judged``: judged items (and a catalogue
    query) are not returned after feedback.
    """

    image: ImageSource | None = None
    image_id: str | None = None
    vector: np.ndarray | None = None
    colour: np.ndarray | None = None
    positive: tuple[Any, ...] = ()
    negative: tuple[Any, ...] = ()
    feedback: tuple[float, float, float] = (ALPHA, BETA, GAMMA)
    exclude_judged: bool = True
    exclude: frozenset[int] = field(default_factory=frozenset)
    discount: float = 0.0

    def __post_init__(self) -> None:
        given = sum(x is not None for x in (self.image, self.image_id, self.vector))
        if given > 1:
            raise InvalidArgumentError("a query is one of image, image_id or vector; got more than one")
        if self.positive or self.negative:
            check_items(self.positive, self.negative, given == 1)
            check_weights(*self.feedback)
        elif given == 0:
            raise InvalidArgumentError("a query needs an image, an image_id or a vector")

    @property
    def is_feedback(self) -> bool:
        return bool(self.positive or self.negative)


def _inline(job: Callable[[], _T]) -> _T:
    return job()


@dataclass(frozen=True)
class Stages:
    """Where the two costly stages run.  Default: in the caller's thread, with the Searcher's
    embedder.  The service passes its own: ``open`` (its upload allow-list), ``decode`` (runs
    a decode job in its bounded pool and waits for it) and ``embed`` (a ``uint8 [V, s, s, 3]``
    batch through its micro-batcher, returning ``[V, dim]`` unit vectors)."""

    open: Callable[[Any], Image.Image] = open_image
    decode: Callable[[Callable[[], Any]], Any] = _inline
    embed: Callable[[np.ndarray], np.ndarray] | None = None


@dataclass(frozen=True)
class SearchResult:
    """The hits of one search and how they were found."""

    hits: list[Hit]
    scan: Scan  #: what the index scanned for the query's first view
    views: int  #: how many views of the query were searched
    crops: bool  #: whether crop views were searched (asked for, or decided by ``views="auto"``)
    discount: float  #: what the crop views counted less in the ranking (``views="auto"``'s discount)


# ====================================================================== 1. decode
@dataclass
class _Decoded:
    whole: np.ndarray  #: uint8 [s, s, 3]: the photo fitted for the extractor
    photo: Image.Image | None  #: the photo, RGB, long side <= WORK_SIDE (None: not needed)


def _decode(opened: Image.Image, size: int, resize: str, keep: bool) -> _Decoded:
    """Decode an opened image (through the decode gate) once: the whole photo fitted for the
    extractor, and (``keep``) the photo reduced for the views, the border test and colour."""
    if not keep:  # exactly as the catalogue was decoded (load_image)
        return _Decoded(load_image_fits(opened, size, (resize,))[0], None)
    work = _WORK_SIDE_FACTOR * size
    # the catalogue's decode (decode_rgb, as extraction and load_image): the whole view is exactly the
    # input the photo was embedded from in the catalogue, whatever views are searched
    im = decode_rgb(opened, size, resize == "letterbox")
    try:
        whole = np.asarray(_fit(im, size, resize), np.uint8)
        if max(im.size) > work:  # keep a small copy; the full decode is freed with `im`
            s = work / max(im.size)
            im = im.resize(
                (max(1, round(im.size[0] * s)), max(1, round(im.size[1] * s))), Image.Resampling.BOX
            )
    except ImageError:
        raise
    except Exception as exc:
        raise decode_failure(exc) from exc
    return _Decoded(whole, im)


# ====================================================================== 2. views
def _views(
    decoded: _Decoded, views: str | None, studio: bool, size: int, resize: str
) -> tuple[np.ndarray, float, bool]:
    """``(uint8 [V, s, s, 3] views, crop discount, crops searched)``; the whole photo first.

    ``"auto"``: crops only for a photo whose border is cluttered (less than
    :data:`~varsitysrch._query.CLUTTERED_BORDER_SHARE` one colour) against a studio catalogue;
    their scores then count :data:`~varsitysrch._query.AUTO_CROP_DISCOUNT` less in the ranking.
    """
    discount = 0.0
    if views == "auto":
        photo = decoded.photo
        shop_photo = (
            studio
            and photo is not None
            and border_share(np.asarray(_fit(photo, PLAIN_DECODE_SIZE, "squash"), np.uint8))
            < CLUTTERED_BORDER_SHARE
        )
        views, discount = ("crops", AUTO_CROP_DISCOUNT) if shop_photo else (None, 0.0)
    crops, flip = parse_views(views)
    if not (crops or flip) or decoded.photo is None:
        return decoded.whole[None], 0.0, False
    photo = decoded.photo
    out = []
    for box in crop_boxes(*photo.size) if crops else [(0, 0, *photo.size)]:
        if box == (0, 0, *photo.size):
            arr = decoded.whole  # the whole photo as the catalogue's were fitted
        else:
            arr = np.asarray(_fit(photo.crop(box), size, resize), np.uint8)
        out.append(arr)
        if flip:
            out.append(np.ascontiguousarray(arr[:, ::-1]))
    return np.stack(out), discount, crops


def _query_colour(decoded: _Decoded) -> np.ndarray:
    """The query's colour signature, from the same reduced image as a catalogue row's
    (:func:`~varsitysrch._colour.colour_inputs`): a catalogue photo searched as a query gets
    its stored signature."""
    assert decoded.photo is not None
    return colour_signature(colour_inputs(decoded.photo)[0])


# ====================================================================== 3. embed
@dataclass
class _Vectors:
    """The query ready for the index: per view the raw vector (probes the index), the
    ranking-space vector (ranks), and the vector scores are measured against."""

    raw: np.ndarray  #: [V, dim]
    ranking: np.ndarray  #: [V, d_rank]
    scoring: np.ndarray  #: [V, dim]
    colour: np.ndarray | None = None
    discount: float = 0.0
    crops: bool = False
    exclude: frozenset[int] = frozenset()
    self_row: int | None = None  #: the catalogue row of an id query
    expand: bool = True  #: feedback is not expanded (the judged items already moved it)


def _embed(s: Searcher, batch: np.ndarray, stages: Stages) -> np.ndarray:
    vecs = stages.embed(batch) if stages.embed is not None else s._query_embedder.embed(batch)
    return np.asarray(vecs, np.float32).reshape(len(batch), -1)


def _image_vectors(
    s: Searcher, source: Any, views: str | None, colour: bool, stages: Stages
) -> tuple[np.ndarray, float, bool, np.ndarray | None]:
    """Stages 1-3 for an image: ``(vectors [V, dim], discount, crops, colour signature)``."""
    ex = s.extractor  # the query side's identity: the Searcher's own ONNX session only if it embeds
    if ex is None:
        ex = s._query_embedder.extractor  # raises: a model without an extractor identity, before decoding
    crops, flip = parse_views(views)
    keep = crops or flip or colour or (views == "auto" and s._studio_catalogue())
    opened = open_image(stages.open(source))  # the gate's pixel and aspect bounds, whoever opened it
    decoded: _Decoded = stages.decode(lambda: _decode(opened, ex.input_size, ex.resize, keep))
    batch, discount, fired = _views(decoded, views, s._studio_catalogue(), ex.input_size, ex.resize)
    sig = _query_colour(decoded) if colour else None
    return _embed(s, batch, stages), discount, fired, sig


@dataclass(frozen=True)
class _EmbeddedQuery:
    """Stages 1-3 of an image query, kept to be searched again (:func:`embed_query`)."""

    vectors: np.ndarray  #: [V, dim] raw unit vectors, the whole photo first
    discount: float  #: what the crop views count less (``views="auto"``'s discount)
    crops: bool  #: whether crop views were made
    colour: np.ndarray | None  #: the query's colour signature (when asked for)


def embed_query(
    s: Searcher, image: ImageSource, views: str | None, colour: bool = False, stages: Stages | None = None
) -> _EmbeddedQuery:
    """Decode, view and embed an image query exactly as :func:`run_search` does (``views="auto"``
    decided against this Searcher's catalogue), for a caller that searches it several times:
    ``Query(vector=q.vectors, discount=q.discount, colour=q.colour)`` then gives the same hits
    as ``Query(image=image)`` (:func:`varsitysrch.evaluate` measures this way)."""
    V, discount, crops, sig = _image_vectors(s, image, check_views(views), colour, stages or Stages())
    return _EmbeddedQuery(V, discount, crops, sig)


def _item(s: Searcher, item: Any, what: str, stages: Stages) -> tuple[np.ndarray, int | None]:
    """A feedback item as ``(raw unit vector, catalogue row or None)``: a catalogue id, an image
    (path, bytes, PIL image) or a raw feature vector."""
    if isinstance(item, str):
        row = s._id_index.get(item)
        if row is not None:
            return np.asarray(s.vectors[row], np.float32), int(row)
    if isinstance(item, np.ndarray):
        raw = np.asarray(item, np.float32).reshape(-1)
        if raw.shape[0] != s.dim or not np.isfinite(raw).all():
            raise InvalidArgumentError(
                f"{what}: a vector must be {s.dim} finite numbers; got shape {item.shape}"
            )
        return raw / max(float(np.linalg.norm(raw)), 1e-12), None
    if isinstance(item, str | os.PathLike) and not Path(item).exists():
        raise InvalidArgumentError(f"{what} item {str(item)!r} is neither a catalogue id nor an image file")
    return _image_vectors(s, item, None, False, stages)[0][0], None


def _query_vectors(s: Searcher, q: Query, o: SearchOptions, w: float, stages: Stages) -> _Vectors:
    """Stages 1-3: the query as vectors (a feedback query refined into one)."""
    sig = q.colour
    discount, crops, self_row = 0.0, False, None
    if q.image_id is not None:
        self_row = s._id_index.get(q.image_id)
        if self_row is None:
            raise InvalidArgumentError(f"image_id {q.image_id!r} is not in the catalogue")
        V = np.asarray(s.vectors[self_row], np.float32)[None]
        if w > 0 and sig is None:
            sig = s._colour_signatures()[self_row]
    elif q.vector is not None:
        V = np.asarray(q.vector, np.float32).reshape(-1, np.shape(q.vector)[-1])
        if V.shape[1] != s.dim:
            raise IncompatibleModelError(f"query has dim {V.shape[1]}, the index has {s.dim}")
        discount = float(q.discount)
    elif q.image is not None:
        views = None if q.is_feedback else o.views  # feedback refines the whole photo's vector
        V, discount, crops, sig = _image_vectors(s, q.image, views, w > 0 and sig is None, stages)
        sig = q.colour if q.colour is not None else sig
    else:
        V = np.zeros((0, s.dim), np.float32)
    if w > 0 and sig is None:
        raise InvalidArgumentError(
            "colour_weight > 0 needs the query's colour signature: search by image or catalogue id "
            "(a vector query has no colour)"
        )
    if not q.is_feedback:
        return _Vectors(V, s._to_ranking(V), V, sig, discount, crops, frozenset(q.exclude), self_row)
    # relevance feedback: one refined query (Rocchio), in the raw space (probes) and the ranking
    # space (ranks); scores are measured against its positive side (query + positives)
    pos = [_item(s, x, "positive", stages) for x in q.positive]
    neg = [_item(s, x, "negative", stages) for x in q.negative]
    base = V[0] if len(V) else None
    P = np.stack([p[0] for p in pos]) if pos else None
    N = np.stack([x[0] for x in neg]) if neg else None
    a, b, g = q.feedback
    raw = rocchio(base, P, N, alpha=a, beta=b, gamma=g)
    ranked = rocchio(
        None if base is None else s._to_ranking(base[None])[0],
        None if P is None else s._to_ranking(P),
        None if N is None else s._to_ranking(N),
        alpha=a,
        beta=b,
        gamma=g,
    )
    anchor = rocchio(base, P, None, alpha=a, beta=b, gamma=0.0)
    exclude = set(q.exclude) | {r for _, r in neg if r is not None}  # a rejected item is never shown again
    if q.exclude_judged:
        exclude |= {r for _, r in pos if r is not None}
        if self_row is not None:
            exclude.add(self_row)
    return _Vectors(
        raw[None], ranked[None], anchor[None], sig, 0.0, False, frozenset(exclude), self_row, expand=False
    )


# ====================================================================== 4-5. candidates, ranking
def _ranked(
    s: Searcher, v: np.ndarray, vs: np.ndarray, need: int, qe: int, o: SearchOptions, probe: int,
    flt: Any, exclude: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, Scan, np.ndarray]:  # fmt: skip
    """Stage 4 (the index's candidates) and 5 (query expansion): ``(rows, ranking scores, scan,
    the query as ranked, in the ranking space)``.

    Expansion: the query plus its ``qe`` best results (``sim ** 3``-weighted, alpha-QE) is
    searched again.  A first-pass result at least :data:`~varsitysrch._postprocess.QE_SELF_COSINE`
    similar is the query itself (or a copy): it does not expand the query and keeps the first
    places, at its first-pass score.
    """
    index = s._index
    if not qe:
        return (*index.rank(v, vs, need, probe, o.exact, flt, exclude), vs)
    rows, sims, _ = index.rank(v, vs, qe + QE_SELF_MARGIN, probe, o.exact, flt, exclude)
    copy = sims >= QE_SELF_COSINE
    first, first_sims = rows[~copy][:qe], sims[~copy][:qe]
    v2 = expand_query(v, np.asarray(s.vectors[first], np.float32), first_sims)
    vs2 = v2 if s._space is None else expand_query(vs, s._scoring[first], first_sims)
    r2, s2, scan = index.rank(v2, vs2, need + int(copy.sum()), probe, o.exact, flt, exclude)
    if copy.any():
        keep = ~np.isin(r2, rows[copy])
        r2 = np.concatenate([rows[copy], r2[keep]])
        s2 = np.concatenate([sims[copy], s2[keep]])
    return r2[:need], s2[:need], scan, vs2


# ====================================================================== 6. k-reciprocal re-ranking
def _graph_rerank(
    s: Searcher, g: NeighbourGraph, query: np.ndarray, rows: np.ndarray, scores: np.ndarray,
    self_row: int | None,
) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """The candidates re-ordered by the k-reciprocal distance over the model's neighbour graph
    (:func:`varsitysrch._rerank.rerank`); the leading copies of the query and the first hit after
    them keep their places.  ``self_row``: a catalogue image searched by id (its own set)."""
    if not len(rows):
        return rows, scores
    return rerank(g, s._scoring, query, rows, scores, self_row=self_row, keep=keep_count(scores))


# ====================================================================== 7. colour re-ranking
def _colour_rerank(
    s: Searcher, rows: np.ndarray, scores: np.ndarray, colour: np.ndarray | None, w: float,
    proba: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """``(1 - w) ranking score + w colour similarity`` over the ranked pool, re-sorted.  The
    similarity: the signatures' cosine, or with a learned colour model (``proba``: the query's
    colour probabilities) how likely the query is of each candidate's colour."""
    if w <= 0 or not len(rows):
        return rows, scores
    assert colour is not None
    cm = s._colour_model
    if cm is not None and proba is not None and s._colour_codes is not None:
        similarity = cm.similarity(
            proba,
            s._colour_codes[rows],
            lambda i: (np.asarray(s.vectors[rows[i]], np.float32), s._colour_signatures()[rows[i]]),
        )
    else:
        similarity = s._colour_signatures()[rows] @ colour
    mixed = combine_scores(scores, similarity, w)
    order = np.argsort(-mixed, kind="stable")
    return rows[order], np.asarray(mixed, np.float32)[order]


# ====================================================================== 8. merge views
def _merge_views(lists: Sequence[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """Each catalogue row at its best view (the crop discount is already in the views' scores).
    Exact for the best-view score: a row in the top ``m`` by best view is in the top ``m`` of
    the view that gives it that score.  Ties: first appearance."""
    if len(lists) == 1:
        return lists[0]
    best: dict[int, float] = {}
    for rows, scores in lists:
        for r, sc in zip(rows.tolist(), scores.tolist(), strict=True):
            if r not in best or sc > best[r]:
                best[r] = sc
    items = sorted(best.items(), key=lambda kv: -kv[1])
    return np.array([r for r, _ in items], np.int64), np.array([sc for _, sc in items], np.float32)


# ====================================================================== 9. collapse
def _collapse(
    s: Searcher, rows: np.ndarray, threshold: float | None
) -> tuple[np.ndarray, list[tuple[int, ...]]]:
    """Near-duplicates folded into the best-ranked copy (raw feature space, greedy in rank
    order): ``(kept rows, each kept row's folded rows)``."""
    if threshold is None or len(rows) < 2:
        return rows, [() for _ in rows]
    kept, parent = collapse_rows(np.asarray(s.vectors[rows], np.float32), threshold)
    dups = [tuple(int(rows[i]) for i in np.flatnonzero(parent == k) if i != k) for k in kept]
    return rows[kept], dups


# ====================================================================== 10. cut-offs, hits
def _hits(
    s: Searcher, rows: np.ndarray, dups: list[tuple[int, ...]], scoring: np.ndarray, o: SearchOptions,
    self_row: int | None,
) -> list[Hit]:  # fmt: skip
    if not o.include_self and self_row is not None:
        keep = rows != self_row
        rows, dups = rows[keep], [d for d, k in zip(dups, keep.tolist(), strict=True) if k]
    rows, dups = rows[: o.top_n], dups[: o.top_n]
    if not len(rows):
        return []
    X = np.asarray(s.vectors[rows], np.float32)
    score = (X @ scoring.T).max(axis=1)  # the plain cosine to the query (its best view)
    score = np.where((score > 1.0) & (score < 1.0 + 1e-3), 1.0, score)
    cal = s.calibration
    conf: np.ndarray | None = None
    if cal is not None:  # monotone in rank: never more confident than a better-ranked hit
        conf = np.round(monotone_in_rank(cal.confidence(score)), 4)
    out: list[Hit] = []
    for j, r in enumerate(rows.tolist()):
        sc = float(score[j])
        c = None if conf is None else float(conf[j])
        if o.min_score is not None and sc < o.min_score:
            continue
        if o.min_confidence is not None and (c is None or c < o.min_confidence):
            continue
        file = resolve_image(s.image_root, s.ids[r])
        words = (None, None) if c is None or cal is None else (cal.words(c)[0], c >= cal.cutoff)
        out.append(
            Hit(
                s.ids[r],
                sc,
                int(s.labels[r]),
                len(out) + 1,
                None if file is None else str(file),
                c,
                words[0],
                words[1],
                tuple(s.ids[d] for d in dups[j]),
            )
        )
    return out


# ====================================================================== the pipeline
def run_search(
    s: Searcher, query: Query, options: SearchOptions, stages: Stages | None = None
) -> SearchResult:
    """Run one query through every stage (see the module docstring), in order."""
    st = stages or Stages()
    o = options
    if o.min_confidence is not None and s.calibration is None:
        raise InvalidArgumentError(
            "min_confidence needs a model with a confidence calibration (trained by this version); "
            "retrain with train_clusters, or use min_score"
        )
    w = s.colour_weight if o.colour_weight is None else o.colour_weight
    probe = s._index.check_probe(o.nprobe)
    # the neighbour graph, before any decoding: rerank=None is the model's (on when it has a current
    # graph); "k-reciprocal" on a model without one (or with a stale one) is refused
    graph = model_graph(s.config, s.model_file.arrays, s.model_path, o.rerank)
    threshold = o.collapse_threshold
    # 1-3. decode, views, embed
    q = _query_vectors(s, query, o, w, st)
    exclude = np.fromiter(sorted(q.exclude), np.int64, len(q.exclude))
    # a learned colour model: the query's colour probabilities, from its whole photo (stage 7)
    proba = (
        s._colour_model.proba(q.raw[:1], q.colour[None])[0]
        if w > 0 and s._colour_model is not None and q.colour is not None and len(q.raw)
        else None
    )
    flt = s._filter(o.where, q.exclude)
    qe = (s.query_expansion if o.expansion is None else o.expansion) if q.expand else 0
    n = len(s.ids)
    target = min(n, o.top_n + (0 if o.include_self or q.self_row is None else 1))
    want = min(n, max(2 * target, target + 10)) if threshold is not None else target
    while True:
        pool = min(n, want * _COLOUR_POOL) if w > 0 else want
        need = max(pool, min(n, RERANK_POOL)) if graph is not None else pool
        lists: list[tuple[np.ndarray, np.ndarray]] = []
        scan: Scan | None = None
        for k, (v, vs) in enumerate(zip(q.raw, q.ranking, strict=True)):
            if flt is not None and flt.count == 0:
                rows, scores, view_scan = (
                    np.zeros(0, np.int64),
                    np.zeros(0, np.float32),
                    Scan("images", 0, 0, 0, n),
                )
            else:
                rows, scores, view_scan, ranked_as = _ranked(
                    s, v, vs, need, qe, o, probe, flt, exclude
                )  # 4-5
                if graph is not None:  # 6
                    own = q.self_row if q.expand and k == 0 else None
                    rows, scores = _graph_rerank(s, graph, ranked_as, rows, scores, own)
                    rows, scores = rows[:pool], scores[:pool]
            if k and q.discount:  # a crop view counts less than the whole photo
                scores = scores - np.float32(q.discount)
            lists.append(_colour_rerank(s, rows, scores, q.colour, w, proba))  # 7
            scan = scan or view_scan
        rows = _merge_views(lists)[0][:want]  # 8
        kept, dups = _collapse(s, rows, threshold)  # 9
        if threshold is None or len(kept) >= target or len(rows) < want or want >= n:
            break
        want = min(n, want * 2)
    assert scan is not None
    hits = _hits(s, kept, dups, q.scoring, o, q.self_row)  # 10
    return SearchResult(hits, scan, len(q.raw), q.crops, q.discount)


__all__ = ["Query", "SearchResult", "Stages", "embed_query", "run_search"]
