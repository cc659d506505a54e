"""extract_features -> store -> train_clusters -> model file + CSV, with reruns and bad input."""

from __future__ import annotations

import csv
import json
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest

from imagegen import make_bad_corpus, make_synthetic_catalogue
from varsitysrch import (
    FeatureStore,
    FeatureStoreError,
    IncompatibleFeaturesError,
    InvalidArgumentError,
    KMeansModel,
    ModelFileError,
    NotFittedError,
    Searcher,
    extract_features,
    load_features,
    train_clusters,
)
from varsitysrch._modelfile import load_model


def test_store_layout_and_ids(synth_catalogue, synth_store: Path) -> None:
    _root, labels = synth_catalogue
    meta = json.loads((synth_store / "store.json").read_text())
    assert meta["format"] == "varsitysrch-features" and meta["count"] == len(labels)
    assert (
        meta["extractor"]["name"] == "efficientnet-lite0" and len(meta["extractor"]["weights_sha256"]) == 64
    )
    ids, X, _ex = load_features(synth_store)
    assert ids == sorted(labels) and X.shape == (len(labels), 1280) and X.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(X, axis=1), 1.0, atol=1e-5)
    assert isinstance(FeatureStore.open(synth_store).vectors, np.memmap)


def test_known_classes_are_nearest_neighbours(synth_catalogue, synth_store: Path) -> None:
    _, labels = synth_catalogue
    ids, X, _ = load_features(synth_store)
    S = X @ X.T
    np.fill_diagonal(S, -1)
    nn = S.argmax(1)
    agree = np.mean([labels[ids[i]] == labels[ids[j]] for i, j in enumerate(nn)])
    assert agree >= 0.95


def test_rerun_reuses_and_updates_incrementally(tmp_path: Path) -> None:
    root = tmp_path / "cat"
    make_synthetic_catalogue(root, n_classes=2, per_class=4, size=64, seed=1)
    out = tmp_path / "feat"
    first = extract_features(root, out, show_progress=False)
    assert (first.n_embedded, first.n_reused) == (8, 0)
    X0 = load_features(out)[1]
    again = extract_features(root, out, show_progress=False)
    assert (again.n_embedded, again.n_reused, again.n_removed) == (0, 8, 0)
    np.testing.assert_array_equal(load_features(out)[1], X0)
    ids = load_features(out)[0]
    # add one, change one, delete one
    shutil.copy(root / ids[0], root / "new.png" if ids[0].endswith(".png") else root / "new.jpg")
    changed = root / ids[1]
    data = changed.read_bytes()
    os.utime(changed, ns=(1, 1))
    changed.write_bytes(data)
    (root / ids[2]).unlink()
    third = extract_features(root, out, show_progress=False)
    assert (third.n_embedded, third.n_reused, third.n_removed) == (2, 6, 1)
    assert len(load_features(out)[0]) == 8


def test_interrupted_run_resumes_from_checkpoints(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from varsitysrch import _extractors

    root = tmp_path / "cat"
    make_synthetic_catalogue(root, n_classes=2, per_class=6, size=64, seed=2)
    out = tmp_path / "feat"
    calls = {"n": 0}
    real = _extractors.Embedder.embed

    def flaky(self, batch):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(self, batch)

    monkeypatch.setattr(_extractors.Embedder, "embed", flaky)
    with pytest.raises(KeyboardInterrupt):
        extract_features(root, out, batch_size=4, checkpoint_every=4, show_progress=False)
    assert not (out / "store.json").exists() and list((out / "parts").glob("part-*.npy"))
    monkeypatch.setattr(_extractors.Embedder, "embed", real)
    res = extract_features(root, out, batch_size=4, show_progress=False)
    assert res.n_reused == 8 and res.n_embedded == 4
    assert not (out / "parts").exists()
    fresh = extract_features(root, tmp_path / "fresh", show_progress=False)
    assert fresh.n_images == 12
    np.testing.assert_allclose(load_features(out)[1], load_features(tmp_path / "fresh")[1], atol=1e-5)


def test_bad_corpus_is_skipped_and_reported(tmp_path: Path) -> None:
    root = tmp_path / "bad"
    expected = make_bad_corpus(root)
    out = tmp_path / "feat"
    res = extract_features(root, out, show_progress=False)
    want_skip = {k for k, v in expected.items() if v == "skip"}
    want_ok = {k for k, v in expected.items() if v == "ok"}
    assert {p for p, _ in res.skipped} == want_skip
    assert set(load_features(out)[0]) == want_ok
    with open(out / "skipped.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert {r["path"] for r in rows} == want_skip and all(r["reason"] for r in rows)
    assert f"{len(want_skip)} skipped" in res.summary()


def test_extract_rejects_bad_arguments(tmp_path: Path, synth_catalogue) -> None:
    root, _ = synth_catalogue
    with pytest.raises(InvalidArgumentError, match="img_folder"):
        extract_features(tmp_path / "nope", tmp_path / "f")
    with pytest.raises(InvalidArgumentError, match="batch_size"):
        extract_features(root, tmp_path / "f", batch_size=0)
    with pytest.raises(InvalidArgumentError, match="extractor"):
        extract_features(root, tmp_path / "f", extractor="nope")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FeatureStoreError, match="no readable images"):
        extract_features(empty, tmp_path / "f2", show_progress=False)


def test_store_made_with_another_extractor_is_not_mixed(
    synth_catalogue, synth_store: Path, tmp_path: Path
) -> None:
    root, _ = synth_catalogue
    copy = tmp_path / "copy"
    shutil.copytree(synth_store, copy)
    # a store mismatch is a feature-store error (and an IncompatibleError), not a model-file error
    with pytest.raises(IncompatibleFeaturesError, match="different extractor") as err:
        extract_features(root, copy, resize="squash", show_progress=False)
    assert isinstance(err.value, FeatureStoreError) and not isinstance(err.value, ModelFileError)


def test_legacy_per_image_npy_folder_is_readable(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for name in ("a.jpg", "b.jpg", "c.jpg"):
        np.save(tmp_path / f"{name}.npy", rng.standard_normal((1, 7, 7, 4)).astype(np.float32))
    ids, X, ex = load_features(tmp_path)
    assert ids == ["a.jpg", "b.jpg", "c.jpg"] and X.shape == (3, 196) and ex["name"] == "legacy-npy"
    km = train_clusters(tmp_path, tmp_path / "m.vsm", tmp_path / "c.csv", 2, show_progress=False)
    mf = load_model(tmp_path / "m.vsm")
    assert mf.ids == ids and mf.config["dim"] == 196 and sorted(set(mf.labels.tolist())) == [0, 1]
    np.testing.assert_array_equal(mf.labels, km.labels_)
    s = Searcher(tmp_path / "m.vsm", tmp_path / "c.csv")
    assert s.extractor is None  # legacy features: search by vector only
    for j, rel in enumerate(ids):
        assert s.search_vector(X[j], 1)[0].image == rel


def test_missing_or_corrupt_store_is_a_clear_error(tmp_path: Path, synth_store: Path) -> None:
    with pytest.raises(FeatureStoreError, match="does not exist"):
        load_features(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FeatureStoreError, match="run extract_features"):
        load_features(tmp_path / "empty")
    broken = tmp_path / "broken"
    shutil.copytree(synth_store, broken)
    from varsitysrch._store import store_paths

    store_paths(broken).ids.write_text("id,size,mtime_ns\nonly-one,1,1\n")  # the live ids table
    with pytest.raises(FeatureStoreError, match="inconsistent"):
        load_features(broken)


# ------------------------------------------------------------------ clustering + model file
def test_estimator_contract() -> None:
    X = np.random.default_rng(0).standard_normal((50, 8)).astype(np.float32)
    m = KMeansModel(3, random_state=0)
    assert m.num_clusters == 3 and not hasattr(m, "cluster_centers_")
    with pytest.raises(NotFittedError):
        m.predict(X)
    assert m.fit(X) is m
    assert m.cluster_centers_.shape == (3, 8) and m.labels_.shape == (50,)
    np.testing.assert_array_equal(m.predict(X), m.labels_)
    again = KMeansModel(3, random_state=0).fit(X)
    np.testing.assert_allclose(again.cluster_centers_, m.cluster_centers_)
    with pytest.raises(
        InvalidArgumentError, match=r"num_clusters must be in \[2, n_images\] = \[2, 50\]; got 1"
    ):
        KMeansModel(1).fit(X)
    with pytest.raises(InvalidArgumentError, match="got 51"):
        KMeansModel(51).fit(X)
    with pytest.raises(InvalidArgumentError, match="integer"):
        KMeansModel(2.5).fit(X)  # type: ignore[arg-type]


def test_kmeans_model_is_a_scikit_learn_estimator() -> None:
    from sklearn.base import BaseEstimator, clone

    X = np.random.default_rng(1).standard_normal((60, 6)).astype(np.float32)
    m = KMeansModel(3, n_init=2, random_state=4, n_components=4, backend="sklearn")
    assert isinstance(m, BaseEstimator)
    params = m.get_params()
    assert params == {
        "num_clusters": 3, "n_init": 2, "max_iter": 300, "random_state": 4, "backend": "sklearn",
        "n_components": 4, "max_samples": None,
    }  # fmt: skip
    m.fit(X)
    c = clone(m)
    assert c.get_params() == params and not hasattr(c, "cluster_centers_")
    np.testing.assert_array_equal(c.fit(X).labels_, m.labels_)
    assert m.set_params(num_clusters=2) is m and m.num_clusters == 2
    learned = [a for a in vars(m) if a not in params]
    assert learned and all(a.endswith("_") for a in learned), learned


def test_faiss_backend_and_pca_space() -> None:
    from sklearn.datasets import make_blobs

    X, y = make_blobs(600, n_features=32, centers=4, cluster_std=0.5, random_state=0)
    X = (X / np.linalg.norm(X, axis=1, keepdims=True)).astype(np.float32)
    for backend in ("sklearn", "faiss"):
        m = KMeansModel(4, backend=backend, n_components=8).fit(X)
        assert m.backend_ == backend and m.pca_components_.shape == (8, 32)
        from sklearn.metrics import adjusted_rand_score

        assert adjusted_rand_score(y, m.labels_) > 0.95


def test_train_writes_model_and_csv(synth_store: Path, synth_model, synth_catalogue) -> None:
    model, csv_path = synth_model
    _, labels = synth_catalogue
    with open(csv_path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["Image_File", "Cluster", "distance"]  # the original package's names first
    assert [r["Image_File"] for r in rows] == sorted(labels)
    mf = load_model(model)
    assert mf.k == 4 and mf.config["extractor"]["name"] == "efficientnet-lite0"
    assert 1 <= mf.config["nprobe"] <= 4 and mf.config["training"]["inertia"] > 0
    assert [int(r["Cluster"]) for r in rows] == mf.labels.tolist()
    # the known classes are recovered
    from sklearn.metrics import adjusted_rand_score

    assert adjusted_rand_score([labels[r["Image_File"]] for r in rows], mf.labels) > 0.9


def test_model_file_refuses_pickles_without_running_code(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    for name in ("model.pkl", "model.vsm"):
        p = tmp_path / name
        p.write_bytes(pickle.dumps(Evil()))
        with pytest.raises(ModelFileError, match="pickle"):
            load_model(p)
    p = tmp_path / "proto0.pkl"
    p.write_bytes(pickle.dumps(Evil(), protocol=0))
    with pytest.raises(ModelFileError):
        load_model(p)
    assert not marker.exists()


def test_model_file_named_pkl_is_still_json_and_arrays(synth_store: Path, tmp_path: Path) -> None:
    import zipfile

    train_clusters(synth_store, tmp_path / "m.pkl", tmp_path / "c.csv", 3, show_progress=False)
    with zipfile.ZipFile(tmp_path / "m.pkl") as zf:
        names = set(zf.namelist())
        assert "model.json" in names and all(n.endswith((".json", ".npy", ".txt")) for n in names)
    assert load_model(tmp_path / "m.pkl").k == 3


def test_model_file_errors(tmp_path: Path, synth_model) -> None:
    model, _ = synth_model
    with pytest.raises(ModelFileError, match="does not exist"):
        load_model(tmp_path / "missing.vsm")
    (tmp_path / "junk.vsm").write_bytes(b"GARBAGE" * 10)
    with pytest.raises(ModelFileError, match="not a varsitysrch model"):
        load_model(tmp_path / "junk.vsm")
    import zipfile

    newer = tmp_path / "newer.vsm"
    with zipfile.ZipFile(model) as src, zipfile.ZipFile(newer, "w") as dst:
        for n in src.namelist():
            data = src.read(n)
            if n == "model.json":
                cfg = json.loads(data)
                cfg["version"] = 99
                data = json.dumps(cfg).encode()
            dst.writestr(n, data)
    with pytest.raises(ModelFileError, match="newer"):
        load_model(newer)
    truncated = tmp_path / "trunc.vsm"
    truncated.write_bytes(model.read_bytes()[: model.stat().st_size // 2])
    with pytest.raises(ModelFileError):
        load_model(truncated)


def test_train_validates_num_clusters(synth_store: Path, tmp_path: Path) -> None:
    with pytest.raises(InvalidArgumentError, match="num_clusters"):
        train_clusters(synth_store, tmp_path / "m.vsm", tmp_path / "c.csv", 10_000)
    assert not (tmp_path / "m.vsm").exists() and not (tmp_path / "c.csv").exists()
