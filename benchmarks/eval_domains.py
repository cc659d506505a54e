"""Search quality on both first dev domains through ``varsitysrch.evaluate`` and ``extract_features``.

Public names only (``extract_features``, ``evaluate``): what users get.  Three parts:

    python benchmarks/eval_domains.py --part real     # LOO and held-out, real extraction, evaluate()
    python benchmarks/eval_domains.py --part api      # the cross-domain protocol through evaluate()
    python benchmarks/eval_domains.py --part speed    # extraction img/s, old vs new default, one run

The script's earlier parts re-implemented the search in numpy on cached vectors and private
helpers (``features``, ``table``, ``colour``, ``studio``, ``int8``, and ``api``'s LOO / held-out
rows on cached vectors); issue 20 removed that copy of the search.  The docs/quality.md figures
they made were measured with the script as of commit 6cfba5c (``git show
6cfba5c:benchmarks/eval_domains.py``).  Their measurements through the public pipeline:
``benchmarks/dev_domains.py`` (LOO and held-out per variant: extractor options, int8, views,
colour weight, query expansion, with bootstrap intervals on three dev domains) and
``benchmarks/shelf_studio.py`` (shop photo -> studio catalogue).  The hue-shifted colour
trade-off curve (the old ``colour`` part) has no public-pipeline replacement yet.

Data: ``clothing-small/`` and ``grocery-train/`` under ``--data`` / ``$VARSITYSRCH_DATA``,
each with its ``manifest.csv`` (relevance = same ``label``); work files in ``--cache``
(default ``<system temp>/varsitysrch-eval-domains``).  Fixed, seeded protocol per domain
(also used by ``benchmarks/eval_contract.py``):

* ``Q``: 600 query images (seed 0), the same for all protocols;
* **leave-one-out**: every image is the catalogue, the query is removed from its own results;
* **held-out**: 25 % of the images (``Q`` and more) are removed from the catalogue;
* **cross-domain** (shopper photo -> small catalogue): a catalogue of 3 photos per product
  (grocery) / 20 per class (clothing) drawn from outside ``Q``; the queries ``Q`` are
  separate photos; recall@1, recall@5 and mAP@10.
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


# ====================================================================== extraction speed
#: the extractor options of the default before docs/quality.md's two-domain round
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


# ====================================================================== cross-domain, through evaluate()
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
    """The cross-domain protocol through evaluate() (real extraction of the small catalogue)."""
    from varsitysrch import evaluate

    cache = Path(args.cache)
    for domain in args.domains.split(","):
        base = cache / "api" / domain
        cat, qcsv = cross_domain_protocol(domain, base / "cross")
        fp224 = "input_size=224,quantized=false"
        cfgs = [
            f"efficientnet-lite0:resize=letterbox,pooling=pooled,{fp224}+pca=0+qe=0",  # plain
            f"efficientnet-lite0:resize=center-crop,pooling=gem,{fp224}+qe=0",  # old default
            "efficientnet-lite0+qe=0",  # the library's default search (no query expansion)
            "efficientnet-lite0+qe=0+crops",  # + multi-crop queries (opt-in)
            "efficientnet-lite0+qe=0+colour=0.15",  # + "match colour" (opt-in)
            "efficientnet-lite0+qe=2",  # + query expansion (opt-in: train --query-expansion 2)
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


# ====================================================================== LOO and held-out, end to end
def part_real(args: argparse.Namespace) -> None:
    """LOO and held-out through evaluate() with real extraction: plain, old default, the default
    (no query expansion), the default with query expansion (2)."""
    from varsitysrch import evaluate

    plain = "efficientnet-lite0:resize=letterbox,pooling=pooled,input_size=224,quantized=false+pca=0+qe=0"
    old = "efficientnet-lite0:resize=center-crop,pooling=gem,input_size=224,quantized=false+qe=0"
    print("| domain | queries | config | method | P@10 | mAP@10 |\n|---|---|---|---|---|---|")
    for domain in args.domains.split(","):
        for split in (None, HELD_OUT):
            rep = evaluate(
                DOMAINS[domain],
                labels=DOMAINS[domain] / "manifest.csv",
                configs=[plain, old, "efficientnet-lite0+qe=0", "efficientnet-lite0+qe=2"],
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


# ====================================================================== main
def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(
        prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    benchdata.add_data_argument(ap, list(DEV_SET.values()))
    ap.add_argument("--part", choices=["real", "api", "speed"], default="real")
    ap.add_argument(
        "--cache",
        "--work",
        dest="cache",
        default=str(Path(tempfile.gettempdir()) / "varsitysrch-eval-domains"),
        help="work folder (catalogue copies, stores, evaluate's output); default %(default)s",
    )
    ap.add_argument("--domains", default="grocery,clothing")
    ap.add_argument(
        "--new-options", default="resize=center-crop,pooling=pooled", help="speed: the new default extractor"
    )
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument(
        "--also-options", action="append", help="speed: another extractor configuration (repeatable)"
    )
    args = ap.parse_args(argv)
    use_data(PROG, args.data, [d for d in args.domains.split(",") if d])
    {"real": part_real, "api": part_api, "speed": part_speed}[args.part](args)


if __name__ == "__main__":
    sys.path.insert(0, str(REPO / "src"))
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
