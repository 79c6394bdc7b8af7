"""``selrel --help``, ``--version`` and argument errors: fast (no JAX, TFDS, orbax or
matplotlib imported), complete (methods and video formats from the library's lists) and
plain (no typer artefacts). The time itself is measured in bench/cli_startup.py."""

from __future__ import annotations

import importlib.metadata
import json
import re
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from selrel_jax.cli import _names, app

runner = CliRunner()

HEAVY = ("jax", "tensorflow_datasets", "orbax", "matplotlib")
COMMANDS = ("convert", "evaluate", "explain", "report", "sweep", "train")

# Each argument list is run by the console entry point in one fresh interpreter, which
# then prints the heavy modules that got imported.
_PROBE = """
import contextlib, io, json, sys
from selrel_jax.cli import main
argvs, heavy = map(json.loads, sys.argv[1:])
for argv in argvs:
    sys.argv = ["selrel", *argv]
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        try:
            main()
        except SystemExit:
            pass
print(json.dumps([name for name in heavy if name in sys.modules]))
"""


def test_help_version_and_argument_errors_import_no_heavy_module():
    argvs = [["--help"], ["--version"], ["explain", "--sigma", "x"], ["sweep"],
             *([command, "--help"] for command in COMMANDS)]  # fmt: skip
    result = subprocess.run(
        [sys.executable, "-c", _PROBE, json.dumps(argvs), json.dumps(HEAVY)],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    assert json.loads(result.stdout) == []


def test_version_is_the_installed_distributions():
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.stdout.strip() == f"selrel {importlib.metadata.version('selrel-jax')}"


def test_help_lists_are_the_librarys():
    from selrel_jax.attribution import registry
    from selrel_jax.data import VIDEO_EXTENSIONS
    from selrel_jax.models.registry import ARCHS

    assert _names.METHODS == registry.method_names()
    assert _names.ARCHS == ARCHS
    assert _names.VIDEO_EXTENSIONS == VIDEO_EXTENSIONS


def _help(*args: str) -> str:
    result = runner.invoke(app, [*args, "--help"], terminal_width=80)
    assert result.exit_code == 0, result.output
    return result.stdout


def test_explain_help_lists_every_method_and_video_format():
    words = {word.rstrip(".") for word in re.split(r"[\s,():]+", _help("explain"))}
    assert set(_names.METHODS) <= words
    assert {"mp4", "avi", "webm", "mkv", "mov", "gif"} <= words


@pytest.mark.parametrize("command", [(), *((c,) for c in COMMANDS)])
def test_help_is_plain_and_wraps(command):
    text = _help(*command)
    assert "<bool>" not in text
    assert "<list[" not in text
    assert not re.search(r"\{\w+\}\.\.\.", text), text  # typer's {sweeps}...
    assert max(map(len, text.splitlines())) <= 80


def test_sweep_help_says_why_a_failed_video_exits_0():
    text = " ".join(_help("sweep").split())
    assert "exit code stays 0" in text
    assert "exit code is 2 if any failed" in " ".join(_help("explain").split())
