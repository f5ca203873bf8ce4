"""Module-level imports inside ``fploopd`` form no cycle (the layers: daemon -> pipelines -> engine
-> core, media beside). Imports inside functions and under ``if TYPE_CHECKING:`` do not count here:
they run later or never, and are how a heavy optional package is deferred; inside ``engine/`` no
engine module is deferred. (``test_pipeline_layers`` checks every import around the pipelines.)"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from test_pipeline_layers import PACKAGE, module_name


def _modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _top_level_imports(body: list[ast.stmt]) -> list[ast.Import | ast.ImportFrom]:
    """Import statements that run when the module is imported (not in functions or classes' methods,
    not under ``if TYPE_CHECKING``)."""
    found: list[ast.Import | ast.ImportFrom] = []
    for node in body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.append(node)
        elif isinstance(node, ast.If):
            if not _is_type_checking(node.test):
                found += _top_level_imports(node.body)
            found += _top_level_imports(node.orelse)
        elif isinstance(node, ast.Try):
            for part in (node.body, node.orelse, node.finalbody, *(h.body for h in node.handlers)):
                found += _top_level_imports(part)
        elif isinstance(node, (ast.With, ast.ClassDef)):
            found += _top_level_imports(node.body)
    return found


def _targets(node: ast.Import | ast.ImportFrom, module: str, is_package: bool, known: set[str]) -> set[str]:
    """The fploopd modules an import statement loads (the named module, or the module a
    ``from X import name`` name is, when it is one)."""
    if isinstance(node, ast.Import):
        return {a.name for a in node.names if a.name in known}
    base = node.module or ""
    if node.level:
        package = module if is_package else module.rpartition(".")[0]
        for _ in range(node.level - 1):
            package = package.rpartition(".")[0]
        base = f"{package}.{base}" if base else package
    out = set()
    for alias in node.names:
        sub = f"{base}.{alias.name}"
        if sub in known:
            out.add(sub)
        elif base in known:
            out.add(base)
    return out


def import_graph() -> dict[str, set[str]]:
    modules = _modules()
    known = set(modules)
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        edges: set[str] = set()
        for node in _top_level_imports(tree.body):
            edges |= _targets(node, name, path.name == "__init__.py", known)
        graph[name] = edges - {name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected groups of more than one module (Tarjan), each as a readable cycle."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(_one_cycle(graph, sorted(group)))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return groups


def _one_cycle(graph: dict[str, set[str]], group: list[str]) -> list[str]:
    """A shortest path from the group's first module back to itself, inside the group."""
    members, start = set(group), group[0]
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(graph[v] & members):
                if w == start:
                    return [*paths[v], start]
                if w not in paths:
                    paths[w] = [*paths[v], w]
                    nxt.append(w)
        frontier = nxt
    return group


def _describe(found: list[list[str]]) -> str:
    return "; ".join(" -> ".join(c) for c in found)


def _deferred_imports(module: str, path: Path, known: set[str]) -> set[tuple[str, str]]:
    """(module, target) for fploopd imports inside the functions of ``module``."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    out = set()
    for fn in ast.walk(tree):
        if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for node in ast.walk(fn):
                if isinstance(node, (ast.Import, ast.ImportFrom)):
                    out |= {(module, t) for t in _targets(node, module, path.name == "__init__.py", known)}
    return out


def test_the_cycle_finder_finds_a_cycle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c", "a"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle_in_engine() -> None:
    graph = import_graph()
    engine = {m: {t for t in ts if t.startswith("fploopd.engine")} for m, ts in graph.items() if m.startswith("fploopd.engine")}
    assert "fploopd.engine.forward" in engine
    found = cycles(engine)
    assert not found, f"import cycles in fploopd/engine: {_describe(found)}"


def test_engine_modules_import_each_other_at_module_level() -> None:
    """Deferring an engine module's import hides a cycle; only heavy optional packages wait."""
    modules = _modules()
    deferred = set()
    for name, path in modules.items():
        if name.startswith("fploopd.engine"):
            deferred |= {(m, t) for m, t in _deferred_imports(name, path, set(modules)) if t.startswith("fploopd.engine")}
    assert not deferred, f"engine modules imported inside functions: {sorted(deferred)}"


def test_no_import_cycle_in_fploopd() -> None:
    found = cycles(import_graph())
    assert not found, f"import cycles in fploopd: {_describe(found)}"


def test_the_weight_lookup_loads_no_torch() -> None:
    """The supervisor looks up the weights (``sources.resolve``) without loading torch, which only its
    workers need; ``sources`` imports the tiny family's builder, so that stays light too."""
    code = "import sys, fploopd.engine.sources; print(sorted(m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
