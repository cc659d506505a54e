"""The quick start: a small grocery shop's catalogue, searched with shoppers' photos.

Run from the repository root after ``pip install .``::

    python examples/quickstart.py [--out OUT]          # OUT: default out/quickstart

It runs the four steps of ``varsitysrch`` on the sample shop in ``examples/shop/`` (16 products,
4 in-store photos of each; see ``examples/shop/README.md``):

1. ``extract_features``: embed every catalogue photo (the feature store goes to ``OUT/features``);
2. ``get_optimal_num_clusters``: the recommended number of clusters (plot: ``OUT/choose_k.png``);
3. ``train_clusters``: cluster the catalogue with that k (``OUT/model.vsm``, ``OUT/clusters.csv``);
4. ``search_similar_images``: the 5 catalogue photos most like each photo in
   ``examples/shop/queries/`` -- photos of catalogue products that are not in the catalogue.

For each query it prints the top 5 with, beside each hit, whether it is the query's product
(a catalogue id is ``<product>/<photo>``), then how many queries found their product, good or
bad, and the command that opens the web page on the same catalogue.  ``docs/quickstart-output.txt``
is a copy of its output; ``tests/test_quickstart.py`` checks that copy on the fields that do not
depend on the CPU (ids, products, counts).
"""

from __future__ import annotations

import argparse
import itertools
import os
import shlex
from pathlib import Path

from varsitysrch import extract_features, get_optimal_num_clusters, search_similar_images, train_clusters

SHOP = Path(__file__).resolve().parent / "shop"
TOP_N = 5


def shown(path: Path) -> str:
    """``path`` as the user would type it: relative to the working folder when inside it."""
    full = path.resolve()
    return Path(os.path.relpath(full)).as_posix() if full.is_relative_to(Path.cwd()) else str(path)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description="The varsitysrch quick start on the sample shop in examples/shop/."
    )
    ap.add_argument(
        "--out", type=Path, default=Path("out/quickstart"), help="output folder (default: %(default)s)"
    )
    out = ap.parse_args(argv).out
    catalog, queries = SHOP / "catalog", sorted((SHOP / "queries").glob("*.jpg"))
    products = sorted(p.name for p in catalog.iterdir() if p.is_dir())
    photos = {p: len(list((catalog / p).glob("*.jpg"))) for p in products}
    out.mkdir(parents=True, exist_ok=True)
    features, model, csv = out / "features", out / "model.vsm", out / "clusters.csv"
    print("varsitysrch quick start: a grocery shop's catalogue, searched with shoppers' photos")
    print(
        f"Catalogue: {shown(catalog)}/ ({len(products)} products, {sum(photos.values())} photos); "
        f"queries: {len(queries)} photos of catalogue products, not in the catalogue."
    )

    print("\n# 1. extract_features: embed every catalogue photo")
    extract_features(catalog, features)
    print("\n# 2. get_optimal_num_clusters: how many clusters?")
    k = get_optimal_num_clusters(features, plot_path=out / "choose_k.png").recommended_k
    print(f"\n# 3. train_clusters: group the catalogue into k={k} clusters")
    train_clusters(features, model, csv, num_clusters=k)
    print(f"\n# 4. search_similar_images: the top {TOP_N} for each query")

    first = found = possible = 0
    unordered = False
    for i, query in enumerate(queries, 1):
        product = query.stem  # examples/shop/queries/<product>.jpg
        print(f"\nQuery {i} of {len(queries)}: queries/{query.name}, a photo of {product}")
        hits = search_similar_images(query, model, csv, top_n=TOP_N, image_root=catalog)
        print("  rank  score  same product?  hit (catalogue id: product/photo)")
        same = [h.split("/")[0] == product for h in hits]
        for h, s in zip(hits, same, strict=True):
            print(f"  {h.rank:>4}  {h.score:.3f}  {'yes' if s else 'no':<13}  {h}")
        at1 = bool(same) and same[0]
        reachable = min(TOP_N, photos.get(product, 0))
        first, found, possible = first + at1, found + sum(same), possible + reachable
        print(
            f"  -> {'its product at #1' if at1 else 'NOT its product at #1'}; "
            f"{sum(same)} of the top {len(hits)} {'is' if sum(same) == 1 else 'are'} {product} "
            f"(the catalogue has {photos.get(product, 0)} photos of it)"
        )
        if any(b.score > a.score for a, b in itertools.pairwise(hits)):
            unordered = True

    print(
        f"\nSummary: {first} of {len(queries)} queries find their product at #1; "
        f"{found} of the {possible} catalogue photos of their products are in their top {TOP_N}."
    )
    if unordered:
        print(
            "(A score is the hit's cosine similarity to the query photo; the ranking also uses the "
            "query's nearest catalogue photos, so a lower score can rank higher.)"
        )
    serve = [
        "varsitysrch",
        "serve",
        "-m",
        shown(model),
        "-c",
        shown(csv),
        "--images",
        shown(catalog),
    ]
    print("\nThe web page on the same catalogue (search by dropping a photo on it, browse the clusters):")
    print(f"  pip install '.[serve]' && {shlex.join(serve)}")
    print("  then open http://127.0.0.1:8000/")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
