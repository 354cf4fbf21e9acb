"""No product function is longer than a reader takes in at once: 60 lines, docstring included.

A function's length runs from its ``def`` line to its last line (decorators not counted; a nested function
counts in its parent and on its own). Read from the source with ``ast``: nothing is imported or run.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MAX_LINES = 60
#: The product packages (not tests, benchmarks, experiments or examples).
PACKAGES = ("cache_policies", "longread", "pipeline", "actors", "jobs")


def functions(source: str) -> Iterator[tuple[str, int]]:
    """``(qualified name, lines)`` of every function and method in ``source``, nested ones included."""

    def walk(node: ast.AST, prefix: str) -> Iterator[tuple[str, int]]:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
                name = f"{prefix}{child.name}"
                assert child.end_lineno is not None
                yield name, child.end_lineno - child.lineno + 1
                yield from walk(child, f"{name}.")
            elif isinstance(child, ast.ClassDef):
                yield from walk(child, f"{prefix}{child.name}.")
            else:
                yield from walk(child, prefix)

    yield from walk(ast.parse(source), "")


def long_functions() -> dict[str, int]:
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            for name, lines in functions(path.read_text(encoding="utf-8")):
                if lines > MAX_LINES:
                    found[f"{path.relative_to(ROOT).as_posix()}::{name}"] = lines
    return found


def test_no_function_over_the_limit():
    over = long_functions()
    assert not over, (
        f"functions over {MAX_LINES} lines: {over}; split them into named phases (small functions whose "
        "docstrings say why)"
    )


def test_the_walk_measures_what_it_should():
    source = (
        "class A:\n    @property\n    def f(self):\n        def g():\n            pass\n\n        return 1\n"
    )
    assert dict(functions(source)) == {"A.f": 5, "A.f.g": 2}
