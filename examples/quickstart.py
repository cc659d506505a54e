"""The quick start's last step: the search from Python, each hit beside its folder (its class).

Run by ``examples/quickstart.sh`` after it has extracted and trained into OUT (default
``out/quickstart``)::

    python examples/quickstart.py [OUT]

The sample catalogue is laid out as ``catalog/<class>/<photo>.jpg`` and ``query.jpg`` is a
t-shirt (see ``examples/README.md``), so the folder of each hit says whether it is the same
kind of product.  The script prints what the search returns, good or bad, and how many of the
top 5 share the query's class, for the default (clusters nearest to the query) and for an
exact scan of the whole catalogue.
"""

from __future__ import annotations

import sys
from pathlib import Path

from varsitysrch import search_similar_images

HERE = Path(__file__).resolve().parent
QUERY = HERE / "query.jpg"
QUERY_CLASS = "t-shirt"  # examples/README.md: query.jpg is a t-shirt photo, not in the catalogue
TOP_N = 5


def main(out: Path) -> None:
    model, csv = out / "model.vsm", out / "clusters.csv"
    hits = search_similar_images(QUERY, model, csv, top_n=TOP_N, image_root=HERE / "catalog")
    print(f"rank  score  folder      image (query: {QUERY.name}, a {QUERY_CLASS})")
    for h in hits:  # each hit is its id, a str such as "t-shirt/00d9cc6e-....jpg"
        folder = h.split("/")[0]
        mark = "  <- same class" if folder == QUERY_CLASS else ""
        print(f"{h.rank:>4}  {h.score:.3f}  {folder:<10}  {h}{mark}")
    same = sum(h.split("/")[0] == QUERY_CLASS for h in hits)
    exact = search_similar_images(QUERY, model, csv, top_n=TOP_N, exact=True, show_progress=False)
    same_exact = sum(h.split("/")[0] == QUERY_CLASS for h in exact)
    print(
        f"Same class as the query ({QUERY_CLASS}): {same} of the top {len(hits)}; "
        f"with an exact scan of the whole catalogue: {same_exact} of {len(exact)}."
    )


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("out/quickstart"))
