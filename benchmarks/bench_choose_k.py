"""Benchmark choosing k: the fast path against the exhaustive sweep on synthetic clustered features.

Data: ``--true-k`` Gaussian blobs (Dirichlet-distributed sizes) in a random ``--subspace``-dim
subspace of R^dim, plus isotropic noise in all dims, rows L2-normalised -- CNN-feature-like in shape
(unit vectors, clusters of unequal size, most variance in a few directions).

Runs ``choose_k(method="fast")`` on all ``--n`` rows (timed: the issue's target is k = 2..50 on
50,000 x 1,280 in under 60 s on 2 cores), then ``method="exhaustive"`` (scikit-learn KMeans on all
rows for every k + full silhouette) and ``method="fast"`` on the same first ``--exhaustive-n`` rows, and
prints times and the recommended ks. ``--exhaustive-n`` defaults to the largest size whose exhaustive
sweep is estimated (from a short calibration) to take at most ``--exhaustive-budget`` seconds.

    python benchmarks/bench_choose_k.py                      # 50,000 x 1,280, k = 2..50
    python benchmarks/bench_choose_k.py --n 20000 --dim 512 --exhaustive-n 20000
    python benchmarks/bench_choose_k.py --n-components 10    # analysis in PCA-10 space
    python benchmarks/bench_choose_k.py --no-warm-start      # ablation: why the sweep keeps them

Figures from runs of this script: ``docs/choose_k.md``.

Not a test: it prints figures. Progress bars go to stderr (``--quiet`` hides them).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time

import numpy as np


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


def estimate_exhaustive(X: np.ndarray, max_clusters: int, n_init: int, seed: int) -> tuple[float, float]:
    """Seconds per row of the k sweep and per row^2 of the silhouette pass, from a short calibration."""
    from sklearn.cluster import KMeans

    m = min(len(X), 4000)
    sub = X[:m].astype(np.float64)
    ks = range(2, max_clusters + 1)
    k_mid = max(2, (2 + max_clusters) // 2)
    KMeans(n_clusters=2, n_init=1, random_state=seed).fit(sub[:200])  # imports, thread pools
    t = time.perf_counter()
    KMeans(n_clusters=k_mid, n_init=n_init, random_state=seed).fit(sub)
    fit_per_row = (time.perf_counter() - t) * len(ks) * 1.7 / m  # + the two warm-start fits per k
    A = X[:m]
    t = time.perf_counter()
    _ = A @ A.T
    gemm = time.perf_counter() - t  # m * m * dim multiply-adds
    total_k = sum(ks)
    sil_per_row2 = gemm / (m * m) * (1 + total_k / X.shape[1]) * 1.5
    return fit_per_row, sil_per_row2


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=50_000)
    ap.add_argument("--dim", type=int, default=1280)
    ap.add_argument("--true-k", type=int, default=23)
    ap.add_argument("--max-clusters", type=int, default=50)
    ap.add_argument("--n-components", type=int, default=None)
    ap.add_argument("--n-init", type=int, default=3)
    ap.add_argument("--sample-size", type=int, default=5000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--noise", type=float, default=4.0, help="expected norm of the isotropic noise")
    ap.add_argument("--exhaustive-n", type=int, default=None, help="rows for the exhaustive sweep (0: skip)")
    ap.add_argument("--exhaustive-budget", type=float, default=360.0, help="seconds, for the default size")
    ap.add_argument("--no-retrieval", action="store_true")
    ap.add_argument("--quiet", action="store_true", help="no progress bars")
    ap.add_argument(
        "--no-warm-start",
        action="store_true",
        help="ablation: the sweep without its warm starts from the k - 1 and k + 1 solutions",
    )
    args = ap.parse_args(argv)

    from varsitysrch import _selectk
    from varsitysrch._selectk import choose_k

    if args.no_warm_start:
        _selectk._WARM_STARTS = False  # the documented ablation switch of the sweep

    progress = not args.quiet
    print(
        f"# choose-k benchmark  python {platform.python_version()}  {platform.machine()}  "
        f"cores={os.cpu_count()}  load average {os.getloadavg()[0]:.1f} (other processes share the cores)"
    )
    t = time.perf_counter()
    X, _truth = make_data(args.n, args.dim, args.true_k, noise=args.noise, seed=args.seed)
    print(
        f"data: {args.n:,} x {args.dim}, {args.true_k} blobs in a 64-dim subspace + noise "
        f"(norm {args.noise}), unit rows; generated in {time.perf_counter() - t:.1f} s"
        + ("; sweep WITHOUT warm starts" if args.no_warm_start else "")
    )
    common = dict(
        max_clusters=args.max_clusters,
        n_components=args.n_components,
        n_init=args.n_init,
        random_state=args.seed,
        retrieval=not args.no_retrieval,
        show_progress=progress,
    )

    def report(tag: str, r) -> None:  # type: ignore[no-untyped-def]
        i = r.ks.index(r.recommended_k)
        print(
            f"{tag}: {r.seconds:7.1f} s  recommended k={r.recommended_k}  "
            f"best-silhouette k={r.best_silhouette_k}  "
            f"knee k={r.knee_k} ({r.knee_method})  silhouette@rec={r.silhouette[i]:.4f} "
            f"(on {r.silhouette_sample:,} rows)  inertia@rec={r.inertia[i]:.1f}"
            + (f"  confirmed ks={list(r.confirmed_ks)}" if r.confirmed_ks else "")
        )
        if r.retrieval is not None:
            rec = r.retrieval
            parts = [
                f"np{p}: R@10 {rec.recall_at_10[p][i]:.3f} scan {rec.scanned_fraction[p][i]:.3f}"
                for p in rec.nprobe
            ]
            print(f"{'':>{len(tag)}}  search at k={r.recommended_k}: " + "; ".join(parts))
        print(f"{'':>{len(tag)}}  rule: {r.rule}")

    def top_sil(r, m: int = 5) -> str:  # type: ignore[no-untyped-def]
        order = np.argsort(-np.asarray(r.silhouette))[:m]
        return ", ".join(f"k={r.ks[j]}:{r.silhouette[j]:.4f}" for j in order)

    fast = choose_k(X, method="fast", sample_size=args.sample_size, **common)  # type: ignore[arg-type]
    report(f"fast        n={args.n:>6}", fast)
    print(f"  top silhouettes (fast, full n): {top_sil(fast)}")

    n_ex = args.exhaustive_n
    if n_ex is None:
        per_row, per_row2 = estimate_exhaustive(X, args.max_clusters, args.n_init, args.seed)
        est_full = per_row * args.n + per_row2 * args.n**2
        n_ex = args.n
        while n_ex > 2000 and per_row * n_ex + per_row2 * n_ex**2 > args.exhaustive_budget:
            n_ex = int(n_ex * 0.8)
        n_ex = min(args.n, n_ex // 1000 * 1000 or n_ex)
        print(
            f"exhaustive at n={args.n:,} estimated {est_full / 60:.1f} min"
            + (
                f" > budget {args.exhaustive_budget / 60:.0f} min: comparing on the first {n_ex:,} rows"
                if n_ex < args.n
                else ""
            )
        )
    if n_ex:
        Xs = X[:n_ex]
        ex = choose_k(Xs, method="exhaustive", **common)  # type: ignore[arg-type]
        report(f"exhaustive  n={n_ex:>6}", ex)
        fs = choose_k(Xs, method="fast", sample_size=args.sample_size, **common)  # type: ignore[arg-type]
        report(f"fast        n={n_ex:>6}", fs)
        print(f"  top silhouettes (exhaustive): {top_sil(ex)}")
        print(f"  top silhouettes (fast):       {top_sil(fs)}")
        same = ex.recommended_k == fs.recommended_k
        print(
            f"agreement on n={n_ex:,}: fast k={fs.recommended_k} vs exhaustive k={ex.recommended_k} -> "
            f"{'SAME' if same else 'DIFFERENT'}; speed-up {ex.seconds / max(fs.seconds, 1e-9):.1f}x"
        )
        print(
            f"agreement with the full-size fast run: k={fast.recommended_k} "
            f"({'same' if fast.recommended_k == ex.recommended_k else 'different'}); true k = {args.true_k}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
