"""Shelf photo -> studio catalogue, through the public search (issue 21, item 4).

    python benchmarks/shelf_studio.py --data ../shared/data
    python benchmarks/shelf_studio.py --data ../shared/data --variant "auto:views=auto" \\
        --variant "pca0:search_pca=0" --variant "pca0-auto:search_pca=0,views=auto"

grocery-train has only in-store shelf photos and fashion-dev only studio shots, so the protocol is
built from both (the same photos as ``relevance_probe.py --parts shelf``): ``--queries`` seeded
fashion-dev products have their foreground (pixels away from the studio backdrop) pasted on a
seeded grocery-train shelf photo (short side 448 px, the product's long side 80 % of it, at a
seeded place, brightness x0.85-1.1, JPEG quality 85).  Each shelf photo is searched **as an image
file** with :meth:`varsitysrch.Searcher.search` against a model of all 6,483 fashion-dev studio
shots (``extract_features`` + ``train_clusters``, k = 20, cached in ``--work`` as
``dev_domains.py`` caches it).  Metrics per query: **R@1**, the product's own studio shot (or a
byte copy of it: stored vectors with cosine >= 0.99) ranked first; **mAP@10** with the product's
article type as relevance.  Every variant is compared with the baseline (``--baseline``, default
the library's defaults) by a paired bootstrap over the queries (2,000 resamples, 95 % percentile
interval).  Variants take ``dev_domains.py``'s keys: search options (``views``,
``colour_weight``, ``exact`` ...), the Searcher's ``query_expansion`` and training options
(``search_pca`` ...: the variant gets its own model, trained afresh on the same store).

Data: ``--data DIR`` or ``$VARSITYSRCH_DATA`` (a folder with ``fashion-dev/`` and
``grocery-train/``, each with ``manifest.csv``); without it the script stops with one line.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchdata
import dev_domains as dd
import relevance_probe as rp

PROG = "shelf_studio.py"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    benchdata.add_data_argument(ap, ["fashion-dev", "grocery-train"])
    ap.add_argument(
        "--work",
        default=dd.default_work(),
        help="cache folder shared with dev_domains.py (default: $VARSITYSRCH_DEV_WORK or "
        "<temp>/varsitysrch-dev-domains)",
    )
    ap.add_argument("--queries", type=int, default=300, help="shelf photos (default 300)")
    ap.add_argument("--baseline", default="default:", help="NAME:key=value,... (default: the defaults)")
    ap.add_argument("--variant", action="append", default=[], help="NAME:key=value,... (repeatable)")
    a = ap.parse_args(argv)
    a.data = benchdata.data_root(PROG, a.data, ["fashion-dev", "grocery-train"])
    if not 10 <= a.queries <= 2000:
        benchdata.fail(PROG, f"--queries must be in [10, 2000]; got {a.queries}")
    try:
        a.variants = [dd.parse_variant(s) for s in (a.baseline, *a.variant)]
    except dd.UsageError as exc:
        benchdata.fail(PROG, str(exc))
    if any(v.extractor for v in a.variants):
        benchdata.fail(
            PROG, "extractor options are not variants here (the catalogue's store is the default's)"
        )
    return a


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    from varsitysrch import FeatureStore

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    data, work = Path(a.data).resolve(), Path(a.work)
    fashion = dd.load_domain(data, "fashion-dev", limit=None, n_queries=dd.N_QUERIES, seed=0)
    grocery = dd.load_domain(data, "grocery-train", limit=None, n_queries=dd.N_QUERIES, seed=0)
    folder, src = rp.shelf_queries(fashion, grocery, work / "probe", a.queries, log)
    base = a.variants[0]
    built = dd.build(fashion, "full", base, work, "copy", log)
    store = FeatureStore.open(built.store)
    pos = {i: r for r, i in enumerate(store.ids)}
    X = np.array(store.vectors, np.float32)
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    rows = np.array([pos[fashion.ids[r]] for r in src])
    own = X @ X[rows].T >= 0.99  # [catalogue, query]: the product's shot and its byte copies
    copies = [{store.ids[j] for j in np.flatnonzero(own[:, q])} for q in range(len(src))]
    type_of = {fashion.ids[r]: int(fashion.labels[r]) for r in range(len(fashion.ids))}
    n_type = np.bincount(fashion.labels, minlength=int(fashion.labels.max()) + 1)

    results: dict[str, tuple[np.ndarray, np.ndarray, float]] = {}
    for v in a.variants:
        searcher = dd.variant_searcher(v, built)[0]
        r1, ap = np.zeros(len(src)), np.zeros(len(src))
        t0 = time.perf_counter()
        for q, r in enumerate(src.tolist()):
            hits = dd.run_query(searcher, str(folder / f"{q:04d}_v0.jpg"), False, dd.TOP, v.search)
            y = int(fashion.labels[r])
            r1[q] = float(bool(hits) and hits[0] in copies[q])
            ap[q] = dd.score(hits, y, type_of, int(n_type[y]))[0]
        ms = 1000 * (time.perf_counter() - t0) / len(src)
        results[v.name] = (r1, ap, ms)
        log(f"  {v.name}: R@1 {r1.mean():.4f} mAP@10(type) {ap.mean():.4f} ({ms:.0f} ms/query)")

    cmd = "python benchmarks/shelf_studio.py " + " ".join(argv if argv is not None else sys.argv[1:])
    print(f"`{cmd}`  (varsitysrch {dd.library_state()}; {len(src)} shelf photos; catalogue: ", end="")
    print(f"{len(store.ids):,} fashion-dev studio shots, k = {built.k}; {dd.RESAMPLES:,} paired resamples)")
    print()
    print(f"| variant | R@1 | Δ R@1 vs {base.name} (95 %) | mAP@10 (type) | Δ mAP@10 (95 %) | ms/query |")
    print("|---|---|---|---|---|---|")
    b_r1, b_ap, _ = results[base.name]
    for i, v in enumerate(a.variants):
        r1, ap, ms = results[v.name]
        cells = []
        for j, (bv, vv) in enumerate(((b_r1, r1), (b_ap, ap))):
            d, lo, hi = dd.paired_bootstrap(bv, vv, dd.RESAMPLES, (0, 21, i, j))
            cells.append(f"{d:+.4f} [{lo:+.4f}, {hi:+.4f}]")
        spec = v.spec.partition(":")[2] or "defaults"
        name = f"{v.name} (`{spec}`)"
        print(f"| {name} | {r1.mean():.4f} | {cells[0]} | {ap.mean():.4f} | {cells[1]} | {ms:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
