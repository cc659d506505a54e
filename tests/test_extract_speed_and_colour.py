"""Extraction decodes each image once for its vector and its colour row, and commits both in one
store generation (issue 18 item 4, issue 20 item 3, extraction half).

Known answers: images painted in one flat colour (a red disc recoloured in place to a blue one),
catalogues extracted twice to give the two reference stores a killed run must land on.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imagegen import make_exif_rotated, make_synthetic_catalogue
from varsitysrch import FeatureStoreError, IncompatibleModelError, extract_features, train_clusters
from varsitysrch._colour import (
    _COLOUR_DECODE_SIZE,
    COLOUR_IDENTITY,
    PLAIN_DECODE_SIZE,
    SIGNATURE_DIM,
    colour_signature,
    load_colour_signatures,
    load_plain_flags,
    model_colour_checksum,
    model_studio_share,
    plain_background,
)
from varsitysrch._extract import _COLOUR_COLS, _decode_for_store, _default_lanes
from varsitysrch._images import _fit, load_image, open_image
from varsitysrch._store import COLOUR_NPY, PLAIN_NPY, STORE_JSON, FeatureStore

REPO = Path(__file__).resolve().parents[1]

RED, BLUE, GREEN = (210, 30, 40), (30, 60, 210), (40, 170, 60)


def disc(
    colour: tuple[int, int, int], size: int = 96, backdrop: tuple[int, int, int] = (255, 255, 255)
) -> Image.Image:
    """A filled disc of ``colour`` on a plain backdrop (a studio shot: plain background)."""
    yy, xx = np.mgrid[0:size, 0:size]
    inside = (yy - size / 2) ** 2 + (xx - size / 2) ** 2 < (size / 3) ** 2
    a = np.empty((size, size, 3), np.uint8)
    a[:] = backdrop
    a[inside] = colour
    return Image.fromarray(a)


def clutter(seed: int, size: int = 96) -> Image.Image:
    """Noise everywhere: no plain background."""
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size, size, 3), np.uint8))


def _by_hand(path: Path) -> tuple[np.ndarray, bool]:
    """The colour row of an image computed the documented way: one decode (as for the model), reduced
    by a whole factor to >= 128 px, the signature of its 64 px letterbox, the plain test of its 64
    px squash."""
    from PIL import ImageOps

    from varsitysrch import get_extractor
    from varsitysrch._images import _draft_box, _to_rgb

    ex = get_extractor()
    im = open_image(path)
    if im.format == "JPEG":
        im.draft(
            "RGB", _draft_box(im.size, ex.input_size) if ex.resize == "letterbox" else (ex.input_size,) * 2
        )
    im.load()
    im = _to_rgb(ImageOps.exif_transpose(im) or im)
    factor = min(im.size) // (2 * max(_COLOUR_DECODE_SIZE, PLAIN_DECODE_SIZE))  # a box reduction first
    base = im.reduce(factor) if factor > 1 else im
    sig = colour_signature(np.asarray(_fit(base, _COLOUR_DECODE_SIZE, "letterbox"), np.uint8))
    return sig, plain_background(np.asarray(_fit(base, PLAIN_DECODE_SIZE, "squash"), np.uint8))


# ------------------------------------------------------------------ one decode, both rows
def test_one_decode_gives_the_model_input_of_load_image_and_the_colour_row(tmp_path: Path) -> None:
    """The vector's pixels are exactly load_image's (a query of the same file embeds the same); the
    colour row is the signature and plain flag of that same decoded photo."""
    from varsitysrch import get_extractor

    ex = get_extractor()
    files = {
        "small.jpg": disc(RED, 400),
        "big.jpg": disc(BLUE, 1600),
        "grey.png": disc(GREEN, 120).convert("L"),
        "rgba.png": disc(RED, 90).convert("RGBA"),
        "noise.jpg": clutter(1, 300),
    }
    for name, im in files.items():
        im.save(tmp_path / name, quality=90) if name.endswith(".jpg") else im.save(tmp_path / name)
    make_exif_rotated(tmp_path / "rot.jpg")
    for name in [*files, "rot.jpg"]:
        px, row = _decode_for_store(tmp_path / name, ex.input_size, ex.resize)
        assert row.shape == (_COLOUR_COLS,)
        np.testing.assert_array_equal(px, load_image(tmp_path / name, ex.input_size, ex.resize))
        sig, plain = _by_hand(tmp_path / name)
        np.testing.assert_array_equal(row[:SIGNATURE_DIM], sig)
        assert row[SIGNATURE_DIM] == float(plain)
    # the known answers: studio discs are plain, noise is not
    assert _decode_for_store(tmp_path / "small.jpg", 256, "center-crop")[1][-1] == 1.0
    assert _decode_for_store(tmp_path / "noise.jpg", 256, "center-crop")[1][-1] == 0.0


def test_default_lanes_follow_num_workers() -> None:
    assert _default_lanes(3) == 3 and _default_lanes(0) == 0
    assert 1 <= _default_lanes(None) <= 8


def _catalogue(root: Path) -> list[str]:
    root.mkdir(parents=True, exist_ok=True)
    disc(RED).save(root / "a.png")
    disc(GREEN, backdrop=(200, 200, 200)).save(root / "b.png")
    clutter(3).save(root / "c.png")
    disc(BLUE).save(root / "d.jpg", quality=92)
    clutter(4).save(root / "e.jpg", quality=92)
    disc(RED, backdrop=(240, 240, 230)).save(root / "f.jpg", quality=92)
    return sorted(p.name for p in root.iterdir())


def test_colour_rows_are_in_the_store_generation_with_their_checksums(tmp_path: Path) -> None:
    ids = _catalogue(tmp_path / "img")
    extract_features(tmp_path / "img", tmp_path / "f", show_progress=False)
    store = FeatureStore.open(tmp_path / "f")
    assert store.ids == ids and store.colour is not None and store.plain is not None
    assert store.colour.shape == (6, SIGNATURE_DIM) and store.plain.shape == (6, 1)
    assert store.files is not None and {COLOUR_NPY, PLAIN_NPY} <= set(store.files)
    assert store.meta["colour"] == COLOUR_IDENTITY
    assert not (tmp_path / "f" / "colour").exists()  # no side folder
    for j, rel in enumerate(ids):
        sig, plain = _by_hand(tmp_path / "img" / rel)
        np.testing.assert_allclose(np.asarray(store.colour[j], np.float32), sig, atol=2e-3)  # float16
        assert bool(store.plain[j, 0]) == plain
    assert load_plain_flags(tmp_path / "f", ids).tolist() == [True, True, False, True, False, True]
    # the store's checksum covers the colour rows: a changed signature is a damaged store
    gen = tmp_path / "f" / store.generation
    data = bytearray((gen / COLOUR_NPY).read_bytes())
    data[-1] ^= 0x01
    os.chmod(gen / COLOUR_NPY, 0o644)
    (gen / COLOUR_NPY).write_bytes(bytes(data))
    with pytest.raises(FeatureStoreError, match=r"colour\.npy.*sha256"):
        FeatureStore.open(tmp_path / "f")


def test_an_image_recoloured_in_place_gets_its_new_signature_after_a_rerun(tmp_path: Path) -> None:
    """A recoloured image kept its old signature (cosine 0.31 to the true one; issue 18)."""
    ids = _catalogue(tmp_path / "img")
    extract_features(tmp_path / "img", tmp_path / "f", show_progress=False)
    before = FeatureStore.open(tmp_path / "f")
    sig0 = np.asarray(before.colour, np.float32).copy()
    vec0 = np.asarray(before.vectors, np.float32).copy()
    disc(BLUE).save(tmp_path / "img" / "a.png")  # red -> blue, same name
    res = extract_features(tmp_path / "img", tmp_path / "f", show_progress=False)
    assert res.n_embedded == 1 and res.embedded_ids == {"a.png"}
    after = FeatureStore.open(tmp_path / "f")
    sig1 = np.asarray(after.colour, np.float32)
    true, _ = _by_hand(tmp_path / "img" / "a.png")
    assert float(sig1[0] @ true) > 0.999 and float(sig0[0] @ true) < 0.5
    np.testing.assert_array_equal(sig1[1:], sig0[1:])  # unchanged images keep their rows
    np.testing.assert_array_equal(np.asarray(after.vectors, np.float32)[1:], vec0[1:])
    assert float(np.asarray(after.vectors[0], np.float32) @ vec0[0]) < 0.999  # re-embedded too
    assert load_colour_signatures(tmp_path / "f", ids) is not None


def test_a_rerun_on_an_unchanged_folder_keeps_the_generation(tmp_path: Path) -> None:
    _catalogue(tmp_path / "img")
    extract_features(tmp_path / "img", tmp_path / "f", show_progress=False)
    gen = FeatureStore.open(tmp_path / "f").generation
    res = extract_features(tmp_path / "img", tmp_path / "f", show_progress=False)
    assert res.n_embedded == 0 and res.n_coloured == 0
    assert FeatureStore.open(tmp_path / "f").generation == gen


def test_lanes_and_one_thread_write_the_same_store(tmp_path: Path) -> None:
    make_synthetic_catalogue(tmp_path / "img", n_classes=3, per_class=5, size=80)
    extract_features(tmp_path / "img", tmp_path / "one", num_workers=0, batch_size=4, show_progress=False)
    extract_features(tmp_path / "img", tmp_path / "two", num_workers=2, batch_size=2, show_progress=False)
    a, b = FeatureStore.open(tmp_path / "one"), FeatureStore.open(tmp_path / "two")
    assert a.ids == b.ids
    np.testing.assert_allclose(np.asarray(a.vectors), np.asarray(b.vectors), atol=1e-5)
    np.testing.assert_array_equal(np.asarray(a.colour), np.asarray(b.colour))
    np.testing.assert_array_equal(np.asarray(a.plain), np.asarray(b.plain))


# ------------------------------------------------------------------ stores without colour rows
def _old_store(tmp_path: Path) -> tuple[Path, Path, list[str]]:
    """A store as an earlier version left it: vectors and ids in the generation, no colour rows,
    a ``colour/`` sidecar folder beside them."""
    root = tmp_path / "img"
    ids = _catalogue(root)
    extract_features(root, tmp_path / "new", show_progress=False)
    new = FeatureStore.open(tmp_path / "new")
    st = new.stamps()
    cols = [[st[i][k] for i in new.ids] for k in range(4)]
    out = tmp_path / "old"
    FeatureStore.write(
        out,
        new.ids,
        np.asarray(new.vectors),
        new.extractor,
        sizes=cols[0],
        mtimes=cols[1],
        inodes=cols[2],
        ctimes=cols[3],
        extra={"image_root": str(root.resolve())},
    )
    sidecar = out / "colour"
    FeatureStore.write(
        sidecar, new.ids, np.asarray(new.colour, np.float16), {"name": "colour-signature", "dim": 112}
    )
    return root, out, ids


def test_a_store_without_colour_rows_is_explicit_and_rebuilt_by_the_next_extraction(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root, out, ids = _old_store(tmp_path)
    old = FeatureStore.open(out)
    assert old.colour is None and old.colour_record() is None
    # the loaders never read the sidecar: no rows, said as None
    assert load_plain_flags(out, ids) is None and load_colour_signatures(out, ids) is None
    # a model trained on it records that it has no colour (and says so)
    with caplog.at_level(logging.WARNING, logger="varsitysrch._modelfile"):
        train_clusters(out, tmp_path / "m.vsm", tmp_path / "m.csv", 2, show_progress=False)
    assert "no colour rows" in caplog.text
    cfg = json.loads(zipfile.ZipFile(tmp_path / "m.vsm").read("model.json"))
    assert cfg["colour"] is None and model_studio_share(cfg) is None and model_colour_checksum(cfg) is None
    # the next extraction computes every image's colour row, keeps every vector, drops the sidecar
    res = extract_features(root, out, show_progress=False)
    assert res.n_embedded == 0 and res.n_coloured == len(ids)
    now = FeatureStore.open(out)
    np.testing.assert_array_equal(np.asarray(now.vectors), np.asarray(old.vectors))
    ref = FeatureStore.open(tmp_path / "new")
    np.testing.assert_array_equal(np.asarray(now.colour), np.asarray(ref.colour))
    np.testing.assert_array_equal(np.asarray(now.plain), np.asarray(ref.plain))
    assert not (out / "colour").exists()


def test_the_model_records_the_studio_share_and_colour_checksum(tmp_path: Path) -> None:
    ids = _catalogue(tmp_path / "img")
    extract_features(tmp_path / "img", tmp_path / "f", show_progress=False)
    train_clusters(tmp_path / "f", tmp_path / "m.vsm", tmp_path / "m.csv", 2, show_progress=False)
    cfg = json.loads(zipfile.ZipFile(tmp_path / "m.vsm").read("model.json"))
    store = FeatureStore.open(tmp_path / "f")
    assert cfg["colour"] == json.loads(json.dumps(store.colour_record()))
    assert model_studio_share(cfg) == pytest.approx(4 / 6, abs=1e-6)
    checksum = model_colour_checksum(cfg)
    assert checksum is not None and cfg["features"]["checksum"] == store.checksum
    # a copy of the store elsewhere carries the same rows: same answer, checked against the model
    shutil.copytree(tmp_path / "f", tmp_path / "copy")
    np.testing.assert_array_equal(
        load_colour_signatures(tmp_path / "copy", ids, checksum=checksum),
        load_colour_signatures(tmp_path / "f", ids),
    )
    # the store's colour rows changed (an image recoloured, re-extracted): refused for this model
    disc(BLUE).save(tmp_path / "img" / "a.png")
    extract_features(tmp_path / "img", tmp_path / "f", show_progress=False)
    with pytest.raises(IncompatibleModelError, match="colour rows"):
        load_plain_flags(tmp_path / "f", ids, checksum=checksum)


# ------------------------------------------------------------------ kill -9 at any point
_DRIVER = textwrap.dedent(
    """
    import os, signal, sys
    from varsitysrch import _extract, _store, extract_features

    where, root, out = sys.argv[1], sys.argv[2], sys.argv[3]

    def die():
        os.kill(os.getpid(), signal.SIGKILL)

    if where == "part":  # after the first checkpoint of the embedding
        real = _extract._Parts.save

        def save(self, ids, X, stats):
            real(self, ids, X, stats)
            die()

        _extract._Parts.save = save
    elif where != "none":
        def hook(step):
            if step == where:
                die()

        _store._commit_hook = hook
    extract_features(root, out, batch_size=2, checkpoint_every=2, show_progress=False)
    """
)


def _run(where: str, root: Path, out: Path) -> int:
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    proc = subprocess.run(
        [sys.executable, "-c", _DRIVER, where, str(root), str(out)], env=env, capture_output=True, timeout=600
    )
    return proc.returncode


def _version_of_each(store: FeatureStore, refs: dict[str, FeatureStore]) -> set[str]:
    """Which reference catalogue each row's vector and colour row come from (both must agree)."""
    out = set()
    for j, rel in enumerate(store.ids):
        vec = np.asarray(store.vectors[j], np.float32)
        col = np.asarray(store.colour[j], np.float32)
        found = []
        for name, ref in refs.items():
            k = ref.ids.index(rel)
            same_vec = float(vec @ np.asarray(ref.vectors[k], np.float32)) > 0.99999
            same_col = np.array_equal(col, np.asarray(ref.colour[k], np.float32))
            assert same_vec == same_col, f"{rel}: vector of one generation, colour of another"
            if same_vec:
                found.append(name)
        assert len(found) == 1, (rel, found)
        out.add(found[0])
    return out


def test_kill_9_at_any_point_never_leaves_vectors_and_colour_of_different_generations(tmp_path: Path) -> None:
    """A real subprocess killed (SIGKILL) mid-embedding and at each step of the commit: the store is
    the old catalogue or the new one, vectors and colour rows of the same one; a rerun finishes it."""
    a, b = tmp_path / "A", tmp_path / "B"
    for root, colour in ((a, RED), (b, BLUE)):
        root.mkdir()
        for i in range(4):
            disc(tuple(int(c * (0.7 + 0.1 * i)) for c in colour)).save(root / f"p{i}.png")  # type: ignore[arg-type]
    extract_features(a, tmp_path / "refA", show_progress=False)
    extract_features(b, tmp_path / "refB", show_progress=False)
    refs = {"A": FeatureStore.open(tmp_path / "refA"), "B": FeatureStore.open(tmp_path / "refB")}
    for where in ("part", "vectors", "ids", COLOUR_NPY, PLAIN_NPY, "header", "cleanup"):
        work = tmp_path / where
        shutil.copytree(tmp_path / "refA", work / "f")  # the A catalogue's store ...
        shutil.copytree(b, work / "img")  # ... and its images, every one recoloured in place: B
        assert _run(where, work / "img", work / "f") == -signal.SIGKILL, where
        got = _version_of_each(FeatureStore.open(work / "f"), refs)
        assert got == ({"B"} if where == "cleanup" else {"A"}), (where, got)
        extract_features(work / "img", work / "f", show_progress=False)  # the rerun finishes it
        store = FeatureStore.open(work / "f")
        assert _version_of_each(store, refs) == {"B"}
        assert not (work / "f" / "parts").exists()
        assert sorted(p.name for p in (work / "f").iterdir() if p.name.startswith("g-")) == [store.generation]


# ------------------------------------------------------------------ the benchmark's own errors
def test_bench_extract_says_which_data_path_is_wrong(tmp_path: Path) -> None:
    script = REPO / "benchmarks" / "bench_extract.py"
    proc = subprocess.run(
        [sys.executable, str(script), "--images", str(tmp_path / "missing")],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(REPO / "src")},
    )
    assert proc.returncode == 2 and "--images" in proc.stderr and "missing" in proc.stderr
    assert proc.stderr.count("\n") == 1
    assert STORE_JSON  # the module's names stay importable for the benchmark


@pytest.mark.parametrize("damage", ["flag", "truncate", "delete", "header", "only-colour"])
def test_damaged_colour_rows_are_refused_in_one_line(tmp_path: Path, damage: str) -> None:
    """The colour rows are checked like the vectors: size, dtype, shape, sha256, 0/1 flags."""
    _catalogue(tmp_path / "img")
    extract_features(tmp_path / "img", tmp_path / "f", show_progress=False)
    store = FeatureStore.open(tmp_path / "f")
    gen = tmp_path / "f" / str(store.generation)
    head = tmp_path / "f" / STORE_JSON
    if damage == "flag":  # a flag of 2, same size
        data = bytearray((gen / PLAIN_NPY).read_bytes())
        data[-1] = 2
        (gen / PLAIN_NPY).write_bytes(bytes(data))
        want = "sha256"
    elif damage == "truncate":
        (gen / COLOUR_NPY).write_bytes((gen / COLOUR_NPY).read_bytes()[:-10])
        want = "bytes"
    elif damage == "delete":
        (gen / PLAIN_NPY).unlink()
        want = "missing"
    else:
        meta = json.loads(head.read_text())
        if damage == "header":
            meta.pop("colour")
            want = "'colour' must describe"
        else:
            meta["files"].pop(PLAIN_NPY)
            want = "optionally colour.npy with plain.npy"
        head.write_text(json.dumps(meta))
    with pytest.raises(FeatureStoreError, match=want) as err:
        FeatureStore.open(tmp_path / "f")
    assert "\n" not in str(err.value)


def test_images_per_second_leaves_out_preparing_the_extractor(tmp_path: Path) -> None:
    """The first extraction in a process (on a fresh machine: the graph is built, seconds) reported
    an images/s that counted that one-off preparation (issue 18: 7.4 img/s against 49 after it)."""
    from varsitysrch._extract import _SESSIONS

    make_synthetic_catalogue(tmp_path / "img", n_classes=2, per_class=4, size=80)
    _SESSIONS.release()  # no session kept from an earlier test: this run prepares one
    res = extract_features(tmp_path / "img", tmp_path / "s", show_progress=False, num_workers=1)
    assert res.n_embedded == 8 and 0 < res.setup_seconds < res.seconds
    assert res.images_per_second == pytest.approx(res.n_embedded / (res.seconds - res.setup_seconds))
    again = extract_features(tmp_path / "img", tmp_path / "t", show_progress=False, num_workers=1)
    assert again.setup_seconds < res.setup_seconds  # the session kept by the first run is reused
    nothing = extract_features(tmp_path / "img", tmp_path / "t", show_progress=False, num_workers=1)
    assert nothing.n_embedded == 0 and nothing.setup_seconds == 0  # nothing to embed: nothing prepared
