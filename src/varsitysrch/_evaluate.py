"""Search quality on a labelled catalogue: ``varsitysrch eval``.

:func:`evaluate` measures, for every configuration (extractor x post-processing) and
every ``k``, the search methods side by side on the same queries:

``exact``
    exact nearest neighbours (every catalogue vector scanned, ranked by cosine);
``seed``
    the original scripts' method: the first ``top_k`` images of the query's predicted
    cluster in CSV (catalogue) order, unranked;
``ranked``
    :class:`~varsitysrch.Searcher`'s search: the ``nprobe`` nearest clusters scanned
    and ranked (``nprobe=None``: the value calibrated when the model was trained).

Metrics (relevance = same label; images of the query's own ``group`` are neither
results nor relevant):

* ``P@k`` -- relevant results among the top ``k``, divided by ``k``;
* ``mAP@k`` -- mean over queries of ``AP@k = sum_i P@i * rel_i / min(k, R)``, ``R`` the
  number of relevant catalogue images;
* ``recall@k`` against exact search in the same configuration (overlap of the top ``k``);
* hit rate -- queries with at least one relevant result in the top ``k``;
* latency per query, p50 / p95: search alone (the real :class:`Searcher` code path), and
  embed + search (decoding, embedding and searching a query image, on ``n_latency``
  queries);
* index size -- the model file (centroids, ids, float16 vectors).

Queries are ``n_queries`` catalogue images held out one at a time (leave-one-out: the
query is removed from its own results), a held-out split (``query_split`` a fraction,
or a list of ids: those images are removed from the catalogue), or a separate labelled
query set (``queries_dir`` / ``queries_csv``: shoppers' photos searched against catalogue
shots); rows report recall@1 and recall@5 (a relevant result first / in the top 5) beside
P@k and mAP@k.
Catalogue-side post-processing is fitted on the catalogue; under leave-one-out the
database-side augmentation (DBA) is recomputed for every query without it (an image
never augments its neighbours with itself), so leave-one-out numbers stay honest.

Features are extracted once per extractor configuration with
:func:`~varsitysrch.extract_features` into ``out_dir/features/<config>`` and reused by
later runs; models are trained with :func:`~varsitysrch.train_clusters` and searched
with :class:`~varsitysrch.Searcher`, so the numbers are those of the real code path.

Configuration strings::

    EXTRACTOR[:option=value[,option=value...]][+post[=param]...]

    efficientnet-lite0                          the default extractor, plain cosine
    efficientnet-lite0:pooling=gem,input_size=288
    efficientnet-lite0:quantized=true           static int8
    efficientnet-lite0+dba=10+qe=2              alpha-DBA (10 neighbours) and alpha-QE (2)
    mobilenet-v2+whiten=256                     PCA whitening to 256 dims fitted on the catalogue
    efficientnet-lite0+colour=0.1               colour histogram mixed into the score (weight 0.1)
    efficientnet-lite0+pca=128                  search-space PCA of 128 dims (train_clusters' search_pca)
    efficientnet-lite0+pca=0                    plain cosine on the raw vectors
    efficientnet-lite0+pwhiten=0.25             partial whitening (power 0.25)

Without ``+pca`` / ``+qe`` a configuration gets :func:`~varsitysrch.train_clusters`' default
search space (a catalogue-centred PCA to 128 dimensions from 1,000 images up) and its default
query expansion (alpha-QE, 2 neighbours), i.e. what a user of the library gets; ``+qe=0``
turns the expansion off.  ``+crops`` embeds each query
as the whole image and five 70 % crops (best view per catalogue image), ``+flipq`` adds the
mirror image(s).  Query expansion runs inside :class:`~varsitysrch.Searcher`
(``expand=``), with the query's own image (and group) excluded from results and
expansion alike (``exclude=``).
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import html
import json
import logging
import os
import platform
import re
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ._config import DEFAULT_CONFIGS, Compute, EvalOptions, settle
from ._errors import InvalidArgumentError
from ._extractors import DEFAULT_EXTRACTOR, Extractor
from ._io import write_json
from ._postprocess import (
    DBA_NEIGHBOURS,
    QE_NEIGHBOURS,
    Whitening,
    apply_whitening,
    augment_rows,
    fit_whitening,
    neighbour_lists,
)
from ._store import STORE_JSON, FeatureStore, normalize_rows

__all__ = ["DEFAULT_CONFIGS", "EvalConfig", "EvalReport", "evaluate"]

log = logging.getLogger(__name__)

_POST_KINDS = ("whiten", "pwhiten", "pca", "dba", "qe", "colour", "crops", "flipq", "auto")
_POST_DEFAULTS: dict[str, float] = {
    "whiten": 0,  # 0 = all components
    "pwhiten": 0.25,
    "pca": 256,
    "dba": DBA_NEIGHBOURS,
    "qe": QE_NEIGHBOURS,
    "colour": 0.1,
    "crops": 1,  # query embedded as the whole image + five 70 % crops, best view per catalogue image
    "flipq": 1,  # the query's mirror image as one more view
    "auto": 1,  # views="auto" as users get it: crops only for a shop photo against a studio catalogue
}
_OPTION_KEYS = ("pooling", "input_size", "resize", "quantized")


# ====================================================================== configurations
def _parse_value(v: str) -> Any:
    low = v.strip().lower()
    if low in ("true", "yes", "on"):
        return True
    if low in ("false", "no", "off"):
        return False
    with contextlib.suppress(ValueError):
        return int(low)
    with contextlib.suppress(ValueError):
        return float(low)
    return v.strip()


@dataclass(frozen=True)
class EvalConfig:
    """One configuration: an extractor (name + options) and a chain of post-processing steps."""

    extractor: str = DEFAULT_EXTRACTOR
    options: tuple[tuple[str, Any], ...] = ()
    post: tuple[tuple[str, float], ...] = ()

    @classmethod
    def parse(cls, spec: str | EvalConfig) -> EvalConfig:
        """Parse ``EXTRACTOR[:opt=val,...][+post[=param]...]``."""
        if isinstance(spec, EvalConfig):
            return spec
        if not isinstance(spec, str) or not spec.strip():
            raise InvalidArgumentError(f"a configuration must be a non-empty string; got {spec!r}")
        head, *posts = spec.strip().split("+")
        options: dict[str, Any] = {}
        name = head
        if ":" in head:
            left, right = head.rsplit(":", 1)
            if "=" in right:  # an options list (onnx:PATH keeps its own colon)
                name = left
                for part in filter(None, right.split(",")):
                    if "=" not in part:
                        raise InvalidArgumentError(f"extractor option {part!r} in {spec!r} is not key=value")
                    k, v = part.split("=", 1)
                    k = k.strip()
                    if k not in _OPTION_KEYS:
                        raise InvalidArgumentError(
                            f"unknown extractor option {k!r} in {spec!r}; known: {', '.join(_OPTION_KEYS)}"
                        )
                    options[k] = _parse_value(v)
        post: list[tuple[str, float]] = []
        for p in posts:
            kind, _, param = p.strip().partition("=")
            kind = {"color": "colour", "whitening": "whiten", "query-expansion": "qe"}.get(kind, kind)
            if kind not in _POST_KINDS:
                raise InvalidArgumentError(
                    f"unknown post-processing {kind!r} in {spec!r}; known: {', '.join(_POST_KINDS)}"
                )
            post.append((kind, float(param) if param else float(_POST_DEFAULTS[kind])))
        return cls(name or DEFAULT_EXTRACTOR, tuple(sorted(options.items())), tuple(post))

    @property
    def name(self) -> str:
        s = self.extractor
        if self.options:
            s += ":" + ",".join(f"{k}={_fmt(v)}" for k, v in self.options)
        for kind, param in self.post:
            s += f"+{kind}={_fmt(param)}"
        return s

    @property
    def feature_key(self) -> str:
        """Folder name of this configuration's feature store (post-processing excluded)."""
        s = self.extractor + "".join(f"-{k}={_fmt(v)}" for k, v in self.options)
        return re.sub(r"[^A-Za-z0-9_.=-]+", "_", s)

    def post_param(self, kind: str) -> float | None:
        for k, p in self.post:
            if k == kind:
                return p
        return None


def _fmt(v: Any) -> str:
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return str(v).lower() if isinstance(v, bool) else str(v)


# ====================================================================== report
@dataclass
class EvalReport:
    """Rows of measurements (one per configuration x k x method x nprobe) plus run metadata."""

    rows: list[dict[str, Any]]
    meta: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"format": "varsitysrch-eval", "version": 1, "meta": self.meta, "rows": self.rows}

    def to_json(self, path: str | os.PathLike[str]) -> Path:
        write_json(path, self.to_dict())
        return Path(path)

    @classmethod
    def from_json(cls, path: str | os.PathLike[str]) -> EvalReport:
        d = json.loads(Path(path).read_text(encoding="utf-8"))
        return cls(d["rows"], d.get("meta", {}))

    def best(self, metric: str = "map", *, method: str | None = None) -> dict[str, Any]:
        rows = [r for r in self.rows if method is None or r["method"] == method]
        return max(rows, key=lambda r: r[metric])

    def distinct_rows(self) -> list[dict[str, Any]]:
        """The rows without repeats: the default nprobe measured again as a number (``default=2`` and
        ``2`` of one configuration and k) is one row, labelled ``2 (default)``."""
        seen: dict[tuple[Any, ...], dict[str, Any]] = {}
        repeated: set[tuple[Any, ...]] = set()
        for r in self.rows:
            key = (r["config"], r["method"], r["k"], r["nprobe"] if r["method"] == "ranked" else None)
            if key in seen:
                repeated.add(key)
                if str(r.get("nprobe_label", "")).startswith("default"):
                    seen[key] = {**seen[key], "nprobe_label": "default"}
                continue
            seen[key] = r
        out = []
        for key, r in seen.items():
            if key in repeated and str(r.get("nprobe_label", "")).startswith("default"):
                r = {**r, "nprobe_label": f"{r['nprobe']} (default)"}
            out.append(r)
        return out

    def _yours(self) -> dict[str, Any] | None:
        """The row of the search ``varsitysrch search`` runs: the default configuration, ranked, at the
        model's default nprobe (else the first ranked row)."""
        ranked = [r for r in self.rows if r["method"] == "ranked"]
        default = [r for r in ranked if r["config"] == DEFAULT_EXTRACTOR]
        pool = default or ranked
        at_default = [r for r in pool if str(r.get("nprobe_label", "")).startswith("default")]
        rows = at_default or pool
        return rows[0] if rows else None

    def summary(self) -> str:
        """A few lines for the person who runs ``eval``: the quality of their search (mAP@k, recall@1),
        what the numbers mean, and the one setting worth changing (or that none is)."""
        m = self.meta
        k = m.get("top_k", 10)
        mine = self._yours()
        if mine is None:
            return "No ranked search was measured: see the full table (--details).\n"
        lines = [
            f"Search quality on {m.get('n_catalogue', '?')} catalogue images, {m.get('n_queries', '?')} "
            f"queries; a result is relevant when it has the query's label.",
            f"Your search ({mine['config']}, k = {mine['k']} clusters, scanning "
            f"{100 * mine['scanned']:.0f} % of the catalogue):",
            f"  mAP@{k} {mine['map']:.3f}: how early the relevant images come in the first {k} results "
            "(1 = all of them first).",
            f"  recall@1 {mine['r1']:.3f}: the first result has the query's label in "
            f"{100 * mine['r1']:.0f} % of searches.",
        ]
        same = [
            r
            for r in self.rows
            if r["method"] in ("ranked", "exact") and r["config"] == mine["config"] and r is not mine
        ]
        others = [
            r
            for r in self.rows
            if r["method"] == "ranked"
            and r["config"] != mine["config"]
            and r.get("nprobe") == mine.get("nprobe")
        ]
        best = max(same + others, key=lambda r: r["map"], default=None)
        gain = 0.0 if best is None else best["map"] - mine["map"]
        if best is None or gain < 0.01:
            lines.append(
                f"Worth changing: nothing measured here beats it by 0.01 mAP@{k} or more; keep the defaults."
            )
        elif best["config"] != mine["config"]:
            lines.append(
                f"Worth changing: the configuration {best['config']} (mAP@{k} {best['map']:.3f}, "
                f"{gain:+.3f})."
            )
        elif best["method"] == "exact":
            lines.append(
                f"Worth changing: search with --exact (mAP@{k} {best['map']:.3f}, {gain:+.3f}, scanning "
                "the whole catalogue), or a larger --nprobe."
            )
        else:
            lines.append(
                f"Worth changing: search with --nprobe {best['nprobe']} (mAP@{k} {best['map']:.3f}, "
                f"{gain:+.3f}, scanning {100 * best['scanned']:.0f} % of the catalogue)."
            )
        return "\n".join(lines) + "\n"

    def _table(self) -> tuple[list[str], list[list[str]]]:
        k = self.meta.get("top_k", 10)
        head = [
            "config",
            "method",
            "k",
            "nprobe",
            f"P@{k}",
            f"mAP@{k}",
            "ΔmAP",
            "R@1",
            "R@5",
            f"recall@{k} vs exact",
            "hit rate",
            "scanned",
            "search ms p50/p95",
            "embed+search ms p50/p95",
            "index MB",
        ]
        base = self.meta.get("baseline_map")
        out: list[list[str]] = []
        for r in self.distinct_rows():

            def ms(a: str, b: str, r: dict[str, Any] = r) -> str:
                return "-" if r.get(a) is None else f"{r[a]:.2f} / {r[b]:.2f}"

            out.append(
                [
                    r["config"],
                    r["method"],
                    "-" if r["k"] is None else str(r["k"]),
                    r["nprobe_label"],
                    f"{r['precision']:.3f}",
                    f"{r['map']:.3f}",
                    "-" if base is None else f"{r['map'] - base:+.3f}",
                    "-" if r.get("r1") is None else f"{r['r1']:.3f}",
                    "-" if r.get("r5") is None else f"{r['r5']:.3f}",
                    f"{r['recall']:.3f}",
                    f"{r['hit_rate']:.3f}",
                    f"{r['scanned']:.3f}",
                    ms("search_ms_p50", "search_ms_p95"),
                    ms("embed_search_ms_p50", "embed_search_ms_p95"),
                    "-" if r.get("index_bytes") is None else f"{r['index_bytes'] / 1e6:.1f}",
                ]
            )
        return head, out

    def to_markdown(self) -> str:
        m = self.meta
        head, rows = self._table()
        lines = [
            f"Search quality on `{m.get('source', '?')}`: {m.get('n_catalogue', '?')} catalogue images, "
            f"{m.get('n_queries', '?')} queries ({m.get('query_split', '?')}), relevance = same label"
            + (", own group excluded" if m.get("groups") else "")
            + ".",
            "",
            "| " + " | ".join(head) + " |",
            "|" + "|".join("---" for _ in head) + "|",
        ]
        lines += ["| " + " | ".join(r) + " |" for r in rows]
        if m.get("baseline"):
            lines += [
                "",
                f"ΔmAP: against `{m['baseline']}` exact "
                f"(mAP@{m.get('top_k')} {m.get('baseline_map', 0):.3f}).",
            ]
        if m.get("notes"):
            lines += [""] + [f"- {n}" for n in m["notes"]]
        return "\n".join(lines) + "\n"

    def to_html(self) -> str:
        head, rows = self._table()
        esc = html.escape
        body = "\n".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in r) + "</tr>" for r in rows)
        m = self.meta
        return (
            "<!doctype html><html><head><meta charset='utf-8'><title>varsitysrch eval</title>"
            "<style>body{font-family:sans-serif}table{border-collapse:collapse}td,th{border:1px solid #ccc;"
            "padding:2px 6px;text-align:right}td:first-child,td:nth-child(2){text-align:left}</style>"
            f"</head><body><p>{esc(str(m.get('source', '')))}: {m.get('n_catalogue')} catalogue images, "
            f"{m.get('n_queries')} "
            f"queries ({esc(str(m.get('query_split')))}).</p><table><tr>"
            + "".join(f"<th>{esc(h)}</th>" for h in head)
            + f"</tr>\n{body}\n</table></body></html>\n"
        )

    def write(self, out_dir: str | os.PathLike[str], stem: str = "eval") -> dict[str, Path]:
        """Write ``<stem>.json``, ``<stem>.md`` and ``<stem>.html`` into ``out_dir``."""
        d = Path(out_dir)
        d.mkdir(parents=True, exist_ok=True)
        paths = {"json": self.to_json(d / f"{stem}.json"), "md": d / f"{stem}.md", "html": d / f"{stem}.html"}
        paths["md"].write_text(self.to_markdown(), encoding="utf-8")
        paths["html"].write_text(self.to_html(), encoding="utf-8")
        return paths


# ====================================================================== metrics
def _precision_at_k(rel: np.ndarray, k: int) -> np.ndarray:
    """``rel`` [q, >=k] booleans (missing results count as not relevant) -> P@k per query."""
    r = _pad(rel, k)
    return r.sum(1) / float(k)


def _average_precision_at_k(rel: np.ndarray, n_relevant: np.ndarray, k: int) -> np.ndarray:
    """AP@k per query: ``sum_i P@i * rel_i / min(k, R)`` (0 when ``R == 0``)."""
    r = _pad(rel, k).astype(np.float64)
    prec = np.cumsum(r, axis=1) / np.arange(1, k + 1)
    denom = np.minimum(k, np.asarray(n_relevant, np.float64))
    with np.errstate(invalid="ignore", divide="ignore"):
        ap = (prec * r).sum(1) / denom
    return np.where(denom > 0, ap, 0.0)


def _recall_against(found: Sequence[Sequence[int]], reference: Sequence[Sequence[int]], k: int) -> np.ndarray:
    """Overlap of each top-``k`` list with the reference top-``k`` list, divided by the reference length."""
    out = np.empty(len(found), np.float64)
    for i, (a, b) in enumerate(zip(found, reference, strict=True)):
        ref = set(list(b)[:k])
        out[i] = len(set(list(a)[:k]) & ref) / len(ref) if ref else 1.0
    return out


def _pad(rel: np.ndarray, k: int) -> np.ndarray:
    rel = np.asarray(rel, bool)
    if rel.ndim == 1:
        rel = rel[None]
    if rel.shape[1] >= k:
        return rel[:, :k]
    return np.hstack([rel, np.zeros((rel.shape[0], k - rel.shape[1]), bool)])


# ====================================================================== labels
def _read_labels(path: str | os.PathLike[str]) -> tuple[dict[str, str], dict[str, str]]:
    """A CSV ``image,label[,group]`` (header optional; ``path`` or ``id`` accepted for ``image``)."""
    p = Path(path)
    if not p.is_file():
        raise InvalidArgumentError(f"labels CSV {str(p)!r} does not exist")
    labels: dict[str, str] = {}
    groups: dict[str, str] = {}
    try:
        with open(p, encoding="utf-8-sig", newline="") as f:
            rows = [r for r in csv.reader(f) if r and any(c.strip() for c in r)]
    except UnicodeDecodeError as exc:
        raise InvalidArgumentError(f"labels CSV {str(p)!r} is not UTF-8 text ({exc.reason})") from None
    except csv.Error as exc:  # a NUL byte, an unterminated quote at the end, ...
        raise InvalidArgumentError(f"labels CSV {str(p)!r} is not a readable CSV ({exc})") from None
    if not rows:
        raise InvalidArgumentError(f"labels CSV {str(p)!r} is empty")
    head = [c.strip().lower() for c in rows[0]]
    if "label" in head:
        img_col = next((head.index(c) for c in ("image", "path", "id", "file", "filename") if c in head), 0)
        lab_col = head.index("label")
        grp_col = head.index("group") if "group" in head else None
        body = rows[1:]
    else:
        img_col, lab_col, grp_col = 0, 1, 2 if len(rows[0]) > 2 else None
        body = rows
    for r in body:
        if len(r) <= max(img_col, lab_col):
            raise InvalidArgumentError(f"labels CSV {str(p)!r}: short row {r}")
        img = r[img_col].strip().replace("\\", "/")
        labels[img] = r[lab_col].strip()
        if grp_col is not None and len(r) > grp_col and r[grp_col].strip():
            groups[img] = r[grp_col].strip()
    return labels, groups


def _folder_labels(ids: Iterable[str]) -> dict[str, str]:
    """Label = first sub-folder of each id; images directly in the root are unlabelled."""
    return {i: i.split("/", 1)[0] for i in ids if "/" in i}


# ====================================================================== the evaluation
@dataclass
class _Queries:
    ids: list[str]
    split: str
    held_out: bool
    #: a separate query set (not catalogue images): (its folder, labels of its images)
    external: tuple[Path, dict[str, str]] | None = None


def _query_set(
    source: Path,
    features_mode: bool,
    queries_dir: str | os.PathLike[str] | None,
    queries_csv: str | os.PathLike[str] | None,
) -> tuple[Path, dict[str, str], bool]:
    """``(folder, labels, same_folder)`` of a labelled query set given by a folder and/or a CSV."""
    from ._images import list_images

    root = Path(queries_dir) if queries_dir is not None else source
    if queries_dir is None and features_mode:
        raise InvalidArgumentError(
            "queries_csv without queries_dir needs an image folder as the catalogue, not a feature store"
        )
    if not root.is_dir():
        raise InvalidArgumentError(f"queries_dir {str(root)!r} is not a folder")
    if queries_csv is not None:
        qlabels, _ = _read_labels(queries_csv)
    else:
        qlabels = _folder_labels(list_images(root))
    base = root.resolve()
    safe: dict[str, str] = {}
    for i, lab in qlabels.items():
        p = (root / i).resolve()
        if p.is_file() and p.is_relative_to(base):  # nothing outside the query folder is read
            safe[i] = lab
    if not safe:
        raise InvalidArgumentError(
            f"no labelled query image found in {str(root)!r}"
            + (f" (labels from {str(queries_csv)!r})" if queries_csv is not None else " (sub-folder names)")
        )
    same = not features_mode and base == source.resolve()
    return root, safe, same


def _choose_queries(
    ids: list[str],
    labels: dict[str, str],
    groups: dict[str, str],
    query_split: Any,
    n_queries: int | None,
    rng: np.random.Generator,
) -> _Queries:
    # an image is a useful query only if some other (non-group) catalogue image shares its label
    per_label: dict[str, int] = {}
    per_label_group: dict[tuple[str, str], int] = {}
    for i in ids:
        if i in labels:
            per_label[labels[i]] = per_label.get(labels[i], 0) + 1
            if i in groups:
                key = (labels[i], groups[i])
                per_label_group[key] = per_label_group.get(key, 0) + 1

    def n_rel(i: str) -> int:
        same = per_label_group.get((labels[i], groups[i]), 1) if i in groups else 1
        return per_label[labels[i]] - same

    eligible = [i for i in ids if i in labels and n_rel(i) > 0]
    if not eligible:
        raise InvalidArgumentError(
            "no image has a relevant partner (same label, other group): nothing to evaluate"
        )
    if query_split is None or query_split == "leave-one-out":
        n = len(eligible) if n_queries is None else min(n_queries, len(eligible))
        pick = sorted(rng.choice(len(eligible), size=n, replace=False))
        return _Queries([eligible[j] for j in pick], "leave-one-out", False)
    if isinstance(query_split, float | int) and not isinstance(query_split, bool):
        f = float(query_split)
        if not 0.0 < f < 1.0:
            raise InvalidArgumentError(f"query_split as a fraction must be in (0, 1); got {query_split}")
        n = max(1, round(f * len(eligible)))
        if n_queries is not None:
            n = min(n, n_queries)
        pick = sorted(rng.choice(len(eligible), size=n, replace=False))
        return _Queries([eligible[j] for j in pick], f"held-out {f:g}", True)
    if isinstance(query_split, str | os.PathLike) and Path(query_split).is_file():
        try:
            text = Path(query_split).read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidArgumentError(
                f"query_split file {str(query_split)!r} is not UTF-8 text ({exc.reason})"
            ) from None
        wanted = [ln.strip() for ln in text.splitlines() if ln.strip()]
    elif isinstance(query_split, Sequence) and not isinstance(query_split, str):
        wanted = [str(x) for x in query_split]
    else:
        raise InvalidArgumentError(
            "query_split must be None / 'leave-one-out', a fraction in (0, 1), a list of image ids "
            f"or a file of ids; got {query_split!r}"
        )
    known = set(eligible)
    chosen = [w for w in wanted if w in known]
    if not chosen:
        raise InvalidArgumentError(
            "none of the query_split ids is a labelled catalogue image with a relevant partner"
        )
    if n_queries is not None and len(chosen) > n_queries:
        chosen = [chosen[j] for j in sorted(rng.choice(len(chosen), size=n_queries, replace=False))]
    return _Queries(sorted(chosen), "held-out list", True)


def _percentiles(xs: Sequence[float]) -> tuple[float | None, float | None]:
    if not xs:
        return None, None
    a = np.asarray(xs, np.float64) * 1000.0
    return round(float(np.percentile(a, 50)), 3), round(float(np.percentile(a, 95)), 3)


class _Pipeline:
    """The post-processed catalogue of one configuration and how to search it."""

    def __init__(self, cfg: EvalConfig, X: np.ndarray, cat_rows: np.ndarray, held_out: bool) -> None:
        self.cfg = cfg
        C = np.asarray(X[cat_rows], np.float32)
        self.whitening: Whitening | None = None
        w = cfg.post_param("whiten")
        if w is not None:
            self.whitening = fit_whitening(C, int(w) or None)
        pw = cfg.post_param("pwhiten")
        if pw is not None:
            self.whitening = fit_whitening(C, None, power=float(pw))
        self.dba = int(cfg.post_param("dba") or 0)
        pc = cfg.post_param("pca")
        #: search-space PCA trained into the model (train_clusters' search_pca; None = its default);
        #: with DBA or whitening the space is built here instead and the model gets none
        self.search_pca: int | None = None if pc is None else int(pc)
        if self.whitening is not None or self.dba > 1:
            if pc:
                self.whitening = fit_whitening(C, int(pc), power=0.0)
            self.search_pca = 0
        if self.whitening is not None:
            C = apply_whitening(C, self.whitening)
        if self.dba > 1:
            if not held_out:  # the query would augment its own neighbours (and be searched as them)
                raise InvalidArgumentError(
                    f"{cfg.name}: +dba needs held-out queries (query_split, or a query set); under "
                    "leave-one-out each query is part of the catalogue its neighbours are augmented with"
                )
            nn_idx, nn_sims = neighbour_lists(C, self.dba)
            self.catalogue = augment_rows(C, nn_idx, nn_sims)
        else:
            self.catalogue = C
        q = cfg.post_param("qe")
        #: alpha-QE neighbours for Searcher.search_vector(expand=): None = the model's default
        self.qe: int | None = None if q is None else int(q)
        self.colour_w = cfg.post_param("colour")
        crops, flip, auto = (bool(cfg.post_param(k)) for k in ("crops", "flipq", "auto"))
        if auto and (crops or flip):
            raise InvalidArgumentError(f"{cfg.name}: +auto decides the views itself; drop +crops / +flipq")
        #: the query's views, as SearchOptions.views (None: the whole image)
        self.views: str | None = (
            "auto" if auto else "+".join(n for n, on in (("crops", crops), ("flip", flip)) if on) or None
        )

    def query_vector(self, x: np.ndarray) -> np.ndarray:
        v = np.asarray(x, np.float32)
        if self.whitening is not None:
            v = apply_whitening(v, self.whitening)
        return normalize_rows(v.reshape(1, -1))[0]


def evaluate(
    img_folder_or_features: str | os.PathLike[str],
    *,
    options: EvalOptions | None = None,
    compute: Compute | None = None,
    labels: str | os.PathLike[str] | None = None,
    out_dir: str | os.PathLike[str] | None = None,
    queries_dir: str | os.PathLike[str] | None = None,
    queries_csv: str | os.PathLike[str] | None = None,
    show_progress: bool = False,
    **settings: Any,
) -> EvalReport:
    """Measure search quality of configurations x ``k`` x ``nprobe`` against exact and seed baselines.

    Args:
        img_folder_or_features: a folder of images (labels from sub-folder names unless
            ``labels`` is given) or a feature store (then ``configs`` may only differ in
            post-processing, and ``labels`` is required unless ids carry sub-folders).
        options: an :class:`~varsitysrch.EvalOptions`:

            * ``configs``: configuration strings (see the module docstring) or :class:`EvalConfig`.
            * ``k_values``: numbers of clusters to train.
            * ``nprobes``: clusters scanned by the ranked search; ``None`` = the calibrated default.
            * ``query_split``: ``None``/``"leave-one-out"``, a fraction in (0, 1) held out from
              the catalogue, or a list (or file) of query ids held out from the catalogue.
            * ``top_k``: results per query (the ``k`` of P@k, mAP@k, recall@k).
            * ``n_queries``: at most this many queries (``None``: every eligible image).
            * ``random_state``: seed of the query sample and of K-means.
            * ``n_latency``: queries whose image is decoded and embedded for the embed+search
              latency.
            * ``seed_baseline``: include the seed method's rows.
            * ``report_stem``: file names of the report in ``out_dir`` (``<stem>.json`` etc.).
        compute: a :class:`~varsitysrch.Compute`; only its ``threads`` is used (ONNX Runtime
            threads; default: number of CPUs).
        labels: CSV ``image,label[,group]`` (``image`` = path relative to the folder).
            Images of the same ``group`` (e.g. shots of one product) never count as
            results or relevant items for each other.
        out_dir: feature stores, models and the report (``eval.json``, ``eval.md``,
            ``eval.html``) go here; reruns reuse the feature stores.  ``None``: a
            temporary folder, and nothing is kept.
        queries_dir: a separate labelled query set (e.g. shoppers' photos searched against
            catalogue shots): a folder of images, labels from its sub-folders unless
            ``queries_csv`` is given.  Its labels must match the catalogue's labels;
            rows then also report recall@1 / recall@5 of that cross-domain search.
        queries_csv: CSV ``image,label`` of the query set (paths relative to
            ``queries_dir``, or to the catalogue folder when ``queries_dir`` is not given:
            then those catalogue images are the queries and are held out of the catalogue).
        show_progress: progress bars.
        settings: any field of ``options`` given as a keyword, and ``threads``, as earlier
            versions took them (``k_values=(8,)``); it wins over the same field of the
            value; any other name is refused.
    """
    opts, comp, _ = settle("evaluate", settings, EvalOptions, options, compute, ("threads",))
    k_values, nprobes, query_split, top_k = opts.k_values, opts.nprobes, opts.query_split, opts.top_k
    n_queries, random_state, threads = opts.n_queries, opts.random_state, comp.threads
    if (queries_dir is not None or queries_csv is not None) and query_split is not None:
        raise InvalidArgumentError(
            "give either query_split or a query set (queries_dir / queries_csv), not both"
        )
    cfgs = [EvalConfig.parse(c) for c in opts.configs]  # EvalOptions: at least one
    source = Path(img_folder_or_features)
    if not source.is_dir():
        raise InvalidArgumentError(f"{str(source)!r} is neither an image folder nor a feature store")
    features_mode = (source / STORE_JSON).exists()
    if features_mode:
        if len({(c.extractor, c.options) for c in cfgs}) > 1:
            raise InvalidArgumentError(
                "with a feature store as input, configurations may only differ in post-processing"
            )
        # rows are named after the extractor that made the store
        made_by = str(FeatureStore.open(source).extractor.get("name") or "features")
        cfgs = [EvalConfig(made_by, (), c.post) for c in cfgs]

    with contextlib.ExitStack() as stack:
        if out_dir is None:
            work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="varsitysrch-eval-")))
        else:
            work = Path(out_dir)
            work.mkdir(parents=True, exist_ok=True)
        report = _evaluate(
            source,
            features_mode,
            work,
            labels,
            cfgs,
            list(k_values),
            list(nprobes),
            query_split,
            top_k,
            n_queries,
            random_state,
            opts.n_latency,
            opts.seed_baseline,
            threads,
            show_progress,
            queries_dir,
            queries_csv,
        )
        if out_dir is not None:
            report.write(work, opts.report_stem)
    return report


def _feature_store(
    source: Path, features_mode: bool, work: Path, cfg: EvalConfig, threads: int | None, show_progress: bool
) -> FeatureStore:
    if features_mode:
        return FeatureStore.open(source)
    from ._extract import extract_features

    folder = work / "features" / cfg.feature_key
    t0 = time.perf_counter()
    res = extract_features(
        source,
        folder,
        extractor=cfg.extractor,
        threads=threads,
        show_progress=show_progress,
        **dict(cfg.options),
    )
    log.info("features of %s: %s (%.1fs)", cfg.name, res.summary(), time.perf_counter() - t0)
    return FeatureStore.open(folder)


@dataclass
class _Setup:
    """What every configuration of one evaluation shares: catalogue, queries, exclusions, colours."""

    source: Path
    features_mode: bool
    work: Path
    threads: int | None
    top_k: int
    n_latency: int
    ids: list[str]
    groups: dict[str, str]
    queries: _Queries
    query_label: list[str]
    cat_ids: list[str]
    cat_index: dict[str, int]
    cat_label: np.ndarray
    excluded: list[set[int]]
    n_relevant: np.ndarray
    split_key: str
    cat_rows_all: np.ndarray
    q_root: Path
    q_rows_all: np.ndarray | None


def _evaluate(
    source: Path,
    features_mode: bool,
    work: Path,
    labels_csv: Any,
    cfgs: list[EvalConfig],
    k_values: list[int],
    nprobes: list[int | None],
    query_split: Any,
    top_k: int,
    n_queries: int | None,
    random_state: int,
    n_latency: int,
    seed_baseline: bool,
    threads: int | None,
    show_progress: bool,
    queries_dir: Any = None,
    queries_csv: Any = None,
) -> EvalReport:
    t_start = time.perf_counter()
    stores = {
        c.feature_key: _feature_store(source, features_mode, work, c, threads, show_progress) for c in cfgs
    }
    ids, common = _common_ids(stores)
    labels, groups = _catalogue_labels(labels_csv, ids, common)
    rng = np.random.default_rng(random_state)
    queries = _pick_queries(
        source,
        features_mode,
        ids,
        labels,
        groups,
        common,
        query_split,
        n_queries,
        rng,
        queries_dir,
        queries_csv,
    )
    st = _setup(source, features_mode, work, threads, top_k, n_latency, cfgs, ids, labels, groups, queries)
    rows: list[dict[str, Any]] = []
    notes: list[str] = []
    seed_cfgs: dict[str, EvalConfig] = {}
    for c in cfgs:
        if all(kind in ("pca", "qe") for kind, _ in c.post):
            seed_cfgs.setdefault(c.feature_key, c)
    embed_times: dict[str, list[float]] = {}
    for cfg in cfgs:
        seed = seed_baseline and cfg is seed_cfgs.get(cfg.feature_key)
        emb = _run_config(
            st, cfg, stores[cfg.feature_key], k_values, nprobes, random_state, seed, rows, notes
        )
        if emb is not None:
            embed_times[cfg.name] = emb
    if not queries.held_out and any(
        c.post_param(w) is not None for c in cfgs for w in ("whiten", "pwhiten", "pca")
    ):
        notes.append("leave-one-out: whitening/PCA is fitted on the whole catalogue, queries included")
    meta = _meta(st, labels_csv, cfgs, k_values, nprobes, random_state, rows, notes, embed_times, t_start)
    return EvalReport(rows, meta)


def _common_ids(stores: dict[str, FeatureStore]) -> tuple[list[str], set[str]]:
    """Image ids present in every feature store, in the first store's order."""
    ids_sets = [set(s.ids) for s in stores.values()]
    common = set.intersection(*ids_sets)
    first = next(iter(stores.values()))
    return [i for i in first.ids if i in common], common


def _catalogue_labels(
    labels_csv: Any, ids: list[str], common: set[str]
) -> tuple[dict[str, str], dict[str, str]]:
    """Labels (restricted to ``common``) and groups, from the CSV or the sub-folder names."""
    if labels_csv is not None:
        labels, groups = _read_labels(labels_csv)
    else:
        labels, groups = _folder_labels(ids), {}
    labels = {i: v for i, v in labels.items() if i in common}
    if not labels:
        raise InvalidArgumentError(
            "no catalogue image has a label: pass labels=CSV (image,label[,group]) "
            "or put the images in class sub-folders"
        )
    return labels, groups


def _pick_queries(
    source: Path,
    features_mode: bool,
    ids: list[str],
    labels: dict[str, str],
    groups: dict[str, str],
    common: set[str],
    query_split: Any,
    n_queries: int | None,
    rng: np.random.Generator,
    queries_dir: Any,
    queries_csv: Any,
) -> _Queries:
    """The queries: held out / leave-one-out catalogue images, or a query set (may add to ``labels``)."""
    if queries_dir is None and queries_csv is None:
        return _choose_queries(ids, labels, groups, query_split, n_queries, rng)
    qroot, qlabels, same = _query_set(source, features_mode, queries_dir, queries_csv)
    if same:  # catalogue images as queries: held out of the catalogue, labels from the query CSV
        labels.update({i: v for i, v in qlabels.items() if i in common})
        query_split = sorted(i for i in qlabels if i in common)
        queries = _choose_queries(ids, labels, groups, query_split, n_queries, rng)
        queries.split = f"query set {queries_csv}"
        return queries
    known = set(labels.values())
    qids = sorted(i for i, v in qlabels.items() if v in known)
    if not qids:
        raise InvalidArgumentError(
            "no query's label occurs in the catalogue: query and catalogue labels must match"
        )
    if n_queries is not None and len(qids) > n_queries:
        qids = [qids[j] for j in sorted(rng.choice(len(qids), size=n_queries, replace=False))]
    return _Queries(qids, f"query set {qroot}", True, (qroot, qlabels))


def _exclusions(
    queries: _Queries,
    cat_ids: list[str],
    cat_index: dict[str, int],
    cat_label: np.ndarray,
    groups: dict[str, str],
    query_label: list[str],
) -> tuple[list[set[int]], np.ndarray]:
    """Per query: catalogue rows excluded from its results (itself, its group) and its relevant count."""
    cat_group = np.array([groups.get(i, f"\0{j}") for j, i in enumerate(cat_ids)], dtype=object)
    label_count: dict[str, int] = {}
    for lab in cat_label:
        label_count[lab] = label_count.get(lab, 0) + 1
    excluded: list[set[int]] = []
    n_relevant = np.empty(len(queries.ids), np.int64)
    group_members: dict[str, list[int]] = {}
    for j, g in enumerate(cat_group):
        group_members.setdefault(g, []).append(j)
    for qi, q in enumerate(queries.ids):
        ex: set[int] = set()
        if queries.external is None and q in cat_index:
            ex.add(cat_index[q])
        g = groups.get(q) if queries.external is None else None
        if g is not None:
            ex.update(group_members.get(g, []))
        excluded.append(ex)
        n_relevant[qi] = label_count.get(query_label[qi], 0) - sum(
            1 for j in ex if cat_label[j] == query_label[qi]
        )
    return excluded, n_relevant


def _setup(
    source: Path,
    features_mode: bool,
    work: Path,
    threads: int | None,
    top_k: int,
    n_latency: int,
    cfgs: list[EvalConfig],
    ids: list[str],
    labels: dict[str, str],
    groups: dict[str, str],
    queries: _Queries,
) -> _Setup:
    """Catalogue rows, query labels, exclusions and colour signatures shared by all configurations."""
    qset = set(queries.ids)
    query_label = [queries.external[1][q] if queries.external else labels[q] for q in queries.ids]
    cat_ids = [i for i in ids if not (queries.held_out and queries.external is None and i in qset)]
    cat_index = {i: j for j, i in enumerate(cat_ids)}
    cat_label = np.array([labels.get(i, "\0unlabelled") for i in cat_ids], dtype=object)
    excluded, n_relevant = _exclusions(queries, cat_ids, cat_index, cat_label, groups, query_label)
    split_key = hashlib.sha256(("\n".join(queries.ids) + f"|{queries.held_out}").encode()).hexdigest()[:10]
    id_row = {i: j for j, i in enumerate(ids)}
    q_root = queries.external[0] if queries.external else source
    q_rows_all = None if queries.external else np.array([id_row[i] for i in queries.ids])
    return _Setup(
        source,
        features_mode,
        work,
        threads,
        top_k,
        n_latency,
        ids,
        groups,
        queries,
        query_label,
        cat_ids,
        cat_index,
        cat_label,
        excluded,
        n_relevant,
        split_key,
        np.array([id_row[i] for i in cat_ids]),
        q_root,
        q_rows_all,
    )


@dataclass
class _QueryVectors:
    """One query ready to be searched again and again: ``Query(vector=..., discount=..., colour=...)``."""

    vectors: np.ndarray  #: [V, dim] in the configuration's space, the whole image first
    discount: float = 0.0
    colour: np.ndarray | None = None


def _query_list(
    st: _Setup, cfg: EvalConfig, store: FeatureStore, pipe: _Pipeline, Xr: np.ndarray, searcher: Any,
    notes: list[str],
) -> list[_QueryVectors]:  # fmt: skip
    """Every query of one configuration, through the search pipeline's own stages 1-3.

    A catalogue image searched as the whole image is its stored vector (and stored colour); any
    other query (views, or a separate query set) is decoded, viewed and embedded by
    :func:`varsitysrch._pipeline.embed_query`, as a search by that image would be (``+auto``: the
    views decided against this catalogue, as users get them)."""
    colour = pipe.colour_w is not None
    if st.queries.external is None and pipe.views is None:
        assert st.q_rows_all is not None
        srow = {i: j for j, i in enumerate(store.ids)}
        cols = store.colour if colour else None
        return [
            _QueryVectors(
                pipe.query_vector(Xr[r])[None],
                0.0,
                None if cols is None else np.asarray(cols[srow[st.ids[r]]], np.float32),
            )
            for r in st.q_rows_all
        ]
    if st.features_mode and st.queries.external is None:
        raise InvalidArgumentError(
            "query views (+crops / +flipq / +auto) need the images: pass an image folder"
        )
    raw, bad = _embedded_queries(st, store, pipe, searcher, colour)
    out = [
        _QueryVectors(np.stack([pipe.query_vector(v) for v in V]), d, c)
        if len(V)
        else _QueryVectors(np.zeros((1, pipe.catalogue.shape[1]), np.float32))  # unreadable: a miss
        for V, d, c in raw
    ]
    if bad:
        notes.append(f"{len(bad)} query images unreadable (counted as misses): {bad[:3]}")
    if pipe.views == "auto":
        n = sum(len(x.vectors) > 1 for x in out)
        notes.append(f"{cfg.name}: views='auto' searched {n} of {len(out)} queries with crops")
    return out


def _embedded_queries(
    st: _Setup, store: FeatureStore, pipe: _Pipeline, searcher: Any, colour: bool
) -> tuple[list[tuple[np.ndarray, float, np.ndarray | None]], list[str]]:
    """``([(raw views [V, dim], discount, colour)], unreadable ids)`` of every query image, made by the
    search pipeline's stages 1-3 and cached in ``work/queries`` (a rerun embeds nothing new).  An
    unreadable query has no views."""
    from ._errors import ImageError
    from ._extractors import Embedder
    from ._pipeline import Stages, embed_query

    rec = store.colour_record() if pipe.views == "auto" else None  # auto: the catalogue's studio share
    ident = json.dumps(store.extractor, sort_keys=True, default=str)
    what = f"|{pipe.views}|{colour}|{st.split_key}|{rec and rec.get('checksum')}|"
    key = hashlib.sha256((ident + str(st.q_root.resolve()) + what + "\n".join(st.queries.ids)).encode())
    cache = st.work / "queries" / f"{key.hexdigest()[:16]}.npz"
    if cache.exists():
        with np.load(cache, allow_pickle=False) as z:
            V, counts, disc, cols = z["vectors"], z["counts"], z["discounts"], z["colours"]
            bad = [str(b) for b in z["bad"]]
        got = [(V[j, : counts[j]], float(disc[j]), cols[j] if colour else None) for j in range(len(counts))]
        return got, bad
    ex = Extractor.from_identity(dict(store.extractor))
    stages = Stages(embed=Embedder(ex, threads=st.threads).embed)
    out: list[tuple[np.ndarray, float, np.ndarray | None]] = []
    bad = []
    dim = int(store.dim)
    for q in st.queries.ids:
        try:
            e = embed_query(searcher, st.q_root / q, pipe.views, colour, stages)
            out.append((np.asarray(e.vectors, np.float32), float(e.discount), e.colour))
        except ImageError as exc:
            bad.append(q)
            log.warning("query %s: %s", q, exc)
            out.append((np.zeros((0, dim), np.float32), 0.0, None))
    most = max([len(v) for v, _, _ in out] + [1])
    V = np.zeros((len(out), most, dim), np.float32)
    sig_dim = next((len(c) for _, _, c in out if c is not None), 0)
    cols = np.zeros((len(out), sig_dim), np.float32)
    for j, (v, _, c) in enumerate(out):
        V[j, : len(v)] = v
        if c is not None:
            cols[j] = c
    cache.parent.mkdir(parents=True, exist_ok=True)
    with open(cache, "wb") as f:
        np.savez(
            f,
            vectors=V,
            counts=np.array([len(v) for v, _, _ in out], np.int64),
            discounts=np.array([d for _, d, _ in out], np.float32),
            colours=cols,
            bad=np.array(bad, dtype=str),
        )
    return out, bad


def _run_config(
    st: _Setup,
    cfg: EvalConfig,
    store: FeatureStore,
    k_values: list[int],
    nprobes: list[int | None],
    random_state: int,
    seed: bool,
    rows: list[dict[str, Any]],
    notes: list[str],
) -> list[float] | None:
    """Measure one configuration at every ``k`` (rows appended); its embed latencies, if measured."""
    srow = {i: j for j, i in enumerate(store.ids)}
    X = np.asarray(store.vectors, np.float32)
    Xr = X[[srow[i] for i in st.ids]]  # rows in ``ids`` order
    pipe = _Pipeline(cfg, Xr, st.cat_rows_all, st.queries.held_out)
    idx_dir = _write_index(st, cfg, store, pipe)
    emb = None
    Q: list[_QueryVectors] | None = None
    exact_lists: list[list[int]] | None = None
    for ki, k in enumerate(k_values):
        searcher = _train_searcher(st, idx_dir, k, random_state, pipe)
        if Q is None:  # the queries do not depend on k
            Q = _query_list(st, cfg, store, pipe, Xr, searcher, notes)
            if not (st.features_mode and st.queries.external is None):
                qids = st.queries.ids[: st.n_latency]
                emb = _embed_latency(st.q_root, pipe, qids, searcher, store, st.threads)
        index_bytes = (idx_dir / f"model-k{k}.vsm").stat().st_size
        methods: list[tuple[str, int | None, bool]] = [("exact", None, True)] if ki == 0 else []
        # the seed method depends only on the extractor and k: once per extractor configuration
        if seed:
            methods.append(("seed", None, False))
        top = searcher.max_nprobe  # clusters, or IVF lists: what nprobe counts for this model
        methods += [("ranked", p, False) for p in nprobes if p is None or p <= top]
        for p in nprobes:
            if p is not None and p > top:
                log.warning(
                    "nprobe %d > %d %s: no ranked row for it (the exact rows cover it)",
                    p,
                    top,
                    searcher.probe_unit,
                )
        for method, p, exact in methods:
            lists, times, scanned = _run_queries(
                searcher, pipe, Q, st.queries.ids, st.cat_index, st.excluded, st.top_k, method, p, exact
            )
            if method == "exact":
                exact_lists = lists
            assert exact_lists is not None
            measured = _Measured(lists, exact_lists, times, scanned, emb, index_bytes)
            rows.append(_row(st, cfg, searcher, k, method, p, measured))
    return emb


def _write_index(st: _Setup, cfg: EvalConfig, store: FeatureStore, pipe: _Pipeline) -> Path:
    """The searchable catalogue of this configuration, as a feature store (-> train_clusters -> Searcher),
    with the catalogue's colour rows when the source store has them (colour and ``views="auto"``
    read them, as a search of the real store does)."""
    from ._colour import COLOUR_IDENTITY
    from ._store import COLOUR_NPY, PLAIN_NPY, commit, recover, store_header, store_lock

    idx_dir = st.work / "index" / re.sub(r"[^A-Za-z0-9_.=-]+", "_", cfg.name) / st.split_key
    folder = idx_dir / "features"
    needs = pipe.colour_w is not None or pipe.views == "auto"
    has = store.colour is not None and store.plain is not None and store.meta.get("colour") == COLOUR_IDENTITY
    if needs and not has:
        raise InvalidArgumentError(
            f"{cfg.name}: colour and views='auto' need the catalogue's colour rows, which this feature "
            f"store lacks ({str(store.folder)!r}): extract the images again with this version"
        )
    side = None
    extra: dict[str, Any] = {
        "image_root": str(st.source.resolve()) if not st.features_mode else None,
        "postprocess": cfg.name,
    }
    if has:
        assert store.colour is not None and store.plain is not None
        srow = {i: j for j, i in enumerate(store.ids)}
        rows = np.fromiter((srow[i] for i in st.cat_ids), np.int64, len(st.cat_ids))
        side = {COLOUR_NPY: np.asarray(store.colour[rows]), PLAIN_NPY: np.asarray(store.plain[rows])}
        extra["colour"] = dict(COLOUR_IDENTITY)
    # post-processing (whitening, PCA) may change the dim: the index store records it
    vectors = np.ascontiguousarray(pipe.catalogue, np.float32)
    header = store_header(
        {**store.extractor, "dim": int(vectors.shape[1])}, int(vectors.shape[1]), len(st.cat_ids), "float32",
        extra,
    )  # fmt: skip
    with store_lock(folder):
        recover(folder)
        commit(folder, list(st.cat_ids), [(-1, -1, -1, -1)] * len(st.cat_ids), [vectors], header, side)
    return idx_dir


def _train_searcher(st: _Setup, idx_dir: Path, k: int, random_state: int, pipe: _Pipeline) -> Any:
    """Train ``k`` clusters on the configuration's catalogue store and open its Searcher."""
    from ._search import Searcher
    from ._train import train_clusters

    model_path = idx_dir / f"model-k{k}.vsm"
    train_clusters(
        idx_dir / "features",
        model_path,
        idx_dir / f"clusters-k{k}.csv",
        int(k),
        random_state=random_state,
        show_progress=False,
        search_pca=pipe.search_pca,
    )
    searcher = Searcher(model_path)
    if searcher.ids != st.cat_ids:
        raise AssertionError("the searcher's rows must be the catalogue's")
    return searcher


@dataclass
class _Measured:
    """One method's raw measurements: result rows per query, the exact ones, timings, scan fractions."""

    lists: list[list[int]]
    exact_lists: list[list[int]]
    times: list[float]
    scanned: list[float]
    emb: list[float] | None
    index_bytes: int


def _row(
    st: _Setup, cfg: EvalConfig, searcher: Any, k: int, method: str, p: int | None, m: _Measured
) -> dict[str, Any]:
    """One report row: metrics of ``method`` (at ``nprobe=p``) in ``cfg`` with ``k`` clusters."""
    top_k = st.top_k
    rel = np.zeros((len(m.lists), top_k), bool)
    for qi, lst in enumerate(m.lists):
        lab = st.query_label[qi]
        for r, j in enumerate(lst[:top_k]):
            rel[qi, r] = st.cat_label[j] == lab
    prec = _precision_at_k(rel, top_k)
    ap = _average_precision_at_k(rel, st.n_relevant, top_k)
    rec = _recall_against(m.lists, m.exact_lists, top_k)
    s50, s95 = _percentiles(m.times)
    e50 = e95 = None
    if m.emb is not None:
        e50, e95 = _percentiles([a + b for a, b in zip(m.emb, m.times, strict=False)])
    if method == "ranked":
        label = f"default={searcher.default_nprobe}" if p is None else str(p)
    else:
        label = "all" if method == "exact" else "1 (top_n of cluster)"
    log.info(
        "%s k=%s %s nprobe=%s: P@%d %.3f mAP %.3f recall %.3f",
        cfg.name,
        k,
        method,
        p,
        top_k,
        prec.mean(),
        ap.mean(),
        rec.mean(),
    )
    return {
        "config": cfg.name,
        "extractor": cfg.extractor,
        "options": dict(cfg.options),
        "post": [list(x) for x in cfg.post],
        "method": method,
        "k": None if method == "exact" else int(k),
        "nprobe": None if method != "ranked" else (searcher.default_nprobe if p is None else p),
        "nprobe_label": label,
        "n_queries": len(m.lists),
        "precision": round(float(prec.mean()), 4),
        "map": round(float(ap.mean()), 4),
        "recall": round(float(rec.mean()), 4),
        "hit_rate": round(float((rel.any(1)).mean()), 4),
        "r1": round(float(rel[:, 0].mean()), 4),
        "r5": round(float(rel[:, : min(5, top_k)].any(1).mean()), 4),
        "scanned": round(float(np.mean(m.scanned)), 4),
        "search_ms_p50": s50,
        "search_ms_p95": s95,
        "embed_search_ms_p50": e50,
        "embed_search_ms_p95": e95,
        "index_bytes": int(m.index_bytes),
        "dim": int(searcher.config.get("search_pca") or searcher.dim),  # of the ranking space
    }


def _meta(
    st: _Setup,
    labels_csv: Any,
    cfgs: list[EvalConfig],
    k_values: list[int],
    nprobes: list[int | None],
    random_state: int,
    rows: list[dict[str, Any]],
    notes: list[str],
    embed_times: dict[str, list[float]],
    t_start: float,
) -> dict[str, Any]:
    """The report's run metadata."""
    base_row = next((r for r in rows if r["method"] == "exact"), None)
    return {
        "source": str(st.source),
        "labels": str(labels_csv) if labels_csv is not None else "sub-folder names",
        "groups": bool(st.groups),
        "n_images": len(st.ids),
        "n_catalogue": len(st.cat_ids),
        "n_queries": len(st.queries.ids),
        "query_split": st.queries.split,
        "top_k": st.top_k,
        "k_values": [int(k) for k in k_values],
        "nprobes": [p for p in nprobes],
        "configs": [c.name for c in cfgs],
        "random_state": random_state,
        "n_latency": st.n_latency if embed_times else 0,
        "baseline": base_row["config"] if base_row else None,
        "baseline_map": base_row["map"] if base_row else None,
        "seconds": round(time.perf_counter() - t_start, 1),
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
        },
        "notes": notes,
    }


def _embed_latency(
    root: Path, pipe: _Pipeline, qids: list[str], searcher: Any, store: FeatureStore, threads: int | None
) -> list[float]:
    """Seconds to decode, view and embed (and transform) each query image, one at a time, through
    the search pipeline's stages 1-3 (:func:`varsitysrch._pipeline.embed_query`)."""
    if not qids:
        return []
    from ._errors import ImageError
    from ._extractors import Embedder
    from ._pipeline import Stages, embed_query

    stages = Stages(embed=Embedder(Extractor.from_identity(dict(store.extractor)), threads=threads).embed)
    out = []
    warm = True
    for q in qids:
        t0 = time.perf_counter()
        try:
            e = embed_query(searcher, root / q, pipe.views, pipe.colour_w is not None, stages)
        except ImageError:
            continue
        for v in e.vectors:
            pipe.query_vector(v)
        if warm:  # the first run allocates
            warm = False
            continue
        out.append(time.perf_counter() - t0)
    return out


def _run_queries(
    searcher: Any,
    pipe: _Pipeline,
    Q: list[_QueryVectors],
    qids: list[str],
    cat_index: dict[str, int],
    excluded: list[set[int]],
    top_k: int,
    method: str,
    nprobe: int | None,
    exact: bool,
) -> tuple[list[list[int]], list[float], list[float]]:
    """Run every query through the one search pipeline (:func:`varsitysrch._pipeline.run_search`);
    rows of the catalogue (== the Searcher's rows) per query, seconds, share of the catalogue scanned."""
    from ._options import SearchOptions
    from ._pipeline import Query, run_search

    options = SearchOptions(
        top_n=top_k, nprobe=nprobe, exact=exact, expansion=pipe.qe, views=None,
        colour_weight=0.0 if pipe.colour_w is None else float(pipe.colour_w),
    )  # fmt: skip
    lists: list[list[int]] = []
    times: list[float] = []
    scanned: list[float] = []
    for qi in range(len(qids)):
        ex = excluded[qi]
        q = Q[qi]
        t0 = time.perf_counter()
        if method == "seed":
            c = int(searcher.model.predict(q.vectors[:1])[0])
            found = [int(r) for r in searcher.members(c) if int(r) not in ex][:top_k]
            times.append(time.perf_counter() - t0)
            scanned.append(0.0)
        else:
            query = Query(vector=q.vectors, colour=q.colour, discount=q.discount, exclude=frozenset(ex))
            res = run_search(searcher, query, options)
            found = [cat_index[h.image] for h in res.hits]
            times.append(time.perf_counter() - t0)
            scanned.append(res.scan.images / max(1, res.scan.of))
        lists.append(found)
    return lists, times, scanned
