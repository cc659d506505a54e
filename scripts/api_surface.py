"""The size of varsitysrch's public API: explicit parameters per public function, methods per class.

For every name in ``varsitysrch.__all__`` (exception classes and ``__version__`` left out), read with
``ast`` from the source -- nothing is imported, so any git revision can be measured the same way:

* a function: its explicit parameters (positional and keyword-only; ``*args`` / ``**kwargs`` are
  shown beside the count, not in it);
* a class: its constructor's explicit parameters (``__init__``, or a dataclass's fields) and its
  public methods (``def`` without a leading underscore, properties left out, inherited ones from
  the package's own base classes included); ``--methods`` also lists each public method's
  explicit parameters (``self`` / ``cls`` not counted).

Usage::

    python scripts/api_surface.py                       # the working tree
    python scripts/api_surface.py --before 4a5259d      # that revision and the working tree side by side
    python scripts/api_surface.py --before 4a5259d --after HEAD --methods

A name missing at one side is shown as ``-``.  Prints Markdown tables.
"""

from __future__ import annotations

import argparse
import ast
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PKG = "src/varsitysrch"


class Source:
    """The package's files at a git revision (``rev``) or in the working tree (``rev=None``)."""

    def __init__(self, rev: str | None) -> None:
        self.rev = rev
        self._trees: dict[str, ast.Module | None] = {}

    def text(self, path: str) -> str | None:
        if self.rev is None:
            p = ROOT / path
            return p.read_text(encoding="utf-8") if p.is_file() else None
        r = subprocess.run(
            ["git", "-C", str(ROOT), "show", f"{self.rev}:{path}"], capture_output=True, text=True
        )
        return r.stdout if r.returncode == 0 else None

    def module(self, dotted: str) -> ast.Module | None:
        """``._x`` (relative to the package) -> its parsed source."""
        if dotted not in self._trees:
            rel = dotted.lstrip(".").replace(".", "/")
            text = self.text(f"{PKG}/{rel}.py") or self.text(f"{PKG}/{rel}/__init__.py")
            self._trees[dotted] = ast.parse(text) if text is not None else None
        return self._trees[dotted]


@dataclass
class Entry:
    kind: str  # "function" or "class"
    params: str = "-"  # function: explicit parameters; class: the constructor's
    methods: int | None = None  # classes: public methods
    method_params: dict[str, str] = field(default_factory=dict)


def _count(args: ast.arguments, *, bound: bool) -> str:
    names = [*args.posonlyargs, *args.args, *args.kwonlyargs]
    n = len(names) - (1 if bound and names else 0)
    extra = [f"*{args.vararg.arg}"] if args.vararg else []
    extra += [f"**{args.kwarg.arg}"] if args.kwarg else []
    return f"{n} + {', '.join(extra)}" if extra else str(n)


def _decorators(node: ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef) -> set[str]:
    out = set()
    for d in node.decorator_list:
        d = d.func if isinstance(d, ast.Call) else d
        out.add(d.attr if isinstance(d, ast.Attribute) else d.id if isinstance(d, ast.Name) else "")
    return out


def _find(src: Source, module: str, name: str, depth: int = 0) -> tuple[ast.AST, str] | None:
    """The top-level definition of ``name`` in ``module`` (following ``from .x import name``)."""
    tree = src.module(module)
    if tree is None or depth > 5:
        return None
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef) and node.name == name:
            return node, module
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and node.level == 1 and node.module:
            for a in node.names:
                if (a.asname or a.name) == name:
                    return _find(src, f".{node.module}", a.name, depth + 1)
    return None


def _class_body(src: Source, node: ast.ClassDef, module: str, seen: int = 0) -> list[tuple[ast.AST, str]]:
    """The statements of ``node`` and of its bases defined in the package (nearest first)."""
    out: list[tuple[ast.AST, str]] = [(stmt, module) for stmt in node.body]
    if seen > 5:
        return out
    for base in node.bases:
        if isinstance(base, ast.Name):
            found = _find(src, module, base.id)
            if found and isinstance(found[0], ast.ClassDef):
                out += _class_body(src, found[0], found[1], seen + 1)
    return out


def _is_classvar(ann: ast.expr) -> bool:
    text = ast.unparse(ann)
    return text.startswith(("ClassVar", "typing.ClassVar"))


def describe(src: Source, node: ast.AST, module: str) -> Entry:
    if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
        return Entry("function", _count(node.args, bound=False))
    assert isinstance(node, ast.ClassDef)
    body = _class_body(src, node, module)
    entry = Entry("class", methods=0)
    init = next((s for s, _ in body if isinstance(s, ast.FunctionDef) and s.name == "__init__"), None)
    init = init or next((s for s, _ in body if isinstance(s, ast.FunctionDef) and s.name == "__new__"), None)
    if init is not None:
        entry.params = _count(init.args, bound=True)
    elif "dataclass" in _decorators(node):
        fields = {
            s.target.id
            for s, _ in body
            if isinstance(s, ast.AnnAssign)
            and isinstance(s.target, ast.Name)
            and not _is_classvar(s.annotation)
        }
        entry.params = str(len(fields))
    seen: set[str] = set()
    for s, _ in body:
        if (
            not isinstance(s, ast.FunctionDef | ast.AsyncFunctionDef)
            or s.name.startswith("_")
            or s.name in seen
        ):
            continue
        seen.add(s.name)  # the nearest definition wins (a subclass's override)
        if _decorators(s) & {"property", "cached_property"} or any(
            d.endswith(("setter", "deleter")) for d in _decorators(s)
        ):
            continue
        entry.methods = (entry.methods or 0) + 1
        entry.method_params[s.name] = _count(s.args, bound="staticmethod" not in _decorators(s))
    return entry


def surface(src: Source) -> dict[str, Entry]:
    init = src.module(".__init__") or src.module("")
    if init is None:
        raise SystemExit(f"no {PKG}/__init__.py at {src.rev or 'the working tree'}")
    public: list[str] = []
    where: dict[str, str] = {}
    for node in init.body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets
        ):
            public = list(ast.literal_eval(node.value))
        elif isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "_LAZY" for t in node.targets
        ):
            where.update(ast.literal_eval(node.value))
        elif isinstance(node, ast.ImportFrom) and node.level == 1 and node.module:
            for a in node.names:
                where.setdefault(a.asname or a.name, f".{node.module}")
    out: dict[str, Entry] = {}
    for name in public:
        if name.startswith("__") or name.endswith("Error"):
            continue
        found = _find(src, where.get(name, ".__init__"), name)
        if found is not None:
            out[name] = describe(src, *found)
    return out


def _code(cell: str) -> str:
    """A count with ``*args`` / ``**kwargs`` as code (Markdown would read ``**`` as bold)."""
    return f"`{cell}`" if "*" in cell and not cell.startswith("`") else cell


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(_code(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def report(sides: list[tuple[str, dict[str, Entry]]], methods: bool) -> str:
    labels = [label for label, _ in sides]
    names = sorted({n for _, s in sides for n in s}, key=str.lower)

    def cell(s: dict[str, Entry], n: str, what: str) -> str:
        e = s.get(n)
        if e is None:
            return "-"
        return e.params if what == "params" else "-" if e.methods is None else str(e.methods)

    funcs = [n for n in names if any(s.get(n) and s[n].kind == "function" for _, s in sides)]
    classes = [n for n in names if n not in funcs]
    parts = [
        "Public functions: explicit parameters",
        "",
        _table(["function", *labels], [[f"`{n}`", *(cell(s, n, "params") for _, s in sides)] for n in funcs]),
        "",
        "Public classes: constructor parameters / public methods",
        "",
        _table(
            ["class", *labels],
            [
                [f"`{n}`", *(f"{cell(s, n, 'params')} / {cell(s, n, 'methods')}" for _, s in sides)]
                for n in classes
            ],
        ),
    ]
    if methods:
        rows = []
        for n in classes:
            for m in sorted({m for _, s in sides if n in s for m in s[n].method_params}):
                rows.append(
                    [f"`{n}.{m}`", *(s[n].method_params.get(m, "-") if n in s else "-" for _, s in sides)]
                )
        parts += ["", "Public methods: explicit parameters", "", _table(["method", *labels], rows)]
    return "\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--before", metavar="REV", help="also measure this git revision (shown first)")
    ap.add_argument("--after", metavar="REV", help="measure this revision instead of the working tree")
    ap.add_argument("--methods", action="store_true", help="also list each public method's parameters")
    args = ap.parse_args(argv)
    sides = []
    if args.before:
        sides.append((f"before ({args.before})", surface(Source(args.before))))
    after_label = f"after ({args.after})" if args.after else "after (working tree)" if args.before else "now"
    sides.append((after_label, surface(Source(args.after))))
    print(report(sides, args.methods))
    return 0


if __name__ == "__main__":
    sys.exit(main())
