"""The command line: instant help, the three core commands, exit code 2 on bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

from varsitysrch.cli import app

runner = CliRunner()


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


def test_extract_train_search(synth_catalogue, tmp_path: Path) -> None:
    root, labels = synth_catalogue
    feat, model, csv = tmp_path / "feat", tmp_path / "m.vsm", tmp_path / "c.csv"
    res = runner.invoke(app, ["extract", str(root), str(feat), "--quiet"])
    assert res.exit_code == 0, res.output
    assert f"{len(labels)} images" in res.output
    res = runner.invoke(app, ["train", str(feat), "--model", str(model), "--csv", str(csv), "-k", "4"])
    assert res.exit_code == 0, res.output
    rel = sorted(labels)[0]
    res = runner.invoke(
        app, ["search", str(root / rel), "-m", str(model), "-c", str(csv), "-n", "3", "--json"]
    )
    assert res.exit_code == 0, res.output
    hits = json.loads(res.output)
    assert hits[0]["image"] == rel and len(hits) == 3
    res = runner.invoke(app, ["search", str(root / rel), "-m", str(model), "-n", "2"])
    assert res.exit_code == 0 and rel.split("/")[-1][:10] in res.output


def test_bad_input_exits_2_with_a_message(tmp_path: Path, synth_store: Path) -> None:
    res = runner.invoke(app, ["extract", str(tmp_path / "missing"), str(tmp_path / "f")])
    assert res.exit_code == 2 and "img_folder" in res.output
    res = runner.invoke(app, ["train", str(synth_store), "--model", str(tmp_path / "m"), "-k", "1"])
    assert res.exit_code == 2 and "num_clusters must be in" in res.output
    res = runner.invoke(app, ["search", str(tmp_path / "q.jpg"), "-m", str(tmp_path / "nope.vsm")])
    assert res.exit_code == 2 and "does not exist" in res.output
