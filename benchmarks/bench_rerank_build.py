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

**Above** ``_index.IVF_THRESHOLD`` **images** (a model with an IVF, where the graph is opt-in:
``rerank_graph=True``) training builds the graph through the IVF (``_ivf_graph``: every image
searched at the IVF's calibrated ``nprobe``), so that is the build timed there (wall and CPU
seconds: CPU / wall is the cores it kept busy), on the whole catalogue -- or, with ``--graph-sample
M``, on ``M`` random images through the same index and search, extrapolated to ``n`` (the index fill
timed in full; the search part scaled by ``n / M``; said in the line) -- and its recall of the exact
lists on 1,000 images (exact against the float16 store, chunked: no float32 copy of it).  The
cluster-probed build is not what the library does there and is skipped.

``--latency Q``: per size also the default model (trained as ``train_clusters`` trains by default:
with the graph, no IVF below ``_index.IVF_THRESHOLD`` images; above it the default has no graph, so
the model is trained with ``rerank_graph=True`` and its graph's build time read from its record)
loaded in a public ``Searcher``, and
single-query latency, one thread (``threadpoolctl``), interleaved A B A B: ``search_vector(q, 10)``
(re-ranked, the default) vs ``rerank="none"`` over ``Q`` held-out generated vectors, and
``search_id`` over ``Q`` catalogue ids both ways (wall time, and a second table of the searching
thread's CPU time: on cores shared with other jobs the wall time adds the waits).  Each kind gets
a freshly loaded ``Searcher`` and two passes: the first (cold) computes the weights rows it
touches, the second (warm) finds them in the model's row cache.  The stage re-orders the top
``_rerank.POOL`` candidates with stored rows, so its cost per query does not depend on ``n``; the
search before it does.  The row cache
(``_rerank._CACHE_ROWS``) is emptied when full: the rows each pass computed and the cache's size
after it are printed, so a warm pass that found its rows gone says so.

    .venv/bin/python benchmarks/bench_rerank_build.py --sizes 20000,100000
    .venv/bin/python benchmarks/bench_rerank_build.py --sizes 20000,100000 --latency 200
    .venv/bin/python benchmarks/bench_rerank_build.py --sizes 1000000 --latency 200 --graph-in-training
    .venv/bin/python benchmarks/bench_rerank_build.py --latency 200 --model WORK/d707.vsm   # that model again
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


def _train_with_graph(store: Path, model: Path, csv: Path, k: int) -> tuple[float, float, float, float]:
    """``train_clusters(..., rerank_graph=True)``: ``(wall s, CPU s)`` of the whole training and of
    the graph's build inside it (``_train.add_graph``, timed by a wrapper)."""
    from varsitysrch import _train, train_clusters

    spent: list[float] = []
    add_graph = _train.add_graph

    def timed(*args: Any, **kwargs: Any) -> Any:
        w, c = time.perf_counter(), time.process_time()
        try:
            return add_graph(*args, **kwargs)
        finally:
            spent[:] = [time.perf_counter() - w, time.process_time() - c]

    _train.add_graph = timed
    try:
        w, c = time.perf_counter(), time.process_time()
        train_clusters(store, model, csv, k, show_progress=False, rerank_graph=True)
        wall, cpu = time.perf_counter() - w, time.process_time() - c
    finally:
        _train.add_graph = add_graph
    if not spent:
        raise SystemExit(f"{model}: training built no neighbour graph")
    return wall, cpu, spent[0], spent[1]


def measure(
    store: Path,
    k: int,
    work: Path,
    exact_max: int,
    log: bool = True,
    graph_sample: int = 0,
    in_training: bool = False,
) -> dict[str, Any]:
    from varsitysrch import FeatureStore, train_clusters
    from varsitysrch._index import IVF_THRESHOLD
    from varsitysrch._modelfile import load_model
    from varsitysrch._rerank import _BLOCK, _K1, _build_graph, _cluster_graph, _ranking_vectors, _topk_rows

    X = FeatureStore.open(store).vectors
    if in_training and len(X) > IVF_THRESHOLD:  # one training, the graph built in it (latency's model)
        model, csv = work / f"d{k}.vsm", work / f"d{k}.csv"
        wall, cpu, g_wall, g_cpu = _train_with_graph(store, model, csv, k)
        built = (g_wall, g_cpu, wall, cpu)
        return _measure_ivf(load_model(model), X, k, wall - g_wall, graph_sample, log, built=built)
    model, csv = work / f"m{k}.vsm", work / f"m{k}.csv"
    t0 = time.perf_counter()
    train_clusters(store, model, csv, k, show_progress=False, rerank_graph=False)
    train_s = time.perf_counter() - t0
    mf = load_model(model)
    if mf.config.get("ivf"):
        return _measure_ivf(mf, X, k, train_s, graph_sample, log)
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


def _ivf_lists(index: Any, X: np.ndarray, rows: np.ndarray, k: int, nprobe: int) -> np.ndarray:
    """The graph lists of catalogue ``rows`` as ``_rerank._ivf_graph`` finds them (its loop, for a
    sample): each row searched at ``nprobe`` lists, itself and missing results dropped, best first,
    ties by row; a row with fewer than ``k`` found keeps ``-1`` there (``_ivf_graph`` would search it
    exactly: counted, not timed)."""
    from varsitysrch._index import _probe

    n = len(X)
    out = np.empty((len(rows), k), np.int64)
    params = _probe(max(1, int(nprobe)))
    for s in range(0, len(rows), 16384):
        r = rows[s : s + 16384]
        score, found = index.search(np.ascontiguousarray(X[r], np.float32), k + 1, params=params)
        ok = (found >= 0) & (found != r[:, None])
        score = np.where(ok, score, -np.inf).astype(np.float32)
        order = np.lexsort((np.where(ok, found, n), -score), axis=1)[:, :k]
        got = np.take_along_axis(np.where(ok, found, -1), order, 1)
        out[s : s + len(r)] = np.where(np.isfinite(np.take_along_axis(score, order, 1)), got, -1)
    return out


def _measure_ivf(
    mf: Any,
    X: np.ndarray,
    k: int,
    train_s: float,
    sample: int,
    log: bool,
    built: tuple[float, float, float, float] | None = None,
) -> dict[str, Any]:
    """The graph of a model with an IVF, built as training builds it (``_rerank._ivf_graph``): on
    the whole catalogue (``sample`` 0), or on ``sample`` random images, extrapolated; ``built``:
    the model's own graph, built in its training (graph wall, graph CPU, training wall, training
    CPU seconds; ``train_s`` is then the training's wall time less the graph's)."""
    from varsitysrch._index import build_faiss_index
    from varsitysrch._rerank import _K1, _ivf_graph

    n = len(X)
    kk = min(_K1, n - 1)
    ivf = mf.config["ivf"]
    nprobe, nlist = int(ivf["nprobe"]), int(ivf["nlist"])
    cents, lists = mf.arrays["ivf_centroids"], mf.arrays["ivf_lists"]
    rng = np.random.default_rng(0)
    ex_rows = np.sort(rng.choice(n, 1000, replace=False))
    out: dict[str, Any] = {"n": n, "k": k, "nprobe": nprobe, "nlist": nlist, "train_s": train_s}
    if built is not None:
        graph_s, graph_cpu, total_s, total_cpu = built
        approx = mf.arrays["rerank_nn"][ex_rows].astype(np.int64)
        how = (
            f"whole catalogue, measured inside train_clusters(rerank_graph=True): {total_s:.1f} s wall, "
            f"{total_cpu:.1f} s CPU in all; train_clusters without it = the difference"
        )
        out["bytes"] = int(mf.arrays["rerank_nn"].nbytes + mf.arrays["rerank_sims"].nbytes)
        out["built"] = mf.config["rerank"]["built"]
    elif not sample or sample >= n:
        w0, c0 = time.perf_counter(), time.process_time()
        g = _ivf_graph(X, cents, lists, nprobe, _K1)
        graph_s, graph_cpu = time.perf_counter() - w0, time.process_time() - c0
        approx = g.nn[ex_rows].astype(np.int64)
        how = "whole catalogue, measured"
        out["bytes"] = g.nbytes
        del g
    else:
        rows = np.sort(
            np.concatenate(
                [ex_rows, rng.choice(np.setdiff1d(np.arange(n), ex_rows), sample - 1000, replace=False)]
            )
        )
        w0, c0 = time.perf_counter(), time.process_time()
        index = build_faiss_index(cents, lists, X)
        fill_s, fill_cpu = time.perf_counter() - w0, time.process_time() - c0
        w0, c0 = time.perf_counter(), time.process_time()
        got = _ivf_lists(index, X, rows, kk, nprobe)
        search_s, search_cpu = time.perf_counter() - w0, time.process_time() - c0
        del index
        scale = n / len(rows)
        graph_s, graph_cpu = fill_s + search_s * scale, fill_cpu + search_cpu * scale
        approx = got[np.searchsorted(rows, ex_rows)]
        out["short_rows"] = int((got < 0).any(axis=1).sum())
        how = (
            f"extrapolated: index fill {fill_s:.1f} s + search of {len(rows):,} sampled images "
            f"{search_s:.1f} s x {scale:.1f}"
        )
        out["bytes"] = n * kk * 8
    from varsitysrch._neighbours import exact_topk

    t0 = time.perf_counter()
    exact, _ = exact_topk(np.ascontiguousarray(X[ex_rows], np.float32), X, kk, exclude=ex_rows)
    exact_s = (time.perf_counter() - t0) * n / len(ex_rows)
    rec = _recall(approx, exact)
    out.update(graph_s=graph_s, graph_cpu=graph_cpu, exact_s=exact_s, recall=rec, how=how)
    if log:
        print(
            f"n={n:,} k={k} IVF nlist={nlist} nprobe={nprobe}: train_clusters (no graph) {train_s:.1f} s | "
            f"graph through the IVF {graph_s:.1f} s wall, {graph_cpu:.1f} s CPU ({how}; "
            f"{graph_s / train_s:.2f}x train) | exact graph {exact_s:.0f} s (extrapolated from 1,000 "
            f"images) | recall@{kk} of the exact lists {rec:.4f} (on those 1,000) | "
            f"{out['bytes']:,} bytes ({out['bytes'] / n:.0f} per image)",
            flush=True,
        )
    return out


def _pct(ms: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(ms), q))


def _cached_rows(caches: dict[int, Any]) -> int:
    """Rows in the row caches of the models still loaded."""
    return sum(len(c) for ref, c in caches.values() if ref() is not None)


def latency(
    store: Path | None,
    k: int,
    work: Path,
    queries: int,
    dim: int,
    trained: bool = False,
    model: Path | None = None,
) -> list[dict[str, Any]]:
    """Single-query latency of the default model's search, re-ranked vs ``rerank="none"`` (above
    ``IVF_THRESHOLD`` images: the model trained with ``rerank_graph=True``, the default having none);
    ``model``: that model, already trained (its CSV beside it; ``store`` and ``k`` unused)."""
    from bench_scale import generator
    from threadpoolctl import threadpool_limits

    from varsitysrch import FeatureStore, Searcher, train_clusters
    from varsitysrch._index import IVF_THRESHOLD
    from varsitysrch._rerank import _caches

    t0 = time.perf_counter()
    graph: bool | None
    if model is not None:
        from varsitysrch._modelfile import load_model

        csv = model.with_suffix(".csv")
        cfg = load_model(model).config
        n, k, graph = int(cfg["n_images"]), int(cfg["k"]), bool(cfg.get("ivf"))
        trained = True
    else:
        assert store is not None
        n = len(FeatureStore.open(store).ids)
        graph = (
            True if n > IVF_THRESHOLD else None
        )  # None: the default (a graph for every model without an IVF)
        model, csv = work / f"d{k}.vsm", work / f"d{k}.csv"
        if not (trained and graph and model.exists()):  # else: measure's model (--graph-in-training)
            train_clusters(store, model, csv, k, show_progress=False, rerank_graph=graph)
    train_s = time.perf_counter() - t0
    Q = generator(dim, 0)(queries, 10**9 + 7)  # held out: an item seed the store never uses
    ids = [f"p/{i:07d}.jpg" for i in np.random.default_rng(1).choice(n, queries, replace=False)]
    kinds = {
        "search_vector": lambda s, i, **kw: s.search_vector(Q[i], 10, **kw),
        "search_id": lambda s, i, **kw: s.search_id(ids[i], 10, **kw),
    }
    rows: list[dict[str, Any]] = []
    record: dict[str, Any] = {}
    load_s: list[float] = []
    with threadpool_limits(1):
        for kind, call in kinds.items():
            t0 = time.perf_counter()
            s = Searcher(model, csv, threads=1)  # a fresh model: an empty row cache
            load_s.append(time.perf_counter() - t0)
            if "rerank" not in s.config:
                raise SystemExit(f"n={n:,}: the model has no neighbour graph")
            record = dict(s.config["rerank"])
            nprobe = int((s.config.get("ivf") or {}).get("nprobe", s.config["nprobe"]))
            for i in range(3):  # imports and first-call costs, not the re-ranking's row cache
                call(s, i, rerank="none")
            for name in ("cold", "warm"):
                t: dict[str, list[float]] = {"none": [], "rerank": [], "cpu_none": [], "cpu_rerank": []}
                before = _cached_rows(_caches)
                for i in range(queries):  # A B A B
                    t0, c0 = time.perf_counter(), time.thread_time()
                    call(s, i, rerank="none")
                    t1, c1 = time.perf_counter(), time.thread_time()
                    call(s, i)
                    t2, c2 = time.perf_counter(), time.thread_time()
                    t["none"].append((t1 - t0) * 1e3)
                    t["rerank"].append((t2 - t1) * 1e3)
                    t["cpu_none"].append((c1 - c0) * 1e3)
                    t["cpu_rerank"].append((c2 - c1) * 1e3)
                after = _cached_rows(_caches)
                r: dict[str, Any] = {"n": n, "k": k, "nprobe": nprobe, "kind": kind, "pass": name}
                r["ivf"] = bool(s.config.get("ivf"))
                r["cache_before"], r["cache_after"] = before, after
                for m in t:
                    r[f"{m}_p50"], r[f"{m}_p95"] = _pct(t[m], 50), _pct(t[m], 95)
                rows.append(r)
            del s
    what = "rerank_graph=True" if graph else "the default, with the graph"
    took = f"{train_s:.1f} s"
    if trained and graph:
        what += f", trained before ({model}), not again"
        took = "(timed when it was trained)"
    print(
        f"n={n:,} k={k}: train_clusters ({what}) {took}, of which the graph "
        f"({record.get('built')}) {record.get('seconds')} s; "
        f"{record.get('bytes_per_image')} bytes per image; "
        f"Searcher load {', '.join(f'{x:.1f}' for x in load_s)} s",
        flush=True,
    )
    return rows


def print_latency(rows: list[dict[str, Any]], queries: int, clock: str = "") -> None:
    """The latency table: wall time (``clock`` ``""``), or the searching thread's CPU time
    (``"cpu_"``: what a query costs on a core of its own; wall time on cores shared with other
    jobs adds the time the thread waited)."""
    what = "CPU time of the searching thread" if clock else "latency"
    print(
        f"\nsingle-query {what}, 1 thread, top 10, {queries} queries per pass, interleaved "
        "(ms p50 / p95; ratio = re-ranked / none at p50; stage = the p50 difference)"
    )
    head = (
        "| n | clusters | nprobe | query | pass | none p50 / p95 | re-ranked p50 / p95 | ratio | stage "
        "| cache rows before -> after |"
    )
    print(head)
    print("|" + "---|" * head.count(" | ") + "---|")
    for r in rows:
        if f"{clock}none_p50" not in r:
            continue
        a, b = float(r[f"{clock}none_p50"]), float(r[f"{clock}rerank_p50"])
        a95, b95 = float(r[f"{clock}none_p95"]), float(r[f"{clock}rerank_p95"])
        nprobe = f"{r['nprobe']} (IVF)" if r.get("ivf") else str(r["nprobe"])
        print(
            f"| {r['n']:,} | {r['k']} | {nprobe} | {r['kind']} | {r['pass']} "
            f"| {a:.2f} / {a95:.2f} | {b:.2f} / {b95:.2f} "
            f"| {b / a:.2f}x | +{b - a:.2f} | {r['cache_before']:,} -> {r['cache_after']:,} |"
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
        "--graph-sample",
        type=int,
        default=0,
        help="above IVF_THRESHOLD: build the graph's lists of M >= 1,000 random images and extrapolate "
        "(0: the whole catalogue)",
    )
    ap.add_argument(
        "--graph-in-training",
        action="store_true",
        help="above IVF_THRESHOLD: train once with rerank_graph=True and time the graph's build inside "
        "train_clusters (train_clusters without it: the difference); --latency searches that model",
    )
    ap.add_argument(
        "--latency", type=int, default=0, help="Q > 0: also search latency, re-ranked vs none, over Q queries"
    )
    ap.add_argument(
        "--model",
        default=None,
        help="only --latency, on this model trained before by this script (e.g. WORK/bench-rerank-build-*/"
        "d707.vsm, its CSV and store where they were): nothing written or trained",
    )
    a = ap.parse_args()
    if a.latency < 0:
        ap.error(f"--latency must be >= 0; got {a.latency}")
    if a.graph_sample and a.graph_sample < 1000:
        ap.error(f"--graph-sample must be 0 or at least 1000 (the recall's images); got {a.graph_sample}")
    if a.graph_sample and a.graph_in_training:
        ap.error("--graph-sample and --graph-in-training exclude each other (a sample vs the whole build)")
    if a.model:
        if not a.latency:
            ap.error("--model needs --latency Q (it measures only the search latency)")
        got = latency(None, 0, Path("."), a.latency, a.dim, model=Path(a.model))
        print_latency(got, a.latency)
        print_latency(got, a.latency, "cpu_")
        return
    from bench_scale import write_store

    work = Path(tempfile.mkdtemp(prefix="bench-rerank-build-", dir=a.work))
    sizes = [int(s) for s in a.sizes.split(",") if s]
    ks = [int(s) for s in a.k.split(",") if s] or [round(math.sqrt(n / 2)) for n in sizes]
    lat: list[dict[str, Any]] = []
    for n, k in zip(sizes, ks, strict=True):
        folder = work / f"store-{n}"
        write_store(folder, n, a.dim, 0)
        measure(folder, k, work, a.exact_max, graph_sample=a.graph_sample, in_training=a.graph_in_training)
        if a.latency:
            lat += latency(folder, k, work, a.latency, a.dim, trained=a.graph_in_training)
    if lat:
        print_latency(lat, a.latency)
        print_latency(lat, a.latency, "cpu_")
    if a.store:
        for k in (int(s) for s in a.store_k.split(",") if s):
            measure(Path(a.store), k, work, a.exact_max)


if __name__ == "__main__":
    main()
