"""A damaged catalogue image is skipped by extract_features with its reason in words (the same
words load_image and a damaged query give), never an exception's repr."""

from __future__ import annotations

from pathlib import Path

from imagegen import make_synthetic_catalogue, make_truncated_jpeg
from varsitysrch import extract_features
from varsitysrch._images import _DAMAGED_IMAGE


def test_a_truncated_catalogue_image_is_skipped_in_words(tmp_path: Path) -> None:
    root = tmp_path / "cat"
    make_synthetic_catalogue(root, n_classes=2, per_class=2)
    make_truncated_jpeg(root / "cut.jpg")
    result = extract_features(root, tmp_path / "f", show_progress=False)
    reasons = dict(result.skipped)
    assert _DAMAGED_IMAGE in reasons["cut.jpg"]
    assert "OSError" not in reasons["cut.jpg"] and "truncated (" not in reasons["cut.jpg"]
