"""The package's shape: dependencies point down (no import cycle, function-level imports included) and every module
is short enough to read in one sitting."""
from __future__ import annotations

import ast
from pathlib import Path

import transferlab

PACKAGE = Path(transferlab.__file__).resolve().parent
# A module a newcomer reads in one sitting: no source module of the package is longer than this.
MAX_LINES = 500


def modules() -> dict[str, Path]:
    """Dotted module name -> file, for every module of the package (a package by its __init__.py)."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def import_graph() -> dict[str, set[str]]:
    """module -> the package's modules it imports anywhere in its file (at the top or inside functions). Importing
    a.b.c also runs the __init__ of the package a.b, so that counts as an import of a.b too (the top package aside,
    whose __init__ imports nothing of its own)."""
    known = modules()
    graph = {}
    for name, path in known.items():
        here = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        targets = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom):
                base = here[:len(here) - node.level + 1] if node.level else []
                module = ".".join(base + ([node.module] if node.module else []))
                for alias in node.names:   # `from . import plots` imports the module a.b.plots
                    targets.add(f"{module}.{alias.name}" if f"{module}.{alias.name}" in known else module)
            elif isinstance(node, ast.Import):
                targets |= {alias.name for alias in node.names}
        for target in [t for t in targets if t in known]:
            parts = target.split(".")
            parents = {".".join(parts[:i]) for i in range(2, len(parts))}
            graph.setdefault(name, set()).update(
                {target, *parents} - {name} - {p for p in parents if name.startswith(p + ".")})
    return {name: graph.get(name, set()) for name in known}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan's algorithm)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in sorted(graph[node]):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_import_cycle():
    graph = import_graph()
    assert "transferlab.config" in graph["transferlab.cli"]   # the graph sees the imports at all
    assert "transferlab.study" in graph["transferlab.demo"]   # ... those inside functions too
    assert cycles(graph) == []


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_the_lower_layers_import_nothing_above_them():
    graph = import_graph()
    bottom = ("transferlab.errors", "transferlab.console", "transferlab.formatting")
    for layer, allowed in (("transferlab.data", ("transferlab.data", *bottom)),
                           ("transferlab.formatting", ()), ("transferlab.errors", ())):
        for name, targets in graph.items():
            if name == layer or name.startswith(layer + "."):
                assert all(t.startswith(allowed) for t in targets), (name, sorted(targets))


def test_no_module_too_long_to_read_in_one_sitting():
    lengths = {name: len(path.read_text().splitlines()) for name, path in modules().items()}
    assert {name: n for name, n in lengths.items() if n > MAX_LINES} == {}
