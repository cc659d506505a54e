"""Benchmark choosing k: against the bare K-means fits it replaces, and against the exhaustive sweep.

Three measurements on the same data, in one run:

1. **bare fits**: what a user would otherwise run (the original package's loop without its
   silhouette): ``KMeans(n_clusters=k, random_state=seed).fit(X)`` for every k in 2..max_clusters, on
   all rows, scikit-learn defaults otherwise.
2. **choose k**: ``_choose_k(X, max_clusters)`` with its defaults (``method="fast"``: a sampled sweep,
   the silhouette on a fixed 5,000-row sample, confirmation of the candidates on all rows, retrieval
   scores).
3. **exhaustive**: ``_choose_k(X, max_clusters, method="exhaustive")``: the sweep on all rows with
   scikit-learn's KMeans and the silhouette on all rows. Its recommendation is the reference.

1 and 2 alternate ``--repeats`` times (other processes share the cores: alternating spreads their
load over both); the ratio printed is choose-k / bare fits, wall and CPU seconds, per round and the
median. Both run with ``--threads`` BLAS/OpenMP threads (default 1: what ``_choose_k`` uses on machines
with at most 2 cores). The run fails (exit status 1) when the recommendation differs from the
exhaustive sweep's.

Data: by default generated with known structure: ``--true-k`` Gaussian blobs (Dirichlet-distributed
sizes) in a random 64-dim subspace of R^dim, plus isotropic noise in all dims, rows L2-normalised
(CNN-feature-like: unit vectors, clusters of unequal size, most variance in a few directions).
Real features instead, never from a default folder:

* ``--store FOLDER`` (or ``$VARSITYSRCH_CHOOSE_K_STORE``): a feature store written by
  ``varsitysrch extract``;
* ``--dev-set clothing-small`` (or ``grocery-train``, ``fashion-dev``) with ``--data DIR`` (or
  ``$VARSITYSRCH_DATA``, docs/benchmarks.md): the dev set extracted once into ``--work`` (cached);
  ``--per-class N`` keeps N photos of each label of its manifest (seeded by ``--seed``).

A folder that is missing is one line on stderr (exit status 2), never a silent fallback.

    python benchmarks/bench_choose_k.py                        # 20,000 x 256, k = 2..30, 23 blobs
    python benchmarks/bench_choose_k.py --n 50000 --dim 1280 --max-clusters 50 --exhaustive-n 0
    python benchmarks/bench_choose_k.py --data ../shared/data --dev-set clothing-small --per-class 30
    python benchmarks/bench_choose_k.py --store features/
    python benchmarks/bench_choose_k.py --no-warm-start        # ablation: why the sweep keeps them

Internals: ``_choose_k`` is ``varsitysrch._selectk``'s (``get_optimal_num_clusters`` runs it but
returns no timings), and ``--no-warm-start`` patches ``_selectk._WARM_STARTS`` (no public option).

Figures from runs of this script: ``docs/choose_k.md``. Not a test: it prints figures. Progress bars
go to stderr (``--quiet`` hides them).
"""

from __future__ import annotations

import argparse
import csv
import logging
import os
import platform
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchdata

PROG = "bench_choose_k.py"
STORE_ENV = "VARSITYSRCH_CHOOSE_K_STORE"


def make_data(
    n: int,
    dim: int,
    true_k: int,
    *,
    subspace: int = 64,
    spread: float = 1.0,
    within: float = 0.35,
    noise: float = 4.0,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """``(X float32 [n, dim] unit rows, labels)``; ``noise`` is the expected norm of the isotropic noise."""
    rng = np.random.default_rng(seed)
    basis, _ = np.linalg.qr(rng.standard_normal((dim, subspace)))
    centers = rng.standard_normal((true_k, subspace)) * spread
    weights = rng.dirichlet(np.full(true_k, 5.0))
    labels = rng.choice(true_k, n, p=weights)
    X = np.empty((n, dim), dtype=np.float32)
    step = 8192
    for s in range(0, n, step):
        e = min(n, s + step)
        z = centers[labels[s:e]] + rng.standard_normal((e - s, subspace)) * within
        x = z @ basis.T + rng.standard_normal((e - s, dim)) * (noise / np.sqrt(dim))
        X[s:e] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return X, labels


def load_store(args: argparse.Namespace) -> tuple[np.ndarray, str] | None:
    """Real features from ``--store`` / ``$VARSITYSRCH_CHOOSE_K_STORE`` or ``--dev-set`` (``None``: none)."""
    where = args.store if args.store is not None else os.environ.get(STORE_ENV)
    if where and args.dev_set:
        benchdata.fail(PROG, f"give --store (or {STORE_ENV}) or --dev-set, not both")
    if where:
        folder = Path(where).expanduser()
        source = "--store" if args.store is not None else STORE_ENV
        if not (folder / "store.json").is_file() and not any(folder.glob("*.npy")):
            benchdata.fail(
                PROG,
                f"{source} {where!r} is not a feature store (no store.json or .npy files): write one "
                f"with `varsitysrch extract IMAGES FOLDER`, or leave --store and {STORE_ENV} out for "
                "generated data",
            )
        from varsitysrch import load_features

        _ids, X, _extractor = load_features(folder)
        return np.asarray(X, dtype=np.float32), f"feature store {folder} ({source})"
    if not args.dev_set:
        return None
    root = benchdata.data_root(PROG, args.data, [args.dev_set])
    from varsitysrch import extract_features, load_features

    if not args.per_class:
        store = benchdata.feature_store(root, args.dev_set, args.work, benchdata.log_stderr)
        _ids, X, _extractor = load_features(store)
        return np.asarray(X, dtype=np.float32), f"{args.dev_set} (default extractor)"
    # N photos of each label: links to just those photos, extracted on their own (cached in --work)
    with open(root / args.dev_set / "manifest.csv", newline="", encoding="utf-8") as f:
        by_label: dict[str, list[str]] = {}
        for r in csv.DictReader(f):
            by_label.setdefault(r["label"], []).append(r["path"])
    rnd = random.Random(args.seed)
    picked = [
        p
        for lab in sorted(by_label)
        for p in rnd.sample(by_label[lab], min(args.per_class, len(by_label[lab])))
    ]
    name = f"{args.dev_set}-{args.per_class}-per-class-seed{args.seed}"
    imgs = args.work / "samples" / name
    for rel in picked:
        link = imgs / rel
        if not link.exists():
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to((root / args.dev_set / rel).resolve())
    store = args.work / "features" / name
    benchdata.log_stderr(f"extracting {len(picked)} photos of {args.dev_set} into {store} (cached)")
    extract_features(imgs, store, show_progress=False)
    _ids, X, _extractor = load_features(store)
    what = (
        f"{args.dev_set} (default extractor), {args.per_class} photos of each of its {len(by_label)} labels"
    )
    return np.asarray(X, dtype=np.float32), f"{what} (seed {args.seed})"


def bare_fits(X: np.ndarray, ks: range, seed: int) -> None:
    from sklearn.cluster import KMeans

    for k in ks:
        KMeans(n_clusters=k, random_state=seed).fit(X)


def timed(fn: Any) -> tuple[Any, float, float]:
    w, c = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - w, time.process_time() - c


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--store", default=None, help=f"feature store folder (default ${STORE_ENV}; else generated)"
    )
    ap.add_argument("--dev-set", choices=benchdata.DEV_SETS, default=None, help="a dev set under --data")
    benchdata.add_data_argument(ap)
    benchdata.add_work_argument(ap, PROG, "the dev set's feature store")
    ap.add_argument("--per-class", type=int, default=0, help="with --dev-set: N photos of each label")
    ap.add_argument("--n", type=int, default=20_000, help="generated rows")
    ap.add_argument("--dim", type=int, default=256, help="generated dims")
    ap.add_argument("--true-k", type=int, default=23, help="generated blobs")
    ap.add_argument("--noise", type=float, default=4.0, help="expected norm of the generated isotropic noise")
    ap.add_argument("--max-clusters", type=int, default=30)
    ap.add_argument("--n-components", type=int, default=None)
    ap.add_argument("--sample-size", type=int, default=5000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1, help="BLAS/OpenMP threads for both (default 1)")
    ap.add_argument("--repeats", type=int, default=2, help="alternating rounds of bare fits and choose-k")
    ap.add_argument("--exhaustive-n", type=int, default=None, help="rows for the exhaustive sweep (0: skip)")
    ap.add_argument("--no-retrieval", action="store_true")
    ap.add_argument("--quiet", action="store_true", help="no progress bars")
    ap.add_argument(
        "--no-warm-start",
        action="store_true",
        help="ablation: the sweep without its warm starts from the k - 1 and k + 1 solutions",
    )
    args = ap.parse_args(argv)

    from threadpoolctl import threadpool_limits

    from varsitysrch import _selectk
    from varsitysrch._selectk import _choose_k

    if args.no_warm_start:
        _selectk._WARM_STARTS = False  # the documented ablation switch of the sweep

    stored = load_store(args)
    print(
        f"# choose-k benchmark  python {platform.python_version()}  {platform.machine()}  "
        f"cores={os.cpu_count()}  threads={args.threads}  load average {os.getloadavg()[0]:.1f} "
        "(other processes share the cores)"
    )
    true_k: int | None = None
    if stored is None:
        t = time.perf_counter()
        X, _truth = make_data(args.n, args.dim, args.true_k, noise=args.noise, seed=args.seed)
        true_k = args.true_k
        print(
            f"data: generated {args.n:,} x {args.dim}, {args.true_k} blobs in a 64-dim subspace + noise "
            f"(norm {args.noise}), unit rows, in {time.perf_counter() - t:.1f} s"
        )
    else:
        X, what = stored
        print(f"data: {what}: {X.shape[0]:,} x {X.shape[1]}")
    ks = range(2, args.max_clusters + 1)
    common: dict[str, Any] = dict(
        max_clusters=args.max_clusters,
        n_components=args.n_components,
        random_state=args.seed,
        retrieval=not args.no_retrieval,
        show_progress=not args.quiet,
        n_threads=args.threads,
    )
    print(
        f"k = 2..{args.max_clusters}; " + ("sweep WITHOUT warm starts" if args.no_warm_start else "defaults")
    )

    # imports and thread pools before anything is timed (its log lines are not the benchmark's)
    with threadpool_limits(args.threads):
        bare_fits(X[:500], range(2, 4), args.seed)
    logging.disable(logging.WARNING)
    _choose_k(X[:500], 5, retrieval=False, show_progress=False)
    logging.disable(logging.NOTSET)

    walls: list[float] = []
    cpus: list[float] = []
    fast = None
    for i in range(args.repeats):
        with threadpool_limits(args.threads):
            _, bw, bc = timed(lambda: bare_fits(X, ks, args.seed))
        fast, fw, fc = timed(lambda: _choose_k(X, method="fast", sample_size=args.sample_size, **common))
        walls.append(fw / bw)
        cpus.append(fc / bc)
        print(
            f"round {i + 1}: bare fits {bw:6.1f} s wall {bc:6.1f} s CPU | choose k {fw:6.1f} s wall "
            f"{fc:6.1f} s CPU | ratio {fw / bw:.2f} wall, {fc / bc:.2f} CPU  (load {os.getloadavg()[0]:.1f})"
        )
    print(
        f"choose-k / bare fits (median of {args.repeats}): {statistics.median(walls):.2f} wall, "
        f"{statistics.median(cpus):.2f} CPU"
    )
    assert fast is not None
    report("choose k (fast)", fast)

    n_ex = X.shape[0] if args.exhaustive_n is None else min(args.exhaustive_n, X.shape[0])
    if not n_ex:
        return 0
    ex, ew, ec = timed(lambda: _choose_k(X[:n_ex], method="exhaustive", **common))
    print(f"exhaustive on {n_ex:,} rows: {ew:.1f} s wall, {ec:.1f} s CPU")
    report("exhaustive", ex)
    if n_ex < X.shape[0]:
        fast = _choose_k(X[:n_ex], method="fast", sample_size=args.sample_size, **common)
        report(f"fast on the same {n_ex:,} rows", fast)
    same = fast.recommended_k == ex.recommended_k
    print(
        f"recommendation: choose k k={fast.recommended_k}, exhaustive k={ex.recommended_k} -> "
        f"{'SAME' if same else 'DIFFERENT'}" + ("" if true_k is None else f"; true k = {true_k}")
    )
    return 0 if same else 1


def report(tag: str, r: Any) -> None:
    i = r.ks.index(r.recommended_k)
    order = np.argsort(-np.asarray(r.silhouette))[:5]
    top = ", ".join(f"k={r.ks[j]}:{r.silhouette[j]:.4f}" for j in order)
    print(
        f"  {tag}: k={r.recommended_k} (best silhouette k={r.best_silhouette_k}, knee k={r.knee_k} "
        f"{r.knee_method}); silhouette on {r.silhouette_sample:,} rows"
        + ("" if r.score_dims is None else f" in {r.score_dims} PCA dims")
        + f"; inertia@k {r.inertia[i]:.1f}"
        + (f"; confirmed ks {list(r.confirmed_ks)}" if r.confirmed_ks else "")
    )
    print(f"    top silhouettes: {top}")
    if r.retrieval is not None:
        rec = r.retrieval
        parts = [
            f"np{p}: R@10 {rec.recall_at_10[p][i]:.3f} scan {rec.scanned_fraction[p][i]:.3f}"
            for p in rec.nprobe
        ]
        print(f"    search at k={r.recommended_k}: " + "; ".join(parts))
    print(f"    {r.explanation}")


if __name__ == "__main__":
    sys.exit(main())
