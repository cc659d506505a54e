"""Searcher options measured in docs/quality.md: colour weight, multi-view queries, QE scores."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

COLOURS = {"red": (200, 30, 40), "green": (40, 170, 60), "blue": (40, 60, 200)}


def _product(rgb: tuple[int, int, int], rng: np.random.Generator, size: int = 96) -> Image.Image:
    """A garment-like shape (the same for every colour) on white, position and shade jittered."""
    im = Image.new("RGB", (size, size), (255, 255, 255))
    d = ImageDraw.Draw(im)
    dx, dy = (int(v) for v in rng.integers(-6, 7, size=2))
    shade = rng.uniform(0.85, 1.0)
    fill = tuple(int(c * shade) for c in rgb)
    d.polygon([(30 + dx, 15 + dy), (66 + dx, 15 + dy), (80 + dx, 80 + dy), (16 + dx, 80 + dy)], fill=fill)
    d.rectangle([40 + dx, 8 + dy, 56 + dx, 18 + dy], fill=fill)
    return im


@pytest.fixture(scope="module")
def colour_catalogue(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    from varsitysrch import extract_features, train_clusters

    root = tmp_path_factory.mktemp("colours")
    for name, rgb in COLOURS.items():
        (root / "dress").mkdir(exist_ok=True)
        for i in range(6):
            _product(rgb, np.random.default_rng([i, len(name)])).save(root / "dress" / f"{name}_{i}.png")
    feats = root.parent / f"{root.name}-features"
    extract_features(root, feats, show_progress=False)
    model = root.parent / f"{root.name}-model.vsm"
    train_clusters(feats, model, root.parent / f"{root.name}-clusters.csv", 2, show_progress=False)
    query = root.parent / f"{root.name}-query.png"
    _product(COLOURS["red"], np.random.default_rng(99)).save(query)
    return feats, model, query


def test_extraction_stores_colour_signatures(colour_catalogue: tuple[Path, Path, Path]) -> None:
    from varsitysrch._colour import load_colour_signatures
    from varsitysrch._store import FeatureStore

    feats, _, _ = colour_catalogue
    ids = FeatureStore.open(feats).ids
    sig = load_colour_signatures(feats, ids)
    assert sig is not None and sig.shape[0] == len(ids) == 18
    red = [j for j, i in enumerate(ids) if "red" in i]
    blue = [j for j, i in enumerate(ids) if "blue" in i]
    assert float(sig[red[0]] @ sig[red[1]]) > 0.9 > 0.3 > float(sig[red[0]] @ sig[blue[0]])


def test_colour_weight_ranks_the_querys_colour_first(colour_catalogue: tuple[Path, Path, Path]) -> None:
    from varsitysrch import Searcher, search_similar_images

    feats, model, query = colour_catalogue
    s = Searcher(model, features_folder=feats)
    n = 6
    plain = s.search(query, n, exact=True)
    coloured = s.search(query, n, exact=True, colour_weight=0.5)

    def reds(hits: list) -> int:
        return sum("red_" in h.image for h in hits)

    assert reds(coloured) == n  # every red copy first: the known answer
    assert reds(coloured) >= reds(plain)
    assert [h.rank for h in coloured] == list(range(1, n + 1))
    assert all(0.0 <= h.score <= 1.0 for h in coloured)
    # the Searcher's default weight, and the module-level function, say the same
    assert [
        h.image
        for h in Searcher(model, features_folder=feats, colour_weight=0.5).search(query, n, exact=True)
    ] == [h.image for h in coloured]
    got = search_similar_images(query, model, top_n=n, exact=True, colour_weight=0.5, show_progress=False)
    assert reds(got) == n


def test_colour_weight_errors(colour_catalogue: tuple[Path, Path, Path], tmp_path: Path) -> None:
    from varsitysrch import FeatureStoreError, InvalidArgumentError, Searcher
    from varsitysrch._store import FeatureStore

    feats, model, query = colour_catalogue
    with pytest.raises(InvalidArgumentError, match="colour_weight"):
        Searcher(model, features_folder=feats, colour_weight=1.5)
    s = Searcher(model, features_folder=feats)
    with pytest.raises(InvalidArgumentError, match="colour signature"):
        s.search_vector(np.asarray(s.vectors[0]), 3, colour_weight=0.2)  # a vector has no colour
    # a store without its colour signatures: a clear error, not a silent colour-blind search
    store = FeatureStore.open(feats)
    bare = tmp_path / "bare"
    FeatureStore.write(bare, store.ids, np.asarray(store.vectors), store.extractor)
    assert FeatureStore.open(bare).colour is None
    with pytest.raises(FeatureStoreError, match="colour signatures"):
        Searcher(model, features_folder=bare).search(query, 3, colour_weight=0.2)


def test_multi_view_query_keeps_each_images_best_view(colour_catalogue: tuple[Path, Path, Path]) -> None:
    from varsitysrch import InvalidArgumentError, Searcher

    feats, model, query = colour_catalogue
    s = Searcher(model, features_folder=feats)
    one = {h.image: h.score for h in s.search(query, 18, exact=True)}
    many = s.search(query, 18, exact=True, views="crops+flip")
    assert [h.rank for h in many] == list(range(1, 19))
    # a catalogue image's best view scores at least as high as the whole image alone
    assert all(h.score >= one[h.image] - 1e-5 for h in many)
    with pytest.raises(InvalidArgumentError, match="views"):
        s.search(query, 3, views="zoom")


def test_http_colour_weight_and_the_pages_control(
    colour_catalogue: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    from fastapi.testclient import TestClient

    from varsitysrch.service.app import create_app

    feats, model, query = colour_catalogue
    app = create_app(model, features_folder=feats, cache_dir=tmp_path, reload_interval=0)
    with TestClient(app) as c:
        data = query.read_bytes()
        plain = c.post("/search", files={"image": ("q.png", data, "image/png")}, data={"top_n": "6"})
        col = c.post(
            "/search",
            files={"image": ("q.png", data, "image/png")},
            data={"top_n": "6", "colour_weight": "0.5"},
        )
        assert plain.status_code == col.status_code == 200, col.text
        reds = [h["image"] for h in col.json()["hits"] if "red_" in h["image"]]
        assert len(reds) == 6
        # by catalogue id (its stored signature), as a query parameter
        red_id = next(i for i in reds)
        got = c.get("/search", params={"image_id": red_id, "top_n": 6, "colour_weight": 0.5}).json()
        assert sum("red_" in h["image"] for h in got["hits"]) == 6
        assert c.get("/search", params={"image_id": red_id, "colour_weight": 2}).status_code == 422
        page = c.get("/").text
        assert 'data-param="colour_weight"' in page and "Match colour" in page


def test_cli_search_match_colour(colour_catalogue: tuple[Path, Path, Path]) -> None:
    import json

    from typer.testing import CliRunner

    from varsitysrch.cli import app

    feats, model, query = colour_catalogue
    args = ["search", str(query), "-m", str(model), "--features", str(feats), "-n", "6", "--exact", "--json"]
    res = CliRunner().invoke(app, [*args, "--colour-weight", "0.5"])
    assert res.exit_code == 0, res.output
    hits = json.loads(res.output)
    assert sum("red_" in h["image"] for h in hits) == 6
    res = CliRunner().invoke(app, [*args, "--match-colour", "--views", "crops"])
    assert res.exit_code == 0, res.output
    assert len(json.loads(res.output)) == 6
    res = CliRunner().invoke(app, [*args, "--colour-weight", "3"])
    assert res.exit_code == 2 and "colour_weight" in res.output
