"""Issue 19, store and model half: the store folder is ours alone, and its integrity can be checked.

Each test names the defect of issue 19 it covers (``d1`` ... ``d18``).  Every one of them was run
against the code before the fix (8b3ab45, ``PYTHONPATH=<worktree of 8b3ab45>/src``) and failed
there; the comment of each says how.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import shutil
import stat
import threading
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from hostile import fifo, solid, unblock_fifo
from varsitysrch import extract_features, train_clusters
from varsitysrch._errors import (
    FeatureStoreError,
    IncompatibleModelError,
    InvalidArgumentError,
    ModelFileError,
    VarsitysrchError,
)
from varsitysrch._io import write_csv
from varsitysrch._modelfile import load_model
from varsitysrch._store import STORE_JSON, FeatureStore, store_paths

DIM = 16


def unit_rows(n: int, seed: int = 0, dim: int = DIM) -> np.ndarray:
    X = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return X / np.linalg.norm(X, axis=1, keepdims=True)


def write_store(folder: Path, n: int = 12, seed: int = 0, ids: list[str] | None = None) -> list[str]:
    ids = ids or [f"c{i % 3}/{i:03d}.png" for i in range(n)]
    FeatureStore.write(
        folder,
        ids,
        unit_rows(len(ids), seed),
        {"name": "generated", "dim": DIM},
        sizes=[100 + i for i in range(len(ids))],
        mtimes=[10**18 + seed * 1000 + i for i in range(len(ids))],
        inodes=[5000 + seed * 1000 + i for i in range(len(ids))],
        ctimes=[10**18 + i for i in range(len(ids))],
    )
    return ids


def catalogue(root: Path, n: int = 6, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    for i in range(n):
        rgb = tuple(int(v) for v in rng.integers(0, 255, 3))
        solid(root / f"c{i % 2}" / f"{i:03d}.png", rgb, seed=seed + i)  # type: ignore[arg-type]
    return root


def files_of(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def one_line(exc: BaseException) -> str:
    text = str(exc)
    assert text and "\n" not in text, text
    return text


def in_thread(fn: Callable[[], Any], timeout: float = 20.0, fifos: tuple[Path, ...] = ()) -> Any:
    """``fn()`` in a thread; a hang past ``timeout`` fails the test (the FIFOs are then unblocked)."""
    out: dict[str, Any] = {}

    def run() -> None:
        try:
            out["value"] = fn()
        except BaseException as exc:  # handed to the test
            out["error"] = exc

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(timeout)
    if t.is_alive():
        for f in fifos:
            unblock_fifo(f)
        t.join(5)
        pytest.fail(f"hung for more than {timeout}s")
    if "error" in out:
        raise out["error"]
    return out.get("value")


# ====================================================================== d1, d2: the folder is ours
@pytest.mark.parametrize("inner", ["g-shop", "parts", "."])
def test_d1_d2_image_folder_inside_or_equal_to_the_store_is_refused(tmp_path: Path, inner: str) -> None:
    """``extract shop/g-shop shop`` deleted the 10 photos it was asked to embed (cleanup removed any
    ``g-*`` folder); ``extract shop/parts shop`` deleted ``parts`` after a successful run (failed on
    8b3ab45: the run went ahead and the photos were gone; "." was refused without naming the store)."""
    store = tmp_path / "shop"
    images = catalogue(store / inner)
    before = files_of(images)
    with pytest.raises(InvalidArgumentError) as info:
        extract_features(images, store, show_progress=False)
    msg = one_line(info.value)
    assert str(images) in msg and repr(str(store)) in msg and "feature store folder" in msg
    assert files_of(images) == before


def test_d1_folders_and_files_we_did_not_write_are_never_removed(tmp_path: Path) -> None:
    """A user's ``store/g-drive-backup/`` was deleted by the next write, and so was any hidden
    ``.*.tmp`` file (failed on 8b3ab45: ``startswith("g-")``; all three were gone)."""
    store = tmp_path / "store"
    write_store(store)
    mine = {
        "g-drive-backup/photo.jpg": b"my photo",
        "g-0123456789abcdef-abcd1234/notes.txt": b"named like a generation, not one",
        ".notes.tmp": b"mine too",
        "g-0123456789abcdef-abcd5678/vectors.npy": b"no marker: not ours",
    }
    for rel, data in mine.items():
        (store / rel).parent.mkdir(parents=True, exist_ok=True)
        (store / rel).write_bytes(data)
    write_store(store, seed=1)
    write_store(store, n=7, seed=2)
    for rel, data in mine.items():
        assert (store / rel).read_bytes() == data, rel
    # our own superseded generations are still cleaned up: one generation with our marker is left
    ours = [p for p in store.iterdir() if (p / ".varsitysrch-generation").is_file()]
    assert [p.name for p in ours] == [store_paths(store).generation]
    assert len(FeatureStore.open(store)) == 7


def test_d2_a_parts_folder_of_the_user_keeps_its_files(tmp_path: Path) -> None:
    """``parts/`` was removed with ``rmtree`` after a run, whatever it held (failed on 8b3ab45:
    ``mine.txt`` was deleted)."""
    images = catalogue(tmp_path / "cat")
    store = tmp_path / "store"
    (store / "parts").mkdir(parents=True)
    (store / "parts" / "mine.txt").write_text("keep me")
    res = extract_features(images, store, show_progress=False, checkpoint_every=2, batch_size=2)
    assert res.n_images == 6
    assert (store / "parts" / "mine.txt").read_text() == "keep me"
    assert os.listdir(store / "parts") == ["mine.txt"]  # our checkpoints are gone


# ====================================================================== d3: output paths
def _special_outputs(tmp_path: Path) -> dict[str, Path]:
    d = tmp_path / "special"
    d.mkdir()
    out = {"fifo": fifo(d / "pipe.csv"), "folder": d / "dir.csv"}
    out["folder"].mkdir()
    (d / "to-fifo.csv").symlink_to(out["fifo"])
    out["symlink to a FIFO"] = d / "to-fifo.csv"
    (d / "to-null.csv").symlink_to("/dev/null")  # only the link could be replaced: safe on old code
    out["symlink to /dev/null"] = d / "to-null.csv"
    return out


def _kind(p: Path) -> tuple[bool, int]:
    return p.is_symlink(), stat.S_IFMT(os.lstat(p).st_mode)


@pytest.mark.parametrize("case", ["fifo", "folder", "symlink to a FIFO", "symlink to /dev/null"])
def test_d3_an_output_that_is_not_a_regular_file_is_never_replaced(tmp_path: Path, case: str) -> None:
    """``train --csv /dev/null`` as root turned the device into a regular file: the atomic rename
    only checked ``is_dir`` (failed on 8b3ab45: the FIFO and both symlinks were replaced)."""
    path = _special_outputs(tmp_path)[case]
    before = _kind(path)
    with pytest.raises(InvalidArgumentError, match="not a regular file") as info:
        write_csv(path, ["a"], [["1"]])
    one_line(info.value)
    assert _kind(path) == before
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]


def test_d3_train_refuses_a_fifo_csv_before_any_work(tmp_path: Path) -> None:
    write_store(tmp_path / "f", n=30)
    pipe = fifo(tmp_path / "c.csv")
    with pytest.raises(InvalidArgumentError, match="FIFO"):
        train_clusters(tmp_path / "f", tmp_path / "m.vsm", pipe, 3, show_progress=False)
    assert stat.S_ISFIFO(os.lstat(pipe).st_mode) and not (tmp_path / "m.vsm").exists()


# ====================================================================== d4: no writer follows a symlink
def test_d4_a_lock_symlinked_to_a_file_never_truncates_it(tmp_path: Path) -> None:
    """``.lock`` pointing at a file truncated that file to 0 bytes (failed on 8b3ab45)."""
    store = tmp_path / "store"
    write_store(store)
    precious = tmp_path / "precious.txt"
    precious.write_text("do not truncate")
    (store / ".lock").unlink()
    (store / ".lock").symlink_to(precious)
    with pytest.raises(FeatureStoreError, match="symbolic link") as info:
        write_store(store, seed=1)
    one_line(info.value)
    assert precious.read_text() == "do not truncate"
    assert FeatureStore.open(store).vectors[0].tolist() == unit_rows(12, 0)[0].tolist()


@pytest.mark.parametrize("name", [".lock", STORE_JSON, "skipped.csv"])
def test_d4_d10_a_fifo_in_place_of_a_store_file_is_refused_by_writers(tmp_path: Path, name: str) -> None:
    """A FIFO ``.lock`` hung or was truncated; a FIFO ``store.json`` was replaced (failed on 8b3ab45)."""
    store = tmp_path / "store"
    store.mkdir()
    pipe = fifo(store / name)
    with pytest.raises((FeatureStoreError, InvalidArgumentError), match="FIFO") as info:
        in_thread(lambda: write_store(store), fifos=(pipe,))
    one_line(info.value)
    assert stat.S_ISFIFO(os.lstat(pipe).st_mode)


def test_d4_parts_symlinked_elsewhere_receives_nothing(tmp_path: Path) -> None:
    """``parts/`` pointing elsewhere received the checkpoints (failed on 8b3ab45: the run went ahead
    and wrote part files into the other folder)."""
    images = catalogue(tmp_path / "cat")
    store, elsewhere = tmp_path / "store", tmp_path / "elsewhere"
    store.mkdir()
    elsewhere.mkdir()
    (store / "parts").symlink_to(elsewhere)
    with pytest.raises(FeatureStoreError, match="symbolic link") as info:
        extract_features(images, store, show_progress=False, checkpoint_every=2, batch_size=2)
    one_line(info.value)
    assert os.listdir(elsewhere) == []


def test_d4_colour_symlinked_to_another_store_is_never_overwritten(tmp_path: Path) -> None:
    """``colour/`` pointing at another feature store overwrote it with a colour store (failed on
    8b3ab45: the other store then held colour signatures)."""
    images = catalogue(tmp_path / "cat")
    other = tmp_path / "other"
    ids = write_store(other)
    before = files_of(other)
    store = tmp_path / "store"
    store.mkdir()
    (store / "colour").symlink_to(other)
    with pytest.raises(FeatureStoreError, match="symbolic link"):
        extract_features(images, store, show_progress=False)
    assert files_of(other) == before and FeatureStore.open(other).ids == ids


# ====================================================================== d10: nothing hangs on a FIFO
def _fifo_cases() -> list[str]:
    return [STORE_JSON, "vectors.npy", "ids.csv", "ids.csv -> /dev/zero", "colour/store.json"]


@pytest.mark.parametrize("case", _fifo_cases())
def test_d10_special_files_in_a_store_are_one_line_errors_not_hangs(tmp_path: Path, case: str) -> None:
    """FIFOs in place of store files (or ``ids.csv`` symlinked to /dev/zero) hung train, extract and
    duplicates (failed on 8b3ab45: each read blocked until the test released the FIFO, or read
    /dev/zero until memory ran out)."""
    store = tmp_path / "store"
    write_store(store)
    target = store
    gen = store / store_paths(store).generation  # type: ignore[operator]
    if case == STORE_JSON:
        (store / STORE_JSON).unlink()
        pipes = (fifo(store / STORE_JSON),)
    elif case == "ids.csv -> /dev/zero":
        (gen / "ids.csv").unlink()
        (gen / "ids.csv").symlink_to("/dev/zero")
        pipes = ()
    elif case == "colour/store.json":
        write_store(store / "colour")
        (store / "colour" / STORE_JSON).unlink()
        pipes = (fifo(store / "colour" / STORE_JSON),)
        target = store / "colour"
    else:
        (gen / case).unlink()
        pipes = (fifo(gen / case),)
    with pytest.raises(FeatureStoreError) as info:
        in_thread(lambda: FeatureStore.open(target), timeout=10, fifos=pipes)
    one_line(info.value)
    with pytest.raises(VarsitysrchError):  # train reads the store the same way
        in_thread(
            lambda: train_clusters(target, tmp_path / "m.vsm", tmp_path / "c.csv", 2, show_progress=False),
            timeout=10,
            fifos=pipes,
        )


# ====================================================================== d11: update holds the lock
def test_d11_a_second_update_waits_for_the_first_to_write_its_model(tmp_path: Path, monkeypatch) -> None:
    """Update B completed while A was between its store commit and its model write; both exited 0
    and left a store of 100 images under a model and CSV of 60 (failed on 8b3ab45: B ran through)."""
    import varsitysrch._modelfile as mfmod
    import varsitysrch._update as upmod
    from varsitysrch import update_catalogue

    images = catalogue(tmp_path / "cat", n=6)
    store, model, csv_path = tmp_path / "f", tmp_path / "m.vsm", tmp_path / "c.csv"
    extract_features(images, store, show_progress=False)
    train_clusters(store, model, csv_path, 2, show_progress=False)
    catalogue(tmp_path / "cat" / "new", n=3, seed=50)

    in_model_write, go = threading.Event(), threading.Event()
    real_save = mfmod._save_model

    def slow_save(*a: Any, **k: Any) -> None:
        if threading.current_thread().name == "update-A":
            in_model_write.set()
            go.wait(60)
        real_save(*a, **k)

    monkeypatch.setattr(mfmod, "_save_model", slow_save)
    monkeypatch.setattr(upmod, "_save_model", slow_save, raising=False)  # where 8b3ab45 called it
    errors: list[BaseException] = []

    def update_a() -> None:
        try:
            update_catalogue(images, store, model, csv_path, show_progress=False)
        except BaseException as exc:
            errors.append(exc)

    a = threading.Thread(target=update_a, name="update-A")
    a.start()
    try:
        assert in_model_write.wait(120), errors
        with pytest.raises(FeatureStoreError, match="being written by another process") as info:
            update_catalogue(images, store, model, csv_path, show_progress=False)
        one_line(info.value)
    finally:
        go.set()
        a.join(120)
    assert not errors
    mf = load_model(model)
    assert mf.ids == FeatureStore.open(store).ids and len(mf.ids) == 9
    with open(csv_path) as f:
        assert sum(1 for _ in f) == 10  # header + 9 rows


# ====================================================================== d12: model <-> store
@pytest.fixture(scope="module")
def store_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path, list[str]]:
    """A model whose index lives in its store (``embed_index=False``)."""
    d = tmp_path_factory.mktemp("sm")
    ids = write_store(d / "f", n=40)
    train_clusters(d / "f", d / "m.vsm", d / "c.csv", 3, embed_index=False, show_progress=False)
    return d / "f", d / "m.vsm", d / "c.csv", ids


def test_model_records_the_store_generation_and_checksum(store_model) -> None:
    store, model, _csv, _ids = store_model
    feats = load_model(model).config["features"]
    s = FeatureStore.open(store)
    assert feats["generation"] == s.generation and feats["checksum"] == s.checksum
    assert s.checksum and s.checksum.startswith("sha256:")


def test_d12_another_catalogues_store_with_the_same_ids_is_refused(tmp_path: Path, store_model) -> None:
    """Search accepted another catalogue's store with the same ids (top score 0.39 instead of 1.0):
    only ids were compared (failed on 8b3ab45: no such check exists there)."""
    from varsitysrch._modelfile import check_store_for_model

    store, model, _csv, ids = store_model
    mf = load_model(model)
    check_store_for_model(mf, FeatureStore.open(store), model)  # its own store: fine
    other = tmp_path / "other"
    write_store(other, seed=7, ids=ids)
    with pytest.raises(IncompatibleModelError, match="not the store this model was made from") as info:
        check_store_for_model(mf, FeatureStore.open(other), model)
    one_line(info.value)
    # a model without the recorded checksum (trained before it) falls back to the file stamps
    del mf.config["features"]["checksum"]
    with pytest.raises(IncompatibleModelError, match="other file stamps"):
        check_store_for_model(mf, FeatureStore.open(other), model)
    check_store_for_model(mf, FeatureStore.open(store), model)


def test_d12_searcher_refuses_another_catalogues_store(tmp_path: Path, store_model) -> None:
    from varsitysrch import Searcher

    _store, model, _csv, ids = store_model
    other = tmp_path / "other"
    write_store(other, seed=7, ids=ids)
    with pytest.raises(IncompatibleModelError):
        Searcher(model, features_folder=other)


# ====================================================================== d13: checksums
def _flip(path: Path, offset: int, bit: int = 0) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 1 << bit
    os.unlink(path)  # the generation's files are hard-linked to the top-level copies
    path.write_bytes(bytes(data))


def test_d13_store_records_the_sha256_of_its_files(tmp_path: Path) -> None:
    write_store(tmp_path / "f")
    meta = json.loads((tmp_path / "f" / STORE_JSON).read_text())
    p = store_paths(tmp_path / "f")
    for name, path in (("vectors.npy", p.vectors), ("ids.csv", p.ids)):
        assert meta["files"][name] == {
            "bytes": path.stat().st_size,
            "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
        }


def test_d13_a_flipped_bit_in_an_id_is_refused(tmp_path: Path) -> None:
    """Of 200 one-bit flips, 21 renamed an id silently (failed on 8b3ab45: c0/000.png became c0/001.png)."""
    write_store(tmp_path / "f")
    p = store_paths(tmp_path / "f").ids
    _flip(p, p.read_bytes().index(b"000.png") + 2, 0)  # "000" -> "001"
    for validate in (True, False):  # the ids are always checked
        with pytest.raises(FeatureStoreError, match="sha256") as info:
            FeatureStore.open(tmp_path / "f", validate=validate)
        one_line(info.value)


def test_d13_a_flipped_bit_in_a_vector_is_refused(tmp_path: Path) -> None:
    """7 of 200 flips changed vectors by up to 0.05 (failed on 8b3ab45: accepted)."""
    write_store(tmp_path / "f")
    p = store_paths(tmp_path / "f").vectors
    _flip(p, p.stat().st_size - 4 * DIM - 3, 3)  # a low mantissa bit: still a unit vector
    with pytest.raises(FeatureStoreError, match="sha256"):
        FeatureStore.open(tmp_path / "f")
    # validate=False skips the full hash but never the size: a truncated file is refused
    FeatureStore.open(tmp_path / "f", validate=False)
    data = p.read_bytes()
    os.unlink(p)
    p.write_bytes(data[:-4])
    with pytest.raises(FeatureStoreError, match="bytes"):
        FeatureStore.open(tmp_path / "f", validate=False)


def _strip_checksums(folder: Path) -> None:
    """store.json as a store written before checksums would have it."""
    meta = json.loads((folder / STORE_JSON).read_text())
    meta.pop("files")
    meta.pop("header_sha256")
    (folder / STORE_JSON).write_text(json.dumps(meta))


@pytest.mark.parametrize(
    "edit",
    [b"\na/x.png,1,2,3,4", b"\n,1,2,3,4", b"\nc9/x.png,1,2,3"],
    ids=["appended row", "appended empty id", "appended short row"],
)
def test_d13_an_appended_row_is_refused(tmp_path: Path, edit: bytes) -> None:
    write_store(tmp_path / "f")
    p = store_paths(tmp_path / "f").ids
    data = p.read_bytes().rstrip(b"\r\n") + edit + b"\r\n"
    os.unlink(p)
    p.write_bytes(data)
    with pytest.raises(FeatureStoreError) as info:
        FeatureStore.open(tmp_path / "f")
    one_line(info.value)


@pytest.mark.parametrize("cell", [" 101", "+101", "1_01", "\u0661\u0660\u0661", "101 "])
def test_d13_malformed_stamp_cells_are_refused(tmp_path: Path, cell: str) -> None:
    """``int()`` took " 101", "+101", "1_01" and Arabic-Indic digits as stamps (failed on 8b3ab45:
    the table was accepted).  The checksums are stripped so that the row check alone is tested."""
    write_store(tmp_path / "f")
    _strip_checksums(tmp_path / "f")
    p = store_paths(tmp_path / "f").ids
    text = p.read_text(encoding="utf-8").replace("c0/000.png,100,", f"c0/000.png,{cell},")
    os.unlink(p)
    p.write_text(text, encoding="utf-8", newline="")
    with pytest.raises(FeatureStoreError, match="size must be an integer") as info:
        FeatureStore.open(tmp_path / "f")
    one_line(info.value)


def test_d13_an_edited_header_is_refused(tmp_path: Path) -> None:
    write_store(tmp_path / "f")
    meta = json.loads((tmp_path / "f" / STORE_JSON).read_text())
    meta["extractor"]["name"] = "generatee"
    (tmp_path / "f" / STORE_JSON).write_text(json.dumps(meta))
    with pytest.raises(FeatureStoreError, match="header_sha256"):
        FeatureStore.open(tmp_path / "f")


# ====================================================================== d17: crafted files
def _npy_with_header(text: str, payload: bytes) -> bytes:
    body = text.encode("latin1")
    pad = 64 - (10 + len(body) + 1) % 64
    body += b" " * pad + b"\n"
    return b"\x93NUMPY\x01\x00" + len(body).to_bytes(2, "little") + body + payload


UNTERMINATED = "{'descr': '<f4', 'fortran_order': False, 'shape': (12, 16}"


def test_d17_an_unterminated_tuple_in_the_vectors_header_is_one_line(tmp_path: Path) -> None:
    """numpy's header parser raised tokenize.TokenError through FeatureStore.open (failed on 8b3ab45:
    a traceback)."""
    write_store(tmp_path / "f")
    p = store_paths(tmp_path / "f").vectors
    os.unlink(p)
    p.write_bytes(_npy_with_header(UNTERMINATED, b"\0" * (12 * DIM * 4)))
    with pytest.raises(FeatureStoreError, match="unreadable vectors") as info:
        FeatureStore.open(tmp_path / "f")
    one_line(info.value)


def _deep(n: int) -> bytes:
    return b"[" * n + b"]" * n


def test_d17_store_json_nested_100000_deep_is_one_line(tmp_path: Path) -> None:
    """RecursionError (failed on 8b3ab45)."""
    write_store(tmp_path / "f")
    (tmp_path / "f" / STORE_JSON).write_bytes(b'{"a": ' + _deep(100_000) + b"}")
    with pytest.raises(FeatureStoreError, match="nested too deeply") as info:
        FeatureStore.open(tmp_path / "f")
    one_line(info.value)


def test_d17_image_root_123_is_refused_when_the_store_is_opened(tmp_path: Path) -> None:
    """``"image_root": 123`` was accepted at load and a TypeError in ``report`` (failed on 8b3ab45)."""
    write_store(tmp_path / "f")
    meta = json.loads((tmp_path / "f" / STORE_JSON).read_text())
    meta["image_root"] = 123
    (tmp_path / "f" / STORE_JSON).write_text(json.dumps(meta))
    with pytest.raises(FeatureStoreError, match="'image_root' must be a string") as info:
        FeatureStore.open(tmp_path / "f")
    one_line(info.value)


def _rezip(src: Path, dst: Path, replace: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as zout:
        for name in zin.namelist():
            zout.writestr(name, replace.get(name, zin.read(name)))
    return dst


def test_d17_a_flipped_compression_method_in_the_model_is_one_line(tmp_path: Path, store_model) -> None:
    """NotImplementedError from zipfile (failed on 8b3ab45: a traceback)."""
    _store, model, _csv, _ids = store_model
    data = bytearray(model.read_bytes())
    central = data.index(b"PK\x01\x02")
    data[central + 10] ^= 1  # compression method 0 (stored) -> 1 (shrink)
    bad = tmp_path / "bad.vsm"
    bad.write_bytes(bytes(data))
    with pytest.raises(ModelFileError, match="compression method 1") as info:
        load_model(bad)
    one_line(info.value)


def test_d17_model_json_nested_100000_deep_is_one_line(tmp_path: Path, store_model) -> None:
    _store, model, _csv, _ids = store_model
    bad = _rezip(model, tmp_path / "bad.vsm", {"model.json": b'{"a": ' + _deep(100_000) + b"}"})
    with pytest.raises(ModelFileError, match="nested too deeply") as info:
        load_model(bad)
    one_line(info.value)


def test_d17_an_unterminated_tuple_in_a_model_array_is_one_line(tmp_path: Path, store_model) -> None:
    _store, model, _csv, _ids = store_model
    text = "{'descr': '<i4', 'fortran_order': False, 'shape': (40,}"
    bad = _rezip(model, tmp_path / "bad.vsm", {"labels.npy": _npy_with_header(text, b"\0" * 160)})
    with pytest.raises(ModelFileError, match=r"labels\.npy has no valid \.npy header") as info:
        load_model(bad)
    one_line(info.value)


# ====================================================================== d18: the model and its CSV
def test_d18_the_model_records_the_sha256_of_its_csv(store_model) -> None:
    from varsitysrch._modelfile import csv_matches_model

    _store, model, csv_path, _ids = store_model
    mf = load_model(model)
    assert mf.config["assignments"]["sha256"] == hashlib.sha256(csv_path.read_bytes()).hexdigest()
    assert csv_matches_model(mf, csv_path) is True


def test_d18_a_kill_between_the_model_and_the_csv_is_recognised(tmp_path: Path, monkeypatch) -> None:
    """A kill between the two renames left a pair that search refused with a misleading "use the CSV
    written with this model" (failed on 8b3ab45: the model records nothing of its CSV)."""
    import varsitysrch._io as io_mod
    from varsitysrch._modelfile import csv_matches_model, csv_mismatch_message

    write_store(tmp_path / "f", n=40)
    model, csv_path = tmp_path / "m.vsm", tmp_path / "c.csv"
    train_clusters(tmp_path / "f", model, csv_path, 3, show_progress=False)
    old_csv = csv_path.read_bytes()
    real = io_mod.os.replace

    class Killed(BaseException):
        pass

    def replace(src: Any, dst: Any) -> None:
        if Path(dst) == csv_path:
            raise Killed  # the process dies after the model's rename, before the CSV's
        real(src, dst)

    monkeypatch.setattr(io_mod.os, "replace", replace)
    with pytest.raises(Killed):
        train_clusters(tmp_path / "f", model, csv_path, 4, show_progress=False)
    monkeypatch.undo()
    assert csv_path.read_bytes() == old_csv and load_model(model).k == 4  # the torn pair
    assert csv_matches_model(load_model(model), csv_path) is False
    msg = csv_mismatch_message(model, csv_path)
    assert "interrupted between writing the model and the CSV" in msg and "\n" not in msg


def test_d18_numpys_short_write_is_our_disk_full_error(tmp_path: Path, monkeypatch) -> None:
    """A checkpoint on a full disk said numpy's "10240 requested and 8160 written" (failed on 8b3ab45:
    that was the whole message)."""
    images = catalogue(tmp_path / "cat")

    def save(*a: Any, **k: Any) -> None:
        raise OSError("10240 requested and 8160 written")

    monkeypatch.setattr(np, "save", save)
    with pytest.raises(FeatureStoreError, match="disk full") as info:
        extract_features(images, tmp_path / "f", show_progress=False, checkpoint_every=2, batch_size=2)
    assert "intact" in one_line(info.value)


def test_d18_per_file_skips_go_through_one_logger(tmp_path: Path, caplog) -> None:
    """The per-file warnings came from several loggers, so ``-q`` could not silence them and keep a
    count (failed on 8b3ab45: logged by varsitysrch._extract)."""
    images = catalogue(tmp_path / "cat", n=4)
    (images / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    with caplog.at_level(logging.WARNING, logger="varsitysrch"):
        res = extract_features(images, tmp_path / "f", show_progress=False)
    skips = [r for r in caplog.records if r.name == "varsitysrch.skipped"]
    assert res.n_skipped == 1 and len(skips) == 1 and "broken.png" in skips[0].getMessage()
    # a front end silences exactly that logger and prints the count from the result
    caplog.clear()
    logging.getLogger("varsitysrch.skipped").setLevel(logging.ERROR)
    try:
        with caplog.at_level(logging.WARNING, logger="varsitysrch"):
            shutil.rmtree(tmp_path / "f")
            res = extract_features(images, tmp_path / "f", show_progress=False)
    finally:
        logging.getLogger("varsitysrch.skipped").setLevel(logging.NOTSET)
    assert res.n_skipped == 1 and not [r for r in caplog.records if "broken.png" in r.getMessage()]


# ====================================================================== the lock itself
def test_store_lock_is_reentrant_in_one_thread_only(tmp_path: Path) -> None:
    from varsitysrch._store import store_lock

    store = tmp_path / "s"
    with store_lock(store):
        with store_lock(store):  # the same thread (update -> extract)
            pass
        err: list[BaseException] = []

        def other() -> None:
            try:
                with store_lock(store):
                    pass
            except FeatureStoreError as exc:
                err.append(exc)

        t = threading.Thread(target=other)
        t.start()
        t.join(10)
        assert err and "being written by another process" in str(err[0])
    with store_lock(store):  # released
        pass


def test_disk_full_errnos_still_say_disk_full() -> None:
    from varsitysrch._store import os_error

    for code in (errno.ENOSPC, errno.EDQUOT):
        assert "disk full" in str(os_error(OSError(code, os.strerror(code)), "x"))
    assert "disk full" not in str(os_error(OSError(errno.EACCES, "Permission denied"), "x"))
