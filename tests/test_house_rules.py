"""The house-rule checks themselves."""

from __future__ import annotations

from tests.house_rules import function_lengths


def test_every_line_from_def_to_the_end_counts_docstring_included(tmp_path):
    source = tmp_path / "m.py"
    body = "\n".join(f"    x{i} = {i}" for i in range(3))
    source.write_text(f'def f():\n    """Doc.\n\n    More.\n    """\n{body}\n')
    assert function_lengths([source]) == {"m.py:f": 8}
