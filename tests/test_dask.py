"""engine="dask": a LocalCluster of 2 worker processes writes the same store and assignments as local."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import pytest

from imagegen import make_synthetic_catalogue, make_truncated_jpeg

pytest.importorskip("distributed")

from varsitysrch import train_clusters
from varsitysrch._dask import _embedder_builds, client_for, dask_assign
from varsitysrch._errors import InvalidArgumentError
from varsitysrch._extract import extract_features
from varsitysrch._modelfile import load_model, read_assignments
from varsitysrch._store import FeatureStore
from varsitysrch._update import update_catalogue


@pytest.fixture(scope="module")
def cluster():
    from distributed import Client, LocalCluster

    with (
        LocalCluster(
            n_workers=2,
            processes=True,
            threads_per_worker=1,
            dashboard_address=None,
            silence_logs=logging.ERROR,
        ) as c,
        Client(c) as client,
    ):
        yield c, client


@pytest.fixture(scope="module")
def catalogue(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("dask-catalogue")
    make_synthetic_catalogue(root, n_classes=4, per_class=5, size=96, seed=1)
    (root / "broken").mkdir()
    make_truncated_jpeg(root / "broken" / "truncated.jpg")
    (root / "broken" / "empty.jpg").write_bytes(b"")
    return root


@pytest.fixture(scope="module")
def stores(catalogue: Path, cluster, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    c, _ = cluster
    d = tmp_path_factory.mktemp("dask-stores")
    extract_features(catalogue, d / "local", batch_size=4, show_progress=False)
    mp = pytest.MonkeyPatch()
    mp.setattr("varsitysrch._dask._SHARD_SIZE", 8)  # 3 shards of 8 over 2 workers
    try:
        # a scheduler address, as the CLI's --scheduler passes it
        extract_features(
            catalogue,
            d / "dask",
            batch_size=4,
            show_progress=False,
            engine="dask",
            scheduler=c.scheduler_address,
        )
    finally:
        mp.undo()
    return d / "local", d / "dask"


def test_dask_extraction_writes_the_same_store(stores, cluster) -> None:
    local, dist = FeatureStore.open(stores[0]), FeatureStore.open(stores[1])
    assert dist.ids == local.ids and len(local) == 20
    assert (dist.sizes, dist.mtimes) == (local.sizes, local.mtimes)
    np.testing.assert_allclose(np.asarray(dist.vectors), np.asarray(local.vectors), atol=1e-5)
    # the colour rows come from the workers' decode, in the same generation, equal to the local ones
    assert dist.colour is not None and dist.plain is not None and local.colour is not None
    np.testing.assert_array_equal(np.asarray(dist.colour), np.asarray(local.colour))
    np.testing.assert_array_equal(np.asarray(dist.plain), np.asarray(local.plain))
    assert dist.colour_record() is not None
    assert dist.colour_record()["checksum"] == local.colour_record()["checksum"]  # type: ignore[index]
    assert (stores[1] / "skipped.csv").read_text() == (stores[0] / "skipped.csv").read_text()
    assert "broken/truncated.jpg" in (stores[1] / "skipped.csv").read_text()
    per_store = {"generation"}  # each store's own commit token (see _store)
    meta_l = {k: v for k, v in local.meta.items() if k not in per_store}
    assert {k: v for k, v in dist.meta.items() if k not in per_store} == meta_l
    assert not (stores[1] / "parts").exists()
    # each worker built its ONNX session once, whatever the number of shards it ran
    _, client = cluster
    builds = client.run(_embedder_builds)
    assert len(builds) == 2 and max(builds.values()) == 1 and sum(builds.values()) >= 1


def test_dask_assignment_matches_local(stores, cluster, tmp_path: Path) -> None:
    _, client = cluster
    m1, c1, m2, c2 = tmp_path / "l.vsm", tmp_path / "l.csv", tmp_path / "d.vsm", tmp_path / "d.csv"
    local = train_clusters(stores[0], m1, c1, 4, show_progress=False)
    dist = train_clusters(stores[0], m2, c2, 4, show_progress=False, engine="dask", scheduler=client)
    np.testing.assert_array_equal(local.cluster_centers_, dist.cluster_centers_)
    np.testing.assert_array_equal(local.labels_, dist.labels_)
    np.testing.assert_allclose(local.distances_, dist.distances_, atol=1e-5)
    assert read_assignments(c1)[1].tolist() == read_assignments(c2)[1].tolist()
    # an in-memory matrix, shipped in chunks; with a PCA model
    X = np.asarray(FeatureStore.open(stores[0]).vectors, np.float32)
    from varsitysrch import KMeansModel

    pca = KMeansModel(3, n_components=8).fit(X)
    lab, dst = dask_assign(X, pca, scheduler=client, chunk=7)
    np.testing.assert_array_equal(lab, pca.labels_)
    np.testing.assert_allclose(dst, pca.distances_, atol=1e-5)


def test_dask_update_matches_local(catalogue: Path, cluster, tmp_path: Path) -> None:
    c, _ = cluster
    results = {}
    for engine in ("local", "dask"):
        cat = tmp_path / engine / "cat"
        shutil.copytree(catalogue, cat)
        (cat / "broken").rename(tmp_path / engine / "held-back")
        feats, model, csv_path = (
            tmp_path / engine / "f",
            tmp_path / engine / "m.vsm",
            tmp_path / engine / "c.csv",
        )
        extract_features(cat, feats, show_progress=False)
        train_clusters(feats, model, csv_path, 4, show_progress=False)
        extra = make_synthetic_catalogue(tmp_path / engine / "new", n_classes=2, per_class=2, size=96, seed=9)
        for rel in extra:
            (cat / "new" / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(tmp_path / engine / "new" / rel, cat / "new" / rel)
        rep = update_catalogue(
            cat,
            feats,
            model,
            csv_path,
            show_progress=False,
            engine=engine,
            scheduler=c if engine == "dask" else None,
        )
        assert (rep.added, rep.n_embedded) == (4, 4)
        results[engine] = load_model(model)
    assert results["dask"].ids == results["local"].ids
    # both models record the colour rows of the updated store (the same rows: same checksum)
    col = {engine: mf.config["colour"] for engine, mf in results.items()}
    assert col["dask"] is not None and col["dask"] == col["local"] and col["dask"]["count"] == 24
    np.testing.assert_array_equal(results["dask"].labels, results["local"].labels)
    np.testing.assert_allclose(results["dask"].distances, results["local"].distances, atol=1e-4)


def test_scheduler_argument_is_checked() -> None:
    with pytest.raises(InvalidArgumentError, match="scheduler"), client_for(42):
        pass
    with pytest.raises(InvalidArgumentError, match="scheduler"), client_for("not an address"):
        pass
    with pytest.raises(InvalidArgumentError, match="engine"):
        extract_features(".", "/tmp/never", engine="ray")
