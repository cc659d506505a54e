"""The issue's protocol through the four public functions, on both dev domains.

    python benchmarks/eval_contract.py --data DIR       # both domains, every configuration
    python benchmarks/eval_contract.py --data DIR --domains grocery --queries 100
    python benchmarks/eval_contract.py --data DIR --configs "**the default**" --queries 10 \\
        --crop-discount 0.05

Data: ``clothing-small/`` and ``grocery-train/`` under ``--data`` / ``$VARSITYSRCH_DATA``; stores,
models and the synthetic studio shots are cached in ``--work`` (default
``<system temp>/varsitysrch-eval-contract``).  The seeded protocols come from ``eval_domains.py``.

What a user of the library gets: ``extract_features`` -> ``train_clusters(k=20)`` ->
``search_similar_images`` (with each configuration's options, otherwise the defaults), on

* **catalogue queries** (the issue's protocol): the whole domain is the catalogue; 300
  seeded catalogue images are the queries, searched with ``search_similar_images`` (so the
  query image itself is in the catalogue); it is removed from the results, the next 10 are
  scored (mAP@10, P@10; relevance = same ``label``);
* **shop photo -> studio shot** (a proxy of the issue's in-store -> studio catalogue set): the
  catalogue is made of synthetic studio shots -- a random 60 % crop of a photo pasted on a
  white canvas with a 15 % margin, one photo per product (grocery, 81 images) or five per
  class (clothing, 50), drawn from outside the queries -- and the queries are 600 other
  photos of the domain (recall@1, recall@5, mAP@10).  The crop is the product seen larger
  and alone, the white canvas is the studio backdrop; it is a proxy, not studio photography.

Configurations: ``plain`` (letterbox 224, average pool, fp32, plain cosine, no query
expansion, whole-image queries), ``old default`` (the defaults before docs/quality.md's
two-domain round: centre crop 224 + GeM + search PCA), and the library's defaults, with and
without each search-side default (query expansion, ``views="auto"``).

Public names only (the ``--crop-discount`` sweep that patched a private constant is gone: no
public option sets the discount, and issue 20 re-decides ``views`` through
``benchmarks/dev_domains.py``).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchdata
import eval_domains as E  # the domains, their manifests and seeded protocols

PROG = "eval_contract.py"

PLAIN_X = {"resize": "letterbox", "pooling": "pooled", "input_size": 224, "quantized": False}
OLD_X = {"resize": "center-crop", "pooling": "gem", "input_size": 224, "quantized": False}
#: (name, extractor options, train_clusters options, search_similar_images options)
CONFIGS: list[tuple[str, dict[str, Any], dict[str, Any], dict[str, Any]]] = [
    ("plain", PLAIN_X, {"search_pca": 0, "query_expansion": 0}, {"views": None}),
    ("old default", OLD_X, {"query_expansion": 0}, {"views": None}),
    ("default without query expansion", {}, {"query_expansion": 0}, {}),
    ("default with whole-image queries", {}, {}, {"views": None}),
    ("**the default**", {}, {}, {}),
]
STUDIO_CROP, STUDIO_MARGIN = 0.6, 0.15
STUDIO_PER_LABEL = {"grocery": 1, "clothing": 5}
K = 20


def studio_catalogue(domain: str, out: Path) -> list[int]:
    """Write the synthetic studio shots (see the module docstring); their manifest rows."""
    from PIL import Image, ImageOps

    ids, y, _ = E.manifest(domain)
    p = E.protocol(domain)
    cc = p["cross_cat"]
    rows = sorted(
        int(r) for lab in range(int(y.max()) + 1) for r in cc[y[cc] == lab][: STUDIO_PER_LABEL[domain]]
    )
    if (out / ".done").exists():
        return rows
    shutil.rmtree(out, ignore_errors=True)
    for r in rows:
        with Image.open(E.DOMAINS[domain] / ids[r]) as src:  # the whole photo, EXIF-oriented, RGB
            im = ImageOps.exif_transpose(src).convert("RGB")
        w, h = im.size
        cw, ch = round(w * STUDIO_CROP), round(h * STUDIO_CROP)
        rng = np.random.default_rng(r)
        x0, y0 = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        m = round(STUDIO_MARGIN * max(cw, ch))
        canvas = Image.new("RGB", (cw + 2 * m, ch + 2 * m), (255, 255, 255))
        canvas.paste(im.crop((x0, y0, x0 + cw, y0 + ch)), (m, m))
        dst = out / Path(ids[r]).with_suffix(".png")
        dst.parent.mkdir(parents=True, exist_ok=True)
        canvas.save(dst)
    (out / ".done").write_text("")
    return rows


def _ap(rel: np.ndarray, n_rel: int, k: int = 10) -> float:
    if n_rel == 0:
        return 0.0
    hits = np.cumsum(rel[:k])
    return float((hits / np.arange(1, k + 1) * rel[:k]).sum() / min(n_rel, k))


def run(domain: str, work: Path, n_queries: int, names: set[str] | None) -> list[str]:
    from varsitysrch import extract_features, search_similar_images, train_clusters

    ids, y, labels = E.manifest(domain)
    label = {i: labels[y[j]] for j, i in enumerate(ids)}
    rng = np.random.default_rng(1)
    cat_q = sorted(rng.choice(len(ids), n_queries, replace=False).tolist())
    shop_q = E.protocol(domain)["q"]
    studio = work / domain / "studio-images"
    s_rows = studio_catalogue(domain, studio)
    s_label = {str(Path(ids[r]).with_suffix(".png")): labels[y[r]] for r in s_rows}
    out = []
    for name, xopt, topt, sopt in CONFIGS:
        if names and name not in names:
            continue
        tag = "".join(c if c.isalnum() else "-" for c in name)
        cells = []
        for proto, root, lab, queries in (
            ("catalogue", E.DOMAINS[domain], label, [ids[j] for j in cat_q]),
            ("studio", studio, s_label, [ids[j] for j in shop_q]),
        ):
            key = "x" + "".join(f"-{k}={v}" for k, v in sorted(xopt.items()))
            store = work / domain / f"{proto}-store{key}"
            if not (store / "store.json").exists():
                extract_features(root, store, show_progress=False, **xopt)
            model = work / domain / f"{proto}-{tag}.vsm"
            csv = model.with_suffix(".csv")
            k = min(K, len(lab) // 2)
            train_clusters(store, model, csv, k, show_progress=False, **topt)
            aps, r1, r5, p10 = [], [], [], []
            t0 = time.perf_counter()
            for q in queries:
                path = E.DOMAINS[domain] / q
                hits = search_similar_images(path, model, csv, 11, show_progress=False, **sopt)
                got = [h.image for h in hits if not (proto == "catalogue" and h.image == q)][:10]
                rel = np.array([lab[g] == label[q] for g in got], float)
                rel = np.pad(rel, (0, 10 - len(rel)))
                n_rel = sum(v == label[q] for v in lab.values()) - (proto == "catalogue")
                aps.append(_ap(rel, n_rel))
                r1.append(rel[0])
                r5.append(rel[:5].max())
                p10.append(rel.mean())
            ms = (time.perf_counter() - t0) / len(queries) * 1000
            if proto == "catalogue":
                cells.append(f"{np.mean(aps):.3f} / {np.mean(p10):.3f}")
            else:
                cells.append(f"{np.mean(r1):.3f} / {np.mean(r5):.3f} / {np.mean(aps):.3f}")
            cells.append(f"{ms:.0f}")
            print(f"  {domain} {proto} {name}: {cells[-2]} ({ms:.0f} ms/query)", flush=True)
        out.append(f"| {domain} | {name} | " + " | ".join(cells) + " |")
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(
        prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    benchdata.add_data_argument(ap, list(E.DEV_SET.values()))
    ap.add_argument("--domains", default="grocery,clothing")
    benchdata.add_work_argument(ap, PROG, "stores, models and the studio shots")
    ap.add_argument("--queries", type=int, default=300, help="catalogue queries per domain")
    ap.add_argument("--configs", default="", help="comma-separated configuration names (default: all)")
    args = ap.parse_args(argv)
    domains = [d for d in args.domains.split(",") if d]
    E.use_data(PROG, args.data, domains)
    names = set(args.configs.split(",")) if args.configs else None
    rows = []
    for d in domains:
        rows += run(d, Path(args.work), args.queries, names)
    print(
        f"\nThe four functions, k={K} (k = half the catalogue for the small studio catalogues); catalogue "
        f"queries: {args.queries} catalogue images searched with search_similar_images, self removed; shop "
        "photo -> studio shot: 600 photos against the synthetic studio catalogue.\n"
    )
    print(
        "| domain | configuration | catalogue queries mAP@10 / P@10 | ms/query | "
        "shop photo -> studio shot R@1 / R@5 / mAP@10 | ms/query |\n|---|---|---|---|---|---|"
    )
    print("\n".join(rows))


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    main()
