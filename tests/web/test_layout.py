"""The web package's shape: no import cycle among its modules, counting imports inside functions (the app
factory registers the route modules; routes reach the app's state through ``web/context.py``)."""

from __future__ import annotations

import ast
from pathlib import Path

import biasscope.web


def _web_imports() -> dict[str, set[str]]:
    """module -> the biasscope.web modules it imports anywhere in its source (``from .x import y``,
    ``from . import x``)."""
    root = Path(biasscope.web.__file__).parent
    names = {p.stem for p in root.glob("*.py")}
    graph: dict[str, set[str]] = {}
    for p in root.glob("*.py"):
        out: set[str] = set()
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                if node.module:
                    out.add(node.module.split(".")[0])
                else:
                    out |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("biasscope.web."):
                out.add(node.module.split(".")[2])
        graph[p.stem] = (out & names) - {p.stem}
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``graph`` (as a path that returns to its start), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        path.append(m)
        for n in sorted(graph.get(m, ())):
            if state.get(n) == 1:
                return [*path[path.index(n):], n]
            if n not in state and (found := visit(n)):
                return found
        path.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state and (found := visit(m)):
            return found
    return None


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_no_import_cycle_among_web_modules() -> None:
    graph = _web_imports()
    assert {"app", "routes", "audits", "openapi", "context"} <= set(graph)
    assert "openapi" in graph["app"] and "routes" in graph["openapi"]  # the graph sees lazy imports too
    assert _cycle(graph) is None, _cycle(graph)
