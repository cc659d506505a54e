"""The command line: instant help, flags as flags, -v/-q anywhere, full ids, one line per step."""

from __future__ import annotations

import json
import subprocess
import sys
from io import StringIO
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from varsitysrch import __version__
from varsitysrch.cli import app, cluster_warnings, k_table, render_hits

runner = CliRunner()

COMMANDS = ("extract", "train", "search", "choose-k", "serve", "update", "eval", "report", "duplicates")


def _tsv(text: str) -> list[dict[str, str]]:
    lines = [ln for ln in text.splitlines() if ln]
    head = lines[0].split("\t")
    rows = [dict(zip(head, ln.split("\t"), strict=True)) for ln in lines[1:]]
    return rows


def test_help_does_not_import_heavy_modules() -> None:
    code = (
        "import sys; from varsitysrch.cli import app; "
        "heavy = [m for m in ('numpy', 'onnxruntime', 'sklearn', 'faiss', 'PIL') if m in sys.modules]; "
        "print(heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
    res = runner.invoke(app, ["--help"])
    assert res.exit_code == 0 and "extract" in res.output and "search" in res.output


@pytest.mark.parametrize("command", COMMANDS)
def test_boolean_options_are_shown_as_flags(command: str) -> None:
    res = runner.invoke(app, [command, "--help"])
    assert res.exit_code == 0, res.output
    assert "<bool>" not in res.output and "--verbose" in res.output


def test_a_flag_takes_no_value() -> None:
    res = runner.invoke(app, ["search", "q.jpg", "--exact", "true"])
    assert res.exit_code == 2 and "unexpected extra argument" in res.output.lower()


def test_version() -> None:
    res = runner.invoke(app, ["--version"])
    assert res.exit_code == 0 and res.stdout.strip() == f"varsitysrch {__version__}"


def test_extract_train_search(synth_catalogue, tmp_path: Path) -> None:
    root, labels = synth_catalogue
    feat, model, csv = tmp_path / "feat", tmp_path / "m.vsm", tmp_path / "c.csv"
    res = runner.invoke(app, ["extract", str(root), str(feat)])
    assert res.exit_code == 0, res.output
    # one step line: counts and where it was written; no progress bar in a non-terminal
    (line,) = res.stdout.splitlines()
    assert line.startswith(f"{len(labels)} images in {feat}") and f"{len(labels)} embedded" in line
    assert "\r" not in res.stderr and "img/s]" not in res.stderr
    res = runner.invoke(app, ["train", str(feat), "--model", str(model), "--csv", str(csv), "-k", "4"])
    assert res.exit_code == 0, res.output
    (line,) = res.stdout.splitlines()
    assert line.startswith(f"trained k=4 on {len(labels)} images") and str(model) in line and str(csv) in line
    assert res.stderr == ""  # 6 images per cluster: no warning
    rel = sorted(labels)[0]
    res = runner.invoke(
        app, ["search", str(root / rel), "-m", str(model), "-c", str(csv), "-n", "3", "--json"]
    )
    assert res.exit_code == 0, res.output
    hits = json.loads(res.stdout)
    assert hits[0]["image"] == rel and len(hits) == 3 and hits[0]["rank"] == 1
    # piped (not a terminal): tab-separated, full ids, a path column; --plain the same
    for extra in ([], ["--plain"]):
        res = runner.invoke(
            app, ["search", str(root / rel), "-m", str(model), "-n", "2", "--images", str(root), *extra]
        )
        assert res.exit_code == 0, res.output
        rows = _tsv(res.stdout)
        assert [r["rank"] for r in rows] == ["1", "2"]
        assert rows[0]["image"] == rel and float(rows[0]["score"]) == pytest.approx(1.0, abs=1e-3)
        assert all(r["image"] in labels for r in rows)
        assert Path(rows[0]["path"]) == (root / rel).resolve()


def test_quiet_silences_step_lines_before_or_after_the_command(synth_catalogue, synth_store: Path) -> None:
    root, _ = synth_catalogue
    for args in (
        ["extract", str(root), str(synth_store), "--quiet"],
        ["-q", "extract", str(root), str(synth_store)],
    ):
        res = runner.invoke(app, args)
        assert res.exit_code == 0, res.output
        assert res.stdout == "" and res.stderr == ""


@pytest.mark.parametrize("where", ["before", "after"])
def test_verbose_before_or_after_the_command(tmp_path: Path, where: str) -> None:
    cmd = ["search", str(tmp_path / "q.jpg"), "-m", str(tmp_path / "nope.vsm")]
    res = runner.invoke(app, cmd)
    assert res.exit_code == 2 and "Traceback" not in res.stderr
    assert res.stderr.count("\n") == 1 and res.stderr.startswith("error: ")
    res = runner.invoke(app, ["-v", *cmd] if where == "before" else [*cmd, "-v"])
    assert res.exit_code == 2
    assert "Traceback" in res.stderr and res.stderr.rstrip().splitlines()[-1].startswith("error: ")


def test_verbose_shows_the_library_log(synth_catalogue, synth_store: Path) -> None:
    root, _ = synth_catalogue
    res = runner.invoke(app, ["-v", "extract", str(root), str(synth_store)])
    assert res.exit_code == 0, res.output
    assert "INFO varsitysrch" in res.stderr
    res = runner.invoke(app, ["extract", str(root), str(synth_store)])
    assert "INFO" not in res.stderr


def test_results_table_never_cuts_ids() -> None:
    from rich.console import Console

    from varsitysrch._search import Hit

    long_id = "a-very-long-folder-name/with/several/levels/and-a-product-photo-called-0123456789.jpg"
    hits = [Hit(image=long_id, score=0.987654, cluster=3, rank=1, path="/catalogue/" + long_id)]
    buf = StringIO()
    render_hits(hits, "1 most similar", Console(file=buf, width=60, color_system=None))
    text = buf.getvalue()
    (head,) = [ln for ln in text.splitlines() if ln.startswith("┃")]
    header = [c.strip() for c in head.strip("┃").split("┃")]
    body = [[c.strip() for c in ln.strip("│").split("│")] for ln in text.splitlines() if ln.startswith("│")]
    image = "".join(row[header.index("image")] for row in body)
    path = "".join(row[header.index("path")] for row in body)
    assert image == long_id and path == "/catalogue/" + long_id
    assert all(len(ln) <= 60 for ln in buf.getvalue().splitlines())


def test_choose_k_table_fits_100_columns_with_a_legend() -> None:
    nprobes = (1, 2, 4, 8)
    rows = []
    for k in range(2, 41):
        row = {"k": k, "inertia": 123456.789 / k, "silhouette": 0.2 + k / 1000, "davies_bouldin": 1.5}
        row.update({f"recall_at_10_nprobe{p}": 0.5 + p / 20 for p in nprobes})
        row.update({f"scanned_nprobe{p}": p / k for p in nprobes})
        rows.append(row)
    text = k_table(rows, recommended_k=12)
    lines = text.splitlines()
    assert max(len(ln) for ln in lines) <= 100
    head = lines[0].split()
    assert head == ["k", "inertia", "silh", "DB", "R1", "R2", "R4", "R8", "S1", "S2", "S4", "S8"]
    assert sum("<- recommended" in ln for ln in lines) == 1
    assert next(ln for ln in lines if "<- recommended" in ln).split()[0] == "12"
    # every abbreviated header is explained below the table
    legend = [ln.split()[0] for ln in lines[1 + len(rows) :]]
    assert legend == ["silh", "DB", "Rn", "Sn"]


def test_choose_k_command(synth_store: Path) -> None:
    res = runner.invoke(app, ["choose-k", str(synth_store), "--max-clusters", "6"])
    assert res.exit_code == 0, res.output
    lines = res.stdout.splitlines()
    assert max(len(ln) for ln in lines) <= 100
    assert lines[0].split()[:4] == ["k", "inertia", "silh", "DB"]
    assert [ln.split()[0] for ln in lines[1:6]] == ["2", "3", "4", "5", "6"]
    assert sum(ln.startswith("recommended k = ") for ln in lines) == 1
    res = runner.invoke(app, ["choose-k", str(synth_store), "--max-clusters", "6", "--json"])
    assert json.loads(res.stdout)["ks"] == [2, 3, 4, 5, 6]


def test_cluster_size_warnings() -> None:
    (w,) = cluster_warnings(40, [1] * 40)
    assert w.startswith("k=40 on 40 images: one image per cluster") and "choose-k" in w
    (w,) = cluster_warnings(20, [1, 1, 2, 2, 3, 4] + [2] * 14)
    assert w.startswith("k=20 on 41 images: 2.0 images per cluster") and "sizes 1..4" in w
    (w,) = cluster_warnings(10, [1, 1, 1] + [50] * 7)
    assert w.startswith("3 of 10 clusters hold at most one image")
    assert cluster_warnings(4, [6, 6, 6, 6]) == []
    assert cluster_warnings(20, [50] * 20) == []


def test_train_warns_when_k_is_close_to_the_number_of_images(
    synth_catalogue, synth_store: Path, tmp_path: Path
) -> None:
    n = len(synth_catalogue[1])
    res = runner.invoke(
        app,
        [
            "train",
            str(synth_store),
            "-m",
            str(tmp_path / "m.vsm"),
            "-c",
            str(tmp_path / "c.csv"),
            "-k",
            str(n),
        ],
    )
    assert res.exit_code == 0, res.output
    assert f"warning: k={n} on {n} images: one image per cluster" in res.stderr
    res = runner.invoke(
        app,
        [
            "-q",
            "train",
            str(synth_store),
            "-m",
            str(tmp_path / "m.vsm"),
            "-c",
            str(tmp_path / "c.csv"),
            "-k",
            "12",
        ],
    )
    assert res.stdout == "" and f"warning: k=12 on {n} images: 2.0 images per cluster" in res.stderr


def test_extract_allow_empty(synth_catalogue, synth_store: Path, tmp_path: Path) -> None:
    # an empty (or unmounted) folder never empties a store; --allow-empty says it may
    import shutil

    _, labels = synth_catalogue
    store = tmp_path / "store"
    shutil.copytree(synth_store, store)
    empty = tmp_path / "empty"
    empty.mkdir()
    res = runner.invoke(app, ["extract", str(empty), str(store)])
    assert res.exit_code == 2 and "--allow-empty" in res.stderr
    res = runner.invoke(app, ["extract", str(empty), str(store), "--allow-empty"])
    assert res.exit_code == 0, res.output
    assert res.stdout.startswith(f"0 images in {store}") and f"{len(labels)} removed" in res.stdout


def test_non_utf8_names_in_messages_do_not_crash_the_cli(monkeypatch: pytest.MonkeyPatch) -> None:
    # a file name that is not valid UTF-8 reaches a message as lone surrogates: shown as \xNN
    import os

    import varsitysrch

    name = os.fsdecode(b"caf\xe9.jpg")

    def refuse(*a, **k):
        raise varsitysrch.ImageError(f"{name}: cannot decode")

    monkeypatch.setattr(varsitysrch, "Searcher", refuse)
    res = runner.invoke(app, ["search", "q.jpg"])
    assert res.exit_code == 2 and res.stderr == "error: caf\\xe9.jpg: cannot decode\n"


def test_non_utf8_ids_reach_piped_output(synth_catalogue, tmp_path: Path) -> None:
    # a real process whose stdout is a pipe (strict UTF-8): an id that is not valid UTF-8 is
    # printed as \xNN in TSV and as the JSON escape \udcNN, never a UnicodeEncodeError
    import os
    import shutil

    from varsitysrch import extract_features, train_clusters

    root, labels = synth_catalogue
    cat = tmp_path / "cat"
    cat.mkdir()
    for rel in sorted(labels)[:6]:
        shutil.copy(root / rel, cat / Path(rel).name.replace(".", f"-{Path(rel).parent.name}.", 1))
    first = sorted(cat.iterdir())[0]
    odd = os.fsdecode(b"caf\xe9-" + os.fsencode(first.name))
    first.rename(cat / odd)
    extract_features(cat, tmp_path / "f", show_progress=False)
    train_clusters(tmp_path / "f", tmp_path / "m.vsm", tmp_path / "c.csv", 2, show_progress=False)
    cmd = [
        sys.executable,
        "-m",
        "varsitysrch.cli",
        "search",
        os.fsencode(cat / odd),
        "-m",
        str(tmp_path / "m.vsm"),
    ]
    env = {**os.environ, "PYTHONIOENCODING": "utf-8:strict"}
    out = subprocess.run([*cmd, "-n", "1"], capture_output=True, env=env)
    assert out.returncode == 0, out.stderr.decode(errors="replace")
    rows = _tsv(out.stdout.decode("utf-8"))
    assert rows[0]["image"] == "caf\\xe9-" + first.name
    out = subprocess.run([*cmd, "-n", "1", "--json"], capture_output=True, env=env)
    assert out.returncode == 0 and json.loads(out.stdout)[0]["image"] == odd


def test_printable_keeps_text_and_escapes_only_undecodable_bytes() -> None:
    import os

    from varsitysrch.cli import _printable

    assert _printable("plain é ü 商品.jpg") == "plain é ü 商品.jpg"
    assert _printable(os.fsdecode(b"caf\xe9.jpg")) == "caf\\xe9.jpg"
    assert _printable("x\ud800y") == "x\\ud800y"  # not an escaped byte: still printable


def test_update_reports_its_summary_or_json(synth_catalogue, tmp_path: Path) -> None:
    import shutil

    from varsitysrch import extract_features, train_clusters

    root, labels = synth_catalogue
    cat, store, model, csv = tmp_path / "cat", tmp_path / "store", tmp_path / "m.vsm", tmp_path / "c.csv"
    shutil.copytree(root, cat)
    extract_features(cat, store, show_progress=False)
    train_clusters(store, model, csv, 4, show_progress=False)
    (cat / sorted(labels)[0]).unlink()
    args = [str(cat), str(store), "-m", str(model), "-c", str(csv)]
    res = runner.invoke(app, ["update", *args])
    assert res.exit_code == 0, res.output
    assert res.stdout.startswith(f"{len(labels) - 1} images: 0 added, 0 changed, 1 removed")
    res = runner.invoke(app, ["update", *args, "--json"])
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)
    assert (report["removed"], report["added"], report["changed"]) == (0, 0, 0)
    res = runner.invoke(app, ["-q", "update", *args])
    assert res.exit_code == 0 and res.stdout == ""


def test_query_expansion_options(synth_catalogue, synth_store: Path, tmp_path: Path) -> None:
    from varsitysrch import Searcher

    root, labels = synth_catalogue
    rel = sorted(labels)[0]
    base = ["train", str(synth_store), "-k", "4"]  # each model its own CSV (d.csv, p.csv: issue 22.2)
    assert runner.invoke(app, [*base, "--model", str(tmp_path / "d.vsm")]).exit_code == 0
    assert Searcher(tmp_path / "d.vsm").query_expansion == 0  # the default: opt-in (docs/quality.md)
    res = runner.invoke(app, [*base, "--model", str(tmp_path / "p.vsm"), "--query-expansion", "2"])
    assert res.exit_code == 0, res.output
    assert Searcher(tmp_path / "p.vsm").query_expansion == 2
    res = runner.invoke(app, [*base, "--model", str(tmp_path / "x.vsm"), "--query-expansion", "-1"])
    assert res.exit_code == 2 and "--query-expansion" in res.stderr and not (tmp_path / "x.vsm").exists()

    def found(model: str, *extra: str) -> list[dict[str, Any]]:
        res = runner.invoke(
            app,  # the query expansion's own order (re-ranking off)
            ["search", str(root / rel), "-m", str(tmp_path / model), "-n", "8", "--json", "--rerank", "none",
             *extra],
        )  # fmt: skip
        assert res.exit_code == 0, res.output
        return list(json.loads(res.stdout))

    def order(hits: list[dict[str, Any]]) -> list[str]:
        return [h["image"] for h in hits]

    # plain cosine ranking either way when asked for; the expanded ranking orders the hits otherwise
    # (Hit.score is the plain cosine whatever ranked the hits: the same image, the same score)
    plain, expanded = found("d.vsm"), found("p.vsm")
    assert order(found("p.vsm", "--query-expansion", "0")) == order(plain)
    assert order(found("d.vsm", "--query-expansion", "2")) == order(expanded)
    assert order(expanded) != order(plain)
    plain_score = {h["image"]: h["score"] for h in plain}
    for h in expanded:
        if h["image"] in plain_score:
            assert h["score"] == pytest.approx(plain_score[h["image"]], abs=1e-6)
