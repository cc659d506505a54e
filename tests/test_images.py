"""Decoding never crashes: odd images load, broken ones raise ImageError with a reason."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imagegen import make_bad_corpus, make_exif_rotated
from varsitysrch._errors import ImageError
from varsitysrch._images import (
    _DAMAGED_IMAGE,
    _NOT_AN_IMAGE,
    _MissingImageFile,
    decode_failure,
    list_images,
    load_image,
)


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


# ---------------------------------------------------------------- messages in the user's words (issue 22.4)
_REPR = re.compile(r"object at 0x|<[\w.]+ object|\b[A-Z]\w*(?:Error|Exception)\b")


def _said(source: object) -> str:
    with pytest.raises(ImageError) as err:
        load_image(source, 32)  # type: ignore[arg-type]
    text = str(err.value)
    assert not _REPR.search(text), text
    return text


def test_a_text_file_named_jpg_is_not_an_image_file_in_words(tmp_path: Path) -> None:
    """It said "not a readable image (UnidentifiedImageError: cannot identify image file
    <_io.BytesIO object at 0x7fb9310f58f0>)"."""
    (tmp_path / "notes.jpg").write_text("hello, this is text\n")
    for source in (tmp_path / "notes.jpg", b"hello, this is text\n"):
        text = _said(source)
        assert text == _NOT_AN_IMAGE and "JPEG, PNG" in text


def test_a_missing_path_is_no_such_file_not_vanished(tmp_path: Path) -> None:
    """A typo in a query path said "no such file (vanished?)"."""
    missing = tmp_path / "typo" / "shirt.jpg"
    text = _said(missing)
    assert text == f"no such file: {str(missing)!r}" and "vanished" not in text
    with pytest.raises(_MissingImageFile) as err:
        load_image(str(tmp_path / "shrit.jpg"), 32)
    assert err.value.path == str(tmp_path / "shrit.jpg")


def test_decoder_failures_are_said_in_words(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Pillow's own exceptions (their text can hold reprs) never reach the message; they stay chained."""
    import varsitysrch._images as im_mod
    from imagegen import make_truncated_jpeg

    trunc = make_truncated_jpeg(tmp_path / "cut.jpg", keep=0.3)
    assert _said(trunc) == _DAMAGED_IMAGE

    def garbage(*a: object, **k: object) -> None:
        raise SyntaxError("broken PNG file <PIL.PngImagePlugin.ChunkStream object at 0x7f00deadbeef>")

    monkeypatch.setattr(im_mod, "open_allowed", garbage)
    Image.new("RGB", (8, 8)).save(tmp_path / "x.png")
    with pytest.raises(ImageError) as err:
        load_image(tmp_path / "x.png", 32)
    assert str(err.value) == _NOT_AN_IMAGE and isinstance(err.value.__cause__, SyntaxError)
    assert isinstance(decode_failure(OSError("image file is truncated")), ImageError)
    assert str(decode_failure(ValueError("<x object at 0x1>"))) == _DAMAGED_IMAGE
