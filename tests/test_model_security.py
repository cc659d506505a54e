"""Nothing from a model file reaches files outside the operator's image folder."""

from __future__ import annotations

import os
from pathlib import Path

from varsitysrch._paths import resolve_image


def test_resolve_image_stays_inside_the_root(tmp_path: Path) -> None:
    root = tmp_path / "catalogue"
    (root / "shoes").mkdir(parents=True)
    (root / "shoes" / "a.jpg").write_bytes(b"x")
    outside = tmp_path / "secret.txt"
    outside.write_text("secret")
    os.symlink(outside, root / "link.jpg")
    os.symlink(tmp_path, root / "up")
    assert resolve_image(root, "shoes/a.jpg") == (root / "shoes" / "a.jpg").resolve()
    assert resolve_image(root, "shoes/missing.jpg") == (root / "shoes" / "missing.jpg").resolve()
    for bad in (
        "../secret.txt",
        "shoes/../../secret.txt",
        str(outside),
        "/etc/passwd",
        "link.jpg",  # symlink escape
        "up/secret.txt",  # symlinked folder escape
        "",
        ".",
        "a\x00b.jpg",
        "..\\secret.txt",
    ):
        assert resolve_image(root, bad) is None, bad
    assert resolve_image(None, "shoes/a.jpg") is None
    assert resolve_image(root, 5) is None


def test_resolve_image_keeps_odd_but_safe_names(tmp_path: Path) -> None:
    root = tmp_path / "c"
    root.mkdir()
    for name in ("new\nline.jpg", "=HYPERLINK(x).jpg", "caf\udce9.jpg", "..hidden.jpg"):
        got = resolve_image(root, name)
        assert got is not None and got.parent == root.resolve() and got.name == name
