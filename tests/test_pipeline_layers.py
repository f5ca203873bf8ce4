"""The layers of docs/design.md §1: daemon -> pipelines -> engine -> core, media beside; no module
imports one that imports it back. Read from the source (every import, in functions too)."""

from __future__ import annotations

import ast
from pathlib import Path

import fploopd

PACKAGE = Path(fploopd.__file__).parent


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, known: set[str]) -> set[str]:
    """The fploopd modules ``path`` imports anywhere in it (``from a.b import c`` counts ``a.b.c``
    when that is a module, else ``a.b``)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                found.add(sub if sub in known else node.module)
    return {m for m in found if m in known}


def import_graph() -> dict[str, set[str]]:
    files = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    known = set(files)
    return {name: imports_of(path, known) - {name} for name, path in files.items()}


def cycles_through(graph: dict[str, set[str]], prefixes: tuple[str, ...]) -> list[list[str]]:
    """Import cycles that pass through a module whose name starts with one of ``prefixes``."""
    found = []
    for start in sorted(m for m in graph if m.startswith(prefixes)):
        stack = [(start, [start])]
        seen: set[str] = set()
        while stack:
            node, path = stack.pop()
            for nxt in sorted(graph[node]):
                if nxt == start:
                    found.append(path)
                elif nxt not in seen:
                    seen.add(nxt)
                    stack.append((nxt, [*path, nxt]))
    return found


OURS = ("fploopd.pipelines", "fploopd.core", "fploopd.media", "fploopd.spec", "fploopd.commands.oneshot")


def test_no_import_cycle_through_pipelines_core_media_or_the_spec():
    assert cycles_through(import_graph(), OURS) == []


def test_imports_point_down_the_layers():
    graph = import_graph()
    below = {
        "fploopd.pipelines": ("fploopd.daemon", "fploopd.commands", "fploopd.bench"),
        "fploopd.engine": ("fploopd.pipelines", "fploopd.daemon", "fploopd.commands"),
        "fploopd.core": ("fploopd.engine", "fploopd.pipelines", "fploopd.daemon", "fploopd.media"),
        "fploopd.media": ("fploopd.engine", "fploopd.pipelines", "fploopd.daemon"),
        "fploopd.spec": ("fploopd.engine", "fploopd.pipelines", "fploopd.daemon", "fploopd.media", "fploopd.core"),
    }
    wrong = [
        f"{m} imports {i}"
        for m, imported in graph.items()
        for layer, forbidden in below.items()
        if m == layer or m.startswith(layer + ".")
        for i in imported
        if i.startswith(forbidden)
    ]
    assert wrong == []


def test_the_seed_policy_and_the_package_load_no_model_code():
    """The daemon's supervisor imports fploopd.pipelines for pick_seeds and progress_text."""
    import subprocess
    import sys

    code = "import sys, fploopd.pipelines, fploopd.pipelines.seeds; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
