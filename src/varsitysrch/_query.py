"""Query-side embedding: several views of the query photo, matched against one catalogue vector each.

A shopper's photo shows the product somewhere in a cluttered frame; the catalogue shot
shows it alone.  Embedding the query as several views -- the whole photo and five crops
of ``_CROP_FRACTION`` of its width and height (four corners and the centre) -- and scoring
each catalogue image by its *best* view finds the product wherever it
sits.  Only the query pays (``len(views)`` forward passes instead of one); catalogue
vectors, the feature store and the model file are unchanged.  Horizontal-flip views are the
alternative measured in ``docs/quality.md``.  The views are made, embedded and merged by the
query pipeline (:mod:`varsitysrch._pipeline`); this module holds their geometry and settings.

``views="auto"`` (the default of :meth:`varsitysrch.Searcher.search`,
:func:`varsitysrch.search_similar_images`, the CLI and the service) uses the crops only for a
shopper's photo searched against a studio catalogue: when at least
:data:`STUDIO_CATALOGUE_SHARE` of the catalogue images are product shots on a plain backdrop
(:func:`varsitysrch._colour.plain_background`) and the query clearly is not (less than
:data:`CLUTTERED_BORDER_SHARE` of its border is one colour).  There a crop view's
score counts :data:`AUTO_CROP_DISCOUNT` less than the whole photo's, so a crop wins only when
it matches clearly better.  Any other pair (a catalogue photo as the query, in-store photos
against in-store photos) is searched as the whole image: the crops cost same-domain relevance
(``docs/quality.md``).
"""

from __future__ import annotations

from ._errors import InvalidArgumentError

__all__ = [
    "AUTO_CROP_DISCOUNT",
    "CLUTTERED_BORDER_SHARE",
    "STUDIO_CATALOGUE_SHARE",
    "check_views",
    "crop_boxes",
    "parse_views",
]


_CROP_FRACTION = 0.7
#: ``views="auto"``: the catalogue counts as studio shots when this share of it has a plain backdrop
STUDIO_CATALOGUE_SHARE = 0.5
#: ``views="auto"``: a crop view's score is lowered by this before it competes with the whole photo
AUTO_CROP_DISCOUNT = 0.07
#: ``views="auto"``: a query is a shop photo (not a studio shot) when less than this share of its
#: border is one colour -- stricter than the catalogue's plain-background test, so that a studio
#: shot whose product touches the frame is never cropped
CLUTTERED_BORDER_SHARE = 0.5


def crop_boxes(width: int, height: int, fraction: float = _CROP_FRACTION) -> list[tuple[int, int, int, int]]:
    """``(left, top, right, bottom)`` of the whole image, then the four corner crops and the centre crop."""
    if not 0.0 < fraction <= 1.0:
        raise InvalidArgumentError(f"crop fraction must be in (0, 1]; got {fraction}")
    cw, ch = max(1, round(width * fraction)), max(1, round(height * fraction))
    lx, ty = (width - cw) // 2, (height - ch) // 2
    return [
        (0, 0, width, height),
        (0, 0, cw, ch),
        (width - cw, 0, width, ch),
        (0, height - ch, cw, height),
        (width - cw, height - ch, width, height),
        (lx, ty, lx + cw, ty + ch),
    ]


_VIEWS = ("crops", "flip", "crops+flip", "auto")


def check_views(views: str | None) -> str | None:
    """``views`` if valid (``None`` / ``"none"``: the whole image; ``"auto"``; crops / flip)."""
    if views is None or views == "none":
        return None
    if views not in _VIEWS:
        raise InvalidArgumentError(f"views must be None, 'none' or one of {', '.join(_VIEWS)}; got {views!r}")
    return views


def parse_views(views: str | None) -> tuple[bool, bool]:
    """``None`` / ``"none"``: the whole image only; ``"crops"``, ``"flip"``, ``"crops+flip"``
    (``"auto"`` is decided by the Searcher: see the module docstring)."""
    v = check_views(views)
    if v is None or v == "auto":
        return False, False
    return "crops" in v, "flip" in v
