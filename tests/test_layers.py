"""Layers import only downward, and no module imports itself back through others (no import circle).

cache_policies < longread < pipeline < actors < jobs < experiments < benchmarks (examples on top). Every
import counts, at module level or inside a function: a function-level import that climbs a layer is the
same dependency, only later. Read from the source with ``ast``: nothing is imported or run.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ("cache_policies", "longread", "pipeline", "actors", "jobs", "experiments", "benchmarks", "examples")
RANK = {name: rank for rank, name in enumerate(LAYERS)}
#: Inside ``pipeline`` the sub-packages are layers too, by reason to change (see pipeline/__init__.py).
PIPELINE = (
    "pipeline.storage",
    "pipeline.inputs",
    "pipeline.output",
    "pipeline.config",
    "pipeline.cluster",
    "pipeline.job",
)


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def project_modules() -> dict[str, Path]:
    return {module_name(p): p for layer in LAYERS for p in sorted((ROOT / layer).rglob("*.py"))}


def imports_of(path: Path, modules: dict[str, Path]) -> set[str]:
    """Project modules that ``path`` imports (``from a.b import c`` is ``a.b.c`` when that is a module)."""
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against this module's package
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            names = [
                f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names
            ]
        else:
            continue
        for name in names:
            # the longest project module that the name is, or lies inside
            while name and name not in modules:
                name = name.rpartition(".")[0]
            if name:
                found.add(name)
    return found


def graph() -> dict[str, set[str]]:
    modules = project_modules()
    return {name: imports_of(path, modules) - {name} for name, path in modules.items()}


def layer(module: str) -> str:
    return module.split(".", 1)[0]


def pipeline_layer(module: str) -> str | None:
    """The ``PIPELINE`` sub-layer of a ``pipeline`` module (None for the package itself)."""
    return next((p for p in PIPELINE if module == p or module.startswith(p + ".")), None)


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in edges.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def test_the_reader_sees_the_imports():
    """The graph is read right: known edges are there (else the checks below would pass vacuously)."""
    edges = graph()
    assert "actors.tasks" in edges["actors.stream_worker"]
    assert "pipeline.inputs.readers" in edges["actors.tasks.base"]
    assert "pipeline.storage" in edges["pipeline.output.writer"]
    assert "cache_policies" in edges["pipeline.config"]
    assert "actors.stream_worker" in edges["jobs.run"]
    assert len(edges) > 40


def test_layers_import_only_downward():
    upward = [
        f"{module} -> {target}"
        for module, targets in sorted(graph().items())
        for target in sorted(targets)
        if RANK[layer(target)] > RANK[layer(module)]
    ]
    assert not upward, "imports that climb a layer (" + " < ".join(LAYERS) + "):\n" + "\n".join(upward)


def test_every_pipeline_module_has_a_sub_layer():
    """A module directly in ``pipeline/`` or in a new sub-package must be placed in ``PIPELINE`` first."""
    loose = [m for m in graph() if layer(m) == "pipeline" and m != "pipeline" and pipeline_layer(m) is None]
    assert not loose, f"pipeline modules outside the sub-layers {PIPELINE}: {loose}"


def test_pipeline_sub_packages_import_only_downward():
    rank = {name: i for i, name in enumerate(PIPELINE)}
    upward = [
        f"{module} -> {target}"
        for module, targets in sorted(graph().items())
        for target in sorted(targets)
        if layer(module) == layer(target) == "pipeline"
        and pipeline_layer(module) is not None
        and pipeline_layer(target) is not None
        and rank[pipeline_layer(target)] > rank[pipeline_layer(module)]  # type: ignore[index]
    ]
    assert not upward, (
        "pipeline imports that climb a sub-layer (" + " < ".join(PIPELINE) + "):\n" + "\n".join(upward)
    )


def test_no_import_circle():
    found = cycles(graph())
    assert not found, "import circles:\n" + "\n".join(" <-> ".join(c) for c in found)


@pytest.mark.parametrize(
    ("edges", "expected"),
    [
        ({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}, [["a", "b", "c"]]),
        ({"a": {"b"}, "b": set(), "c": {"b"}}, []),
        ({"a": {"b"}, "b": {"a"}, "c": {"d"}, "d": {"c"}}, [["a", "b"], ["c", "d"]]),
    ],
)
def test_the_circle_finder(edges, expected):
    assert sorted(cycles(edges)) == expected
