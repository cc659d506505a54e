"""Result collapse on planted duplicates and on plain result lists, both dev domains.

    nice -n 5 .venv/bin/python benchmarks/bench_collapse.py --data DIR   # or $VARSITYSRCH_DATA
    nice -n 5 .venv/bin/python benchmarks/bench_collapse.py --data DIR \\
        --store clothing-small=STORE --store grocery-train=STORE --work /tmp/collapse-work

Data: ``clothing-small/`` and ``grocery-train/`` under ``--data`` / ``$VARSITYSRCH_DATA`` (photos
and ``manifest.csv``).  Each domain's store is extracted with the default extractor into
``--work`` on the first run (cached), or given as ``--store DOMAIN=STORE``; the planted copies
and their stores go to ``--work``.

**A numpy prototype on private names, not what users get**: ranking (search-space PCA, exact search) and
collapse are applied by hand (``varsitysrch._postprocess``, ``_neighbours``, ``_collapse``), per
whole-image query.  What users get is ``Searcher`` with collapse on, after views are merged
(issue 20); there is no public-pipeline replacement for these figures yet.

For each domain (split as in ``bench_feedback.py``: catalogue part, held-out queries):

* planted: ``--originals`` seeded catalogue photos get the copies of
  ``bench_duplicates.py`` (re-encoded, half size, 5 % crop, mirrored; and a hue-rotated
  colour variant, which is a different product colour and should stay), embedded with the
  catalogue's extractor and added to the catalogue.  Each original is then the query:
  the top 10 without collapse hold the original and up to four copies; with collapse
  (greedy, cosine of the store vectors >= threshold) the copies should be gone and the
  slots filled with other items.  ``dropped, not a copy`` counts collapsed hits that were
  not planted copies of the query's original (false merges, or natural near-duplicates).
* plain: the held-out queries over the unmodified catalogue: how often collapse changes a
  top-10 list at all, and P@10 (same label) with and without it.

Ranking: exact search in the default search space (catalogue-centred PCA-128 fitted on the
catalogue part), what ``Searcher`` does at full nprobe; the top 60 are collapsed and the
first 10 kept are shown.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchdata
from bench_duplicates import TRANSFORMS, plant
from bench_feedback import split_rows

PROG = "bench_collapse.py"
DOMAINS = ("clothing-small", "grocery-train")

TOP, POOL = 10, 60


def shown(rows: np.ndarray, raw: np.ndarray, threshold: float | None) -> tuple[np.ndarray, np.ndarray]:
    """``(the 10 rows shown, rows dropped before the 10th shown)``."""
    if threshold is None:
        return rows[:TOP], rows[:0]
    from varsitysrch._collapse import collapse_rows

    kept, _ = collapse_rows(raw[rows], threshold)
    cut = kept[:TOP]
    last = int(cut[-1]) if len(cut) else 0
    dropped = np.setdiff1d(np.arange(last + 1), cut)
    return rows[cut], rows[dropped]


def run(
    data: Path, domain: str, store_path: Path, work: Path, originals: int, thresholds: list[float]
) -> None:
    from varsitysrch import Extractor, FeatureStore, extract_features
    from varsitysrch._neighbours import exact_topk
    from varsitysrch._postprocess import fit_search_pca, to_search_space

    normalize_rows = benchdata.normalize_rows
    store = FeatureStore.open(store_path)
    labels, parts, _ = split_rows(list(store.ids), data / domain / "manifest.csv")
    X = normalize_rows(np.asarray(store.vectors, np.float32))
    cat = parts["catalogue"]
    rng = np.random.default_rng(0)
    picks = np.sort(rng.choice(cat, originals, replace=False))
    planted = work / "collapse" / f"{domain}-{originals}-originals"  # never another run's copies
    root = planted / "images"
    origin: dict[str, int] = {}
    kind: dict[str, str] = {}
    for r in picks:
        for t, rel in plant(data / domain / store.ids[int(r)], root, f"{int(r):05d}", rng).items():
            origin[rel], kind[rel] = int(r), t
    extract_features(
        root,
        planted / "features",
        extractor=Extractor.from_identity(store.extractor),
        show_progress=False,
    )
    ps = FeatureStore.open(planted / "features")
    P = normalize_rows(np.asarray(ps.vectors, np.float32))
    # catalogue = catalogue part + copies; row ids: catalogue rows first
    raw = np.concatenate([X[cat], P])
    owner = np.concatenate([cat, [origin[i] for i in ps.ids]])  # the original photo of each row
    is_copy = np.concatenate([np.zeros(len(cat), bool), np.ones(len(P), bool)])
    tkind = np.array(["-"] * len(cat) + [kind[i] for i in ps.ids])
    mean, comps = fit_search_pca(X[cat], 128, 0)
    S = to_search_space(raw, mean, comps)
    pos = {int(r): j for j, r in enumerate(cat)}
    qrows = np.array([pos[int(r)] for r in picks])
    top, _ = exact_topk(S[qrows], S, POOL)
    print(f"\n== {domain}: {len(cat)} catalogue images + {len(P)} planted copies of {originals} originals")
    print(f"planted: each original as the query, top {TOP}")
    print(
        "| collapse | copies of the query in the top 10 (per transform) | colour variants "
        "| dropped, not a copy: same label / other label |"
    )
    print("|---|---|---|---|")
    lab_all = labels[owner]
    for th in (None, *thresholds):
        per = {t: 0 for t in TRANSFORMS}
        same = other = 0
        for i, q in enumerate(qrows):
            show, dropped = shown(top[i], raw, th)
            for r in show:
                if is_copy[r] and owner[r] == owner[q]:
                    per[str(tkind[r])] += 1
            for r in dropped:
                if not (is_copy[r] and owner[r] == owner[q]) and r != q:
                    same += int(lab_all[r] == lab_all[q])
                    other += int(lab_all[r] != lab_all[q])
        dup = sum(per[t] for t in TRANSFORMS if t != "colour")
        detail = ", ".join(f"{t} {per[t]}" for t in TRANSFORMS if t != "colour")
        print(
            f"| {'off' if th is None else f'on ({th})'} | {dup} of {4 * originals} ({detail}) "
            f"| {per['colour']} of {originals} | {same} / {other} |"
        )
    # plain lists
    Sc = S[: len(cat)]
    for part in ("heldout",):
        q = parts[part]
        Qs = to_search_space(X[q], mean, comps)
        top2, _ = exact_topk(Qs, Sc, POOL)
        for th in thresholds:
            changed = 0
            p_off, p_on = [], []
            for i in range(len(q)):
                a, _ = shown(top2[i], raw, None)
                b, _ = shown(top2[i], raw, th)
                changed += int(not np.array_equal(a, b))
                lab = labels[q[i]]
                p_off.append(np.mean(labels[cat[a]] == lab))
                p_on.append(np.mean(labels[cat[b]] == lab))
            print(
                f"plain ({part}, {len(q)} queries, catalogue without copies), threshold {th}: "
                f"collapse changed "
                f"{changed} lists ({changed / len(q):.1%}); "
                f"P@10 {np.mean(p_off):.3f} off, {np.mean(p_on):.3f} on"
            )


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(
        prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    benchdata.add_data_argument(ap, DOMAINS)
    ap.add_argument(
        "--store", action="append", default=[], help="DOMAIN=FEATURE_STORE (repeatable; default: extracted)"
    )
    benchdata.add_work_argument(ap, PROG, "the extracted stores, the planted copies and their stores")
    ap.add_argument("--originals", type=int, default=40)
    ap.add_argument(
        "--thresholds", type=float, nargs="+", default=None, help="default: the library's, 0.93, 0.95"
    )
    args = ap.parse_args(argv)
    specs = [s.partition("=") for s in args.store]
    bad = [s for s, (name, eq, path) in zip(args.store, specs, strict=True) if not (name and eq and path)]
    if bad:
        benchdata.fail(PROG, f"--store must be DOMAIN=FEATURE_STORE; got {bad[0]!r}")
    names = [name for name, _, _ in specs] or list(DOMAINS)
    data = benchdata.data_root(PROG, args.data, names)
    stores = {name: Path(path) for name, _, path in specs} or {
        name: benchdata.feature_store(data, name, args.work, benchdata.log_stderr) for name in names
    }
    if args.thresholds is None:
        from varsitysrch._collapse import _COLLAPSE_THRESHOLD

        args.thresholds = [_COLLAPSE_THRESHOLD, 0.93, 0.95]
    for name, store in stores.items():
        run(data, name, store, args.work, args.originals, args.thresholds)


if __name__ == "__main__":
    main()
