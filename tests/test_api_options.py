"""The settings values of the non-search public functions (issue 20 item 5: options grouped, API small).

``varsitysrch._config`` holds them: :class:`Compute` (how heavy work runs) and one options value
per step.  Checked here: each value validates its fields (an error names the field, the value and
the rule); the defaults are the functions' earlier defaults; the old flat keywords and the values
give the same results; an unknown keyword is refused with the list of settings; a flat keyword wins
over the value's field; every public function keeps the seed's positionals and a small number of
explicit keywords.
"""

from __future__ import annotations

import inspect
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import varsitysrch
from varsitysrch import (
    ChooseKOptions,
    Compute,
    EvalOptions,
    ExtractOptions,
    InvalidArgumentError,
    ReportOptions,
    TrainOptions,
    UpdateOptions,
    evaluate,
    extract_features,
    get_optimal_num_clusters,
    make_report,
    train_clusters,
    update_catalogue,
)
from varsitysrch._modelfile import load_model

VALUES = (Compute, ExtractOptions, ChooseKOptions, TrainOptions, UpdateOptions, ReportOptions, EvalOptions)

#: (value class, field, bad values): every one must be refused at construction
BAD: list[tuple[type, str, list[Any]]] = [
    (Compute, "engine", ["threads", "", None, 1]),
    (Compute, "threads", [0, -1, 1.5, True, "2"]),
    (Compute, "num_workers", [-1, 2.0, False]),
    (Compute, "batch_size", [0, -8, None, 8.0, True]),
    (Compute, "checkpoint_every", [0, -1, "10"]),
    (ExtractOptions, "dtype", ["float64", "f16", None]),
    (ExtractOptions, "allow_empty", [1, "yes", None]),
    (ChooseKOptions, "method", ["slow", None]),
    (ChooseKOptions, "sample_size", [2, 0, 10.5]),
    (ChooseKOptions, "n_init", [0, 1.0, None]),
    (ChooseKOptions, "random_state", [-1, None, 0.5]),
    (ChooseKOptions, "retrieval", [1, None]),
    (ChooseKOptions, "n_queries", [0, None]),
    (TrainOptions, "n_components", [0, 1.5, True]),
    (TrainOptions, "n_init", [0, -3, 2.5]),
    (TrainOptions, "backend", ["torch", None]),
    (TrainOptions, "colour_labels", ["", " ", 3, True]),
    (TrainOptions, "max_samples", [0, 1.5]),
    (TrainOptions, "random_state", [-1, 1.5, None]),
    (TrainOptions, "ivf", [1, "yes"]),
    (TrainOptions, "embed_index", [0, "no"]),
    (TrainOptions, "target_recall", [0.0, 1.5, -0.1, float("nan"), "0.9", True]),
    (TrainOptions, "search_pca", [-1, 2.5, True]),
    (TrainOptions, "query_expansion", [-1, 1.5, False]),
    (UpdateOptions, "far_quantile", [0.0, 1.0, -0.5, float("nan"), None]),
    (UpdateOptions, "recalibrate", [1, None]),
    (UpdateOptions, "allow_empty", [0, "false"]),
    (ReportOptions, "thumb_size", [15, 1025, 160.0, True]),
    (ReportOptions, "central", [0, 1001]),
    (ReportOptions, "outliers", [0, 1001]),
    (ReportOptions, "near_clusters", [0, 101]),
    (ReportOptions, "silhouette_sample", [1, None]),
    (ReportOptions, "duplicate_threshold", [0.0, 1.01, float("nan"), True]),
    (ReportOptions, "variant_threshold", [0.0, 1.01, 0.95]),  # 0.95 > duplicate_threshold 0.93
    (ReportOptions, "duplicate_method", ["fast", None]),
    (ReportOptions, "max_groups", [-1, 2.5]),
    (ReportOptions, "map_points", [0, None]),
    (ReportOptions, "map_thumbs", [-1]),
    (ReportOptions, "random_state", [-2, "0"]),
    (EvalOptions, "configs", [(), "efficientnet-lite0", None]),
    (EvalOptions, "k_values", [(), [0], [2, "4"], 8]),
    (EvalOptions, "nprobes", [[0], [1, 2.5], 4]),
    (EvalOptions, "top_k", [0, True, 2.5]),
    (EvalOptions, "n_queries", [0, -5]),
    (EvalOptions, "n_latency", [-1]),
    (EvalOptions, "random_state", [-1, 0.5]),
    (EvalOptions, "seed_baseline", [1]),
    (EvalOptions, "report_stem", ["", None]),
]


@pytest.mark.parametrize(("cls", "name", "bads"), BAD, ids=[f"{c.__name__}.{n}" for c, n, _ in BAD])
def test_a_bad_field_is_refused_naming_field_value_and_rule(cls: type, name: str, bads: list[Any]) -> None:
    for bad in bads:
        with pytest.raises(InvalidArgumentError) as info:
            cls(**{name: bad})
        msg = str(info.value)
        assert msg.startswith(f"{name} must be "), msg  # the field and the rule ...
        items = list(bad) if isinstance(bad, list | tuple) else []
        assert any(msg.endswith(f"got {v!r}") for v in [bad, *items]), msg  # ... and the value (or item)
        with pytest.raises(InvalidArgumentError, match=name):  # replace and merge validate the same way
            cls().replace(**{name: bad})
        with pytest.raises(InvalidArgumentError, match=name):
            cls.merge(None, **{name: bad})


def test_every_field_is_covered_by_a_bad_value_or_is_free_form() -> None:
    covered = {(c, n) for c, n, _ in BAD}
    free = {(Compute, "scheduler"), (EvalOptions, "query_split")}  # any value; checked against the data
    free |= {(TrainOptions, n) for n in TrainOptions._names() if n.startswith("rerank")}  # not this file's
    for cls in VALUES:
        for name in cls._names():
            assert (cls, name) in covered | free, f"{cls.__name__}.{name} has no bad-value check"


def test_good_values_are_kept_and_normalised() -> None:
    c = Compute(
        engine="dask", threads=np.int64(2), num_workers=0, batch_size=np.int32(4), checkpoint_every=10
    )
    assert (c.threads, c.batch_size) == (2, 4) and type(c.threads) is int and type(c.batch_size) is int
    e = EvalOptions(k_values=[4, 8], nprobes=[1, None], configs=["efficientnet-lite0"])
    assert (e.k_values, e.nprobes, e.configs) == ((4, 8), (1, None), ("efficientnet-lite0",))
    assert EvalOptions(nprobes=()).nprobes == ()  # only the exact and seed rows
    assert TrainOptions(ivf=True, embed_index=False, target_recall=1).target_recall == 1
    assert ReportOptions(duplicate_threshold=0.9, variant_threshold=0.9).variant_threshold == 0.9


def test_defaults_are_the_functions_defaults() -> None:
    from varsitysrch._duplicates import DEFAULT_THRESHOLD, VARIANT_THRESHOLD
    from varsitysrch._evaluate import DEFAULT_CONFIGS
    from varsitysrch._searchindex import build_search_index

    # written out in _config (no scikit-learn import when a value is made): the index builder's default
    assert (
        TrainOptions().target_recall
        == inspect.signature(build_search_index).parameters["target_recall"].default
    )
    assert (ReportOptions().duplicate_threshold, ReportOptions().variant_threshold) == (
        DEFAULT_THRESHOLD,
        VARIANT_THRESHOLD,
    )
    assert EvalOptions().configs == DEFAULT_CONFIGS
    expected = {
        Compute: dict(
            engine="local",
            scheduler=None,
            threads=None,
            num_workers=None,
            batch_size=8,
            checkpoint_every=None,
        ),
        ExtractOptions: dict(dtype="float32", allow_empty=False),
        ChooseKOptions: dict(
            method="fast", sample_size=5000, n_init=3, random_state=0, retrieval=True, n_queries=1000
        ),
        TrainOptions: dict(
            n_components=None,
            n_init=3,
            random_state=0,
            backend="auto",
            max_samples=None,
            ivf=None,
            embed_index=None,
            search_pca=None,
            query_expansion=None,
        ),
        UpdateOptions: dict(far_quantile=0.95, recalibrate=True, allow_empty=False),
        ReportOptions: dict(
            thumb_size=160,
            central=12,
            outliers=12,
            near_clusters=5,
            silhouette_sample=5000,
            duplicate_method="auto",
            max_groups=200,
            map_points=20_000,
            map_thumbs=400,
            random_state=0,
        ),
        EvalOptions: dict(
            k_values=(20,),
            nprobes=(1, 2, 4, None),
            query_split=None,
            top_k=10,
            n_queries=2000,
            random_state=0,
            n_latency=50,
            seed_baseline=True,
            report_stem="eval",
        ),
    }
    for cls, fields in expected.items():
        value = cls()
        for name, want in fields.items():
            assert getattr(value, name) == want, f"{cls.__name__}.{name}"


def test_merge_and_replace() -> None:
    base = TrainOptions(n_init=2, random_state=5)
    assert TrainOptions.merge(None) == TrainOptions()
    assert TrainOptions.merge(base) is base
    assert TrainOptions.merge(base, n_init=7) == TrainOptions(n_init=7, random_state=5)  # the keyword wins
    assert base.replace(backend="sklearn").backend == "sklearn" and base.backend == "auto"  # frozen
    with pytest.raises(InvalidArgumentError, match=r"unknown TrainOptions setting 'n_inits'.*n_init"):
        base.replace(n_inits=3)
    with pytest.raises(InvalidArgumentError, match="options must be a TrainOptions"):
        TrainOptions.merge(ReportOptions())  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError, match="compute must be a Compute"):
        Compute.merge({"engine": "dask"})  # type: ignore[arg-type]
    # the earlier keyword of Compute.threads (choose-k's n_threads), and both names at once
    assert Compute.merge(None, n_threads=3).threads == 3
    with pytest.raises(InvalidArgumentError, match="'n_threads' and another name of 'threads'"):
        Compute.merge(None, threads=2, n_threads=3)
    with pytest.raises(AttributeError):
        base.n_init = 4  # type: ignore[misc]


# ------------------------------------------------------------------ the functions' signatures
#: the seed's positional parameters (name, default) of each public function, unchanged
REQUIRED = inspect.Parameter.empty
SEED = {
    extract_features: [("img_folder", REQUIRED), ("save_to", REQUIRED)],
    get_optimal_num_clusters: [("features_folder", REQUIRED), ("max_clusters", 30), ("n_components", None)],
    train_clusters: [
        ("features_folder", REQUIRED),
        ("model_filename", REQUIRED),
        ("csv_filename", REQUIRED),
        ("num_clusters", REQUIRED),
    ],
    update_catalogue: [
        ("img_folder", REQUIRED),
        ("features_folder", REQUIRED),
        ("model_filename", REQUIRED),
        ("csv_filename", REQUIRED),
    ],
    make_report: [("features_folder", REQUIRED), ("model", REQUIRED), ("csv", REQUIRED), ("out", REQUIRED)],
    evaluate: [("img_folder_or_features", REQUIRED)],
}
#: keyword-only parameters besides ``options=`` / ``compute=``: data and output, never settings
MAX_KEYWORDS = 5


@pytest.mark.parametrize("func", list(SEED), ids=lambda f: f.__name__)
def test_seed_positionals_and_a_small_keyword_set(func: Any) -> None:
    params = list(inspect.signature(func).parameters.values())
    positional = [p for p in params if p.kind is p.POSITIONAL_OR_KEYWORD]
    assert [(p.name, p.default) for p in positional] == SEED[func]
    keywords = [p.name for p in params if p.kind is p.KEYWORD_ONLY]
    assert keywords[0] == "options"
    others = [k for k in keywords if k not in ("options", "compute")]
    assert len(others) <= MAX_KEYWORDS, others
    assert params[-1].kind is params[-1].VAR_KEYWORD and params[-1].name == "settings"
    # no keyword is also a settings field: a setting has one place, the values
    fields = {n for cls in VALUES for n in cls._names()}
    assert not set(others) & fields, set(others) & fields


def test_the_original_calls_still_bind() -> None:
    """The seed's own calls (README, the original package's example.py and tests.py) and the
    earlier flat keywords all bind to the new signatures."""
    inspect.signature(get_optimal_num_clusters).bind("f/", max_clusters=100, n_components=10)
    inspect.signature(train_clusters).bind("f/", "m.vsm", "c.csv", num_clusters=2)
    inspect.signature(train_clusters).bind("f/", "m.vsm", "c.csv", 20, n_init=5, engine="dask", ivf=True)
    inspect.signature(extract_features).bind("i/", "f/", batch_size=16, quantized=True, dtype="float16")


# ------------------------------------------------------------------ unknown keywords
def test_an_unknown_keyword_is_refused_with_the_settings(tmp_path: Path) -> None:
    (tmp_path / "img").mkdir()
    calls = [
        (extract_features, (tmp_path / "img", tmp_path / "f"), "batchsize", "batch_size"),
        (get_optimal_num_clusters, (tmp_path / "f",), "ninit", "n_init"),
        (train_clusters, (tmp_path / "f", tmp_path / "m.vsm", tmp_path / "c.csv", 2), "n_inits", "n_init"),
        (
            update_catalogue,
            (tmp_path / "img", tmp_path / "f", tmp_path / "m", tmp_path / "c"),
            "far",
            "far_quantile",
        ),
        (make_report, (tmp_path / "f", tmp_path / "m", None, tmp_path / "r"), "thumbsize", "thumb_size"),
        (evaluate, (tmp_path / "img",), "topk", "top_k"),
    ]
    for func, args, bad, listed in calls:
        with pytest.raises(InvalidArgumentError) as info:
            func(*args, **{bad: 1})
        msg = str(info.value)
        assert f"{func.__name__}() got an unknown setting {bad!r}" in msg and listed in msg, msg
    # a Compute field the function does not use is a setting it does not have
    with pytest.raises(InvalidArgumentError, match="unknown setting 'batch_size'"):
        train_clusters(tmp_path / "f", tmp_path / "m.vsm", tmp_path / "c.csv", 2, batch_size=4)
    with pytest.raises(InvalidArgumentError, match=r"does not use compute\.engine"):
        get_optimal_num_clusters(tmp_path / "f", compute=Compute(engine="dask"))
    with pytest.raises(InvalidArgumentError, match=r"does not use compute\.checkpoint_every"):
        update_catalogue(*calls[3][1], compute=Compute(checkpoint_every=10))
    # extract_features hands the extractor's options on, and refuses any other name
    with pytest.raises(InvalidArgumentError) as info:
        extract_features(tmp_path / "img", tmp_path / "f", quantised=True)
    assert "quantized" in str(info.value) and "dtype" in str(info.value)
    with pytest.raises(InvalidArgumentError, match="resize must be one of"):  # routed to get_extractor
        extract_features(tmp_path / "img", tmp_path / "f", resize="stretch")


# ------------------------------------------------------------------ same results both ways
def _model_facts(model: Path, csv: Path) -> dict[str, Any]:
    mf = load_model(model)
    cfg = {k: v for k, v in mf.config.items() if k not in ("training", "features", "csv_sha256")}
    return {
        "config": json.dumps(cfg, sort_keys=True, default=str),
        "centroids": np.asarray(mf.centroids).tobytes(),
        "labels": np.asarray(mf.labels).tobytes(),
        "distances": np.asarray(mf.distances).tobytes(),
        "arrays": {k: np.asarray(v).tobytes() for k, v in mf.arrays.items() if not k.startswith("store_")},
        "csv": csv.read_bytes(),
        "n_init": mf.config["training"]["n_init"],
        "random_state": mf.config["training"]["random_state"],
    }


def test_train_flat_keywords_equal_the_options_value(synth_store: Path, tmp_path: Path) -> None:
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    for d in (a, b, c):
        d.mkdir()
    flat = dict(
        n_init=2, random_state=3, search_pca=4, query_expansion=1, embed_index=False, target_recall=0.9
    )
    train_clusters(synth_store, a / "m.vsm", a / "c.csv", 3, show_progress=False, **flat)
    train_clusters(
        synth_store, b / "m.vsm", b / "c.csv", 3, options=TrainOptions(**flat), show_progress=False
    )
    # a flat keyword wins over the value's field (documented)
    opts = TrainOptions(**{**flat, "random_state": 99, "n_init": 1})
    train_clusters(
        synth_store, c / "m.vsm", c / "c.csv", 3, options=opts, random_state=3, n_init=2, show_progress=False
    )
    fa, fb, fc = (_model_facts(d / "m.vsm", d / "c.csv") for d in (a, b, c))
    assert fa == fb == fc
    assert (fa["n_init"], fa["random_state"]) == (2, 3) and json.loads(fa["config"])["query_expansion"] == 1
    assert json.loads(fa["config"])["index"] == "store"


def test_extract_and_update_flat_keywords_equal_the_values(synth_catalogue: Any, tmp_path: Path) -> None:
    root, _ = synth_catalogue
    one, two = tmp_path / "one", tmp_path / "two"
    r1 = extract_features(root, one, dtype="float16", batch_size=5, num_workers=0, show_progress=False)
    r2 = extract_features(
        root,
        two,
        options=ExtractOptions(dtype="float16"),
        compute=Compute(batch_size=5, num_workers=0),
        show_progress=False,
    )
    s1, s2 = varsitysrch.FeatureStore.open(one), varsitysrch.FeatureStore.open(two)
    assert s1.ids == s2.ids and r1.n_embedded == r2.n_embedded == len(s1.ids)
    assert np.asarray(s1.vectors).dtype == np.float16
    assert np.array_equal(np.asarray(s1.vectors), np.asarray(s2.vectors))
    # update: the same trained model updated with flat keywords and with the values
    reports = []
    for store in (one, two):
        train_clusters(
            store,
            store.parent / f"{store.name}.vsm",
            store.parent / f"{store.name}.csv",
            3,
            show_progress=False,
        )
    kw: dict[str, Any] = dict(far_quantile=0.9, recalibrate=False, batch_size=3, num_workers=0)
    reports.append(
        update_catalogue(root, one, tmp_path / "one.vsm", tmp_path / "one.csv", show_progress=False, **kw)
    )
    reports.append(
        update_catalogue(
            root,
            two,
            tmp_path / "two.vsm",
            tmp_path / "two.csv",
            options=UpdateOptions(far_quantile=0.9, recalibrate=False),
            compute=Compute(batch_size=3, num_workers=0),
            show_progress=False,
        )
    )
    d1, d2 = (r.to_dict() for r in reports)
    d1.pop("seconds"), d2.pop("seconds")
    assert d1 == d2 and d1["far_quantile"] == 0.9 and d1["unchanged"] == len(s1.ids)


def test_choose_k_and_report_flat_keywords_equal_the_values(
    synth_model: Any, synth_store: Path, tmp_path: Path
) -> None:
    kw: dict[str, Any] = dict(
        sample_size=20, n_init=1, random_state=2, retrieval=False, plot_path=None, verbose=False
    )
    k1 = get_optimal_num_clusters(synth_store, 5, n_threads=1, **kw)
    opts = ChooseKOptions(sample_size=20, n_init=1, random_state=2, retrieval=False)
    k2 = get_optimal_num_clusters(
        synth_store, 5, options=opts, compute=Compute(threads=1), plot_path=None, verbose=False
    )
    assert (k1.ks, k1.recommended_k, k1.silhouette, k1.inertia) == (
        k2.ks,
        k2.recommended_k,
        k2.silhouette,
        k2.inertia,
    )
    assert k1.retrieval is None

    model, csv = synth_model
    flat = dict(central=3, outliers=2, near_clusters=2, silhouette_sample=10, max_groups=5, map_thumbs=0)
    s1 = make_report(synth_store, model, csv, tmp_path / "r1", show_progress=False, **flat)
    s2 = make_report(
        synth_store, model, csv, tmp_path / "r2", options=ReportOptions(**flat), show_progress=False
    )
    d1, d2 = s1.to_dict(), s2.to_dict()
    for d in (d1, d2):
        for k in ("path", "seconds", "timings", "bytes"):
            d.pop(k)
    assert d1 == d2
    j1, j2 = (json.loads((tmp_path / r / "report.json").read_text()) for r in ("r1", "r2"))
    assert j1["settings"] == j2["settings"] and j1["settings"]["central"] == 3


def test_evaluate_flat_keywords_equal_the_options_value(synth_store: Path, tmp_path: Path) -> None:
    kw: dict[str, Any] = dict(
        k_values=(2,), nprobes=(1,), n_queries=8, top_k=3, seed_baseline=False, n_latency=0
    )
    kw["configs"] = ("efficientnet-lite0+pca=0+qe=0",)
    r1 = evaluate(synth_store, threads=1, **kw)
    r2 = evaluate(synth_store, options=EvalOptions(**kw), compute=Compute(threads=1))
    # timings differ between runs, and so does the model file's size by a byte or two (it records
    # when and how long it trained): the suite once failed on index_bytes 81885 vs 81886
    varies = ("ms", "second", "index_bytes")
    rows = [
        [{k: v for k, v in row.items() if not any(x in k for x in varies)} for row in r.rows]
        for r in (r1, r2)
    ]
    assert rows[0] == rows[1] and len(rows[0]) >= 1
    assert all(abs(a["index_bytes"] - b["index_bytes"]) < 64 for a, b in zip(r1.rows, r2.rows, strict=True))


def test_the_api_surface_script_counts_what_inspect_sees(monkeypatch: pytest.MonkeyPatch) -> None:
    """scripts/api_surface.py (the before/after table in docs/python-api.md) reads the source with
    ast; on the working tree its counts are inspect.signature's."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "scripts" / "api_surface.py"
    spec = importlib.util.spec_from_file_location("api_surface", path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "api_surface", mod)  # dataclasses look their module up
    spec.loader.exec_module(mod)
    got = mod.surface(mod.Source(None))
    for func in SEED:
        params = inspect.signature(func).parameters.values()
        explicit = [p for p in params if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
        assert got[func.__name__].params == f"{len(explicit)} + **settings", func.__name__
    for cls in VALUES:
        entry = got[cls.__name__]
        assert entry.params == str(len(cls._names())) and entry.methods == 2, cls.__name__
        assert entry.method_params == {"merge": "1 + **settings", "replace": "0 + **changes"}


def test_making_a_settings_value_stays_light() -> None:
    """The values are made before any work (and by the CLI per command): no scikit-learn, faiss,
    ONNX Runtime or matplotlib import for them (why _config writes TARGET_RECALL out)."""
    import subprocess

    code = (
        "import sys, varsitysrch as V\n"
        "[c() for c in (V.Compute, V.ExtractOptions, V.ChooseKOptions, V.TrainOptions, V.UpdateOptions,"
        " V.ReportOptions, V.EvalOptions)]\n"
        "heavy = {m.split('.')[0] for m in sys.modules} & {'sklearn', 'faiss', 'onnxruntime', 'matplotlib'}\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
