"""The metrics package: its public names, its place in the data path, house rules."""

from __future__ import annotations

import ast
from pathlib import Path

import selrel_jax as sr
from selrel_jax import metrics
from tests.house_rules import function_lengths

PACKAGE = Path(metrics.__file__).parent


def test_every_public_name_is_importable_and_documented():
    assert sr.metrics is metrics
    for name in metrics.__all__:
        obj = getattr(metrics, name)
        if callable(obj) and not isinstance(obj, type):
            assert (obj.__doc__ and "Example" in obj.__doc__) or name == "spatial_bias", name
    assert metrics.spatial_bias is sr.spatial_bias


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("selrel_"):
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("selrel_jax")}
    return found


def test_metrics_imports_nothing_to_its_right():
    right = ("viz", "sweep", "train", "cli", "video_explanation")
    for path in PACKAGE.glob("*.py"):
        bad = {n for n in _imports(path) if n.split(".")[1] in right}
        assert not bad, f"{path.name} imports {sorted(bad)}"


def test_functions_are_short():
    """House rule: functions of at most ~60 lines."""
    long = {f: n for f, n in function_lengths(PACKAGE.glob("*.py")).items() if n > 60}
    assert not long, f"functions over 60 lines: {long}"
