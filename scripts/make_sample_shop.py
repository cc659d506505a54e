"""Write the quick start's sample shop (``examples/shop/``) from the Grocery Store Dataset.

The sample is a small grocery catalogue: a seeded draw of products from the dataset's training
split (in-store smartphone photos of 81 products, MIT licence), a few photos of each, plus one
held-out photo per product for the first few drawn products, to search with.  The choice is a
rule, never a hand pick, so anyone can audit and regenerate it::

    python scripts/make_sample_shop.py --data ../shared/data          # or VARSITYSRCH_DATA=...

The rule (all of it is in :func:`choose`):

* products: ``random.Random(SEED).sample`` of ``--products`` labels from the sorted labels of
  ``grocery-train/manifest.csv`` that have at least ``--photos + 1`` photos;
* catalogue: the first ``--photos`` photos of each drawn product, in path order;
* queries: for the first ``--queries`` products *in draw order*, the next photo (photo number
  ``--photos + 1`` in path order), which is not in the catalogue.

Each photo is downscaled to ``--size`` pixels on its long side (Lanczos) and re-encoded as JPEG
(quality 85, no metadata).  The script also writes the licence (the dataset's MIT licence), a
README with the sources, and ``sources.csv`` (each shipped file, its product and its source
path).  The output folder is replaced only with ``--force``.

``--check N`` then measures the sample honestly: it builds the catalogue with the library's
default pipeline (the four public functions, in a temporary folder) and searches it with the
next ``N`` photos of *every* drawn product (none of them shipped, none in the catalogue),
printing how many find their product at #1 and how many of their top 5 are that product.
"""

from __future__ import annotations

import argparse
import csv
import io
import os
import random
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DOMAIN = "grocery-train"
SEED = 0
N_PRODUCTS = 16
N_PHOTOS = 4
N_QUERIES = 3
SIZE = 320
QUALITY = 85
SOURCE_URL = "https://github.com/marcusklasson/GroceryStoreDataset"
PAPER = (
    "Marcus Klasson, Cheng Zhang, Hedvig Kjellström: A Hierarchical Grocery Store Image Dataset "
    "with Visual and Semantic Labels. IEEE Winter Conference on Applications of Computer Vision "
    "(WACV), 2019. https://arxiv.org/abs/1901.00711"
)


class UsageError(Exception):
    """A bad argument or a missing data folder: one line, exit status 2."""


@dataclass(frozen=True)
class Product:
    label: str
    category: str  # the dataset's super category: Fruit, Vegetables or Packages
    catalogue: tuple[str, ...]  # source paths relative to the domain folder
    held_out: tuple[str, ...]  # the product's later photos, in path order (never in the catalogue)


def read_manifest(domain: Path) -> dict[str, list[tuple[str, str]]]:
    """label -> [(path, super_category), ...] in path order, from ``manifest.csv``."""
    manifest = domain / "manifest.csv"
    if not manifest.is_file():
        raise UsageError(f"{manifest} is missing: --data must hold {DOMAIN}/ with its manifest.csv")
    by_label: dict[str, list[tuple[str, str]]] = {}
    with manifest.open(newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            by_label.setdefault(row["label"], []).append((row["path"], row.get("super_category", "")))
    for rows in by_label.values():
        rows.sort()
    return by_label


def choose(
    by_label: dict[str, list[tuple[str, str]]],
    n_products: int = N_PRODUCTS,
    n_photos: int = N_PHOTOS,
    seed: int = SEED,
) -> list[Product]:
    """The drawn products, in draw order (the rule in the module docstring)."""
    eligible = sorted(label for label, rows in by_label.items() if len(rows) > n_photos)
    if n_products > len(eligible):
        raise UsageError(
            f"--products must be at most {len(eligible)} (products with more than --photos {n_photos} "
            f"photos); got {n_products}"
        )
    drawn = random.Random(seed).sample(eligible, n_products)
    out = []
    for label in drawn:
        rows = by_label[label]
        paths = [p for p, _ in rows]
        out.append(Product(label, rows[0][1], tuple(paths[:n_photos]), tuple(paths[n_photos:])))
    return out


def shrink(src: Path, size: int = SIZE, quality: int = QUALITY) -> bytes:
    """The photo downscaled to ``size`` on its long side, as JPEG bytes without metadata."""
    from PIL import Image, ImageOps

    with Image.open(src) as f:
        im = ImageOps.exif_transpose(f).convert("RGB")
    scale = size / max(im.size)
    if scale < 1:
        im = im.resize((round(im.width * scale), round(im.height * scale)), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=quality, optimize=True)
    return buf.getvalue()


def readme(products: list[Product], n_queries: int, n_photos: int, seed: int, size: int) -> str:
    names = ", ".join(f"`{p.label}`" for p in sorted(products, key=lambda p: p.label))
    queries = "\n".join(f"  * `queries/{p.label}.jpg`: `{p.held_out[0]}`" for p in products[:n_queries])
    return f"""# Sample shop

A small grocery catalogue for the quick start (`examples/quickstart.py`): {len(products)} products,
{n_photos} photos of each, laid out as `catalog/<product>/<photo>.jpg`, and {n_queries} photos to search
with in `queries/`, each a photo of a catalogue product that is not in the catalogue
(`queries/<product>.jpg`). The photos are in-store smartphone shots: the product in a hand, on a
shelf or in a crate, so the queries look like a shopper's photos.

Products: {names}.

`sources.csv` lists every file with its product and the photo it was made from.
`docs/quickstart-output.txt` (in the repository root) is what the quick start prints on this sample.

## How the photos were picked

By a rule, not by hand (`scripts/make_sample_shop.py`, which regenerates this folder):

* products: a seeded draw (`random.Random({seed}).sample`) of {len(products)} of the dataset's product
  labels that have at least {n_photos + 1} photos;
* catalogue: the first {n_photos} photos of each drawn product, in path order;
* queries: for the first {n_queries} products of the draw, the next photo in path order:
{queries}

Every photo was downscaled to {size} pixels on its long side and re-encoded as JPEG (quality {QUALITY},
no metadata); nothing else was changed.

## Where the photos come from

The [Grocery Store Dataset]({SOURCE_URL}) by Marcus Klasson, Cheng Zhang and
Hedvig Kjellström: photos of its training split, as kept in the developers' copy
`{DOMAIN}/` (one folder per product with a `manifest.csv`; `sources.csv` gives each photo's
path there). Please cite:

> {PAPER}

## License

The photos are released by their authors under the **MIT License**, Copyright (c) 2019 Marcus
Klasson; the full text, which must accompany copies, is in [`LICENSE`](LICENSE). It covers only
the photos; the `varsitysrch` code is licensed under Apache-2.0.
"""


def write(
    data: Path,
    out: Path,
    *,
    n_products: int = N_PRODUCTS,
    n_photos: int = N_PHOTOS,
    n_queries: int = N_QUERIES,
    seed: int = SEED,
    size: int = SIZE,
    force: bool = False,
) -> list[Product]:
    """Write the sample shop into ``out``; return the drawn products (draw order)."""
    domain = data / DOMAIN
    if not domain.is_dir():
        raise UsageError(
            f"--data {str(data)!r} does not hold {DOMAIN}/ (the Grocery Store Dataset's train split)"
        )
    licence = domain / "SOURCE_LICENSE"
    if not licence.is_file():
        raise UsageError(f"{licence} is missing: the photos may not be copied without their licence")
    if not 1 <= n_queries <= n_products:
        raise UsageError(f"--queries must be between 1 and --products ({n_products}); got {n_queries}")
    products = choose(read_manifest(domain), n_products, n_photos, seed)
    if out.exists() and any(out.iterdir()):
        if not force:
            raise UsageError(f"{out} is not empty: pass --force to replace it")
        shutil.rmtree(out)
    rows = [("file", "product", "category", "source")]
    for p in sorted(products, key=lambda p: p.label):
        for src in p.catalogue:
            dst = Path("catalog") / p.label / Path(src).name
            (out / dst).parent.mkdir(parents=True, exist_ok=True)
            (out / dst).write_bytes(shrink(domain / src, size))
            rows.append((dst.as_posix(), p.label, p.category, f"{DOMAIN}/{src}"))
    for p in products[:n_queries]:
        dst = Path("queries") / f"{p.label}.jpg"
        (out / dst).parent.mkdir(parents=True, exist_ok=True)
        (out / dst).write_bytes(shrink(domain / p.held_out[0], size))
        rows.append((dst.as_posix(), p.label, p.category, f"{DOMAIN}/{p.held_out[0]}"))
    with (out / "sources.csv").open("w", newline="", encoding="utf-8") as f:
        csv.writer(f, lineterminator="\n").writerows(rows)
    shutil.copyfile(licence, out / "LICENSE")
    (out / "README.md").write_text(readme(products, n_queries, n_photos, seed, size), encoding="utf-8")
    return products


def check(data: Path, out: Path, products: list[Product], n_next: int, size: int = SIZE) -> str:
    """Search the built sample with the next ``n_next`` photos of every product; one summary line."""
    from varsitysrch import extract_features, get_optimal_num_clusters, search_similar_images, train_clusters

    domain = data / DOMAIN
    with tempfile.TemporaryDirectory(prefix="varsitysrch-sample-shop-") as tmp:
        work = Path(tmp)
        extract_features(out / "catalog", work / "features", show_progress=False)
        k = get_optimal_num_clusters(work / "features", plot_path=None, verbose=False).recommended_k
        train_clusters(
            work / "features", work / "model.vsm", work / "clusters.csv", num_clusters=k, show_progress=False
        )
        n = first = same5 = 0
        for p in products:
            for src in p.held_out[:n_next]:
                q = work / "q.jpg"
                q.write_bytes(shrink(domain / src, size))  # the shipped queries' preparation
                hits = search_similar_images(
                    q, work / "model.vsm", work / "clusters.csv", show_progress=False
                )
                same = [h.split("/")[0] == p.label for h in hits]
                n += 1
                first += bool(same) and same[0]
                same5 += sum(same)
                print(f"  {src:<60} #1 {'same' if same and same[0] else 'OTHER'}, {sum(same)} of top 5 same")
    reachable = n * min(5, len(products[0].catalogue))
    return (
        f"held-out check (k={k}): {first} of {n} queries find their product at #1; "
        f"{same5} of the {reachable} catalogue photos of their products are in their top 5"
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--data",
        type=Path,
        default=os.environ.get("VARSITYSRCH_DATA"),
        help=f"folder holding {DOMAIN}/ (default: $VARSITYSRCH_DATA)",
    )
    ap.add_argument("--out", type=Path, default=REPO / "examples" / "shop")
    ap.add_argument("--products", type=int, default=N_PRODUCTS)
    ap.add_argument("--photos", type=int, default=N_PHOTOS, help="catalogue photos per product")
    ap.add_argument("--queries", type=int, default=N_QUERIES, help="held-out query photos shipped")
    ap.add_argument("--seed", type=int, default=SEED)
    ap.add_argument("--size", type=int, default=SIZE, help="pixels on the long side")
    ap.add_argument("--force", action="store_true", help="replace a non-empty --out")
    ap.add_argument(
        "--check", type=int, default=0, metavar="N", help="then search with N held-out photos each"
    )
    a = ap.parse_args(argv)
    try:
        if a.data is None:
            raise UsageError(f"--data (or VARSITYSRCH_DATA) is required: the folder holding {DOMAIN}/")
        for name in ("products", "photos", "size"):
            if getattr(a, name) < 1:
                raise UsageError(f"--{name} must be at least 1; got {getattr(a, name)}")
        products = write(
            a.data,
            a.out,
            n_products=a.products,
            n_photos=a.photos,
            n_queries=a.queries,
            seed=a.seed,
            size=a.size,
            force=a.force,
        )
    except UsageError as e:
        print(f"make_sample_shop.py: error: {e}", file=sys.stderr)
        return 2
    files = [f for f in a.out.rglob("*") if f.is_file()]
    total = sum(f.stat().st_size for f in files)
    print(f"wrote {a.out}: {len(products)} products, {len(files)} files, {total / 1e6:.2f} MB")
    for i, p in enumerate(products):
        print(f"  {i + 1:>2}. {p.label} ({p.category})")
    if a.check:
        print(check(a.data, a.out, products, a.check, a.size))
    return 0


if __name__ == "__main__":
    sys.exit(main())
