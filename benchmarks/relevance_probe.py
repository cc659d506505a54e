"""Relevance probe (issue 21, phase A): re-ranking over the catalogue's neighbour graph, DBA,
colour from real labels, shelf photo -> studio catalogue -- measured on the dev domains' stores.

    python benchmarks/relevance_probe.py --data ../shared/data                 # everything
    python benchmarks/relevance_probe.py --data ../shared/data --parts graph   # (a)-(c) only
    python benchmarks/relevance_probe.py --data ../shared/data --parts colour,shelf

**A probe, not the pipeline.**  It reads the feature stores that ``benchmarks/dev_domains.py``
cached in ``--work`` (the same default folder; run that script first: it extracts them) with the
public :class:`varsitysrch.FeatureStore`, and re-implements search in plain numpy (exact scan)
so that variants can be tried without touching the library: ``plain`` (raw cosine), ``default``
(the library's ranking: catalogue-centred PCA-128 space, alpha-QE with 2 neighbours, alpha 3,
copies at cosine >= 0.99 kept in front and not used to expand) and the candidates below.  What
it shows worth it is then built into the pipeline and measured again through the public API
with ``dev_domains.py`` (the figures that decide).  Queries, relevance, AP@10 / R@1 and the
paired bootstrap are the harness's own (imported from ``dev_domains.py``): the same seeded 600
queries per domain and protocol.  The held-out protocol uses the query image's stored vector
(the same file, embedded the same way; ``views`` is not simulated there).

Variants (``--parts graph``):

* ``kr``   -- k-reciprocal re-ranking (Zhong et al., CVPR 2017), in its offline/online split: the
  catalogue's k1-NN lists, k-reciprocal sets (with the k1/2 expansion) and their exp(-d)
  weight vectors V (with the k2 local query expansion) are built once (O(N k1) memory); a query
  computes its own V from its top-k1 catalogue neighbours and each neighbour's k1-th distance,
  and the top ``--pool`` candidates are re-ordered by ``(1 - lambda) Jaccard + lambda d``.
* ``diff`` -- diffusion on the catalogue's mutual k-NN graph (Iscen et al., CVPR 2017): the
  query's affinities to its kq nearest catalogue images are diffused by conjugate gradient on
  ``(I - alpha S) f = y``; the top ``--pool`` candidates are re-ordered by ``f``.  The offline
  variant (Yang et al., AAAI 2019) precomputes the truncated rows of ``(I - alpha S)^-1``: same
  ranking, query cost kq x L.
* ``dba``  -- alpha-DBA of the catalogue (each image replaced by the alpha-weighted mean of itself
  and its n-1 nearest catalogue images), then the default alpha-QE.

``--parts cost`` (generated data, ``--sizes``, ``--ivf-sizes``): the library's own stage
(``varsitysrch._rerank``): graph build time, exact and through an IVF, the stage's ms/query and
bytes per image, extrapolated to 200k and 1M images (see :func:`cost_part`).

``--parts colour`` (fashion-dev, ``baseColour``): same-type precision@10 and same-type-and-same-
colour precision@10 of colour re-ranking rules over the default's top 50; tuned on half of the
queries (seeded split), reported on the other half; the other two domains' mAP@10 cost of the
chosen rule.  ``--parts colour-labels`` (fashion-dev): the same with the shop's own colour names
(:func:`colour_labels_part`: the library's learned colour, richer colour descriptors, and the
query's true colour as an oracle).  ``--parts shelf``: shelf photo -> studio catalogue (see
:func:`shelf_protocol`).

Costs are measured in the same run: ms/query of each ranking (numpy, one process, the exact scan
included), the extra work of the re-ranking stage alone, offline build seconds, bytes per image.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import dev_domains as dd

TOP = dd.TOP
QE_N, QE_ALPHA, QE_SELF = 2, 3.0, 0.99
PCA_DIM = 128
POOL = 100


class UsageError(Exception):
    pass


# ====================================================================== data
@dataclass
class Setup:
    """One (domain, protocol): catalogue vectors, queries, relevance."""

    name: str
    protocol: str
    C: np.ndarray  # raw catalogue [n, d]
    y: np.ndarray  # catalogue labels
    Q: np.ndarray  # raw queries [m, d]
    qy: np.ndarray
    self_row: np.ndarray  # catalogue row of the query (LOO) or -1
    n_rel: np.ndarray
    cat_rows: np.ndarray  # rows of the domain's manifest
    q_rows: np.ndarray
    space: tuple[np.ndarray, np.ndarray] | None = None

    def to_space(self, X: np.ndarray) -> np.ndarray:
        if self.space is None:
            return norm(X)
        mean, comp = self.space
        return norm((X - mean) @ comp.T)


def norm(X: np.ndarray) -> np.ndarray:
    X = np.asarray(X, np.float32)
    return X / np.maximum(np.linalg.norm(X, axis=-1, keepdims=True), 1e-12)


def store_folder(work: Path, dom: dd.Domain) -> Path:
    return work / "stores" / f"{dom.tag}-copy" / "default" / "full-features"


def load_vectors(work: Path, dom: dd.Domain) -> np.ndarray:
    """The domain's full store (cached by dev_domains.py), rows in manifest order."""
    from varsitysrch import FeatureStore

    folder = store_folder(work, dom)
    if not (folder / "store.json").is_file():
        raise UsageError(
            f"no feature store for {dom.name!r} at {folder}: run benchmarks/dev_domains.py with the same "
            "--data and --work first (it extracts and caches the stores)"
        )
    st = FeatureStore.open(folder)
    pos = {i: r for r, i in enumerate(st.ids)}
    missing = [i for i in dom.ids if i not in pos]
    if missing:
        raise UsageError(
            f"{folder}: {len(missing)} manifest images missing from the store (e.g. {missing[0]})"
        )
    return norm(np.asarray(st.vectors, np.float32)[[pos[i] for i in dom.ids]])


def load_colour(work: Path, dom: dd.Domain) -> np.ndarray | None:
    """The store's colour signatures (the library's descriptor), rows in manifest order."""
    from varsitysrch import FeatureStore

    folder = store_folder(work, dom)
    st = FeatureStore.open(folder)
    sig, ids = getattr(st, "colour", None), st.ids
    if sig is None and (folder / "colour" / "store.json").is_file():
        side = FeatureStore.open(folder / "colour")
        sig, ids = side.vectors, side.ids
    if sig is None:
        return None
    pos = {i: r for r, i in enumerate(ids)}
    return np.asarray(sig, np.float32)[[pos[i] for i in dom.ids]]


def fit_space(C: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """The library's ranking space: catalogue-centred PCA-128 from 1,000 images up."""
    if len(C) < 1000:
        return None
    from sklearn.decomposition import PCA

    p = PCA(n_components=PCA_DIM, whiten=False, svd_solver="auto", random_state=0).fit(C)
    return p.mean_.astype(np.float32), p.components_.astype(np.float32)


def setups(dom: dd.Domain, X: np.ndarray, protocols: Sequence[str]) -> list[Setup]:
    out = []
    counts_all = np.bincount(dom.labels, minlength=int(dom.labels.max()) + 1)
    for proto in protocols:
        if proto == "loo":
            cat = np.arange(len(dom.ids))
            q = dom.q_loo
            self_row = q.copy()
            n_rel = counts_all[dom.labels[q]] - 1
        else:
            cat = dom.catalogue_rows["heldout"]
            q = dom.q_heldout
            self_row = np.full(len(q), -1)
            cc = np.bincount(dom.labels[cat], minlength=len(counts_all))
            n_rel = cc[dom.labels[q]]
        C = X[cat]
        s = Setup(dom.name, proto, C, dom.labels[cat], X[q], dom.labels[q], self_row, n_rel, cat, q)
        s.space = fit_space(C)
        out.append(s)
    return out


# ====================================================================== metrics
def ap_r1(ranked: np.ndarray, s: Setup) -> tuple[np.ndarray, np.ndarray]:
    """AP@10 and R@1 per query (the harness's formula, vectorised; checked against dd.score)."""
    rel = (s.y[ranked[:, :TOP]] == s.qy[:, None]).astype(np.float64)
    prec = np.cumsum(rel, 1) / np.arange(1, TOP + 1)
    ap = (prec * rel).sum(1) / np.minimum(TOP, np.maximum(s.n_rel, 1))
    ap[s.n_rel == 0] = 0
    return ap, rel[:, 0]


# ====================================================================== search (numpy, exact)
def topk(Qs: np.ndarray, Cs: np.ndarray, k: int, self_row: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    S = Qs @ Cs.T
    has = self_row >= 0
    S[np.flatnonzero(has), self_row[has]] = -np.inf
    k = min(k, Cs.shape[0] - 1)
    part = np.argpartition(-S, k, axis=1)[:, :k]
    ps = np.take_along_axis(S, part, 1)
    o = np.argsort(-ps, 1, kind="stable")
    return np.take_along_axis(part, o, 1), np.take_along_axis(ps, o, 1)


def expand(Qs: np.ndarray, Cs: np.ndarray, idx: np.ndarray, sims: np.ndarray, n: int = QE_N) -> np.ndarray:
    """alpha-QE as the library does it: first-pass results at cosine >= 0.99 are copies (skipped)."""
    out = np.empty_like(Qs)
    for i in range(len(Qs)):
        ok = sims[i] < QE_SELF
        r, w = idx[i][ok][:n], np.clip(sims[i][ok][:n], 0, None) ** QE_ALPHA
        out[i] = Qs[i] + (w[:, None] * Cs[r]).sum(0)
    return norm(out)


def rank_default(
    Qs: np.ndarray, Cs: np.ndarray, self_row: np.ndarray, k: int = POOL, qe: int = QE_N
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(rows, sims, expanded query)``: the default ranking (copies kept in front)."""
    if not qe:
        r, sc = topk(Qs, Cs, k, self_row)
        return r, sc, Qs
    r1, s1 = topk(Qs, Cs, qe + 3, self_row)
    Q2 = expand(Qs, Cs, r1, s1, qe)
    r2, s2 = topk(Q2, Cs, k, self_row)
    copy = s1 >= QE_SELF
    if copy.any():
        for i in np.flatnonzero(copy.any(1)):
            front = r1[i][copy[i]]
            rest = r2[i][~np.isin(r2[i], front)]
            rs = s2[i][~np.isin(r2[i], front)]
            r2[i] = np.concatenate([front, rest])[:k]
            s2[i] = np.concatenate([s1[i][copy[i]], rs])[:k]
    return r2, s2, Q2


# ====================================================================== (a) k-reciprocal
@dataclass
class KRGraph:
    """The catalogue's offline k-reciprocal state (Zhong et al. 2017)."""

    nn: np.ndarray  # [n, k1] nearest catalogue rows (self excluded)
    kth: np.ndarray  # [n] distance to the k1-th neighbour
    half: list[np.ndarray]  # R(i, k1/2) per row (self included)
    V: list[tuple[np.ndarray, np.ndarray]]  # sparse (cols, weights) per row, after local QE
    k1: int
    k2: int
    seconds: float

    def nbytes(self) -> int:
        nnz = sum(len(c) for c, _ in self.V)
        return self.nn.nbytes + self.kth.nbytes + nnz * 8 + sum(h.nbytes for h in self.half)


def _dist(sims: np.ndarray) -> np.ndarray:
    return np.maximum(0.0, 2.0 - 2.0 * sims)


def _recip(i: int, lst: np.ndarray, nn: np.ndarray, k: int) -> np.ndarray:
    """R(i, k): i's k-NN (self included) that have i in their k-NN."""
    cand = lst[:k]
    ok = [j for j in cand.tolist() if i in nn[j, :k]]
    return np.array([i, *ok], np.int64)


def build_kr(Cs: np.ndarray, k1: int = 20, k2: int = 6) -> KRGraph:
    t0 = time.perf_counter()
    n = len(Cs)
    nn, ns = topk(Cs, Cs, k1, np.arange(n))
    kth = _dist(ns[:, -1])
    kh = max(1, round(k1 / 2))
    # membership tests via sets (probe: clarity over speed)
    sets_k1 = [set(nn[j].tolist()) for j in range(n)]
    sets_kh = [set(nn[j, :kh].tolist()) for j in range(n)]
    R1 = [np.array([i, *[j for j in nn[i].tolist() if i in sets_k1[j]]], np.int64) for i in range(n)]
    half = [np.array([i, *[j for j in nn[i, :kh].tolist() if i in sets_kh[j]]], np.int64) for i in range(n)]
    Vraw: list[dict[int, float]] = []
    for i in range(n):
        Vraw.append(_weights(i, Cs[i], R1[i], half, Cs))
    V = []
    for i in range(n):  # local query expansion over i's k2 nearest (self included)
        acc: dict[int, float] = {}
        group = [i, *nn[i, : k2 - 1].tolist()]
        for j in group:
            for c, w in Vraw[j].items():
                acc[c] = acc.get(c, 0.0) + w / len(group)
        cols = np.fromiter(acc.keys(), np.int64, len(acc))
        V.append((cols, np.fromiter(acc.values(), np.float64, len(acc))))
    return KRGraph(nn, kth, half, V, k1, k2, time.perf_counter() - t0)


def _weights(
    q: int | None, qv: np.ndarray, R: np.ndarray, half: list[np.ndarray], Cs: np.ndarray
) -> dict[int, float]:
    """exp(-d) weights over R expanded by the neighbours' k1/2 reciprocal sets (Zhong, eq. 7-10)."""
    rset = set(R.tolist())
    exp = set(rset)
    for j in R.tolist():
        if q is not None and j == q:
            continue
        hj = half[j]
        if len(set(hj.tolist()) & rset) > 2 / 3 * len(hj):
            exp |= set(hj.tolist())
    cols = np.array(sorted(exp), np.int64)
    w = np.exp(-_dist(Cs[cols] @ qv))
    w = w / w.sum()
    return dict(zip(cols.tolist(), w.tolist(), strict=True))


def kr_rerank(
    g: KRGraph,
    Cs: np.ndarray,
    Qs: np.ndarray,
    rows: np.ndarray,
    sims: np.ndarray,
    self_row: np.ndarray,
    lam: float = 0.3,
    keep_first: bool = False,
) -> np.ndarray:
    """Re-order each query's candidate rows by the k-reciprocal distance (``keep_first``: the
    first-pass best hit stays first, only the rest is re-ordered)."""
    out = rows.copy()
    k1, k2 = g.k1, g.k2
    for i in range(len(Qs)):
        if self_row[i] >= 0:  # a catalogue image: its offline V
            cols, w = g.V[self_row[i]]
            vq = dict(zip(cols.tolist(), w.tolist(), strict=True))
        else:
            nbr, nd = rows[i, :k1], _dist(sims[i, :k1])
            R = np.array(
                [j for j, d in zip(nbr.tolist(), nd.tolist(), strict=True) if d <= g.kth[j]], np.int64
            )
            if len(R) == 0:
                continue
            Vq = _weights(None, Qs[i], R, g.half, Cs)
            group = [Vq] + [dict(zip(*map(np.ndarray.tolist, g.V[j]), strict=True)) for j in nbr[: k2 - 1]]
            vq = {}
            for d_ in group:
                for c, wv in d_.items():
                    vq[c] = vq.get(c, 0.0) + wv / len(group)
        qsum = sum(vq.values())
        jd = np.empty(rows.shape[1])
        for t, c in enumerate(rows[i].tolist()):
            cols, w = g.V[c]
            mn = sum(min(wv, vq.get(cc, 0.0)) for cc, wv in zip(cols.tolist(), w.tolist(), strict=True))
            jd[t] = 1.0 - mn / (qsum + w.sum() - mn)
        final = (1 - lam) * jd + lam * _dist(sims[i]) / 2
        if keep_first:
            final[0] = -np.inf
        out[i] = rows[i][np.argsort(final, kind="stable")]
    return out


# ====================================================================== (b) diffusion
@dataclass
class Diffusion:
    A: Any  # scipy sparse (I - alpha S)
    k: int
    kq: int
    seconds: float
    nnz: int


def build_diffusion(Cs: np.ndarray, k: int = 30, gamma: float = 3.0, alpha: float = 0.99) -> Diffusion:
    import scipy.sparse as sp

    t0 = time.perf_counter()
    n = len(Cs)
    nn, ns = topk(Cs, Cs, k, np.arange(n))
    rows = np.repeat(np.arange(n), k)
    W = sp.csr_matrix((np.clip(ns.ravel(), 0, None) ** gamma, (rows, nn.ravel())), shape=(n, n))
    W = W.minimum(W.T)  # mutual neighbours
    d = np.asarray(W.sum(1)).ravel()
    dinv = 1.0 / np.sqrt(np.maximum(d, 1e-12))
    S = sp.diags(dinv) @ W @ sp.diags(dinv)
    A = (sp.identity(n) - alpha * S).tocsr()
    return Diffusion(A, k, 10, time.perf_counter() - t0, int(W.nnz))


def diff_rerank(D: Diffusion, rows: np.ndarray, sims: np.ndarray, gamma: float = 3.0) -> np.ndarray:
    from scipy.sparse.linalg import cg

    n = D.A.shape[0]
    out = rows.copy()
    for i in range(len(rows)):
        y = np.zeros(n)
        y[rows[i, : D.kq]] = np.clip(sims[i, : D.kq], 0, None) ** gamma
        f, _ = cg(D.A, y, maxiter=20, rtol=1e-6)
        sc = f[rows[i]] + 1e-9 * sims[i]  # ties (unreached rows): cosine order
        out[i] = rows[i][np.argsort(-sc, kind="stable")]
    return out


# ====================================================================== (c) DBA
def dba(Cs: np.ndarray, n: int) -> tuple[np.ndarray, float]:
    t0 = time.perf_counter()
    m = len(Cs)
    nn, ns = topk(Cs, Cs, n - 1, np.arange(m))
    w = np.clip(ns, 0, None) ** QE_ALPHA
    out = Cs + np.einsum("mn,mnd->md", w, Cs[nn])
    return norm(out), time.perf_counter() - t0


# ====================================================================== running the graph part
def compare(base: np.ndarray, other: np.ndarray, seed: Sequence[int]) -> tuple[float, float, float]:
    return dd.paired_bootstrap(base, other, dd.RESAMPLES, seed)


def graph_part(
    doms: list[dd.Domain],
    work: Path,
    protocols: Sequence[str],
    log: Callable[[str], None],
    only: frozenset[str] = frozenset(),
) -> dict[str, Any]:
    rec: dict[str, Any] = {"rows": [], "costs": []}
    for i, dom in enumerate(doms):
        # bootstrap seeds by the domain's place among the dev domains: a run on fewer domains
        # draws the same resamples as the full run
        d_i = dd.DEV_DOMAINS.index(dom.name) if dom.name in dd.DEV_DOMAINS else len(dd.DEV_DOMAINS) + i
        X = load_vectors(work, dom)
        for p_i, s in enumerate(setups(dom, X, protocols)):
            graph_setup(s, (d_i, p_i), rec, log, only)
    return rec


def graph_setup(
    s: Setup,
    seed: tuple[int, int],
    rec: dict[str, Any],
    log: Callable[[str], None],
    only: frozenset[str] = frozenset(),
) -> None:
    """Every graph variant (``only``: those named, plus plain and default) on one (domain,
    protocol), compared with the default."""

    def family(prefix: str) -> bool:
        return not only or any(n.startswith(prefix) for n in only)

    Cs, Qs = s.to_space(s.C), s.to_space(s.Q)
    Qs_for = lambda Cx: Cx[s.self_row] if s.protocol == "loo" else Qs  # noqa: E731
    res: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    cost: dict[str, dict[str, float]] = {}

    def timed(name: str, fn: Callable[[], np.ndarray], extra: dict[str, float] | None = None) -> None:
        if only and name not in only and name not in ("plain", "default"):
            return
        t0 = time.perf_counter()
        ranked = fn()
        ms = 1000 * (time.perf_counter() - t0) / len(Qs)
        res[name] = ap_r1(ranked, s)
        cost[name] = {"ms_per_query": ms, **(extra or {})}
        log(
            f"  {s.name} {s.protocol} {name}: mAP@10 {res[name][0].mean():.4f} "
            f"R@1 {res[name][1].mean():.4f} ({ms:.2f} ms/q)"
        )

    Cr = norm(s.C)
    timed("plain", lambda: topk(norm(s.Q), Cr, TOP, s.self_row)[0])
    base = rank_default(Qs, Cs, s.self_row)
    timed("default", lambda: rank_default(Qs, Cs, s.self_row)[0])
    # the harness's scorer on a few queries (same AP@10 / R@1 formula)
    lab = {str(j): int(s.y[j]) for j in range(len(s.y))}
    for i in range(3):
        ref = dd.score([str(r) for r in base[0][i]], int(s.qy[i]), lab, int(s.n_rel[i]))
        got = ap_r1(
            base[0][i : i + 1],
            Setup(**{**s.__dict__, "qy": s.qy[i : i + 1], "n_rel": s.n_rel[i : i + 1]}),
        )
        assert abs(ref[0] - got[0][0]) < 1e-9 and ref[1] == got[1][0], (ref, got)
    # (a) k-reciprocal (k1, k2, lambda) on the default's candidates: plain query and expanded query
    for k1, k2 in ((20, 6), (10, 3)):
        if not family(f"kr{k1}"):
            continue
        g = build_kr(Cs, k1, k2)
        extra = {"build_s": g.seconds, "bytes_per_image": g.nbytes() / len(Cs)}
        r0, s0 = topk(Qs, Cs, POOL, s.self_row)
        t0 = time.perf_counter()
        kr_rerank(g, Cs, Qs, r0, s0, s.self_row)
        extra["rerank_ms"] = 1000 * (time.perf_counter() - t0) / len(Qs)
        timed(
            f"kr{k1}",
            lambda g=g: kr_rerank(g, Cs, Qs, *topk(Qs, Cs, POOL, s.self_row), s.self_row),
            extra,
        )
        if k1 == 20:
            timed(
                "kr20+qe keep1",
                lambda g=g: kr_rerank(
                    g, Cs, base[2], *rank_default(Qs, Cs, s.self_row)[:2], s.self_row, keep_first=True
                ),
                extra,
            )
        for lam in (0.3, 0.6) if k1 == 10 else (0.3,):
            timed(
                f"kr{k1}+qe" + ("" if lam == 0.3 else f" l={lam}"),
                lambda g=g, lam=lam: kr_rerank(
                    g, Cs, base[2], *rank_default(Qs, Cs, s.self_row)[:2], s.self_row, lam
                ),
                extra,
            )
    # (b) diffusion
    if family("diff"):
        diffusion_variants(s, Cs, Qs, timed)
    # (c) DBA + alpha-QE
    if family("dba"):
        dba_variants(s, Cs, Qs_for, timed)
    compare_all(s, seed, res, cost, len(Cs), rec)


def diffusion_variants(s: Setup, Cs: np.ndarray, Qs: np.ndarray, timed: Callable[..., None]) -> None:
    Dg = build_diffusion(Cs)
    t0 = time.perf_counter()
    diff_rerank(Dg, *topk(Qs, Cs, POOL, s.self_row))
    stage = 1000 * (time.perf_counter() - t0) / len(Qs)
    dx = {"build_s": Dg.seconds, "bytes_per_image": Dg.nnz * 12 / len(Cs), "rerank_ms": stage}
    timed("diff", lambda: diff_rerank(Dg, *topk(Qs, Cs, POOL, s.self_row)), dx)
    timed("diff+qe", lambda: diff_rerank(Dg, *rank_default(Qs, Cs, s.self_row)[:2]), dx)


def dba_variants(
    s: Setup, Cs: np.ndarray, Qs_for: Callable[[np.ndarray], np.ndarray], timed: Callable[..., None]
) -> None:
    for n_ in (2, 3):
        Cd, secs = dba(Cs, n_)
        timed(
            f"dba{n_}+qe",
            lambda Cd=Cd: rank_default(Qs_for(Cd), Cd, s.self_row)[0],
            {"build_s": secs, "bytes_per_image": 0.0},
        )
    timed(
        "dba3",
        lambda Cd=Cd: rank_default(Qs_for(Cd), Cd, s.self_row, qe=0)[0],
        {"build_s": secs, "bytes_per_image": 0.0},
    )
    g = build_kr(Cd, 10, 3)
    Qd = Qs_for(Cd)
    timed(
        "dba3+qe+kr10",
        lambda: kr_rerank(
            g,
            Cd,
            rank_default(Qd, Cd, s.self_row)[2],
            *rank_default(Qd, Cd, s.self_row)[:2],
            s.self_row,
        ),
        {"build_s": secs + g.seconds, "bytes_per_image": g.nbytes() / len(Cs)},
    )


def compare_all(
    s: Setup,
    seed: tuple[int, int],
    res: dict[str, tuple[np.ndarray, np.ndarray]],
    cost: dict[str, dict[str, float]],
    n_catalogue: int,
    rec: dict[str, Any],
) -> None:
    """Each variant against the default (paired bootstrap), and the costs, into ``rec``."""
    d_i, p_i = seed
    for name in res:
        if name == "default":
            continue
        for k_i, (metric, arr_b, arr_v) in enumerate(
            (("mAP@10", res["default"][0], res[name][0]), ("R@1", res["default"][1], res[name][1]))
        ):
            diff, lo, hi = compare(arr_b, arr_v, (0, d_i, p_i, k_i))
            rec["rows"].append(
                {
                    "domain": s.name,
                    "protocol": s.protocol,
                    "variant": name,
                    "metric": metric,
                    "default": float(arr_b.mean()),
                    "value": float(arr_v.mean()),
                    "diff": diff,
                    "lo": lo,
                    "hi": hi,
                }
            )
    for name, c in cost.items():
        rec["costs"].append(
            {"domain": s.name, "protocol": s.protocol, "variant": name, "catalogue": n_catalogue, **c}
        )


def graph_table(rec: dict[str, Any]) -> list[str]:
    out = [
        "| variant | domain | protocol | metric | default | variant | Δ | 95 % interval | reading |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rec["rows"]:
        out.append(
            f"| {r['variant']} | {r['domain']} | {r['protocol']} | {r['metric']} | {r['default']:.4f} | "
            f"{r['value']:.4f} | {r['diff']:+.4f} | [{r['lo']:+.4f}, {r['hi']:+.4f}] "
            f"| {dd.reading(r['lo'], r['hi'])} |"
        )
    out += [
        "",
        "| variant | domain | protocol | catalogue | ms/query (all) | re-rank stage ms | build s "
        "| extra bytes/image |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for c in rec["costs"]:
        out.append(
            f"| {c['variant']} | {c['domain']} | {c['protocol']} | {c['catalogue']:,} "
            f"| {c['ms_per_query']:.2f} | "
            f"{c.get('rerank_ms', 0):.2f} | {c.get('build_s', 0):.2f} | {c.get('bytes_per_image', 0):.0f} |"
        )
    return out


# ====================================================================== (d) colour from real labels
COLOUR_POOL_N = 50  # the library re-scores COLOUR_POOL (5) x top_n (10) = 50 candidates
SIDE = 64
SHELF_SCALE = 0.8  # the pasted product's long side, as a share of the shelf photo's short side
CROP, DISCOUNT = 0.7, 0.07  # the library's crop fraction and views="auto" crop discount
#: 12 colour names: black, white, grey, red, orange, yellow, green, blue, dark blue, purple, pink, brown
NAMES = (
    "black",
    "white",
    "grey",
    "red",
    "orange",
    "yellow",
    "green",
    "blue",
    "dark blue",
    "purple",
    "pink",
    "brown",
)


def decode_small(dom: dd.Domain, probe_work: Path, log: Callable[[str], None]) -> np.ndarray:
    """Every image of the domain at 64 px, letterboxed on its border colour (cached)."""
    from PIL import Image

    path = probe_work / f"{dom.tag}-{SIDE}px.npy"
    if path.is_file():
        return np.load(path)
    t0 = time.perf_counter()
    out = np.zeros((len(dom.ids), SIDE, SIDE, 3), np.uint8)
    for i, rel in enumerate(dom.ids):
        with Image.open(dom.root / rel) as im:
            im.draft("RGB", (SIDE, SIDE))
            im = im.convert("RGB")
            w, h = im.size
            f = SIDE / max(w, h)
            im = im.resize((max(1, round(w * f)), max(1, round(h * f))), Image.BILINEAR)
        a = np.asarray(im)
        bg = np.median(np.concatenate([a[0], a[-1], a[:, 0], a[:, -1]]), 0).astype(np.uint8)
        out[i] = bg
        y0, x0 = (SIDE - a.shape[0]) // 2, (SIDE - a.shape[1]) // 2
        out[i, y0 : y0 + a.shape[0], x0 : x0 + a.shape[1]] = a
    probe_work.mkdir(parents=True, exist_ok=True)
    np.save(path, out)
    log(f"  decoded {dom.name} at {SIDE} px: {time.perf_counter() - t0:.1f} s")
    return out


def name_histograms(imgs: np.ndarray) -> np.ndarray:
    """Colour-name histogram (:data:`NAMES`) of each image's foreground (pixels away from the
    border colour), skin-coloured pixels left out, centre-weighted; rows sum to 1."""
    from PIL import Image

    n = len(imgs)
    a = imgs.reshape(n, -1, 3).astype(np.int16)
    border = np.concatenate([imgs[:, 0], imgs[:, -1], imgs[:, :, 0], imgs[:, :, -1]], 1).astype(np.int16)
    fg = np.abs(a - np.median(border, 1)[:, None]).max(2) > 40
    frac = fg.mean(1)
    fg[(frac < 0.05) | (frac > 0.95)] = True
    hsv = np.asarray(Image.fromarray(imgs.reshape(-1, SIDE, 3)).convert("HSV")).reshape(n, -1, 3)
    H, S, V = hsv[..., 0] / 256 * 360, hsv[..., 1] / 255, hsv[..., 2] / 255
    R, G, B = a[..., 0], a[..., 1], a[..., 2]
    skin = (
        (R > 95) & (G > 40) & (B > 20) & (R > G) & (R > B) & (R - G > 15) & (H < 50) & (S > 0.15) & (S < 0.6)
    )
    black = V < 0.22
    achro = (S < 0.18) | black
    white = achro & ~black & (V > 0.8)
    grey = achro & ~black & ~white
    red, orange = (H >= 345) | (H < 12), (H >= 12) & (H < 40)
    yellow, green = (H >= 40) & (H < 70), (H >= 70) & (H < 165)
    blue, purple, pink = (H >= 165) & (H < 255), (H >= 255) & (H < 290), (H >= 290) & (H < 345)
    brown = (orange | red | yellow) & (V < 0.6) & ~achro
    c = ~achro
    names = np.stack(
        [
            black,
            white,
            grey,
            red & c & ~brown,
            orange & c & ~brown,
            yellow & c & ~brown,
            green & c,
            blue & c & (V >= 0.45),
            blue & c & (V < 0.45),
            purple & c,
            pink & c,
            brown,
        ],
        -1,
    )
    yy, xx = np.mgrid[:SIDE, :SIDE]
    centre = np.exp(-(((yy - 31.5) / 24) ** 2 + ((xx - 31.5) / 24) ** 2) / 2).ravel()
    w = (fg & ~skin) * centre
    h = np.einsum("np,npc->nc", w, names.astype(np.float32))
    return (h / np.maximum(h.sum(1, keepdims=True), 1e-9)).astype(np.float32)


def _p10(rows: np.ndarray, ty: np.ndarray, cy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    top = rows[:, :TOP]
    st = ty[top] == ty[:, None]
    return st.mean(1), (st & (cy[top] == cy[:, None])).mean(1)


def fashion_colours(
    doms: list[dd.Domain], work: Path, part: str
) -> tuple[dd.Domain, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """fashion-dev (refused in words without it): ``(domain, colour names, each image's colour
    code, its vectors, its colour signatures)``, rows in manifest order."""
    import csv

    by = {d.name: d for d in doms}
    if "fashion-dev" not in by:
        raise UsageError(f"--parts {part} needs the fashion-dev domain (its baseColour labels)")
    dom = by["fashion-dev"]
    with open(dom.root / "manifest.csv", encoding="utf-8", newline="") as f:
        colour_of = {r["path"]: r.get("baseColour", "") for r in csv.DictReader(f)}
    names, cy = np.unique([colour_of[i] for i in dom.ids], return_inverse=True)
    lib = load_colour(work, dom)
    if lib is None:
        raise UsageError(f"the {dom.name} store has no colour signatures")
    return dom, names, cy, load_vectors(work, dom), lib


def colour_part(
    doms: list[dd.Domain], work: Path, probe_work: Path, log: Callable[[str], None]
) -> dict[str, Any]:
    dom, _, cy, X, lib = fashion_colours(doms, work, "colour")
    ty = dom.labels
    space = fit_space(X)
    assert space is not None
    Cs = norm((X - space[0]) @ space[1].T)
    n = len(X)
    rows, sims, _ = rank_default(Cs, Cs, np.arange(n), k=COLOUR_POOL_N)  # every image as an LOO query
    t0 = time.perf_counter()
    names = name_histograms(decode_small(dom, probe_work, log))
    names_ms = 1000 * (time.perf_counter() - t0) / n
    half = np.random.default_rng([0, 7]).permutation(n) < n // 2  # tune (True) / report (False)
    sim_lib = np.einsum("qkd,qd->qk", lib[rows], lib)
    sq = np.sqrt(names)
    sim_names = np.einsum("qkd,qd->qk", sq[rows], sq)
    rank = np.arange(COLOUR_POOL_N)[None]

    def order(score: np.ndarray) -> np.ndarray:
        return np.take_along_axis(rows, np.argsort(-score, 1, kind="stable"), 1)

    fams: dict[str, Callable[[float, int], np.ndarray]] = {
        "library signature, (1-w) cos + w colour": lambda w, m: (1 - w) * sims + w * sim_lib,
        "colour names, (1-w) cos + w colour": lambda w, m: (1 - w) * sims + w * sim_names,
        "both (mean), (1-w) cos + w colour": lambda w, m: (1 - w) * sims + w * (sim_lib + sim_names) / 2,
        "library signature, top-M only": lambda w, m: np.where(
            rank < m, (1 - w) * sims + w * sim_lib, sims - 9
        ),
        "colour names, top-M only": lambda w, m: np.where(rank < m, (1 - w) * sims + w * sim_names, sims - 9),
    }
    grid = [(w, COLOUR_POOL_N) for w in (0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5)]
    grid_m = [(w, m) for m in (12, 15, 20, 30) for w in (0.2, 0.4, 0.6, 1.0)]
    st0, sc0 = _p10(rows, ty, cy)
    perfect = np.minimum((ty[rows] == ty[:, None]) & (cy[rows] == cy[:, None]), 1).sum(1).clip(0, TOP) / TOP
    rec: dict[str, Any] = {
        "queries_tune": int(half.sum()),
        "queries_report": int((~half).sum()),
        "default": {
            "st_tune": float(st0[half].mean()),
            "stsc_tune": float(sc0[half].mean()),
            "st_report": float(st0[~half].mean()),
            "stsc_report": float(sc0[~half].mean()),
            "perfect_report": float(perfect[~half].mean()),
        },
        "rules": [],
        "names_ms_per_image": names_ms,
    }
    for fam, fn in fams.items():
        best = None
        for w, m in grid_m if "top-M" in fam else grid:
            st, sc = _p10(order(fn(w, m)), ty, cy)
            ok = st[half].mean() >= st0[half].mean() - 0.01
            if ok and (best is None or sc[half].mean() > best[2]):
                best = (w, m, float(sc[half].mean()))
            rec["rules"].append(
                {
                    "family": fam,
                    "w": w,
                    "M": m,
                    "st_tune": float(st[half].mean()),
                    "stsc_tune": float(sc[half].mean()),
                    "st_report": float(st[~half].mean()),
                    "stsc_report": float(sc[~half].mean()),
                    "chosen": False,
                }
            )
        if best is None:
            continue
        w, m, _ = best
        st, sc = _p10(order(fn(w, m)), ty, cy)
        d_st = dd.paired_bootstrap(st0[~half], st[~half], dd.RESAMPLES, (0, 1))
        d_sc = dd.paired_bootstrap(sc0[~half], sc[~half], dd.RESAMPLES, (0, 2))
        for r in rec["rules"]:
            if r["family"] == fam and r["w"] == w and r["M"] == m:
                r.update(chosen=True, d_st=d_st, d_stsc=d_sc)
        log(
            f"  colour {fam}: w={w} M={m}: report ST {st[~half].mean():.4f} ({d_st[0]:+.4f}) "
            f"STSC {sc[~half].mean():.4f} ({d_sc[0]:+.4f})"
        )
    # a ceiling, not a candidate: a colour classifier learned from the tune half's baseColour labels
    # (fashion-dev is for evaluation only: weights learned from it do not ship)
    from sklearn.linear_model import LogisticRegression

    F = np.concatenate([lib, sq], 1)
    P = LogisticRegression(max_iter=2000).fit(F[half], cy[half]).predict_proba(F)
    sp_ = np.sqrt(P)
    sim_l = np.einsum("qkd,qd->qk", sp_[rows], sp_)
    rec["learned"] = []
    for w in (0.1, 0.2, 0.3):
        st, sc = _p10(order((1 - w) * sims + w * sim_l), ty, cy)
        rec["learned"].append(
            {"w": w, "st_report": float(st[~half].mean()), "stsc_report": float(sc[~half].mean())}
        )
    same = ty[rows] == ty[:, None]
    for name, cs in (
        ("library signature", sim_lib),
        ("colour names", sim_names),
        ("learned (ceiling)", sim_l),
    ):
        st, sc = _p10(order(np.where(same, cs, cs - 9)), ty, cy)  # type known exactly (an oracle)
        rec.setdefault("oracle_type", []).append({"colour": name, "stsc_report": float(sc[~half].mean())})
    # what the rule costs on the other domains (mAP@10, the harness's LOO queries, pool 50)
    rec["other"] = []
    for o_i, other in enumerate(d for d in doms if d.name != "fashion-dev"):
        Xo = load_vectors(work, other)
        so = setups(other, Xo, ["loo"])[0]
        Co, Qo = so.to_space(so.C), so.to_space(so.Q)
        ro, sio, _ = rank_default(Qo, Co, so.self_row, k=COLOUR_POOL_N)
        base_ap = ap_r1(ro, so)[0]
        libo = load_colour(work, other)
        nameso = np.sqrt(name_histograms(decode_small(other, probe_work, log)))
        for desc, D in (("library signature", libo), ("colour names", nameso)):
            if D is None:
                continue
            for fam in rec["rules"]:
                if not fam["chosen"] or "top-M" in fam["family"] or desc not in fam["family"]:
                    continue
                w = fam["w"]
                c = np.einsum("qkd,qd->qk", D[ro], D[so.q_rows])
                r2 = np.take_along_axis(ro, np.argsort(-((1 - w) * sio + w * c), 1, kind="stable"), 1)
                ap = ap_r1(r2, so)[0]
                d = dd.paired_bootstrap(base_ap, ap, dd.RESAMPLES, (0, 3, o_i))
                rec["other"].append(
                    {
                        "domain": other.name,
                        "colour": desc,
                        "w": w,
                        "default": float(base_ap.mean()),
                        "value": float(ap.mean()),
                        "diff": d,
                    }
                )
    return rec


def colour_table(rec: dict[str, Any]) -> list[str]:
    d = rec["default"]
    out = [
        f"Colour on fashion-dev (every image an LOO query; tuned on {rec['queries_tune']}, reported on "
        f"{rec['queries_report']}; rule: the tune half's best same-type-and-same-colour P@10 with same-type "
        f"P@10 within 0.01 of the default). Default on the report half: same-type P@10 {d['st_report']:.4f}, "
        f"same-type-and-colour {d['stsc_report']:.4f}, perfect reordering of the top 50 "
        f"{d['perfect_report']:.4f}.",
        "",
        "| rule | w | M | same-type P@10 (Δ, 95 %) | same type + colour P@10 (Δ, 95 %) |",
        "|---|---|---|---|---|",
    ]
    for r in rec["rules"]:
        if r["chosen"]:
            a, b = r["d_st"], r["d_stsc"]
            out.append(
                f"| {r['family']} | {r['w']} | {r['M']} | {r['st_report']:.4f} "
                f"({a[0]:+.4f} [{a[1]:+.4f}, {a[2]:+.4f}]) "
                f"| {r['stsc_report']:.4f} ({b[0]:+.4f} [{b[1]:+.4f}, {b[2]:+.4f}]) |"
            )
    for r in rec["learned"]:
        out.append(
            f"| learned colour classifier (ceiling, not shippable) | {r['w']} | 50 | {r['st_report']:.4f} "
            f"| {r['stsc_report']:.4f} |"
        )
    out += [
        "",
        "Frontier (report half; every w tried): "
        + "; ".join(
            f"{r['family'].split(',')[0]} w={r['w']}"
            f"{'' if r['M'] == COLOUR_POOL_N else ' M=' + str(r['M'])}: "
            f"{r['st_report']:.3f}/{r['stsc_report']:.3f}"
            for r in rec["rules"]
        ),
    ]
    out += [
        "",
        "With the type known exactly (oracle), colour alone reorders the same-type candidates to: "
        + ", ".join(f"{o['colour']} {o['stsc_report']:.4f}" for o in rec["oracle_type"]),
    ]
    out += [
        "",
        "| other domain (LOO mAP@10) | colour | w | default | with colour | Δ | 95 % interval |",
        "|---|---|---|---|---|---|---|",
    ]
    for o in rec["other"]:
        a = o["diff"]
        out.append(
            f"| {o['domain']} | {o['colour']} | {o['w']} | {o['default']:.4f} | {o['value']:.4f} | "
            f"{a[0]:+.4f} | [{a[1]:+.4f}, {a[2]:+.4f}] |"
        )
    out.append(f"\n(colour names: {rec['names_ms_per_image']:.2f} ms per 64 px image, numpy)")
    return out


# ====================================================================== (e) shelf photo -> studio catalogue
def colour_labels_part(
    doms: list[dd.Domain], work: Path, probe_work: Path, log: Callable[[str], None]
) -> dict[str, Any]:
    """Colour from the catalogue's own labels, and the limit of any colour rule (fashion-dev, LOO).

    Every image is an LOO query over the plain-cosine top 50; a candidate's colour is its
    ``baseColour`` label (the shop's own names), the query's colour a probability over the names:
    the library's classifier (``_colourlabels.fit_colour_model``: unit CNN vector + colour signature,
    logistic regression), cross-fitted over 5 seeded folds so that no query's own label is learned
    from, with extra descriptors (the 12 colour names, a 4x4 grid of colour means and spreads) as
    probes; or the query's true label (an oracle: the best any colour predictor could do with this
    rule).  Rule ``cos + w p(query's colour = the candidate's label)``; for each, the best
    same-type-and-same-colour P@10 with same-type P@10 within 0.01 of the default on the report
    half (the seeded half of ``colour_part``), the weight read on a fine grid of that half."""
    from varsitysrch._colourlabels import fit_colour_model

    dom, names, cy, X, lib = fashion_colours(doms, work, "colour-labels")
    ty = dom.labels
    n = len(X)
    rows, sims = topk(X, X, COLOUR_POOL_N, np.arange(n))
    half = np.random.default_rng([0, 7]).permutation(n) < n // 2  # colour_part's tune (True) / report
    folds = np.random.default_rng(1).integers(0, 5, n)
    imgs = decode_small(dom, probe_work, log)
    g = imgs.reshape(n, 4, 16, 4, 16, 3).astype(np.float32) / 255
    grid = np.concatenate([g.mean((2, 4)).reshape(n, -1), g.std((2, 4)).reshape(n, -1)], 1)
    grid = (grid - grid.mean(0)) / (grid.std(0) + 1e-6) * 0.05
    extras = {
        "vector + signature (the library's)": None,
        "+ 12 colour names": np.sqrt(name_histograms(imgs)),
        "+ 4x4 grid of colour means and spreads": grid,
    }
    st0, sc0 = _p10(rows, ty, cy)
    rec: dict[str, Any] = {"default_st": float(st0[~half].mean()), "default_stsc": float(sc0[~half].mean())}
    rec["rows"] = []

    def frontier(label: str, P: np.ndarray, extra: dict[str, Any]) -> None:
        pc = P[np.arange(n)[:, None], cy[rows]]
        best = None
        for w in np.arange(0.005, 0.3001, 0.005):
            order = np.take_along_axis(rows, np.argsort(-(sims + w * pc), 1, kind="stable"), 1)
            st, sc = _p10(order, ty, cy)
            if st[~half].mean() >= st0[~half].mean() - 0.01 and (best is None or sc[~half].mean() > best[1]):
                best = (float(w), float(sc[~half].mean()), float(st[~half].mean() - st0[~half].mean()))
        assert best is not None
        rec["rows"].append({"query colour": label, "w": best[0], "stsc": best[1], "d_st": best[2], **extra})
        log(f"  colour labels {label}: w={best[0]:.3f} STSC {best[1]:.4f} (ST {best[2]:+.4f}) {extra}")

    col = {c: i for i, c in enumerate(names)}
    for label, extra in extras.items():
        P = np.zeros((n, len(names)), np.float32)
        Xa = X if extra is None else np.concatenate([X, extra], 1)
        t0 = time.perf_counter()
        for fold in range(5):
            a = folds != fold
            cm = fit_colour_model(Xa[a], lib[a], [str(c) for c in names[cy[a]]], "baseColour")
            P[np.ix_(~a, [col[c] for c in cm.names])] = cm.proba(Xa[~a], lib[~a])
        acc = float((P.argmax(1) == cy).mean())
        frontier(label, P, {"accuracy": acc, "fit_s": (time.perf_counter() - t0) / 5})
    frontier("the true label (oracle)", np.eye(len(names), dtype=np.float32)[cy], {"accuracy": 1.0})
    return rec


def colour_labels_table(rec: dict[str, Any]) -> list[str]:
    out = [
        f"fashion-dev LOO, plain cosine top {COLOUR_POOL_N}, report half: default same-type P@10 "
        f"{rec['default_st']:.4f}, same type + colour {rec['default_stsc']:.4f}; rule cos + w p(colour = "
        "label), the best within 0.01 of same type",
        "",
        "| query's colour from | accuracy (5-fold) | fit s | w | same type + colour P@10 | Δ same type |",
        "|---|---|---|---|---|---|",
    ]
    for r in rec["rows"]:
        fit = f"{r['fit_s']:.0f}" if "fit_s" in r else "-"
        out.append(
            f"| {r['query colour']} | {r['accuracy']:.3f} | {fit} | {r['w']:.3f} | {r['stsc']:.4f} "
            f"| {r['d_st']:+.4f} |"
        )
    return out


def shelf_queries(
    fashion: dd.Domain, grocery: dd.Domain, probe_work: Path, n: int, log: Callable[[str], None]
) -> tuple[Path, np.ndarray]:
    """``n`` shelf photos: a fashion-dev product (its foreground: pixels away from the studio
    backdrop) pasted, its long side :data:`SHELF_SCALE` of the short side, at a seeded place of a
    seeded grocery-train
    in-store photo (short side 448 px), brightness jittered, saved as JPEG (quality 85); with
    the five 70 % crops beside each (``<i>_v0`` the whole photo, ``_v1``-``_v5`` the crops, as the
    library's views cut them).  Returns the folder and the fashion-dev rows of the products."""
    from PIL import Image

    from varsitysrch._query import crop_boxes

    folder = probe_work / f"shelf-{n}-s{round(100 * SHELF_SCALE)}" / "images"
    rng = np.random.default_rng([0, 21])
    src = np.sort(rng.choice(fashion.q_loo, min(n, len(fashion.q_loo)), replace=False))
    bgs = rng.choice(len(grocery.ids), len(src), replace=True)
    done = folder.parent / "images.done"
    if done.is_file():
        return folder, src
    folder.mkdir(parents=True, exist_ok=True)
    for i, (r, b) in enumerate(zip(src.tolist(), bgs.tolist(), strict=True)):
        with Image.open(grocery.root / grocery.ids[b]) as bg_im:
            bg_im = bg_im.convert("RGB")
            f = 448 / min(bg_im.size)
            bg = bg_im.resize((round(bg_im.size[0] * f), round(bg_im.size[1] * f)), Image.BILINEAR)
        with Image.open(fashion.root / fashion.ids[r]) as p_im:
            prod = p_im.convert("RGB")
        a = np.asarray(prod).astype(np.int16)
        edge = np.concatenate([a[0], a[-1], a[:, 0], a[:, -1]])
        mask = np.abs(a - np.median(edge, 0)).max(2) > 25
        side = int(SHELF_SCALE * min(bg.size))
        scale = side / max(prod.size)
        size = (max(1, round(prod.size[0] * scale)), max(1, round(prod.size[1] * scale)))
        gain = float(rng.uniform(0.85, 1.1))
        prod = Image.fromarray(
            np.clip(np.asarray(prod.resize(size, Image.BILINEAR)) * gain, 0, 255).astype(np.uint8)
        )
        m = Image.fromarray((mask * 255).astype(np.uint8)).resize(size, Image.BILINEAR)
        x = int(rng.integers(0, bg.size[0] - size[0] + 1))
        y = int(rng.integers(0, bg.size[1] - size[1] + 1))
        bg.paste(prod, (x, y), m)
        boxes = crop_boxes(*bg.size, CROP)  # the whole photo and the five crops, as the library cuts them
        for v, box in enumerate(boxes):
            bg.crop(box).save(folder / f"{i:04d}_v{v}.jpg", quality=85)
    done.write_text("ok\n")
    log(f"  made {len(src)} shelf photos (+ crops) in {folder}")
    return folder, src


def shelf_part(
    doms: list[dd.Domain], work: Path, probe_work: Path, log: Callable[[str], None], n: int = 300
) -> dict[str, Any]:
    from varsitysrch import FeatureStore, extract_features

    by = {d.name: d for d in doms}
    if not {"fashion-dev", "grocery-train"} <= set(by):
        raise UsageError("--parts shelf needs the fashion-dev and grocery-train domains")
    fashion = by["fashion-dev"]
    folder, src = shelf_queries(fashion, by["grocery-train"], probe_work, n, log)
    store = folder.parent / "features"
    if not (folder.parent / "features.done").is_file():
        res = extract_features(folder, store, show_progress=False)
        (folder.parent / "features.done").write_text(json.dumps({"images_per_second": res.images_per_second}))
        log(f"  {res.summary()}")
    st = FeatureStore.open(store)
    pos = {i: r for r, i in enumerate(st.ids)}
    V = norm(
        np.asarray(st.vectors, np.float32)[
            [pos[f"{i:04d}_v{v}.jpg"] for i in range(len(src)) for v in range(6)]
        ]
    )
    V = V.reshape(len(src), 6, -1)
    X = load_vectors(work, fashion)
    space = fit_space(X)
    assert space is not None
    Cs = norm((X - space[0]) @ space[1].T)
    ty = fashion.labels
    copies = (X @ X[src].T).T >= 0.99  # [q, n]: the product's studio shot and its byte copies
    n_type = np.bincount(ty, minlength=ty.max() + 1)[ty[src]]
    none = np.full(len(src), -1)

    def metrics(ranked: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        r1 = copies[np.arange(len(src)), ranked[:, 0]].astype(float)
        rel = (ty[ranked[:, :TOP]] == ty[src][:, None]).astype(float)
        prec = np.cumsum(rel, 1) / np.arange(1, TOP + 1)
        return r1, (prec * rel).sum(1) / np.minimum(TOP, n_type)

    def merged(rank_fn: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]], views: int) -> np.ndarray:
        out = np.zeros((len(src), TOP), np.int64)
        lists = [rank_fn(V[:, v]) for v in range(views)]
        for i in range(len(src)):
            best: dict[int, float] = {}
            for v, (r, sc) in enumerate(lists):
                for rr, ss in zip(r[i].tolist(), (sc[i] - (DISCOUNT if v else 0.0)).tolist(), strict=True):
                    best[rr] = max(best.get(rr, -9.0), ss)
            out[i] = [r for r, _ in sorted(best.items(), key=lambda kv: -kv[1])[:TOP]]
        return out

    def sp(Q: np.ndarray) -> np.ndarray:
        return norm((Q - space[0]) @ space[1].T)

    Cd, _ = dba(Cs, 3)
    g = build_kr(Cs, 20, 6)
    variants: dict[str, Callable[[], np.ndarray]] = {
        "plain (raw cosine, whole photo)": lambda: topk(V[:, 0], X, TOP, none)[0],
        "default, whole photo": lambda: rank_default(sp(V[:, 0]), Cs, none)[0],
        "default, whole + 5 crops (views=auto)": lambda: merged(
            lambda Q: rank_default(sp(Q), Cs, none, k=TOP)[:2], 6
        ),
        "kr20+qe, whole photo": lambda: kr_rerank(
            g, Cs, rank_default(sp(V[:, 0]), Cs, none)[2], *rank_default(sp(V[:, 0]), Cs, none)[:2], none
        ),
        "kr20+qe keep1, whole photo": lambda: kr_rerank(
            g,
            Cs,
            rank_default(sp(V[:, 0]), Cs, none)[2],
            *rank_default(sp(V[:, 0]), Cs, none)[:2],
            none,
            keep_first=True,
        ),
        "dba3+qe, whole photo": lambda: rank_default(sp(V[:, 0]), Cd, none)[0],
        "dba3+qe, whole + 5 crops": lambda: merged(lambda Q: rank_default(sp(Q), Cd, none, k=TOP)[:2], 6),
    }
    res = {name: metrics(fn()) for name, fn in variants.items()}
    base = res["default, whole photo"]
    rec: dict[str, Any] = {"queries": len(src), "rows": []}
    for name, (r1, ap) in res.items():
        d1 = dd.paired_bootstrap(base[0], r1, dd.RESAMPLES, (0, 5))
        d2 = dd.paired_bootstrap(base[1], ap, dd.RESAMPLES, (0, 6))
        rec["rows"].append(
            {"variant": name, "r1": float(r1.mean()), "ap": float(ap.mean()), "d_r1": d1, "d_ap": d2}
        )
        log(f"  shelf {name}: R@1 {r1.mean():.4f} mAP@10(type) {ap.mean():.4f}")
    return rec


def shelf_table(rec: dict[str, Any]) -> list[str]:
    out = [
        f"Shelf photo -> studio catalogue ({rec['queries']} fashion-dev products pasted on grocery-train "
        "shelf photos; catalogue: all 6,483 fashion-dev studio shots; R@1 = the product's own shot first; "
        "mAP@10 by "
        "type). Δ against the default on the whole photo:",
        "",
        "| variant | R@1 | Δ R@1 (95 %) | mAP@10 (type) | Δ mAP@10 (95 %) |",
        "|---|---|---|---|---|",
    ]
    for r in rec["rows"]:
        a, b = r["d_r1"], r["d_ap"]
        out.append(
            f"| {r['variant']} | {r['r1']:.4f} | {a[0]:+.4f} [{a[1]:+.4f}, {a[2]:+.4f}] | {r['ap']:.4f} "
            f"| {b[0]:+.4f} [{b[1]:+.4f}, {b[2]:+.4f}] |"
        )
    return out


# ============================================================ (f) the library's stage: cost at scale
def cost_part(
    sizes: Sequence[int], ivf_sizes: Sequence[int], log: Callable[[str], None], dim: int = 1280
) -> dict[str, Any]:
    """The library's k-reciprocal stage (``varsitysrch._rerank``, not this probe's loops) on
    generated catalogues: products of 4 photos around random centres, unit rows.  Per size: the
    exact graph build (``dim``: 1280, the raw space models rank in by default; 128 for a model
    with a search PCA), the stage's ms/query over 100 candidates (a held-out photo, its exact top
    100; cold: every row's weights computed, as on a freshly loaded model; warm: the same queries
    again, on the per-model row cache), and the graph's bytes per image; per
    ``ivf_sizes``: the build through an IVF over 1280-d float16 rows (a model above
    ``IVF_THRESHOLD``), IVF training excluded.  Fits: exact ~ n**2, IVF ~ n**1.5 (nlist ~ 4
    sqrt(n), each image scans nprobe lists of ~sqrt(n) / 4 images)."""
    from varsitysrch._index import build_ivf
    from varsitysrch._rerank import _K1, _build_graph, _ivf_graph, keep_count, rerank

    def catalogue(n: int, d: int, seed: int) -> np.ndarray:
        """Products in a 32-d latent space seen through a fixed d-dimensional map (CNN features
        have a low intrinsic dimension; the IVF's clusters need it), plus noise."""
        rng = np.random.default_rng(seed)
        lift = np.random.default_rng(0).standard_normal((32, d)).astype(np.float32)
        centres = rng.standard_normal((n // 4 + 1, 32)).astype(np.float32)
        latent = centres[np.arange(n) // 4] + 0.5 * rng.standard_normal((n, 32)).astype(np.float32)
        return norm(latent @ lift + 0.5 * np.sqrt(32) * rng.standard_normal((n, d)).astype(np.float32))

    rec: dict[str, Any] = {"exact": [], "ivf": [], "dim": dim}
    for n in sizes:
        C = catalogue(n, dim, n)
        t0 = time.perf_counter()
        g = _build_graph(C, _K1)
        build = time.perf_counter() - t0
        rng = np.random.default_rng(n + 1)  # new photos of 200 catalogue products
        Q = norm(C[rng.choice(n, 200, replace=False)] + 0.3 * rng.standard_normal((200, dim)) / np.sqrt(dim))
        cand = [topk(Q[i : i + 1], C, POOL, np.array([-1])) for i in range(len(Q))]
        ms = []
        for _ in ("cold", "warm"):  # a fresh model (every row's weights computed), then the same again
            t0 = time.perf_counter()
            for q, (r, sc) in zip(Q, cand, strict=True):
                rerank(g, C, q, r[0], sc[0], keep=keep_count(sc[0]))
            ms.append(1000 * (time.perf_counter() - t0) / len(Q))
        stage = ms[0]
        row = {"n": n, "build_s": build, "stage_ms": ms[0], "warm_ms": ms[1], "bytes_per_image": g.nbytes / n}
        rec["exact"].append(row)
        log(
            f"  cost exact n={n:,}: build {build:.1f} s, stage {stage:.2f} ms/query, "
            f"{g.nbytes / n:.0f} B/image"
        )
    for n in ivf_sizes:
        X = catalogue(n, 1280, n).astype(np.float16)
        parts, _ = build_ivf(X)
        t0 = time.perf_counter()
        _ivf_graph(X, parts.centroids, parts.lists, parts.nprobe, _K1)
        build = time.perf_counter() - t0
        row = {"n": n, "build_s": build, "nlist": parts.nlist, "nprobe": parts.nprobe}
        rec["ivf"].append(row)
        log(f"  cost ivf n={n:,}: graph {build:.1f} s (nlist {parts.nlist}, nprobe {parts.nprobe})")
    return rec


def cost_table(rec: dict[str, Any]) -> list[str]:
    out = [
        f"The library's stage on generated catalogues (products of 4 photos; exact: {rec['dim']}-d; IVF: "
        "1280-d float16, IVF training excluded):",
        "",
        "| build | n | graph build (s) | stage cold (ms/query) | stage warm (ms/query) | graph bytes/image |",
        "|---|---|---|---|---|---|",
    ]
    for r in rec["exact"]:
        cells = f"{r['build_s']:.1f} | {r['stage_ms']:.2f} | {r['warm_ms']:.2f} | {r['bytes_per_image']:.0f}"
        out.append(f"| exact | {r['n']:,} | {cells} |")
    for r in rec["ivf"]:
        how = f"IVF (nlist {r['nlist']}, nprobe {r['nprobe']})"
        out.append(f"| {how} | {r['n']:,} | {r['build_s']:.1f} | - | - | 160 |")
    ex, iv = rec["exact"], rec["ivf"]
    if ex:
        big = ex[-1]
        for n in (200_000, 1_000_000):
            est = big["build_s"] * (n / big["n"]) ** 2
            out.append(f"| exact, extrapolated (n**2 from {big['n']:,}) | {n:,} | {est:,.0f} | - | - | 160 |")
    if iv:
        big = iv[-1]
        est = big["build_s"] * (1_000_000 / big["n"]) ** 1.5
        out.append(f"| IVF, extrapolated (n**1.5 from {big['n']:,}) | 1,000,000 | {est:,.0f} | - | - | 160 |")
    return out


# ====================================================================== main
def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="relevance_probe.py", description=__doc__.split("\n")[0])
    p.add_argument("--data", default=os.environ.get("VARSITYSRCH_DATA"), help="folder of the domains")
    p.add_argument(
        "--work",
        default=dd.default_work(),
        help="dev_domains.py's cache folder (its stores are read, never written)",
    )
    p.add_argument("--probe-work", default=None, help="this probe's own cache (default: <work>/probe)")
    p.add_argument("--domains", default=",".join(dd.DEV_DOMAINS))
    p.add_argument("--protocols", default="loo,heldout")
    p.add_argument("--parts", default="graph,colour,shelf")
    p.add_argument("--only", default="", help="graph variants to run (comma-separated names; default: all)")
    p.add_argument("--queries", type=int, default=dd.N_QUERIES)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None)
    p.add_argument("--sizes", default="5000,10000,20000", help="--parts cost: exact graph sizes")
    p.add_argument("--dim", type=int, default=1280, help="--parts cost: the ranking space's dimension")
    p.add_argument("--ivf-sizes", default="50000,100000", help="--parts cost: IVF graph sizes")
    a = p.parse_args(argv)
    if not a.data:
        raise UsageError("--data (or VARSITYSRCH_DATA) is required: the folder holding the domain folders")
    if not Path(a.data).is_dir():
        raise UsageError(f"--data {a.data!r} is not a folder")
    return a


def main(argv: Sequence[str] | None = None) -> int:
    try:
        a = parse_args(argv)
        data, work = Path(a.data).resolve(), Path(a.work)
        doms = [
            dd.load_domain(data, d.strip(), limit=None, n_queries=a.queries, seed=a.seed)
            for d in a.domains.split(",")
        ]
    except (UsageError, dd.UsageError) as exc:
        print(f"relevance_probe.py: error: {exc}", file=sys.stderr)
        return 2

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    parts = {p.strip() for p in a.parts.split(",")}
    protocols = [p.strip() for p in a.protocols.split(",")]
    probe_work = Path(a.probe_work) if a.probe_work else work / "probe"
    out: list[str] = [f"`python benchmarks/relevance_probe.py {' '.join(argv or sys.argv[1:])}`", ""]
    record: dict[str, Any] = {}
    try:
        if "graph" in parts:
            only = frozenset(v.strip() for v in a.only.split(",") if v.strip())
            record["graph"] = graph_part(doms, work, protocols, log, only)
            out += graph_table(record["graph"])
        if "colour" in parts:
            record["colour"] = colour_part(doms, work, probe_work, log)
            out += ["", *colour_table(record["colour"])]
        if "colour-labels" in parts:
            record["colour_labels"] = colour_labels_part(doms, work, probe_work, log)
            out += ["", *colour_labels_table(record["colour_labels"])]
        if "shelf" in parts:
            record["shelf"] = shelf_part(doms, work, probe_work, log)
            out += ["", *shelf_table(record["shelf"])]
        if "cost" in parts:
            ints = lambda t: [int(x) for x in t.split(",") if x.strip()]  # noqa: E731
            record["cost"] = cost_part(ints(a.sizes), ints(a.ivf_sizes), log, a.dim)
            out += ["", *cost_table(record["cost"])]
    except UsageError as exc:
        print(f"relevance_probe.py: error: {exc}", file=sys.stderr)
        return 2
    print("\n".join(out))
    if a.json:
        Path(a.json).write_text(json.dumps(record, indent=1, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
