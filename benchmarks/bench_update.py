"""Adding 1 % of a catalogue: update_catalogue vs a full rebuild (extract + train), one run.

    python benchmarks/bench_update.py --data DIR [--limit 1000] [--share 0.01] [-k 20]  # DIR/clothing-small
    python benchmarks/bench_update.py IMG_DIR [--limit 1000]                           # any image folder

Data: ``IMG_DIR``, or ``clothing-small/`` under ``--data`` / ``$VARSITYSRCH_DATA`` (the README's
figures); ``examples/catalog`` (shipped) works as ``IMG_DIR`` for a smoke run.  Public API only.
``--limit`` images are taken (evenly spaced), ``--share`` of them held back; the rest is
extracted and trained once.  Then the held-back images are added and the catalogue is
brought up to date twice: by ``update_catalogue`` (embeds only the new images, assigns
them to the existing centroids, rewrites model and CSV) and by a full rebuild (extract
every image into a new store, retrain).  Same default extractor (EfficientNet-Lite0).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchdata

PROG = "bench_update.py"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(
        prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "img_dir", nargs="?", default=None, metavar="IMG_DIR", help="default: DATA/clothing-small"
    )
    benchdata.add_data_argument(ap, ["clothing-small"])
    ap.add_argument("--limit", type=int, default=1000)
    ap.add_argument("--share", type=float, default=0.01)
    ap.add_argument("-k", type=int, default=20)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    src = benchdata.image_folder(PROG, args.img_dir, args.data)
    all_ids = benchdata.image_ids(src)
    if not all_ids:
        benchdata.fail(PROG, f"no images under {str(src)!r}")

    import numpy as np

    from varsitysrch import extract_features, train_clusters, update_catalogue

    ids = all_ids[:: max(1, len(all_ids) // args.limit)][: args.limit]
    rng = np.random.default_rng(0)
    n_new = max(1, round(args.share * len(ids)))
    new = set(rng.choice(ids, n_new, replace=False).tolist())
    work = Path(tempfile.mkdtemp(prefix="bench-update-"))
    try:
        cat = work / "cat"

        def copy(rels: list[str]) -> None:
            for rel in rels:
                (cat / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src / rel, cat / rel)

        copy([r for r in ids if r not in new])
        t0 = time.perf_counter()
        extract_features(cat, work / "features", show_progress=False)
        train_clusters(
            work / "features", work / "model.vsm", work / "clusters.csv", args.k, show_progress=False
        )
        initial = time.perf_counter() - t0

        copy(sorted(new))
        t0 = time.perf_counter()
        rep = update_catalogue(
            cat, work / "features", work / "model.vsm", work / "clusters.csv", show_progress=False
        )
        update = time.perf_counter() - t0

        t0 = time.perf_counter()
        extract_features(cat, work / "features-full", show_progress=False)
        train_clusters(
            work / "features-full", work / "full.vsm", work / "full.csv", args.k, show_progress=False
        )
        rebuild = time.perf_counter() - t0

        res = {
            "images": len(ids),
            "added": n_new,
            "k": args.k,
            "initial_build_s": round(initial, 2),
            "update_s": round(update, 2),
            "full_rebuild_s": round(rebuild, 2),
            "speedup": round(rebuild / update, 1),
            "report": rep.to_dict(),
        }
        print(rep.summary())
        print(
            f"{len(ids)} images, +{n_new} ({args.share:.0%}): update {update:.2f}s vs full rebuild "
            f"{rebuild:.2f}s ({rebuild / update:.1f}x faster); initial build {initial:.2f}s"
        )
        if args.json:
            Path(args.json).write_text(json.dumps(res, indent=2) + "\n")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
