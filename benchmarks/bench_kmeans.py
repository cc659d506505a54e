"""K-means fit: scikit-learn vs faiss (and MiniBatchKMeans), fit time and inertia side by side.

    python benchmarks/bench_kmeans.py [--sizes 20000 100000] [--dim 512] [--k 50 200]
                                      [--features STORE] [--threads 2]

Every method fits the same data with one initialisation; inertia is recomputed the same
way for all (sum of squared distances of every vector to its nearest centroid, float64),
so the ratios compare like with like.  Data: catalogue-like synthetic unit vectors (see
``bench_search.py``) and, with ``--features``, a real feature store (e.g. clothing-small
extracted with the default extractor).

* sklearn: ``KMeans(init="k-means++", n_init=1, algorithm="lloyd")``;
* faiss: ``faiss.Kmeans(niter=25, nredo=1)`` on at most ``256 * k`` sampled points (its
  default), then every point assigned;
* varsitysrch: :class:`~varsitysrch.KMeansModel` with ``backend="auto"`` (what
  ``train_clusters`` uses), ``n_init=1``;
* MiniBatchKMeans (``batch_size=4096``, ``n_init=1``), for reference.

Data: generated (no path needed); ``--features STORE`` adds a feature store of your own, e.g.
clothing-small extracted with ``varsitysrch extract "$VARSITYSRCH_DATA/clothing-small" STORE``.
Public API only (``KMeansModel``, ``load_features``).
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np


def inertia(X: np.ndarray, C: np.ndarray, chunk: int = 32768) -> float:
    c2 = (C.astype(np.float64) ** 2).sum(1)
    tot = 0.0
    for s in range(0, len(X), chunk):
        x = X[s : s + chunk].astype(np.float64)
        d = (x**2).sum(1)[:, None] - 2 * x @ C.T.astype(np.float64) + c2[None]
        tot += float(np.maximum(d.min(1), 0).sum())
    return tot


def fit_all(name: str, X: np.ndarray, k: int, threads: int, seed: int = 0) -> None:
    import faiss
    from sklearn.cluster import KMeans, MiniBatchKMeans
    from threadpoolctl import threadpool_limits

    from varsitysrch import KMeansModel

    print(f"\n### {name}: {len(X):,} x {X.shape[1]}, k = {k}, {threads} threads\n")
    print("| method | fit s | inertia | inertia vs sklearn | time vs sklearn | empty clusters |")
    print("|---|---|---|---|---|---|")
    faiss.omp_set_num_threads(threads)
    res: dict[str, tuple[float, np.ndarray]] = {}
    with threadpool_limits(threads):
        KMeans(2, n_init=1, random_state=seed).fit(X[:2000])  # warm-up: imports, thread pools
        faiss.Kmeans(X.shape[1], 2, niter=2, verbose=False).train(np.ascontiguousarray(X[:2000]))
        t = time.perf_counter()
        km = KMeans(k, init="k-means++", n_init=1, algorithm="lloyd", random_state=seed).fit(X)
        res["sklearn KMeans (k-means++, Lloyd)"] = (time.perf_counter() - t, km.cluster_centers_)
        t = time.perf_counter()
        fk = faiss.Kmeans(X.shape[1], k, niter=25, nredo=1, seed=seed, verbose=False)
        fk.train(np.ascontiguousarray(X))
        fk.index.search(np.ascontiguousarray(X), 1)  # assign every point (as train_clusters does)
        res["faiss.Kmeans (25 iter, 256*k sample)"] = (time.perf_counter() - t, np.asarray(fk.centroids))
        t = time.perf_counter()
        m = KMeansModel(k, n_init=1, random_state=seed, backend="auto").fit(X)
        res[f"varsitysrch KMeansModel (auto -> {m.backend_})"] = (time.perf_counter() - t, m.cluster_centers_)
        t = time.perf_counter()
        mb = MiniBatchKMeans(k, batch_size=4096, n_init=1, random_state=seed).fit(X)
        res["sklearn MiniBatchKMeans"] = (time.perf_counter() - t, mb.cluster_centers_)
    base_t, base_c = next(iter(res.values()))
    base_i = inertia(X, base_c)
    for name_, (secs, C) in res.items():
        inn = inertia(X, C)
        c2 = (C.astype(np.float64) ** 2).sum(1)
        lab = np.concatenate(
            [((X[s : s + 32768] @ C.T) * -2 + c2[None]).argmin(1) for s in range(0, len(X), 32768)]
        )
        empty = int(k - len(np.unique(lab)))
        print(
            f"| {name_} | {secs:.2f} | {inn:,.1f} | {inn / base_i - 1:+.2%} | {secs / base_t:.2f}x "
            f"| {empty} |",
            flush=True,
        )


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(
        prog=Path(__file__).name, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--sizes", type=int, nargs="+", default=[20_000, 100_000])
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--k", type=int, nargs="+", default=[50, 200])
    ap.add_argument("--features", default=None, help="a feature store folder to cluster too")
    ap.add_argument("--features-k", type=int, nargs="+", default=[20, 50])
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    from bench_search import make_data

    if args.features and not Path(args.features).is_dir():
        ap.error(f"--features {args.features!r} is not a feature store folder")
    if args.features:
        from varsitysrch import load_features

        _, F, ex = load_features(args.features)
        for k in args.features_k:
            fit_all(f"features {Path(args.features).name} ({ex.get('name')})", F, k, args.threads)
    for n in args.sizes:
        X, _ = make_data(n, 1, args.dim)
        for k in args.k:
            fit_all("synthetic", X, k, args.threads)


if __name__ == "__main__":
    main()
