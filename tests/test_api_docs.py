"""The generated API reference has nothing to show blank: every name in a public
``__all__`` carries a docstring.

mkdocstrings renders a member without a docstring as a bare signature (or hides it)
and ``mkdocs build --strict`` does not fail on that, so this test is the check. A
public module is one of ``selrel_jax`` whose dotted path has no part starting with
``_``. Functions, classes and modules need their own ``__doc__`` (a dataclass's
generated ``Name(field: type, ...)`` does not count); other values (constants,
tuples of names, type aliases) need a doc where they are defined: ``#:`` comment
lines right above the assignment (the package's convention, which the griffe-sphinx
extension of mkdocs.yml reads) or a string right after it.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import itertools
import pkgutil
import types
from pathlib import Path

import pytest

import selrel_jax

PACKAGE_DIR = Path(selrel_jax.__file__).resolve().parent
ROOT = Path(__file__).resolve().parents[1]


def public_modules() -> list[str]:
    names = ["selrel_jax"]
    for info in pkgutil.walk_packages([str(PACKAGE_DIR)], prefix="selrel_jax."):
        if not any(part.startswith("_") for part in info.name.split(".")):
            names.append(info.name)
    return sorted(n for n in names if hasattr(importlib.import_module(n), "__all__"))


def documented_assignments(source: str) -> set[str]:
    """Names assigned at a module's top level with a doc: a string literal right after
    the assignment, or ``#:`` comment lines right above it (griffe-sphinx reads those)."""
    body = ast.parse(source).body
    lines = source.splitlines()
    found = set()
    for statement, following in itertools.pairwise([*body, None]):
        if isinstance(statement, ast.Assign):
            names = {t.id for t in statement.targets if isinstance(t, ast.Name)}
        elif isinstance(statement, ast.AnnAssign) and isinstance(statement.target, ast.Name):
            names = {statement.target.id}
        else:
            continue
        string_after = (
            isinstance(following, ast.Expr)
            and isinstance(following.value, ast.Constant)
            and isinstance(following.value.value, str)
            and bool(following.value.value.strip())
        )
        above = lines[statement.lineno - 2] if statement.lineno >= 2 else ""
        comment_above = above.startswith("#:") and bool(above[2:].strip())
        if string_after or comment_above:
            found |= names
    return found


def module_source(module_name: str) -> str:
    return Path(importlib.import_module(module_name).__file__).read_text()


def defining_module(module_name: str, name: str) -> str:
    """The module whose top level assigns ``name``, following ``from X import name``."""
    for statement in ast.parse(module_source(module_name)).body:
        if isinstance(statement, ast.ImportFrom) and statement.module and not statement.level:
            if any(
                alias.name == name and alias.asname in (None, name) for alias in statement.names
            ):
                return defining_module(statement.module, name)
    return module_name


def own_docstring(obj: object) -> str:
    if isinstance(obj, type):
        doc = obj.__dict__.get("__doc__") or ""
        generated = obj.__name__ + "("  # dataclasses write one when the class has none
        return "" if doc.startswith(generated) else doc
    return getattr(obj, "__doc__", None) or ""


def undocumented(module_name: str) -> list[str]:
    module = importlib.import_module(module_name)
    missing = []
    for name in module.__all__:
        obj = getattr(module, name)
        if inspect.isroutine(obj) or isinstance(obj, (type, types.ModuleType)):
            ok = bool(own_docstring(inspect.unwrap(obj) if callable(obj) else obj).strip())
        else:
            where = defining_module(module_name, name)
            ok = name in documented_assignments(module_source(where))
        if not ok:
            missing.append(f"{module_name}.{name}")
    return missing


MODULES = public_modules()


def test_the_public_modules_are_found():
    assert {"selrel_jax", "selrel_jax.selective", "selrel_jax.attribution.rules"} <= set(MODULES)
    assert not [m for m in MODULES if "._" in m]


def test_every_public_module_has_a_reference_page_in_the_site():
    # The API reference is generated from docstrings, but each module's page (one
    # `::: module` line) and its place in mkdocs.yml's nav are written by hand.
    nav = (ROOT / "mkdocs.yml").read_text()
    pages = {
        line.strip()[4:]: path
        for path in (ROOT / "docs" / "reference").glob("*.md")
        for line in path.read_text().splitlines()
        if line.startswith("::: ")
    }
    missing = [m for m in MODULES if m not in pages]
    assert not missing, f"no docs/reference page shows {missing}"
    unlisted = [m for m in MODULES if f"reference/{pages[m].name}" not in nav]
    assert not unlisted, f"mkdocs.yml's nav lists no page of {unlisted}"


@pytest.mark.parametrize("module_name", MODULES)
def test_every_public_name_has_a_docstring(module_name):
    missing = undocumented(module_name)
    assert not missing, "no docstring (the API reference would show it blank): " + ", ".join(
        missing
    )


FAKE_MODULE = '''
"""A module with holes."""
import dataclasses

from fake_constants import IMPORTED_BARE, IMPORTED_TOLD

__all__ = ["bare", "Plain", "told", "CONSTANT", "DOCUMENTED", "COMMENTED",
           "IMPORTED_BARE", "IMPORTED_TOLD"]


def bare():
    pass


@dataclasses.dataclass
class Plain:
    x: int = 0


def told():
    """Has one."""


CONSTANT = (1, 2)
DOCUMENTED = 3
"""Three."""
#: Four.
COMMENTED = 4
'''


def test_the_check_sees_a_missing_docstring(tmp_path, monkeypatch):
    (tmp_path / "fake_api.py").write_text(FAKE_MODULE)
    (tmp_path / "fake_constants.py").write_text("IMPORTED_BARE = 5\n#: Six.\nIMPORTED_TOLD = 6\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert undocumented("fake_api") == [
        "fake_api.bare",
        "fake_api.Plain",
        "fake_api.CONSTANT",
        "fake_api.IMPORTED_BARE",
    ]
