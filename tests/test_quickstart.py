"""The quick start (``examples/quickstart.py``) prints what ``docs/quickstart-output.txt`` shows.

The copy in ``docs/`` is what the README quotes.  Compared are the fields that do not depend on
the CPU: the catalogue's counts, each query and its product, each hit's rank, catalogue id and
same-product verdict, the per-query and summary counts, and the web-page command.  Scores,
timings and the library's own step lines (extraction rate, the choose-k explanation, k) are
not compared.  After a change that moves the results on purpose, regenerate the copy from the
repository root with ``python examples/quickstart.py > docs/quickstart-output.txt``.
"""

from __future__ import annotations

import csv
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "examples" / "quickstart.py"
COPY = REPO / "docs" / "quickstart-output.txt"
SHOP = REPO / "examples" / "shop"
GROCERY_DATA = Path(os.environ.get("VARSITYSRCH_DATA", REPO.parent / "shared" / "data"))

CATALOGUE = re.compile(r"^Catalogue: (\S+)/ \((\d+) products, (\d+) photos\); queries: (\d+) photos")
QUERY = re.compile(r"^Query (\d+) of (\d+): queries/(\S+), a photo of (\S+)$")
HIT = re.compile(r"^ +(\d+) +-?\d+\.\d{3} +(yes|no) +(\S+)$")
VERDICT = re.compile(
    r"^ +-> (its product|NOT its product) at #1; (\d+) of the top (\d+) (?:is|are) (\S+) "
    r"\(the catalogue has (\d+) photos of it\)$"
)
SUMMARY = re.compile(
    r"^Summary: (\d+) of (\d+) queries find their product at #1; (\d+) of the (\d+) catalogue photos "
    r"of their products are in their top (\d+)\.$"
)
SERVE = re.compile(r"^ +pip install '\.\[serve\]' && (varsitysrch serve .+)$")


def fields(text: str) -> dict[str, Any]:
    """The CPU-independent fields of the quick start's output (or of a quote of it)."""
    out: dict[str, Any] = {"catalogue": None, "queries": [], "summary": None, "serve": None}
    for line in text.splitlines():
        if m := CATALOGUE.match(line):
            out["catalogue"] = m.groups()
        elif m := QUERY.match(line):
            out["queries"].append({"query": m.groups(), "hits": [], "verdict": None})
        elif (m := HIT.match(line)) and out["queries"]:
            out["queries"][-1]["hits"].append(m.groups())
        elif (m := VERDICT.match(line)) and out["queries"]:
            out["queries"][-1]["verdict"] = m.groups()
        elif m := SUMMARY.match(line):
            out["summary"] = m.groups()
        elif m := SERVE.match(line):
            out["serve"] = m.group(1)
    return out


@pytest.fixture(scope="module")
def copy() -> dict[str, Any]:
    f = fields(COPY.read_text(encoding="utf-8"))
    # the parser must see the whole copy, or a format change would compare nothing with nothing
    assert f["catalogue"] and f["summary"] and f["serve"], COPY
    assert len(f["queries"]) == int(f["catalogue"][3]) >= 2
    assert all(len(q["hits"]) == 5 and q["verdict"] for q in f["queries"]), f["queries"]
    return f


def test_the_quick_start_prints_what_the_copy_shows(tmp_path: Path, copy: dict[str, Any]) -> None:
    out = tmp_path / "qs"
    env = dict(os.environ, MPLBACKEND="Agg")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "src"), env.get("PYTHONPATH", "")])
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--out", str(out)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    # the copy was made with the default output folder, out/quickstart
    got = fields(proc.stdout.replace(str(out), "out/quickstart"))
    assert got["catalogue"] == copy["catalogue"]
    for g, c in zip(got["queries"], copy["queries"], strict=True):
        assert g == c, f"{g['query'][2]}: the quick start printed\n{proc.stdout}"
    assert got["summary"] == copy["summary"], proc.stdout
    assert got["serve"] == copy["serve"], proc.stdout
    assert (out / "model.vsm").is_file() and (out / "clusters.csv").is_file()


def test_the_copy_is_consistent_with_the_sample(copy: dict[str, Any]) -> None:
    products = sorted(p.name for p in (SHOP / "catalog").iterdir() if p.is_dir())
    photos = {p: len(list((SHOP / "catalog" / p).glob("*.jpg"))) for p in products}
    assert copy["catalogue"] == ("examples/shop/catalog", str(len(products)), str(sum(photos.values())), "3")
    first = found = possible = 0
    for q in copy["queries"]:
        _, _, file, product = q["query"]
        assert (SHOP / "queries" / file).is_file() and file == f"{product}.jpg" and product in products
        assert [int(h[0]) for h in q["hits"]] == [1, 2, 3, 4, 5]
        for _, same, hit in q["hits"]:
            assert (SHOP / "catalog" / hit).is_file(), hit
            assert (same == "yes") == (hit.split("/")[0] == product), (product, hit)
        n_same = sum(h[1] == "yes" for h in q["hits"])
        at1 = q["hits"][0][1] == "yes"
        assert q["verdict"] == (
            "its product" if at1 else "NOT its product",
            str(n_same),
            "5",
            product,
            str(photos[product]),
        )
        first, found, possible = first + at1, found + n_same, possible + min(5, photos[product])
    assert copy["summary"] == (str(first), str(len(copy["queries"])), str(found), str(possible), "5")
    assert copy["serve"] == (
        "varsitysrch serve -m out/quickstart/model.vsm -c out/quickstart/clusters.csv "
        "--images examples/shop/catalog"
    )


def test_the_sample_is_small_licensed_and_listed() -> None:
    files = sorted(p for p in SHOP.rglob("*") if p.is_file())
    assert sum(p.stat().st_size for p in files) < 2_000_000
    licence = (SHOP / "LICENSE").read_text(encoding="utf-8")
    assert "MIT License" in licence and "Copyright (c) 2019 Marcus Klasson" in licence
    assert "GroceryStoreDataset" in (SHOP / "README.md").read_text(encoding="utf-8")
    with (SHOP / "sources.csv").open(newline="", encoding="utf-8") as f:
        listed = {row["file"]: row for row in csv.DictReader(f)}
    photos = {p.relative_to(SHOP).as_posix() for p in files if p.suffix == ".jpg"}
    assert set(listed) == photos
    for name, row in listed.items():  # catalog/<product>/<photo> or queries/<product>.jpg
        assert row["product"] == (Path(name).parts[1] if name.startswith("catalog/") else Path(name).stem)
    # a query is never one of the catalogue's photos
    sources = [row["source"] for row in listed.values()]
    assert len(set(sources)) == len(sources)


def test_the_readme_quotes_the_copy(copy: dict[str, Any]) -> None:
    quoted = fields((REPO / "README.md").read_text(encoding="utf-8"))
    if not quoted["queries"]:
        pytest.skip("README.md does not quote the quick start's output")
    by_query = {q["query"]: q for q in copy["queries"]}
    for q in quoted["queries"]:
        assert by_query.get(q["query"]) == q, f"README.md quotes {q['query'][2]} unlike {COPY}"
    for key in ("catalogue", "summary", "serve"):
        assert quoted[key] in (None, copy[key]), key


@pytest.mark.slow
def test_the_sample_is_the_rule_applied_to_the_data(tmp_path: Path) -> None:
    """scripts/make_sample_shop.py regenerates the same choice of photos (the bytes depend on Pillow)."""
    if not (GROCERY_DATA / "grocery-train" / "manifest.csv").is_file():
        pytest.skip(f"{GROCERY_DATA / 'grocery-train'} absent (set VARSITYSRCH_DATA)")
    make = REPO / "scripts" / "make_sample_shop.py"
    proc = subprocess.run(
        [sys.executable, str(make), "--data", str(GROCERY_DATA), "--out", str(tmp_path / "shop")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    for name in ("sources.csv", "README.md", "LICENSE"):
        made, shipped = (tmp_path / "shop" / name).read_bytes(), (SHOP / name).read_bytes()
        assert made == shipped, name
