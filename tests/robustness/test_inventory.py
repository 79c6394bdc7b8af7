"""docs/robustness.md can't go stale: every test its tables name exists, and every row
names one (a limit may say "none")."""

from __future__ import annotations

import ast
import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[2]
PAGE = ROOT / "docs" / "robustness.md"
NAMED = re.compile(r"`(tests/[\w/]+\.py)::(\w+)`")


def _rows(text: str) -> list[tuple[str, list[str], list[str]]]:
    """(section, header, cells) of every table body row."""
    section, header, rows = "", None, []
    for line in text.splitlines():
        if line.startswith("## "):
            section = line[3:].strip()
        if not line.startswith("|"):
            header = None
        elif re.fullmatch(r"\|(\s*-+\s*\|)+", line):
            continue
        else:
            cells = [cell.strip() for cell in line.strip("|").split("|")]
            if header is None:
                header = cells
            else:
                rows.append((section, header, cells))
    return rows


def _tests_in(path: pathlib.Path) -> set[str]:
    tree = ast.parse(path.read_text())
    return {node.name for node in ast.walk(tree) if isinstance(node, ast.FunctionDef)}


def test_every_test_the_robustness_page_names_exists():
    named = NAMED.findall(PAGE.read_text())
    assert len(named) > 50
    missing = [f"{path}::{name}" for path, name in named
               if not (ROOT / path).is_file() or name not in _tests_in(ROOT / path)]  # fmt: skip
    assert missing == []


def test_every_row_names_a_test_and_only_limits_may_not():
    rows = [(section, cells) for section, header, cells in _rows(PAGE.read_text())
            if header[-1] == "test"]  # fmt: skip
    assert len(rows) > 50 and len({section for section, _ in rows}) == 8
    for section, cells in rows:
        if not NAMED.search(cells[-1]):
            assert section == "Limits" and cells[-1].startswith("none: a limit"), cells
