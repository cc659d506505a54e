"""Duplicate finding on planted duplicates: precision and recall per threshold, both dev domains.

For each domain a seeded sample of catalogue photos is copied five ways -- re-encoded
(JPEG quality 40), resized to half size, cropped by 5 % (random offset), mirrored, and a
colour variant (hue rotated by 120 degrees) -- the copies are embedded with the catalogue's
own extractor into a separate store (a few hundred images), and the pairs above each
threshold among catalogue + copies are judged by what they are:

* true: a copy and its original, or two copies of one original (or a pair listed in the
  dataset's ``duplicates.csv``);
* false: two different images with different labels (clothing type, grocery product);
* same-label: two different images with the same label -- not planted, so they cannot be
  judged here (in grocery-train these are often the same product photographed twice).

``precision`` counts same-label pairs neither way, ``strict`` counts them as false.
``recall`` is the share of (original, copy) pairs found, per transform.  The duplicate tier
is judged without the colour variants; the variant tier with them (a colour variant is
then a true pair).  A row ``ivf`` compares the IVF method with exact search at the default.

Run::

    nice -n 5 .venv/bin/python benchmarks/bench_duplicates.py --data DIR   # or $VARSITYSRCH_DATA

Data: ``clothing-small/`` and ``grocery-train/`` under ``--data`` / ``$VARSITYSRCH_DATA`` (photos,
``manifest.csv``, ``duplicates.csv``); the catalogue stores are extracted with the default
extractor into ``--work`` on the first run (cached), or taken from ``--features DIR``
(``DIR/<domain>``).  The planted copies and their stores go to ``--work``.

**Measures the private kernel, not the whole public call**: pairs come from
``varsitysrch._duplicates.similar_pairs`` on the catalogue and planted vectors in memory; users
call ``varsitysrch.find_duplicates`` on a store, which runs the same kernel (plus grouping) with
the same thresholds.  There is no public-pipeline replacement yet.
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchdata

PROG = "bench_duplicates.py"
DUP_TRANSFORMS = ("reencode", "resize", "crop", "mirror")
TRANSFORMS = (*DUP_TRANSFORMS, "colour")
THRESHOLDS = (0.80, 0.85, 0.88, 0.90, 0.91, 0.92, 0.93, 0.94, 0.95, 0.96)


def hue_rotate(im: Image.Image, degrees: float) -> Image.Image:
    h, s, v = im.convert("HSV").split()
    shift = round(degrees / 360 * 256)
    h = h.point(lambda x: (x + shift) % 256)
    return Image.merge("HSV", (h, s, v)).convert("RGB")


def plant(src: Path, dst_root: Path, stem: str, rng: np.random.Generator) -> dict[str, str]:
    """Write the five copies of ``src``; return ``{transform: relative path}``."""
    im = ImageOps.exif_transpose(Image.open(src)).convert("RGB")
    w, h = im.size
    out: dict[str, str] = {}
    for t in TRANSFORMS:
        rel = f"{t}/{stem}.jpg"
        p = dst_root / rel
        out[t] = rel
        if p.exists():
            continue
        p.parent.mkdir(parents=True, exist_ok=True)
        if t == "reencode":
            im.save(p, quality=40)
        elif t == "resize":
            im.resize((max(1, w // 2), max(1, h // 2)), Image.Resampling.BILINEAR).save(p, quality=90)
        elif t == "crop":
            cw, ch = round(w * 0.05), round(h * 0.05)
            x0, y0 = int(rng.integers(0, cw + 1)), int(rng.integers(0, ch + 1))
            im.crop((x0, y0, w - (cw - x0), h - (ch - y0))).save(p, quality=90)
        elif t == "mirror":
            ImageOps.mirror(im).save(p, quality=90)
        else:
            hue_rotate(im, 120).save(p, quality=90)
    return out


def labels_of(data: Path, domain: str) -> dict[str, str]:
    with open(data / domain / "manifest.csv", newline="") as f:
        return {r["path"]: r["label"] for r in csv.DictReader(f)}


def known_pairs(data: Path, domain: str) -> set[tuple[str, str]]:
    p = data / domain / "duplicates.csv"
    if not p.exists():
        return set()
    with open(p, newline="") as f:
        return {tuple(sorted((r["path_a"], r["path_b"]))) for r in csv.DictReader(f)}  # type: ignore[misc]


def evaluate_domain(
    data: Path, domain: str, feats: Path, work: Path, per_domain: int, seed: int
) -> dict[str, object]:
    from varsitysrch import Extractor, FeatureStore, extract_features
    from varsitysrch._duplicates import DEFAULT_THRESHOLD, VARIANT_THRESHOLD, similar_pairs

    store = FeatureStore.open(feats)
    labels = labels_of(data, domain)
    rng = np.random.default_rng(seed)
    picks = np.sort(rng.choice(len(store), per_domain, replace=False))
    planted = work / "duplicates" / f"{domain}-{per_domain}-originals-seed{seed}"  # never another run's
    planted_root = planted / "images"
    origin: dict[str, int] = {}  # planted id -> catalogue row of its original
    kind: dict[str, str] = {}
    for r in picks:
        cid = store.ids[int(r)]
        stem = f"{int(r):05d}"
        for t, rel in plant(data / domain / cid, planted_root, stem, rng).items():
            origin[rel], kind[rel] = int(r), t
    t0 = time.perf_counter()
    res = extract_features(
        planted_root,
        planted / "features",
        extractor=Extractor.from_identity(store.extractor),
        show_progress=False,
    )
    t_extract = time.perf_counter() - t0
    pstore = FeatureStore.open(planted / "features")
    n = len(store)
    known = known_pairs(data, domain)

    def run(include: tuple[str, ...]) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        keep = [k for k, pid in enumerate(pstore.ids) if kind[pid] in include]
        X = np.concatenate(
            [np.asarray(store.vectors, np.float32), np.asarray(pstore.vectors, np.float32)[keep]]
        )
        ids = list(store.ids) + [pstore.ids[k] for k in keep]
        orig = np.concatenate([np.arange(n), [origin[pstore.ids[k]] for k in keep]]).astype(np.int64)
        i, j, s = similar_pairs(X, min(THRESHOLDS), method="exact")
        return ids, orig, i, j, s

    rows: list[dict[str, object]] = []
    for tier, include in (("duplicate", DUP_TRANSFORMS), ("variant", TRANSFORMS)):
        ids, orig, i, j, s = run(include)
        lab = np.array([labels.get(ids[o], "?") for o in orig])
        is_known = np.array(
            [tuple(sorted((ids[orig[a]], ids[orig[b]]))) in known for a, b in zip(i, j, strict=True)], bool
        )
        same_orig = orig[i] == orig[j]
        true = same_orig | is_known
        false = ~true & (lab[i] != lab[j])
        unknown = ~true & ~false
        planted_pair = (j >= n) & same_orig & (i == orig[j])  # (original, copy)
        copy_kind = np.array([kind[ids[b]] if b >= n else "" for b in j])
        for t in THRESHOLDS:
            m = s >= t
            tp, fp, un = int((true & m).sum()), int((false & m).sum()), int((unknown & m).sum())
            row: dict[str, object] = {
                "domain": domain,
                "tier": tier,
                "threshold": t,
                "precision": tp / max(tp + fp, 1),
                "strict": tp / max(tp + fp + un, 1),
                "false": fp,
                "same_label": un,
                "recall": float((planted_pair & m).sum()) / (len(picks) * len(include)),
            }
            for tr in include:
                row[tr] = float((planted_pair & m & (copy_kind == tr)).sum()) / len(picks)
            rows.append(row)
        if tier == "duplicate":
            kp = [(float(c), ids[a], ids[b]) for a, b, c, k in zip(i, j, s, is_known, strict=True) if k]
    X = np.asarray(store.vectors, np.float32)
    ivf = []
    for t in (VARIANT_THRESHOLD, DEFAULT_THRESHOLD):
        t1 = time.perf_counter()
        ex = similar_pairs(X, t, method="exact")
        t_exact = time.perf_counter() - t1
        t1 = time.perf_counter()
        iv = similar_pairs(X, t, method="ivf")
        t_ivf = time.perf_counter() - t1
        e_set = set(zip(ex[0].tolist(), ex[1].tolist(), strict=True))
        i_set = set(zip(iv[0].tolist(), iv[1].tolist(), strict=True))
        ivf.append(
            (t, len(e_set), len(i_set & e_set) / max(len(e_set), 1), len(i_set - e_set), t_exact, t_ivf)
        )
    return {
        "rows": rows,
        "known": kp,
        "n_known": len(known),
        "extract": (len(pstore), res, t_extract),
        "ivf": ivf,
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(
        prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    benchdata.add_data_argument(ap, ["clothing-small", "grocery-train"])
    ap.add_argument("--features", type=Path, default=None, help="folder of existing stores, one per domain")
    benchdata.add_work_argument(ap, PROG, "the extracted stores and the planted copies")
    ap.add_argument("--per-domain", type=int, default=60, help="originals copied per domain")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--domains", nargs="+", default=["clothing-small", "grocery-train"])
    a = ap.parse_args(argv)
    data = benchdata.data_root(PROG, a.data, a.domains)
    if a.features is not None:
        missing = [d for d in a.domains if not (a.features / d).is_dir()]
        if missing:
            benchdata.fail(PROG, f"--features {str(a.features)!r} has no store {missing[0]}/")
        feats = {d: a.features / d for d in a.domains}
    else:
        feats = {d: benchdata.feature_store(data, d, a.work, benchdata.log_stderr) for d in a.domains}
    results = {d: evaluate_domain(data, d, feats[d], a.work, a.per_domain, a.seed) for d in a.domains}
    cols = ["threshold", "precision", "strict", "false", "same_label", "recall"]
    for d, r in results.items():
        n_planted, _, t_ex = r["extract"]  # type: ignore[misc]
        print(
            f"\n== {d}: {a.per_domain} originals x {len(TRANSFORMS)} copies "
            f"({n_planted} embedded, {t_ex:.0f}s)"
        )
        for tier, trs in (("duplicate", DUP_TRANSFORMS), ("variant", TRANSFORMS)):
            print(f"-- tier {tier}: " + " ".join(f"{c:>9}" for c in [*cols, *trs]))
            for row in r["rows"]:  # type: ignore[attr-defined]
                if row["tier"] != tier:
                    continue
                vals = [row[c] for c in [*cols, *trs]]
                print(
                    "   "
                    + " " * (len(tier) + 6)
                    + " ".join(f"{v:>9.3f}" if isinstance(v, float) else f"{v:>9}" for v in vals)
                )
        print(f"known pairs in duplicates.csv: {r['n_known']}; found (score, a, b): {r['known']}")
        for t, n_ex, rec, extra, t_e, t_i in r["ivf"]:  # type: ignore[attr-defined]
            print(
                f"catalogue alone at {t}: exact {n_ex} pairs in {t_e:.2f}s; ivf recall vs exact "
                f"{rec:.4f} (+{extra} not in exact) in {t_i:.2f}s"
            )
    from varsitysrch._duplicates import DEFAULT_THRESHOLD, VARIANT_THRESHOLD

    print(f"\ndefaults: DEFAULT_THRESHOLD={DEFAULT_THRESHOLD} VARIANT_THRESHOLD={VARIANT_THRESHOLD}")


if __name__ == "__main__":
    main()
