"""Data flows one way: no import cycles among varsitysrch's modules (function-level imports included).

The graph is read with ``ast`` from the source: every ``import``/``from ... import`` of a
varsitysrch module, wherever it is in the file, except under ``if TYPE_CHECKING:``.  Run
``python tests/test_import_graph.py`` to print the graph's cycles (none expected).
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "src" / "varsitysrch"


def module_name(path: Path) -> str:
    rel = path.relative_to(PKG.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _type_checking(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or (
        isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST, here: str, is_pkg: bool, modules: set[str]) -> set[str]:
    out: set[str] = set()
    base = here if is_pkg else here.rpartition(".")[0]

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.split(".")[0] == "varsitysrch")
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                pkg = base
                for _ in range(node.level - 1):
                    pkg = pkg.rpartition(".")[0]
                target = f"{pkg}.{node.module}" if node.module else pkg
            else:
                target = node.module or ""
            if target.split(".")[0] == "varsitysrch":
                for a in node.names:  # ``from . import _index`` imports the module _index
                    sub = f"{target}.{a.name}"
                    out.add(sub if sub in modules else target)
        for sub_node in ast.iter_child_nodes(node):
            visit(sub_node)

    visit(tree)
    return {m for m in out if m in modules and m != here}


def import_graph() -> dict[str, set[str]]:
    files = {module_name(p): p for p in PKG.rglob("*.py")}
    modules = set(files)
    return {
        name: _imports(ast.parse(p.read_text(encoding="utf-8")), name, p.name == "__init__.py", modules)
        for name, p in files.items()
    }


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    sys.setrecursionlimit(10_000)

    def strong(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            strong(v)
    return out


def test_the_graph_is_read() -> None:
    g = import_graph()
    # known edges, so that an empty graph cannot pass
    assert "varsitysrch._modelfile" in g["varsitysrch._search"]
    assert "varsitysrch._neighbours" in g["varsitysrch._kmeans"]
    assert "varsitysrch._dask" in g["varsitysrch._extract"]  # a function-level import
    assert "varsitysrch._quantize" in g["varsitysrch._extractors"]  # `from . import _quantize` in a function
    # only under TYPE_CHECKING (not an edge): _quantize's annotations name _extractors.Extractor
    assert "varsitysrch._extractors" not in g["varsitysrch._quantize"]


def test_no_import_cycles() -> None:
    assert cycles(import_graph()) == []


def test_cycle_finder_finds_cycles() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_search_does_not_depend_on_training() -> None:
    g = import_graph()
    seen: set[str] = set()
    todo = ["varsitysrch._search"]
    while todo:
        m = todo.pop()
        if m not in seen:
            seen.add(m)
            todo.extend(g.get(m, ()))
    assert not seen & {
        "varsitysrch._train",
        "varsitysrch._update",
        "varsitysrch._dask",
        "varsitysrch._extract",
    }


if __name__ == "__main__":
    found = cycles(import_graph())
    for c in found:
        print(" <-> ".join(c))
    print(f"{len(found)} import cycles among {len(import_graph())} modules")
    sys.exit(1 if found else 0)
