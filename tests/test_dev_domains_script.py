"""benchmarks/dev_domains.py cannot silently rot: its argument errors, its statistics on known
answers, and a tiny end-to-end run (extract, train, both protocols, table, cache) on a
generated 3-class catalogue."""

from __future__ import annotations

import csv
import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "dev_domains.py"


@pytest.fixture(scope="module")
def dd() -> ModuleType:
    spec = importlib.util.spec_from_file_location("dev_domains", SCRIPT)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules["dev_domains"] = mod
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from imagegen import make_synthetic_catalogue

    data = tmp_path_factory.mktemp("data")
    labels = make_synthetic_catalogue(data / "tiny", n_classes=3, per_class=6, size=64, seed=0)
    with open(data / "tiny" / "manifest.csv", "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label", "extra"])
        w.writerows([p, lab, "x"] for p, lab in sorted(labels.items()))
    return data


def _error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def test_missing_data_is_one_clear_line(
    dd: ModuleType, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("VARSITYSRCH_DATA", raising=False)
    assert dd.main(["--variant", "x:quantized=true", "--work", str(tmp_path)]) == 2
    line = _error_line(capsys)
    assert "--data" in line and "VARSITYSRCH_DATA" in line
    assert dd.main(["--data", str(tmp_path / "nope"), "--variant", "x:"]) == 2
    assert "nope" in _error_line(capsys)
    # a data folder without the domain, a domain without its manifest
    (tmp_path / "d" / "empty").mkdir(parents=True)
    for domains, word in (("absent", "absent"), ("empty", "manifest.csv")):
        rc = dd.main(
            ["--data", str(tmp_path / "d"), "--domains", domains, "--variant", "x:", "--work", str(tmp_path)]
        )
        assert rc == 2
        assert word in _error_line(capsys)


def test_data_from_the_environment(
    dd: ModuleType, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("VARSITYSRCH_DATA", str(tmp_path))
    assert dd.main(["--domains", "absent", "--variant", "x:", "--work", str(tmp_path)]) == 2
    assert str(tmp_path / "absent") in _error_line(capsys)


@pytest.mark.parametrize(
    ("argv", "word"),
    [
        (["--variant", "x:nonsense=1"], "nonsense"),
        (["--variant", "noname"], "NAME:"),
        (["--variant", "x:quantized"], "key=value"),
        (["--variant", "x:", "--protocols", "cross"], "--protocols"),
        (["--variant", "default:"], "differ"),
        ([], "--variant"),
    ],
)
def test_bad_arguments_name_the_argument(
    dd: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], word: str
) -> None:
    assert dd.main(["--data", str(tmp_path), *argv]) == 2
    assert word in _error_line(capsys)


def test_variant_options_are_sorted_into_their_stage(dd: ModuleType) -> None:
    v = dd.parse_variant("int8:quantized=true,query_expansion=0,views=none,colour_weight=0.15")
    assert v.extractor == {"quantized": True}
    assert v.searcher == {"query_expansion": 0}
    assert v.search == {"views": None, "colour_weight": 0.15}
    assert v.extractor_key == "quantized=true"
    assert dd.parse_variant("default:").extractor_key == "default"


def test_scores_and_rule_on_known_answers(dd: ModuleType) -> None:
    label_of = {"a": 0, "b": 1, "c": 0, "d": 0}
    ap, r1 = dd.score(["a", "b", "c"], 0, label_of, 2)  # relevant at ranks 1 and 3 of 2
    assert ap == pytest.approx((1 + 2 / 3) / 2) and r1 == 1.0
    ap, r1 = dd.score(["b", "a"], 0, label_of, 5)  # min(10, R) = 5 in the denominator
    assert ap == pytest.approx(0.5 / 5) and r1 == 0.0
    # paired: a constant shift has a zero-width interval at the shift
    base = np.linspace(0, 1, 50)
    assert dd.paired_bootstrap(base, base + 0.1, 200, (0,)) == pytest.approx((0.1, 0.1, 0.1))
    diff, lo, hi = dd.paired_bootstrap(base, base[::-1], 500, (0,))  # mean difference 0, wide interval
    assert diff == pytest.approx(0.0, abs=1e-12) and lo < 0 < hi
    gain = {"metric": "mAP@10", "lo": 0.01, "hi": 0.03}
    tie = {"metric": "mAP@10", "lo": -0.01, "hi": 0.02}
    r1_loss = {"metric": "R@1", "lo": -0.05, "hi": -0.01}
    assert dd.verdict([gain, gain], True) == "adopt"
    assert dd.verdict([gain, tie], True) == "opt-in"
    assert dd.verdict([gain, r1_loss], True) == "opt-in"
    assert dd.verdict([gain], False) == "adopt (not a decision)"
    assert [dd.number_of_clusters(n) for n in (18, 100, 400, 6483)] == [2, 5, 20, 20]


def test_tiny_end_to_end_and_cached_rerun(
    dd: ModuleType, tiny_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    work, out = tmp_path / "work", tmp_path / "out.json"
    argv = ["--data", str(tiny_data), "--work", str(work), "--domains", "tiny", "--queries", "5"]
    argv += ["--speed", "0", "--resamples", "200", "--json", str(out), "--variant", "same:query_expansion=2"]
    argv += ["--variant", "plain:query_expansion=0,views=none"]
    assert dd.main(argv) == 0
    first = capsys.readouterr().out
    rec = json.loads(out.read_text())
    rows = rec["rows"]
    assert len(rows) == 2 * 2 * 2  # 2 variants x 2 protocols x 2 metrics, one domain
    assert {r["protocol"] for r in rows} == {"LOO", "held-out"}
    for r in rows:
        assert 0.0 <= r["baseline"] <= 1.0 and 0.0 <= r["value"] <= 1.0
        assert r["lo"] <= r["diff"] <= r["hi"]
    # the library's default query expansion is 2: a variant that sets it is the baseline itself
    same = [r for r in rows if r["name"] == "same"]
    assert len(same) == 4 and all(r["diff"] == r["lo"] == r["hi"] == 0.0 for r in same)
    assert rec["variants"]["same"]["verdict"] == "opt-in (not a decision)"
    assert "| tiny | LOO | mAP@10 |" in first and "| tiny | held-out | R@1 |" in first
    assert "| this run |" in first and "| cached |" not in first
    n_loo = len(rec["per_query"]["default"]["tiny/loo"]["ap"])
    assert n_loo == 5
    # a rerun only searches: the stores and models come from the work folder, same figures
    assert dd.main(argv) == 0
    second = capsys.readouterr().out
    assert "| cached |" in second and "| this run |" not in second

    def figures(rs: list[dict[str, object]]) -> list[tuple[object, ...]]:
        keys = ("name", "domain", "protocol", "metric", "baseline", "value", "lo", "hi")
        return [tuple(r[k] for k in keys) for r in rs]

    assert figures(json.loads(out.read_text())["rows"]) == figures(rows)
    # a model cached by another library is retrained (its store is reused): a stale model would be
    # measured as "the default" (the cache once held models with query expansion 2 and the PCA space)
    records = sorted(work.glob("stores/*/*/*.json"))
    assert records
    for rec_path in records:
        rec_path.write_text(json.dumps({**json.loads(rec_path.read_text()), "model_library": "0.0.1 @ old"}))
    assert dd.main(argv) == 0
    third = capsys.readouterr()
    assert third.err.count("retraining") == len(records) and "(trained by 0.0.1 @ old)" in third.err
    assert "| cached |" in third.out and "| this run |" not in third.out
    assert all(json.loads(p.read_text())["model_library"] != "0.0.1 @ old" for p in records)
    assert figures(json.loads(out.read_text())["rows"]) == figures(rows)


def test_a_union_of_domains_is_one_catalogue_with_labels_kept_apart(dd: ModuleType, tiny_data: Path) -> None:
    """``a+b``: every image of both folders, ids prefixed by their folder, and the same label name in
    two folders two different labels (a store selling both ranges)."""
    import shutil

    shutil.copytree(tiny_data / "tiny", tiny_data / "tiny2", dirs_exist_ok=True)
    one = dd.load_domain(tiny_data, "tiny", limit=None, n_queries=5, seed=0)
    both = dd.load_domain(tiny_data, "tiny+tiny2", limit=None, n_queries=5, seed=0)
    assert len(both.ids) == 2 * len(one.ids) and both.root == tiny_data
    assert both.ids == [f"tiny/{i}" for i in one.ids] + [f"tiny2/{i}" for i in one.ids]
    assert all((both.root / i).is_file() for i in both.ids)
    n = len(one.ids)
    assert len(set(both.labels.tolist())) == 2 * len(set(one.labels.tolist()))
    assert not set(both.labels[:n].tolist()) & set(both.labels[n:].tolist())
    with pytest.raises(dd.UsageError, match="absent"):
        dd.load_domain(tiny_data, "tiny+absent", limit=None, n_queries=5, seed=0)


def test_rerank_none_in_a_variant_switches_the_re_ranking_off(dd: ModuleType) -> None:
    """``rerank=none`` must reach the search as the string "none" (off): parsed as None it meant
    "the model's", and a baseline meant to be plain was re-ranked like the default."""
    assert dd.parse_variant("plain:rerank=none").search == {"rerank": "none"}
    assert dd.parse_variant("kr:rerank=k-reciprocal").search == {"rerank": "k-reciprocal"}
    assert dd.parse_variant("x:views=none").search == {"views": None}
