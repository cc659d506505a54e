"""k-reciprocal re-ranking (issue 21 phase B): the stage, its graph in the model file, update.

Known answers on generated data: the vectorised re-ordering equals a straightforward loop
(the relevance probe's, re-written here), a planted "hub" that plain cosine ranks high is
pushed down, the first hit is kept, the graph survives save/load/copy and ``update`` keeps it
equal to a rebuild; a model without a graph is refused in words; the CLI and HTTP give the
library's hits.
"""

from __future__ import annotations

import itertools
import json
import shutil
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest

from imagegen import SYNTHETIC_CLASSES, make_synthetic_catalogue
from varsitysrch import Searcher, SearchOptions, train_clusters
from varsitysrch._errors import IncompatibleModelError, InvalidArgumentError
from varsitysrch._extract import extract_features
from varsitysrch._modelfile import _save_model, load_model
from varsitysrch._rerank import (
    _K1,
    NeighbourGraph,
    _build_graph,
    _update_graph,
    add_graph,
    check_rerank,
    keep_count,
    rerank,
)
from varsitysrch._store import FeatureStore, normalize_rows
from varsitysrch._update import update_catalogue


# ====================================================================== a reference, written plainly
def _dist(s: np.ndarray) -> np.ndarray:
    return np.maximum(0.0, 2.0 - 2.0 * np.asarray(s, np.float64))


def _ref_sets(nn: np.ndarray, k1: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    n, kh = len(nn), max(1, round(k1 / 2))
    s1 = [set(nn[j].tolist()) for j in range(n)]
    sh = [set(nn[j, :kh].tolist()) for j in range(n)]
    r1 = [np.array([i, *[j for j in nn[i].tolist() if i in s1[j]]]) for i in range(n)]
    half = [np.array([i, *[j for j in nn[i, :kh].tolist() if i in sh[j]]]) for i in range(n)]
    return r1, half


def _ref_weights(q: int | None, qv: np.ndarray, R: np.ndarray, half: list[np.ndarray], C: np.ndarray) -> dict:
    rset = set(R.tolist())
    exp = set(rset)
    for j in R.tolist():
        if q is not None and j == q:
            continue
        if len(set(half[j].tolist()) & rset) > 2 / 3 * len(half[j]):
            exp |= set(half[j].tolist())
    cols = np.array(sorted(exp))
    w = np.exp(-_dist(C[cols] @ qv))
    return dict(zip(cols.tolist(), (w / w.sum()).tolist(), strict=True))


def _mean(ds: list[dict]) -> dict:
    out: dict = {}
    for d in ds:
        for c, w in d.items():
            out[c] = out.get(c, 0.0) + w / len(ds)
    return out


def reference(
    C: np.ndarray, k1: int, k2: int, q: np.ndarray, rows: np.ndarray, sims: np.ndarray,
    self_row: int | None, keep_first: bool, lam: float = 0.3,
) -> np.ndarray:  # fmt: skip
    """Zhong et al. 2017 with dicts and loops (the relevance probe's build_kr + kr_rerank)."""
    n = len(C)
    S = C @ C.T
    np.fill_diagonal(S, -np.inf)
    nn = np.argsort(-S, axis=1, kind="stable")[:, :k1]
    kth = _dist(S[np.arange(n), nn[:, -1]])
    r1, half = _ref_sets(nn, k1)
    raw = [_ref_weights(i, C[i], r1[i], half, C) for i in range(n)]
    V = [_mean([raw[j] for j in [i, *nn[i, : k2 - 1].tolist()]]) for i in range(n)]
    if self_row is not None:
        vq = V[self_row]
    else:
        nbr, nd = rows[:k1], _dist(sims[:k1])
        R = np.array([j for j, d in zip(nbr.tolist(), nd.tolist(), strict=True) if d <= kth[j]])
        vq = _mean([_ref_weights(None, q, R, half, C), *[V[j] for j in nbr[: k2 - 1].tolist()]])
    jd = np.empty(len(rows))
    for t, c in enumerate(rows.tolist()):
        mn = sum(min(w, vq.get(cc, 0.0)) for cc, w in V[c].items())
        jd[t] = 1.0 - mn / (sum(vq.values()) + sum(V[c].values()) - mn)
    final = (1 - lam) * jd + lam * _dist(sims) / 2
    if keep_first:
        final[0] = -np.inf
    return rows[np.argsort(final, kind="stable")]


def _clustered(seed: int, n: int = 300, d: int = 16, classes: int = 25) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((classes, d))
    return normalize_rows(
        (centres[rng.integers(0, classes, n)] + 0.7 * rng.standard_normal((n, d))).astype(np.float32)
    )


def _top(q: np.ndarray, C: np.ndarray, m: int, exclude: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    s = C @ q
    if exclude is not None:
        s[exclude] = -np.inf
    rows = np.argsort(-s, kind="stable")[:m]
    return rows, s[rows].astype(np.float32)


# ====================================================================== the re-ordering
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_rerank_equals_the_plain_loop(seed: int) -> None:
    C = _clustered(seed)
    g = _build_graph(C, _K1)
    rng = np.random.default_rng(100 + seed)
    moved = 0
    for t in range(12):
        if t % 2:  # a photo that is not in the catalogue
            q = normalize_rows((C[rng.integers(len(C))] + 0.5 * rng.standard_normal(C.shape[1]))[None])[0]
            rows, sims = _top(q, C, 100)
            own = None
        else:  # a catalogue image searched by id (itself left out, as leave-one-out does)
            own = int(rng.integers(len(C)))
            q = C[own]
            rows, sims = _top(q, C, 100, exclude=own)
        for keep in (0, 1):
            got, scores = rerank(g, C, q, rows, sims, self_row=own, keep=keep)
            want = reference(C, _K1, 6, q, rows, sims, own, keep_first=bool(keep))
            np.testing.assert_array_equal(got, want)
            assert np.all(np.diff(scores[keep:]) <= 1e-12) and scores[0] >= scores[1:].max()
            moved += int(not np.array_equal(got, rows))
    assert moved > 0  # the stage does re-order


def test_a_hub_close_to_everything_is_pushed_down() -> None:
    """Plain cosine ranks a 'hub' (an image close to every product) right after the query's first
    hit; its neighbours are everyone's and reciprocal to no one's, so k-reciprocal puts every
    photo of the query's product before it."""
    rng = np.random.default_rng(7)
    d, per, classes = 32, 8, 30
    common = rng.standard_normal(d)
    centres = common + rng.standard_normal((classes, d))
    X = centres.repeat(per, axis=0) + 0.7 * rng.standard_normal((classes * per, d))
    hubs = common + 0.3 * rng.standard_normal((6, d))  # several: each is in the others' lists
    C = normalize_rows(np.vstack([X, hubs]).astype(np.float32))
    hub_rows = set(range(classes * per, len(C)))
    g = _build_graph(C, _K1)
    wrong = fixed = 0
    for c in range(classes):
        q = normalize_rows((centres[c] + 0.7 * rng.standard_normal(d))[None].astype(np.float32))[0]
        rows, sims = _top(q, C, 100)
        mates = set(range(c * per, (c + 1) * per))
        plain_hub = min(i for i, r in enumerate(rows.tolist()) if r in hub_rows)
        plain_last_mate = max(i for i, r in enumerate(rows.tolist()) if r in mates)
        if plain_hub > plain_last_mate:
            continue  # cosine already right for this query
        wrong += 1
        got, _ = rerank(g, C, q, rows, sims, keep=keep_count(sims))
        kr_hub = min(i for i, r in enumerate(got.tolist()) if r in hub_rows)
        kr_last_mate = max(i for i, r in enumerate(got.tolist()) if r in mates)
        fixed += kr_hub > kr_last_mate
    assert wrong >= 5  # the planted mistake is there for plain cosine
    assert fixed == wrong  # and k-reciprocal corrects every one


def test_keep_first_keeps_the_first_hit_and_copies() -> None:
    C = _clustered(3)
    g = _build_graph(C, _K1)
    q = C[5]
    rows, sims = _top(q, C, 100)  # the query's own row first, at cosine 1: a copy
    assert rows[0] == 5 and keep_count(sims) == 2
    kept, scores = rerank(g, C, q, rows, sims, keep=keep_count(sims))
    assert kept[0] == rows[0] and kept[1] == rows[1]
    assert scores[1] >= scores[2:].max()
    assert sorted(kept.tolist()) == sorted(rows.tolist())
    moved = [
        rerank(g, C, C[i], *_top(C[i], C, 100, exclude=i), keep=0)[0][0]
        != _top(C[i], C, 100, exclude=i)[0][0]
        for i in range(60)
    ]
    assert any(moved)  # without keep-first the first hit does move sometimes
    assert keep_count(np.array([0.999, 0.995, 0.7, 0.6])) == 3 and keep_count(np.array([0.5])) == 1


def test_check_rerank() -> None:
    # None: the model's (on when it has a graph); "none" / "off": off, whatever the model has
    assert check_rerank(None) is None and check_rerank("none") == "none" and check_rerank("Off") == "none"
    assert check_rerank("k-reciprocal") == "k-reciprocal" and check_rerank("K-Reciprocal") == "k-reciprocal"
    for bad in ("diffusion", 1, True):
        with pytest.raises(
            InvalidArgumentError, match=r"rerank must be None \(the model's\), 'none' or 'k-re"
        ):
            check_rerank(bad)
    with pytest.raises(InvalidArgumentError, match="rerank must be"):
        SearchOptions(rerank="kr20")
    assert SearchOptions().rerank is None and SearchOptions(rerank="none").rerank == "none"
    assert SearchOptions.merge(None, rerank="k-reciprocal").rerank == "k-reciprocal"


# ====================================================================== the graph and update
def _same_graph(a: NeighbourGraph, b: NeighbourGraph) -> None:
    """Equal lists, ties aside: positions may differ only between cosines within 1e-6."""
    assert a.nn.shape == b.nn.shape and a.k1 == b.k1
    np.testing.assert_allclose(a.sims, b.sims, atol=1e-6)
    differ = a.nn != b.nn
    if differ.any():
        s = b.sims
        tie = np.zeros_like(differ)
        tie[:, 1:] |= np.abs(np.diff(s, axis=1)) <= 1e-6
        tie[:, :-1] |= np.abs(np.diff(s, axis=1)) <= 1e-6
        assert not (differ & ~tie).any()


def test_build_graph_is_exact_in_blocks() -> None:
    C = _clustered(4, n=257)
    g = _build_graph(C, 7, block=16)
    S = C @ C.T
    np.fill_diagonal(S, -np.inf)
    want = np.argsort(-S, axis=1, kind="stable")[:, :7]
    _same_graph(
        g, NeighbourGraph(want.astype(np.int32), np.take_along_axis(S, want, 1).astype(np.float32), 7)
    )
    assert g.nn.dtype == np.int32 and g.sims.dtype == np.float32
    tiny = _build_graph(C[:4], 20)
    assert tiny.k == 3 and tiny.k1 == 20


@pytest.mark.parametrize("seed", range(6))
def test_incremental_update_equals_a_rebuild(seed: int) -> None:
    """Random removals (some rows then lose a neighbour) and additions (some beat a k1-th
    neighbour), rows re-ordered as a store re-sorts ids: the updated graph is the rebuilt one."""
    rng = np.random.default_rng(seed)
    old = _clustered(seed, n=int(rng.integers(60, 200)))
    g_old = _build_graph(old, _K1, block=32)
    kept = np.sort(rng.choice(len(old), int(len(old) * rng.uniform(0.6, 1.0)), replace=False))
    added = _clustered(seed + 50, n=int(rng.integers(0, 40)))
    new = np.vstack([old[kept], added])
    perm = rng.permutation(len(new))  # the store's order of the updated catalogue
    C = new[perm]
    pos = np.argsort(perm)  # row of new[i] in C
    keep_rows = pos[: len(kept)]
    g = _update_graph(g_old, C, kept, keep_rows, block=32)
    _same_graph(g, _build_graph(C, _K1))


def test_update_across_k1_images_rebuilds() -> None:
    C = _clustered(9, n=15)
    g = _build_graph(C, _K1)
    assert g.k == 14
    C2 = np.vstack([C, _clustered(10, n=20)])
    _same_graph(_update_graph(g, C2, np.arange(15), np.arange(15)), _build_graph(C2, _K1))


# ====================================================================== models: save, load, refuse
def _vector_model(tmp: Path, X: np.ndarray, graph: bool) -> Path:
    ids = [f"c/{i:04d}.jpg" for i in range(len(X))]
    FeatureStore.write(tmp / "f", ids, X, {"name": "test", "dim": X.shape[1]})
    train_clusters(tmp / "f", tmp / "m.vsm", tmp / "m.csv", 6, rerank_graph=graph, show_progress=False)
    return tmp / "m.vsm"


def test_graph_is_in_the_model_file_and_survives_save_load_and_copy(tmp_path: Path) -> None:
    X = _clustered(11, n=400, d=24)
    model = _vector_model(tmp_path, X, graph=True)
    mf = load_model(model)
    rec = mf.config["rerank"]
    assert rec["k1"] == _K1 and rec["k"] == _K1 and rec["n_images"] == 400 and rec["space"] == "raw"
    assert rec["features"]["generation"] == mf.config["features"]["generation"]
    assert {"extra/rerank_nn.npy", "extra/rerank_sims.npy"} <= set(mf.config["members"])
    stored = NeighbourGraph(mf.arrays["rerank_nn"], mf.arrays["rerank_sims"], _K1)
    _same_graph(stored, _build_graph(X, _K1))  # the store's vectors (the model embeds float16 copies)
    copy = tmp_path / "elsewhere" / "copy.vsm"
    copy.parent.mkdir()
    shutil.copyfile(model, copy)
    _save_model(tmp_path / "resaved.vsm", load_model(copy))  # written again: the graph is kept
    got = []
    for path in (model, copy, tmp_path / "resaved.vsm"):
        s = Searcher(path)
        got.append(
            [[h.image for h in s.search_vector(X[i], 8, rerank="k-reciprocal")] for i in range(0, 400, 37)]
        )
    assert got[0] == got[1] == got[2]
    plain = Searcher(model)
    assert any(
        [h.image for h in plain.search_vector(X[i], 8, rerank="none")] != got[0][j]
        for j, i in enumerate(range(0, 400, 37))
    )
    # the default (rerank=None: the model's) is the re-ranked order on a model with a graph
    assert [[h.image for h in plain.search_vector(X[i], 8)] for i in range(0, 400, 37)] == got[0]


def test_search_with_rerank_is_the_stage_on_the_pipeline_candidates(tmp_path: Path) -> None:
    """Hit.score stays the plain cosine; the order is the stage's over the top 100; the first
    hit is the plain search's."""
    X = _clustered(12, n=300, d=24)
    s = Searcher(_vector_model(tmp_path, X, graph=True))
    C = np.asarray(s.vectors, np.float32)
    g = _build_graph(C, _K1)
    for i in range(0, 300, 29):
        hits = s.search_vector(X[i], 10, exact=True, rerank="k-reciprocal")
        plain = s.search_vector(X[i], 100, exact=True, rerank="none")
        rows = np.array([s.ids.index(h.image) for h in plain])
        sims = np.array([h.score for h in plain], np.float32)
        want, _ = rerank(g, C, X[i], rows, sims, keep=keep_count(sims))
        assert [h.image for h in hits] == [s.ids[r] for r in want[:10]]
        for h in hits:
            assert h.score == pytest.approx(min(1.0, float(C[s.ids.index(h.image)] @ X[i])), abs=1e-5)
        assert hits[0].image == plain[0].image
        conf = [h.confidence for h in hits]
        assert all(a >= b for a, b in itertools.pairwise(conf))  # monotone in rank


def test_model_without_graph_is_refused_in_words(tmp_path: Path) -> None:
    X = _clustered(13, n=120, d=16)
    s = Searcher(_vector_model(tmp_path, X, graph=False))
    with pytest.raises(
        IncompatibleModelError, match=r"needs the catalogue's neighbour graph.*--rerank-graph"
    ):
        s.search_vector(X[0], 5, rerank="k-reciprocal")
    with pytest.raises(IncompatibleModelError, match="neighbour graph"):
        s.search_id(s.ids[0], 5, rerank="k-reciprocal")
    assert len(s.search_vector(X[0], 5)) == 5  # without rerank: as ever


def test_a_stale_graph_is_refused_not_used(tmp_path: Path) -> None:
    """A graph that does not describe the model's catalogue (another store generation, as a
    writer that does not maintain it would leave) is never used silently."""
    X = _clustered(14, n=150, d=16)
    model = _vector_model(tmp_path, X, graph=True)
    mf = load_model(model)
    mf.config["features"]["generation"] = "g-another"
    _save_model(tmp_path / "stale.vsm", mf)
    with pytest.raises(IncompatibleModelError, match=r"is stale \(made for store generation .* run update"):
        Searcher(tmp_path / "stale.vsm").search_vector(X[0], 5, rerank="k-reciprocal")
    mf = load_model(model)
    add_graph(mf.config, mf.arrays, np.asarray(mf.vectors, np.float32)[:100])  # a graph of 100 of 150
    mf.config["rerank"]["features"] = {"generation": mf.config["features"]["generation"],
                                       "checksum": mf.config["features"].get("checksum")}  # fmt: skip
    _save_model(tmp_path / "short.vsm", mf)
    with pytest.raises(IncompatibleModelError, match="made for 100 images, the model has 150"):
        Searcher(tmp_path / "short.vsm").search_vector(X[0], 5, rerank="k-reciprocal")


# ====================================================================== update through the library
@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    root = tmp_path_factory.mktemp("rr-source")
    labels = make_synthetic_catalogue(root, n_classes=len(SYNTHETIC_CLASSES), per_class=8, size=96, seed=5)
    return root, labels


def _copy(src: Path, dst: Path, rels: list[str]) -> None:
    for r in rels:
        (dst / r).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src / r, dst / r)


def test_update_keeps_the_graph_equal_to_a_rebuild(
    source: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    src, labels = source
    rels = sorted(labels)
    first = rels[: len(rels) - 10]
    cat, feats, model, csv = tmp_path / "cat", tmp_path / "f", tmp_path / "m.vsm", tmp_path / "m.csv"
    _copy(src, cat, first)
    extract_features(cat, feats, show_progress=False)
    train_clusters(feats, model, csv, 4, rerank_graph=True, show_progress=False)
    _copy(src, cat, rels[len(rels) - 10 :])  # ten added
    for r in first[3:7]:  # four removed
        (cat / r).unlink()
    update_catalogue(cat, feats, model, csv, show_progress=False)
    mf = load_model(model)
    assert mf.config["rerank"]["built"] == "exact, updated"
    assert mf.config["rerank"]["features"]["generation"] == mf.config["features"]["generation"]
    store = FeatureStore.open(feats)
    assert mf.ids == list(store.ids) and len(mf.ids) == len(rels) - 4
    got = NeighbourGraph(mf.arrays["rerank_nn"], mf.arrays["rerank_sims"], _K1)
    _same_graph(got, _build_graph(np.asarray(store.vectors, np.float32), _K1))
    s = Searcher(model, csv)
    assert len(s.search_id(mf.ids[0], 5, rerank="k-reciprocal")) == 5
    # a model without a graph gets none from update
    model2, csv2 = tmp_path / "n.vsm", tmp_path / "n.csv"
    train_clusters(feats, model2, csv2, 4, rerank_graph=False, show_progress=False)
    (cat / first[0]).unlink()
    update_catalogue(cat, feats, model2, csv2, show_progress=False)
    assert "rerank" not in load_model(model2).config


# ====================================================================== one switch everywhere
@pytest.fixture(scope="module")
def graph_model(synth_store: Path) -> Path:
    model = synth_store.parent / "rerank.vsm"
    if not model.exists():
        train_clusters(
            synth_store, model, synth_store.parent / "rerank.csv", 4, rerank_graph=True, show_progress=False
        )
    return model


def _ids(hits: list[Any]) -> list[str]:
    return [h["image"] if isinstance(h, dict) else h.image for h in hits]


def test_cli_and_http_give_the_library_hits(
    graph_model: Path, synth_catalogue: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    pytest.importorskip("fastapi")
    pytest.importorskip("httpx2")
    from fastapi.testclient import TestClient
    from typer.testing import CliRunner

    from varsitysrch.cli import app as cli_app
    from varsitysrch.service import create_app

    root, labels = synth_catalogue
    s = Searcher(graph_model)
    # a query whose hits the stage changes (else this test could not tell the switch was ignored)
    pick = next(
        (
            r
            for r in sorted(labels)
            if _ids(s.search(root / r, 8, rerank="k-reciprocal"))
            != _ids(s.search(root / r, 8, rerank="none"))
        ),
        None,
    )
    assert pick is not None
    lib = _ids(s.search(root / pick, 8, rerank="k-reciprocal"))
    lib_id = _ids(s.search_id(pick, 8, rerank="k-reciprocal"))
    out = CliRunner().invoke(
        cli_app,
        ["search", str(root / pick), "-m", str(graph_model), "-n", "8", "--rerank", "k-reciprocal", "--json"],
    )
    assert out.exit_code == 0, out.output
    assert _ids(json.loads(out.stdout)) == lib
    plain_hits = _ids(s.search(root / pick, 8, rerank="none"))
    for args, want in (([], lib), (["--rerank", "none"], plain_hits)):  # the default: the model's (on)
        out = CliRunner().invoke(
            cli_app, ["search", str(root / pick), "-m", str(graph_model), "-n", "8", *args, "--json"]
        )
        assert out.exit_code == 0, out.output
        assert _ids(json.loads(out.stdout)) == want, args
    with TestClient(create_app(graph_model, cache_dir=tmp_path, reload_interval=0)) as c:
        data = (root / pick).read_bytes()
        r = c.post(
            "/search",
            files={"image": (pick, data, "image/png")},
            params={"top_n": 8, "rerank": "k-reciprocal"},
        )
        assert r.status_code == 200, r.text
        assert _ids(r.json()["hits"]) == lib and r.json()["rerank"] == "k-reciprocal"
        for params, want, used in (({}, lib, "k-reciprocal"), ({"rerank": "none"}, plain_hits, "none")):
            r = c.post("/search", files={"image": (pick, data, "image/png")}, params={"top_n": 8, **params})
            assert r.status_code == 200 and _ids(r.json()["hits"]) == want and r.json()["rerank"] == used
        r = c.get("/search", params={"image_id": pick, "top_n": 8, "rerank": "k-reciprocal"})
        assert r.status_code == 200 and _ids(r.json()["hits"]) == lib_id
        r = c.post("/search/batch", data={"image_ids": [pick]}, params={"top_n": 8, "rerank": "k-reciprocal"})
        assert _ids(r.json()["results"][0]["hits"]) == lib_id
        assert c.get("/healthz").json()["rerank_graph"] is True
        assert 'data-param="rerank"' in c.get("/").text
        r = c.get("/search", params={"image_id": pick, "rerank": "diffusion"})
        assert r.status_code == 422 and "rerank must be" in r.json()["detail"]
    plain = tmp_path / "plain.vsm"
    mf = load_model(graph_model)
    mf.config.pop("rerank")
    mf.arrays.pop("rerank_nn")
    mf.arrays.pop("rerank_sims")
    _save_model(plain, mf)
    with TestClient(create_app(plain, cache_dir=tmp_path, reload_interval=0)) as c:
        r = c.get("/search", params={"image_id": pick, "rerank": "k-reciprocal"})
        assert r.status_code == 422 and "--rerank-graph" in r.json()["detail"]
        r = c.get("/search", params={"image_id": pick, "top_n": 8})  # the default: plain, as before
        assert r.status_code == 200 and r.json()["rerank"] == "none"
        assert _ids(r.json()["hits"]) == _ids(Searcher(plain).search_id(pick, 8))
        assert c.get("/healthz").json()["rerank_graph"] is False  # the page hides its switch
    out = CliRunner().invoke(
        cli_app, ["search", str(root / pick), "-m", str(plain), "--rerank", "k-reciprocal"]
    )
    assert out.exit_code != 0 and "neighbour graph" in out.output


def test_a_large_catalogue_builds_its_graph_through_its_ivf(tmp_path: Path) -> None:
    """Through the IVF at every list the graph is the exact one; a model with an IVF records how
    its graph was built and searches with it."""
    from varsitysrch._rerank import _ivf_graph

    X = _clustered(15, n=1200, d=32, classes=40).astype(np.float16)  # a float16 store: the IVF's codes
    ids = [f"c/{i:05d}.jpg" for i in range(len(X))]
    FeatureStore.write(tmp_path / "f", ids, X, {"name": "test", "dim": X.shape[1]})
    train_clusters(tmp_path / "f", tmp_path / "m.vsm", tmp_path / "m.csv", 8, ivf=True, rerank_graph=True,
                   show_progress=False)  # fmt: skip
    mf = load_model(tmp_path / "m.vsm")
    C, lists = mf.arrays["ivf_centroids"], mf.arrays["ivf_lists"]
    X = X.astype(np.float32)
    _same_graph(_ivf_graph(X.astype(np.float16), C, lists, nprobe=len(C)), _build_graph(X, _K1))
    assert mf.config["rerank"]["built"] == f"ivf, nprobe {mf.config['ivf']['nprobe']}"
    assert mf.config["rerank"]["space"] == "raw"
    stored = NeighbourGraph(mf.arrays["rerank_nn"], mf.arrays["rerank_sims"], _K1)
    exact = _build_graph(X, _K1)
    found = np.mean(
        [len(set(a) & set(b)) / _K1 for a, b in zip(stored.nn.tolist(), exact.nn.tolist(), strict=True)]
    )
    assert found > 0.5  # a graph of neighbours, not of noise (the IVF's recall at its nprobe)
    s = Searcher(tmp_path / "m.vsm")
    assert s.probe_unit == "lists"
    assert len(s.search_vector(X[3], 10, rerank="k-reciprocal")) == 10


def test_the_row_cache_is_only_a_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each row's weights are kept per loaded model; a cache emptied every few queries (a small
    bound) gives the same orders as the loop."""
    from varsitysrch import _rerank

    monkeypatch.setattr(_rerank, "_CACHE_ROWS", 150)
    C = _clustered(16)
    g = _build_graph(C, _K1)
    rng = np.random.default_rng(16)
    for _ in range(6):
        q = normalize_rows((C[rng.integers(len(C))] + 0.5 * rng.standard_normal(C.shape[1]))[None])[0]
        rows, sims = _top(q, C, 100)
        got, _ = rerank(g, C, q, rows, sims, keep=1)
        np.testing.assert_array_equal(got, reference(C, _K1, 6, q, rows, sims, None, keep_first=True))
        assert len(_rerank._row_cache(g)) <= 150 + 100 * 6  # emptied past the bound, then one query's rows


class _RowsRead(np.ndarray):
    """A catalogue that counts the rows fancy indexing reads from it (``read``)."""

    read: ClassVar[list[int]] = []

    def __getitem__(self, idx: Any) -> Any:
        if isinstance(idx, np.ndarray) and idx.dtype.kind in "iu":
            _RowsRead.read.append(int(idx.size))
        return np.asarray(np.ndarray.__getitem__(self.view(np.ndarray), idx))


def test_a_cold_row_reads_each_catalogue_row_once() -> None:
    """The weights of many rows at once (a cold query) read each catalogue row of ``C`` once,
    not once per set that holds it: the sets of neighbouring rows overlap, and every row read
    from a float16 store is converted to float32 (at 250,000 images: 12 reads per row, most
    of a cold query's cost).  Same weights as from the plain array."""
    from varsitysrch._rerank import _expand, _recip, _weights

    C = _clustered(5).astype(np.float16)
    g = _build_graph(C.astype(np.float32), _K1)
    rows = np.arange(60, dtype=np.int64)
    E = _expand(g, _recip(g, rows, g.k), rows)
    vecs = C[rows].astype(np.float32)
    distinct = len(np.unique(E[E >= 0]))
    pairs = sum(len(np.unique(e[e >= 0])) for e in E)
    assert pairs > 2 * distinct  # the sets do overlap: the test can tell the two apart
    _RowsRead.read = []
    got = _weights(C.view(_RowsRead), E, vecs, [])
    assert sum(_RowsRead.read) == distinct
    want = _weights(C, E, vecs, [])
    for a, b in zip(got, want, strict=True):
        np.testing.assert_array_equal(a, b)


def test_update_of_an_ivf_model_rebuilds_its_graph_through_the_ivf(
    source: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    src, labels = source
    rels = sorted(labels)
    cat, feats, model, csv = tmp_path / "cat", tmp_path / "f", tmp_path / "m.vsm", tmp_path / "m.csv"
    _copy(src, cat, rels[:-6])
    extract_features(cat, feats, dtype="float16", show_progress=False)  # the IVF's codes are float16
    train_clusters(feats, model, csv, 4, ivf=True, rerank_graph=True, show_progress=False)
    _copy(src, cat, rels[-6:])
    (cat / rels[0]).unlink()
    update_catalogue(cat, feats, model, csv, show_progress=False)
    mf = load_model(model)
    assert mf.config["ivf"] and mf.config["rerank"]["built"].startswith("ivf, nprobe")
    assert mf.config["rerank"]["features"]["generation"] == mf.config["features"]["generation"]
    X = np.asarray(FeatureStore.open(feats).vectors, np.float32)
    assert len(X) == len(rels) - 1
    got = NeighbourGraph(mf.arrays["rerank_nn"], mf.arrays["rerank_sims"], _K1)
    assert len(mf.arrays["ivf_centroids"]) == 1  # one list (under 78 images): the IVF search is exact
    _same_graph(got, _build_graph(X, _K1))
    assert len(Searcher(model, csv).search_id(mf.ids[0], 5, rerank="k-reciprocal")) == 5


def test_tiny_catalogues(tmp_path: Path) -> None:
    """Two images (one neighbour each) and three (k = n - 1 < k1): the graph is as short as the
    catalogue, and a search over so few candidates keeps the plain order."""
    for n in (2, 3):
        X = _clustered(17, n=n, d=8)
        d = tmp_path / str(n)
        FeatureStore.write(d / "f", [f"c/{i}.jpg" for i in range(n)], X, {"name": "test", "dim": 8})
        train_clusters(d / "f", d / "m.vsm", d / "m.csv", 2, rerank_graph=True, show_progress=False)
        mf = load_model(d / "m.vsm")
        assert mf.arrays["rerank_nn"].shape == (n, n - 1) and mf.config["rerank"]["k"] == n - 1
        s = Searcher(d / "m.vsm")
        got = [h.image for h in s.search_vector(X[0], 5, rerank="k-reciprocal")]
        assert got == [h.image for h in s.search_vector(X[0], 5)] and len(got) == n
