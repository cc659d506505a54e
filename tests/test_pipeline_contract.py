"""The contract of the one query pipeline (issue 20): every entry point, one behaviour.

Generated vectors with known answers (no extraction) except where an image query is the point;
each bug of issue 20 has a test here that fails on the code before the pipeline.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from varsitysrch import InvalidArgumentError, Searcher, SearchOptions, train_clusters
from varsitysrch._pipeline import Query, run_search
from varsitysrch._store import FeatureStore, normalize_rows

DIM = 48


def _store(folder: Path, X: np.ndarray, ids: list[str] | None = None) -> Path:
    ids = ids or [f"c/{i:05d}.jpg" for i in range(len(X))]
    FeatureStore.write(folder, ids, X, {"name": "test", "dim": X.shape[1]})
    return folder


def _clusters(
    rng: np.random.Generator, n: int, k: int = 12, dim: int = DIM, noise: float = 0.8
) -> np.ndarray:
    centres = rng.standard_normal((k, dim)).astype(np.float32)
    return normalize_rows(
        centres[rng.integers(0, k, n)] + noise * rng.standard_normal((n, dim)).astype(np.float32)
    )


@pytest.fixture(scope="module")
def spaces(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One catalogue of 1,200 vectors indexed three ways: raw cosine (what a catalogue under
    1,000 images gets), a search PCA (1,000 and more) and an IVF (above 200,000)."""
    rng = np.random.default_rng(7)
    X = _clusters(rng, 1200)
    d = tmp_path_factory.mktemp("spaces")
    f = _store(d / "f", X)
    kw: dict[str, Any] = {"show_progress": False}
    train_clusters(f, d / "raw.vsm", d / "raw.csv", 4, search_pca=0, **kw)
    train_clusters(f, d / "pca.vsm", d / "pca.csv", 4, search_pca=16, **kw)
    train_clusters(f, d / "ivf.vsm", d / "ivf.csv", 4, ivf=True, **kw)
    return {"X": X, "d": d, **{m: Searcher(d / f"{m}.vsm") for m in ("raw", "pca", "ivf")}}


# ---------------------------------------------------------------------------------- exactness
def test_exact_is_brute_force_in_the_ranking_space(spaces: dict[str, Any]) -> None:
    X = spaces["X"]
    rng = np.random.default_rng(0)
    for name in ("raw", "pca", "ivf"):
        s: Searcher = spaces[name]
        Z = np.asarray(s._scoring, np.float32)  # the catalogue in the space the model ranks in
        for _ in range(5):
            q = normalize_rows(X[rng.integers(len(X))][None] + 0.3 * rng.standard_normal((1, DIM)))[0]
            zq = s._to_ranking(q[None])[0]
            want = np.lexsort((np.arange(len(Z)), -(Z @ zq)))[:10]
            got = s.search_vector(q, 10, exact=True, expansion=0, rerank="none")  # the plain order
            assert [s._id_index[h.image] for h in got] == want.tolist(), name


# ---------------------------------------------------------------------------------- one score
def test_score_is_the_plain_cosine_at_every_catalogue_size(spaces: dict[str, Any]) -> None:
    """The bug: Hit.score was the raw cosine under 1,000 images, the PCA cosine above, and the
    cosine to the expanded query with expansion on."""
    X = spaces["X"]
    q = normalize_rows(X[5][None] + 0.4 * X[9][None])[0]
    by_image: dict[str, list[float]] = {}
    for name in ("raw", "pca", "ivf"):
        s: Searcher = spaces[name]
        for expansion in (0, 2):
            hits = s.search_vector(q, 8, exact=True, expansion=expansion)
            for h in hits:
                plain = float(X[s._id_index[h.image]] @ q)
                assert h.score == pytest.approx(plain, abs=2e-3), (name, expansion)  # (a float16 store)
                by_image.setdefault(h.image, []).append(h.score)
    shared = [v for v in by_image.values() if len(v) == 6]
    assert shared and all(max(v) - min(v) < 1e-6 for v in shared)  # the same number whatever the space


def test_confidence_and_words_are_monotone_in_rank(spaces: dict[str, Any]) -> None:
    """The bug: confidence came from the plain cosine while the ranking used PCA + expansion, so
    a lower hit could be called more similar than a higher one."""
    X = spaces["X"]
    rng = np.random.default_rng(1)
    order = {"very similar": 2, "similar": 1, "loosely related": 0}
    for name in ("pca", "raw"):
        s: Searcher = spaces[name]
        for _ in range(25):
            q = normalize_rows(X[rng.integers(len(X))][None] + 0.5 * rng.standard_normal((1, DIM)))[0]
            hits = s.search_vector(q, 15)
            conf = [h.confidence for h in hits]
            assert conf == sorted(conf, reverse=True), name
            words = [order[str(h.match)] for h in hits]
            assert words == sorted(words, reverse=True)
            assert [h.close for h in hits] == sorted((bool(h.close) for h in hits), reverse=True)


# ---------------------------------------------------------------------------------- the index owns nprobe
def test_nprobe_counts_ivf_lists_in_an_ivf_model(spaces: dict[str, Any]) -> None:
    """The bug: nprobe was validated against k everywhere (k=4 here, 30 IVF lists)."""
    s: Searcher = spaces["ivf"]
    assert s.k == 4 and s.probe_unit == "lists" and s.max_nprobe > 20
    wide = Searcher(spaces["d"] / "ivf.vsm", nprobe=20)
    assert wide.default_nprobe == 20
    q = spaces["X"][3]
    res = run_search(s, Query(vector=q), SearchOptions(top_n=5, nprobe=20))
    assert res.scan.unit == "lists" and res.scan.probed == 20 and res.scan.total == s.max_nprobe
    assert 0 < res.scan.images <= len(s) and "lists" in str(res.scan)
    with pytest.raises(InvalidArgumentError, match=rf"nprobe must be in \[1, {s.max_nprobe}\] \(the lists"):
        s.search_vector(q, 5, nprobe=s.max_nprobe + 1)
    raw: Searcher = spaces["raw"]
    assert raw.probe_unit == "clusters" and raw.max_nprobe == 4
    with pytest.raises(InvalidArgumentError, match=r"nprobe must be in \[1, 4\] \(the clusters"):
        Searcher(spaces["d"] / "raw.vsm", nprobe=5)
    scan = run_search(raw, Query(vector=q), SearchOptions(top_n=5, nprobe=2)).scan
    assert (scan.unit, scan.total) == ("clusters", 4) and scan.probed >= 2 and scan.images < len(raw)


# ---------------------------------------------------------------------------------- filters
def test_filtered_top_n_is_exact(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    X = _clusters(rng, 400)
    ids = [f"c/{i:05d}.jpg" for i in range(len(X))]
    colour = rng.choice(["red", "blue", "green", "black"], len(X), p=[0.05, 0.15, 0.3, 0.5])
    with open(tmp_path / "a.csv", "w", encoding="utf-8") as f:
        f.write("image,colour\n")
        f.writelines(f"{i},{c}\n" for i, c in zip(ids, colour, strict=True))
    _store(tmp_path / "f", X, ids)
    train_clusters(
        tmp_path / "f", tmp_path / "m.vsm", tmp_path / "m.csv", 8, attributes=tmp_path / "a.csv",
        search_pca=0, show_progress=False,
    )  # fmt: skip
    s = Searcher(tmp_path / "m.vsm")
    for c in ("red", "blue"):
        rows = np.flatnonzero(colour == c)
        for j in range(0, 60, 7):
            q = X[j]
            want = rows[np.lexsort((rows, -(X[rows] @ q)))][:10]
            exact = s.search_vector(q, 10, where={"colour": c}, exact=True, expansion=0, rerank="none")
            assert [s._id_index[h.image] for h in exact] == want.tolist()
            probed = s.search_vector(q, 10, where={"colour": c}, nprobe=1, expansion=0)
            assert len(probed) == min(10, len(rows)) and all(
                colour[s._id_index[h.image]] == c for h in probed
            )


# ---------------------------------------------------------------------------------- views, then collapse
def test_views_are_merged_before_near_duplicates_collapse(tmp_path: Path) -> None:
    """The bug: collapse ran on each view's list, so a product found by one view and its copy found
    by another were both returned (a copy listing the original as its duplicate)."""
    e = np.eye(DIM, dtype=np.float32)
    a = e[0]
    copy = normalize_rows((e[0] + 0.3 * e[1])[None])[0]  # cosine 0.958: a near-duplicate of a
    v1 = normalize_rows((e[0] - e[1])[None])[0]  # view 1 finds a, not its copy
    v2 = normalize_rows((0.3 * e[0] + e[1])[None])[0]  # view 2 finds the copy, not a
    f = [normalize_rows((0.5 * v1 + np.sqrt(0.75) * e[2 + i])[None])[0] for i in range(15)]
    g = [normalize_rows((0.4 * v2 + np.sqrt(0.84) * e[20 + i])[None])[0] for i in range(15)]
    X = np.stack([a, copy, *f, *g]).astype(np.float32)
    ids = (
        ["a.jpg", "a-copy.jpg"] + [f"f{i:02d}.jpg" for i in range(15)] + [f"g{i:02d}.jpg" for i in range(15)]
    )
    _store(tmp_path / "f", X, ids)
    train_clusters(tmp_path / "f", tmp_path / "m.vsm", tmp_path / "m.csv", 2, show_progress=False)
    s = Searcher(tmp_path / "m.vsm", query_expansion=0)
    V = np.stack([v1, v2])
    plain = [h.image for h in s.search_vector(V, 3, exact=True, rerank="none")]
    assert plain[:2] == ["a.jpg", "a-copy.jpg"]  # merged best views: the product and its copy
    hits = s.search_vector(V, 3, exact=True, collapse=True, rerank="none")
    assert [h.image for h in hits][:1] == ["a.jpg"] and "a-copy.jpg" not in hits
    assert hits[0].duplicates == ("a-copy.jpg",) and len(hits) == 3


# ------------------------------------------------------------------------------ feedback keeps its meaning
def test_confidence_stays_meaningful_after_feedback(tmp_path: Path) -> None:
    """The bug: after "more like these / less like those" the hits were scored against the refined
    vector, negatives subtracted, so ten correct hits all read "no close match"."""
    rng = np.random.default_rng(4)
    common = np.abs(rng.standard_normal(DIM)).astype(np.float32)  # CNN features share a big positive part
    centres = np.abs(rng.standard_normal((6, DIM))).astype(np.float32)
    lab = np.repeat(np.arange(6), 40)
    X = normalize_rows(0.8 * common + centres[lab] + 0.3 * rng.standard_normal((len(lab), DIM)))
    X = X.astype(np.float32)
    _store(tmp_path / "f", X)
    train_clusters(tmp_path / "f", tmp_path / "m.vsm", tmp_path / "m.csv", 6, show_progress=False)
    s = Searcher(tmp_path / "m.vsm")
    first = s.search_vector(X[0], 10, exclude={0})
    assert first[0].close
    pos = [h.image for h in first[:2]]
    neg = [s.ids[int(np.flatnonzero(lab == 3)[0])]]
    hits = s.search_feedback(X[0], pos, neg, 10)
    right = [lab[s._id_index[h.image]] == 0 for h in hits]
    assert sum(right) == 10  # the known answer: the query's product
    assert all(h.close for h in hits) and hits[0].match in ("very similar", "similar")


# ------------------------------------------------------------------------- one engine, every entry point
def test_every_entry_point_gives_the_same_hits(synth_model, synth_catalogue, synth_store) -> None:
    from varsitysrch import VaSrch, search_similar_images

    root, labels = synth_catalogue
    # a model beside its feature store: the colour signatures are found (colour_weight needs them)
    model, csv = synth_store.parent / "contract.vsm", synth_store.parent / "contract.csv"
    if not model.exists():
        train_clusters(synth_store, model, csv, 4, show_progress=False)
    opts = SearchOptions(top_n=6, views="crops", colour_weight=0.15, collapse=True)
    for rel in sorted(labels)[::12]:
        q = root / rel
        lib = Searcher(model, csv).search(q, options=opts)
        fn = search_similar_images(q, model, csv, None, options=opts, show_progress=False)
        kw = search_similar_images(
            q, model, csv, 6, views="crops", colour_weight=0.15, collapse=True, show_progress=False
        )
        vs = VaSrch(show_progress=False).search_similar_images(q, model, csv, None, options=opts)
        piped = run_search(Searcher(model, csv), Query(image=q.read_bytes()), opts).hits

        def key(hits: list[Any]) -> list[tuple[Any, ...]]:
            return [(h.image, h.rank, round(h.score, 6), h.confidence, h.duplicates) for h in hits]

        assert key(lib) == key(fn) == key(kw) == key(vs) == key(piped)
        assert len(lib) == 6


def test_options_are_one_checked_value() -> None:
    o = SearchOptions(top_n=5, nprobe=3, views="none")
    assert o.views is None and o.replace(top_n=7).top_n == 7 and o.top_n == 5
    with pytest.raises(InvalidArgumentError, match="views"):
        SearchOptions(views="zoom")
    with pytest.raises(InvalidArgumentError, match="top_n must be a positive integer; got 0"):
        SearchOptions(top_n=0)
    with pytest.raises(InvalidArgumentError, match="min_score must be a number in"):
        SearchOptions(min_score=2.0)
    with pytest.raises(InvalidArgumentError, match="unknown search setting 'colour'"):
        SearchOptions.merge(None, colour=0.2)
    assert SearchOptions.merge(None, expand=0).expansion == 0  # the earlier keyword still works


# ---------------------------------------------------------------------------------- dead code, small API
def test_dead_code_is_gone() -> None:
    from varsitysrch import _colour, _postprocess, _query

    for mod, name in [
        (_postprocess, "colour_descriptor"),
        (_postprocess, "colour_rerank"),
        (_postprocess, "database_augment"),
        (_query, "view_scores"),
        (_query, "mean_view"),
        (_colour, "hue_shift"),
    ]:
        assert not hasattr(mod, name), name
