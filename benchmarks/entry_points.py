"""Library, CLI, HTTP single and HTTP batch: the same hits for the same queries (issue 20).

    python benchmarks/entry_points.py                       # the sample shop in examples/shop
    python benchmarks/entry_points.py --images DIR --queries 50 --views auto

Every entry point runs the one query pipeline (``varsitysrch._pipeline.run_search``).  This
script asks the four of them the same queries with the same options (views and colour on by
default: ``views="crops"``, ``colour_weight=0.15``, near-duplicates collapsed) and prints, per
entry point, whether its hits are identical to the library's (same images, same order, same
collapsed duplicates) and the largest score difference.  Public names only: the library's
``extract_features`` / ``train_clusters`` / ``search_similar_images`` / ``SearchOptions``, the
``varsitysrch search`` command (in-process, through Typer's test runner) and the service's app
(``varsitysrch.service.create_app``, through FastAPI's ``TestClient``).  Nothing is patched.

Queries: the first ``--queries`` images of the catalogue folder (sorted), after any photos in
``<images>/../queries`` (the sample shop's held-out shop photos).  The catalogue is extracted and
trained into ``--work`` (default: a temporary folder, removed afterwards).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
DEFAULT_IMAGES = HERE.parent / "examples" / "shop" / "catalog"


def _key(hits: list[dict[str, Any]]) -> list[tuple[str, int, tuple[str, ...]]]:
    """What must be identical: image, rank and the collapsed duplicates of each hit."""
    out = []
    for h in hits:
        dups = tuple(d["image"] if isinstance(d, dict) else d for d in h.get("duplicates", []))
        out.append((h["image"], int(h["rank"]), dups))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=Path, default=DEFAULT_IMAGES, help="catalogue image folder")
    ap.add_argument("--queries", type=int, default=50, help="how many queries (default 50)")
    ap.add_argument("--top-n", type=int, default=5)
    ap.add_argument("-k", type=int, default=4, help="clusters to train")
    ap.add_argument("--views", default="crops", help="views of every query (default crops)")
    ap.add_argument("--colour", type=float, default=0.15, help="colour weight (default 0.15, 'match colour')")
    ap.add_argument("--work", type=Path, default=None, help="folder for the store and model (default: temp)")
    a = ap.parse_args(argv)

    from fastapi.testclient import TestClient
    from typer.testing import CliRunner

    from varsitysrch import SearchOptions, extract_features, search_similar_images, train_clusters
    from varsitysrch.cli import app as cli_app
    from varsitysrch.service import create_app

    if not a.images.is_dir():
        print(f"--images must be a folder of catalogue images; got {str(a.images)!r}", file=sys.stderr)
        return 2
    work = a.work or Path(tempfile.mkdtemp(prefix="varsitysrch-entry-points-"))
    try:
        feats, model, csv = work / "features", work / "model.vsm", work / "clusters.csv"
        extract_features(a.images, feats, show_progress=False)
        train_clusters(feats, model, csv, a.k, show_progress=False)
        extra = a.images.parent / "queries"
        photos = sorted(p for p in extra.glob("*") if p.is_file()) if extra.is_dir() else []
        photos += sorted(p for p in a.images.rglob("*") if p.is_file() and p.suffix.lower() != ".txt")
        queries = photos[: a.queries]
        opts = SearchOptions(top_n=a.top_n, views=a.views, colour_weight=a.colour, collapse=True)
        t0 = time.perf_counter()
        got: dict[str, list[list[dict[str, Any]]]] = {
            "library": [],
            "CLI": [],
            "HTTP single": [],
            "HTTP batch": [],
        }
        for q in queries:
            hits = search_similar_images(q, model, csv, None, options=opts, show_progress=False)
            got["library"].append([h.to_dict() for h in hits])
        runner = CliRunner()
        cli = ["-m", str(model), "-c", str(csv), "-n", str(a.top_n), "--views", a.views]
        cli += ["--colour", str(a.colour), "--collapse", "--json"]
        for q in queries:
            res = runner.invoke(cli_app, ["search", str(q), *cli])
            if res.exit_code != 0:
                print(f"CLI failed on {q}: {res.output}", file=sys.stderr)
                return 1
            got["CLI"].append(json.loads(res.stdout))
        params = {"top_n": a.top_n, "views": a.views, "colour_weight": a.colour, "collapse": "true"}
        with TestClient(create_app(model, csv, cache_dir=work / "thumbs", reload_interval=0)) as c:
            for q in queries:
                r = c.post("/search", files={"image": (q.name, q.read_bytes())}, params=params)
                r.raise_for_status()
                got["HTTP single"].append(r.json()["hits"])
            for s in range(0, len(queries), 10):
                part = queries[s : s + 10]
                files = [("images", (q.name, q.read_bytes())) for q in part]
                r = c.post("/search/batch", files=files, params=params)
                r.raise_for_status()
                got["HTTP batch"] += [x["hits"] for x in r.json()["results"]]
        took = time.perf_counter() - t0
        lib = got["library"]
        print(
            f"{len(queries)} queries of {a.images} (views={a.views}, colour_weight={a.colour}, collapse, "
            f"top_n={a.top_n}), {took:.0f} s"
        )
        same_all = True
        for name, lists in got.items():
            same = sum(_key(x) == _key(y) for x, y in zip(lists, lib, strict=True))
            diff = max(
                (
                    abs(h["score"] - g["score"])
                    for x, y in zip(lists, lib, strict=True)
                    for h, g in zip(x, y, strict=False)
                ),
                default=0.0,
            )
            same_all &= same == len(queries)
            n = len(queries)
            print(f"  {name:<12} identical hits on {same}/{n} queries, largest score difference {diff:.1e}")
        print("all four entry points return identical hits" if same_all else "the entry points DIFFER")
        return 0 if same_all else 1
    finally:
        if a.work is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
