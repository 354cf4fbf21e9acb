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
#: Functions over the limit in packages whose functions are still being shortened, as "path::qualname".
#: The lead empties this list; nothing is added to it. ``cache_policies`` and ``longread`` have no entry.
ALLOWED = {
    "pipeline/inputs/readers.py::iter_raw_lines",
    "pipeline/job/driver.py::run_job",
    "pipeline/job/driver.py::_execute",
    "actors/stream_worker.py::StreamWorker.__init__",
    "actors/tasks/logs/task.py::Logs.program",
    "actors/tasks/summarize.py::Summarize.program",
}


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
    over = {name: lines for name, lines in long_functions().items() if name not in ALLOWED}
    assert not over, (
        f"functions over {MAX_LINES} lines: {over}; split them into named phases (small functions whose "
        "docstrings say why)"
    )


def test_allowed_functions_are_still_long():
    """An entry for a function now short enough (or gone) goes, so the list only shrinks."""
    stale = ALLOWED - set(long_functions())
    assert not stale, f"remove from ALLOWED in {Path(__file__).name}: {sorted(stale)}"


def test_the_walk_measures_what_it_should():
    source = (
        "class A:\n    @property\n    def f(self):\n        def g():\n            pass\n\n        return 1\n"
    )
    assert dict(functions(source)) == {"A.f": 5, "A.f.g": 2}
