"""The README and its docs pages say what the code does: layout, error tree and file formats."""

from __future__ import annotations

import re
from pathlib import Path

import varsitysrch
from varsitysrch import _errors
from varsitysrch._modelfile import _CSV_COLUMNS

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")
DOCS = {p.name: p.read_text(encoding="utf-8") for p in (ROOT / "docs").glob("*.md")}
PACKAGE = Path(varsitysrch.__file__).parent


def _section(page: str) -> str:
    """A docs page the README links to (the README's first screen stays short)."""
    assert f"docs/{page}" in README, f"README does not link docs/{page}"
    return DOCS[page]


def test_the_layout_names_every_module() -> None:
    layout = _section("layout.md")
    names = [p.name for p in PACKAGE.glob("*.py")]
    names += [p.name + "/" for p in PACKAGE.iterdir() if p.is_dir() and not p.name.startswith("__")]
    missing = [n for n in sorted(names) if f"`{n}" not in layout]
    assert not missing, f"README Layout does not list {missing}"
    # one line each: no module named twice
    for n in names:
        assert len(re.findall(rf"^\* `{re.escape(n)}", layout, re.M)) <= 1, n


def test_the_error_tree_is_the_one_in_errors_py() -> None:
    doc = _errors.__doc__ or ""
    tree = [
        line.strip()
        for line in doc.splitlines()
        if line.strip().startswith(("VarsitysrchError", "├", "│", "└"))
    ]
    assert len(tree) >= 9
    api = _section("python-api.md")
    block = api[api.index("VarsitysrchError ") :].split("```")[0]
    assert [line.strip() for line in block.splitlines() if line.strip()] == tree
    for name in re.findall(r"^[^A-Za-z]*(\w+Error)\b", "\n".join(tree), re.M):
        assert issubclass(getattr(_errors, name), _errors.VarsitysrchError), name


def test_what_is_on_disk_names_the_clusters_csv_columns() -> None:
    assert f"`{','.join(_CSV_COLUMNS)}`" in _section("on-disk.md")
    for stale in ("`_cluster.py`", "`_service.py`", "n_images * k"):
        assert stale not in README and not any(stale in text for text in DOCS.values())
