"""Every docstring's ``Examples:`` section in selrel_jax runs as a doctest.

One test per module, so a failure names the module. The examples share one tiny
model (c3d_small, width 0.25, 8x32x32 clips) so that JAX's compiled kernels are
reused from one module to the next; each test runs in its own empty folder, so
examples that write files (``runs/...``) write there.
"""

from __future__ import annotations

import doctest
import importlib
import inspect
import pkgutil
import re
import sys

import numpy as np
import pytest

import selrel_jax

OPTIONFLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
# a reStructuredText literal block, which neither runs nor renders as Google style
BARE_EXAMPLE = re.compile(r"^\s*Examples?::\s*$", re.MULTILINE)
EXAMPLES_SECTION = re.compile(r"^\s*Examples:\s*$", re.MULTILINE)


def _module_names() -> list[str]:
    walked = pkgutil.walk_packages(selrel_jax.__path__, prefix=f"{selrel_jax.__name__}.")
    return [selrel_jax.__name__, *sorted(info.name for info in walked)]


MODULES = _module_names()
# modules whose examples need an optional extra: (module that must import, the extra)
OPTIONAL = {"selrel_jax.metrics._flow": ("cv2", "flow")}
# modules whose examples run whole jobs (a sweep, a training run, many videos): 15-35 s
# each on a loaded 2-core machine
JOBS = {
    "selrel_jax.explanation_files",
    "selrel_jax.report",
    "selrel_jax.sweep",
    "selrel_jax.sweep._run",
    "selrel_jax.sweep._store",
    "selrel_jax.train",
    # not a job, but a full-size X3D built and run on CPU (8 s)
    "selrel_jax.models.x3d",
}


def _doctests(module) -> list[doctest.DocTest]:
    finder = doctest.DocTestFinder(exclude_empty=True)
    tests = finder.find(module, module.__name__)
    return [test for test in tests if test.examples]


def test_walk_finds_the_package() -> None:
    assert len(MODULES) > 50
    assert {"selrel_jax.selective", "selrel_jax.attribution.explain"} <= set(MODULES)
    assert (set(OPTIONAL) | JOBS) <= set(MODULES)


@pytest.fixture
def restored_registry():
    """Examples may register methods (``register_composite``); the suite sees none."""
    from selrel_jax.attribution import registry

    methods = dict(registry._METHODS)
    yield
    registry._METHODS.clear()
    registry._METHODS.update(methods)


def _marked(name: str):
    return pytest.param(name, marks=pytest.mark.slow) if name in JOBS else name


@pytest.mark.parametrize("name", [_marked(name) for name in MODULES])
def test_docstring_examples_run(name: str, tmp_path, monkeypatch, restored_registry) -> None:
    if name in OPTIONAL:
        needed, extra = OPTIONAL[name]
        pytest.importorskip(needed, reason=f"{name}'s examples need selrel-jax[{extra}]")
    module = importlib.import_module(name)
    monkeypatch.chdir(tmp_path)
    runner = doctest.DocTestRunner(optionflags=OPTIONFLAGS)
    report: list[str] = []
    with np.printoptions(precision=4, suppress=True, linewidth=100, threshold=1000):
        for test in _doctests(module):
            runner.run(test, out=report.append)
    if "matplotlib.pyplot" in sys.modules:
        sys.modules["matplotlib.pyplot"].close("all")  # the figures the examples drew
    assert runner.failures == 0, f"{name}: doctest failures\n" + "".join(report)


@pytest.mark.parametrize("name", MODULES)
def test_no_bare_example_blocks(name: str) -> None:
    source = inspect.getsource(importlib.import_module(name))
    bare = [source.count("\n", 0, m.start()) + 1 for m in BARE_EXAMPLE.finditer(source)]
    assert not bare, f"{name}: 'Example::' literal block(s) at line(s) {bare}; write `Examples:`"


@pytest.mark.parametrize("name", MODULES)
def test_examples_sections_hold_doctests(name: str) -> None:
    module = importlib.import_module(name)
    finder = doctest.DocTestFinder(exclude_empty=False)
    empty = [
        test.name
        for test in finder.find(module, module.__name__)
        if test.docstring and EXAMPLES_SECTION.search(test.docstring) and not test.examples
    ]
    assert not empty, f"{name}: `Examples:` without `>>>` lines in {empty}"
