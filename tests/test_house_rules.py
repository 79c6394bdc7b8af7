"""The house-rule checks themselves."""

from __future__ import annotations

import pathlib
import re

from tests import examples
from tests.house_rules import function_lengths

ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_every_line_from_def_to_the_end_counts_docstring_included(tmp_path):
    source = tmp_path / "m.py"
    body = "\n".join(f"    x{i} = {i}" for i in range(3))
    source.write_text(f'def f():\n    """Doc.\n\n    More.\n    """\n{body}\n')
    assert function_lengths([source]) == {"m.py:f": 8}


def test_ci_reruns_every_file_of_halved_property_tests_at_full_count():
    """A test file drawing ``examples(n)`` runs at the full count in CI's own step."""
    imports = re.compile(r"^from tests\.examples import examples$", re.M)
    users = {str(p.relative_to(ROOT)) for p in (ROOT / "tests").rglob("test_*.py")
             if imports.search(p.read_text())}  # fmt: skip
    step = (ROOT / ".ci" / "run").read_text().split('step "property tests at full count"')[1]
    command = step.split("\nstep ")[0].replace("\\\n", " ")
    assert "SELREL_FULL_PROPERTIES=1 pytest" in command
    assert users and users <= set(re.findall(r"tests/\S+\.py", command)), users
    assert examples.examples(30) == (30 if examples.FULL else 15) and examples.examples(12) >= 10
