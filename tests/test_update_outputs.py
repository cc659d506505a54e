"""`varsitysrch update` never replaces a CSV that is not its model's own (issue 22, item 2): its CSV
defaults to the model's name, and any other existing file is refused without --force."""

from __future__ import annotations

import shutil
from pathlib import Path

from typer.testing import CliRunner

from varsitysrch.cli import app


def test_update_rewrites_the_models_own_csv_and_refuses_another_file(
    synth_catalogue: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    root, _ = synth_catalogue
    cat = tmp_path / "cat"
    shutil.copytree(root, cat)
    runner = CliRunner()
    assert runner.invoke(app, ["extract", str(cat), str(tmp_path / "f")]).exit_code == 0
    res = runner.invoke(app, ["train", str(tmp_path / "f"), "-m", str(tmp_path / "a.vsm"), "-k", "3"])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "a.csv").is_file()  # train's default: the model's name
    other = tmp_path / "prices.csv"
    other.write_text("image,price\nx.jpg,3\n")
    upd = ["update", str(cat), str(tmp_path / "f"), "-m", str(tmp_path / "a.vsm")]
    # a file the model did not write: refused in one line that says how to go on; nothing written
    res = runner.invoke(app, [*upd, "-c", str(other)])
    assert res.exit_code == 2 and "--force" in res.output, res.output
    assert other.read_text() == "image,price\nx.jpg,3\n"
    # the default is the model's own CSV (a.vsm -> a.csv), never a clusters.csv of the working folder
    before = (tmp_path / "a.csv").read_bytes()
    res = runner.invoke(app, upd)
    assert res.exit_code == 0, res.output
    assert (tmp_path / "a.csv").read_bytes() == before  # unchanged catalogue: the same assignments
    # --force is the way to go on
    res = runner.invoke(app, [*upd, "-c", str(other), "--force"])
    assert res.exit_code == 0, res.output
    assert other.read_text().startswith("Image_File,Cluster")
