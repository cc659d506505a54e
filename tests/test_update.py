"""update_catalogue: incremental embedding, assignment without retraining, drift report."""

from __future__ import annotations

import csv
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from imagegen import SYNTHETIC_CLASSES, make_synthetic_catalogue
from varsitysrch import train_clusters
from varsitysrch._extract import extract_features
from varsitysrch._modelfile import _save_model, load_model, read_assignments
from varsitysrch._search import Searcher
from varsitysrch._update import UpdateReport, _gini, _retrain_reasons, update_catalogue


def _copy(src: Path, dst: Path, rels: list[str]) -> None:
    for rel in rels:
        (dst / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src / rel, dst / rel)


def _rows(path: Path) -> dict[str, tuple[str, str]]:
    with open(path, encoding="utf-8", newline="") as f:
        return {r["Image_File"]: (r["Cluster"], r["distance"]) for r in csv.DictReader(f)}


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    root = tmp_path_factory.mktemp("source")
    labels = make_synthetic_catalogue(root, n_classes=len(SYNTHETIC_CLASSES), per_class=8, size=96, seed=3)
    return root, labels


def _pick(labels: dict[str, str], classes: list[str], idx: range) -> list[str]:
    return sorted(r for r in labels if labels[r] in classes and int(Path(r).stem.split("_")[1]) in idx)


def test_add_change_delete_updates_only_what_changed(source, tmp_path: Path) -> None:
    src, labels = source
    classes = [c for c, _ in SYNTHETIC_CLASSES[:4]]
    cat, feats, model, csv_path = (
        tmp_path / "cat",
        tmp_path / "features",
        tmp_path / "m.vsm",
        tmp_path / "c.csv",
    )
    _copy(src, cat, _pick(labels, classes, range(6)))
    extract_features(cat, feats, show_progress=False)
    train_clusters(feats, model, csv_path, 4, query_expansion=2, show_progress=False)
    before = _rows(csv_path)
    mf0 = load_model(model)
    assert "store_sizes" in mf0.arrays and "0.95" in mf0.config["training"]["distance_quantiles"]

    added = [f"{classes[0]}/img_06.png", f"{classes[1]}/img_07.jpg"]
    _copy(src, cat, added)
    changed = f"{classes[2]}/img_01.jpg"
    shutil.copyfile(src / f"{classes[2]}/img_07.jpg", cat / changed)  # new content, same class
    os.utime(cat / changed, ns=(1_700_000_000_000_000_000, 1_700_000_000_000_000_000))
    removed = f"{classes[1]}/img_02.png"
    (cat / removed).unlink()

    rep = update_catalogue(cat, feats, model, csv_path, show_progress=False)
    assert isinstance(rep, UpdateReport)
    assert (rep.added, rep.changed, rep.removed, rep.unchanged) == (2, 1, 1, 22)
    assert rep.n_embedded == 3 and rep.n_images == 25 and rep.skipped == 0

    # the CSV and the model agree, and with the store; unchanged rows are byte-identical
    after = _rows(csv_path)
    assert set(after) == (set(before) | set(added)) - {removed}
    for rel in set(before) - {removed, changed}:
        assert after[rel] == before[rel], rel
    mf = load_model(model)
    ids, lab = read_assignments(csv_path)
    assert ids == mf.ids and np.array_equal(lab, mf.labels)
    assert mf.config["query_expansion"] == mf0.config["query_expansion"] == 2  # settings kept
    np.testing.assert_array_equal(mf.centroids, mf0.centroids)  # no retraining
    assert mf.config["n_images"] == 25 and mf.config["updates"][-1]["added"] == 2
    assert mf.vectors is not None and len(mf.vectors) == 25
    assert [int(s) for s in mf.arrays["store_sizes"]] == [os.stat(cat / r).st_size for r in mf.ids]

    # a new image is found as top-1 of its own query; nprobe stays valid
    s = Searcher(model, csv_path)
    for rel in [*added, changed]:
        assert s.search(cat / rel, top_n=3)[0].image == rel
    assert 1 <= s.default_nprobe <= s.k

    # drift report is sane and serialisable; same-class additions do not call for retraining
    d = rep.to_dict()
    json.dumps(d)
    assert rep.cluster_imbalance >= 1.0 and rep.cluster_imbalance_at_training >= 1.0
    assert 0.0 <= rep.gini < 1 and rep.mean_distance > 0 and rep.mean_distance_at_training > 0
    assert rep.far_threshold > 0 and 0.0 <= rep.far_share <= 1.0 and rep.n_far <= 3
    assert 0 < rep.churn < 0.5 and rep.k == 4
    assert not rep.retrain_recommended and rep.reasons == ()
    assert "2 added" in rep.summary() and "no retraining needed" in rep.summary()

    # a rerun on an unchanged folder embeds nothing and keeps every row
    rep2 = update_catalogue(cat, feats, model, csv_path, show_progress=False)
    assert (rep2.added, rep2.changed, rep2.removed, rep2.n_embedded) == (0, 0, 0, 0)
    assert _rows(csv_path) == after
    assert len(load_model(model).config["updates"]) == 2


def test_drifted_catalogue_recommends_retraining(source, tmp_path: Path) -> None:
    src, labels = source
    old = [c for c, _ in SYNTHETIC_CLASSES[:2]]
    new = [c for c, _ in SYNTHETIC_CLASSES[4:8]]
    cat, feats, model, csv_path = (
        tmp_path / "cat",
        tmp_path / "features",
        tmp_path / "m.vsm",
        tmp_path / "c.csv",
    )
    _copy(src, cat, _pick(labels, old, range(6)))
    extract_features(cat, feats, show_progress=False)
    train_clusters(feats, model, csv_path, 2, show_progress=False)
    _copy(src, cat, _pick(labels, new, range(6)))
    rep = update_catalogue(cat, feats, model, csv_path, show_progress=False)
    assert rep.added == 24 and rep.n_embedded == 24 and rep.unchanged == 12
    assert rep.n_far >= 5 and rep.far_share > 0.1
    assert rep.retrain_recommended and rep.reasons
    assert "retrain recommended" in rep.summary()
    assert load_model(model).config["updates"][-1]["retrain_recommended"] is True


def test_retrain_rule_and_gini() -> None:
    base = dict(
        far_quantile=0.95, mean_distance=1.0, mean_distance_at_training=1.0, imbalance=1.2,
        imbalance_at_training=1.2, churn=0.1,
    )  # fmt: skip
    assert _retrain_reasons(n_new=100, n_far=8, **base) == []  # 8 % far: under 2 x 5 %
    assert len(_retrain_reasons(n_new=100, n_far=20, **base)) == 1
    assert _retrain_reasons(n_new=3, n_far=3, **base) == []  # too few to tell
    assert len(_retrain_reasons(n_new=0, n_far=0, **{**base, "mean_distance": 1.2})) == 1
    assert len(_retrain_reasons(n_new=0, n_far=0, **{**base, "imbalance": 2.0})) == 1
    assert len(_retrain_reasons(n_new=0, n_far=0, **{**base, "churn": 0.6})) == 1
    assert _gini(np.array([5, 5, 5, 5])) == pytest.approx(0.0)
    assert _gini(np.array([0, 0, 0, 20])) == pytest.approx(0.75)


def test_update_rejects_bad_arguments(tmp_path: Path, synth_model, synth_catalogue, synth_store) -> None:
    model, csv_path = synth_model
    root, _ = synth_catalogue
    with pytest.raises(ValueError, match="far_quantile"):
        update_catalogue(root, synth_store, model, csv_path, far_quantile=1.5)
    with pytest.raises(ValueError, match="engine"):
        update_catalogue(root, synth_store, model, csv_path, engine="spark")


def test_update_keeps_the_ivf_search_index_in_step(source, tmp_path: Path) -> None:
    src, labels = source
    classes = [c for c, _ in SYNTHETIC_CLASSES[:3]]
    cat, feats, model, csv_path = (
        tmp_path / "cat",
        tmp_path / "features",
        tmp_path / "m.vsm",
        tmp_path / "c.csv",
    )
    _copy(src, cat, _pick(labels, classes, range(6)))
    extract_features(cat, feats, show_progress=False)
    train_clusters(feats, model, csv_path, 3, ivf=True, embed_index=False, show_progress=False)
    assert load_model(model).config["ivf"]["nlist"] >= 1
    added = [f"{classes[0]}/img_07.jpg", f"{classes[2]}/img_06.png"]
    _copy(src, cat, added)
    rep = update_catalogue(cat, feats, model, csv_path, show_progress=False)
    assert rep.added == 2 and rep.n_images == 20
    mf = load_model(model)
    assert mf.vectors is None and mf.arrays["ivf_lists"].shape == (20,)
    s = Searcher(model, csv_path)
    assert s.probe_unit == "lists"  # searched through the IVF
    for rel in added:
        hit = s.search(cat / rel, top_n=1)[0]
        assert hit.image == rel and hit.cluster == int(mf.labels[mf.ids.index(rel)])


def test_update_on_a_model_with_pca_keeps_both_spaces_and_projects_the_new_catalogue(
    source, tmp_path: Path
) -> None:
    from varsitysrch._postprocess import to_search_space
    from varsitysrch._searchindex import _calibrate_nprobe

    src, labels = source
    classes = [c for c, _ in SYNTHETIC_CLASSES[:4]]
    cat, feats, model, csv_path = tmp_path / "cat", tmp_path / "f", tmp_path / "m.vsm", tmp_path / "c.csv"
    _copy(src, cat, _pick(labels, classes, range(6)))
    extract_features(cat, feats, show_progress=False)
    train_clusters(feats, model, csv_path, 4, n_components=5, search_pca=12, show_progress=False)
    mf0 = load_model(model)
    assert mf0.pca_components is not None and mf0.config["search_pca"] == 12
    added = [f"{classes[0]}/img_06.png", f"{classes[3]}/img_07.jpg"]
    _copy(src, cat, added)
    rep = update_catalogue(cat, feats, model, csv_path, show_progress=False)
    assert (rep.added, rep.n_images) == (2, 26)
    mf = load_model(model)
    # neither space is refitted
    np.testing.assert_array_equal(mf.pca_components, mf0.pca_components)
    np.testing.assert_array_equal(mf.arrays["search_components"], mf0.arrays["search_components"])
    # the whole new catalogue is stored in the ranking space
    X = np.asarray(mf.vectors, np.float32)
    R = to_search_space(X, mf.arrays["search_mean"], mf.arrays["search_components"])
    np.testing.assert_allclose(mf.arrays["search_vectors"], R, atol=1e-3)
    # new images are assigned in the clustering space: the model's own prediction
    pos = [mf.ids.index(a) for a in added]
    np.testing.assert_array_equal(mf.labels[pos], mf.to_model().predict(X[pos]))
    # nprobe was recalibrated in the ranking space
    want, curve = _calibrate_nprobe(X, mf.labels, mf.to_model(), 0.95, ranking=R, n_queries=200)
    assert mf.config["nprobe"] == want and mf.config["recall_curve"] == curve
    s = Searcher(model, csv_path)
    for rel in added:
        assert s.search(cat / rel, top_n=3)[0].image == rel


def test_an_image_re_embedded_in_place_is_reassigned(source, tmp_path: Path) -> None:
    # a model that recorded size + mtime only (no inode/ctime) and an in-place edit that keeps
    # both: the extraction re-embeds the image (its ctime changed), so the update must reassign it
    src, labels = source
    classes = [c for c, _ in SYNTHETIC_CLASSES[:4]]
    cat, feats, model, csv_path = tmp_path / "cat", tmp_path / "f", tmp_path / "m.vsm", tmp_path / "c.csv"
    _copy(src, cat, _pick(labels, classes, range(6)))
    extract_features(cat, feats, show_progress=False)
    train_clusters(feats, model, csv_path, 4, show_progress=False)
    mf0 = load_model(model)
    for col in ("inodes", "ctimes"):
        mf0.arrays.pop(f"store_{col}", None)
    _save_model(model, mf0)
    # the edited image: another class's picture, padded to the old size, old mtime kept
    edited = next(r for r in sorted(mf0.ids) if r.startswith(classes[0]))
    st = (cat / edited).stat()
    donor = min(
        (cat / r for r in mf0.ids if r.startswith(classes[3])), key=lambda p: p.stat().st_size
    ).read_bytes()
    assert len(donor) <= st.st_size
    with open(cat / edited, "r+b") as f:  # in place: same inode
        f.write(donor + b"\0" * (st.st_size - len(donor)))
    os.utime(cat / edited, ns=(st.st_atime_ns, st.st_mtime_ns))
    rep = update_catalogue(cat, feats, model, csv_path, show_progress=False)
    assert rep.n_embedded == 1 and (rep.changed, rep.added, rep.removed) == (1, 0, 0)
    mf = load_model(model)
    j = mf.ids.index(edited)
    assert mf.labels[j] == mf.to_model().predict(np.asarray(mf.vectors, np.float32)[j : j + 1])[0]
    donor_cluster = mf.labels[
        mf.ids.index(
            min((r for r in mf0.ids if r.startswith(classes[3])), key=lambda r: (cat / r).stat().st_size)
        )
    ]
    assert mf.labels[j] == donor_cluster != mf0.labels[mf0.ids.index(edited)]


def test_update_commits_colour_rows_with_the_vectors_and_records_them_in_the_model(
    source, tmp_path: Path
) -> None:
    """The colour rows of changed and added images are computed by the update's extraction and
    committed in the same generation; the updated model records that generation's colour."""
    from varsitysrch._extract import _decode_for_store
    from varsitysrch._extractors import get_extractor
    from varsitysrch._store import FeatureStore

    src, labels = source
    classes = [c for c, _ in SYNTHETIC_CLASSES[:4]]
    cat, feats, model, csv_path = tmp_path / "cat", tmp_path / "f", tmp_path / "m.vsm", tmp_path / "c.csv"
    _copy(src, cat, _pick(labels, classes, range(4)))
    extract_features(cat, feats, show_progress=False)
    train_clusters(feats, model, csv_path, 4, show_progress=False)
    before = FeatureStore.open(feats)
    assert load_model(model).config["colour"] == json.loads(json.dumps(before.colour_record()))
    ids0 = list(before.ids)
    changed = next(r for r in ids0 if r.startswith(classes[0]) and r.endswith(".png"))
    donor = next(r for r in ids0 if r.startswith(classes[2]) and r.endswith(".png"))
    shutil.copyfile(cat / donor, cat / changed)  # recoloured in place
    added = _pick(labels, classes, range(4, 5))
    _copy(src, cat, added)
    rep = update_catalogue(cat, feats, model, csv_path, show_progress=False)
    assert (rep.changed, rep.added) == (1, len(added))
    store = FeatureStore.open(feats)
    assert store.colour is not None and store.generation != before.generation
    ex = get_extractor(store.extractor["name"])
    for rel in [changed, *added]:
        want = _decode_for_store(cat / rel, ex.input_size, ex.resize)[1]
        j = store.ids.index(rel)
        np.testing.assert_allclose(np.asarray(store.colour[j], np.float32), want[:-1], atol=2e-3)
        assert store.plain[j, 0] == want[-1]
    kept = [r for r in ids0 if r != changed]
    np.testing.assert_array_equal(
        np.asarray(store.colour)[[store.ids.index(r) for r in kept]],
        np.asarray(before.colour)[[ids0.index(r) for r in kept]],
    )
    mf = load_model(model)
    assert mf.config["colour"] == json.loads(json.dumps(store.colour_record()))
    assert mf.config["features"]["checksum"] == store.checksum


def test_update_allow_empty(source, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from varsitysrch import FeatureStoreError
    from varsitysrch._store import FeatureStore
    from varsitysrch.cli import app

    src, labels = source
    cat, feats, model, csv_path = tmp_path / "cat", tmp_path / "f", tmp_path / "m.vsm", tmp_path / "c.csv"
    _copy(src, cat, _pick(labels, [c for c, _ in SYNTHETIC_CLASSES[:2]], range(4)))
    extract_features(cat, feats, show_progress=False)
    train_clusters(feats, model, csv_path, 2, show_progress=False)
    shutil.rmtree(cat)
    cat.mkdir()  # an emptied (or unmounted) folder
    model_bytes = model.read_bytes()
    cmd = ["update", str(cat), str(feats), "--model", str(model), "--csv", str(csv_path)]
    res = CliRunner().invoke(app, cmd)
    assert res.exit_code == 2 and "--allow-empty" in res.output
    assert len(FeatureStore.open(feats)) == 8
    with pytest.raises(FeatureStoreError, match="allow_empty"):
        update_catalogue(cat, feats, model, csv_path, show_progress=False)
    res = CliRunner().invoke(app, [*cmd, "--allow-empty"])
    assert res.exit_code == 2 and "a model needs at least one image" in res.output, res.output
    assert len(FeatureStore.open(feats)) == 0  # the store was emptied, as asked
    assert model.read_bytes() == model_bytes  # the model is never left unloadable
    Searcher(model, csv_path)
