"""The model file is the whole truth of search behaviour (issue 20, item 3).

The studio decision of ``views="auto"`` comes from the studio share the model records, and
the colour rows a search ranks with are the ones the model was trained with; a model and its
store copied together search exactly alike.  Catalogue: studio shots of generated products
(tests/test_studio.py's generators), queried with a cluttered shop photo.
"""

from __future__ import annotations

import itertools
import shutil
from pathlib import Path

import numpy as np
import pytest

from test_studio import N_PRODUCTS, shop_photo, studio_shot
from varsitysrch import Searcher, extract_features, train_clusters
from varsitysrch._colour import load_colour_signatures, load_plain_flags
from varsitysrch._modelfile import _save_model, load_model
from varsitysrch._options import SearchOptions
from varsitysrch._pipeline import Query, SearchResult, embed_query, run_search

#: larger than the colour rows' 2x box reduction (128 px), smaller than the query's work side
SIDE = 300


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A studio catalogue (2 shots per product) beside its model ``cat.vsm``, and a shop photo."""
    d = tmp_path_factory.mktemp("truth")
    for k, i in itertools.product(range(N_PRODUCTS), range(2)):
        path = d / "cat" / f"p{k}" / f"s{i}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        studio_shot(k, i, size=SIDE).save(path, "PNG")
    shop_photo(2, 7, size=SIDE).save(d / "shop.png", "PNG")
    extract_features(d / "cat", d / "cat-f", show_progress=False)
    train_clusters(d / "cat-f", d / "cat.vsm", d / "cat.csv", 3, show_progress=False)
    return d


def _auto(s: Searcher, query: Path) -> SearchResult:
    return run_search(s, Query(image=query), SearchOptions(top_n=5, views="auto"))


def test_a_model_and_its_store_copied_together_search_alike(shots: Path, tmp_path: Path) -> None:
    moved = tmp_path / "elsewhere"
    moved.mkdir()
    shutil.copy2(shots / "cat.vsm", moved / "cat.vsm")
    shutil.copytree(shots / "cat-f", moved / "cat-f")
    here, there = Searcher(shots / "cat.vsm"), Searcher(moved / "cat.vsm")
    assert here.config["colour"]["studio_share"] == 1.0
    a, b = _auto(here, shots / "shop.png"), _auto(there, shots / "shop.png")
    assert a.crops and b.crops and a.views == b.views > 1
    assert [(h.image, h.score) for h in a.hits] == [(h.image, h.score) for h in b.hits]
    # colour ranks with the same rows too
    ca = here.search(shots / "shop.png", 5, colour_weight=0.5)
    cb = there.search(shots / "shop.png", 5, colour_weight=0.5)
    assert [(h.image, h.score) for h in ca] == [(h.image, h.score) for h in cb]


def test_the_studio_decision_is_the_models_record_not_the_stores_flags(shots: Path, tmp_path: Path) -> None:
    ids = list(Searcher(shots / "cat.vsm").ids)
    flags = load_plain_flags(shots / "cat-f", ids)
    assert flags is not None and flags.all()  # the store says: all studio shots
    mf = load_model(shots / "cat.vsm")
    mf.config["colour"] = {**mf.config["colour"], "plain_images": 0, "studio_share": 0.0}
    _save_model(tmp_path / "not-studio.vsm", mf)
    s = Searcher(tmp_path / "not-studio.vsm", features_folder=shots / "cat-f")
    r = _auto(s, shots / "shop.png")  # not a studio catalogue: no crops
    assert not r.crops and r.views == 1
    # a model trained before the record (no 'colour' key) still reads the store's flags
    mf = load_model(shots / "cat.vsm")
    del mf.config["colour"]
    _save_model(tmp_path / "older.vsm", mf)
    old = Searcher(tmp_path / "older.vsm", features_folder=shots / "cat-f")
    assert _auto(old, shots / "shop.png").crops


def test_a_catalogue_photo_as_the_query_has_its_stored_colour_signature(shots: Path) -> None:
    s = Searcher(shots / "cat.vsm")
    ids = list(s.ids)
    stored = load_colour_signatures(shots / "cat-f", ids)
    assert stored is not None
    for k in range(N_PRODUCTS):
        image = f"p{k}/s0.png"
        q = embed_query(s, shots / "cat" / image, None, colour=True)
        assert q.colour is not None
        # the same vector (stored as float16: 2^-11 relative rounding of entries <= 1)
        np.testing.assert_allclose(q.colour.ravel(), stored[ids.index(image)], rtol=0, atol=1e-3)
        hits = s.search(shots / "cat" / image, 1, colour_weight=1.0)
        assert hits[0].image == image


def test_a_large_catalogue_jpeg_as_a_query_embeds_as_its_stored_vector_with_any_views(tmp_path: Path) -> None:
    """The whole view of a query is decoded at the catalogue's JPEG scale even when crops or colour
    need the photo kept: a catalogue photo searched as itself finds its own vector (cosine 1)."""
    import numpy as np
    from PIL import Image

    from varsitysrch import Searcher, extract_features, train_clusters
    from varsitysrch._store import load_features

    rng = np.random.default_rng(3)
    cat = tmp_path / "cat"
    cat.mkdir()
    for i in range(6):  # large JPEGs: the draft scale matters (1600 px > 4x the 256 px input)
        base = rng.integers(0, 255, (25, 19, 3), dtype=np.uint8)
        im = Image.fromarray(base).resize((1200, 1600), Image.Resampling.BICUBIC)
        im.save(cat / f"p{i}.jpg", quality=90)
    extract_features(cat, tmp_path / "f", show_progress=False)
    train_clusters(tmp_path / "f", tmp_path / "m.vsm", tmp_path / "m.csv", 2, show_progress=False)
    ids = load_features(tmp_path / "f")[0]
    s = Searcher(tmp_path / "m.vsm")
    for views in (None, "crops"):
        for colour in (0.0, 0.3):
            top = s.search(cat / ids[0], 1, exact=True, views=views, colour_weight=colour)[0]
            assert top.image == ids[0] and top.score > 0.9999, (views, colour, top.score)
