"""The k-reciprocal neighbour graph's build at training time: exact vs through the K-means clusters.

``varsitysrch._rerank`` stores every catalogue image's ``k1 = 20`` nearest catalogue images in the
model.  Built exactly it costs ``n**2 * d``; built through the model's own K-means clusters
(``_cluster_graph``: each image searched as a search by id searches it, at the calibrated
``nprobe``) it costs about ``n**2 * d * nprobe / clusters``.  Per size this script writes a
generated store (``bench_scale.py``'s product-photo generator, float16, 1280-d), times
``train_clusters`` without a graph (the training the graph is added to), then the two builds, and
prints them side by side with the cluster-probed lists' recall of the exact lists (every image
up to ``--exact-max``; above it the exact build is timed on 1,000 images and extrapolated, and
the recall is measured on them).  ``--store DIR``: also the recall on a real feature store
(e.g. a dev domain's), trained with ``--store-k`` clusters.  It uses internals
(``varsitysrch._rerank``'s private builders, ``_modelfile.load_model``): no public way builds a graph
apart from training.

``--latency Q``: per size also the default model (trained as ``train_clusters`` trains by default:
with the graph, no IVF below ``_index.IVF_THRESHOLD`` images) loaded in a public ``Searcher``, and
single-query latency, one thread (``threadpoolctl``), interleaved A B A B: ``search_vector(q, 10)``
(re-ranked, the default) vs ``rerank="none"`` over ``Q`` held-out generated vectors, and
``search_id`` over ``Q`` catalogue ids both ways.  Each kind gets a freshly loaded ``Searcher`` and
two passes: the first (cold) computes the weights rows it touches, the second (warm) finds them in
the model's row cache.  The stage re-orders the top ``_rerank.POOL`` candidates with stored rows,
so its cost per query does not depend on ``n``; the search before it does.

    .venv/bin/python benchmarks/bench_rerank_build.py --sizes 20000,100000
    .venv/bin/python benchmarks/bench_rerank_build.py --sizes 20000,100000 --latency 200
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))


def _recall(approx: np.ndarray, exact: np.ndarray) -> float:
    hit = sum(len(set(a.tolist()) & set(e.tolist())) for a, e in zip(approx, exact, strict=True))
    return hit / max(exact.size, 1)


def measure(store: Path, k: int, work: Path, exact_max: int, log: bool = True) -> dict[str, float]:
    from varsitysrch import FeatureStore, train_clusters
    from varsitysrch._modelfile import load_model
    from varsitysrch._rerank import _BLOCK, _K1, _build_graph, _cluster_graph, _ranking_vectors, _topk_rows

    model, csv = work / f"m{k}.vsm", work / f"m{k}.csv"
    t0 = time.perf_counter()
    train_clusters(store, model, csv, k, show_progress=False, rerank_graph=False)
    train_s = time.perf_counter() - t0
    mf = load_model(model)
    X = FeatureStore.open(store).vectors
    n = len(X)
    C = np.ascontiguousarray(_ranking_vectors(mf.config, mf.arrays, X), np.float32)
    nprobe = int(mf.config["nprobe"])
    t0 = time.perf_counter()
    g = _cluster_graph(C, X, mf.to_model(), mf.labels, nprobe, _K1)
    cluster_s = time.perf_counter() - t0
    kk = g.k
    if n <= exact_max:
        t0 = time.perf_counter()
        ex = _build_graph(C, _K1)
        exact_s = time.perf_counter() - t0
        rec = _recall(g.nn, ex.nn)
        how = "measured"
    else:
        rows = np.random.default_rng(0).choice(n, 1000, replace=False)
        t0 = time.perf_counter()
        nn, _ = _topk_rows(C, rows, kk, _BLOCK)
        exact_s = (time.perf_counter() - t0) * n / len(rows)
        rec = _recall(g.nn[rows], nn)
        how = "extrapolated from 1,000 images"
    out = {"n": n, "k": k, "nprobe": nprobe, "train_s": train_s, "exact_s": exact_s, "cluster_s": cluster_s}
    out["recall"] = rec
    if log:
        print(
            f"n={n:,} k={k} nprobe={nprobe}: train_clusters {train_s:.1f} s | exact graph {exact_s:.1f} s "
            f"({how}; {exact_s / train_s:.2f}x train) | cluster-probed graph {cluster_s:.1f} s "
            f"({cluster_s / train_s:.2f}x train, {exact_s / cluster_s:.1f}x faster than exact) | "
            f"recall@{kk} of the exact lists {rec:.4f}",
            flush=True,
        )
    return out


def _pct(ms: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(ms), q))


def latency(store: Path, k: int, work: Path, queries: int, dim: int) -> list[dict[str, Any]]:
    """Single-query latency of the default model's search, re-ranked vs ``rerank="none"``."""
    from bench_scale import generator
    from threadpoolctl import threadpool_limits

    from varsitysrch import Searcher, train_clusters

    model, csv = work / f"d{k}.vsm", work / f"d{k}.csv"
    t0 = time.perf_counter()
    train_clusters(store, model, csv, k, show_progress=False)  # the default: rerank_graph=None
    train_s = time.perf_counter() - t0
    n = len(Searcher(model, csv).ids)
    Q = generator(dim, 0)(queries, 10**9 + 7)  # held out: an item seed the store never uses
    ids = [f"p/{i:07d}.jpg" for i in np.random.default_rng(1).choice(n, queries, replace=False)]
    kinds = {
        "search_vector": lambda s, i, **kw: s.search_vector(Q[i], 10, **kw),
        "search_id": lambda s, i, **kw: s.search_id(ids[i], 10, **kw),
    }
    rows: list[dict[str, Any]] = []
    with threadpool_limits(1):
        for kind, call in kinds.items():
            s = Searcher(model, csv, threads=1)  # a fresh model: an empty row cache
            if "rerank" not in s.config:
                raise SystemExit(f"n={n:,}: the default model has no neighbour graph (an IVF model?)")
            nprobe = int(s.config["nprobe"])
            for i in range(3):  # imports and first-call costs, not the re-ranking's row cache
                call(s, i, rerank="none")
            for name in ("cold", "warm"):
                t: dict[str, list[float]] = {"none": [], "rerank": []}
                for i in range(queries):  # A B A B
                    t0 = time.perf_counter()
                    call(s, i, rerank="none")
                    t1 = time.perf_counter()
                    call(s, i)
                    t2 = time.perf_counter()
                    t["none"].append((t1 - t0) * 1e3)
                    t["rerank"].append((t2 - t1) * 1e3)
                r: dict[str, Any] = {"n": n, "k": k, "nprobe": nprobe, "kind": kind, "pass": name}
                for m in ("none", "rerank"):
                    r[f"{m}_p50"], r[f"{m}_p95"] = _pct(t[m], 50), _pct(t[m], 95)
                rows.append(r)
    print(f"n={n:,} k={k}: default train_clusters (with the graph) {train_s:.1f} s", flush=True)
    return rows


def print_latency(rows: list[dict[str, Any]], queries: int) -> None:
    print(
        f"\nsingle-query latency, 1 thread, top 10, {queries} queries per pass, interleaved "
        "(ms p50 / p95; ratio = re-ranked / none at p50; stage = the p50 difference)"
    )
    head = "| n | clusters | nprobe | query | pass | none p50 / p95 | re-ranked p50 / p95 | ratio | stage |"
    print(head)
    print("|" + "---|" * head.count(" | ") + "---|")
    for r in rows:
        a, b = float(r["none_p50"]), float(r["rerank_p50"])
        print(
            f"| {r['n']:,} | {r['k']} | {r['nprobe']} | {r['kind']} | {r['pass']} "
            f"| {a:.2f} / {float(r['none_p95']):.2f} | {b:.2f} / {float(r['rerank_p95']):.2f} "
            f"| {b / a:.2f}x | +{b - a:.2f} |"
        )
    print(
        "the stage re-orders the top 100 candidates with stored rows: its cost per query does not "
        "depend on n (the search before it does; 1M: see docs/figures.md)",
        flush=True,
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="20000,100000", help="generated catalogue sizes")
    ap.add_argument("--dim", type=int, default=1280)
    ap.add_argument("--k", default="", help="clusters per size (default: round(sqrt(n / 2)))")
    ap.add_argument("--exact-max", type=int, default=20000, help="largest size built exactly in full")
    ap.add_argument("--store", default=None, help="a real feature store: the recall there too")
    ap.add_argument("--store-k", default="50,100", help="--store: clusters")
    ap.add_argument("--work", default=None, help="scratch folder (default: a new temp folder)")
    ap.add_argument(
        "--latency", type=int, default=0, help="Q > 0: also search latency, re-ranked vs none, over Q queries"
    )
    a = ap.parse_args()
    if a.latency < 0:
        ap.error(f"--latency must be >= 0; got {a.latency}")
    from bench_scale import write_store

    work = Path(tempfile.mkdtemp(prefix="bench-rerank-build-", dir=a.work))
    sizes = [int(s) for s in a.sizes.split(",") if s]
    ks = [int(s) for s in a.k.split(",") if s] or [round(math.sqrt(n / 2)) for n in sizes]
    lat: list[dict[str, Any]] = []
    for n, k in zip(sizes, ks, strict=True):
        folder = work / f"store-{n}"
        write_store(folder, n, a.dim, 0)
        measure(folder, k, work, a.exact_max)
        if a.latency:
            lat += latency(folder, k, work, a.latency, a.dim)
    if lat:
        print_latency(lat, a.latency)
    if a.store:
        for k in (int(s) for s in a.store_k.split(",") if s):
            measure(Path(a.store), k, work, a.exact_max)


if __name__ == "__main__":
    main()
