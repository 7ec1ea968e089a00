"""The package's import structure: no import cycle among napari_cuts modules (imports
inside functions counted), and every public name importable.

The graph is read from the source with :mod:`ast` (nothing is imported): an edge
``a -> b`` for every ``import`` / ``from ... import`` in ``a`` that names the
napari_cuts module ``b`` (a ``from pkg import name`` where ``pkg.name`` is a module
names that module, else ``pkg`` itself). A package ``__init__`` that imports its own
submodules lazily, inside ``__getattr__``, does not count: nothing is imported until
a name is asked for.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = "napari_cuts"


def _modules() -> dict[str, Path]:
    """Module name -> file, for every ``.py`` file of the package."""
    out = {}
    for f in sorted((SRC / PACKAGE).rglob("*.py")):
        parts = list(f.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = f
    return out


def _lazy_getattr_nodes(tree: ast.Module) -> set[int]:
    """ids of the import nodes inside a module-level ``__getattr__``."""
    skip = set()
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name == "__getattr__":
            skip |= {id(n) for n in ast.walk(node) if isinstance(n, (ast.Import, ast.ImportFrom))}
    return skip


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The napari_cuts modules that module ``name`` (at ``path``) imports, anywhere in it."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    is_package = path.name == "__init__.py"
    skip = _lazy_getattr_nodes(tree) if is_package else set()
    # the package a relative import starts from
    here = name.split(".") if is_package else name.split(".")[:-1]
    out = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                # ``import a.b.c`` imports a, a.b and a.b.c; the deepest one is the edge
                while parts and ".".join(parts) not in modules:
                    parts.pop()
                if parts:
                    out.add(".".join(parts))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here[: len(here) - (node.level - 1)]
                target = ".".join(base + (node.module.split(".") if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != PACKAGE:
                continue
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                if sub in modules:
                    out.add(sub)
                elif target in modules:
                    out.add(target)
    out.discard(name)
    return out


def import_graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out = []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
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

    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, 10 * len(graph) + 100))
    try:
        for v in sorted(graph):
            if v not in index:
                visit(v)
    finally:
        sys.setrecursionlimit(limit)
    return sorted(out)


def test_the_graph_sees_relative_and_function_level_imports():
    g = import_graph()
    assert "napari_cuts.io.readers" in g["napari_cuts.io"]           # from .readers import ...
    assert "napari_cuts.io.dicom_seg" in g["napari_cuts.io.writers"]  # inside a function
    # the package's lazy public API (``__getattr__``) is not an import
    assert g["napari_cuts"] == set()


def test_cycle_finder_on_a_known_graph():
    g = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert cycles(g) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle_among_napari_cuts_modules():
    found = cycles(import_graph())
    assert not found, "import cycles (imports inside functions count): " + "; ".join(
        " <-> ".join(c) for c in found)


def test_every_public_name_imports():
    code = "import napari_cuts as n; [getattr(n, k) for k in n.__all__]"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
