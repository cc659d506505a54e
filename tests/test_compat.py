"""Drop-in behaviour for code written against the original ``vasrch`` package.

* results are the image paths the original returned (a ``str`` subclass, :class:`Hit`), with
  rank, score, cluster and path on top;
* the clusters CSV has the original's ``Image_File`` and ``Cluster`` columns (its pandas code
  reads it), and the CSVs of earlier varsitysrch versions and of the original are read back;
* each of the four steps prints one line, and ``show_progress=False`` silences it;
* a model trained on the original's per-image ``.npy`` folder says how to search it.

The original's own ``example.py`` and ``tests.py`` run in ``test_dropin.py``.
"""

from __future__ import annotations

import copy
import csv
import json
import logging
import os
import pickle
from pathlib import Path

import numpy as np
import pytest

from varsitysrch import (
    Hit,
    IncompatibleModelError,
    ModelFileError,
    Searcher,
    VaSrch,
    extract_features,
    get_optimal_num_clusters,
    search_similar_images,
    train_clusters,
)
from varsitysrch._modelfile import read_assignments, read_assignments_kind

DATA = Path(__file__).parent / "data"


# ---------------------------------------------------------------- Hit is the image path
def test_hit_is_its_id_as_a_str(capsys: pytest.CaptureFixture[str]) -> None:
    h = Hit("t-shirt/a b.jpg", 0.91234, 3, 1)
    assert (h.score, h.cluster, h.rank, h.path) == (0.91234, 3, 1, None)
    assert type(h.image) is str and type(str(h)) is str
    assert h.image == f"{h}" == str(h) == "t-shirt/a b.jpg"
    assert h == "t-shirt/a b.jpg" and hash(h) == hash("t-shirt/a b.jpg")
    assert h.endswith(".jpg") and h.startswith("t-shirt/") and h.split("/")[0] == "t-shirt"
    assert os.path.join("catalog", h) == "catalog/t-shirt/a b.jpg"
    assert Path("catalog") / h == Path("catalog/t-shirt/a b.jpg")
    assert json.dumps([h]) == '["t-shirt/a b.jpg"]'
    print(h)
    assert capsys.readouterr().out == "t-shirt/a b.jpg\n"
    assert h in ["x.jpg", "t-shirt/a b.jpg"] and {h: 1}["t-shirt/a b.jpg"] == 1
    assert isinstance(h, str)  # last: it narrows the type for mypy


def test_hit_repr_attributes_and_to_dict() -> None:
    h = Hit(image="a/b.jpg", score=np.float32(0.5), cluster=np.int64(2), rank=4, path="/cat/a/b.jpg")
    assert repr(h) == "Hit('a/b.jpg', score=0.500, rank=4, cluster=2, path='/cat/a/b.jpg')"
    assert repr(Hit("a/b.jpg", 0.9123, 3, 1)) == "Hit('a/b.jpg', score=0.912, rank=1, cluster=3)"
    d = h.to_dict()
    assert d == {
        "image": "a/b.jpg", "score": 0.5, "cluster": 2, "rank": 4, "path": "/cat/a/b.jpg",
        "confidence": None, "match": None, "close": None,  # no calibration given to this Hit
    }  # fmt: skip
    assert [type(d[k]) for k in ("image", "score", "cluster", "rank")] == [str, float, int, int]
    assert json.loads(json.dumps(d)) == d
    r = h.with_rank(1)
    assert (r.rank, r.score, r.cluster, r.path, r) == (1, 0.5, 2, "/cat/a/b.jpg", "a/b.jpg") and h.rank == 4


def test_hit_is_immutable_and_pickles_and_copies_as_a_hit() -> None:
    h = Hit("a/b.jpg", 0.25, 1, 2, "/x/a/b.jpg")
    with pytest.raises(AttributeError, match="immutable"):
        h.score = 1.0
    with pytest.raises(AttributeError, match="immutable"):
        del h.rank
    for other in (pickle.loads(pickle.dumps(h)), copy.copy(h), copy.deepcopy(h)):
        assert type(other) is Hit and other == h
        assert (other.score, other.cluster, other.rank, other.path) == (0.25, 1, 2, "/x/a/b.jpg")
    for proto in range(pickle.HIGHEST_PROTOCOL + 1):
        assert pickle.loads(pickle.dumps(h, proto)).to_dict() == h.to_dict()


def test_search_results_are_paths_of_catalogue_files(synth_model, synth_catalogue) -> None:
    model, csv_path = synth_model
    root, labels = synth_catalogue
    rel = sorted(labels)[0]
    hits = search_similar_images(root / rel, model, csv_path, 3, image_root=root, show_progress=False)
    assert all(type(h) is Hit for h in hits) and [h.rank for h in hits] == [1, 2, 3]
    assert hits[0] == rel and hits[0].score == pytest.approx(1.0, abs=1e-3)
    for h in hits:  # what the original's callers do with a result
        assert (root / h).is_file() and os.path.isfile(os.path.join(root, h)) and h in labels
        assert h.path == str((root / h).resolve())
    assert json.loads(json.dumps(hits)) == [str(h) for h in hits]
    # VaSrch (the class API) returns the same
    vs = VaSrch(show_progress=False)
    assert vs.search_similar_images(root / rel, model, csv_path, 3) == [str(h) for h in hits]


# ---------------------------------------------------------------- the clusters CSV
def test_clusters_csv_is_read_by_the_originals_pandas_code(synth_model) -> None:
    pd = pytest.importorskip("pandas")
    model, csv_path = synth_model
    s = Searcher(model)
    df = pd.read_csv(csv_path)
    assert list(df.columns) == ["Image_File", "Cluster", "distance"]
    assert df["Image_File"].tolist() == s.ids and df["Cluster"].tolist() == s.labels.tolist()
    # the original's search: the members of the query's cluster, from the CSV
    c = int(s.labels[0])
    members = df[df["Cluster"] == c]["Image_File"].tolist()
    assert members == [i for i, lab in zip(s.ids, s.labels, strict=True) if lab == c]
    assert members and all(m.endswith((".jpg", ".png")) for m in members)  # ids keep their extension
    # and ours reads it back
    ids, labels = read_assignments(csv_path)
    assert ids == s.ids and np.array_equal(labels, s.labels)


def test_clusters_csv_of_earlier_varsitysrch_versions_still_reads() -> None:
    ids, labels, kind = read_assignments_kind(DATA / "clusters-v1.csv")  # image,cluster,distance
    assert kind == "varsitysrch" and len(ids) == len(labels) > 0 and ids[0].endswith(".jpg")
    Searcher(DATA / "model-v1.vsm", DATA / "clusters-v1.csv")  # checked against its model: it matches


def test_clusters_csv_with_a_bom_and_extra_columns_reads(tmp_path: Path) -> None:
    p = tmp_path / "c.csv"
    p.write_bytes("\ufeffnote,Image_File,Cluster,distance\nx,a/1.jpg,0,0.1\ny,b/2.jpg,1,0.2\n".encode())
    assert read_assignments_kind(p)[0] == ["a/1.jpg", "b/2.jpg"]
    assert read_assignments_kind(p)[1].tolist() == [0, 1]


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("file,group\na.jpg,1\n", "not a cluster CSV .*Image_File,Cluster.*got file,group"),
        ("", "not a cluster CSV .*got no header"),
        ("Image_File,Cluster,distance\na.jpg,one,0.1\n", "line 2 .*integer Cluster"),
        ("Image_File,Cluster,distance\na.jpg\n", "line 2 "),
        ("image,cluster\na.jpg,-1\n", "cluster must be integers >= 0"),
        ("Image_File,Cluster\na,99999999999\n", "Cluster must be integers >= 0"),
    ],
)
def test_a_bad_clusters_csv_is_one_clear_error(tmp_path: Path, text: str, match: str) -> None:
    p = tmp_path / "c.csv"
    p.write_text(text)
    with pytest.raises(ModelFileError, match=match) as info:
        read_assignments(p)
    msg = str(info.value)
    assert "\n" not in msg and msg.count("cluster CSV") <= 1 and msg.count(str(p)) == 1


def test_the_originals_csv_with_one_of_our_models_is_one_clear_error(synth_model, tmp_path: Path) -> None:
    model, _ = synth_model
    old = tmp_path / "metadata.csv"
    # what the original's train_clusters wrote: ids without extension, no distance column
    ids = Searcher(model).ids
    old.write_text("Image_File,Cluster\n" + "".join(f"{Path(i).stem},0\n" for i in ids))
    assert read_assignments_kind(old)[2] == "vasrch"
    with pytest.raises(IncompatibleModelError) as info:
        Searcher(model, old)
    msg = str(info.value)
    assert "original vasrch package" in msg and "train_clusters wrote" in msg and "\n" not in msg
    assert f"{len(ids)} of {len(ids)} missing" in msg and msg.count("metadata.csv") == 1


# ---------------------------------------------------------------- the original's .npy folder
@pytest.fixture
def legacy_model(tmp_path: Path) -> tuple[Path, Path, list[str]]:
    """A model trained on a per-image .npy folder, as the original's extract_features wrote it."""
    rng = np.random.default_rng(0)
    folder = tmp_path / "test_features"
    folder.mkdir()
    centres = rng.normal(size=(3, 16))
    for i in range(12):
        np.save(folder / f"img{i:02d}.npy", (centres[i % 3] + 0.05 * rng.normal(size=16))[None, None])
    model, csv_path = tmp_path / "model.vsm", tmp_path / "clusters.csv"
    train_clusters(folder, model, csv_path, 3, show_progress=False)
    return model, csv_path, [f"img{i:02d}" for i in range(12)]


def test_a_model_of_the_originals_npy_folder_says_how_to_search_it(
    legacy_model: tuple[Path, Path, list[str]], synth_catalogue
) -> None:
    model, csv_path, ids = legacy_model
    root, labels = synth_catalogue
    query = root / sorted(labels)[0]
    s = Searcher(model, csv_path)
    assert s.ids == ids  # the original's ids: file names without extension
    for call in (lambda: s.search(query, 3), lambda: search_similar_images(query, model, csv_path, 3)):
        with pytest.raises(IncompatibleModelError) as info:
            call()
        msg = str(info.value)
        assert "without an extractor identity" in msg and "per-image .npy folder" in msg
        assert "varsitysrch extract IMG_DIR FEATURES_DIR" in msg and "retrain" in msg
        assert "Searcher.search_vector" in msg and "\n" not in msg
    # the way forward it names works
    v = np.load(model.parent / "test_features" / "img04.npy").reshape(-1)
    hits = s.search_vector(v, 4)
    assert hits[0] == "img04" and {h.cluster for h in hits[:4]} == {s.labels[4]}
    assert sorted(h for h in hits if int(h[3:]) % 3 == 1) == sorted(hits)


def test_the_originals_csv_beside_a_model_of_the_same_npy_folder_is_accepted(
    legacy_model: tuple[Path, Path, list[str]], caplog: pytest.LogCaptureFixture
) -> None:
    model, _, ids = legacy_model
    old = model.parent / "metadata.csv"
    # the original's CSV for the same folder: same ids, clusters of its own K-means
    with open(old, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["Image_File", "Cluster"])
        w.writerows([i, (j + 1) % 3] for j, i in enumerate(ids))
    with caplog.at_level(logging.WARNING, logger="varsitysrch"):
        s = Searcher(model, old)
    assert s.ids == ids
    assert "original vasrch package's CSV" in caplog.text and "not used" in caplog.text


# ---------------------------------------------------------------- one line per step
def _lines(text: str) -> list[str]:
    return [ln for ln in text.splitlines() if ln.strip()]


def test_each_step_prints_one_line_and_show_progress_false_silences_it(
    synth_catalogue, tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    root, labels = synth_catalogue
    store, model, csv_path = tmp_path / "features", tmp_path / "model.vsm", tmp_path / "clusters.csv"
    n = len(labels)
    query = root / sorted(labels)[0]

    def steps(show: bool) -> list[list[str]]:
        out = []
        extract_features(root, store, show_progress=show)
        out.append(_lines(capsys.readouterr().out))
        get_optimal_num_clusters(store, 5, plot_path=None, verbose=show, retrieval=False)
        out.append(_lines(capsys.readouterr().out))
        train_clusters(store, model, csv_path, 4, show_progress=show)
        out.append(_lines(capsys.readouterr().out))
        search_similar_images(query, model, csv_path, 3, show_progress=show)
        out.append(_lines(capsys.readouterr().out))
        return out

    with caplog.at_level(logging.INFO, logger="varsitysrch"):
        extract, choose, train, search = steps(True)
    assert len(extract) == 1 and extract[0].startswith("Feature extraction completed: ")
    assert extract[0].startswith(
        f"Feature extraction completed: {n} images in {store} ({n} embedded, 0 reused"
    )
    assert "0 skipped" in extract[0]
    assert len(choose) == 1 and choose[0].startswith("k=")
    assert train == [
        f"Model saved to {model} and cluster assignments saved to {csv_path} (k=4, {n} images, "
        f"clusters of {min(np.bincount(Searcher(model).labels))}-{max(np.bincount(Searcher(model).labels))} "
        "images)."
    ]
    assert len(search) == 1 and search[0].startswith("Found 3 similar images (searched ")
    assert search[0].endswith(f" of 4 clusters, {search[0].split(', ')[1].split(' of ')[0]} of {n} images).")
    # each line is logged at INFO too, for applications that collect logs
    for line in (extract[0], train[0], search[0]):
        assert line in caplog.text

    # a second run: the extraction reuses everything and says so; silenced, nothing at all
    assert steps(False) == [[], [], [], []]
    extract_features(root, store)
    assert f"(0 embedded, {n} reused, 0 removed, 0 skipped; " in capsys.readouterr().out


def test_search_line_for_exact_and_one_result(synth_model, synth_catalogue, capsys) -> None:
    model, csv_path = synth_model
    root, labels = synth_catalogue
    query = root / sorted(labels)[0]
    search_similar_images(query, model, csv_path, 1, exact=True)
    assert capsys.readouterr().out == f"Found 1 similar image (exact: scanned all {len(labels)} images).\n"


def test_the_cli_prints_its_own_lines_not_the_librarys(synth_store: Path, synth_catalogue, tmp_path) -> None:
    from typer.testing import CliRunner

    from varsitysrch.cli import app

    runner = CliRunner()
    model, csv_path = tmp_path / "m.vsm", tmp_path / "c.csv"
    res = runner.invoke(app, ["train", str(synth_store), "-m", str(model), "-c", str(csv_path), "-k", "4"])
    assert res.exit_code == 0, res.output
    assert "Model saved to" not in res.output and "trained k=4" in res.output  # the CLI's line, once
    root, labels = synth_catalogue
    query = str(root / sorted(labels)[0])
    res = runner.invoke(app, ["search", query, "-m", str(model), "-c", str(csv_path), "--json"])
    assert res.exit_code == 0 and "Found" not in res.stdout
    assert [h["rank"] for h in json.loads(res.stdout)] == [1, 2, 3, 4, 5]


def test_the_extraction_line_names_the_skipped_list(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from PIL import Image

    root = tmp_path / "imgs"
    root.mkdir()
    for i, colour in enumerate(["red", "green", "blue"]):
        Image.new("RGB", (64, 48), colour).save(root / f"{i}.png")
    (root / "notes.jpg").write_text("not pixels")
    extract_features(root, tmp_path / "features")
    out = _lines(capsys.readouterr().out)
    assert len(out) == 1 and "3 images in" in out[0] and "1 skipped" in out[0]
    assert out[0].endswith(f"; skipped files are listed in {tmp_path / 'features' / 'skipped.csv'}.")
