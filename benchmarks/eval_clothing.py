"""Search quality on clothing-small: every configuration and baseline in one run.

    python benchmarks/eval_clothing.py --data DIR [--out OUT] [--queries 2000]   # DIR/clothing-small
    python benchmarks/eval_clothing.py --data DIR --split 0.25  # held-out: catalogue stats never see them
    python benchmarks/eval_clothing.py --data DIR --ablation    # flip / multi-scale / whitening / colour

Data: ``IMG_DIR``, or ``clothing-small/`` under ``--data`` / ``$VARSITYSRCH_DATA`` (labels from its
``manifest.csv``, else the sub-folder).  Feature stores and reports go to ``--out`` (default
``<system temp>/varsitysrch-eval-clothing``).

Part 1 (default) calls :func:`varsitysrch.evaluate` -- the code path of ``varsitysrch
eval`` -- with 2,000 leave-one-out queries, relevance = same class, k = 20, nprobe
1 / 2 / 4 / calibrated, for the old default (letterbox + average pooling, plain cosine),
each feature change, the default (centre crop + GeM, search-space PCA 128) and each of
its parts, opt-in query expansion, database-side augmentation, whitening, colour
re-ranking, int8, a larger input and MobileNetV2.  It writes ``eval.json``, ``eval.md``
and ``eval.html`` into ``--out`` (feature stores are cached there: a rerun only
re-searches).

Part 2 (``--ablation``) measures what ``evaluate`` configurations cannot express --
test-time flip averaging and multi-scale averaging -- by embedding every image
directly, plus parameter sweeps (DBA / QE neighbours, whitening dims, colour weight) on
the same queries, with exact search.

Part 1 is the public ``varsitysrch.evaluate``.  **Part 2 measures internals and prototypes, not
what users get** (direct ONNX sessions, ``varsitysrch._postprocess`` helpers, some of which issue
20 removes); the public-pipeline replacement for such decisions is ``benchmarks/dev_domains.py``.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchdata

PROG = "eval_clothing.py"

OLD = "efficientnet-lite0:resize=letterbox,pooling=pooled"
PLAIN = "+pca=0+qe=0"  # plain cosine on the raw vectors
CONFIGS = [
    OLD + PLAIN,  # the default before this change: the baseline
    "efficientnet-lite0:resize=letterbox,pooling=gem" + PLAIN,
    "efficientnet-lite0:resize=center-crop,pooling=pooled" + PLAIN,
    "efficientnet-lite0" + PLAIN,  # adopted extractor (centre crop + GeM), plain cosine
    "efficientnet-lite0+qe=0",  # + search-space PCA 128 (train_clusters' default), no expansion
    "efficientnet-lite0+pca=256",
    "efficientnet-lite0+pca=0+qe=2",  # query expansion alone
    "efficientnet-lite0+qe=2",  # + query expansion (train_clusters' default since the two-domain round)
    "efficientnet-lite0+dba=5+qe=0",
    "efficientnet-lite0+pca=128+dba=5+qe=2",
    "efficientnet-lite0+whiten=256",
    "efficientnet-lite0+pwhiten=0.25",
    "efficientnet-lite0+colour=0.1",
    "efficientnet-lite0:quantized=true" + PLAIN,
    "efficientnet-lite0:quantized=true",
    "efficientnet-lite0:quantized=true+qe=2",
    "efficientnet-lite0:input_size=288,resize=letterbox,pooling=gem" + PLAIN,
    "mobilenet-v2:resize=letterbox,pooling=pooled" + PLAIN,
]


def part_eval(args: argparse.Namespace) -> None:
    from varsitysrch import evaluate

    stem = "eval" if args.split is None else f"eval-split{args.split:g}"
    configs = CONFIGS
    if args.quick or args.split:
        configs = [
            OLD + PLAIN,
            "efficientnet-lite0" + PLAIN,
            "efficientnet-lite0+qe=0",
            "efficientnet-lite0+qe=2",
        ]
    t = time.perf_counter()
    report = evaluate(
        args.img_dir,
        labels=Path(args.img_dir) / "manifest.csv"
        if (Path(args.img_dir) / "manifest.csv").exists()
        else None,
        configs=configs,
        k_values=(20,),
        nprobes=(1, 2, 4, None),
        query_split=args.split,
        n_queries=args.queries,
        out_dir=args.out,
        random_state=0,
        n_latency=args.latency,
        threads=args.threads,
        show_progress=False,
        report_stem=stem,
    )
    print(report.to_markdown())
    print(f"({time.perf_counter() - t:.0f}s; written to {args.out}/{stem}.json, .md, .html)")


# ------------------------------------------------------------------ ablation (direct embedding)
def _embed(
    root: Path, ids: list[str], size: int, resize: str, flip: bool, threads: int
) -> dict[str, np.ndarray]:
    from varsitysrch import get_extractor
    from varsitysrch._extract import _iter_decoded
    from varsitysrch._extractors import _onnx_model_bytes, _session

    sess = _session(_onnx_model_bytes(get_extractor("efficientnet-lite0")), threads or os.cpu_count() or 1)
    out: dict[str, list[np.ndarray]] = {"pooled": [], "gem": [], "pooled_flip": [], "gem_flip": []}
    for _, batch, bad in _iter_decoded(
        root, ids, batch_size=32, size=size, resize=resize, workers=2, prefetch=2
    ):
        assert not bad, bad
        p, g = sess.run(["pooled", "gem"], {"images": batch})
        out["pooled"].append(p)
        out["gem"].append(g)
        if flip:
            p, g = sess.run(["pooled", "gem"], {"images": np.ascontiguousarray(batch[:, :, ::-1])})
            out["pooled_flip"].append(p)
            out["gem_flip"].append(g)
    return {k: np.concatenate(v) for k, v in out.items() if v}


def part_ablation(args: argparse.Namespace) -> None:
    from varsitysrch._evaluate import _average_precision_at_k, _precision_at_k
    from varsitysrch._postprocess import augment_rows, expand_query, fit_whitening, neighbour_lists
    from varsitysrch._store import normalize_rows as norm

    root = Path(args.img_dir)
    ids = benchdata.image_ids(root)
    labels_map = {i: i.split("/", 1)[0] for i in ids}
    man = root / "manifest.csv"
    if man.exists():
        with open(man, encoding="utf-8") as f:
            labels_map.update({r["path"]: r["label"] for r in csv.DictReader(f)})
    _, y = np.unique([labels_map[i] for i in ids], return_inverse=True)
    rng = np.random.default_rng(0)
    qi = np.sort(rng.choice(len(ids), min(args.queries, len(ids)), replace=False))
    n_rel = np.bincount(y)[y[qi]] - 1
    cache = Path(args.out) / "ablation"
    cache.mkdir(parents=True, exist_ok=True)

    def feats(size: int, resize: str, flip: bool) -> dict[str, np.ndarray]:
        f = cache / f"{size}-{resize}-{'flip' if flip else 'noflip'}.npz"
        if f.exists():
            with np.load(f) as z:
                return {k: z[k] for k in z.files}
        t = time.perf_counter()
        d = _embed(root, ids, size, resize, flip, args.threads)
        print(
            f"  embedded {len(ids)} images at {size} {resize}{' + flip' if flip else ''} "
            f"in {time.perf_counter() - t:.0f}s",
            flush=True,
        )
        np.savez(f, **d)
        return d

    def score(S: np.ndarray) -> tuple[float, float]:
        S = S.copy()
        S[np.arange(len(qi)), qi] = -np.inf
        top = np.argsort(-S, axis=1)[:, :10]
        rel = y[top] == y[qi][:, None]
        return float(_precision_at_k(rel, 10).mean()), float(_average_precision_at_k(rel, n_rel, 10).mean())

    def exact(X: np.ndarray) -> tuple[float, float]:
        X = norm(X)
        return score(X[qi] @ X.T)

    def line(name: str, pm: tuple[float, float], base: tuple[float, float]) -> None:
        print(f"| {name} | {pm[0]:.3f} | {pm[1]:.3f} | {pm[1] - base[1]:+.3f} |", flush=True)

    print(f"Exact search, {len(qi)} leave-one-out queries of {len(ids)} images, relevance = same class.\n")
    print("| variant | P@10 | mAP@10 | ΔmAP vs letterbox+avg |\n|---|---|---|---|")
    lb = feats(224, "letterbox", True)
    cc = feats(224, "center-crop", True)
    base = exact(lb["pooled"])
    line("letterbox 224, average pool (old default)", base, base)
    line("letterbox 224, GeM", exact(lb["gem"]), base)
    line(
        "letterbox 224, avg + flip averaging (2x cost)",
        exact(norm(lb["pooled"]) + norm(lb["pooled_flip"])),
        base,
    )
    line("squash 224, average pool", exact(feats(224, "squash", False)["pooled"]), base)
    line("centre crop 224, average pool", exact(cc["pooled"]), base)
    ccg = norm(cc["gem"])
    line("centre crop 224, GeM (adopted default)", exact(ccg), base)
    line("centre crop 224, GeM + flip averaging (2x cost)", exact(ccg + norm(cc["gem_flip"])), base)
    c288 = feats(288, "center-crop", False)
    line("centre crop 288, GeM (1.65x cost)", exact(c288["gem"]), base)
    line("centre crop 224+288 GeM averaged (2.65x cost)", exact(ccg + norm(c288["gem"])), base)
    l288 = feats(288, "letterbox", False)
    line("letterbox 288, GeM (1.65x cost)", exact(l288["gem"]), base)
    line("letterbox 224+288 GeM averaged (2.65x cost)", exact(norm(lb["gem"]) + norm(l288["gem"])), base)

    X = ccg
    print("\nPost-processing on the adopted features (centre crop 224 + GeM), exact search:\n")
    print("| variant | P@10 | mAP@10 | ΔmAP vs letterbox+avg |\n|---|---|---|---|")
    line("none", exact(X), base)
    for d in (64, 128, 256, 512):
        line(f"PCA to {d} (no whitening)", exact(fit_whitening(X, d, power=0.0).apply(X)), base)
    for d in (128, 256, 1024):
        line(f"PCA whitening to {d}", exact(fit_whitening(X, d).apply(X)), base)
    for d, s in ((256, 1.0),):
        line(f"PCA whitening to {d}, shrinkage {s}", exact(fit_whitening(X, d, shrinkage=s).apply(X)), base)
    for p in (0.1, 0.25):
        line(f"partial whitening, power {p}", exact(fit_whitening(X, None, power=p).apply(X)), base)

    # alpha-QE / alpha-DBA, leave-one-out exact (DBA recomputed without the query)
    def qe_dba(n_qe: int, n_dba: int, alpha: float = 3.0) -> tuple[float, float]:
        idx, sims = neighbour_lists(X, n_dba + 1)
        D = augment_rows(X, idx[:, :n_dba], sims[:, :n_dba], alpha) if n_dba > 1 else X
        S = np.empty((len(qi), len(X)), np.float32)
        for r, q in enumerate(qi):
            Dq = D
            if n_dba > 1:
                owners = np.nonzero((idx[:, :n_dba] == q).any(1))[0]
                owners = owners[owners != q]
                if len(owners):
                    Dq = D.copy()
                    keep = idx[owners] != q
                    ni = np.stack([i[m][:n_dba] for i, m in zip(idx[owners], keep, strict=True)])
                    ns = np.stack([s[m][:n_dba] for s, m in zip(sims[owners], keep, strict=True)])
                    Dq[owners] = augment_rows(X, ni, ns, alpha)
            v = X[q]
            if n_qe:
                s = Dq @ v
                s[q] = -np.inf
                nn = np.argsort(-s)[:n_qe]
                v = expand_query(v, Dq[nn], s[nn], alpha)
            S[r] = Dq @ v
        return score(S)

    for n in (1, 2, 3, 5):
        line(f"alpha-QE, {n} neighbours", qe_dba(n, 0), base)
    for n in (3, 5, 10):
        line(f"alpha-DBA, {n} neighbours", qe_dba(0, n), base)
    for n in (3, 5, 10):
        line(f"alpha-DBA {n} + alpha-QE 2", qe_dba(2, n), base)

    from varsitysrch._images import load_image

    def colour_descriptor(image: np.ndarray, bins: int = 4, white: int = 245) -> np.ndarray:
        """The RGB-histogram prototype measured here (the library dropped it for _colour's signature)."""
        a = np.asarray(image, np.uint8).reshape(-1, 3)
        fg = a[(a < white).any(1)]  # drop letterbox / studio white
        fg = fg if len(fg) >= 16 else a
        q = (fg.astype(np.int32) * bins) // 256
        h = np.bincount((q[:, 0] * bins + q[:, 1]) * bins + q[:, 2], minlength=bins**3).astype(np.float32)
        h = np.sqrt(h / max(1.0, float(h.sum())))
        return h / max(float(np.linalg.norm(h)), 1e-12)

    t = time.perf_counter()
    C = np.stack([colour_descriptor(load_image(root / i, 96, "letterbox")) for i in ids])
    print(f"\n(colour histograms of {len(ids)} images in {time.perf_counter() - t:.0f}s)\n")
    print("| colour weight | P@10 | mAP@10 | ΔmAP vs letterbox+avg |\n|---|---|---|---|")
    S0 = X[qi] @ X.T
    Sc = C[qi] @ C.T
    line("colour histogram alone", score(Sc), base)
    for w in (0.0, 0.05, 0.1, 0.2, 0.3):
        line(f"(1 - {w}) cosine + {w} colour", score((1 - w) * S0 + w * Sc), base)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(
        prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "img_dir", nargs="?", default=None, metavar="IMG_DIR", help="default: DATA/clothing-small"
    )
    benchdata.add_data_argument(ap, ["clothing-small"])
    ap.add_argument(
        "--out",
        "--work",
        dest="out",
        default=str(Path(tempfile.gettempdir()) / "varsitysrch-eval-clothing"),
        help="stores and reports (default %(default)s)",
    )
    ap.add_argument("--queries", type=int, default=2000)
    ap.add_argument("--latency", type=int, default=50, help="queries embedded one by one for latency")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--quick", action="store_true", help="only the baseline, the default and +qe")
    ap.add_argument("--ablation", action="store_true")
    ap.add_argument(
        "--split",
        type=float,
        default=None,
        help="held-out fraction of queries (removed from the catalogue) instead of leave-one-out",
    )
    args = ap.parse_args(argv)
    args.img_dir = str(benchdata.image_folder(PROG, args.img_dir, args.data))
    if args.ablation:
        part_ablation(args)
    else:
        part_eval(args)


if __name__ == "__main__":
    main()
