"""One round of relevance feedback on the top 10: P@10 before and after, per domain.

    python benchmarks/bench_feedback.py --data DIR   # or $VARSITYSRCH_DATA
    python benchmarks/bench_feedback.py --data DIR --store clothing-small=STORE --store grocery-train=STORE

Data: ``clothing-small/`` and ``grocery-train/`` under ``--data`` / ``$VARSITYSRCH_DATA``;
relevance is "same ``label``" in ``<data>/<domain>/manifest.csv``.  Each domain's feature store
is extracted with the default extractor into ``--work`` on the first run (cached), or given as
``--store DOMAIN=STORE`` (repeatable; then only those domains are measured).

**A numpy prototype on private names, not what users get**: ranking space, feedback and search are
re-implemented here on the stores' vectors (``varsitysrch._postprocess``, ``_neighbours``, and
``_feedback``'s weights);
only ``--check-api N`` runs queries through the public ``Searcher.search_feedback``.  The
public-pipeline replacement for the P@10 figures is ``--check-api``; the weight grid has none.

Protocol (statistics fitted on the catalogue part only):

* split: clothing-small uses its manifest ``split`` column (catalogue = train, fit queries =
  validation, held-out queries = test); a manifest without one (grocery-train) is split
  per label with a fixed seed: 70 % catalogue, 15 % fit queries, 15 % held-out queries.
  Queries are never in the catalogue.
* ranking space: the default search space (catalogue-centred PCA to 128 dimensions, fitted
  on the catalogue part), exact cosine search -- what ``Searcher`` ranks by at full nprobe.
* the simulated shopper marks each of the query's top 10 relevant or irrelevant; the refined
  query is searched and the 10 judged items are left out of the new list (what the shop
  shows: new items).  ``P@10 shown`` is then the precision of those 10 new items; its
  baseline is what the shopper gets without feedback by asking for the next 10 (ranks
  11-20).  ``P@10 re-ranked`` keeps the judged items (liked ones come back on top).
* weights: ``q' = q + beta * mean(P) - gamma * mean(N)`` (alpha = 1; the scale is free as
  q' is normalised) over a grid; the default is the grid point with the best mean gain on
  the FIT queries of both domains that loses on neither; the held-out queries report it.
  Variants measured at the chosen weights: combining in the raw feature space (then
  projected) instead of the ranking space, and max-fusion (``score = s(q) + beta *
  max_P s - gamma * max_N s``) instead of the mean.
"""

from __future__ import annotations

import argparse
import csv
import itertools
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchdata

PROG = "bench_feedback.py"
DOMAINS = ("clothing-small", "grocery-train")

TOP = 10
BETAS = (0.0, 0.25, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0)
GAMMAS = (0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0)


def split_rows(
    ids: list[str], manifest: Path, seed: int = 0
) -> tuple[np.ndarray, dict[str, np.ndarray], str]:
    """``(labels per row, {"catalogue"|"fit"|"heldout": rows}, how)``."""
    with open(manifest, encoding="utf-8", newline="") as f:
        rows = {r["path"]: r for r in csv.DictReader(f)}
    keep = [j for j, i in enumerate(ids) if i in rows]
    labels = np.array([rows[ids[j]]["label"] if ids[j] in rows else "" for j in range(len(ids))])
    if all("split" in rows[ids[j]] for j in keep):
        sp = np.array([rows[ids[j]].get("split", "") if ids[j] in rows else "" for j in range(len(ids))])
        parts = {
            "catalogue": np.flatnonzero(sp == "train"),
            "fit": np.flatnonzero(sp == "validation"),
            "heldout": np.flatnonzero(sp == "test"),
        }
        return labels, parts, "manifest split (train / validation / test)"
    rng = np.random.default_rng(seed)
    parts_l: dict[str, list[int]] = {"catalogue": [], "fit": [], "heldout": []}
    for lab in sorted(set(labels[keep].tolist())):
        members = np.array([j for j in keep if labels[j] == lab])
        members = members[rng.permutation(len(members))]
        a, b = round(0.70 * len(members)), round(0.85 * len(members))
        parts_l["catalogue"] += members[:a].tolist()
        parts_l["fit"] += members[a:b].tolist()
        parts_l["heldout"] += members[b:].tolist()
    return labels, {k: np.sort(np.array(v)) for k, v in parts_l.items()}, "per label 70/15/15, seed 0"


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


class Domain:
    def __init__(self, name: str, store: Path, data: Path) -> None:
        from varsitysrch import FeatureStore
        from varsitysrch._neighbours import exact_topk
        from varsitysrch._postprocess import fit_search_pca, to_search_space

        st = FeatureStore.open(store)
        self.name = name
        X = benchdata.normalize_rows(np.asarray(st.vectors, np.float32))
        labels, parts, self.how = split_rows(list(st.ids), data / name / "manifest.csv")
        cat = parts["catalogue"]
        self.cat_ids = [st.ids[int(j)] for j in cat]
        self.extractor = st.extractor
        mean, comps = fit_search_pca(X[cat], 128, 0)
        self.proj = (mean, comps)
        self.raw_cat = X[cat]
        self.C = to_search_space(X[cat], mean, comps)  # ranking space
        self.cat_labels = labels[cat]
        self.sizes = {k: len(v) for k, v in parts.items()}
        self.queries = {}
        for part in ("fit", "heldout"):
            q = parts[part]
            Qr = X[q]
            Qs = to_search_space(Qr, mean, comps)
            top, _ = exact_topk(Qs, self.C, 2 * TOP)
            rel = self.cat_labels[top] == labels[q][:, None]
            self.queries[part] = (Qr, Qs, top, rel, labels[q])

    def evaluate(
        self,
        part: str,
        beta: float,
        gamma: float,
        variant: str = "rocchio",
        gamma_alone: float | None = None,
        first: int | None = None,
    ) -> dict[str, float]:
        from varsitysrch._postprocess import to_search_space

        Qr, Qs, top, rel, qlab = (a[:first] for a in self.queries[part])
        judged = top[:, :TOP]
        jrel = rel[:, :TOP].astype(np.float32)
        npos = jrel.sum(1, keepdims=True)
        nneg = TOP - npos
        if variant == "maxfusion":
            S = Qs @ self.C.T
            sims = np.einsum("nd,qjd->qjn", self.C, self.C[judged], optimize=True)  # [q, 10, n]
            pmax = np.where(jrel[:, :, None] > 0, sims, -np.inf).max(1)
            nmax = np.where(jrel[:, :, None] == 0, sims, -np.inf).max(1)
            S = S + beta * np.where(np.isfinite(pmax), pmax, 0) - gamma * np.where(np.isfinite(nmax), nmax, 0)
        else:
            if variant == "raw":
                V, Q0 = self.raw_cat[judged], Qr
            else:
                V, Q0 = self.C[judged], Qs
            pm = (jrel[:, :, None] * V).sum(1) / np.maximum(npos, 1)
            nm = ((1 - jrel)[:, :, None] * V).sum(1) / np.maximum(nneg, 1)
            g = np.full((len(Q0), 1), gamma, np.float32)
            if gamma_alone is not None:
                g[npos[:, 0] == 0] = gamma_alone
            q2 = unit(Q0 + beta * pm - g * nm)
            if variant == "raw":
                q2 = to_search_space(q2, *self.proj)
            S = q2 @ self.C.T
        order = np.argsort(-S, axis=1, kind="stable")
        reranked = order[:, :TOP]
        seen = np.zeros_like(S, dtype=bool)
        np.put_along_axis(seen, judged, True, axis=1)
        new = np.array([o[~seen[i][o]][:TOP] for i, o in enumerate(order)])
        p_before = rel[:, :TOP].mean()
        alone = npos[:, 0] == 0
        shown_q = (self.cat_labels[new] == qlab[:, None]).mean(1)
        return {
            "no_pos": float(alone.mean()),
            "no_pos_gain": float((shown_q[alone] - rel[alone, TOP : 2 * TOP].mean(1)).mean())
            if alone.any()
            else 0.0,
            "P@10": float(p_before),
            "next10": float(rel[:, TOP : 2 * TOP].mean()),
            "shown": float((self.cat_labels[new] == qlab[:, None]).mean()),
            "reranked": float((self.cat_labels[reranked] == qlab[:, None]).mean()),
        }


def _check_api(self: Domain, n: int) -> tuple[float, float, float]:
    """P@10 of the 10 new items: this script's numpy vs the library on the same queries."""
    import tempfile

    from varsitysrch import FeatureStore, Searcher, train_clusters
    from varsitysrch._feedback import _GAMMA_NEGATIVES_ONLY, BETA, GAMMA

    Qr, _, top, rel, qlab = self.queries["heldout"]
    n = min(n, len(Qr))
    lab = dict(zip(self.cat_ids, self.cat_labels, strict=True))
    with tempfile.TemporaryDirectory(prefix="bench-feedback-") as tmp:
        t = Path(tmp)
        FeatureStore.write(t / "store", self.cat_ids, self.raw_cat, self.extractor)
        train_clusters(t / "store", t / "m.vsm", t / "m.csv", 20, show_progress=False)
        s = Searcher(t / "m.vsm")
        ours = self.evaluate("heldout", BETA, GAMMA, gamma_alone=_GAMMA_NEGATIVES_ONLY, first=n)["shown"]
        got = {True: [], False: []}
        for i in range(n):
            judged = [self.cat_ids[int(j)] for j in top[i, :TOP]]
            pos = [x for x, r in zip(judged, rel[i, :TOP], strict=True) if r]
            neg = [x for x, r in zip(judged, rel[i, :TOP], strict=True) if not r]
            for exact in (True, False):
                hits = s.search_feedback(Qr[i], pos, neg, TOP, exact=exact)
                got[exact].append(np.mean([lab[h.image] == qlab[i] for h in hits]))
        return ours, float(np.mean(got[True])), float(np.mean(got[False]))


Domain.check_api = _check_api  # type: ignore[attr-defined]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(
        prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    benchdata.add_data_argument(ap, DOMAINS)
    ap.add_argument(
        "--store", action="append", default=[], help="DOMAIN=FEATURE_STORE (repeatable; default: extracted)"
    )
    benchdata.add_work_argument(ap, PROG, "the extracted stores")
    ap.add_argument(
        "--check-api",
        type=int,
        default=0,
        metavar="N",
        help="also run N held-out queries per domain through Searcher.search_feedback (a model "
        "trained on the catalogue part, k=20): exact and at the calibrated nprobe",
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
    doms = []
    for name, store in stores.items():
        d = Domain(name, store, data)
        doms.append(d)
        print(
            f"{name}: {d.how}; catalogue {d.sizes['catalogue']}, fit {d.sizes['fit']}, "
            f"held-out {d.sizes['heldout']} queries"
        )
    grid = {}
    for b, g in itertools.product(BETAS, GAMMAS):
        grid[(b, g)] = [d.evaluate("fit", b, g) for d in doms]
    best, best_score = None, -np.inf
    for key, res in grid.items():
        gains = [r["shown"] - r["next10"] for r in res]
        if min(gains) < 0:
            continue
        if np.mean(gains) > best_score:
            best, best_score = key, float(np.mean(gains))
    assert best is not None
    b, g = best
    print(
        "\nfit queries: gain in P@10 of the 10 new items shown (vs the next 10 without feedback), "
        "q + beta*P - gamma*N"
    )
    print("beta \\ gamma | " + " | ".join(f"{x:g}" for x in GAMMAS))
    for bb in BETAS:
        cells = []
        for gg in GAMMAS:
            gains = [r["shown"] - r["next10"] for r in grid[(bb, gg)]]
            cells.append("/".join(f"{x:+.3f}" for x in gains))
        print(f"{bb:g} | " + " | ".join(cells))
    print(f"(cells: {' / '.join(d.name for d in doms)})")
    alone_grid = (None, 0.0, 0.1, 0.25, 0.5)
    ga_best = max(
        alone_grid,
        key=lambda ga: np.mean([d.evaluate("fit", b, g, gamma_alone=ga)["shown"] for d in doms]),
    )
    print(
        f"\nchosen on the fit queries: alpha=1, beta={b:g}, gamma={g:g}; gamma with negatives only: {ga_best}"
    )
    print(
        "\n| domain | queries | P@10 (top 10) | next 10, no feedback | 10 new after feedback | gain "
        "| re-ranked P@10 (judged kept) |"
    )
    print("|---|---|---|---|---|---|---|")
    for part in ("fit", "heldout"):
        for d in doms:
            r = d.evaluate(part, b, g, gamma_alone=ga_best)
            print(
                f"| {d.name} | {part} ({d.sizes[part]}) | {r['P@10']:.3f} | {r['next10']:.3f} "
                f"| {r['shown']:.3f} | "
                f"{r['shown'] - r['next10']:+.3f} | {r['reranked']:.3f} |"
            )
    print(
        "\nqueries whose top 10 holds no relevant item (negatives only): "
        f"gamma for them chosen on fit: {ga_best}"
    )
    print("| domain | share of held-out queries | gain, gamma as above | gain, gamma alone |")
    print("|---|---|---|---|")
    for d in doms:
        r = d.evaluate("heldout", b, g)
        r2 = d.evaluate("heldout", b, g, gamma_alone=ga_best)
        print(f"| {d.name} | {r['no_pos']:.3f} | {r['no_pos_gain']:+.3f} | {r2['no_pos_gain']:+.3f} |")
    if args.check_api:
        print(
            f"\nthrough the library (Searcher.search_feedback, defaults), {args.check_api} held-out queries:"
        )
        print("| domain | this script (numpy) | search_feedback exact | search_feedback, calibrated nprobe |")
        print("|---|---|---|---|")
        for d in doms:
            print(f"| {d.name} | " + " | ".join(f"{x:.3f}" for x in d.check_api(args.check_api)) + " |")
    print("\nvariants at the chosen weights, held-out queries (10 new items shown):")
    print("| domain | ranking-space mean (chosen) | raw-space mean, then projected | max-fusion |")
    print("|---|---|---|---|")
    for d in doms:
        r0 = d.evaluate("heldout", b, g)["shown"]
        r1 = d.evaluate("heldout", b, g, "raw")["shown"]
        r2 = d.evaluate("heldout", b, g, "maxfusion")["shown"]
        print(f"| {d.name} | {r0:.3f} | {r1:.3f} | {r2:.3f} |")


if __name__ == "__main__":
    main()
