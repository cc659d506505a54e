"""One machine, large catalogue: build time, memory, search latency and recall@10 vs exact.

    python benchmarks/bench_scale.py [--n 1000000] [--dim 1280] [--k 100] [--queries 200]

1. Generates ``n x dim`` synthetic float16 feature vectors (clustered, unit rows,
   non-negative like pooled CNN features) into a feature store, in chunks, in a child
   process (so the build's peak memory below is the build's own).
2. Build = ``train_clusters(..., ivf=True)`` end to end: K-means on a sample sized for k
   + assignment of every vector in chunks + nprobe calibration + faiss IVF (two-level
   training, fp16 codes, nprobe calibration) + model file + CSV.  Timed per step; peak
   RSS from ``resource.getrusage`` (which counts the memory-mapped store's resident pages)
   and the peak anonymous RSS (sampled from /proc: memory the build itself allocates).
3. Search: a ``Searcher`` loads the model (rebuilding the IVF from the stored lists),
   then single-thread latency p50/p95 and recall@10 against exact search (exact = faiss
   ``IndexFlatIP`` over the store in chunks) for held-out queries drawn from the same
   distribution, at several nprobe; numpy exact search (float32 matrix @ query, one
   thread) for comparison.

Data: generated (no path needed); the store and model go to a new folder inside ``--work``
(default: the system temp), removed at the end unless ``--keep``.

**Reaches into internals** (issue 20 asks benchmarks to use public names only; not rewritten
yet): the store is written file by file in a child process (``varsitysrch._store``/``_io``
names) so the build's peak memory is its own; the per-step build times come from wrapping
private functions (``_searchindex._calibrate_nprobe``, ``_index._train_ivf`` ...) for the run;
the row of each hit comes from the ``Searcher`` private ``_id_index`` (the IVF's nprobe from the
public ``default_nprobe``) and the model's IVF settings from ``_modelfile.load_model``.  The totals it
prints (build = ``train_clusters``, load = ``Searcher(...)``, latency = ``search_vector``) are
public calls, what users get; the per-step split is not a public figure.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

CHUNK = 65536


# ----------------------------------------------------------------------------- data
def generator(
    dim: int, seed: int, n_categories: int = 50, n_types: int = 5000, latent: int = 96
) -> Callable[[int, int], np.ndarray]:
    """``make(m, item_seed)`` -> ``m`` unit float32 rows like pooled CNN features of product photos.

    A latent hierarchy (50 categories -> 5,000 product types, spread 0.5 -> items, spread
    0.4) in 96 dimensions, lifted by a fixed random projection and a ReLU, L2-normalised.
    """
    rng = np.random.default_rng(seed)
    cats = rng.standard_normal((n_categories, latent)).astype(np.float32)
    types = cats[rng.integers(0, n_categories, n_types)]
    types += 0.5 * rng.standard_normal((n_types, latent)).astype(np.float32)
    W = (rng.standard_normal((latent, dim)) / math.sqrt(latent)).astype(np.float32)

    def make(m: int, item_seed: int) -> np.ndarray:
        r = np.random.default_rng([seed, item_seed])
        z = types[r.integers(0, n_types, m)] + 0.4 * r.standard_normal((m, latent)).astype(np.float32)
        x = np.maximum(z @ W, 0.0)
        x /= np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
        return x

    return make


def write_store(folder: Path, n: int, dim: int, seed: int) -> None:
    from varsitysrch._io import write_csv, write_json
    from varsitysrch._store import _IDS, _VECTORS, SKIPPED, STORE_JSON

    folder.mkdir(parents=True, exist_ok=True)
    make = generator(dim, seed)
    mm = np.lib.format.open_memmap(folder / _VECTORS, mode="w+", dtype=np.float16, shape=(n, dim))
    for s in range(0, n, CHUNK):
        m = min(CHUNK, n - s)
        mm[s : s + m] = make(m, s)
    mm.flush()
    del mm
    write_csv(folder / _IDS, ["id", "size", "mtime_ns"], ((f"p/{i:07d}.jpg", 1000 + i, i) for i in range(n)))
    write_csv(folder / SKIPPED, ["path", "reason"], [])
    meta = {
        "format": "varsitysrch-features",
        "version": 1,
        "extractor": {"name": "test", "dim": dim},
        "dim": dim,
        "count": n,
        "dtype": "float16",
        "vectors": _VECTORS,
        "ids": _IDS,
    }
    write_json(folder / STORE_JSON, meta)


# ----------------------------------------------------------------------------- measuring
class MemorySampler:
    """Peak VmRSS and RssAnon of this process, sampled every 50 ms."""

    def __init__(self) -> None:
        self.peak = {"VmRSS": 0, "RssAnon": 0}
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _read(self) -> None:
        try:
            with open("/proc/self/status") as f:
                for line in f:
                    key = line.split(":")[0]
                    if key in self.peak:
                        self.peak[key] = max(self.peak[key], int(line.split()[1]) * 1024)
        except OSError:
            pass

    def _run(self) -> None:
        while not self._stop.is_set():
            self._read()
            time.sleep(0.05)

    def __enter__(self) -> MemorySampler:
        self._t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._t.join()
        self._read()


def timed(module: Any, name: str, log: dict[str, float], label: str | None = None) -> None:
    """Wrap ``module.name`` so every call adds its wall time to ``log[label]``."""
    real = getattr(module, name)
    key = label or name

    def wrapper(*a: Any, **kw: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return real(*a, **kw)
        finally:
            log[key] = log.get(key, 0.0) + time.perf_counter() - t0

    setattr(module, name, wrapper)


def current_anon() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    return 0


def maxrss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def gib(b: float) -> str:
    return f"{b / 2**30:.2f} GiB"


def exact_truth(Q: np.ndarray, X: np.ndarray, top: int) -> np.ndarray:
    """Exact top-``top`` by inner product: faiss IndexFlatIP over ``X`` in chunks (all threads)."""
    import faiss

    best_s = np.full((len(Q), top), -np.inf, np.float32)
    best_i = np.full((len(Q), top), -1, np.int64)
    for s in range(0, len(X), CHUNK):
        idx = faiss.IndexFlatIP(X.shape[1])
        idx.add(np.ascontiguousarray(X[s : s + CHUNK], dtype=np.float32))
        D, rows = idx.search(Q, top)
        cs, ci = np.concatenate([best_s, D], 1), np.concatenate([best_i, rows + s], 1)
        o = np.argsort(-cs, axis=1, kind="stable")[:, :top]
        best_s, best_i = np.take_along_axis(cs, o, 1), np.take_along_axis(ci, o, 1)
    return best_i


def pct(a: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(a) * 1000.0, q))


# ----------------------------------------------------------------------------- main
def main() -> None:
    ap = argparse.ArgumentParser(
        prog="bench_scale.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=1280)
    ap.add_argument("--k", type=int, default=100, help="user K-means clusters")
    ap.add_argument("--backend", default="auto", help="K-means backend (auto, sklearn, faiss)")
    ap.add_argument("--queries", type=int, default=200, help="held-out queries for latency and recall")
    ap.add_argument("--numpy-queries", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--work",
        "--workdir",
        dest="workdir",
        default=None,
        help="a new folder in it holds the store and model (default: in the system temp)",
    )
    ap.add_argument("--keep", action="store_true", help="keep the generated store and model")
    ap.add_argument("--json", default=None, help="write the results here")
    ap.add_argument("--generate-only", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.generate_only:
        write_store(Path(args.generate_only), args.n, args.dim, args.seed)
        return

    import faiss

    import varsitysrch._index as _index  # internals: the per-step build times
    import varsitysrch._searchindex as _searchindex
    from varsitysrch import KMeansModel, Searcher, train_clusters
    from varsitysrch._modelfile import load_model  # internals: the model's IVF settings

    if args.workdir:  # a new folder inside it: only what this run made is removed at the end
        Path(args.workdir).mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="bench-scale-", dir=args.workdir))
    store, model, csv_path = work / "features", work / "model.vsm", work / "clusters.csv"
    res: dict[str, Any] = {"n": args.n, "dim": args.dim, "k": args.k, "cpus": os.cpu_count()}
    try:
        t0 = time.perf_counter()
        subprocess.run(
            [
                sys.executable,
                __file__,
                "--generate-only",
                str(store),
                "--n",
                str(args.n),
                "--dim",
                str(args.dim),
                "--seed",
                str(args.seed),
            ],
            check=True,
        )
        res["generate_s"] = round(time.perf_counter() - t0, 1)
        res["store_bytes"] = (store / "vectors.npy").stat().st_size
        print(
            f"generated {args.n} x {args.dim} float16 ({gib(res['store_bytes'])}) in {res['generate_s']}s",
            flush=True,
        )

        # ---- build
        steps: dict[str, float] = {}
        timed(KMeansModel, "fit", steps, "kmeans_fit (sample + assign all)")
        timed(_searchindex, "_calibrate_nprobe", steps, "calibrate_nprobe (k-means)")
        timed(_index, "_train_ivf", steps, "ivf_train (two-level) + list assignment")
        timed(_index, "build_faiss_index", steps, "ivf_fill (fp16 codes)")
        timed(_index, "calibrate_ivf", steps, "ivf_calibrate")
        with MemorySampler() as mem:
            t0 = time.perf_counter()
            km = train_clusters(
                store, model, csv_path, args.k, n_init=1, backend=args.backend, ivf=True, show_progress=False
            )
            build_s = time.perf_counter() - t0
        res["build_s"] = round(build_s, 1)
        res["build_steps_s"] = {k: round(v, 1) for k, v in steps.items()}
        res["kmeans_sample"] = int(km.sample_size_)
        res["build_peak_rss"] = maxrss()
        res["build_peak_anon"] = mem.peak["RssAnon"]
        mf = load_model(model)
        res["ivf"] = {k: mf.config["ivf"][k] for k in ("nlist", "nprobe", "recall_curve")}
        res["nprobe_kmeans"] = mf.config["nprobe"]
        res["model_bytes"] = model.stat().st_size
        del mf
        print(
            f"build {build_s:.1f}s {res['build_steps_s']}; peak RSS {gib(res['build_peak_rss'])}, "
            f"anonymous {gib(res['build_peak_anon'])}",
            flush=True,
        )

        # ---- load + search
        t0 = time.perf_counter()
        s = Searcher(model, csv_path)
        res["load_s"] = round(time.perf_counter() - t0, 1)
        res["loaded_rss_anon"] = current_anon()
        print(
            f"searcher loaded in {res['load_s']}s (IVF rebuilt), anonymous RSS {gib(res['loaded_rss_anon'])}"
        )
        make = generator(args.dim, args.seed)
        Q = make(args.queries, 10**9 + 7)  # held out: never in the catalogue
        t0 = time.perf_counter()
        truth = exact_truth(Q, s.vectors, 10)
        res["exact_truth_s"] = round(time.perf_counter() - t0, 1)
        faiss.omp_set_num_threads(1)
        nprobe = s.default_nprobe if s.probe_unit == "lists" else 1
        table = []
        for p in sorted({1, max(1, nprobe // 2), nprobe, 2 * nprobe}):
            lat, rec = [], []
            for q, t in zip(Q, truth, strict=True):
                t1 = time.perf_counter()
                hits = s.search_vector(q, 10, nprobe=p, expand=0)  # the index against exact cosine
                lat.append(time.perf_counter() - t1)
                rec.append(len({s._id_index[h.image] for h in hits} & set(t.tolist())) / 10)
            row = {
                "nprobe": p,
                "recall@10": round(float(np.mean(rec)), 4),
                "p50_ms": round(pct(lat, 50), 2),
                "p95_ms": round(pct(lat, 95), 2),
                "calibrated": p == nprobe,
            }
            table.append(row)
            print(
                f"IVF nprobe={p:4d}: recall@10 {row['recall@10']:.4f}  p50 {row['p50_ms']:.2f} ms  "
                f"p95 {row['p95_ms']:.2f} ms",
                flush=True,
            )
        res["ivf_search"] = table
        lat = []
        for q in Q[: args.numpy_queries]:
            t1 = time.perf_counter()
            s.search_vector(q, 10, exact=True, expand=0)
            lat.append(time.perf_counter() - t1)
        res["ivf_exhaustive_p50_ms"] = round(pct(lat, 50), 1)
        res["search_peak_rss"] = maxrss()

        # ---- numpy exact (float32 matrix in memory, one BLAS thread)
        from threadpoolctl import threadpool_limits

        avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        need = args.n * args.dim * 4
        if need < 0.5 * avail:
            X32 = np.empty((args.n, args.dim), np.float32)
            for a in range(0, args.n, CHUNK):
                X32[a : a + CHUNK] = s.vectors[a : a + CHUNK]
            lat = []
            with threadpool_limits(1):
                for q in Q[: args.numpy_queries]:
                    t1 = time.perf_counter()
                    sc = X32 @ q
                    top = np.argpartition(-sc, 10)[:10]
                    top[np.argsort(-sc[top])]
                    lat.append(time.perf_counter() - t1)
            res["numpy_exact_p50_ms"] = round(pct(lat, 50), 1)
            del X32
        else:
            res["numpy_exact_p50_ms"] = None
            print(f"numpy exact skipped: needs {gib(need)} of {gib(avail)} available")
        print(
            f"exhaustive fp16 IVF scan p50 {res['ivf_exhaustive_p50_ms']} ms; numpy exact float32 p50 "
            f"{res['numpy_exact_p50_ms']} ms",
            flush=True,
        )
        print(json.dumps(res, indent=2))
        if args.json:
            Path(args.json).write_text(json.dumps(res, indent=2) + "\n")
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"store and model kept in {work}")


if __name__ == "__main__":
    main()
