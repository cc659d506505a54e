"""Confidence separation: in-domain vs out-of-domain queries, both dev domains, held-out splits.

For each domain the store is split (seeded) into a catalogue part (80 %) and held-out
queries (20 %).  Everything is fitted on the catalogue part only, as ``train_clusters``
does: plain cosine (or, with ``--search-pca``, the opt-in search-space PCA of 128 components) and the
:class:`~varsitysrch._confidence.ScoreCalibrator` on the catalogue in that space.  Queries:

* in-domain: the domain's held-out photos;
* out-of-domain: the other domain's held-out photos (grocery photos against the clothing
  catalogue and vice versa).

Each query's best hit (exact search in the search space) gets a confidence; the script prints
the ROC AUC of that confidence (in-domain = positive), and the share of queries whose best hit
is ``close`` at several cut-offs (the default marked).  Since confidence is a monotone map of
the score, the AUC is the AUC of the raw best score too; what calibration adds is a cut-off
that means the same on every catalogue (``cutoff score`` shows how different the raw scores are).

Run::

    nice -n 5 .venv/bin/python benchmarks/bench_confidence.py --data DIR   # or $VARSITYSRCH_DATA

Data: ``clothing-small/`` and ``grocery-train/`` under ``--data`` / ``$VARSITYSRCH_DATA``, extracted
with the default extractor into ``--work`` on the first run (cached); ``--features DIR`` uses
existing stores instead (``DIR/<domain>``, no ``--data`` needed).

**Measures internals, not what users get**: the search-space PCA, exact search and the
calibrator are applied by hand (``varsitysrch._postprocess``, ``_neighbours``, ``_confidence``);
users get ``Hit.confidence`` from ``Searcher``, whose score space issue 20 ("one score") is
changing.  There is no public-pipeline replacement yet.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchdata

PROG = "bench_confidence.py"

CUTOFFS = (0.01, 0.02, 0.05, 0.10, 0.20)
#: search: rank + score in the search-space PCA; raw: plain cosine; hybrid: rank in the search
#: space, confidence from the plain cosine of the hit (the default)
SPACES = ("search", "raw", "hybrid")


def split(n: int, seed: int, held: float = 0.2) -> tuple[Any, Any]:
    import numpy as np

    perm = np.random.default_rng(seed).permutation(n)
    k = round(n * held)
    return np.sort(perm[k:]), np.sort(perm[:k])


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(
        prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    benchdata.add_data_argument(ap, ["clothing-small", "grocery-train"])
    ap.add_argument("--features", type=Path, default=None, help="folder of existing stores, one per domain")
    benchdata.add_work_argument(ap, PROG, "the extracted stores")
    ap.add_argument("--domains", nargs=2, default=["clothing-small", "grocery-train"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--search-pca",
        action="store_true",
        help="rank in the opt-in search-space PCA (128 components) instead of plain cosine (the default)",
    )
    a = ap.parse_args(argv)
    if a.features is not None:
        missing = [d for d in a.domains if not (a.features / d).is_dir()]
        if missing:
            benchdata.fail(PROG, f"--features {str(a.features)!r} has no store {missing[0]}/")
        stores = {d: a.features / d for d in a.domains}
    else:
        root = benchdata.data_root(PROG, a.data, a.domains, manifest=False)
        stores = {d: benchdata.feature_store(root, d, a.work, benchdata.log_stderr) for d in a.domains}

    import numpy as np
    from sklearn.metrics import roc_auc_score

    from varsitysrch import FeatureStore, ScoreCalibrator
    from varsitysrch._neighbours import exact_topk
    from varsitysrch._postprocess import SEARCH_PCA_DIM, fit_search_pca, to_search_space

    data = {d: np.asarray(FeatureStore.open(p).vectors, np.float32) for d, p in stores.items()}
    parts = {d: split(len(X), a.seed) for d, X in data.items()}
    cutoff = ScoreCalibrator().cutoff  # the library's default
    print(f"default cutoff {cutoff}; in-domain = held-out 20 % of the catalogue's own domain")
    header = f"{'catalogue':>15} {'space':>6} {'AUC':>6} {'cutoff score':>12} " + " ".join(
        f"{'in@' + str(c):>8} {'out@' + str(c):>9}" for c in CUTOFFS
    )
    print(header)
    for cat, other in (a.domains, a.domains[::-1]):
        Xc = data[cat][parts[cat][0]]
        Qin, Qout = data[cat][parts[cat][1]], data[other][parts[other][1]]
        n_pca = SEARCH_PCA_DIM if a.search_pca else 0  # the opt-in search space (default: raw cosine)
        if n_pca:
            mean, comps = fit_search_pca(Xc, n_pca, 0)
            Z, Zin, Zout = (to_search_space(M, mean, comps) for M in (Xc, Qin, Qout))
        else:
            Z, Zin, Zout = Xc, Qin, Qout
        for space in SPACES:
            if space == "search":  # rank and score in the search space
                cal = ScoreCalibrator().fit(Z)
                s_in, s_out = exact_topk(Zin, Z, 1)[1][:, 0], exact_topk(Zout, Z, 1)[1][:, 0]
            elif space == "raw":  # rank and score by plain cosine
                cal = ScoreCalibrator().fit(Xc)
                s_in, s_out = exact_topk(Qin, Xc, 1)[1][:, 0], exact_topk(Qout, Xc, 1)[1][:, 0]
            else:  # rank in the search space, score the hit by its plain cosine (what Searcher does)
                cal = ScoreCalibrator().fit(Xc, ranking=Z)
                r_in, r_out = exact_topk(Zin, Z, 1)[0][:, 0], exact_topk(Zout, Z, 1)[0][:, 0]
                s_in = np.einsum("ij,ij->i", Qin, Xc[r_in])
                s_out = np.einsum("ij,ij->i", Qout, Xc[r_out])
            c_in, c_out = cal.confidence(s_in), cal.confidence(s_out)
            y = np.r_[np.ones(len(c_in)), np.zeros(len(c_out))]
            auc = roc_auc_score(y, np.r_[s_in, s_out])
            cells = " ".join(f"{(c_in >= c).mean():>8.3f} {(c_out >= c).mean():>9.3f}" for c in CUTOFFS)
            print(f"{cat:>15} {space:>6} {auc:>6.3f} {cal.cutoff_score_:>12.3f} {cells}")
        print(f"{'':>15} queries: {len(Qin)} in-domain, {len(Qout)} out-of-domain ({other})")


if __name__ == "__main__":
    main()
