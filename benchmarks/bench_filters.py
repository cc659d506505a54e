"""The cost of a filter: latency and recall@10 of filtered search keeping 1 %, 10 % and 50 %.

    nice -n 5 .venv/bin/python benchmarks/bench_filters.py [--n 100000] [--dim 128] [--queries 200]

A synthetic catalogue (``bench_search.make_data``: unit vectors from 200 clusters in a 32-d
latent space, the default ``n = 100,000``) is trained with ``train_clusters`` (default k
and calibrated nprobe) and an attributes table: ``bucket``, a uniform integer 0-99 drawn
independently of the vectors (``bucket<1`` keeps 1 %, ``bucket<10`` 10 %, ``bucket<50``
50 %), and ``family``, the latent cluster of each vector modulo 10 (a filter that follows
appearance, like a category: ``family=3`` keeps 10 %).  Queries are drawn like the
catalogue, not in it.

For every filter, on the same queries and the same Searcher, one thread, side by side:
p50/p95 latency of ``search_vector(v, 10, where=...)`` (the default nprobe) against the same
search without a filter, and recall@10 against exact filtered search (every matching row
scored).  ``--ivf`` runs the same through the faiss IVF path used above 200k images.

Data: generated (no path needed).  The default run uses public names only (``train_clusters``,
``Searcher``, ``FeatureStore``): what users get.

``--scan-factor 1 2 4`` (a prototype sweep, **not what users get**) repeats the table with the
private constant ``varsitysrch._attributes._FILTER_SCAN_FACTOR`` (how many matching rows a
filtered search scores, relative to the rows the unfiltered search scores) patched to each
value; no public option sets it.  It is how docs/shop.md's factor table was made.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from typing import Any

import numpy as np
from bench_search import make_data

FILTERS = [
    ("none", None),
    ("bucket<1 (1 %, random)", ["bucket<1"]),
    ("bucket<10 (10 %, random)", ["bucket<10"]),
    ("bucket<50 (50 %, random)", ["bucket<50"]),
    ("family=3 (10 %, follows appearance)", ["family=3"]),
]


def latent_family(X: np.ndarray, seed: int = 0) -> np.ndarray:
    """The nearest of 200 sampled rows' index modulo 10 (stands for the latent cluster).

    Rows are unit vectors, so the nearest (Euclidean) is the one of highest inner product.
    """
    rng = np.random.default_rng(seed)
    C = X[rng.choice(len(X), 200, replace=False)]
    return np.concatenate([(X[s : s + 65536] @ C.T).argmax(1) for s in range(0, len(X), 65536)]) % 10


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(
        prog="bench_filters.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--k", type=int, default=None, help="clusters (default: sqrt(n))")
    ap.add_argument("--ivf", action="store_true", help="search through the faiss IVF")
    ap.add_argument(
        "--scan-factor",
        type=int,
        nargs="+",
        default=None,
        help="patch the private FILTER_SCAN_FACTOR to each value (prototype sweep; default: unpatched)",
    )
    args = ap.parse_args(argv)

    from varsitysrch import FeatureStore, Searcher, train_clusters

    X, Q = make_data(args.n, args.queries, args.dim)
    rng = np.random.default_rng(1)
    bucket = rng.integers(0, 100, args.n)
    family = latent_family(X)
    ids = [f"p/{i:07d}.jpg" for i in range(args.n)]
    k = args.k or int(np.sqrt(args.n))
    with tempfile.TemporaryDirectory(prefix="bench-filters-") as tmp:
        t = Path(tmp)
        FeatureStore.write(t / "store", ids, X, {"name": "test", "dim": args.dim})
        with open(t / "attrs.csv", "w", encoding="utf-8") as f:
            f.write("image,bucket,family\n")
            f.writelines(f"{i},{b},{c}\n" for i, b, c in zip(ids, bucket, family, strict=True))
        t0 = time.perf_counter()
        train_clusters(
            t / "store",
            t / "model.vsm",
            t / "clusters.csv",
            k,
            attributes=t / "attrs.csv",
            ivf=True if args.ivf else None,
            show_progress=False,
        )
        print(f"trained k={k} on {args.n} x {args.dim} in {time.perf_counter() - t0:.1f}s")
        s = Searcher(t / "model.vsm")
        print(f"default nprobe {s.default_nprobe} of {s.k} clusters{' (IVF)' if args.ivf else ''}\n")
        if args.scan_factor is None:
            table(s, Q, args.n, "the library's default")
            return
        import varsitysrch._attributes as attributes_module  # the prototype sweep only

        default = attributes_module._FILTER_SCAN_FACTOR
        try:
            for factor in args.scan_factor:
                attributes_module._FILTER_SCAN_FACTOR = factor
                table(s, Q, args.n, f"{factor} (patched; the library's is {default})")
        finally:
            attributes_module._FILTER_SCAN_FACTOR = default


def table(s: Any, Q: np.ndarray, n: int, factor: str) -> None:
    base_ms: list[float] = []
    print(f"\nFILTER_SCAN_FACTOR = {factor}")
    print("| filter | rows kept | p50 ms | p95 ms | p50 vs no filter | recall@10 vs exact filtered |")
    print("|---|---|---|---|---|---|")
    assert s.attributes is not None
    for name, where in FILTERS:
        mask = s.attributes.mask(where) if where else None
        kept = int(mask.sum()) if mask is not None else n
        for v in Q[:5]:  # warm-up (compiles and caches the filter)
            s.search_vector(v, 10, where=where)
        ms, rec = [], []
        for v in Q:
            t1 = time.perf_counter()
            hits = s.search_vector(v, 10, where=where)
            ms.append((time.perf_counter() - t1) * 1e3)
            ref = s.search_vector(v, 10, where=where, exact=True)
            assert len(hits) == min(10, kept)
            got = {h.image for h in hits}
            rec.append(len(got & {h.image for h in ref}) / max(1, len(ref)))
        if where is None:
            base_ms = ms
        p50, p95 = np.percentile(ms, 50), np.percentile(ms, 95)
        print(
            f"| {name} | {kept / n:.1%} | {p50:.2f} | {p95:.2f} | "
            f"{p50 / np.percentile(base_ms, 50):.2f}x | {np.mean(rec):.3f} |"
        )


if __name__ == "__main__":
    main()
