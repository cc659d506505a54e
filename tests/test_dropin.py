"""The original package's own client code runs against varsitysrch.

``../shared/original-vasrch/`` holds the original ``vasrch`` package, its ``example.py`` and its
``tests.py``.  These tests copy the two scripts into a temporary folder at test time (they are
never copied into this repository), change only what the migration asks for, and run them in a
subprocess against varsitysrch:

* ``example.py`` with only its import line changed; its image folder is the 40-photo sample
  catalogue and its query ``examples/query.jpg``.
* ``tests.py`` (it already imports ``varsitysrch``), with its single red test image replaced by a
  few real photos: even the original cannot cluster one image.

Skipped when the original package's folder is absent.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
ORIGINAL = Path(os.environ.get("VARSITYSRCH_ORIGINAL", REPO.parent / "shared" / "original-vasrch"))
CATALOG = REPO / "examples" / "catalog"
QUERY = REPO / "examples" / "query.jpg"

pytestmark = pytest.mark.skipif(not (ORIGINAL / "example.py").is_file(), reason=f"{ORIGINAL} absent")


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["MPLBACKEND"] = "Agg"  # the original calls plt.show(); nothing may block
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "src"), env.get("PYTHONPATH", "")])
    return env


def _run(args: list[str], cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args], cwd=cwd, env=_env(), capture_output=True, text=True, timeout=timeout
    )


def test_original_example_runs_with_only_the_import_changed(tmp_path: Path) -> None:
    source = (ORIGINAL / "example.py").read_text()
    changed = source.replace("from vasrch import", "from varsitysrch import")
    assert changed != source and changed.count("varsitysrch") == 1
    (tmp_path / "example.py").write_text(changed)
    shutil.copytree(CATALOG, tmp_path / "test_images")
    shutil.copy(QUERY, tmp_path / "test_image.jpg")

    proc = _run(["example.py"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]

    # the plot of step 2 is left where the original left it, and the user is told
    plot = tmp_path / "optimal_clusters.png"
    assert plot.is_file() and plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "optimal_clusters.png" in proc.stdout + proc.stderr

    # the result list reads as image paths, one per line, after the original's header
    out = proc.stdout.splitlines()
    head = out.index("Similar images to test_image.jpg are:")
    results = out[head + 1 : head + 6]
    assert len(results) == 5, proc.stdout
    for r in results:
        assert r.endswith(".jpg") and (tmp_path / "test_images" / r).is_file(), r
    assert len(set(results)) == 5

    # one line per step, as the original printed, before the results
    steps = out[:head]
    assert [ln for ln in steps if ln.startswith("Feature extraction completed: 40 images")], steps
    assert [ln for ln in steps if ln.endswith("plot saved to optimal_clusters.png")], steps
    assert "Model saved to test_model.pkl and cluster assignments saved to metadata.csv (k=20, 40 images" in (
        proc.stdout
    )
    assert [ln for ln in steps if ln.startswith("Found 5 similar images (searched ")], steps
    # the CSV is the original's: its pandas search code finds each result's cluster mates
    pd = pytest.importorskip("pandas")
    df = pd.read_csv(tmp_path / "metadata.csv")
    assert {"Image_File", "Cluster"} <= set(df.columns) and len(df) == 40
    cluster = int(df[df["Image_File"] == results[0]]["Cluster"].iloc[0])
    assert results[0] in df[df["Cluster"] == cluster]["Image_File"].tolist()


def _adapted_unittests(tmp_path: Path) -> Path:
    source = (ORIGINAL / "tests.py").read_text()
    assert "from varsitysrch import VaSrch" in source
    red = re.compile(
        r"img = Image\.new\('RGB', \(224, 224\), color='red'\)\n(\s+)img\.save\(cls\.test_image_path\)"
    )
    assert red.search(source), "tests.py changed: the adaptation below no longer applies"
    photos = sorted(CATALOG.glob("*/*.jpg"))[::4][:8]  # 8 photos from 8 classes
    copy = "\n".join(
        [
            "import shutil as _sh",
            *[f"_sh.copy({str(p)!r}, cls.test_image_folder)" for p in photos],
            f"_sh.copy({str(QUERY)!r}, cls.test_image_path)",
        ]
    )
    source = red.sub(lambda m: copy.replace("\n", "\n" + m.group(1)), source)
    path = tmp_path / "tests.py"
    path.write_text(source)
    return path


def test_original_unittests_pass_on_real_photos(tmp_path: Path) -> None:
    pytest.importorskip("pandas")
    _adapted_unittests(tmp_path)
    proc = _run(["-m", "unittest", "-v", "tests"], tmp_path)
    report = proc.stderr
    outcome = dict(re.findall(r"^(test_\w+) \(tests\.TestVaSrch\.\w+\)(?:\n.*?)? \.\.\. (\w+)", report, re.M))
    assert set(outcome) == {
        "test_extract_features",
        "test_get_optimal_num_clusters",
        "test_train_clusters",
        "test_search_similar_images",
    }, report
    for name in ("test_get_optimal_num_clusters", "test_train_clusters", "test_search_similar_images"):
        assert outcome[name] == "ok", report
    # test_extract_features asserts on the old file layout: it takes the first name that
    # os.listdir() gives for the features folder and expects '.npy' (the original wrote one
    # .npy per image).  Our store holds vectors.npy beside ids.csv and store.json, so the
    # assertion holds or not depending on directory order; it is the one allowed exception.
    assert outcome["test_extract_features"] in {"ok", "FAIL"}, report
    if outcome["test_extract_features"] == "FAIL":
        assert "endswith('.npy')" in report or "False is not true" in report, report
