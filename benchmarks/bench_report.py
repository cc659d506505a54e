"""Report build time and size: clothing-small (3,781 real photos) and a synthetic 100k catalogue.

* 4k: the clothing-small store (extracted with the default extractor into ``--work`` on the
  first run, or ``--features STORE``), a model with k=20 trained once into ``--work``, thumbnails
  from the photos under ``--data``; the report is built twice -- cold (every thumbnail made) and
  warm (thumbnails reused from the previous report) -- and the time of each stage is printed.
* 100k: ``--synthetic`` unit vectors of dim 1280 (the default extractor's), drawn around 200
  centres with 1 % near-duplicate copies, written as a float16 store (no image files: the
  report's pages say "no image"), trained with k=100; the report is built once.  Thumbnail time
  at that size is then estimated from the rate measured on the real photos and the number of
  thumbnails the 100k report shows, which does not grow with the catalogue (k x (central +
  outliers) + the shown duplicate groups + at most 400 on the map).

Run::

    nice -n 5 .venv/bin/python benchmarks/bench_report.py --data DIR   # or $VARSITYSRCH_DATA
    nice -n 10 .venv/bin/python benchmarks/bench_report.py --duplicates-only 1000000   # generated only

Data: ``clothing-small/`` under ``--data`` / ``$VARSITYSRCH_DATA`` (the 4k part); the synthetic
parts are generated into ``--work``.  ``--duplicates-only 1000000`` times only the duplicate
search (``find_duplicates``, the colour-variant threshold) on a synthetic 1M store (2.4 GiB) and
needs no data.  Public API only; the thresholds are ``make_report``'s defaults.

Peak memory is printed from ``resource.getrusage`` (the whole process, training included).
"""

from __future__ import annotations

import argparse
import inspect
import resource
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchdata
from benchdata import normalize_rows

PROG = "bench_report.py"


def variant_threshold() -> float:
    """``make_report``'s default colour-variant threshold (its public signature, not a private constant)."""
    from varsitysrch import make_report

    return float(inspect.signature(make_report).parameters["variant_threshold"].default)


def duplicate_seconds(store: Path, work: Path, m: int | None = None) -> tuple[float, int]:
    """Seconds and pairs of ``find_duplicates(ivf)`` on ``store`` (its first ``m`` rows: a new store)."""
    from varsitysrch import FeatureStore, find_duplicates

    if m is not None:
        src = FeatureStore.open(store)
        sub = work / f"{store.name}-first-{m}"
        if not (sub / "store.json").exists() or len(FeatureStore.open(sub)) != m:
            FeatureStore.write(sub, list(src.ids[:m]), np.asarray(src.vectors[:m]), src.extractor)
        store = sub
    t0 = time.perf_counter()
    rep = find_duplicates(store, variant_threshold(), method="ivf", show_progress=False)
    return time.perf_counter() - t0, len(rep.pairs)


def mib(b: float) -> str:
    return f"{b / 2**20:.1f} MiB"


def peak() -> str:
    return mib(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)


def synthetic_store(folder: Path, n: int, dim: int = 1280, centres: int = 200, seed: int = 0) -> Path:
    from varsitysrch import FeatureStore

    if (folder / "store.json").exists() and len(FeatureStore.open(folder)) == n:
        return folder
    rng = np.random.default_rng(seed)
    C = rng.standard_normal((centres, dim)).astype(np.float32)
    X = np.empty((n, dim), np.float16)
    n_dup = n // 100
    for s in range(0, n - n_dup, 20_000):
        m = min(20_000, n - n_dup - s)
        X[s : s + m] = normalize_rows(C[rng.integers(0, centres, m)] + 1.5 * rng.standard_normal((m, dim)))
    src = rng.choice(n - n_dup, n_dup, replace=False)
    X[n - n_dup :] = normalize_rows(X[src].astype(np.float32) + 0.01 * rng.standard_normal((n_dup, dim)))
    ids = [f"p{k // 1000:03d}/img_{k:07d}.jpg" for k in range(n)]
    FeatureStore.write(folder, ids, X, {"name": "synthetic", "dim": dim})
    return folder


def thumb_bytes(out: Path) -> int:
    return sum(p.stat().st_size for p in (out / "thumbs").rglob("*.jpg"))


def report(label: str, s: object) -> None:
    d = s.to_dict()  # type: ignore[attr-defined]
    stages = ", ".join(f"{k} {v:.1f}s" for k, v in d["timings"].items())
    print(
        f"{label:>22}: {d['seconds']:7.1f} s, {mib(d['bytes']):>10}, thumbnails made {d['thumbnails_made']}, "
        f"reused {d['thumbnails_reused']}, missing {d['thumbnails_missing']} | {stages}"
    )


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(
        prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    benchdata.add_data_argument(ap, ["clothing-small"])
    ap.add_argument("--features", type=Path, default=None, help="an existing clothing-small store")
    benchdata.add_work_argument(ap, PROG, "stores, models and reports")
    ap.add_argument(
        "--synthetic", type=int, default=100_000, help="images of the synthetic catalogue (0: skip)"
    )
    ap.add_argument(
        "--duplicates-only",
        type=int,
        default=0,
        metavar="N",
        help="only time the duplicate search (it grows faster than n) on a synthetic N-image store",
    )
    a = ap.parse_args(argv)
    w = a.work
    if a.duplicates_only:
        w.mkdir(parents=True, exist_ok=True)
        n = a.duplicates_only
        t0 = time.perf_counter()
        store = synthetic_store(w / f"synthetic-{n}", n)
        print(f"synthetic store of {n:,} x 1280 (float16): {time.perf_counter() - t0:.0f} s")
        took, n_pairs = duplicate_seconds(store, w)
        print(
            f"duplicate search (find_duplicates, ivf, cosine >= {variant_threshold()}) on {n:,} vectors: "
            f"{took:.0f} s, {n_pairs:,} pairs ({n // 100:,} planted); peak RSS {peak()} "
            "(the memory-mapped store's pages included)"
        )
        return
    data = benchdata.data_root(PROG, a.data, ["clothing-small"], manifest=False)
    w.mkdir(parents=True, exist_ok=True)

    from varsitysrch import make_report, train_clusters

    images = data / "clothing-small"
    features = a.features or benchdata.feature_store(data, "clothing-small", w, benchdata.log_stderr)
    model, csv = w / "clothing.vsm", w / "clothing.csv"
    if not model.exists():
        train_clusters(features, model, csv, 20, show_progress=False)
    out = w / "report-4k"
    if out.exists():
        import shutil

        shutil.rmtree(out)
    cold = make_report(features, model, csv, out, image_root=images, show_progress=False)
    report(f"{cold.n_images} images cold", cold)
    warm = make_report(features, model, csv, out, image_root=images, show_progress=False)
    report(f"{warm.n_images} images warm", warm)
    rate = cold.thumbnails_made / max(cold.timings["thumbnails"], 1e-9)
    print(f"{'':>22}  thumbnail rate on real photos: {rate:.0f} per second; peak RSS so far {peak()}")
    if a.synthetic:
        n = a.synthetic
        t0 = time.perf_counter()
        store = synthetic_store(w / f"synthetic-{n}", n)
        t1 = time.perf_counter()
        smodel, scsv = w / f"synthetic-{n}.vsm", w / f"synthetic-{n}.csv"
        if not smodel.exists():
            train_clusters(store, smodel, scsv, 100, show_progress=False)
        t2 = time.perf_counter()
        print(
            f"{'':>22}  synthetic store {t1 - t0:.0f} s, training k=100 {t2 - t1:.0f} s "
            "(not part of the report)"
        )
        big = make_report(store, smodel, scsv, w / f"report-{n}", show_progress=False)
        report(f"{n} images", big)
        shown = big.thumbnails_missing  # every shown image is 'missing' here: no image files
        per_thumb = thumb_bytes(out) / max(cold.thumbnails_made, 1)
        print(
            f"{'':>22}  thumbnails it would show: {shown}; at {rate:.0f}/s that adds ~{shown / rate:.0f} s "
            f"(cold) -> about {big.seconds + shown / rate:.0f} s cold in all, and ~{mib(shown * per_thumb)} "
            f"of thumbnails ({per_thumb / 1024:.1f} KiB each on the real photos); peak RSS {peak()}"
        )
        # the one stage that grows faster than n: time it on nested subsets and extrapolate to 1M
        sizes, secs = [], []
        for m in (n // 4, n // 2, n):
            sizes.append(m)
            secs.append(duplicate_seconds(store, w, m if m < n else None)[0])
        slope = float(np.polyfit(np.log(sizes), np.log(secs), 1)[0])
        at_1m = secs[-1] * (1_000_000 / n) ** slope
        timed = ", ".join(f"{m:,}: {t:.1f} s" for m, t in zip(sizes, secs, strict=True))
        print(
            f"{'':>22}  duplicate search (ivf) at {timed}"
            f" -> time ~ n^{slope:.2f}; extrapolated to 1,000,000 vectors: ~{at_1m / 60:.0f} min"
        )


if __name__ == "__main__":
    main()
