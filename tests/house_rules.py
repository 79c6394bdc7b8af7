"""Checks of the house rules that several test modules apply to their package."""

from __future__ import annotations

import ast
from collections.abc import Iterable
from pathlib import Path


def function_lengths(paths: Iterable[Path]) -> dict[str, int]:
    """``"file.py:name" -> lines`` of every function, from ``def`` to its last line,
    less its docstring: the rule is about logic, and a docstring's runnable
    ``Examples:`` are documentation (doctests, however long they need to be)."""
    lengths = {}
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            length = node.end_lineno - node.lineno + 1
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                if isinstance(first.value.value, str):
                    length -= first.end_lineno - first.lineno + 1
            lengths[f"{path.name}:{node.name}"] = length
    return lengths
