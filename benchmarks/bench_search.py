"""Search latency and recall@10 on synthetic vectors: numpy exact vs faiss flat vs faiss IVF,
float32 vs float16 storage -- every method on the same data and queries, side by side.

    python benchmarks/bench_search.py [--sizes 10000 100000 1000000] [--dim 512] [--queries 100]

Data: ``N`` unit vectors from 200 clusters in a 32-d latent space lifted to ``dim`` with
noise (at 50k, IVF recall@10 0.49 / 0.95 / 1.00 at nprobe 1 / 4 / 16, close to what real
CNN features gave), queries drawn the same way (not in the catalogue).  Latency is per
single query (one thread, p50 / p95 over ``--queries`` queries); recall@10 is against
numpy's exact float32 top-10.  IVF: ``nlist = 4 * sqrt(N)`` lists trained with faiss
K-means on at most ``64 * nlist`` vectors, inner product; float16 = faiss's
``QT_fp16`` scalar quantizer (half the memory).

Data: generated (no path needed).  Measures numpy and faiss directly (no varsitysrch code):
the evidence behind the index design, not the library's own search (``bench_scale.py`` times that).
"""

from __future__ import annotations

import argparse
import gc
import math
import time
from functools import partial
from pathlib import Path

import numpy as np


def make_data(n: int, nq: int, dim: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Catalogue-like unit vectors: 200 clusters in a 32-d latent space, lifted to ``dim`` + noise."""
    rng = np.random.default_rng(seed)
    latent = 32
    centres = rng.standard_normal((200, latent)).astype(np.float32)
    lift = rng.standard_normal((latent, dim)).astype(np.float32) / math.sqrt(latent)

    def draw(m: int) -> np.ndarray:
        out = np.empty((m, dim), np.float32)
        for s in range(0, m, 100_000):
            e = min(m, s + 100_000)
            z = centres[rng.integers(0, len(centres), e - s)]
            z = z + 0.6 * rng.standard_normal((e - s, latent)).astype(np.float32)
            x = z @ lift + 0.25 * rng.standard_normal((e - s, dim)).astype(np.float32)
            out[s:e] = x / np.linalg.norm(x, axis=1, keepdims=True)
        return out

    return draw(n), draw(nq)


def numpy_topk(X: np.ndarray, q: np.ndarray, k: int = 10) -> np.ndarray:
    s = X @ q
    top = np.argpartition(-s, k)[:k]
    return top[np.argsort(-s[top])]


def numpy_topk_f16(X16: np.ndarray, q: np.ndarray, k: int = 10, chunk: int = 65536) -> np.ndarray:
    """float16 storage, scored in float32 chunk by chunk (numpy has no float16 BLAS)."""
    s = np.empty(len(X16), np.float32)
    for a in range(0, len(X16), chunk):
        s[a : a + chunk] = X16[a : a + chunk].astype(np.float32) @ q
    top = np.argpartition(-s, k)[:k]
    return top[np.argsort(-s[top])]


def timed(fn, Q: np.ndarray) -> tuple[list[np.ndarray], float, float]:  # type: ignore[no-untyped-def]
    fn(Q[0])  # warm up
    res, ts = [], []
    for q in Q:
        t = time.perf_counter()
        res.append(fn(q))
        ts.append(time.perf_counter() - t)
    a = np.asarray(ts) * 1000
    return res, float(np.percentile(a, 50)), float(np.percentile(a, 95))


def _searcher(index: object):  # type: ignore[no-untyped-def]
    return lambda q: index.search(q[None], 10)[1][0]  # type: ignore[attr-defined]


def recall(found: list[np.ndarray], truth: list[np.ndarray]) -> float:
    return float(
        np.mean([len(set(a.tolist()) & set(b.tolist())) / len(b) for a, b in zip(found, truth, strict=True)])
    )


def bench(n: int, dim: int, nq: int, nprobes: list[int]) -> None:
    import faiss

    faiss.omp_set_num_threads(1)
    t = time.perf_counter()
    X, Q = make_data(n, nq, dim)
    print(
        f"\n### N = {n:,} x {dim} (data made in {time.perf_counter() - t:.1f}s), {nq} single-thread queries\n"
    )
    print("| method | memory MB | p50 ms | p95 ms | speed-up vs numpy | recall@10 |")
    print("|---|---|---|---|---|---|")
    truth, p50, p95 = timed(partial(numpy_topk, X), Q)
    base = p50

    def row(name: str, mem: float, res: list[np.ndarray], a: float, b: float) -> None:
        print(
            f"| {name} | {mem / 1e6:,.0f} | {a:.3f} | {b:.3f} | {base / a:.1f}x | {recall(res, truth):.4f} |",
            flush=True,
        )

    row("numpy exact, float32", X.nbytes, truth, p50, p95)
    X16 = X.astype(np.float16)
    row("numpy exact, float16 storage", X16.nbytes, *timed(partial(numpy_topk_f16, X16), Q))
    del X16
    gc.collect()

    flat = faiss.IndexFlatIP(dim)
    flat.add(X)
    row("faiss flat, float32", X.nbytes, *timed(_searcher(flat), Q))
    del flat
    sq = faiss.IndexScalarQuantizer(dim, faiss.ScalarQuantizer.QT_fp16, faiss.METRIC_INNER_PRODUCT)
    sq.train(X[:1000])
    sq.add(X)
    row("faiss flat, float16", n * dim * 2, *timed(_searcher(sq), Q))
    del sq
    gc.collect()

    nlist = max(1, min(round(4 * math.sqrt(n)), n // 39))
    faiss.omp_set_num_threads(2)
    t = time.perf_counter()
    sample = X[np.random.default_rng(1).choice(n, min(n, 64 * nlist), replace=False)]
    km = faiss.Kmeans(dim, nlist, niter=10, spherical=True, seed=0, verbose=False, max_points_per_centroid=64)
    km.train(sample)
    centroids = np.ascontiguousarray(km.centroids, np.float32)
    train_s = time.perf_counter() - t
    for kind in ("float32", "float16"):
        quant = faiss.IndexFlatIP(dim)
        quant.add(centroids)
        if kind == "float32":
            ivf = faiss.IndexIVFFlat(quant, dim, nlist, faiss.METRIC_INNER_PRODUCT)
        else:
            ivf = faiss.IndexIVFScalarQuantizer(
                quant, dim, nlist, faiss.ScalarQuantizer.QT_fp16, faiss.METRIC_INNER_PRODUCT, False
            )
            ivf.train(sample[:1000])  # the quantizer already holds the centroids
        ivf.is_trained = True
        faiss.omp_set_num_threads(2)
        ivf.add(X)
        faiss.omp_set_num_threads(1)
        mem = n * dim * (4 if kind == "float32" else 2) + centroids.nbytes + n * 8
        for p in nprobes:
            if p > nlist:
                continue
            ivf.nprobe = p

            def s(q: np.ndarray, ivf=ivf) -> np.ndarray:  # type: ignore[no-untyped-def]
                return ivf.search(q[None], 10)[1][0]

            row(f"faiss IVF{nlist} nprobe {p}, {kind}", mem, *timed(s, Q))
        del ivf, quant
        gc.collect()
    print(f"\n(IVF trained in {train_s:.1f}s on {len(sample):,} vectors, 2 threads)")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(
        prog=Path(__file__).name, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--queries", type=int, default=100)
    ap.add_argument("--nprobes", type=int, nargs="+", default=[1, 4, 16])
    args = ap.parse_args(argv)
    import os

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(1)
    except ImportError:  # pragma: no cover
        pass
    for n in args.sizes:
        bench(n, args.dim, args.queries, args.nprobes)


if __name__ == "__main__":
    main()
