"""Every entry point runs the one pipeline (issue 20, phase 2): library, CLI, HTTP single, HTTP batch.

Each test here is a bug of issue 20 that the routes had before they called
:func:`varsitysrch._pipeline.run_search`: ``/search/batch`` embedding uploads twice and without
views or colour, crop-path uploads decoded outside the bounded decode pool, ``nprobe`` checked
against ``k`` over HTTP on a model searched through IVF lists.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("python_multipart")
pytest.importorskip("httpx2")

from fastapi.testclient import TestClient
from typer.testing import CliRunner

from varsitysrch import Searcher, SearchOptions, train_clusters
from varsitysrch._store import FeatureStore, normalize_rows
from varsitysrch.cli import app as cli_app
from varsitysrch.service import create_app

#: what every entry point is asked: crop views, colour and collapse on
OPTS = SearchOptions(top_n=6, views="crops", colour_weight=0.15, collapse=True)
HTTP = {"top_n": 6, "views": "crops", "colour_weight": 0.15, "collapse": "true"}
CLI = ["-n", "6", "--views", "crops", "--colour", "0.15", "--collapse", "--json"]


@pytest.fixture(scope="module")
def beside_store(synth_store: Path) -> tuple[Path, Path]:
    """A model beside its feature store (its colour signatures are found: colour needs them)."""
    model, csv = synth_store.parent / "entry.vsm", synth_store.parent / "entry.csv"
    if not model.exists():
        train_clusters(synth_store, model, csv, 4, show_progress=False)
    return model, csv


def _files(paths: list[Path], field: str) -> list[tuple[str, tuple[str, bytes, str]]]:
    return [(field, (p.name, p.read_bytes(), "image/png")) for p in paths]


def _key(hits: list[Any]) -> list[tuple[Any, ...]]:
    """What must be identical: image, rank, duplicates (the score is compared separately)."""
    out = []
    for h in hits:
        d = h if isinstance(h, dict) else h.to_dict()
        dups = [x["image"] if isinstance(x, dict) else x for x in d.get("duplicates", [])]
        out.append((d["image"], d["rank"], tuple(dups)))
    return out


def _scores(hits: list[Any]) -> list[float]:
    return [float(h["score"] if isinstance(h, dict) else h.score) for h in hits]


def test_library_cli_http_single_and_batch_give_the_same_hits(
    beside_store: tuple[Path, Path], synth_catalogue: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    """The same query and options: the same hits (and scores) from the four entry points."""
    model, csv = beside_store
    root, labels = synth_catalogue
    queries = [root / rel for rel in sorted(labels)[::6]]
    s = Searcher(model, csv)
    lib = [s.search(q, options=OPTS) for q in queries]
    runner = CliRunner()
    cli = []
    for q in queries:
        res = runner.invoke(cli_app, ["search", str(q), "-m", str(model), "-c", str(csv), *CLI])
        assert res.exit_code == 0, res.output
        cli.append(json.loads(res.stdout))
    with TestClient(create_app(model, csv, cache_dir=tmp_path, reload_interval=0)) as c:
        single = []
        for q in queries:
            r = c.post("/search", files=_files([q], "image"), params=HTTP)
            assert r.status_code == 200, r.text
            assert r.json()["query"]["views"] == 6
            single.append(r.json()["hits"])
        r = c.post("/search/batch", files=_files(queries, "images"), params=HTTP)
        assert r.status_code == 200, r.text
        batch = [x["hits"] for x in r.json()["results"]]
    assert len(lib[0]) == 6
    for j in range(len(queries)):
        assert _key(lib[j]) == _key(cli[j]) == _key(single[j]) == _key(batch[j]), queries[j]
        # the library and the CLI embed the views in one call; the service batches them with other
        # queries' views, which may move a float32 score in its last bits
        assert _scores(lib[j]) == _scores(cli[j])
        assert _scores(single[j]) == pytest.approx(_scores(lib[j]), abs=1e-5)
        assert _scores(batch[j]) == pytest.approx(_scores(lib[j]), abs=1e-5)


def test_batch_embeds_each_upload_once_with_its_views(
    beside_store: tuple[Path, Path], synth_catalogue: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    """The bug: /search/batch embedded every upload through the micro-batcher, then again (its crop
    views, in a second ONNX session) -- and took neither ``views`` nor ``colour_weight``."""
    model, csv = beside_store
    root, labels = synth_catalogue
    queries = [root / rel for rel in sorted(labels)[1::8]]
    app = create_app(model, csv, cache_dir=tmp_path, reload_interval=0)
    with TestClient(app) as c:
        batcher = app.state.service.gen.batcher
        before = batcher.embedded
        r = c.post("/search/batch", files=_files(queries, "images"), params=HTTP)
        assert r.status_code == 200, r.text
        results = r.json()["results"]
        in_batch = batcher.embedded - before
        for q in queries:
            assert c.post("/search", files=_files([q], "image"), params=HTTP).status_code == 200
        in_single = batcher.embedded - before - in_batch
    assert [x["query"]["views"] for x in results] == [6] * len(queries)
    assert in_batch == in_single == 6 * len(queries)  # every view of every upload, once
    assert app.state.service.gen.searcher._embedder is None  # no second ONNX session was built


def test_crop_uploads_are_decoded_in_the_bounded_pool(
    synth_model: tuple[Path, Path], synth_catalogue: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    """The bug: with crops (asked for, or decided by ``views="auto"``) POST /search decoded the whole
    upload on a request thread, outside the bounded decode pool: 12 concurrent 9400 x 9400 PNGs
    took the server from 1.6 GB to 13.6 GB.  Now a full pool refuses it (503) like any upload."""
    root, labels = synth_catalogue
    data = (root / sorted(labels)[0]).read_bytes()
    app = create_app(*synth_model, cache_dir=tmp_path, decode_workers=1, queue_limit=1, reload_interval=0)
    pool = app.state.service.decode
    gate = threading.Event()
    with TestClient(app) as c:
        busy = pool.submit(gate.wait, 30)  # the only decode slot is taken
        try:
            for views in ("crops", "crops+flip", "none"):
                t0 = time.perf_counter()
                r = c.post("/search", files={"image": ("q.png", data, "image/png")}, params={"views": views})
                assert r.status_code == 503 and r.headers["retry-after"] == "1", (views, r.text)
                assert time.perf_counter() - t0 < 5
        finally:
            gate.set()
            busy.result(timeout=30)
        started = pool.started
        r = c.post("/search", files={"image": ("q.png", data, "image/png")}, params={"views": "crops"})
        assert r.status_code == 200 and r.json()["query"]["views"] == 6
        assert pool.started == started + 1  # its one decode ran in the pool
        assert pool.depth == 0  # and gave its slot back


@pytest.fixture(scope="module")
def ivf_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """k = 8 clusters, searched through an IVF index of more lists."""
    from varsitysrch import get_extractor

    identity = get_extractor().identity()  # a served model needs its extractor (search by image)
    dim = int(identity["dim"])
    rng = np.random.default_rng(11)
    centres = rng.standard_normal((12, dim)).astype(np.float32)
    X = normalize_rows(centres[rng.integers(0, 12, 1200)] + 0.8 * rng.standard_normal((1200, dim)))
    d = tmp_path_factory.mktemp("ivf")
    FeatureStore.write(d / "f", [f"c/{i:05d}.jpg" for i in range(len(X))], X, identity)
    train_clusters(d / "f", d / "m.vsm", d / "m.csv", 8, ivf=True, show_progress=False)
    return d / "m.vsm"


def test_nprobe_over_http_counts_ivf_lists(ivf_model: Path, tmp_path: Path) -> None:
    """The bug: HTTP capped nprobe at k (8 here) on a model searched through its IVF lists, and
    reported the K-means value."""
    s = Searcher(ivf_model)
    lists = s.max_nprobe
    assert s.k == 8 and s.probe_unit == "lists" and lists > 12
    with TestClient(create_app(ivf_model, cache_dir=tmp_path, reload_interval=0)) as c:
        for nprobe in (9, lists):
            r = c.get("/search", params={"image_id": s.ids[0], "top_n": 5, "nprobe": nprobe})
            assert r.status_code == 200, r.text
            body = r.json()
            assert body["nprobe"] == nprobe and len(body["hits"]) == 5
            scan = body["scan"]
            assert scan["unit"] == "lists" and scan["probed"] == nprobe and scan["total"] == lists
            assert 0 < scan["images"] <= scan["of"] == len(s)
        r = c.get("/search", params={"image_id": s.ids[0], "nprobe": lists + 1})
        assert r.status_code == 422 and f"[1, {lists}] (the lists" in r.json()["detail"]
        health = c.get("/healthz").json()
        assert health["nprobe_unit"] == "lists" and health["max_nprobe"] == lists
        r = c.post("/search/batch", data={"image_ids": [s.ids[1]]}, params={"nprobe": 10})
        assert r.status_code == 200 and r.json()["results"][0]["scan"]["probed"] == 10
