"""Colour learned from the catalogue's own colour names (``train_clusters(colour_labels=...)``).

Known answers: the stored classifier is scikit-learn's (multiclass and binary); generated
catalogues of shapes x colours, where "match colour" on a model with a colour model must put the
query's colour first, by the labels the catalogue gave, and predict the colour of images without one.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from varsitysrch import (
    InvalidArgumentError,
    ModelFileError,
    Searcher,
    TrainOptions,
    extract_features,
    train_clusters,
    update_catalogue,
)
from varsitysrch._colour import MATCH_COLOUR_WEIGHT, SIGNATURE_DIM
from varsitysrch._colourlabels import (
    _COLOUR_C,
    _COLOUR_TOL,
    ColourModel,
    _features,
    colour_model,
    fit_colour_model,
    label_codes,
)
from varsitysrch._modelfile import _save_model, load_model

COLOURS = {"red": (205, 35, 40), "green": (40, 170, 60), "blue": (40, 60, 200), "black": (25, 25, 25)}
SHAPES = ("disc", "square", "bars")
MISLABELLED = "disc/red_0.png"


def _product(shape: str, colour: tuple[int, int, int], seed: int, size: int = 96) -> Image.Image:
    """A product of ``shape`` and ``colour`` (jittered shade, size and place) on a white backdrop."""
    rng = np.random.default_rng(seed)
    im = Image.new("RGB", (size, size), (255, 255, 255))
    d = ImageDraw.Draw(im)
    c = tuple(int(np.clip(v * rng.uniform(0.85, 1.1), 0, 255)) for v in colour)
    m = int(rng.integers(10, 22))
    x0, y0 = int(rng.integers(4, 12)), int(rng.integers(4, 12))
    box = (x0, y0, size - m, size - m)
    if shape == "disc":
        d.ellipse(box, fill=c)
    elif shape == "square":
        d.rectangle(box, fill=c)
    else:
        for y in range(box[1], box[3], 14):
            d.rectangle((box[0], y, box[2], y + 7), fill=c)
    return im


def _catalogue(root: Path, per: int = 4) -> dict[str, str]:
    """shapes x colours, ``per`` images each: ``{id: colour name}``."""
    colour_of = {}
    for si, shape in enumerate(SHAPES):
        for ci, (name, rgb) in enumerate(COLOURS.items()):
            for j in range(per):
                rel = f"{shape}/{name}_{j}.png"
                (root / shape).mkdir(parents=True, exist_ok=True)
                _product(shape, rgb, 1000 * si + 100 * ci + j).save(root / rel)
                colour_of[rel] = name
    return colour_of


def _attributes(path: Path, colour_of: dict[str, str], extra: dict[str, str] | None = None) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["image", "colour", "price"])
        for i, (rel, name) in enumerate(sorted(colour_of.items())):
            w.writerow([rel, name, 10 + i])
    return path


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("colour-labels")
    root = tmp / "imgs"
    colour_of = _catalogue(root)
    feats = tmp / "features"
    extract_features(root, feats, show_progress=False)
    # one red product the shop calls blue: the label, not the pixels, is the product's colour
    attrs = _attributes(tmp / "attrs.csv", {**colour_of, MISLABELLED: "blue"})
    model = tmp / "m.vsm"
    train_clusters(
        feats, model, tmp / "m.csv", 3, attributes=attrs, colour_labels="colour", show_progress=False
    )
    queries = tmp / "queries"
    queries.mkdir()
    for ci, name in enumerate(COLOURS):  # new photos, not in the catalogue
        _product("disc", COLOURS[name], 77_000 + ci).save(queries / f"{name}.png")
    return {"root": root, "features": feats, "attrs": attrs, "model": model, "queries": queries, "tmp": tmp}


# ---------------------------------------------------------------------- the classifier (no images)
@pytest.mark.parametrize("n_names", [2, 5])
def test_the_stored_classifier_gives_scikit_learns_probabilities(n_names: int) -> None:
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(n_names)
    n, dim = 300, 24
    y = rng.integers(0, n_names, n)
    centres = rng.normal(size=(n_names, dim + SIGNATURE_DIM))
    F = centres[y] + rng.normal(scale=1.5, size=(n, dim + SIGNATURE_DIM))
    V, sig = F[:, :dim], np.abs(F[:, dim:])
    names = [f"c{i}" for i in range(n_names)]
    labels: list[str | None] = [names[i] for i in y]
    labels[0] = None  # unlabelled images are left out of the fit
    cm = fit_colour_model(V, sig, labels, "colour")
    assert cm.names == tuple(names) and cm.coef.shape == (n_names, dim + SIGNATURE_DIM)
    X = _features(V, sig)  # unit vectors beside the signatures
    np.testing.assert_allclose(X[:, :dim], V / np.linalg.norm(V, axis=1, keepdims=True), rtol=1e-5)
    ref = LogisticRegression(C=_COLOUR_C, tol=_COLOUR_TOL, max_iter=1000, random_state=0).fit(X[1:], y[1:])
    np.testing.assert_allclose(cm.proba(V, sig), ref.predict_proba(X), atol=2e-4)
    assert cm.fitted_on == n - 1


def test_similarity_uses_the_labels_and_predicts_the_unlabelled() -> None:
    rng = np.random.default_rng(3)
    dim = 8
    cm = ColourModel(
        "colour",
        ("a", "b", "c"),
        rng.normal(size=(3, dim + SIGNATURE_DIM)).astype(np.float32),
        rng.normal(size=3).astype(np.float32),
        0.5,
    )
    q = np.array([0.7, 0.2, 0.1], np.float32)
    V, sig = rng.normal(size=(4, dim)), np.abs(rng.normal(size=(4, SIGNATURE_DIM)))
    got = cm.similarity(q, np.array([2, -1, 0, -1]), lambda i: (V[i], sig[i]))
    p = cm.proba(V, sig)
    np.testing.assert_allclose(got, 0.5 * np.array([0.1, p[1] @ q, 0.7, p[3] @ q]), rtol=1e-5)


def test_too_few_labels_are_refused_naming_the_parameter() -> None:
    V, sig = np.ones((20, 4)), np.ones((20, SIGNATURE_DIM))
    with pytest.raises(InvalidArgumentError, match=r"colour_labels='c'.*two different colours"):
        fit_colour_model(V, sig, ["red"] * 20, "c")
    with pytest.raises(InvalidArgumentError, match="at least 10"):
        fit_colour_model(V, sig, ["red", "blue"] + [None] * 18, "c")
    with pytest.raises(InvalidArgumentError, match="colour_labels must be an attributes column"):
        TrainOptions(colour_labels=" ")


# ---------------------------------------------------------------------- through the public search
def _names(hits: list, colour_of: dict[str, str]) -> list[str]:
    return [colour_of[h.image] for h in hits]


def test_match_colour_puts_the_querys_colour_first(shop: dict[str, Path]) -> None:
    mf = load_model(shop["model"])
    rec = mf.config["colour_model"]
    assert rec["column"] == "colour" and sorted(rec["names"]) == sorted(COLOURS)
    assert {"extra/colour_coef.npy", "extra/colour_intercept.npy"} <= set(mf.config["members"])
    s = Searcher(shop["model"])
    with open(shop["attrs"], encoding="utf-8") as f:
        colour_of = {r["image"]: r["colour"] for r in csv.DictReader(f)}
    for name in COLOURS:
        q = shop["queries"] / f"{name}.png"
        # colour alone (weight 1): every catalogue image of the query's colour, by its label, first
        count = list(colour_of.values()).count(name)
        only = s.search(q, count, rerank="none", colour_weight=1.0)
        assert _names(only, colour_of) == [name] * count, name
        assert (MISLABELLED in {h.image for h in only}) == (name == "blue")  # the signature would say red
        # "match colour": the query's colour gains places, never loses them
        plain = _names(s.search(q, 8, rerank="none"), colour_of).count(name)
        matched = _names(s.search(q, 8, rerank="none", colour_weight=MATCH_COLOUR_WEIGHT), colour_of).count(
            name
        )
        assert matched >= plain, name


def test_images_without_a_label_get_their_predicted_colour(shop: dict[str, Path], tmp_path: Path) -> None:
    root, feats, model = tmp_path / "imgs", tmp_path / "features", tmp_path / "m.vsm"
    shutil.copytree(shop["root"], root)
    shutil.copytree(shop["features"], feats)
    shutil.copyfile(shop["model"], model)
    shutil.copyfile(shop["tmp"] / "m.csv", tmp_path / "m.csv")
    (root / "new").mkdir()
    for j in range(3):  # new red products, added without attributes
        _product("square", COLOURS["red"], 99_000 + j).save(root / "new" / f"red_{j}.png")
    update_catalogue(root, feats, model, tmp_path / "m.csv", show_progress=False)
    s = Searcher(model)
    assert s._colour_model is not None and s._colour_model.column == "colour"
    codes = label_codes(s._colour_model, s.attributes, len(s.ids))
    new = [i for i, x in enumerate(s.ids) if x.startswith("new/")]
    assert len(new) == 3 and (codes[new] == -1).all() and (np.delete(codes, new) >= 0).all()
    # colour alone: the red-labelled images and the three unlabelled red squares (their colour
    # predicted) before every other colour
    red = {i for i in s.ids if "/red_" in i and i != MISLABELLED and not i.startswith("new/")}
    hits = s.search(shop["queries"] / "red.png", len(red) + 3, rerank="none", colour_weight=1.0)
    assert {h.image for h in hits} == red | {f"new/red_{j}.png" for j in range(3)}
    assert s.search(shop["queries"] / "red.png", 5, colour_weight=MATCH_COLOUR_WEIGHT)  # and the default


def test_a_model_without_a_colour_model_matches_by_signature(shop: dict[str, Path], tmp_path: Path) -> None:
    plain = tmp_path / "plain.vsm"
    train_clusters(
        shop["features"], plain, tmp_path / "p.csv", 3, attributes=shop["attrs"], show_progress=False
    )
    s = Searcher(plain, features_folder=shop["features"])
    assert s._colour_model is None and "colour_model" not in load_model(plain).config
    assert s.search(shop["queries"] / "red.png", 5, colour_weight=MATCH_COLOUR_WEIGHT)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"colour_labels": "colour"}, "no attributes given"),
        ({"colour_labels": "shade", "attributes": "ATTRS"}, "no such column.*colour, price"),
        ({"colour_labels": "price", "attributes": "ATTRS"}, "must hold colour names.*number"),
    ],
)
def test_a_wrong_colour_column_is_refused_before_anything_is_written(
    shop: dict[str, Path], tmp_path: Path, kwargs: dict, match: str
) -> None:
    kwargs = {k: (shop["attrs"] if v == "ATTRS" else v) for k, v in kwargs.items()}
    with pytest.raises(InvalidArgumentError, match=match):
        train_clusters(
            shop["features"], tmp_path / "m.vsm", tmp_path / "m.csv", 3, show_progress=False, **kwargs
        )
    assert not (tmp_path / "m.vsm").exists() and not (tmp_path / "m.csv").exists()


@pytest.mark.parametrize(
    ("damage", "match"),
    [
        (lambda mf: mf.arrays.__setitem__("colour_coef", mf.arrays["colour_coef"][:, 1:]), "shape"),
        (
            lambda mf: mf.arrays.__setitem__("colour_intercept", mf.arrays["colour_intercept"] * np.nan),
            "finite",
        ),
        (lambda mf: mf.config["colour_model"].__setitem__("names", ["red", "red", "x", "y"]), "distinct"),
        (lambda mf: mf.config["colour_model"].__setitem__("scale", 7), "scale"),
        (lambda mf: mf.config.__setitem__("colour_model", ["x"]), "must be an object"),
        (lambda mf: mf.arrays.pop("colour_coef"), "missing"),
    ],
)
def test_a_tampered_colour_model_is_refused_in_words(
    shop: dict[str, Path], tmp_path: Path, damage, match
) -> None:
    mf = load_model(shop["model"])
    damage(mf)
    bad = tmp_path / "bad.vsm"
    _save_model(bad, mf)
    with pytest.raises(ModelFileError, match=match):
        Searcher(bad)


def test_cli_trains_and_searches_as_the_library(shop: dict[str, Path], tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from varsitysrch.cli import app as cli_app

    model = tmp_path / "cli.vsm"
    args = ["train", str(shop["features"]), "-k", "3", "-m", str(model), "--attributes", str(shop["attrs"])]
    out = CliRunner().invoke(cli_app, [*args, "--colour-labels", "colour"])
    assert out.exit_code == 0, out.output
    cm = colour_model(load_model(model).config, load_model(model).arrays, str(model))
    assert cm is not None and cm.column == "colour"
    q = shop["queries"] / "blue.png"
    lib = [h.image for h in Searcher(model).search(q, 6, colour_weight=MATCH_COLOUR_WEIGHT)]
    out = CliRunner().invoke(
        cli_app, ["search", str(q), "-m", str(model), "-n", "6", "--colour", "match", "--json"]
    )
    assert out.exit_code == 0, out.output
    assert [h["image"] for h in json.loads(out.stdout)] == lib
    out = CliRunner().invoke(cli_app, [*args, "--colour-labels", "nope"])
    assert out.exit_code != 0 and "colour-labels='nope'" in out.output


def test_the_service_says_and_searches_as_the_library(shop: dict[str, Path], tmp_path: Path) -> None:
    pytest.importorskip("fastapi")
    pytest.importorskip("httpx2")
    from fastapi.testclient import TestClient

    from varsitysrch.service import create_app

    q = shop["queries"] / "green.png"
    s = Searcher(shop["model"], features_folder=shop["features"])
    lib = [h.image for h in s.search(q, 6, colour_weight=MATCH_COLOUR_WEIGHT)]
    assert lib != [h.image for h in s.search(q, 6, colour_weight=1.0)]  # the weight is passed, not fixed
    with TestClient(create_app(shop["model"], cache_dir=tmp_path, reload_interval=0)) as c:
        assert c.get("/healthz").json()["colour_labels"] == "colour"
        r = c.post(
            "/search",
            files={"image": ("green.png", q.read_bytes(), "image/png")},
            params={"top_n": 6, "colour_weight": MATCH_COLOUR_WEIGHT},
        )
        assert r.status_code == 200, r.text
        assert [h["image"] for h in r.json()["hits"]] == lib


def test_a_store_without_colour_rows_is_refused_naming_the_parameter(tmp_path: Path) -> None:
    from varsitysrch import FeatureStoreError
    from varsitysrch._store import FeatureStore

    rng = np.random.default_rng(0)
    X = rng.normal(size=(30, 16)).astype(np.float32)
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    ids = [f"p/{i:02d}.jpg" for i in range(30)]
    FeatureStore.write(tmp_path / "f", ids, X, {"name": "test", "dim": 16})  # vectors only
    attrs = {i: {"colour": "red" if j % 2 else "blue"} for j, i in enumerate(ids)}
    with pytest.raises(
        FeatureStoreError, match="colour_labels='colour' needs the catalogue's colour signatures"
    ):
        train_clusters(
            tmp_path / "f",
            tmp_path / "m.vsm",
            tmp_path / "m.csv",
            3,
            attributes=attrs,
            colour_labels="colour",
        )
    assert not (tmp_path / "m.vsm").exists()


def test_an_update_with_a_table_without_the_column_predicts_every_colour(
    shop: dict[str, Path], tmp_path: Path
) -> None:
    feats, model, csv_file = tmp_path / "features", tmp_path / "m.vsm", tmp_path / "m.csv"
    shutil.copytree(shop["features"], feats)
    shutil.copyfile(shop["model"], model)
    shutil.copyfile(shop["tmp"] / "m.csv", csv_file)
    other = tmp_path / "other.csv"
    with open(shop["attrs"], encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    with open(other, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["image", "price"])
        w.writerows([r["image"], r["price"]] for r in rows)
    update_catalogue(shop["root"], feats, model, csv_file, attributes=other, show_progress=False)
    s = Searcher(model)
    assert s._colour_model is not None and s.attributes is not None and "colour" not in s.attributes.names
    assert (label_codes(s._colour_model, s.attributes, len(s.ids)) == -1).all()
    # every colour predicted: the red-looking catalogue images first (the one the shop called blue too)
    red = {i for i in s.ids if "/red_" in i}
    hits = s.search(shop["queries"] / "red.png", len(red), rerank="none", colour_weight=1.0)
    assert {h.image for h in hits} == red
