"""Colour from real labels through the public search: fashion-dev's ``baseColour`` as the shop's names.

Protocol (held-out, so no query's own label is ever learned from): the catalogue is
``dev_domains.py``'s 75 % split of fashion-dev (its cached store and default model), with an
attributes table of each catalogue image's ``baseColour``; every held-out image whose product type
is in the catalogue is a query photo, embedded once by the library's own query path
(``_pipeline.embed_query``, what ``varsitysrch eval`` does) and searched through ``run_search``
with each setting.  The queries are split by a seeded coin into a tune half and a report half:
a rule's weight is chosen on the tune half (the best same-type-and-same-colour P@10 whose
same-type P@10 stays within 0.01 of the default's) and reported on the other half, with paired
bootstrap 95 % intervals (2,000 resamples) against the default (colour off).

Rows:
* ``default``: today's defaults, colour off;
* ``signature``: "match colour" on a model without colour names (the colour signatures' cosine),
  at each ``--signature-weights`` value (default 0.15, the switch's weight);
* ``oracle`` (``--oracle-weights``): the learned model told each query photo's true colour, a
  ceiling for any colour predictor with this rule;
* ``learned``: a model trained with ``attributes=`` + ``colour_labels="baseColour"`` (the
  classifier learned from the catalogue's labels), at each ``--weights`` value; the row at 0.15
  is what the switch gives.

Metrics per query: same-type P@10 (the hit's article type is the query's) and same-type-and-
same-colour P@10 (type and ``baseColour`` both).  Costs, same run: the classifier's fit seconds
and bytes in the model, ms per query of each setting.

It uses internals (``_pipeline.embed_query`` and ``run_search``, ``Searcher._colour_model``): the
public searches embed a photo on every call, and this embeds each query photo once and searches it
with every setting (``varsitysrch eval`` measures the same way).

    python benchmarks/colour_labels.py --data ../shared/data
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchdata
import dev_domains as dd

DOMAIN = "fashion-dev"
MATCH = 0.15  # _colour.MATCH_COLOUR_WEIGHT, the switch's weight (checked in main)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="colour_labels.py", description=__doc__.split("\n\n")[0])
    benchdata.add_data_argument(p, (DOMAIN,))
    p.add_argument("--work", default=None, help="dev_domains.py's cache (default: its default)")
    p.add_argument("--weights", default="0.05,0.1,0.15,0.2,0.3,0.5", help="learned colour_weight values")
    p.add_argument(
        "--signature-weights",
        default="0.15",
        help="colour_weight values by the signatures (0.15: the switch)",
    )
    p.add_argument(
        "--oracle-weights",
        default="",
        help="colour_weight values of a ceiling: the learned model told each query photo's true colour",
    )
    p.add_argument("--limit", type=int, default=None, help="queries (default: every held-out image)")
    p.add_argument("--out", default=None, help="write the record as JSON here")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    a = parse_args(argv)
    data = benchdata.data_root("colour_labels.py", a.data, (DOMAIN,))
    try:
        return run(a, data)
    except dd.UsageError as exc:
        benchdata.fail("colour_labels.py", str(exc))


def run(a: argparse.Namespace, data: Path) -> int:
    from varsitysrch import Searcher, SearchOptions, train_clusters
    from varsitysrch._colour import MATCH_COLOUR_WEIGHT
    from varsitysrch._pipeline import Query, embed_query, run_search

    assert MATCH == MATCH_COLOUR_WEIGHT, "update MATCH to the library's switch weight"
    weights = [float(w) for w in a.weights.split(",") if w.strip()]
    work = Path(a.work or dd.default_work())

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    dom = dd.load_domain(data, DOMAIN, limit=None, n_queries=dd.N_QUERIES, seed=0)
    with open(dom.root / "manifest.csv", encoding="utf-8", newline="") as f:
        colour_of = {r["path"]: r.get("baseColour", "") for r in csv.DictReader(f)}
    built = dd.build(dom, "heldout", dd.parse_variant("default:"), work, "copy", log)
    cat_rows = dom.catalogue_rows["heldout"]
    type_of = {dom.ids[r]: int(dom.labels[r]) for r in cat_rows}
    in_cat = set(dom.labels[cat_rows].tolist())
    queries = [r for r in dom.held.tolist() if int(dom.labels[r]) in in_cat]
    if a.limit:
        queries = queries[: a.limit]
    half = np.random.default_rng([0, 21]).random(len(queries)) < 0.5  # True: tune
    attrs = built.model.with_name("colour-attributes.csv")
    with open(attrs, "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", "baseColour"])
        for r in cat_rows.tolist():
            w.writerow([dom.ids[r], colour_of[dom.ids[r]]])
    learned = built.model.with_name("colour-learned.vsm")
    t0 = time.perf_counter()
    train_clusters(
        built.store,
        learned,
        learned.with_suffix(".csv"),
        built.k,
        attributes=attrs,
        colour_labels="baseColour",
        show_progress=False,
    )
    train_s = time.perf_counter() - t0
    base = Searcher(built.model, built.csv, features_folder=built.store)
    lrn = Searcher(learned, learned.with_suffix(".csv"), features_folder=built.store)
    cm = lrn._colour_model
    assert cm is not None
    log(
        f"{DOMAIN}: catalogue {len(cat_rows):,}, queries {len(queries):,} (tune {int(half.sum())}); colour "
        f"classifier: {len(cm.names)} names, fitted on {cm.fitted_on:,} in {cm.seconds:.1f}s "
        f"(train_clusters {train_s:.1f}s)"
    )
    sig_weights = [float(w) for w in a.signature_weights.split(",") if w.strip()]
    settings: list[tuple[str, Any, float]] = [("default", base, 0.0)]
    settings += [(f"signature w={w:g}", base, w) for w in sig_weights]
    settings += [(f"learned w={w:g}", lrn, w) for w in weights]
    oracle_weights = [float(w) for w in a.oracle_weights.split(",") if w.strip()]
    told = _Told(cm)
    if oracle_weights:  # a ceiling, not a setting: the query's colour probabilities are its true colour
        orc = Searcher(learned, learned.with_suffix(".csv"), features_folder=built.store)
        orc._colour_model = told
        settings += [(f"oracle w={w:g}", orc, w) for w in oracle_weights]
    st = {name: np.zeros(len(queries)) for name, _, _ in settings}
    sc = {name: np.zeros(len(queries)) for name, _, _ in settings}
    ms = {name: 0.0 for name, _, _ in settings}
    t_embed = 0.0
    for i, r in enumerate(queries):
        path = dom.root / dom.ids[r]
        t = time.perf_counter()
        eq = embed_query(base, path, "auto", colour=True)  # the same photo, decoded once
        t_embed += time.perf_counter() - t
        qt, qc = int(dom.labels[r]), colour_of[dom.ids[r]]
        told.colour = qc
        for name, s, w in settings:
            t = time.perf_counter()
            res = run_search(
                s,
                Query(vector=eq.vectors, discount=eq.discount, colour=eq.colour),
                SearchOptions(top_n=dd.TOP, colour_weight=w),
            )
            ms[name] += time.perf_counter() - t
            same = [type_of[h.image] == qt for h in res.hits]
            st[name][i] = sum(same) / dd.TOP
            sc[name][i] = (
                sum(x and colour_of[h.image] == qc for x, h in zip(same, res.hits, strict=True)) / dd.TOP
            )
        if (i + 1) % 200 == 0:
            log(f"  {i + 1}/{len(queries)}")
    rec: dict[str, Any] = {
        "domain": DOMAIN,
        "catalogue": len(cat_rows),
        "queries": len(queries),
        "tune": int(half.sum()),
        "report": int((~half).sum()),
        "classifier": {
            "names": len(cm.names),
            "fitted_on": cm.fitted_on,
            "fit_s": cm.seconds,
            "train_clusters_s": train_s,
            "bytes": int(cm.coef.nbytes + cm.intercept.nbytes),
        },
        "embed_ms": 1000 * t_embed / len(queries),
        "rows": [],
    }
    b_st, b_sc = st["default"], sc["default"]
    chosen = None
    for name, _, w in settings:
        row = {
            "setting": name,
            "w": w,
            "st_tune": float(st[name][half].mean()),
            "stsc_tune": float(sc[name][half].mean()),
            "st": float(st[name][~half].mean()),
            "stsc": float(sc[name][~half].mean()),
            "d_st": dd.paired_bootstrap(b_st[~half], st[name][~half], dd.RESAMPLES, (21, 1)),
            "d_stsc": dd.paired_bootstrap(b_sc[~half], sc[name][~half], dd.RESAMPLES, (21, 2)),
            "ms_per_query": 1000 * ms[name] / len(queries),
        }
        rec["rows"].append(row)
        ok = row["st_tune"] >= b_st[half].mean() - 0.01
        if name.startswith("learned") and ok and (chosen is None or row["stsc_tune"] > chosen["stsc_tune"]):
            chosen = row
    rec["chosen"] = None if chosen is None else chosen["setting"]
    print("\n".join(table(rec)))
    if a.out:
        Path(a.out).write_text(json.dumps(rec, indent=1))
    return 0


class _Told:
    """The learned colour model, but told the query photo's true colour (``colour``): its colour
    probabilities are that name's one-hot row (a ceiling for any colour predictor with this rule)."""

    def __init__(self, cm: Any) -> None:
        self.names, self.scale, self.dim, self.colour = cm.names, cm.scale, cm.dim, ""

    def proba(self, vectors: np.ndarray, signatures: np.ndarray) -> np.ndarray:
        out = np.zeros((len(np.atleast_2d(vectors)), len(self.names)), np.float32)
        if self.colour in self.names:
            out[:, self.names.index(self.colour)] = 1.0
        return out


def _d(d: Sequence[float]) -> str:
    return f"{d[0]:+.4f} [{d[1]:+.4f}, {d[2]:+.4f}]"


def table(rec: dict[str, Any]) -> list[str]:
    c = rec["classifier"]
    out = [
        f"{rec['domain']}, held-out: catalogue {rec['catalogue']:,} images (75 %), {rec['queries']:,} query "
        f"photos (tune {rec['tune']}, report {rec['report']}); colour classifier: {c['names']} names, fitted "
        f"on {c['fitted_on']:,} labelled images in {c['fit_s']:.1f}s ({c['bytes'] / 1024:.0f} KiB in the "
        f"model); query embedding {rec['embed_ms']:.0f} ms (once per photo)",
        "",
        "| setting | colour_weight | same-type P@10, report (Δ, 95 %) "
        "| same type + colour P@10, report (Δ, 95 %) | tune: same type / + colour | ms/query (search) |",
        "|---|---|---|---|---|---|",
    ]
    for r in rec["rows"]:
        mark = " **(chosen on tune)**" if r["setting"] == rec["chosen"] else ""
        out.append(
            f"| {r['setting']}{mark} | {r['w']:g} | {r['st']:.4f} ({_d(r['d_st'])}) | {r['stsc']:.4f} "
            f"({_d(r['d_stsc'])}) | {r['st_tune']:.4f} / {r['stsc_tune']:.4f} | {r['ms_per_query']:.1f} |"
        )
    return out


if __name__ == "__main__":
    sys.exit(main())
