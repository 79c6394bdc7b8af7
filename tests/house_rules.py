"""Checks of the house rules that several test modules apply to their package."""

from __future__ import annotations

import ast
from collections.abc import Iterable
from pathlib import Path


def function_lengths(paths: Iterable[Path]) -> dict[str, int]:
    """``"file.py:name" -> lines`` of every function, from ``def`` to its last line,
    docstring included (a function's runnable examples live in its module's docstring,
    where several functions share their set-up)."""
    lengths = {}
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lengths[f"{path.name}:{node.name}"] = node.end_lineno - node.lineno + 1
    return lengths
