"""Extraction throughput: the varsitysrch pipeline vs naive decode-then-infer loops, one run.

    python benchmarks/bench_extract.py --data DIR [--limit 600] [--upscale 4]   # DIR/clothing-small
    python benchmarks/bench_extract.py IMG_DIR [--limit 600]                     # any image folder

Data: ``IMG_DIR``, or ``clothing-small/`` under ``--data`` / ``$VARSITYSRCH_DATA`` (the README's
figures); ``examples/catalog`` (shipped) works as ``IMG_DIR`` for a smoke run.
All variants use the same ONNX Runtime graph (EfficientNet-Lite0) and the same images,
so the ratios isolate the pipeline: JPEG draft decoding, batching, and decoding
overlapped with inference in threads.  Naive loops: full-resolution decode + resize,
no overlap, batch 1 (the original scripts' per-image predict) and batch 32.

Internals: the naive baselines feed decoded arrays to the library's graph through
``varsitysrch._extractors.Embedder`` (no public function embeds an array); the pipeline
figure is the public ``extract_features``, what users get.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchdata

PROG = "bench_extract.py"


def naive(root: Path, ids: list[str], emb: Any, batch: int) -> float:
    import numpy as np
    from PIL import Image

    t0 = time.perf_counter()
    buf: list[np.ndarray] = []
    for rel in ids:
        im = Image.open(root / rel).convert("RGB").resize((224, 224), Image.Resampling.BILINEAR)
        buf.append(np.asarray(im))
        if len(buf) == batch:
            emb.embed(np.stack(buf))
            buf = []
    if buf:
        emb.embed(np.stack(buf))
    return len(ids) / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(
        prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "img_dir", nargs="?", default=None, metavar="IMG_DIR", help="default: DATA/clothing-small"
    )
    benchdata.add_data_argument(ap, ["clothing-small"])
    ap.add_argument("--limit", type=int, default=600)
    ap.add_argument(
        "--upscale",
        type=float,
        default=1.0,
        help="re-encode each photo this many times larger (JPEG q90), e.g. 4 for ~1600x2100 shop photos",
    )
    args = ap.parse_args(argv)
    src = benchdata.image_folder(PROG, args.img_dir, args.data)
    all_ids = benchdata.image_ids(src)
    if not all_ids:
        benchdata.fail(PROG, f"no images under {str(src)!r}")
    ids = all_ids[:: max(1, len(all_ids) // args.limit)][: args.limit]

    import numpy as np
    from PIL import Image

    from varsitysrch import extract_features, get_extractor
    from varsitysrch._extractors import Embedder  # internal on purpose: the naive baselines

    work = Path(tempfile.mkdtemp(prefix="bench-extract-"))
    try:
        root = work / "imgs"
        for rel in ids:
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            if args.upscale == 1.0:
                shutil.copy(src / rel, root / rel)
            else:
                im = Image.open(src / rel).convert("RGB")
                big = im.resize((round(im.width * args.upscale), round(im.height * args.upscale)))
                big.save(root / rel, "JPEG", quality=90)
        ex = get_extractor()
        cpus = os.cpu_count() or 1
        emb = Embedder(ex, threads=cpus)
        emb.embed(np.zeros((2, 224, 224, 3), np.uint8))  # warm up (graph built and cached)
        with Image.open(root / ids[0]) as im0:
            size = im0.size
        print(
            f"{len(ids)} images from {src} (first is {size[0]}x{size[1]}), {cpus} CPUs, extractor {ex.name}"
        )
        r1 = naive(root, ids, emb, 1)
        print(f"naive loop, batch 1  : {r1:7.1f} img/s")
        r32 = naive(root, ids, emb, 32)
        print(f"naive loop, batch 32 : {r32:7.1f} img/s")
        t0 = time.perf_counter()
        res = extract_features(root, work / "feat", show_progress=False)
        rp = res.n_embedded / (time.perf_counter() - t0)
        print(f"varsitysrch pipeline : {rp:7.1f} img/s (incl. store writing)")
        print(f"ratio pipeline / naive batch 1  : {rp / r1:.2f}x")
        print(f"ratio pipeline / naive batch 32 : {rp / r32:.2f}x")
        t0 = time.perf_counter()
        extract_features(root, work / "feat", show_progress=False)
        print(f"rerun on an unchanged folder   : {time.perf_counter() - t0:.2f} s (nothing re-embedded)")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
