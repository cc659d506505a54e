"""varsitysrch eval: metrics on hand-made examples, baselines as specified, report output."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from varsitysrch import InvalidArgumentError
from varsitysrch._evaluate import (
    EvalConfig,
    EvalReport,
    _average_precision_at_k,
    _precision_at_k,
    _read_labels,
    _recall_against,
    evaluate,
)
from varsitysrch._store import FeatureStore

# ------------------------------------------------------------------ metrics by hand


def test_precision_and_average_precision_by_hand() -> None:
    rel = np.array(
        [
            [1, 0, 1, 0],  # P@4 = 2/4; AP@4 = (1/1 + 2/3) / min(4, R=3)
            [0, 1, 0, 0],  # P@4 = 1/4; AP@4 = (1/2) / min(4, R=1)
            [0, 0, 0, 0],  # nothing found
            [1, 1, 1, 1],  # R = 10: AP@4 = 4 / min(4, 10) = 1
        ],
        bool,
    )
    R = np.array([3, 1, 5, 10])
    np.testing.assert_allclose(_precision_at_k(rel, 4), [0.5, 0.25, 0.0, 1.0])
    np.testing.assert_allclose(_average_precision_at_k(rel, R, 4), [(1 + 2 / 3) / 3, 0.5, 0.0, 1.0])
    # fewer than k results count as misses; R = 0 gives AP 0 (not NaN)
    short = np.array([[1, 1]], bool)
    assert _precision_at_k(short, 4)[0] == pytest.approx(0.5)
    assert _average_precision_at_k(short, np.array([4]), 4)[0] == pytest.approx(0.5)
    assert _average_precision_at_k(np.array([[0, 0]], bool), np.array([0]), 2)[0] == 0.0


def test_recall_against_reference() -> None:
    got = _recall_against([[1, 2, 3], [4, 5, 6]], [[3, 2, 9], [4, 5, 6]], 3)
    np.testing.assert_allclose(got, [2 / 3, 1.0])


def test_config_strings_parse_and_round_trip() -> None:
    c = EvalConfig.parse("efficientnet-lite0:pooling=gem,input_size=288+dba=5+qe")
    assert c.extractor == "efficientnet-lite0"
    assert dict(c.options) == {"pooling": "gem", "input_size": 288}
    assert c.post == (("dba", 5.0), ("qe", 2.0))
    assert EvalConfig.parse(c.name) == c
    assert EvalConfig.parse("efficientnet-lite0:quantized=true").options == (("quantized", True),)
    assert EvalConfig.parse("onnx:/models/m.onnx+color=0.2").extractor == "onnx:/models/m.onnx"
    with pytest.raises(InvalidArgumentError, match="unknown post-processing"):
        EvalConfig.parse("efficientnet-lite0+sharpen")
    with pytest.raises(InvalidArgumentError, match="unknown extractor option"):
        EvalConfig.parse("efficientnet-lite0:colour=red")


# ------------------------------------------------------------------ a hand-made catalogue
# unit vectors in the plane at these angles (degrees); class = folder
ANGLES = {"a/1.jpg": 0, "a/2.jpg": 30, "a/3.jpg": 70, "b/1.jpg": 20, "b/2.jpg": 120, "b/3.jpg": 135}
# top-2 of each query (itself excluded), by hand:
#   a/1 -> b/1 (20), a/2 (30): rel [0, 1]  P .5  AP (1/2)/2 = .25
#   a/2 -> b/1 (10), a/1 (30): rel [0, 1]  P .5  AP .25
#   a/3 -> a/2 (40), b/1|b/2 (50): [1, 0]  P .5  AP (1/1)/2 = .5
#   b/1 -> a/2 (10), a/1 (20): [0, 0]      P 0   AP 0
#   b/2 -> b/3 (15), a/3 (50): [1, 0]      P .5  AP .5
#   b/3 -> b/2 (15), a/3 (65): [1, 0]      P .5  AP .5
HAND_P2 = 2.5 / 6
HAND_AP2 = 2.0 / 6


@pytest.fixture()
def hand_store(tmp_path: Path) -> Path:
    ids = sorted(ANGLES)
    rad = np.deg2rad([ANGLES[i] for i in ids])
    X = np.stack([np.cos(rad), np.sin(rad)], 1).astype(np.float32)
    return FeatureStore.write(tmp_path / "store", ids, X, {"name": "test", "dim": 2})


def _row(report: EvalReport, method: str, **kw: object) -> dict:
    rows = [r for r in report.rows if r["method"] == method and all(r[k] == v for k, v in kw.items())]
    assert len(rows) == 1, rows
    return rows[0]


def test_exact_metrics_match_hand_computed_values(hand_store: Path) -> None:
    rep = evaluate(
        hand_store, configs=["efficientnet-lite0"], k_values=(2,), nprobes=(1, 2), top_k=2, n_queries=None
    )
    ex = _row(rep, "exact")
    assert ex["n_queries"] == 6 and ex["config"] == "test"  # named after the store's extractor
    assert ex["precision"] == pytest.approx(HAND_P2, abs=1e-4)
    assert ex["map"] == pytest.approx(HAND_AP2, abs=1e-4)
    assert ex["hit_rate"] == pytest.approx(5 / 6, abs=1e-4)
    assert ex["recall"] == 1.0 and ex["scanned"] == 1.0
    # nprobe = k scans every cluster: exact search
    full = _row(rep, "ranked", nprobe=2, k=2)
    assert full["recall"] == 1.0 and full["precision"] == ex["precision"] and full["scanned"] == 1.0
    assert rep.meta["n_catalogue"] == 6 and rep.meta["query_split"] == "leave-one-out"


def test_groups_are_neither_results_nor_relevant(hand_store: Path, tmp_path: Path) -> None:
    labels = tmp_path / "labels.csv"
    rows = [(i, i.split("/")[0], "g1" if i in ("a/1.jpg", "b/1.jpg") else "") for i in sorted(ANGLES)]
    with open(labels, "w", newline="") as f:
        csv.writer(f).writerows([("image", "label", "group"), *rows])
    rep = evaluate(
        hand_store, labels=labels, configs=["x"], k_values=(2,), nprobes=(), top_k=2, n_queries=None
    )
    ex = _row(rep, "exact")
    # a/1 no longer sees b/1: -> a/2, a/3 (P 1, AP 1); b/1 no longer sees a/1: -> a/2, a/3 (0)
    assert ex["precision"] == pytest.approx(3 / 6, abs=1e-4)
    assert ex["map"] == pytest.approx((1 + 0.25 + 0.5 + 0 + 0.5 + 0.5) / 6, abs=1e-4)
    assert rep.meta["groups"] is True


def test_read_labels_accepts_header_or_positional(tmp_path: Path) -> None:
    p = tmp_path / "l.csv"
    p.write_text("path,label,split\nx/1.jpg,shirt,train\n", encoding="utf-8")
    assert _read_labels(p) == ({"x/1.jpg": "shirt"}, {})
    p.write_text("x/1.jpg,shirt,g7\ny.jpg,hat\n", encoding="utf-8")
    assert _read_labels(p) == ({"x/1.jpg": "shirt", "y.jpg": "hat"}, {"x/1.jpg": "g7"})


# ------------------------------------------------------------------ real features of generated images
CONFIGS = [
    "efficientnet-lite0",
    "efficientnet-lite0+qe=2",
    "efficientnet-lite0+colour=0.15",  # the catalogue's colour rows, through the pipeline's re-ranking
    "efficientnet-lite0+pca=8",
]


@pytest.fixture(scope="module")
def synth_report(synth_store: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[EvalReport, Path]:
    out = tmp_path_factory.mktemp("eval")
    rep = evaluate(
        synth_store,
        configs=CONFIGS,
        k_values=(4,),
        nprobes=(1, 2, None),
        top_k=5,
        n_queries=None,
        out_dir=out,
    )
    return rep, out


def test_exact_recall_is_one_and_classes_are_found(synth_report: tuple[EvalReport, Path]) -> None:
    rep, _ = synth_report
    for cfg in CONFIGS:
        ex = _row(rep, "exact", config=EvalConfig.parse(cfg).name)
        assert ex["recall"] == 1.0 and ex["n_queries"] == 24
        assert ex["precision"] > 0.9  # four very different generated classes
    ranked = [r for r in rep.rows if r["method"] == "ranked"]
    assert ranked and all(0.0 < r["scanned"] <= 1.0 for r in ranked)
    assert all(r["search_ms_p50"] is not None and r["index_bytes"] > 0 for r in rep.rows)


def test_dba_needs_held_out_queries(synth_store: Path, tmp_path: Path) -> None:
    """Under leave-one-out the query would augment its own neighbours: refused (evaluate no longer
    edits the Searcher's vectors in place to undo it), measured on a held-out split."""
    kw: dict[str, Any] = {"k_values": (4,), "nprobes": (None,), "top_k": 5, "n_queries": None}
    with pytest.raises(InvalidArgumentError, match=r"\+dba needs held-out queries"):
        evaluate(synth_store, configs=["efficientnet-lite0+dba=3"], out_dir=tmp_path / "a", **kw)
    rep = evaluate(
        synth_store, configs=["efficientnet-lite0+dba=3"], query_split=0.25, out_dir=tmp_path / "b", **kw
    )
    assert _row(rep, "exact", config="efficientnet-lite0+dba=3")["recall"] == 1.0


def test_seed_baseline_is_first_members_of_the_predicted_cluster_in_csv_order(
    synth_report: tuple[EvalReport, Path], synth_store: Path
) -> None:
    rep, out = synth_report
    seed = _row(rep, "seed", k=4, config="efficientnet-lite0")
    # recompute the seed method by hand from the model's assignments CSV
    csvs = list((out / "index" / "efficientnet-lite0").rglob("clusters-k4.csv"))
    assert len(csvs) == 1
    with open(csvs[0], encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    cluster = {r["Image_File"]: int(r["Cluster"]) for r in rows}
    order = [r["Image_File"] for r in rows]
    precisions = []
    for q in order:  # every image is a query; a catalogue image's predicted cluster is its own
        found = [i for i in order if cluster[i] == cluster[q] and i != q][:5]
        precisions.append(sum(i.split("/")[0] == q.split("/")[0] for i in found) / 5)
    assert seed["precision"] == pytest.approx(float(np.mean(precisions)), abs=1e-4)
    assert seed["scanned"] == 0.0


def test_report_files_and_round_trip(synth_report: tuple[EvalReport, Path]) -> None:
    rep, out = synth_report
    for name in ("eval.json", "eval.md", "eval.html"):
        assert (out / name).is_file()
    data = json.loads((out / "eval.json").read_text())
    assert data["format"] == "varsitysrch-eval" and len(data["rows"]) == len(rep.rows)
    assert EvalReport.from_json(out / "eval.json").rows == rep.rows
    md = rep.to_markdown()
    assert "| config | method |" in md and "efficientnet-lite0+qe=2" in md and "seed" in md
    assert "<table>" in rep.to_html()
    # the features were not copied per post-processing config: one store was used
    assert not (out / "features").exists()


def test_held_out_split_removes_queries_from_the_catalogue(synth_store: Path) -> None:
    rep = evaluate(
        synth_store,
        k_values=(3,),
        nprobes=(None,),
        configs=["efficientnet-lite0"],
        query_split=0.25,
        top_k=3,
        n_queries=None,
        seed_baseline=False,
    )
    assert rep.meta["n_queries"] == 6 and rep.meta["n_catalogue"] == 18
    assert {r["method"] for r in rep.rows} == {"exact", "ranked"}
    assert _row(rep, "exact")["recall"] == 1.0


def test_images_end_to_end_with_latency(synth_catalogue, tmp_path: Path) -> None:
    root, _ = synth_catalogue
    rep = evaluate(root, k_values=(4,), nprobes=(1,), top_k=3, n_queries=8, n_latency=3, out_dir=tmp_path)
    # the default configurations: plain cosine, the library default, it without query expansion
    assert rep.meta["configs"] == [
        "efficientnet-lite0+pca=0+qe=0",
        "efficientnet-lite0",
        "efficientnet-lite0+qe=0",
    ]
    assert rep.meta["baseline"] == "efficientnet-lite0+pca=0+qe=0"
    ex = _row(rep, "exact", config="efficientnet-lite0")
    assert ex["embed_search_ms_p50"] is not None and ex["embed_search_ms_p50"] > ex["search_ms_p50"]
    assert (tmp_path / "features" / "efficientnet-lite0").is_dir()
    # a rerun reuses the extracted store
    mtime = (tmp_path / "features" / "efficientnet-lite0" / "vectors.npy").stat().st_mtime_ns
    evaluate(root, k_values=(4,), nprobes=(1,), top_k=3, n_queries=8, n_latency=0, out_dir=tmp_path)
    assert (tmp_path / "features" / "efficientnet-lite0" / "vectors.npy").stat().st_mtime_ns >= mtime


def test_clear_errors(hand_store: Path, tmp_path: Path) -> None:
    with pytest.raises(InvalidArgumentError, match="neither"):
        evaluate(tmp_path / "missing")
    with pytest.raises(InvalidArgumentError, match="only differ in post-processing"):
        evaluate(hand_store, configs=["efficientnet-lite0", "mobilenet-v2"])
    with pytest.raises(InvalidArgumentError, match="top_k"):
        evaluate(hand_store, top_k=0)
    with pytest.raises(InvalidArgumentError, match="query_split"):
        evaluate(hand_store, query_split=1.5, k_values=(2,))


# ------------------------------------------------------------------ recall@1 / @5 and separate query sets
def test_recall_at_1_and_5_by_hand(hand_store: Path) -> None:
    rep = evaluate(hand_store, configs=["x"], k_values=(2,), nprobes=(), top_k=2, n_queries=None)
    ex = _row(rep, "exact")
    # first results (see HAND_*): a/1 -> b/1, a/2 -> b/1, a/3 -> a/2, b/1 -> a/2, b/2 -> b/3, b/3 -> b/2
    assert ex["r1"] == pytest.approx(3 / 6, abs=1e-4)
    assert ex["r5"] == pytest.approx(5 / 6, abs=1e-4)  # top_k = 2 caps R@5 at the top 2
    assert "R@1" in rep.to_markdown()


@pytest.fixture(scope="module")
def shopper_photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Other photos of the same four classes (another seed, larger, on a cluttered frame)."""
    from PIL import Image

    from imagegen import make_synthetic_catalogue

    root = tmp_path_factory.mktemp("shoppers")
    made = make_synthetic_catalogue(root, n_classes=4, per_class=3, size=96, seed=7)
    rng = np.random.default_rng(3)
    for rel in made:  # paste each product into the corner of a noisy, bigger frame
        im = Image.open(root / rel).convert("RGB")
        frame = Image.fromarray(rng.integers(0, 256, size=(160, 160, 3), dtype=np.uint8))
        frame.paste(im, (int(rng.integers(0, 64)), int(rng.integers(0, 64))))
        frame.save(root / rel, "PNG" if rel.endswith(".png") else "JPEG")
    return root


def test_separate_query_set_is_searched_against_the_whole_catalogue(
    synth_catalogue: tuple[Path, dict[str, str]], shopper_photos: Path, tmp_path: Path
) -> None:
    root, _ = synth_catalogue
    rep = evaluate(
        root,
        configs=["efficientnet-lite0+pca=0", "efficientnet-lite0+pca=0+crops"],
        k_values=(4,),
        nprobes=(),
        top_k=5,
        n_queries=None,
        n_latency=2,
        seed_baseline=False,
        queries_dir=shopper_photos,
        out_dir=tmp_path,
    )
    assert rep.meta["n_catalogue"] == 24 and rep.meta["n_queries"] == 12  # nothing removed from the catalogue
    assert rep.meta["query_split"].startswith("query set")
    one = _row(rep, "exact", config="efficientnet-lite0+pca=0")
    many = _row(rep, "exact", config="efficientnet-lite0+pca=0+crops=1")
    for r in (one, many):
        assert 0.0 <= r["r1"] <= r["r5"] <= 1.0 and r["recall"] == 1.0
        assert r["r5"] > 0.5  # very different classes: the product's class is found
    # six views cost more than one to embed
    assert many["embed_search_ms_p50"] > one["embed_search_ms_p50"]
    # query vectors are cached: a rerun embeds nothing new
    cached = sorted((tmp_path / "queries").glob("*.npz"))
    assert len(cached) == 2


def test_query_csv_inside_the_catalogue_holds_those_images_out(
    synth_catalogue: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    root, labels = synth_catalogue
    picked = sorted(labels)[::4]  # 6 images
    qcsv = tmp_path / "queries.csv"
    qcsv.write_text("image,label\n" + "".join(f"{i},{labels[i]}\n" for i in picked), encoding="utf-8")
    rep = evaluate(
        root,
        configs=["efficientnet-lite0+pca=0"],
        k_values=(3,),
        nprobes=(),
        top_k=3,
        n_queries=None,
        n_latency=0,
        seed_baseline=False,
        queries_csv=qcsv,
        out_dir=tmp_path / "eval",
    )
    assert rep.meta["n_queries"] == 6 and rep.meta["n_catalogue"] == 18


def test_query_set_errors(
    synth_catalogue: tuple[Path, dict[str, str]], shopper_photos: Path, tmp_path: Path
) -> None:
    root, _ = synth_catalogue
    with pytest.raises(InvalidArgumentError, match="not both"):
        evaluate(root, query_split=0.2, queries_dir=shopper_photos)
    with pytest.raises(InvalidArgumentError, match="not a folder"):
        evaluate(root, queries_dir=tmp_path / "nope", k_values=(2,))
    other = tmp_path / "other"
    (other / "unknown-class").mkdir(parents=True)
    from PIL import Image

    Image.new("RGB", (32, 32), (1, 2, 3)).save(other / "unknown-class" / "x.png")
    with pytest.raises(InvalidArgumentError, match="labels must match"):
        evaluate(
            root, queries_dir=other, configs=["efficientnet-lite0+pca=0"], k_values=(2,), out_dir=tmp_path
        )
    # a CSV naming files outside the query folder reads nothing there
    bad = tmp_path / "bad.csv"
    bad.write_text("image,label\n../../etc/passwd,x\n", encoding="utf-8")
    with pytest.raises(InvalidArgumentError, match="no labelled query image"):
        evaluate(root, queries_dir=shopper_photos, queries_csv=bad, k_values=(2,))


def test_whitening_to_fewer_dims_trains_and_searches(synth_store: Path) -> None:
    # regression: the index store recorded the extractor's 1280 dims for whitened 8-dim vectors,
    # so its model file was refused as corrupt ("the extractor makes dim 1280 vectors ...")
    rep = evaluate(
        synth_store,
        k_values=(3,),
        nprobes=(None,),
        configs=["efficientnet-lite0+whiten=8"],
        top_k=3,
        n_queries=None,
        seed_baseline=False,
    )
    ranked = [r for r in rep.rows if r["method"] == "ranked"]
    assert ranked and all(0.0 <= r["map"] <= 1.0 for r in ranked)
    assert _row(rep, "exact")["recall"] == 1.0


def test_auto_views_are_measured_as_users_get_them(
    synth_catalogue: tuple[Path, dict[str, str]], shopper_photos: Path, tmp_path: Path
) -> None:
    """The bug: evaluate could not measure ``views="auto"`` (its queries never went through the
    search's own view decision).  ``+auto`` decides each query's views as a search does."""
    import re

    from varsitysrch import Searcher, SearchOptions
    from varsitysrch._pipeline import Query, run_search

    root, _ = synth_catalogue
    rep = evaluate(
        root, configs=["efficientnet-lite0+pca=0+auto"], k_values=(4,), nprobes=(), top_k=5, n_queries=None,
        n_latency=0, seed_baseline=False, queries_dir=shopper_photos, out_dir=tmp_path,
    )  # fmt: skip
    row = _row(rep, "exact", config="efficientnet-lite0+pca=0+auto=1")
    assert row["recall"] == 1.0 and row["n_queries"] == 12
    note = next(n for n in rep.meta["notes"] if "views='auto'" in n)
    crops = int(re.search(r"searched (\d+) of 12", note).group(1))  # type: ignore[union-attr]
    (model,) = (tmp_path / "index").rglob("model-k4.vsm")
    s = Searcher(model)
    photos = sorted(p for p in shopper_photos.rglob("*") if p.is_file())
    users = sum(run_search(s, Query(image=p), SearchOptions(views="auto")).views > 1 for p in photos)
    assert crops == users > 0, (crops, users)  # shop photos against studio shots: cropped


def _eval_row(
    config: str, method: str, nprobe: Any, label: str, map_: float, scanned: float
) -> dict[str, Any]:
    return {
        "config": config, "extractor": config, "options": {}, "post": [], "method": method,
        "k": None if method == "exact" else 10, "nprobe": nprobe, "nprobe_label": label, "n_queries": 50,
        "precision": map_, "map": map_, "recall": 1.0, "hit_rate": 1.0, "r1": 0.8, "r5": 0.9,
        "scanned": scanned, "search_ms_p50": 1.0, "search_ms_p95": 2.0, "embed_search_ms_p50": None,
        "embed_search_ms_p95": None, "index_bytes": 1000, "dim": 1280,
    }  # fmt: skip


def test_eval_summary_for_its_user_and_no_duplicate_rows() -> None:
    """Issue 22.6: a 16 x 15 table of jargon with identical rows; now a short summary of the user's
    search and the one setting worth changing, the table (without repeats) behind --details."""
    from varsitysrch._evaluate import DEFAULT_EXTRACTOR, EvalReport

    d = DEFAULT_EXTRACTOR
    rows = [
        _eval_row(d, "exact", None, "all", 0.70, 1.0),
        _eval_row(d, "ranked", 2, "default=2", 0.60, 0.2),
        _eval_row(d, "ranked", 2, "2", 0.60, 0.2),  # the default measured again: one row
        _eval_row(d, "ranked", 4, "4", 0.66, 0.4),
        _eval_row(f"{d}+qe=0", "ranked", 2, "default=2", 0.55, 0.2),
    ]
    rep = EvalReport(rows, {"top_k": 10, "n_catalogue": 300, "n_queries": 50})
    assert len(rep.distinct_rows()) == 4
    assert [r["nprobe_label"] for r in rep.distinct_rows()].count("2 (default)") == 1
    text = rep.summary()
    assert "mAP@10 0.600" in text and "recall@1 0.800" in text and "k = 10 clusters" in text
    assert "80 % of searches" in text and "Worth changing: search with --exact" in text
    assert len(text.splitlines()) <= 6 and "ΔmAP" not in text and "LOO" not in text
    rows[0]["map"] = 0.61  # exact barely better; nprobe 4 best
    assert (
        "Worth changing: search with --nprobe 4 (mAP@10 0.660, +0.060" in EvalReport(rows, rep.meta).summary()
    )
    flat = [dict(r, map=0.6) for r in rows]
    assert "keep the defaults" in EvalReport(flat, rep.meta).summary()
    md = rep.to_markdown()
    assert md.count("| 2 (default) |") == 1 and "| default=2 |" not in md.split(f"| {d}+qe=0")[0]
