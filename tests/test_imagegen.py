"""Sanity checks of the test-data generators in ``tests/imagegen.py``."""

from __future__ import annotations

import hashlib
import itertools
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from imagegen import (
    BOMB_SIZE,
    make_bad_corpus,
    make_synthetic_catalogue,
)


@pytest.fixture(scope="module")
def bad_corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    root = tmp_path_factory.mktemp("bad")
    return root, make_bad_corpus(root)


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    root = tmp_path_factory.mktemp("syn")
    return root, make_synthetic_catalogue(root, n_classes=4, per_class=6, size=96, seed=0)


def _digest(root: Path, rels: list[str]) -> str:
    h = hashlib.sha256()
    for rel in sorted(rels):
        h.update(rel.encode())
        h.update((root / rel).read_bytes())
    return h.hexdigest()


def test_synthetic_layout(synthetic: tuple[Path, dict[str, str]]) -> None:
    root, labels = synthetic
    assert len(labels) == 24
    assert len(set(labels.values())) == 4
    exts = {Path(rel).suffix for rel in labels}
    assert exts == {".png", ".jpg"}
    for rel, cls in labels.items():
        assert rel.split("/")[0] == cls
        with Image.open(root / rel) as im:
            assert im.size == (96, 96)
            assert im.mode == "RGB"
    # nothing else written
    on_disk = {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}
    assert on_disk == set(labels)


def test_synthetic_deterministic(tmp_path: Path, synthetic: tuple[Path, dict[str, str]]) -> None:
    root, labels = synthetic
    again = make_synthetic_catalogue(tmp_path / "a", n_classes=4, per_class=6, size=96, seed=0)
    assert again == labels
    assert _digest(tmp_path / "a", list(again)) == _digest(root, list(labels))
    other = make_synthetic_catalogue(tmp_path / "b", n_classes=4, per_class=6, size=96, seed=1)
    assert _digest(tmp_path / "b", list(other)) != _digest(root, list(labels))


def test_synthetic_within_class_images_differ(synthetic: tuple[Path, dict[str, str]]) -> None:
    root, labels = synthetic
    for cls in set(labels.values()):
        arrays = [np.asarray(Image.open(root / r)) for r, c in sorted(labels.items()) if c == cls]
        for a, b in itertools.pairwise(arrays):
            assert not np.array_equal(a, b)


def test_synthetic_separable_by_mean_colour(tmp_path: Path) -> None:
    labels = make_synthetic_catalogue(tmp_path, n_classes=8, per_class=6, size=64, seed=3)
    rels = sorted(labels)
    feats = np.stack(
        [
            np.concatenate(
                [
                    np.asarray(Image.open(tmp_path / r).convert("RGB"), dtype=np.float64).mean(axis=(0, 1)),
                    np.asarray(Image.open(tmp_path / r).convert("RGB"), dtype=np.float64).std(axis=(0, 1)),
                ]
            )
            for r in rels
        ]
    )
    y = np.array([labels[r] for r in rels])
    classes = sorted(set(y))
    # leave-one-out nearest centroid on (mean, std) colour
    for i in range(len(rels)):
        keep = np.arange(len(rels)) != i
        cents = np.stack([feats[keep & (y == c)].mean(axis=0) for c in classes])
        pred = classes[int(np.argmin(((cents - feats[i]) ** 2).sum(axis=1)))]
        assert pred == y[i], rels[i]


def test_synthetic_rejects_too_many_classes(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        make_synthetic_catalogue(tmp_path, n_classes=99)


def test_bad_corpus_files(bad_corpus: tuple[Path, dict[str, str]]) -> None:
    root, expected = bad_corpus
    assert set(expected.values()) <= {"ok", "skip", "ignored"}
    for rel in expected:
        assert (root / rel).is_file(), rel
    on_disk = {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}
    assert on_disk == set(expected)
    for must in [
        "truncated.jpg",
        "empty.jpg",
        "notes.jpg",
        "bomb.png",
        "cmyk.jpg",
        "gray16.png",
        "palette_transparent.png",
        "rgba.png",
        "la.png",
        "gray.png",
        "animated.gif",
        "exif_rot6.jpg",
        "ünïcødé 商品.png",
        "a/same.jpg",
        "b/same.jpg",
        "UPPER.JPG",
        "image.bmp",
        "image.tiff",
        "tiny_1x1.png",
        "elongated_2000x20.png",
    ]:
        assert must in expected, must
    assert (root / "a/same.jpg").read_bytes() != (root / "b/same.jpg").read_bytes()
    assert (root / "empty.jpg").stat().st_size == 0
    assert (root / "bomb.png").stat().st_size < 100_000


def test_bad_corpus_ok_files_load(bad_corpus: tuple[Path, dict[str, str]]) -> None:
    root, expected = bad_corpus
    assert Image.MAX_IMAGE_PIXELS == 89478485  # the default is what the library sees
    modes = {}
    for rel, exp in expected.items():
        if exp != "ok":
            continue
        with Image.open(root / rel) as im:
            im.load()
            modes[rel] = im.mode
            rgb = ImageOps.exif_transpose(im).convert("RGB")
            assert rgb.width >= 1 and rgb.height >= 1
    assert modes["cmyk.jpg"] == "CMYK"
    assert modes["gray16.png"] == "I;16"
    assert modes["palette_transparent.png"] == "P"
    assert modes["rgba.png"] == "RGBA"
    assert modes["la.png"] == "LA"
    assert modes["gray.png"] == "L"
    with Image.open(root / "palette_transparent.png") as im:
        assert "transparency" in im.info
    with Image.open(root / "animated.gif") as im:
        assert getattr(im, "n_frames", 1) == 3
    with Image.open(root / "elongated_2000x20.png") as im:
        assert im.size == (2000, 20)
    with Image.open(root / "tiny_1x1.png") as im:
        assert im.size == (1, 1)


def test_exif_rotation(bad_corpus: tuple[Path, dict[str, str]]) -> None:
    root, _ = bad_corpus
    with Image.open(root / "exif_rot6.jpg") as im:
        assert im.size == (120, 60)
        assert im.getexif()[0x0112] == 6
        up = np.asarray(ImageOps.exif_transpose(im).convert("RGB"), dtype=np.float64)
    assert up.shape[:2] == (120, 60)
    top, bottom = up[:60].mean(axis=(0, 1)), up[60:].mean(axis=(0, 1))
    assert top[0] > 150 > top[2]  # red on top after rotating 90 degrees clockwise
    assert bottom[2] > 150 > bottom[0]


def test_bad_corpus_skip_files_fail(bad_corpus: tuple[Path, dict[str, str]]) -> None:
    root, expected = bad_corpus
    for rel, exp in expected.items():
        if exp != "skip":
            continue
        with (
            pytest.raises((OSError, Image.DecompressionBombError, SyntaxError, ValueError)),
            Image.open(root / rel) as im,
        ):
            im.load()


def test_bomb_and_truncated_specifics(bad_corpus: tuple[Path, dict[str, str]]) -> None:
    root, _ = bad_corpus
    with pytest.raises(Image.DecompressionBombError):
        Image.open(root / "bomb.png")
    old = Image.MAX_IMAGE_PIXELS
    try:  # a well-formed PNG: only the size check stops it
        Image.MAX_IMAGE_PIXELS = None
        with Image.open(root / "bomb.png") as im:
            assert im.size == BOMB_SIZE
            assert im.mode == "1"
    finally:
        Image.MAX_IMAGE_PIXELS = old
    with Image.open(root / "truncated.jpg") as im:  # header is intact ...
        assert im.format == "JPEG"
        with pytest.raises(OSError, match="truncated"):  # ... the scan is not
            im.load()
    for rel in ("empty.jpg", "notes.jpg"):
        with pytest.raises(Image.UnidentifiedImageError):
            Image.open(root / rel)
