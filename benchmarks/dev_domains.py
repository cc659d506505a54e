"""The three-domain harness that decides defaults: what users get, paired bootstrap, one rule.

    python benchmarks/dev_domains.py --data ../shared/data --variant "int8:quantized=true"
    python benchmarks/dev_domains.py --data ../shared/data --protocols loo \\
        --baseline "qe0:query_expansion=0" --variant "default:"
    python benchmarks/dev_domains.py --data ../shared/data --domains grocery-train --limit 300 \\
        --queries 50 --variant "int8:quantized=true"            # a smoke run

Data (``--data`` or ``$VARSITYSRCH_DATA``): a folder holding one folder per domain
(``--domains``, default ``clothing-small,grocery-train,fashion-dev``), each with a
``manifest.csv`` of ``path,label,...`` columns (``path`` relative to the domain folder).
Relevance = same ``label``.  Nothing else is read from the data folder.  A domain named
``a+b+c`` is the union of those folders as one catalogue (labels kept apart per folder): e.g.
``--domains clothing-small+grocery-train+fashion-dev`` is a 12,904-image catalogue, larger than
the 10,000 images up to which the re-ranking graph is built exactly.

Everything runs through the public API, as a user runs it: ``extract_features`` on a
folder, ``train_clusters`` on its store, a :class:`varsitysrch.Searcher` on the model.  Per
domain, seeded and fixed (seed ``--seed``, default 0, mixed with the domain's name):

* **LOO** (leave-one-out): the catalogue is every image of the manifest; ``--queries``
  (600) catalogue images whose label has another image are searched *by id* with
  themselves excluded (``Searcher.search_id(..., include_self=False)``);
* **held-out**: 25 % of the images are removed from the catalogue; the catalogue is a
  folder of the other 75 % (``--links``, below), extracted and trained on by itself; ``--queries``
  held-out images whose label is in that catalogue are searched *as image files* through
  the whole query path (decode, ``views``, colour): ``Searcher.search(path, ...)``.

Metrics per query: AP@10 (``sum_i P@i rel_i / min(10, R)``, ``R`` the relevant catalogue
images) and recall@1 (the first hit is relevant); the table shows their means (mAP@10,
R@1).  k = ``min(20, max(2, catalogue images // 20))`` (20 for every full dev domain),
``train_clusters`` otherwise at its defaults, searches with the calibrated ``nprobe``.

Variants (``--variant NAME:key=value,...``, repeatable; ``--baseline``, default
``default:``, the library's defaults): extractor options (``extractor``, ``quantized``,
``input_size``, ``resize``, ``pooling``; ``layout``, ``output`` for ``extractor=onnx:PATH``: passed to
``extract_features``) and search
options (``query_expansion``: the Searcher's; ``views``, ``colour_weight``, ``nprobe``,
``exact``, ``expansion``, ``rerank``: each search's) and training options (``search_pca``,
``n_init``, ``max_samples``, ``ivf``, ``embed_index``, ``rerank_graph``: a variant with any of them
gets its own model, trained afresh in the run on the same store; the costs table gives its training
seconds and, with ``rerank_graph``, the neighbour graph's build seconds and bytes per image).
Each variant is compared with the baseline by a paired bootstrap over the queries
(``--resamples`` 2,000, seeded): per domain, protocol and metric the baseline's mean, the
variant's, the difference and its 95 % percentile interval.

**The rule** (the verdict column): a variant is *adopt* only if its mAP@10 gain has an
interval above zero on every domain and protocol measured (on the three dev domains) and
no domain loses (no interval below zero, either metric, either protocol); otherwise it is
*opt-in*.  A run on fewer than the three dev domains or with ``--limit`` prints the rule's
outcome marked ``(not a decision)``.

Catalogue folders (``--links``): ``copy`` (default) copies every manifest image into the
work folder once (``full``) and hard-links the 75 % (``heldout``) to those copies;
``symlink`` makes both of symlinks to the data.  Copies are the default so that the
measurement does not depend on how the library treats links: until this round's extraction
rewrite its separate colour pass skipped a file whose resolved path lay outside the image
folder ("outside the image root, skipped") while the embedding followed the same symlink, so
a symlinked catalogue got no colour rows and no plain-background flags (``views="auto"``
never fired, ``colour_weight`` failed).  The colour rows now come from the embedding's own
decode and a symlinked catalogue gets them too.

Caching (``--work``, default ``<system temp>/varsitysrch-dev-domains``): the catalogue
folders, and per (domain, split, extractor options, ``--limit``) the feature store and
the model; a rerun only searches.  Each store records the library that built it (version,
commit, ``+dirty``), printed in the extraction table: after a change to the store format or
the extraction, ``--fresh`` makes them again.  The held-out store starts as a copy of the full store
and is brought to the 75 % folder by ``extract_features`` itself (its images are the same
files, so they are reused and the removed ones dropped: nothing is embedded twice).  Extraction images/s per
variant come from the run that embedded the stores (marked ``cached`` when an earlier run
did); ``--speed N`` (default 200) also embeds the first N images of each domain afresh with
every extractor variant, interleaved, in this run (side by side).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import sys
import tempfile
import time
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

DEV_DOMAINS = ("clothing-small", "grocery-train", "fashion-dev")
N_QUERIES = 600
HELD_OUT = 0.25
TOP = 10
RESAMPLES = 2000
K_RULE = "k = min(20, max(2, catalogue images // 20))"
EXTRACTOR_KEYS = ("extractor", "quantized", "input_size", "resize", "pooling", "layout", "output")
SEARCHER_KEYS = ("query_expansion",)
TRAIN_KEYS = ("search_pca", "n_init", "max_samples", "ivf", "embed_index", "rerank_graph")
SEARCH_KEYS = ("views", "colour_weight", "nprobe", "exact", "expansion", "rerank")
PROTOCOLS = ("loo", "heldout")
PROTOCOL_NAMES = {"loo": "LOO", "heldout": "held-out"}
METRICS = (("ap", "mAP@10"), ("r1", "R@1"))


class UsageError(Exception):
    """A bad argument or missing data: printed as one line, exit status 2."""


def number_of_clusters(n_catalogue: int) -> int:
    """The stated k rule (:data:`K_RULE`)."""
    return min(20, max(2, n_catalogue // 20))


# ====================================================================== variants
@dataclass(frozen=True)
class Variant:
    name: str
    extractor: dict[str, Any] = field(default_factory=dict)
    searcher: dict[str, Any] = field(default_factory=dict)
    search: dict[str, Any] = field(default_factory=dict)
    spec: str = ""
    train: dict[str, Any] = field(default_factory=dict)

    @property
    def train_key(self) -> str:
        """The name of the variant's own model (``""``: the shared model, trained at the defaults)."""
        return ",".join(f"{k}={_fmt(v)}" for k, v in sorted(self.train.items()))

    @property
    def extractor_key(self) -> str:
        """The cache key of the extractor options (``default``: none)."""
        if not self.extractor:
            return "default"
        return ",".join(f"{k}={_fmt(v)}" for k, v in sorted(self.extractor.items()))


def _fmt(v: Any) -> str:
    return "none" if v is None else str(v).lower() if isinstance(v, bool) else str(v)


def _value(text: str) -> Any:
    t = text.strip()
    low = t.lower()
    if low in ("true", "false"):
        return low == "true"
    if low == "none":
        return None
    for kind in (int, float):
        try:
            return kind(t)
        except ValueError:
            pass
    return t


def parse_variant(spec: str) -> Variant:
    """``NAME:key=value,key=value`` (``NAME:`` alone: the library's defaults)."""
    name, sep, rest = spec.partition(":")
    if not sep or not name.strip():
        raise UsageError(f"variant must be NAME:key=value,... (NAME: alone for the defaults); got {spec!r}")
    parts: dict[str, dict[str, Any]] = {"extractor": {}, "searcher": {}, "search": {}, "train": {}}
    for item in filter(None, (p.strip() for p in rest.split(","))):
        key, eq, val = item.partition("=")
        key = key.strip()
        if not eq:
            raise UsageError(f"variant {name!r}: option must be key=value; got {item!r}")
        where = (
            "extractor"
            if key in EXTRACTOR_KEYS
            else "searcher"
            if key in SEARCHER_KEYS
            else "search"
            if key in SEARCH_KEYS
            else "train"
            if key in TRAIN_KEYS
            else None
        )
        if where is None:
            known = ", ".join(EXTRACTOR_KEYS + SEARCHER_KEYS + SEARCH_KEYS + TRAIN_KEYS)
            raise UsageError(f"variant {name!r}: unknown option {key!r}; known: {known}")
        # rerank=none switches the re-ranking off; None would mean "the model's" (on with a graph)
        parts[where][key] = val.strip() if key == "rerank" else _value(val)
    return Variant(name.strip(), parts["extractor"], parts["searcher"], parts["search"], spec, parts["train"])


# ====================================================================== the one query call
def run_query(searcher: Any, query: str, by_id: bool, top_n: int, options: dict[str, Any]) -> list[str]:
    """THE call that runs one query (switch it here when the search API changes).

    ``by_id``: ``query`` is a catalogue id, searched with itself excluded (LOO; the query's
    stored vector, so ``views`` does not apply); otherwise ``query`` is an image file.
    Returns the ids of the hits, best first.
    """
    if by_id:
        opts = {k: v for k, v in options.items() if k != "views"}
        hits = searcher.search_id(query, top_n, include_self=False, **opts)
    else:
        hits = searcher.search(query, top_n, **options)
    return [str(h) for h in hits]


# ====================================================================== data and protocol
@dataclass
class Domain:
    name: str
    root: Path
    ids: list[str]
    labels: np.ndarray  # int label per id
    held: np.ndarray  # rows removed from the held-out catalogue
    q_loo: np.ndarray
    q_heldout: np.ndarray
    tag: str  # cache folder name (domain + limit)

    @property
    def catalogue_rows(self) -> dict[str, np.ndarray]:
        return {
            "full": np.arange(len(self.ids)),
            "heldout": np.setdiff1d(np.arange(len(self.ids)), self.held),
        }


def read_manifest(root: Path) -> tuple[list[str], list[str]]:
    path = root / "manifest.csv"
    if not path.is_file():
        raise UsageError(f"no manifest.csv in domain folder {str(root)!r} (columns path,label,...)")
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames or not {"path", "label"} <= set(reader.fieldnames):
            raise UsageError(f"{str(path)!r} must have columns path,label; has {reader.fieldnames}")
        rows = sorted((r["path"], r["label"]) for r in reader)
    if not rows:
        raise UsageError(f"{str(path)!r} lists no images")
    return [r[0] for r in rows], [r[1] for r in rows]


def load_domain(data: Path, name: str, *, limit: int | None, n_queries: int, seed: int) -> Domain:
    """One domain folder, or the union of several (``a+b+c``: one catalogue of all their images,
    ids ``a/<path>``, labels kept apart per domain, e.g. a store that sells all three)."""
    if "+" in name:
        root, ids, names = data, [], []
        for part in name.split("+"):
            if not (data / part).is_dir():
                raise UsageError(f"domain folder {str(data / part)!r} not found under --data {str(data)!r}")
            p_ids, p_names = read_manifest(data / part)
            ids += [f"{part}/{i}" for i in p_ids]
            names += [f"{part}:{n}" for n in p_names]
    else:
        root = data / name
        if not root.is_dir():
            raise UsageError(f"domain folder {str(root)!r} not found under --data {str(data)!r}")
        ids, names = read_manifest(root)
    rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
    if limit is not None and limit < len(ids):
        keep = np.sort(rng.choice(len(ids), limit, replace=False))
        ids, names = [ids[i] for i in keep], [names[i] for i in keep]
    _, y = np.unique(names, return_inverse=True)
    n = len(ids)
    held = np.sort(rng.choice(n, round(HELD_OUT * n), replace=False))
    cat = np.setdiff1d(np.arange(n), held)
    counts = np.bincount(y)
    loo_ok = np.flatnonzero(counts[y] >= 2)
    in_cat = np.bincount(y[cat], minlength=len(counts))
    ho_ok = held[in_cat[y[held]] >= 1]
    q_loo = np.sort(rng.choice(loo_ok, min(n_queries, len(loo_ok)), replace=False))
    q_ho = np.sort(rng.choice(ho_ok, min(n_queries, len(ho_ok)), replace=False))
    tag = name if limit is None else f"{name}-limit{limit}"
    return Domain(name, root, ids, y, held, q_loo, q_ho, tag)


def make_catalogues(dom: Domain, work: Path, links: str) -> dict[str, Path]:
    """The catalogue folders of a domain, made once: ``full`` (every manifest image) and
    ``heldout`` (the 75 %), ids = manifest paths.

    ``links="copy"``: ``full`` holds copies of the images and ``heldout`` hard links to those
    copies (the work folder's own files: the shared data is never linked to), all made before
    anything is extracted, so the two folders' images have the same file stamps and the
    held-out store reuses the full store's vectors.  ``links="symlink"``: both folders hold
    symlinks to the data (see the module docstring: the colour pass skips such files).
    """
    base = work / "catalogues" / f"{dom.tag}-{links}"
    folders = {"full": base / "full", "heldout": base / "heldout"}
    done = base / "done"
    if done.is_file():
        return folders
    if base.exists():
        shutil.rmtree(base)
    in_75 = set(dom.catalogue_rows["heldout"].tolist())
    for r, rel in enumerate(dom.ids):
        src = dom.root / rel
        if not src.is_file():
            raise UsageError(f"manifest of {dom.name!r} lists {rel!r}, which is not a file under {dom.root}")
        full, ho = folders["full"] / rel, folders["heldout"] / rel
        full.parent.mkdir(parents=True, exist_ok=True)
        if links == "copy":
            shutil.copyfile(src, full)
        else:
            os.symlink(src.resolve(), full)
        if r in in_75:
            ho.parent.mkdir(parents=True, exist_ok=True)
            if links == "copy":
                os.link(full, ho)
            else:
                os.symlink(src.resolve(), ho)
    done.write_text("ok\n")
    return folders


def image_sample(dom: Domain, work: Path, n: int) -> Path:
    """A folder of copies of the domain's first ``n`` images (speed runs, warm-ups)."""
    folder = work / "samples" / f"{dom.tag}-{n}"
    done = folder.parent / f"{dom.tag}-{n}.done"
    if not done.is_file():
        if folder.exists():
            shutil.rmtree(folder)
        for rel in dom.ids[:n]:
            (folder / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(dom.root / rel, folder / rel)
        done.write_text("ok\n")
    return folder


# ====================================================================== stores and models
@dataclass
class Built:
    model: Path
    csv: Path
    store: Path
    k: int
    n_embedded: int
    seconds: float
    cached: bool
    library: str


def library_state() -> str:
    """The library the stores are built by: its version, and the commit of the checkout it is
    imported from (``+dirty`` when its ``src/`` has uncommitted changes)."""
    import subprocess

    import varsitysrch

    here = Path(varsitysrch.__file__).resolve().parent
    state = varsitysrch.__version__
    try:
        head = subprocess.run(
            ["git", "-C", str(here), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
        )
        dirty = subprocess.run(
            ["git", "-C", str(here), "status", "--porcelain", "--", "."],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return state
    if head.returncode == 0:
        state += f" @ {head.stdout.strip()}" + ("+dirty" if dirty.stdout.strip() else "")
    return state


def build(
    dom: Domain, split: str, variant: Variant, work: Path, links: str, log: Any, fresh: bool = False
) -> Built:
    """Feature store + model of (domain, split, extractor options), cached in ``work``
    (``fresh``: made again from nothing).  A cached store is reused; its model is retrained when the
    library (version and commit) differs from the one that trained it."""
    from varsitysrch import extract_features, train_clusters

    folder = make_catalogues(dom, work, links)[split]
    base = work / "stores" / f"{dom.tag}-{links}" / variant.extractor_key
    base.mkdir(parents=True, exist_ok=True)
    store = base / f"{split}-features"
    n_cat = len(dom.catalogue_rows[split])
    k = number_of_clusters(n_cat)
    model, assignments = base / f"{split}-k{k}.vsm", base / f"{split}-k{k}.csv"
    record = base / f"{split}.json"
    if record.is_file() and model.is_file() and not fresh:
        info = json.loads(record.read_text())
        lib = library_state()
        trained_by = info.get("model_library", info["library"])
        if trained_by != lib:
            # the store's vectors stay valid (the extractor is in its cache key), but the model must
            # be today's train_clusters at its defaults: a cached one made by an older library (e.g.
            # with query expansion 2 or the PCA space) would be measured as "the default"
            log(f"  retraining {dom.tag}/{split}'s cached model (trained by {trained_by})")
            train_clusters(store, model, assignments, k, show_progress=False)
            record.write_text(json.dumps({**info, "model_library": lib}))
        return Built(
            model,
            assignments,
            store,
            k,
            int(info["n_embedded"]),
            float(info["seconds"]),
            True,
            info["library"],
        )
    for old in (record, model, assignments):
        old.unlink(missing_ok=True)
    if store.exists():
        shutil.rmtree(store)
    if split == "heldout":
        full = build(dom, "full", variant, work, links, log)  # the 75 % reuses the full store's vectors
        shutil.copytree(full.store, store, symlinks=True)
    log(f"  extracting {dom.tag}/{split} ({n_cat:,} images) with {variant.extractor_key}")
    res = extract_features(folder, store, show_progress=False, **variant.extractor)
    if res.n_images != n_cat:
        raise RuntimeError(f"{dom.tag}/{split}: {res.n_images} images in the store, {n_cat} in the catalogue")
    train_clusters(store, model, assignments, k, show_progress=False)
    lib = library_state()
    info = {
        "n_embedded": res.n_embedded,
        "n_reused": res.n_reused,
        "seconds": res.seconds,
        "k": k,
        "library": lib,
        "model_library": lib,
    }
    record.write_text(json.dumps(info))
    log(f"    {res.summary()}")
    return Built(model, assignments, store, k, res.n_embedded, res.seconds, False, lib)


def speed_side_by_side(
    doms: Sequence[Domain], variants: Sequence[Variant], work: Path, n: int, log: Any
) -> list[tuple[str, str, str, int, float]]:
    """Fresh extraction of the first ``n`` catalogue images of each domain by every extractor
    variant, interleaved (A B ... then ... B A), after a warm-up that builds each graph."""
    from varsitysrch import extract_features

    by_key = {v.extractor_key: v for v in variants}
    out: list[tuple[str, str, str, int, float]] = []
    for d_i, dom in enumerate(doms):
        src = image_sample(dom, work, n)
        keys = list(by_key)
        order = keys + keys[::-1] if d_i % 2 == 0 else keys[::-1] + keys
        rates: dict[str, list[float]] = {k: [] for k in keys}
        for j, key in enumerate(order):
            dst = work / "speed" / "stores" / f"{dom.tag}-{j}"
            if dst.exists():
                shutil.rmtree(dst)
            res = extract_features(src, dst, show_progress=False, **by_key[key].extractor)
            rates[key].append(res.images_per_second)
            shutil.rmtree(dst)
        for key in keys:
            names = ", ".join(v.name for v in variants if v.extractor_key == key)
            out.append((dom.name, names, key, min(n, len(dom.ids)), float(np.mean(rates[key]))))
            log(f"  speed {dom.name} {key}: {np.mean(rates[key]):.1f} images/s ({rates[key]})")
    return out


def warm_up(dom: Domain, variants: Sequence[Variant], work: Path, log: Any) -> None:
    """Embed two images with every extractor variant, so that building (and caching) its graph
    -- the int8 graph is calibrated once per machine -- is not in any images/s figure."""
    from varsitysrch import extract_features

    src = image_sample(dom, work, 2)
    for key, v in {v.extractor_key: v for v in variants}.items():
        t0 = time.perf_counter()
        dst = work / "warm" / key
        if dst.exists():
            shutil.rmtree(dst)
        extract_features(src, dst, show_progress=False, **v.extractor)
        shutil.rmtree(dst)
        log(f"  warm-up {key}: {time.perf_counter() - t0:.1f} s")


# ====================================================================== searching and scoring
def score(hits: list[str], q_label: int, label_of: dict[str, int], n_relevant: int) -> tuple[float, float]:
    """(AP@10, recall@1) of one query's hits."""
    rel = np.zeros(TOP)
    for i, h in enumerate(hits[:TOP]):
        rel[i] = label_of.get(h, -1) == q_label
    if n_relevant == 0:
        return 0.0, 0.0
    prec = np.cumsum(rel) / np.arange(1, TOP + 1)
    return float((prec * rel).sum() / min(TOP, n_relevant)), float(rel[0])


def variant_searcher(variant: Variant, built: Built) -> tuple[Any, float]:
    """A Searcher for ``variant`` on ``built``'s store, and the seconds spent training: the shared
    model, or (with training options) the variant's own, trained afresh on the same store."""
    from varsitysrch import Searcher, train_clusters

    model, csv, t_train = built.model, built.csv, 0.0
    if variant.train:
        stem = f"{built.model.stem}-{variant.train_key}".replace("=", "-").replace(",", "_")
        model, csv = built.model.with_name(stem + ".vsm"), built.model.with_name(stem + ".csv")
        t_train = time.perf_counter()
        train_clusters(built.store, model, csv, built.k, show_progress=False, **variant.train)
        t_train = time.perf_counter() - t_train
    return Searcher(model, csv, features_folder=built.store, **variant.searcher), t_train


def evaluate_variant(
    dom: Domain, protocol: str, variant: Variant, built: Built, log: Any
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Per-query AP@10 and R@1 of a variant on one domain and protocol (+ notes)."""
    searcher, t_train = variant_searcher(variant, built)
    split_rows = dom.catalogue_rows["full" if protocol == "loo" else "heldout"]
    label_of = {dom.ids[r]: int(dom.labels[r]) for r in split_rows}
    cat_counts = np.bincount(dom.labels[split_rows], minlength=int(dom.labels.max()) + 1)
    queries = dom.q_loo if protocol == "loo" else dom.q_heldout
    ap = np.zeros(len(queries))
    r1 = np.zeros(len(queries))
    notes: dict[str, Any] = {"k": built.k, "catalogue": len(split_rows), "queries": len(queries)}
    if variant.train:
        notes["train_s"] = t_train
    graph = searcher.config.get("rerank")
    if graph:  # the neighbour graph's build time and size, as the model records them
        notes["graph_s"], notes["graph_bytes_per_image"] = graph["seconds"], graph["bytes_per_image"]
    views = variant.search.get("views", "auto")
    # whether views="auto" searched crops, where the public API says it (Searcher.resolve_views
    # existed until the search options redesign; without it the count is left out)
    decide = getattr(searcher, "resolve_views", None) if views == "auto" else None
    fired = 0
    t0 = time.perf_counter()
    for i, r in enumerate(queries):
        y = int(dom.labels[r])
        if protocol == "loo":
            hits = run_query(searcher, dom.ids[r], True, TOP, variant.search)
            n_rel = int(cat_counts[y]) - 1
        else:
            path = str(dom.root / dom.ids[r])
            if decide is not None and decide(path, "auto")[0] is not None:
                fired += 1
            hits = run_query(searcher, path, False, TOP, variant.search)
            n_rel = int(cat_counts[y])
        ap[i], r1[i] = score(hits, y, label_of, n_rel)
    notes["ms_per_query"] = 1000 * (time.perf_counter() - t0) / max(1, len(queries))
    if protocol == "heldout" and decide is not None:
        notes["auto_views_fired"] = fired
    log(
        f"  {dom.name} {PROTOCOL_NAMES[protocol]} {variant.name}: mAP@10 {ap.mean():.4f} R@1 {r1.mean():.4f} "
        f"({notes['ms_per_query']:.0f} ms/query)"
    )
    return ap, r1, notes


def paired_bootstrap(
    base: np.ndarray, other: np.ndarray, resamples: int, seed: Sequence[int]
) -> tuple[float, float, float]:
    """Mean difference ``other - base`` and its 95 % percentile interval (paired over queries)."""
    d = np.asarray(other, np.float64) - np.asarray(base, np.float64)
    rng = np.random.default_rng(list(seed))
    idx = rng.integers(0, len(d), size=(resamples, len(d)))
    means = d[idx].mean(1)
    lo, hi = np.percentile(means, [2.5, 97.5])
    return float(d.mean()), float(lo), float(hi)


def reading(lo: float, hi: float) -> str:
    return "gain" if lo > 0 else "loss" if hi < 0 else "n.s."


def verdict(rows: list[dict[str, Any]], complete: bool) -> str:
    """The rule over every (domain, protocol) measured: mAP@10 gains everywhere, no loss anywhere."""
    gains = all(r["lo"] > 0 for r in rows if r["metric"] == "mAP@10")
    losses = any(r["hi"] < 0 for r in rows)
    v = "adopt" if gains and not losses else "opt-in"
    return v if complete else f"{v} (not a decision)"


# ====================================================================== main
def default_work() -> str:
    """The stores' cache folder: ``$VARSITYSRCH_DEV_WORK``, else ``<temp>/varsitysrch-dev-domains``
    (shared with ``relevance_probe.py`` and ``shelf_studio.py``, which read its stores)."""
    return os.environ.get(
        "VARSITYSRCH_DEV_WORK", str(Path(tempfile.gettempdir()) / "varsitysrch-dev-domains")
    )


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="dev_domains.py",
        description="Decide a default on the three dev domains: paired bootstrap, one rule.",
    )
    p.add_argument("--data", default=os.environ.get("VARSITYSRCH_DATA"), help="folder of the domains")
    p.add_argument(
        "--work",
        default=default_work(),
        help="cache folder (catalogue folders, stores, models)",
    )
    p.add_argument("--domains", default=",".join(DEV_DOMAINS), help="comma-separated domain folders")
    p.add_argument("--protocols", default="loo,heldout", help="loo, heldout or both")
    p.add_argument("--baseline", default="default:", help="NAME:key=value,... (default: the library's)")
    p.add_argument("--variant", action="append", default=[], help="NAME:key=value,... (repeatable)")
    p.add_argument("--queries", type=int, default=N_QUERIES, help="queries per domain and protocol")
    p.add_argument("--limit", type=int, default=None, help="subsample each domain to N images (smoke runs)")
    p.add_argument("--resamples", type=int, default=RESAMPLES)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--speed", type=int, default=200, help="images per domain for side-by-side speed (0: off)")
    p.add_argument(
        "--links",
        choices=("copy", "symlink"),
        default="copy",
        help="catalogue folders of copies (default) or of symlinks to the data",
    )
    p.add_argument("--fresh", action="store_true", help="make the stores and models again (not the cache)")
    p.add_argument("--json", default=None, help="also write every figure (and per-query values) here")
    a = p.parse_args(argv)
    if not a.data:
        raise UsageError(
            "--data (or VARSITYSRCH_DATA) is required: the folder holding the domain folders "
            f"({', '.join(DEV_DOMAINS)}), each with a manifest.csv"
        )
    if not Path(a.data).is_dir():
        raise UsageError(f"--data {a.data!r} is not a folder (the folder holding {', '.join(DEV_DOMAINS)})")
    a.protocol_list = [s.strip() for s in a.protocols.split(",") if s.strip()]
    bad = [s for s in a.protocol_list if s not in PROTOCOLS]
    if bad or not a.protocol_list:
        raise UsageError(f"--protocols must be a comma-separated subset of loo,heldout; got {a.protocols!r}")
    a.domain_list = [s.strip() for s in a.domains.split(",") if s.strip()]
    if not a.domain_list:
        raise UsageError("--domains names no domain")
    if not a.variant:
        raise UsageError("give at least one --variant NAME:key=value,... to compare with the baseline")
    for name, v, low in (
        ("--queries", a.queries, 1),
        ("--resamples", a.resamples, 100),
        ("--speed", a.speed, 0),
    ):
        if v < low:
            raise UsageError(f"{name} must be >= {low}; got {v}")
    if a.limit is not None and a.limit < 20:
        raise UsageError(f"--limit must be >= 20; got {a.limit}")
    a.variants = [parse_variant(s) for s in [a.baseline, *a.variant]]
    names = [v.name for v in a.variants]
    if len(set(names)) != len(names):
        raise UsageError(f"variant names must differ (the baseline's too); got {names}")
    return a


def main(argv: Sequence[str] | None = None) -> int:
    try:
        a = parse_args(argv)
    except UsageError as exc:
        print(f"dev_domains.py: error: {exc}", file=sys.stderr)
        return 2

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    data, work = Path(a.data).resolve(), Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    try:
        doms = [load_domain(data, d, limit=a.limit, n_queries=a.queries, seed=a.seed) for d in a.domain_list]
    except UsageError as exc:
        print(f"dev_domains.py: error: {exc}", file=sys.stderr)
        return 2
    base, *others = a.variants
    complete = set(a.domain_list) == set(DEV_DOMAINS) and a.limit is None
    t_start = time.perf_counter()

    # ---- stores and models (cached), extraction images/s from the run that made them
    built: dict[tuple[str, str, str], Built] = {}
    warm_up(doms[0], a.variants, work, log)
    splits = [s for p, s in (("loo", "full"), ("heldout", "heldout")) if p in a.protocol_list]
    for v in a.variants:  # the baseline's stores first, for every domain
        for dom in doms:
            if (dom.tag, splits[0], v.extractor_key) in built:
                continue
            if a.fresh:  # the full store first: the held-out store is made from it
                full = build(dom, "full", v, work, a.links, log, fresh=True)
                if "full" in splits:
                    built[(dom.tag, "full", v.extractor_key)] = full
            for split in splits:
                if (dom.tag, split, v.extractor_key) not in built:
                    built[(dom.tag, split, v.extractor_key)] = build(
                        dom, split, v, work, a.links, log, fresh=a.fresh
                    )
    speed = speed_side_by_side(doms, a.variants, work, a.speed, log) if a.speed else []

    # ---- searches
    results: dict[tuple[str, str, str], tuple[np.ndarray, np.ndarray, dict[str, Any]]] = {}
    for dom in doms:
        for proto in a.protocol_list:
            split = "full" if proto == "loo" else "heldout"
            for v in a.variants:
                b = built[(dom.tag, split, v.extractor_key)]
                results[(dom.name, proto, v.name)] = evaluate_variant(dom, proto, v, b, log)

    # ---- tables
    cmd = "python benchmarks/dev_domains.py " + " ".join(_quote(s) for s in (argv or sys.argv[1:]))
    out: list[str] = [
        f"`{cmd}`  (varsitysrch {library_state()}; {K_RULE}; top {TOP}; "
        f"{a.resamples:,} paired bootstrap resamples, seed {a.seed})",
        "",
        "| domain | protocol | catalogue | queries | k |",
        "|---|---|---|---|---|",
    ]
    for dom in doms:
        for proto in a.protocol_list:
            n = results[(dom.name, proto, base.name)][2]
            out.append(
                f"| {dom.name} | {PROTOCOL_NAMES[proto]} | {n['catalogue']:,} | {n['queries']} | {n['k']} |"
            )
    record: dict[str, Any] = {"command": cmd, "variants": {}, "speed": speed, "rows": []}
    for v in others:
        rows: list[dict[str, Any]] = []
        for d_i, dom in enumerate(doms):
            for p_i, proto in enumerate(a.protocol_list):
                b_ap, b_r1, _ = results[(dom.name, proto, base.name)]
                v_ap, v_r1, notes = results[(dom.name, proto, v.name)]
                for m_i, ((_, label), bv, vv) in enumerate(
                    zip(METRICS, (b_ap, b_r1), (v_ap, v_r1), strict=True)
                ):
                    diff, lo, hi = paired_bootstrap(bv, vv, a.resamples, (a.seed, d_i, p_i, m_i))
                    rows.append(
                        {
                            "domain": dom.name, "protocol": PROTOCOL_NAMES[proto], "metric": label,
                            "baseline": float(bv.mean()), "value": float(vv.mean()),
                            "diff": diff, "lo": lo, "hi": hi, "notes": notes,
                        }
                    )  # fmt: skip
        vd = verdict(rows, complete)
        record["variants"][v.name] = {"spec": v.spec, "verdict": vd}
        record["rows"] += [{"name": v.name, **r} for r in rows]
        out += [
            "",
            f"**{v.name}** (`{v.spec}`) vs **{base.name}** (`{base.spec}`): **{vd}**",
            "",
            f"| domain | protocol | metric | {base.name} | {v.name} | Δ | 95 % interval | reading "
            "| verdict |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for r in rows:
            out.append(
                f"| {r['domain']} | {r['protocol']} | {r['metric']} | {r['baseline']:.4f} | {r['value']:.4f} "
                f"| {r['diff']:+.4f} | [{r['lo']:+.4f}, {r['hi']:+.4f}] "
                f"| {reading(r['lo'], r['hi'])} | {vd} |"
            )
        fired = [
            f"{r['domain']} {r['notes']['auto_views_fired']}/{r['notes']['queries']}"
            for r in rows
            if r["metric"] == "mAP@10" and "auto_views_fired" in r["notes"]
        ]
        if fired:
            out += ["", f"views=auto searched crops for: {', '.join(fired)} held-out queries ({v.name})."]
    fired_b = [
        f"{d} {n['auto_views_fired']}/{n['queries']}"
        for (d, p, name), (_, _, n) in results.items()
        if name == base.name and "auto_views_fired" in n
    ]
    if fired_b:
        out += ["", f"views=auto searched crops for: {', '.join(fired_b)} held-out queries ({base.name})."]
    # ---- query latency side by side, and what a variant's own model cost to build
    out += [
        "",
        "Costs, this run (ms/query: the protocol's queries one after another, one process; "
        "x: the baseline's, same domain and protocol):",
        "",
        "| variant | domain | protocol | ms/query | x baseline | model trained (s) | graph built (s) "
        "| graph bytes/image |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for (d, p, name), (_, _, n) in results.items():
        b_ms = results[(d, p, base.name)][2]["ms_per_query"]
        cells = [
            f"{n[key]:{fmt}}" if key in n else "-"
            for key, fmt in (("train_s", ".1f"), ("graph_s", ".2f"), ("graph_bytes_per_image", ".0f"))
        ]
        out.append(
            f"| {name} | {d} | {PROTOCOL_NAMES[p]} | {n['ms_per_query']:.1f} "
            f"| {n['ms_per_query'] / b_ms:.2f} | {' | '.join(cells)} |"
        )
    # ---- extraction images/s per extractor variant
    out += [
        "",
        "| domain | split | extractor options (variants) | images embedded | images/s | run | built by |",
        "|---|---|---|---|---|---|---|",
    ]
    for (tag, split, ex_key), b in built.items():
        names = ", ".join(v.name for v in a.variants if v.extractor_key == ex_key)
        rate = f"{b.n_embedded / b.seconds:.1f}" if b.seconds > 0 and b.n_embedded else "- (reused)"
        out.append(
            f"| {tag} | {split} | {ex_key} ({names}) | {b.n_embedded:,} | {rate} "
            f"| {'cached' if b.cached else 'this run'} | {b.library} |"
        )
    if speed:
        out += [
            "",
            f"Side by side, this run (first {a.speed} images per domain, fresh store each time, "
            "interleaved, mean of 2):",
            "",
            "| domain | extractor options (variants) | images | images/s |",
            "|---|---|---|---|",
        ]
        out += [f"| {d} | {k_} ({vs}) | {n} | {r:.1f} |" for d, vs, k_, n, r in speed]
    out += ["", f"(wall time {time.perf_counter() - t_start:.0f} s)"]
    print("\n".join(out))
    if a.json:
        for (d, p, name), (ap, r1, _) in results.items():
            record.setdefault("per_query", {}).setdefault(name, {})[f"{d}/{p}"] = {
                "ap": ap.round(6).tolist(), "r1": r1.tolist()
            }  # fmt: skip
        Path(a.json).write_text(json.dumps(record, indent=1))
    return 0


def _quote(s: str) -> str:
    return f'"{s}"' if any(c in s for c in " :;,&|*") else s


if __name__ == "__main__":
    sys.exit(main())
