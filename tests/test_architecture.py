"""Architecture rules for ``src/biasscope``, read from the source with :mod:`ast` (nothing is imported):

(a) **No import cycles.** The graph has an edge ``A -> B`` for every ``import``/``from ... import`` in
    ``A`` that names module ``B`` (relative imports resolved; ``from P import x`` is an edge to ``P.x``
    when that is a module, else to ``P``; a package ``__init__`` importing its submodules is an ordinary
    edge; parent packages that Python initialises on the way are not edges, or every module would be in
    a cycle with ``biasscope/__init__``). Imports under ``if TYPE_CHECKING:`` never run and are left out.
    Two graphs are checked:

    - *import time*: imports that run when the module is imported (module level, including class bodies
      and ``try``/``if`` blocks). This graph must be acyclic, with no exceptions: a cycle here makes the
      import order matter and breaks with a partially initialised module.
    - *all imports*, also those inside functions (deferred: lazy heavy dependencies, or a dispatch that
      is only needed when called). A cycle through a deferred import is still two modules that need each
      other, the tangle this test exists to prevent, so it fails too unless listed in
      :data:`DEFERRED_CYCLES` with a reason; an entry that no longer matches a cycle fails as stale.

(b) **No private names across top-level packages.** A module of ``biasscope.X`` (or the module
    ``biasscope.X`` itself) must not import a ``_private`` module or a ``_private`` name from another
    ``biasscope.Y``; give it a public home first. Within one package ``_module`` imports are the point.

(c) **No module over** :data:`MAX_LINES` **lines** unless :data:`LONG_MODULES` lists it with a one-line
    reason; a listed module that is no longer long (or gone) fails as stale, so the list stays honest.

Each checker is a plain function of the parsed sources, and the tests at the end feed them small
synthetic module sets that break each rule, so a checker that cannot fail is caught too.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = "biasscope"
MAX_LINES = 400

#: cycles through deferred (function-level) imports that are allowed for now: {modules: reason}
DEFERRED_CYCLES: dict[frozenset[str], str] = {
}

#: modules allowed over MAX_LINES: {module: reason}
LONG_MODULES: dict[str, str] = {
}


# ---------------------------------------------------------------------------------------------- parsing
@dataclass(frozen=True)
class Module:
    """One source file: its dotted name, its text, and whether it is a package's ``__init__``."""

    name: str
    source: str
    is_package: bool = False


@dataclass(frozen=True)
class Import:
    """One imported module (and the names taken from it) at one line of ``importer``."""

    importer: str
    target: str
    names: tuple[str, ...]
    deferred: bool
    line: int


def read_modules(src: Path = SRC, package: str = PACKAGE) -> dict[str, Module]:
    """Every ``.py`` file under ``src/package`` by dotted module name."""
    out = {}
    for path in sorted((src / package).rglob("*.py")):
        parts = list(path.relative_to(src).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        if is_package:
            parts = parts[:-1]
        out[".".join(parts)] = Module(".".join(parts), path.read_text(encoding="utf-8"), is_package)
    return out


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def find_imports(modules: Mapping[str, Module], *, typing_only: bool = False) -> list[Import]:
    """Every import of a module in ``modules`` by a module in ``modules``. Imports under
    ``if TYPE_CHECKING:`` are included only with ``typing_only`` (they never run)."""
    found: list[Import] = []
    for mod in modules.values():
        base = mod.name.split(".") if mod.is_package else mod.name.split(".")[:-1]

        def visit(nodes: Iterable[ast.AST], deferred: bool, _mod: Module = mod, _base: list[str] = base) -> None:
            for node in nodes:
                if isinstance(node, ast.Import):
                    for alias in node.names:
                        if alias.name in modules:
                            found.append(Import(_mod.name, alias.name, (), deferred, node.lineno))
                elif isinstance(node, ast.ImportFrom):
                    if node.level:
                        parent = _base[: len(_base) - (node.level - 1)]
                        target = ".".join(parent + ([node.module] if node.module else []))
                    else:
                        target = node.module or ""
                    for alias in node.names:
                        sub = f"{target}.{alias.name}"
                        if sub in modules:
                            found.append(Import(_mod.name, sub, (), deferred, node.lineno))
                        elif target in modules:
                            found.append(Import(_mod.name, target, (alias.name,), deferred, node.lineno))
                elif isinstance(node, ast.If) and _is_type_checking(node.test):
                    if typing_only:
                        visit(node.body, deferred)
                    visit(node.orelse, deferred)
                elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
                    visit(ast.iter_child_nodes(node), True)
                else:
                    visit(ast.iter_child_nodes(node), deferred)

        visit(ast.parse(mod.source, filename=mod.name).body, False)
    return found


# ---------------------------------------------------------------------------------------------- checkers
def cycles(edges: Iterable[tuple[str, str]]) -> list[frozenset[str]]:
    """The strongly connected components with more than one module (or a module importing itself):
    each is a set of modules that all reach each other through imports (Tarjan's algorithm)."""
    graph: dict[str, set[str]] = {}
    for a, b in edges:
        graph.setdefault(a, set()).add(b)
        graph.setdefault(b, set())
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[frozenset[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]  # iterative DFS: no recursion limit on deep graphs
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            v, it = work[-1]
            w = next(it, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(graph[w]))))
                elif w in on_stack:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = set()
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    comp.add(w)
                    if w == v:
                        break
                if len(comp) > 1 or v in graph[v]:
                    out.append(frozenset(comp))
    return out


def top_package(module: str) -> str:
    """``biasscope.X`` for any module under it (``biasscope`` itself for the root package)."""
    return ".".join(module.split(".")[:2])


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def private_imports(imports: Iterable[Import]) -> list[str]:
    """Each import of a ``_private`` module or name from another top-level package, as a readable line."""
    out = []
    for imp in imports:
        if top_package(imp.importer) == top_package(imp.target):
            continue
        bad = [p for p in imp.target.split(".") if _private(p)] + [n for n in imp.names if _private(n)]
        if bad:
            what = f"{imp.target} import {', '.join(imp.names)}" if imp.names else imp.target
            out.append(f"{imp.importer}:{imp.line} imports {what} (private: {', '.join(bad)})")
    return out


def long_modules(line_counts: Mapping[str, int], allowed: Mapping[str, str], limit: int = MAX_LINES) -> list[str]:
    """Modules over ``limit`` lines that ``allowed`` does not list, and stale entries of ``allowed``."""
    out = [f"{m} has {n} lines (> {limit}): split it by topic, or list it in LONG_MODULES with a reason"
           for m, n in sorted(line_counts.items()) if n > limit and m not in allowed]
    out += [f"{m} is listed in LONG_MODULES but has {line_counts[m]} lines (<= {limit}): remove the entry"
            for m in sorted(allowed) if m in line_counts and line_counts[m] <= limit]
    out += [f"{m} is listed in LONG_MODULES but does not exist: remove the entry"
            for m in sorted(allowed) if m not in line_counts]
    return out


def unlisted_cycles(found: Iterable[frozenset[str]], allowed: Mapping[frozenset[str], str]) -> list[str]:
    """Cycles that ``allowed`` does not list, and stale entries of ``allowed``."""
    found = list(found)
    out = [f"import cycle: {' <-> '.join(sorted(c))}" for c in found if c not in allowed]
    out += [f"DEFERRED_CYCLES lists {' <-> '.join(sorted(c))}, which is no longer a cycle: remove the entry"
            for c in allowed if c not in found]
    return out


# ---------------------------------------------------------------------------------------------- the rules
MODULES = read_modules()
IMPORTS = find_imports(MODULES)


def test_the_graph_is_read() -> None:
    # guard against a parser that silently finds nothing (then every rule passes)
    assert len(MODULES) > 100 and "biasscope.api" in MODULES and MODULES["biasscope.audit"].is_package
    edges = {(i.importer, i.target) for i in IMPORTS}
    assert ("biasscope.api", "biasscope.explainers") in edges  # from .explainers import ...
    assert ("biasscope.explainers.gradcam", "biasscope.explainers._cam") in edges  # from ._cam import ...
    assert ("biasscope.explainers", "biasscope.explainers.base") in edges  # a package importing its module


def test_no_import_cycles_at_import_time() -> None:
    found = cycles((i.importer, i.target) for i in IMPORTS if not i.deferred)
    assert not found, "\n".join(" <-> ".join(sorted(c)) for c in found)


def test_no_import_cycles_through_deferred_imports_beyond_the_listed_ones() -> None:
    problems = unlisted_cycles(cycles((i.importer, i.target) for i in IMPORTS), DEFERRED_CYCLES)
    assert not problems, "\n".join(problems)


def test_no_private_name_is_imported_across_packages() -> None:
    problems = private_imports(find_imports(MODULES, typing_only=True))
    assert not problems, "\n".join(problems)


def test_no_module_is_long_without_a_reason() -> None:
    counts = {name: len(m.source.splitlines()) for name, m in MODULES.items()}
    problems = long_modules(counts, LONG_MODULES)
    assert not problems, "\n".join(problems)
    assert all(reason.strip() for reason in LONG_MODULES.values())


# ---------------------------------------------------------------------------------------------- the checkers can fail
def synthetic(**sources: str) -> dict[str, Module]:
    """Modules from ``name=source`` (``__`` in a name stands for a dot; a trailing ``__init`` marks a package)."""
    out = {}
    for key, text in sources.items():
        name = key.replace("__", ".")
        pkg = name.endswith(".init")
        name = name.removesuffix(".init")
        out[name] = Module(name, text, pkg)
    return out


def test_cycle_checker_finds_cycles_at_import_time_and_through_deferred_imports() -> None:
    mods = synthetic(
        p__init="",
        p__a="from . import b\n",
        p__b="from .c import thing\n",
        p__c="import p.a\nthing = 1\n",
        p__d="def load():\n    from .e import x\n    return x\n",
        p__e="from .d import load\nx = 1\n",
        p__f="from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .g import G\n",
        p__g="from .f import TYPE_CHECKING\n",
    )
    imports = find_imports(mods)
    assert cycles((i.importer, i.target) for i in imports if not i.deferred) == [frozenset({"p.a", "p.b", "p.c"})]
    every = cycles((i.importer, i.target) for i in imports)
    assert sorted(map(sorted, every)) == [["p.a", "p.b", "p.c"], ["p.d", "p.e"]]  # f <-> g only for type checkers
    assert unlisted_cycles(every, {frozenset({"p.d", "p.e"}): "a reason"}) == ["import cycle: p.a <-> p.b <-> p.c"]
    assert unlisted_cycles([], {frozenset({"p.d", "p.e"}): "a reason"}) == [
        "DEFERRED_CYCLES lists p.d <-> p.e, which is no longer a cycle: remove the entry"]
    assert cycles([("p.a", "p.a")]) == [frozenset({"p.a"})]
    assert cycles([("p.a", "p.b"), ("p.b", "p.c")]) == []


def test_private_checker_refuses_private_modules_and_names_of_other_packages_only() -> None:
    mods = synthetic(
        b__init="",
        b__x__init="",
        b__x__m="from ..y._impl import helper\nfrom ..y import _hidden, shown\nfrom ._own import ok\n"
                "def f():\n    import b.y._impl\n",
        b__x___own="ok = 1\n",
        b__y__init="from ._impl import helper\n_hidden = shown = 1\n__version__ = '1'\n",
        b__y___impl="helper = 1\n",
        b__api="from .y import __version__, shown\n",
    )
    found = private_imports(find_imports(mods))
    assert found == [
        "b.x.m:1 imports b.y._impl import helper (private: _impl)",
        "b.x.m:2 imports b.y import _hidden (private: _hidden)",
        "b.x.m:5 imports b.y._impl (private: _impl)",
    ]


def test_length_checker_refuses_unlisted_long_modules_and_stale_entries() -> None:
    counts = {"b.big": MAX_LINES + 1, "b.listed": MAX_LINES + 50, "b.small": MAX_LINES}
    assert long_modules(counts, {"b.listed": "why"}) == [
        f"b.big has {MAX_LINES + 1} lines (> {MAX_LINES}): split it by topic, or list it in LONG_MODULES with a reason"]
    assert long_modules(counts, {"b.big": "why", "b.listed": "why", "b.small": "why", "b.gone": "why"}) == [
        f"b.small is listed in LONG_MODULES but has {MAX_LINES} lines (<= {MAX_LINES}): remove the entry",
        "b.gone is listed in LONG_MODULES but does not exist: remove the entry",
    ]
