"""Every benchmark script can be started by anyone: ``--help`` works, and a missing dev set is one clear line.

Issue 22 (benchmarks anyone can rerun): a script that needs a dev set takes its folder from
``--data`` or ``$VARSITYSRCH_DATA`` (never a developer's absolute folder); pointed at an empty
folder it stops with status 2 and one line on stderr naming both, and no traceback.  Scripts on
generated data need no path.  Each case is one short subprocess (imports are lazy in the scripts).
"""

from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
HELPERS = {"benchdata.py"}  # shared by the scripts, not a benchmark
#: scripts that need a dev set (under --data / $VARSITYSRCH_DATA) when run with no other input
NEEDS_DATA = {
    "bench_collapse.py",
    "bench_confidence.py",
    "bench_duplicates.py",
    "bench_extract.py",
    "bench_feedback.py",
    "bench_int8.py",
    "bench_report.py",
    "bench_update.py",
    "colour_labels.py",
    "dev_domains.py",
    "eval_clothing.py",
    "eval_contract.py",
    "eval_domains.py",
    "relevance_probe.py",
    "shelf_studio.py",
}
#: scripts on generated data (or the shipped examples/catalog): no path needed
GENERATED = {
    "bench_choose_k.py",
    "entry_points.py",
    "bench_filters.py",
    "bench_kmeans.py",
    "bench_rerank_build.py",
    "bench_scale.py",
    "bench_search.py",
    "load_service.py",
}
SCRIPTS = sorted(p.name for p in BENCH.glob("*.py") if p.name not in HELPERS)
#: what dev_domains.py (its own argument rules) needs besides the data folder to reach the data check
EXTRA_ARGS = {"dev_domains.py": ["--variant", "int8:quantized=true"]}
#: dev_domains.py (not under benchdata.py's convention) names only the flag when the folder is empty
NAMES_ON_EMPTY = {"dev_domains.py": ("--data",), "relevance_probe.py": ("--data",)}


def run(script: str, *args: str, data: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "VARSITYSRCH_DATA"}
    if data is not None:
        env["VARSITYSRCH_DATA"] = data
    return subprocess.run(
        [sys.executable, str(BENCH / script), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=BENCH.parent,
    )


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, str], subprocess.CompletedProcess[str]]:
    """Every (script, case) run once, a few at a time (each is mostly interpreter start-up)."""
    empty = tmp_path_factory.mktemp("empty-data")
    cases: dict[tuple[str, str], tuple[str, list[str], str | None]] = {}
    for script in SCRIPTS:
        cases[(script, "help")] = (script, ["--help"], None)
    for script in NEEDS_DATA:
        extra = EXTRA_ARGS.get(script, [])
        cases[(script, "empty")] = (script, extra, str(empty))
        cases[(script, "none")] = (script, extra, None)
    with ThreadPoolExecutor(4) as pool:
        futures = {key: pool.submit(run, s, *a, data=d) for key, (s, a, d) in cases.items()}
        return {key: f.result() for key, f in futures.items()}


def one_error_line(r: subprocess.CompletedProcess[str], script: str) -> str:
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert "Traceback" not in r.stderr, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith(f"{script}: error: "), lines[0]
    assert r.stdout == ""
    return lines[0]


def test_every_script_is_classified() -> None:
    """A new benchmark must say whether it needs a dev set (and get the checks below)."""
    assert set(SCRIPTS) == NEEDS_DATA | GENERATED, set(SCRIPTS) ^ (NEEDS_DATA | GENERATED)
    assert not NEEDS_DATA & GENERATED


@pytest.mark.parametrize("script", SCRIPTS)
def test_help(script: str, runs: dict[tuple[str, str], subprocess.CompletedProcess[str]]) -> None:
    r = runs[(script, "help")]
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(f"usage: {script}"), r.stdout[:200]
    assert "Traceback" not in r.stderr


@pytest.mark.parametrize("script", sorted(NEEDS_DATA))
def test_empty_data_folder_is_one_clear_line(
    script: str, runs: dict[tuple[str, str], subprocess.CompletedProcess[str]]
) -> None:
    line = one_error_line(runs[(script, "empty")], script)
    for name in NAMES_ON_EMPTY.get(script, ("--data", "VARSITYSRCH_DATA")):
        assert name in line, line


@pytest.mark.parametrize("script", sorted(NEEDS_DATA))
def test_no_data_folder_at_all_names_flag_and_variable(
    script: str, runs: dict[tuple[str, str], subprocess.CompletedProcess[str]]
) -> None:
    line = one_error_line(runs[(script, "none")], script)
    assert "--data" in line and "VARSITYSRCH_DATA" in line, line


def test_no_absolute_developer_folders() -> None:
    """No script defaults to a folder of the developers' machines."""
    for script in SCRIPTS:
        text = (BENCH / script).read_text(encoding="utf-8")
        for bad in ("/tmp/team", "/work/shared", '"shared" / "data"', "/tmp/cs-feats"):
            assert bad not in text, f"{script} still names {bad}"
