"""Decoding never crashes: odd images load, broken ones raise ImageError with a reason."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imagegen import make_bad_corpus, make_exif_rotated
from varsitysrch._errors import ImageError
from varsitysrch._images import list_images, load_image


@pytest.fixture(scope="module")
def bad_corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    root = tmp_path_factory.mktemp("bad")
    return root, make_bad_corpus(root)


def test_list_images_walks_recursively_and_keeps_relative_ids(bad_corpus) -> None:
    root, expected = bad_corpus
    ids = list_images(root)
    images = {k for k, v in expected.items() if v in ("ok", "skip")}
    assert set(ids) == images
    assert ids == sorted(ids)
    assert "a/same.jpg" in ids and "b/same.jpg" in ids and "UPPER.JPG" in ids
    assert not any(i.endswith(".txt") for i in ids)


def test_every_file_of_the_bad_corpus_loads_or_raises_image_error(bad_corpus) -> None:
    root, expected = bad_corpus
    for rel, outcome in expected.items():
        if outcome == "ok":
            arr = load_image(root / rel, 64)
            assert arr.shape == (64, 64, 3) and arr.dtype == np.uint8, rel
        elif outcome == "skip":
            with pytest.raises(ImageError) as info:
                load_image(root / rel, 64)
            assert str(info.value), rel


def test_bomb_is_refused_with_a_clear_reason(bad_corpus) -> None:
    root, expected = bad_corpus
    bomb = next(k for k in expected if "bomb" in k)
    with pytest.raises(ImageError, match="decompression bomb"):
        load_image(root / bomb)


def test_sixteen_bit_is_scaled_not_clipped(tmp_path: Path) -> None:
    a = (np.linspace(0, 65535, 64 * 64).reshape(64, 64)).astype(np.uint16)
    Image.fromarray(a).save(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode.startswith("I")
    out = load_image(tmp_path / "g16.png", 64, "squash")
    assert 100 < out.mean() < 155  # a full-range ramp stays mid-grey on average


def test_alpha_is_composited_on_white(tmp_path: Path) -> None:
    Image.new("RGBA", (32, 32), (255, 0, 0, 0)).save(tmp_path / "clear.png")
    assert load_image(tmp_path / "clear.png", 32).min() == 255


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    p = tmp_path / "rot.jpg"
    make_exif_rotated(p)  # stored landscape, orientation 6 -> displayed portrait
    im = Image.open(p)
    assert im.size[0] > im.size[1]
    arr = load_image(p, 64, "squash")
    assert arr.shape == (64, 64, 3)
    # letterbox of the rotated (portrait) image pads left and right, not top and bottom
    lb = load_image(p, 64, "letterbox")
    assert lb[:, 0].min() == 255 and lb[0, :].min() < 255


def test_queries_can_be_bytes_or_pil(tmp_path: Path) -> None:
    Image.new("RGB", (40, 30), (10, 200, 30)).save(tmp_path / "x.png")
    a = load_image(tmp_path / "x.png", 32)
    b = load_image((tmp_path / "x.png").read_bytes(), 32)
    c = load_image(Image.open(tmp_path / "x.png"), 32)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a, c)
    with pytest.raises(ImageError, match="empty"):
        load_image(b"", 32)
    with pytest.raises(ImageError):
        load_image(b"not an image at all", 32)
    with pytest.raises(ImageError, match="no such file"):
        load_image(tmp_path / "missing.jpg", 32)
