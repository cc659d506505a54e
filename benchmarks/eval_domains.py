"""Search quality on both dev domains, one column per domain: every variant, its protocol and its cost.

**Measures internals and prototypes, not what users get.**  Most parts re-implement the search
in numpy on cached vectors (no query expansion in the cross-domain protocol, colour and views
by hand, private helpers of ``varsitysrch._postprocess``, ``_colour``, ``_query``, ``_images``);
issue 20 says this copy of the search must go.  The replacement, measured through the public
pipeline with bootstrap intervals on the three dev sets, is ``benchmarks/dev_domains.py``.
Kept (not rewritten) because README.md and docs/quality.md quote its figures.

Data: ``clothing-small/`` and ``grocery-train/`` under ``--data`` / ``$VARSITYSRCH_DATA``;
caches in ``--cache`` (default ``<system temp>/varsitysrch-eval-domains``).

    python benchmarks/eval_domains.py --part features   # embed every variant once (cached)
    python benchmarks/eval_domains.py --part table      # leave-one-out / held-out / cross-domain table
    python benchmarks/eval_domains.py --part colour     # hue-shifted copies: colour weight trade-off
    python benchmarks/eval_domains.py --part speed      # extraction img/s, old vs new default, one run
    python benchmarks/eval_domains.py --part api        # the same protocols through varsitysrch.evaluate
    python benchmarks/eval_domains.py --part studio     # query crops vs studio proxies; QE and the query
    python benchmarks/eval_domains.py --part int8       # what int8 costs the default, unrounded

Domains: ``DATA/clothing-small`` (3,781 photos, 10 classes) and
``DATA/grocery-train`` (2,640 in-store photos, 81 products), each with its
``manifest.csv`` (relevance = same ``label``).  Fixed, seeded protocol per domain:

* ``Q``: 600 query images (seed 0), the same for all three protocols;
* **leave-one-out**: every image is the catalogue, the query is removed from its own results;
* **held-out**: 25 % of the images (``Q`` and more) are removed from the catalogue; every
  catalogue statistic (search PCA, whitening, DBA) is fitted on the remaining 75 %;
* **cross-domain** (shopper photo -> small catalogue): a catalogue of 3 photos per product
  (grocery) / 20 per class (clothing) drawn from outside ``Q``; the queries ``Q`` are
  separate photos; recall@1, recall@5 and mAP@10.

``--part features`` embeds every image once per backbone / input variant with the same
ONNX graphs the library builds, plus the last feature map so that average, GeM and
foreground-weighted pooling come from one pass, plus query-only views (five 70 % crops,
mirror) of ``Q``.  Everything is cached under ``--cache``; a rerun only computes what is missing.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchdata

REPO = Path(__file__).resolve().parents[1]
PROG = "eval_domains.py"
#: domain name -> its dev set (folder under --data)
DEV_SET = {"clothing": "clothing-small", "grocery": "grocery-train"}
#: domain name -> its folder; filled by :func:`use_data` from --data / $VARSITYSRCH_DATA
DOMAINS: dict[str, Path] = {}


def _whole_rgb(path: Path) -> Any:
    """The whole photo at full scale, first frame, EXIF-oriented, RGB (the library's decode)."""
    from varsitysrch._images import decode_rgb, open_image

    return decode_rgb(open_image(path), 1 << 16, False)


def hue_shift(image: np.ndarray, degrees: float) -> np.ndarray:
    """The image with every hue rotated by ``degrees`` (saturation, value and greys unchanged).

    A copy of the helper in tests/test_colour.py (the library dropped it: nothing searches with it)."""
    from varsitysrch._colour import _rgb_to_hsv

    h, s, v = _rgb_to_hsv(np.asarray(image, np.uint8))
    h6 = ((h + float(degrees) / 360.0) % 1.0) * 6.0
    i = np.floor(h6).astype(np.int32) % 6
    f = h6 - np.floor(h6)
    s, v = np.asarray(s, np.float32), np.asarray(v, np.float32)
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    out = np.zeros((*h6.shape, 3), np.float32)
    for k, (r, g, b) in enumerate([(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)]):
        m = i == k
        out[m, 0], out[m, 1], out[m, 2] = r[m], g[m], b[m]
    return np.clip(np.rint(out * 255.0), 0, 255).astype(np.uint8)


def use_data(prog: str, data: str | None, domains: list[str]) -> Path:
    """Check ``--data`` / ``$VARSITYSRCH_DATA`` for the domains' dev sets and point DOMAINS at them."""
    unknown = [d for d in domains if d not in DEV_SET]
    if unknown:
        benchdata.fail(prog, f"--domains must be a subset of {','.join(DEV_SET)}; got {unknown[0]!r}")
    root = benchdata.data_root(prog, data, [DEV_SET[d] for d in domains])
    DOMAINS.update({d: root / s for d, s in DEV_SET.items()})
    return root


CROSS_PER_LABEL = {"clothing": 20, "grocery": 3}
N_QUERIES = 600
HELD_OUT = 0.25
GEM_P = 3.0


# ====================================================================== data and protocol
def manifest(domain: str) -> tuple[list[str], np.ndarray, list[str]]:
    root = DOMAINS[domain]
    with open(root / "manifest.csv", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    rows.sort(key=lambda r: r["path"])
    ids = [r["path"] for r in rows]
    names, y = np.unique([r["label"] for r in rows], return_inverse=True)
    return ids, y, list(names)


def protocol(domain: str) -> dict[str, np.ndarray]:
    """Row indices of the queries, the held-out catalogue and the cross-domain catalogue (seeded)."""
    ids, y, _ = manifest(domain)
    n = len(ids)
    rng = np.random.default_rng(0)
    q = np.sort(rng.choice(n, N_QUERIES, replace=False))
    rest = np.setdiff1d(np.arange(n), q)
    extra = rng.choice(rest, round(HELD_OUT * n) - len(q), replace=False)
    held = np.union1d(q, extra)
    held_cat = np.setdiff1d(np.arange(n), held)
    cross: list[int] = []
    for lab in range(int(y.max()) + 1):
        cand = rest[y[rest] == lab]
        cross += sorted(rng.choice(cand, min(CROSS_PER_LABEL[domain], len(cand)), replace=False).tolist())
    return {"q": q, "held_cat": held_cat, "cross_cat": np.array(sorted(cross))}


# ====================================================================== embedding
def fmap_session(name: str, quantized: bool = False, threads: int = 2) -> Any:
    """An ONNX Runtime session of the library's graph with the last feature map as an extra output."""
    import onnx

    from varsitysrch import get_extractor
    from varsitysrch._extractors import _onnx_model_bytes, _session

    ex = get_extractor(name, quantized=quantized)  # explicit: the default extractor is int8 now
    m = onnx.load_from_string(_onnx_model_bytes(ex))
    gap = next(n for n in m.graph.node if n.op_type == "GlobalAveragePool")
    m.graph.output.append(onnx.helper.make_tensor_value_info(gap.input[0], onnx.TensorProto.FLOAT, None))
    return _session(m.SerializeToString(), threads), gap.input[0]


def pool(fmap: np.ndarray, weights: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Average and GeM pooling of ``[N, C, h, w]`` maps, optionally weighted per position ``[N, h, w]``."""
    f = np.maximum(fmap, 1e-6)
    if weights is None:
        return {"avg": fmap.mean((2, 3)), "gem": (f**GEM_P).mean((2, 3)) ** (1 / GEM_P)}
    w = weights[:, None] / weights.sum((1, 2))[:, None, None, None]
    return {"avg": (fmap * w).sum((2, 3)), "gem": ((f**GEM_P) * w).sum((2, 3)) ** (1 / GEM_P)}


def cell_weights(images: np.ndarray, h: int) -> np.ndarray:
    """Fraction of foreground pixels in each of the ``h x h`` cells of every image (0.1 floor)."""
    from varsitysrch._colour import _foreground_mask

    out = []
    for im in images:
        m = _foreground_mask(im).astype(np.float32)
        s = m.shape[0] // h
        out.append(m[: s * h, : s * h].reshape(h, s, h, s).mean((1, 3)))
    return np.maximum(np.stack(out), 0.1)


def _decode(domain: str, ids: list[str], size: int, modes: tuple[str, ...]) -> Any:
    from varsitysrch._images import _fit

    root = DOMAINS[domain]
    for i in ids:
        im = _whole_rgb(root / i)
        yield im, {m: np.asarray(_fit(im, size, m), np.uint8) for m in modes}


def embed_variant(domain: str, variant: str, out: Path, batch: int = 16) -> None:
    """One backbone / input size over every image: lb + cc views, their poolings, flip, colour."""
    from varsitysrch._colour import colour_signature

    name, size, quant = {
        "lite0-224": ("efficientnet-lite0", 224, False),
        "lite0-288": ("efficientnet-lite0", 288, False),
        "mbv2-224": ("mobilenet-v2", 224, False),
        "lite0int8-224": ("efficientnet-lite0", 224, True),
        "lite0int8-288": ("efficientnet-lite0", 288, True),
        "lite0-256": ("efficientnet-lite0", 256, False),
        "lite0int8-256": ("efficientnet-lite0", 256, True),
    }[variant]
    ids, _, _ = manifest(domain)
    sess, fmap_name = fmap_session(name, quant)
    want_extra = variant == "lite0-224"
    acc: dict[str, list[np.ndarray]] = {}

    def add(key: str, v: np.ndarray) -> None:
        acc.setdefault(key, []).append(np.asarray(v, np.float32))

    def run(arr: np.ndarray) -> np.ndarray:
        return sess.run([fmap_name], {"images": arr})[0]

    t0 = time.perf_counter()
    buf: list[tuple[Any, dict[str, np.ndarray]]] = []

    def flush() -> None:
        lb = np.stack([d["letterbox"] for _, d in buf])
        cc = np.stack([d["center-crop"] for _, d in buf])
        same = np.array([im.size[0] == im.size[1] for im, _ in buf])
        F_lb = run(lb)
        F_cc = F_lb.copy()
        if (~same).any():
            F_cc[~same] = run(cc[~same])
        h = F_lb.shape[2]
        for mode, F, imgs in (("lb", F_lb, lb), ("cc", F_cc, cc)):
            for k, v in pool(F).items():
                add(f"{mode}_{k}", v)
            if want_extra:
                for k, v in pool(F, cell_weights(imgs, h)).items():
                    add(f"{mode}_fg{k}", v)
        if want_extra:
            Ff = run(np.ascontiguousarray(cc[:, :, ::-1]))
            for k, v in pool(Ff).items():
                add(f"ccflip_{k}", v)
            add("colour", np.stack([colour_signature(x) for x in lb]))
        buf.clear()

    for n, item in enumerate(_decode(domain, ids, size, ("letterbox", "center-crop")), 1):
        buf.append(item)
        if len(buf) == batch:
            flush()
        if n % 400 == 0:
            print(
                f"  {domain} {variant}: {n}/{len(ids)} ({n / (time.perf_counter() - t0):.1f} img/s)",
                flush=True,
            )
    if buf:
        flush()
    arrays = {k: np.concatenate(v) for k, v in acc.items()}
    np.savez(out, **arrays)
    print(f"  {domain} {variant}: {len(ids)} images in {time.perf_counter() - t0:.0f}s -> {out}", flush=True)


def embed_query_views(domain: str, out: Path) -> None:
    """Query-only views of ``Q`` with Lite0 at 224: five 70 % crops (cc and lb fitted) and lb mirror."""
    from varsitysrch._images import _fit
    from varsitysrch._query import crop_boxes

    ids, _, _ = manifest(domain)
    q = protocol(domain)["q"]
    sess, fmap_name = fmap_session("efficientnet-lite0")
    acc: dict[str, list[np.ndarray]] = {}
    t0 = time.perf_counter()
    for n, r in enumerate(q, 1):
        im = _whole_rgb(DOMAINS[domain] / ids[r])
        boxes = crop_boxes(*im.size)[1:]
        views = [np.asarray(_fit(im.crop(b), 224, "center-crop"), np.uint8) for b in boxes]
        views += [np.asarray(_fit(im.crop(b), 224, "letterbox"), np.uint8) for b in boxes]
        lb = np.asarray(_fit(im, 224, "letterbox"), np.uint8)
        views.append(np.ascontiguousarray(lb[:, ::-1]))
        F = sess.run([fmap_name], {"images": np.stack(views)})[0]
        P = pool(F)
        for k in ("avg", "gem"):
            acc.setdefault(f"crops_cc_{k}", []).append(P[k][:5])
            acc.setdefault(f"crops_lb_{k}", []).append(P[k][5:10])
            acc.setdefault(f"lbflip_{k}", []).append(P[k][10])
        if n % 100 == 0:
            print(
                f"  {domain} query views: {n}/{len(q)} ({n / (time.perf_counter() - t0):.1f} q/s)", flush=True
            )
    np.savez(out, **{k: np.stack(v) for k, v in acc.items()})
    print(f"  {domain} query views: {len(q)} queries in {time.perf_counter() - t0:.0f}s -> {out}", flush=True)


def part_features(args: argparse.Namespace) -> None:
    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    jobs: list[tuple[str, str]] = []
    for variant in args.variants.split(","):
        for domain in args.domains.split(","):
            jobs.append((domain, variant))
    for domain, variant in jobs:
        if variant == "views":
            f = cache / f"{domain}-views.npz"
            if not f.exists():
                embed_query_views(domain, f)
            continue
        f = cache / f"{domain}-{variant}.npz"
        if not f.exists():
            embed_variant(domain, variant, f)


# ====================================================================== scoring
def _norm(X: np.ndarray) -> np.ndarray:
    X = np.asarray(X, np.float32)
    n = np.linalg.norm(X, axis=-1, keepdims=True)
    return X / np.where(n > 0, n, 1.0)


def metrics(
    S: np.ndarray, qy: np.ndarray, cy: np.ndarray, self_col: np.ndarray | None, k: int = 10
) -> dict[str, float]:
    """P@k, mAP@k, recall@1 / @5 (a relevant item in the top 1 / 5) of a score matrix [queries, catalogue]."""
    from varsitysrch._evaluate import _average_precision_at_k, _precision_at_k

    S = np.array(S, np.float32, copy=True)
    n_rel = (cy[None, :] == qy[:, None]).sum(1)
    if self_col is not None:
        S[np.arange(len(S)), self_col] = -np.inf
        n_rel = n_rel - 1
    part = np.argpartition(-S, k, axis=1)[:, :k]
    top = np.take_along_axis(part, np.argsort(-np.take_along_axis(S, part, 1), axis=1, kind="stable"), 1)
    rel = cy[top] == qy[:, None]
    return {
        "p10": float(_precision_at_k(rel, k).mean()),
        "map10": float(_average_precision_at_k(rel, n_rel, k).mean()),
        "r1": float(rel[:, 0].mean()),
        "r5": float(rel[:, :5].any(1).mean()),
    }


class Domain:
    """Cached features of one domain and its three protocols."""

    def __init__(self, name: str, cache: Path) -> None:
        self.name = name
        self.ids, self.y, self.labels = manifest(name)
        self.p = protocol(name)
        self.cache = cache
        self._f: dict[str, dict[str, np.ndarray]] = {}

    def feats(self, variant: str) -> dict[str, np.ndarray]:
        if variant not in self._f:
            f = self.cache / f"{self.name}-{variant}.npz"
            if not f.exists():
                raise FileNotFoundError(f)
            with np.load(f) as z:
                self._f[variant] = {k: z[k] for k in z.files}
        return self._f[variant]

    def X(self, spec: str) -> np.ndarray:
        """``variant:key[+variant:key...]``: unit rows; ``+`` concatenates (an ensemble), ``&`` averages."""
        if "+" in spec:
            return _norm(np.hstack([self.X(s) for s in spec.split("+")]))
        if "&" in spec:
            return _norm(sum(self.X(s) for s in spec.split("&")))
        variant, key = spec.split(":")
        return _norm(self.feats(variant)[key])

    def Xq(self, spec: str) -> np.ndarray:
        """Query-side rows (``Q`` only): like :meth:`X`, ``views:key`` parts are already per query."""
        if "&" in spec:
            return _norm(sum(self.Xq(s) for s in spec.split("&")))
        if spec.startswith("views:"):
            return _norm(self.feats("views")[spec.split(":")[1]])
        return self.X(spec)[self.p["q"]]

    def protocols(self) -> dict[str, tuple[np.ndarray, np.ndarray | None]]:
        """name -> (catalogue rows, self column of each query in the catalogue or None)."""
        n = len(self.ids)
        q = self.p["q"]
        return {
            "loo": (np.arange(n), q),
            "held": (self.p["held_cat"], None),
            "cross": (self.p["cross_cat"], None),
        }


def search_space(C: np.ndarray, dim: int | None) -> tuple[np.ndarray, np.ndarray] | None:
    """The library's search-space PCA (train_clusters' rule: >= 1,000 catalogue images)."""
    from varsitysrch._postprocess import _SEARCH_PCA_MIN_IMAGES, fit_search_pca

    if dim is None or dim == 0 or len(C) < _SEARCH_PCA_MIN_IMAGES:
        return None
    if dim < 0:  # centring only
        return C.mean(0), np.eye(C.shape[1], dtype=np.float32)
    return fit_search_pca(C, dim)


def project(X: np.ndarray, sp: tuple[np.ndarray, np.ndarray] | None) -> np.ndarray:
    from varsitysrch._postprocess import to_search_space

    if sp is None:
        return _norm(X)
    shape = X.shape
    return to_search_space(X.reshape(-1, shape[-1]), *sp).reshape(*shape[:-1], -1)


def run_variant(
    D: Domain,
    cat_spec: str,
    *,
    query_spec: str | None = None,
    views: str | None = None,
    aggregate: str = "max",
    pca: int | None = None,
    qe: int = 0,
    dba: int = 0,
    colour: float = 0.0,
    protocols: tuple[str, ...] = ("loo", "held", "cross"),
) -> dict[str, dict[str, float]]:
    """Exact search of one variant under each protocol -> metrics."""
    from varsitysrch._postprocess import augment_rows, expand_query, neighbour_lists

    X = D.X(cat_spec)
    q = D.p["q"]
    Qx = D.Xq(query_spec) if query_spec else X[q]
    V = None
    if views:
        extra = [_norm(D.feats("views")[v]) for v in views.split(",")]
        extra = [e if e.ndim == 3 else e[:, None] for e in extra]
        V = np.concatenate([Qx[:, None], *extra], axis=1)  # [nq, views, d]
    colours = D.feats("lite0-224")["colour"] if colour else None
    out = {}
    for name in protocols:
        cat, self_col = D.protocols()[name]
        if self_col is not None and (dba or pca is not None) and name == "loo":
            pass  # leave-one-out: statistics fitted on all images (queries included), as the library would
        C = X[cat]
        sp = search_space(C, pca)
        Cs = project(C, sp)
        if dba:
            idx, sims = neighbour_lists(Cs, dba + 1)
            if self_col is not None:
                # never let a query augment its neighbours: drop it from every list
                pos = {int(c): j for j, c in enumerate(cat)}
                qpos = np.array([pos[int(r)] for r in q])
                drop = np.isin(idx, qpos) & (idx != np.arange(len(Cs))[:, None])
                sims = np.where(drop, 0.0, sims)
            Cs = augment_rows(Cs, idx[:, : dba + 1], sims[:, : dba + 1])
        if V is not None:
            Vs = project(V, sp)
            S = np.einsum("qvd,nd->qvn", Vs, Cs)
            S = S.max(1) if aggregate == "max" else np.einsum("qd,nd->qn", _norm(Vs.mean(1)), Cs)
        else:
            S = project(Qx, sp) @ Cs.T
        sc = None
        if self_col is not None:
            pos = {int(c): j for j, c in enumerate(cat)}
            sc = np.array([pos[int(r)] for r in q])
        if qe:
            Qs = project(Qx, sp)
            S2 = S.copy()
            if sc is not None:
                S2[np.arange(len(S2)), sc] = -np.inf
            nn = np.argsort(-S2, axis=1)[:, :qe]
            Qe = np.stack([expand_query(Qs[i], Cs[nn[i]], S2[i, nn[i]]) for i in range(len(Qs))])
            S = Qe @ Cs.T
        if colours is not None:
            cc = _norm(colours)
            S = (1 - colour) * S + colour * (cc[q] @ cc[cat].T)
        out[name] = metrics(S, D.y[q], D.y[cat], sc)
    return out


#: (row label, catalogue features, keyword arguments of run_variant, relative extraction cost)
VARIANTS: list[tuple[str, str, dict[str, Any], str]] = [
    ("**plain**: letterbox, average pool, exact cosine", "lite0-224:lb_avg", {}, "1x"),
    ("letterbox, GeM", "lite0-224:lb_gem", {}, "1x"),
    ("centre crop, average pool", "lite0-224:cc_avg", {}, "1x"),
    ("centre crop + GeM, exact cosine", "lite0-224:cc_gem", {}, "1x"),
    ("**old default**: centre crop + GeM + PCA 128", "lite0-224:cc_gem", {"pca": 128}, "1x"),
    ("letterbox, average pool + PCA 128", "lite0-224:lb_avg", {"pca": 128}, "1x"),
    ("letterbox, average pool + PCA 256", "lite0-224:lb_avg", {"pca": 256}, "1x"),
    ("letterbox, average pool + centring only", "lite0-224:lb_avg", {"pca": -1}, "1x"),
    ("centre crop, average pool + PCA 128", "lite0-224:cc_avg", {"pca": 128}, "1x"),
    ("letterbox, foreground-weighted average pool", "lite0-224:lb_fgavg", {}, "1x"),
    ("letterbox, foreground-weighted GeM", "lite0-224:lb_fggem", {}, "1x"),
    ("centre crop, foreground-weighted average", "lite0-224:cc_fgavg", {}, "1x"),
    (
        "letterbox avg, flip-averaged query only",
        "lite0-224:lb_avg",
        {"query_spec": "lite0-224:lb_avg&views:lbflip_avg"},
        "1x (query 2x)",
    ),
    ("centre crop avg, flip-averaged both sides", "lite0-224:cc_avg&lite0-224:ccflip_avg", {}, "2x"),
    (
        "letterbox avg, query = full + 5 crops (cc), best per image",
        "lite0-224:lb_avg",
        {"views": "crops_cc_avg"},
        "1x (query 6x)",
    ),
    (
        "letterbox avg, query = full + 5 crops (lb), best per image",
        "lite0-224:lb_avg",
        {"views": "crops_lb_avg"},
        "1x (query 6x)",
    ),
    (
        "letterbox avg, query = full + 5 crops (cc), mean view",
        "lite0-224:lb_avg",
        {"views": "crops_cc_avg", "aggregate": "mean"},
        "1x (query 6x)",
    ),
    (
        "letterbox avg, query = full + 5 crops + flip, best",
        "lite0-224:lb_avg",
        {"views": "crops_cc_avg,lbflip_avg"},
        "1x (query 7x)",
    ),
    (
        "letterbox avg + PCA 128, query = full + 5 crops, best",
        "lite0-224:lb_avg",
        {"views": "crops_cc_avg", "pca": 128},
        "1x (query 6x)",
    ),
    ("letterbox avg + alpha-QE 2", "lite0-224:lb_avg", {"qe": 2}, "1x"),
    ("letterbox avg + PCA 128 + alpha-QE 2", "lite0-224:lb_avg", {"pca": 128, "qe": 2}, "1x"),
    ("letterbox avg + PCA 128 + alpha-DBA 5", "lite0-224:lb_avg", {"pca": 128, "dba": 5}, "1x"),
    ("letterbox avg + colour 0.1", "lite0-224:lb_avg", {"colour": 0.1}, "1x"),
    (
        "centre crop avg, query = full + 5 crops, best per image",
        "lite0-224:cc_avg",
        {"views": "crops_cc_avg"},
        "1x (query 6x)",
    ),
    (
        "centre crop avg + PCA 128, query = full + 5 crops, best",
        "lite0-224:cc_avg",
        {"views": "crops_cc_avg", "pca": 128},
        "1x (query 6x)",
    ),
    ("centre crop avg + PCA 128 + alpha-QE 2", "lite0-224:cc_avg", {"pca": 128, "qe": 2}, "1x"),
    ("centre crop avg + PCA 128 + colour 0.05", "lite0-224:cc_avg", {"pca": 128, "colour": 0.05}, "1x"),
    (
        "centre crop avg + PCA 128 + 5 crops + colour 0.05",
        "lite0-224:cc_avg",
        {"pca": 128, "views": "crops_cc_avg", "colour": 0.05},
        "1x (query 6x)",
    ),
    ("MobileNetV2, letterbox, average pool", "mbv2-224:lb_avg", {}, "0.9x"),
    ("MobileNetV2, centre crop, GeM", "mbv2-224:cc_gem", {}, "0.9x"),
    ("ensemble Lite0 + MobileNetV2 (lb avg, concatenated)", "lite0-224:lb_avg+mbv2-224:lb_avg", {}, "1.9x"),
    ("int8 Lite0, letterbox, average pool", "lite0int8-224:lb_avg", {}, "0.65x"),
    ("int8 Lite0, centre crop + GeM", "lite0int8-224:cc_gem", {}, "0.65x"),
    ("int8 Lite0, centre crop, average pool", "lite0int8-224:cc_avg", {}, "0.65x"),
    ("int8 Lite0, centre crop avg + PCA 128", "lite0int8-224:cc_avg", {"pca": 128}, "0.65x"),
    (
        "int8 Lite0, centre crop avg + PCA 128 + alpha-QE 2",
        "lite0int8-224:cc_avg",
        {"pca": 128, "qe": 2},
        "0.65x",
    ),
    (
        "ensemble, centre crop avg (concatenated) + PCA 128",
        "lite0-224:cc_avg+mbv2-224:cc_avg",
        {"pca": 128},
        "1.9x",
    ),
    (
        "ensemble, centre crop avg + PCA 128 + alpha-QE 2",
        "lite0-224:cc_avg+mbv2-224:cc_avg",
        {"pca": 128, "qe": 2},
        "1.9x",
    ),
    ("letterbox 288, average pool", "lite0-288:lb_avg", {}, "1.65x"),
    ("centre crop 288, GeM", "lite0-288:cc_gem", {}, "1.65x"),
    ("centre crop 288, average pool", "lite0-288:cc_avg", {}, "1.65x"),
    ("centre crop 288 avg + PCA 128", "lite0-288:cc_avg", {"pca": 128}, "1.65x"),
    ("centre crop 288 avg + PCA 128 + alpha-QE 2", "lite0-288:cc_avg", {"pca": 128, "qe": 2}, "1.65x"),
    ("letterbox 288 avg + PCA 128 + alpha-QE 2", "lite0-288:lb_avg", {"pca": 128, "qe": 2}, "1.65x"),
    ("int8 centre crop 288 avg + PCA 128", "lite0int8-288:cc_avg", {"pca": 128}, "1.07x"),
    (
        "int8 centre crop 288 avg + PCA 128 + alpha-QE 2",
        "lite0int8-288:cc_avg",
        {"pca": 128, "qe": 2},
        "1.07x",
    ),
    ("centre crop 256 avg + PCA 128", "lite0-256:cc_avg", {"pca": 128}, "1.31x"),
    ("centre crop 256 avg + PCA 128 + alpha-QE 2", "lite0-256:cc_avg", {"pca": 128, "qe": 2}, "1.31x"),
    ("centre crop 256, average pool", "lite0-256:cc_avg", {}, "1.31x"),
    ("centre crop 256, GeM + PCA 128 + alpha-QE 2", "lite0-256:cc_gem", {"pca": 128, "qe": 2}, "1.31x"),
    ("letterbox 256 avg + PCA 128 + alpha-QE 2", "lite0-256:lb_avg", {"pca": 128, "qe": 2}, "1.31x"),
    ("int8 centre crop 256 avg + PCA 128", "lite0int8-256:cc_avg", {"pca": 128}, "0.85x"),
    (
        "int8 centre crop 256 avg + PCA 128 + alpha-QE 2",
        "lite0int8-256:cc_avg",
        {"pca": 128, "qe": 2},
        "0.85x",
    ),
    ("letterbox 224 + 288 average pool, averaged", "lite0-224:lb_avg&lite0-288:lb_avg", {}, "2.65x"),
]


def part_table(args: argparse.Namespace) -> None:
    cache = Path(args.cache)
    domains = [Domain(d, cache) for d in args.domains.split(",")]
    only = set(args.only.split(",")) if args.only else None
    cols = [(d, p) for d in domains for p in ("loo", "held", "cross")]
    head = ["variant", "extraction cost"] + [
        f"{d.name} {'LOO' if p == 'loo' else 'held-out' if p == 'held' else 'cross'} "
        + ("R@1 / mAP@10" if p == "cross" else "mAP@10")
        for d, p in cols
    ]
    print(
        f"Exact search, {N_QUERIES} queries per domain (seed 0); mAP@10 (Δ vs plain); "
        "cross = R@1 (Δ) / mAP@10.\n"
    )
    print("| " + " | ".join(head) + " |\n|" + "---|" * len(head), flush=True)
    base: dict[tuple[str, str], dict[str, float]] = {}
    for i, (label, spec, kw, cost) in enumerate(VARIANTS):
        if only and str(i) not in only and i != 0:
            continue
        cells = []
        for d in domains:
            try:
                res = run_variant(d, spec, **kw)
            except FileNotFoundError as exc:
                cells += [f"(no {Path(str(exc)).name})"] * 3
                continue
            for p in ("loo", "held", "cross"):
                m = res[p]
                if i == 0:
                    base[(d.name, p)] = m
                b = base[(d.name, p)]
                if p == "cross":
                    cells.append(f"{m['r1']:.3f} ({m['r1'] - b['r1']:+.3f}) / {m['map10']:.3f}")
                else:
                    cells.append(f"{m['map10']:.3f} ({m['map10'] - b['map10']:+.3f})")
        print(f"| {label} | {cost} | " + " | ".join(cells) + " |", flush=True)


# ====================================================================== colour (known answers)
TARGET_HUES = (0, 90, 180, 270)
N_SOURCES, N_COLOUR_QUERIES = 100, 50
COLOUR_WEIGHTS = (0.0, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5)


def dominant_hue(image: np.ndarray) -> tuple[float, float]:
    """(circular mean hue in degrees weighted by saturation, chromatic fraction) of the foreground."""
    from varsitysrch._colour import _CHROMA_MIN, _foreground_mask, _rgb_to_hsv

    h, sat, v = _rgb_to_hsv(image[_foreground_mask(image)])
    chroma = (sat >= _CHROMA_MIN) & (v >= _CHROMA_MIN)
    if not chroma.any():
        return 0.0, 0.0
    ang = 2 * np.pi * h[chroma]
    w = sat[chroma]
    mean = np.degrees(np.arctan2((w * np.sin(ang)).sum(), (w * np.cos(ang)).sum())) % 360
    return float(mean), float(chroma.mean())


def colour_features(domain: str, cache: Path) -> dict[str, np.ndarray]:
    """Recoloured copies with a known colour: each image's dominant hue rotated to 0 / 90 / 180 / 270 degrees.

    ``N_SOURCES`` chromatic images (at least half of the foreground chromatic) become the
    catalogue (4 copies each), ``N_COLOUR_QUERIES`` other chromatic images the queries (4
    copies each).  A result has the query's colour when its copy has the query's target
    hue -- a known answer across different products.  Also the colour signature of every
    original image (the library's function at the library's decode size).
    """
    from PIL import Image

    from varsitysrch._colour import _COLOUR_DECODE_SIZE, colour_signature
    from varsitysrch._images import _fit, load_image

    f = cache / f"{domain}-colour2.npz"
    if f.exists():
        with np.load(f) as z:
            return {k: z[k] for k in z.files}
    ids, _, _ = manifest(domain)
    t0 = time.perf_counter()
    sig_all = np.stack(
        [colour_signature(load_image(DOMAINS[domain] / i, _COLOUR_DECODE_SIZE, "letterbox")) for i in ids]
    )
    print(
        f"  {domain}: colour signatures of {len(ids)} images in {time.perf_counter() - t0:.0f}s", flush=True
    )
    rng = np.random.default_rng(2)
    order = rng.permutation(len(ids))
    sess, fmap_name = fmap_session("efficientnet-lite0")
    acc: dict[str, list[np.ndarray]] = {}
    picked = {"cat": 0, "query": 0}
    want = {"cat": N_SOURCES, "query": N_COLOUR_QUERIES}
    for r in order:
        role = "cat" if picked["cat"] < want["cat"] else "query"
        if picked[role] >= want[role]:
            break
        im = _whole_rgb(DOMAINS[domain] / ids[r])
        lb = np.asarray(_fit(im, 224, "letterbox"), np.uint8)
        hue, chroma = dominant_hue(lb)
        if chroma < 0.5:
            continue
        picked[role] += 1
        arr = np.asarray(im, np.uint8)
        for target in TARGET_HUES:
            shifted = Image.fromarray(hue_shift(arr, target - hue))
            cc = np.asarray(_fit(shifted, 224, "center-crop"), np.uint8)
            lbs = np.asarray(_fit(shifted, 224, "letterbox"), np.uint8)
            F = sess.run([fmap_name], {"images": np.stack([lbs, cc])})[0]
            P = pool(F)
            for j, mode in enumerate(("lb", "cc")):
                for k in ("avg", "gem"):
                    acc.setdefault(f"{role}_{mode}_{k}", []).append(P[k][j])
            small = np.asarray(_fit(shifted, _COLOUR_DECODE_SIZE, "letterbox"), np.uint8)
            acc.setdefault(f"{role}_colour", []).append(colour_signature(small))
            acc.setdefault(f"{role}_row", []).append(np.array(r))
            acc.setdefault(f"{role}_hue", []).append(np.array(target))
    out = {k: np.stack(v) for k, v in acc.items()}
    out["colour_all"] = sig_all
    np.savez(f, **out)
    print(f"  {domain}: recoloured copies in {time.perf_counter() - t0:.0f}s", flush=True)
    return out


def refresh_signatures(domain: str, cache: Path, cf: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Recompute the colour signatures of ``colour_features`` with the current signature code.

    The CNN vectors of the recoloured copies are kept; the copies are recoloured again from the
    224 px letterboxed photo (same rows, same target hues) and fitted to the signature's size.
    """
    from PIL import Image

    from varsitysrch._colour import _COLOUR_DECODE_SIZE, colour_signature
    from varsitysrch._images import _fit, load_image

    ids, _, _ = manifest(domain)
    t0 = time.perf_counter()
    out = dict(cf)
    out["colour_all"] = np.stack(
        [colour_signature(load_image(DOMAINS[domain] / i, _COLOUR_DECODE_SIZE, "letterbox")) for i in ids]
    )
    for role in ("cat", "query"):
        sigs = []
        for r, target in zip(cf[f"{role}_row"].astype(int), cf[f"{role}_hue"].astype(int), strict=True):
            lb = np.asarray(_fit(_whole_rgb(DOMAINS[domain] / ids[r]), 224, "letterbox"), np.uint8)
            hue, _ = dominant_hue(lb)
            shifted = Image.fromarray(hue_shift(lb, target - hue))
            sigs.append(colour_signature(np.asarray(_fit(shifted, _COLOUR_DECODE_SIZE, "letterbox"))))
        out[f"{role}_colour"] = np.stack(sigs)
    print(f"  {domain}: signatures recomputed in {time.perf_counter() - t0:.0f}s", flush=True)
    return out


def part_colour(args: argparse.Namespace) -> None:
    cache = Path(args.cache)
    feat = args.colour_features
    pca = args.colour_pca
    print(
        f"Colour weight w: score = (1 - w) cosine + w colour similarity; CNN features {feat}"
        f"{f' + PCA {pca}' if pca else ''}, exact search.\n\n"
        f"Known-answer protocol: {N_SOURCES} chromatic catalogue images per domain recoloured so that their "
        f"dominant hue is {TARGET_HUES} degrees (4 copies each = the catalogue), {N_COLOUR_QUERIES} other "
        "chromatic images recoloured the same way as queries. same-hue@10 = top-10 results with the "
        "query's target hue (chance 0.25); type P@10 = same class; type+hue P@10 = both. Real data: the "
        "leave-one-out and cross-domain protocols with the same weight.\n"
    )
    rows: dict[str, list[str]] = {}
    head = ["w"]
    for domain in args.domains.split(","):
        D = Domain(domain, cache)
        cf = colour_features(domain, cache)
        if args.refresh_signatures:
            cf = refresh_signatures(domain, cache, cf)
        X = D.X(f"lite0-224:{feat}")
        cols_all = _norm(cf["colour_all"])
        C, Cc = _norm(cf[f"cat_{feat}"]), _norm(cf["cat_colour"])
        Qv, Qc = _norm(cf[f"query_{feat}"]), _norm(cf["query_colour"])
        cy, ch = D.y[cf["cat_row"].astype(int)], cf["cat_hue"].astype(int)
        qy, qh = D.y[cf["query_row"].astype(int)], cf["query_hue"].astype(int)
        sp = search_space(C, pca) if pca else None
        Cs, Qs = project(C, sp), project(Qv, sp)
        q = D.p["q"]
        spX = search_space(X, pca) if pca else None
        Xs = project(X, spX)
        cc = D.p["cross_cat"]
        head += [
            f"{domain} same-hue@10",
            f"{domain} type P@10",
            f"{domain} type+hue P@10",
            f"{domain} LOO P@10 / mAP@10",
            f"{domain} cross R@1",
        ]
        for w in COLOUR_WEIGHTS:
            S = (1 - w) * (Qs @ Cs.T) + w * (Qc @ Cc.T)
            top = np.argsort(-S, axis=1)[:, :10]
            hue_ok = ch[top] == qh[:, None]
            type_ok = cy[top] == qy[:, None]
            loo = metrics((1 - w) * (Xs[q] @ Xs.T) + w * (cols_all[q] @ cols_all.T), D.y[q], D.y, q)
            Xc = project(X[cc], None)
            cross = metrics(
                (1 - w) * (project(X[q], None) @ Xc.T) + w * (cols_all[q] @ cols_all[cc].T),
                D.y[q],
                D.y[cc],
                None,
            )
            rows.setdefault(f"{w:g}", []).extend(
                [
                    f"{hue_ok.mean():.3f}",
                    f"{type_ok.mean():.3f}",
                    f"{(hue_ok & type_ok).mean():.3f}",
                    f"{loo['p10']:.3f} / {loo['map10']:.3f}",
                    f"{cross['r1']:.3f}",
                ]
            )
    print("| " + " | ".join(head) + " |\n|" + "---|" * len(head))
    for w, cells in rows.items():
        print(f"| {w} | " + " | ".join(cells) + " |", flush=True)


# ====================================================================== extraction speed
OLD_DEFAULT = {"resize": "center-crop", "pooling": "gem", "input_size": 224, "quantized": False}


def _options(text: str) -> dict[str, Any]:
    """``k=v,k=v`` -> extract_features keyword arguments (``extractor=NAME`` names the network)."""
    out: dict[str, Any] = {}
    for part in filter(None, text.split(",")):
        k, v = part.split("=", 1)
        out[k] = {"true": True, "false": False}.get(v, int(v) if v.isdigit() else v)
    return out


def part_speed(args: argparse.Namespace) -> None:
    """extract_features img/s: the old default and the new default, alternating, same images, one run."""
    import shutil

    from varsitysrch import extract_features

    work = Path(args.cache) / "speed"
    imgs = work / "images"
    if not imgs.exists():
        for domain, n in (("clothing", 200), ("grocery", 100)):
            ids, _, _ = manifest(domain)
            for i in np.random.default_rng(5).choice(len(ids), n, replace=False):
                dst = imgs / domain / ids[i]
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(DOMAINS[domain] / ids[i], dst)
    n_img = sum(1 for _ in imgs.rglob("*.jpg"))
    new = {} if args.new_options == "default" else _options(args.new_options)  # {}: the library's default
    runs: dict[str, list[float]] = {
        "old default": [],
        "new default": [],
        "new default + colour signatures": [],
    }
    configs = [("old default", OLD_DEFAULT), ("new default", new)]
    for also in args.also_options or ():
        configs.append((f"also {also}", _options(also)))
        runs[configs[-1][0]] = []
    for rep in range(args.repeats):
        for name, opts in configs:
            out = work / f"feats-{rep}-{name.replace(' ', '-')}"
            shutil.rmtree(out, ignore_errors=True)
            t = time.perf_counter()
            extract_features(imgs, out, show_progress=False, **opts)
            dt = time.perf_counter() - t
            runs[name].append(n_img / dt)
            if name == "new default":  # extract_features writes the colour rows with the vectors
                runs["new default + colour signatures"].append(n_img / dt)
            shutil.rmtree(out, ignore_errors=True)
            print(f"  run {rep} {name}: {n_img / dt:.1f} img/s", flush=True)
    print(
        f"\nextract_features on {n_img} photos (200 clothing-small + 100 grocery-train), runs alternating, "
        f"{args.repeats} each, median img/s; new default options {new}:\n"
    )
    print("| extraction | img/s (median) | runs | vs old default |\n|---|---|---|---|")
    base = float(np.median(runs["old default"]))
    for name, v in runs.items():
        med = float(np.median(v))
        print(f"| {name} | {med:.1f} | {', '.join(f'{x:.1f}' for x in v)} | {med / base:.2f}x |")


# ====================================================================== the same protocols through evaluate()
API_FEATURES = {
    "plain": ("lb_avg", {"resize": "letterbox", "pooling": "pooled", "input_size": 224, "quantized": False}),
    "old": ("cc_gem", {"resize": "center-crop", "pooling": "gem", "input_size": 224, "quantized": False}),
    "new": ("cc_avg", {"resize": "center-crop", "pooling": "pooled", "input_size": 224, "quantized": False}),
}


def cross_domain_protocol(domain: str, out: Path) -> tuple[Path, Path]:
    """The cross-domain protocol as files: a catalogue folder (copies) and a CSV of separate query photos."""
    import shutil

    ids, y, names = manifest(domain)
    p = protocol(domain)
    cat = out / "catalogue"
    if not cat.exists():
        tmp = out / "catalogue.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        for r in p["cross_cat"]:
            dst = tmp / ids[r]
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(DOMAINS[domain] / ids[r], dst)
        tmp.rename(cat)
    qcsv = out / "queries.csv"
    with open(qcsv, "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", "label"])
        w.writerows((ids[r], names[y[r]]) for r in p["q"])
    return cat, qcsv


def part_api(args: argparse.Namespace) -> None:
    """LOO / held-out (feature stores made of the cached vectors) and cross-domain (real extraction)."""
    from varsitysrch import evaluate, get_extractor
    from varsitysrch._store import FeatureStore

    cache = Path(args.cache)
    for domain in args.domains.split(","):
        D = Domain(domain, cache)
        base = cache / "api" / domain
        held_ids = [D.ids[r] for r in D.p["q"]]
        for name, (key, opts) in API_FEATURES.items() if not args.cross_only else ():
            store = base / f"store-{name}"
            if not (store / "store.json").exists():
                ident = get_extractor("efficientnet-lite0", **opts).identity()
                FeatureStore.write(store, D.ids, D.X(f"lite0-224:{key}"), ident)
            for split, qs in (("leave-one-out", None), ("held-out", held_ids)):
                rep = evaluate(
                    store,
                    labels=DOMAINS[domain] / "manifest.csv",
                    configs=["x+pca=0", "x+pca=128"],
                    k_values=(20,),
                    nprobes=(None,),
                    query_split=qs,
                    n_queries=N_QUERIES,
                    out_dir=base / f"eval-{name}-{split}",
                    seed_baseline=False,
                    n_latency=0,
                )
                for r in rep.rows:
                    print(
                        f"| {domain} | {split} | {name} ({key}) | {r['config']} | {r['method']} "
                        f"{r['nprobe_label']} | {r['precision']:.3f} | {r['map']:.3f} | {r['r1']:.3f} |",
                        flush=True,
                    )
        cat, qcsv = cross_domain_protocol(domain, base / "cross")
        fp224 = "input_size=224,quantized=false"
        cfgs = [
            f"efficientnet-lite0:resize=letterbox,pooling=pooled,{fp224}+pca=0+qe=0",  # plain
            f"efficientnet-lite0:resize=center-crop,pooling=gem,{fp224}+qe=0",  # old default
            "efficientnet-lite0+qe=0",  # the default without its query expansion
            "efficientnet-lite0+qe=0+crops",  # + multi-crop queries (opt-in)
            "efficientnet-lite0+qe=0+colour=0.15",  # + "match colour"
            "efficientnet-lite0",  # the default: + query expansion (2)
        ]
        rep = evaluate(
            cat,
            configs=cfgs,
            k_values=(10,),
            nprobes=(None,),
            queries_dir=DOMAINS[domain],
            queries_csv=qcsv,
            n_queries=None,
            out_dir=base / "cross" / "eval",
            seed_baseline=False,
            n_latency=20,
        )
        for r in rep.rows:
            print(
                f"| {domain} | cross-domain | {r['config']} | {r['method']} {r['nprobe_label']} | "
                f"R@1 {r['r1']:.3f} | R@5 {r['r5']:.3f} | mAP@10 {r['map']:.3f} | "
                f"embed+search p50 {r['embed_search_ms_p50']} ms |",
                flush=True,
            )


# ====================================================================== the library's default, end to end
def part_real(args: argparse.Namespace) -> None:
    """LOO and held-out through evaluate() with real extraction: plain, old default, the default
    without its query expansion, the default."""
    from varsitysrch import evaluate

    plain = "efficientnet-lite0:resize=letterbox,pooling=pooled,input_size=224,quantized=false+pca=0+qe=0"
    old = "efficientnet-lite0:resize=center-crop,pooling=gem,input_size=224,quantized=false+qe=0"
    print("| domain | queries | config | method | P@10 | mAP@10 |\n|---|---|---|---|---|---|")
    for domain in args.domains.split(","):
        for split in (None, HELD_OUT):
            rep = evaluate(
                DOMAINS[domain],
                labels=DOMAINS[domain] / "manifest.csv",
                configs=[plain, old, "efficientnet-lite0+qe=0", "efficientnet-lite0"],
                k_values=(20,),
                nprobes=(None,),
                query_split=split,
                n_queries=N_QUERIES,
                out_dir=Path(args.cache) / "real" / domain,
                seed_baseline=False,
                n_latency=0,
                report_stem=f"eval-{split}",
            )
            for r in rep.rows:
                print(
                    f"| {domain} | {'LOO' if split is None else f'held-out {split:g}'} | `{r['config']}` | "
                    f"{r['method']} {r['nprobe_label']} | {r['precision']:.3f} | {r['map']:.3f} |",
                    flush=True,
                )


# ====================================================================== studio proxy + QE self-handling
def embed_default_views(domain: str, out: Path, rows: np.ndarray, studio: bool | None = None) -> np.ndarray:
    """Average-pooled vectors of the default extractor (int8, centre crop 256): the five 70 % crops of
    each row (``studio=None``), or one synthetic studio shot per row -- a random 60 % crop (seeded by
    the row), on a white canvas with a 15 % margin when ``studio`` (the bare crop otherwise)."""
    if out.exists():
        return np.load(out)
    from PIL import Image

    from varsitysrch._images import _fit
    from varsitysrch._query import crop_boxes

    sess, fm = fmap_session("efficientnet-lite0", True)
    ids, _, _ = manifest(domain)
    acc = []
    for r in rows:
        im = _whole_rgb(DOMAINS[domain] / ids[r])
        if studio is None:
            parts = [im.crop(b) for b in crop_boxes(*im.size)[1:]]
        else:
            w, h = im.size
            cw, ch = round(w * 0.6), round(h * 0.6)
            rng = np.random.default_rng(int(r))
            x0, y0 = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
            part = im.crop((x0, y0, x0 + cw, y0 + ch))
            if studio:
                m = round(0.15 * max(cw, ch))
                canvas = Image.new("RGB", (cw + 2 * m, ch + 2 * m), (255, 255, 255))
                canvas.paste(part, (m, m))
                part = canvas
            parts = [part]
        views = np.stack([np.asarray(_fit(p, 256, "center-crop"), np.uint8) for p in parts])
        acc.append(sess.run([fm], {"images": views})[0].mean((2, 3)))
    arr = np.stack(acc)
    np.save(out, arr)
    return arr


def _qe_scores(
    S: np.ndarray, Qs: np.ndarray, Cs: np.ndarray, sc: np.ndarray, include_self: bool, skip: float | None
) -> np.ndarray:
    """Scores after alpha-QE with 2 neighbours picked from ``S`` (the query's own column ``sc``
    left out unless ``include_self``; results at or above ``skip`` never expand)."""
    from varsitysrch._postprocess import expand_query

    sims = S.copy()
    if not include_self:
        sims[np.arange(len(sims)), sc] = -np.inf
    if skip is not None:
        sims[sims >= skip] = -np.inf
    nn = np.argsort(-sims, axis=1)[:, :2]
    Qe = np.stack([expand_query(Qs[i], Cs[nn[i]], sims[i, nn[i]]) for i in range(len(Qs))])
    return Qe @ Cs.T


def part_studio(args: argparse.Namespace) -> None:
    """Query crops with a discount, on the three protocols and two studio proxies; QE and the query itself."""
    cache = Path(args.cache)
    discounts = (0.0, 0.03, 0.05, 0.07, 0.1)
    print(
        "Default features (int8, centre crop 256, average pool, search PCA 128 from 1,000 images), exact "
        "search, 600 queries. Query = the whole photo + five 70 % crops, each catalogue image scored by "
        "max(whole, best crop - d). Studio proxies: one photo per product (grocery) / five per class "
        "(clothing) from outside the queries, shown as a random 60 % crop, bare or on a white canvas.\n"
    )
    head = " | ".join(f"crops, d={d}" for d in discounts)
    print(f"| domain | protocol | whole photo R@1 / mAP@10 | {head} |")
    print("|---" * (3 + len(discounts)) + "|")
    qe_rows = []
    for dname in args.domains.split(","):
        D = Domain(dname, cache)
        q = D.p["q"]
        y = D.y
        V5 = _norm(embed_default_views(dname, cache / f"{dname}-views256.npy", q))
        cc = D.p["cross_cat"]
        per = 1 if dname == "grocery" else 5
        one = np.sort(np.concatenate([cc[y[cc] == lab][:per] for lab in range(int(y.max()) + 1)]))
        X = _norm(D.feats("lite0int8-256")["cc_avg"])
        cats: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray | None]] = {}
        for name in ("loo", "held", "cross"):
            cat, self_col = D.protocols()[name]
            cats[name] = (cat, X[cat], self_col)
        for name, white in (("studio proxy, bare crop", False), ("studio proxy, on white", True)):
            f = cache / f"{dname}-zoomr60{'w' if white else ''}.npy"
            cats[name] = (one, _norm(embed_default_views(dname, f, one, white)[:, 0]), None)
        for name, (cat, C, self_col) in cats.items():
            sp = search_space(C, 128)
            Cs, Qs, Vs = project(C, sp), project(X[q], sp), project(V5, sp)
            S = Qs @ Cs.T
            Sc = np.einsum("qvd,nd->qvn", Vs, Cs).max(1)
            sc = None
            if self_col is not None:
                pos = {int(c): j for j, c in enumerate(cat)}
                sc = np.array([pos[int(r)] for r in q])
            cells = []
            for d in (None, *discounts):
                m = metrics(S if d is None else np.maximum(S, Sc - d), y[q], y[cat], sc)
                cells.append(f"{m['r1']:.3f} / {m['map10']:.3f}")
            print(f"| {dname} | {name} | " + " | ".join(cells) + " |", flush=True)
            if sc is None or name != "loo":
                continue

            cells = [f"{metrics(S, y[q], y[cat], sc)['map10']:.3f}"]
            for include_self, skip in ((False, None), (True, None), (True, 0.99)):
                Se = _qe_scores(S, Qs, Cs, sc, include_self, skip)
                cells.append(f"{metrics(Se, y[q], y[cat], sc)['map10']:.3f}")
            qe_rows.append(f"| {dname} | " + " | ".join(cells) + " |")
    from varsitysrch._colour import _PLAIN_BORDER_SHARE, PLAIN_DECODE_SIZE, border_share
    from varsitysrch._images import load_image
    from varsitysrch._query import CLUTTERED_BORDER_SHARE

    print(
        "\nEvery photo of the domain: with a plain background (the library's flag, border share >= "
        f"{_PLAIN_BORDER_SHARE}) / clearly cluttered (views=auto crops it as a query against a studio "
        f"catalogue, border share < {CLUTTERED_BORDER_SHARE}):"
    )
    for dname in args.domains.split(","):
        ids, _, _ = manifest(dname)
        sh = np.array(
            [border_share(load_image(DOMAINS[dname] / i, PLAIN_DECODE_SIZE, "squash")) for i in ids]
        )
        print(
            f"  {dname}: plain {int((sh >= _PLAIN_BORDER_SHARE).sum())} of {len(ids)}, cluttered "
            f"{int((sh < CLUTTERED_BORDER_SHARE).sum())} of {len(ids)}"
        )
    print(
        "\nalpha-QE (2 neighbours) under leave-one-out, mAP@10: the query's own image kept out of the "
        "expansion, searched with it in the catalogue as search_similar_images does (it takes one of the "
        "two slots), and with results at cosine >= 0.99 to the query skipped (the library's rule):\n"
    )
    print("| domain | no QE | QE, self excluded | QE, self in the catalogue | QE, copies >= 0.99 skipped |")
    print("|---|---|---|---|---|")
    print("\n".join(qe_rows))


# ====================================================================== int8 against fp32, unrounded
def part_int8(args: argparse.Namespace) -> None:
    """What int8 costs the default (centre crop 256, average pool, PCA 128), with and without QE."""
    cache = Path(args.cache)
    print("| domain | query expansion | LOO mAP@10 fp32 - int8 | held-out | cross mAP@10 | cross R@1 |")
    print("|---|---|---|---|---|---|")
    for dname in args.domains.split(","):
        D = Domain(dname, cache)
        for qe in (0, 2):
            a = run_variant(D, "lite0-256:cc_avg", pca=128, qe=qe)
            b = run_variant(D, "lite0int8-256:cc_avg", pca=128, qe=qe)
            cells = [f"{a[p]['map10'] - b[p]['map10']:+.4f}" for p in ("loo", "held", "cross")]
            cells.append(f"{a['cross']['r1'] - b['cross']['r1']:+.4f}")
            print(f"| {dname} | {qe} | " + " | ".join(cells) + " |", flush=True)


# ====================================================================== main
def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(
        prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    benchdata.add_data_argument(ap, list(DEV_SET.values()))
    ap.add_argument(
        "--part",
        choices=["features", "table", "colour", "speed", "api", "real", "studio", "int8"],
        default="table",
    )
    ap.add_argument(
        "--cache",
        "--work",
        dest="cache",
        default=str(Path(tempfile.gettempdir()) / "varsitysrch-eval-domains"),
        help="cache folder (vectors, stores, models); default %(default)s",
    )
    ap.add_argument("--domains", default="grocery,clothing")
    ap.add_argument("--variants", default="lite0-224,views,mbv2-224,lite0int8-224,lite0-288")
    ap.add_argument("--only", default="", help="comma-separated row numbers of the table (plain always)")
    ap.add_argument("--colour-features", default="cc_avg", help="CNN features of the colour protocol")
    ap.add_argument("--colour-pca", type=int, default=128, help="search-space PCA of the colour protocol")
    ap.add_argument(
        "--refresh-signatures",
        action="store_true",
        help="colour: recompute the signatures with the current code",
    )
    ap.add_argument(
        "--new-options", default="resize=center-crop,pooling=pooled", help="new default extractor"
    )
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument(
        "--also-options", action="append", help="speed: another extractor configuration (repeatable)"
    )
    ap.add_argument("--cross-only", action="store_true", help="api: only the cross-domain protocol")
    args = ap.parse_args(argv)
    use_data(PROG, args.data, [d for d in args.domains.split(",") if d])
    {
        "features": part_features,
        "table": part_table,
        "colour": part_colour,
        "speed": part_speed,
        "api": part_api,
        "real": part_real,
        "studio": part_studio,
        "int8": part_int8,
    }[args.part](args)


if __name__ == "__main__":
    sys.path.insert(0, str(REPO / "src"))
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
