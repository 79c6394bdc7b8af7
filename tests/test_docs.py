"""Docs that cannot rot: every code block of README.md and docs/ runs or is checked.

* Every ``python`` block is executed as written, the blocks of one file in order in
  one fresh namespace (a reader goes through a page top to bottom), in a temporary
  working directory of that file, with ``SELREL_DATA_DIR`` there too, so nothing
  lands in the reader's cache. One test per block: a failure names the file and the
  line of the block's opening fence.
* A block that needs files the reader must bring, or that starts a long job, is
  marked by an HTML comment on the line before its fence, ``<!-- needs: UCF-101 -->``
  or ``<!-- skip: trains for 7 minutes -->``; it is only compiled (a syntax error
  still fails), and its test is reported as skipped with the marker's words, so
  ``pytest -rs`` lists every block that did not run. A block marked
  ``<!-- env: XLA_FLAGS=... -->`` needs variables set before Python starts: it runs
  alone, as a script in a new process with them (so it imports what it uses).
* Every shell block is read for ``selrel`` commands: each command and each ``--flag``
  it names (also flags listed in a comment after a command) must be one that
  ``selrel <command> --help`` shows, i.e. an option of the typer app. Extras named as
  ``".[extra]"`` must exist in pyproject.toml, and no text tells readers to
  ``pip install selrel-jax`` (the package is not published).
* Local links and images point at files (and headings) that exist, and
  ``docs/api.md`` shows a call of every public function.
"""

from __future__ import annotations

import dataclasses
import inspect
import io
import os
import re
import shlex
import subprocess
import sys
import tokenize
import types
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
DOC_FILES = sorted([ROOT / "README.md", *(ROOT / "docs").rglob("*.md")])
PYTHON = ("python", "py")
SHELL = ("bash", "sh", "shell", "console")
MARKER = re.compile(r"<!--\s*(needs|skip|env):\s*(.+?)\s*-->")
FENCE = re.compile(r"^```(.*)$")


@dataclasses.dataclass(frozen=True)
class Block:
    path: Path
    line: int  # of the opening fence, 1-based
    language: str
    source: str
    marker: tuple[str, str] | None  # ("needs" | "skip", why) or ("env", "KEY=VALUE ...")

    @property
    def name(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def read_blocks(path: Path) -> list[Block]:
    """The fenced code blocks of a markdown file, with the marker before each."""
    lines = path.read_text().splitlines()
    blocks, i = [], 0
    while i < len(lines):
        opening = FENCE.match(lines[i])
        if not opening:
            i += 1
            continue
        language = opening.group(1).strip()
        end = next((j for j in range(i + 1, len(lines)) if lines[j].startswith("```")), None)
        assert end is not None, f"{path.name}:{i + 1}: code block never closed"
        assert lines[end].strip() == "```", f"{path.name}:{end + 1}: a fence opens in a block"
        before = i - 1
        while before >= 0 and not lines[before].strip():
            before -= 1
        marked = MARKER.fullmatch(lines[before].strip()) if before >= 0 else None
        marker = (marked.group(1), marked.group(2)) if marked else None
        source = "\n".join(lines[i + 1 : end]) + "\n"
        blocks.append(Block(path, i + 1, language, source, marker))
        i = end + 1
    return blocks


BLOCKS = {path: read_blocks(path) for path in DOC_FILES}
PYTHON_BLOCKS = [b for blocks in BLOCKS.values() for b in blocks if b.language in PYTHON]


def test_every_block_says_its_language_and_every_marker_sits_on_a_block():
    for path, blocks in BLOCKS.items():
        for block in blocks:
            assert block.language, f"{block.name}: give the block a language (python, bash, text)"
        text = path.read_text().splitlines()
        marked_lines = {b.line for b in blocks if b.marker}
        for number, line in enumerate(text, 1):
            if MARKER.fullmatch(line.strip()):  # a marker alone on its line, not one in prose
                following = next(
                    (n for n in range(number + 1, len(text) + 1) if text[n - 1].strip()), None
                )
                assert following in marked_lines, (
                    f"{path.relative_to(ROOT)}:{number}: marker {line.strip()!r} is not right "
                    "before a code block"
                )


# ---------------------------------------------------------------- python blocks


class FileRun:
    """The blocks of one file run in order in one namespace, each at most once."""

    def __init__(self, path: Path, workdir: Path) -> None:
        self.blocks = [b for b in BLOCKS[path] if b.language in PYTHON]
        self.workdir = workdir
        # A module of its own, installed as __main__ while a block runs: dataclasses and
        # pickle find the classes a block defines, `if __name__ == "__main__":` holds,
        # and worker processes (grain's) have no main script to import.
        self.module = types.ModuleType("__main__")
        self.module.__dict__["__builtins__"] = __builtins__
        self.outcomes: dict[int, BaseException | str | None] = {}

    def run_through(self, block: Block, monkeypatch) -> None:
        monkeypatch.chdir(self.workdir)
        monkeypatch.setenv("SELREL_DATA_DIR", str(self.workdir / "tensorflow_datasets"))
        monkeypatch.setitem(sys.modules, "__main__", self.module)
        for earlier in self.blocks[: self.blocks.index(block) + 1]:
            if earlier.line not in self.outcomes:
                self.outcomes[earlier.line] = self._run(earlier)

    def _run(self, block: Block) -> BaseException | str | None:
        code = compile(block.source, block.name, "exec")
        if block.marker and block.marker[0] == "env":
            return self._run_as_script(block)
        if block.marker:
            return f"{block.marker[0]}: {block.marker[1]}"
        try:
            exec(code, self.module.__dict__)
        except BaseException as error:  # reported by the block's own test
            return error
        return None

    def _run_as_script(self, block: Block) -> BaseException | None:
        """A block whose environment must be set before Python starts (XLA_FLAGS): run
        alone as a script, so it must import what it uses."""
        env = dict(os.environ, **dict(pair.split("=", 1) for pair in block.marker[1].split()))
        env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
        done = subprocess.run(
            [sys.executable, "-c", block.source],
            cwd=self.workdir,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        if done.returncode:
            return AssertionError(f"exit status {done.returncode}:\n{done.stderr[-3000:]}")
        return None

    def failed_before(self, block: Block) -> list[str]:
        return [
            b.name
            for b in self.blocks[: self.blocks.index(block)]
            if isinstance(self.outcomes.get(b.line), BaseException)
        ]


@pytest.fixture(scope="module")
def file_runs(tmp_path_factory):
    from selrel_jax.attribution import registry

    methods = dict(registry._METHODS)
    runs: dict[Path, FileRun] = {}

    def run_for(path: Path) -> FileRun:
        if path not in runs:
            runs[path] = FileRun(path, tmp_path_factory.mktemp(path.stem))
        return runs[path]

    yield run_for
    # Blocks register composites of their own; the rest of the suite sees the library's.
    registry._METHODS.clear()
    registry._METHODS.update(methods)


@pytest.mark.slow
@pytest.mark.parametrize("block", PYTHON_BLOCKS, ids=[b.name for b in PYTHON_BLOCKS])
def test_python_block_runs(block, file_runs, monkeypatch):
    import matplotlib.pyplot as plt

    run = file_runs(block.path)
    try:
        run.run_through(block, monkeypatch)
    finally:
        plt.close("all")
    outcome = run.outcomes[block.line]
    if isinstance(outcome, str):
        pytest.skip(f"{block.name}: {outcome}")
    if isinstance(outcome, BaseException):
        earlier = run.failed_before(block)
        note = f" (earlier blocks failed: {', '.join(earlier)})" if earlier else ""
        raise AssertionError(f"{block.name} fails as written{note}") from outcome


# ---------------------------------------------------------------- shell blocks


def selrel_commands() -> dict[str, set[str]]:
    """{command: every option spelling ``selrel <command> --help`` shows}."""
    import typer

    from selrel_jax.cli import app

    group = typer.main.get_command(app)
    return {
        name: {"--help"}
        | {o for p in command.params for o in (*p.opts, *p.secondary_opts) if o.startswith("-")}
        for name, command in group.commands.items()
    }


def split_comment(line: str) -> tuple[str, str]:
    """``(code, comment)`` of a shell line: a ``#`` starting a word outside quotes."""
    quote = None
    for i, char in enumerate(line):
        if quote:
            quote = None if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i], line[i:]
    return line, ""


def shell_commands(source: str) -> list[tuple[list[str], str]]:
    """``(words, comment)`` of each command of a shell block: continuation lines
    joined, ``&&`` / ``;`` / ``|`` split; a comment line belongs to the command
    before it (``#   [--batch-size 16 ...]``)."""
    commands: list[tuple[list[str], str]] = []
    pending = ""
    for raw in source.splitlines():
        code, comment = split_comment(raw)
        if code.rstrip().endswith("\\"):
            pending += code.rstrip()[:-1] + " "
            continue
        words, pending = shlex.split(pending + code), ""
        if not words:
            if commands and comment:
                commands[-1] = (commands[-1][0], commands[-1][1] + " " + comment)
            continue
        part: list[str] = []
        for word in [*words, "&&"]:
            if word in ("&&", ";", "|", "||"):
                if part:
                    commands.append((part, ""))
                part = []
            else:
                part.append(word)
        commands[-1] = (commands[-1][0], comment)
    return commands


def check_selrel_command(words: list[str], comment: str, known: dict[str, set[str]]) -> list[str]:
    """What is wrong with ``selrel ...`` (words) and the flags its comment names."""
    words = [w.strip("[]") for w in words if w.strip("[]")]
    if words[1:] in ([], ["--help"]):
        return []
    command = words[1]
    if command not in known:
        return [f"selrel {command}: no such command (selrel has {sorted(known)})"]
    flags = [w.split("=", 1)[0] for w in words[2:] if w.startswith("-")]
    flags += re.findall(r"(?<![\w-])(--[a-z][\w-]*)", comment)
    return [f"selrel {command} {f}: no such option" for f in flags if f not in known[command]]


def package_extras() -> set[str]:
    """The extras pyproject.toml declares (tomllib is Python 3.11+; the project is 3.10+)."""
    text = (ROOT / "pyproject.toml").read_text()
    section = text.split("[project.optional-dependencies]", 1)[1].split("\n[", 1)[0]
    return set(re.findall(r"^([\w-]+)\s*=", section, re.M))


SHELL_FILES = [p for p, blocks in BLOCKS.items() if any(b.language in SHELL for b in blocks)]


@pytest.mark.parametrize("path", SHELL_FILES, ids=[str(p.relative_to(ROOT)) for p in SHELL_FILES])
def test_shell_blocks_name_real_commands_and_options(path):
    known = selrel_commands()
    extras = package_extras()
    problems = []
    for block in BLOCKS[path]:
        if block.language not in SHELL:
            continue
        found = []
        for words, comment in shell_commands(block.source):
            if words[0] == "selrel":
                found += check_selrel_command(words, comment, known)
        for names in re.findall(r"\.\[([\w,-]+)\]", block.source):
            found += [f"no extra [{e}] in pyproject.toml" for e in set(names.split(",")) - extras]
        problems += [f"{block.name}: {problem}" for problem in found]
    assert not problems, "\n".join(problems)


def test_shell_check_catches_unknown_commands_and_flags():
    known = {"train": {"--help", "--epochs", "--freeze-backbone", "--no-freeze-backbone"}}
    (words, comment), *_ = shell_commands("selrel train --epochs 2 \\\n  [--freeze-backbone]\n")
    assert check_selrel_command(words, comment, known) == []
    (words, comment), *_ = shell_commands("selrel train --epochs 2\n#   [--epoch 3 --lr 1]\n")
    assert check_selrel_command(words, comment, known) == [
        "selrel train --epoch: no such option",
        "selrel train --lr: no such option",
    ]
    (words, comment), *_ = shell_commands("pip install -e . && selrel trian --epochs 1")[1:]
    assert check_selrel_command(words, comment, known)[0].startswith("selrel trian: no such")


def test_no_text_installs_the_unpublished_package():
    for path in DOC_FILES:
        for number, line in enumerate(path.read_text().splitlines(), 1):
            assert not re.search(r"pip install [\"']?selrel-jax", line), (
                f"{path.relative_to(ROOT)}:{number}: selrel-jax is not on PyPI; install the "
                f'clone (pip install -e ".[extra]")'
            )


# ---------------------------------------------------------------- links and api coverage


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation but ``-`` and ``_`` dropped,
    spaces -> dashes."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    text = re.sub(r"^```.*?^```", "", path.read_text(), flags=re.S | re.M)
    return {slug(h) for h in re.findall(r"^#+ (.+)$", text, re.M)}


def test_local_links_and_images_point_at_what_exists():
    problems = []
    for path in DOC_FILES:
        text = re.sub(r"^```.*?^```", "", path.read_text(), flags=re.S | re.M)
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+:", target):
                continue  # https:, mailto:
            file, _, anchor = target.partition("#")
            where = (path.parent / file).resolve() if file else path
            if not where.exists():
                problems.append(f"{path.relative_to(ROOT)}: {target} does not exist")
            elif anchor and where.suffix == ".md" and anchor not in anchors(where):
                problems.append(f"{path.relative_to(ROOT)}: no heading for #{anchor} in {file}")
    assert not problems, "\n".join(problems)


API_MODULES = (
    "selrel_jax",
    "selrel_jax.attribution",
    "selrel_jax.selective",
    "selrel_jax.metrics",
    "selrel_jax.viz",
    "selrel_jax.video_explanation",
    "selrel_jax.sweep",
    "selrel_jax.report",
    "selrel_jax.models",
    "selrel_jax.data",
    "selrel_jax.data.synthetic_motion",
    "selrel_jax.train",
)


def code_names(source: str) -> set[str]:
    """The names a piece of Python code uses (comments and strings left out)."""
    tokens = tokenize.generate_tokens(io.StringIO(source).readline)
    return {t.string for t in tokens if t.type == tokenize.NAME}


def test_api_doc_shows_every_public_function():
    """A function counts as shown when the code of docs/api.md's python blocks uses it
    under any of its public names (``train.batch_rows`` is ``data.batch_indices``)."""
    import importlib

    api = [b for b in BLOCKS[ROOT / "docs" / "api.md"] if b.language in PYTHON]
    called = set().union(*(code_names(b.source) for b in api))
    names: dict[int, tuple[object, set[str]]] = {}
    for module_name in API_MODULES:
        module = importlib.import_module(module_name)
        for name in getattr(module, "__all__", ()):
            obj = getattr(module, name)
            if inspect.isfunction(obj):
                names.setdefault(id(obj), (obj, set()))[1].add(f"{module_name}.{name}")
    missing = sorted(
        min(public)
        for _, public in names.values()
        if not {p.rsplit(".", 1)[1] for p in public} & called
    )
    assert not missing, "docs/api.md shows no call of: " + ", ".join(missing)


@pytest.mark.slow
def test_method_figures_are_what_the_library_draws(file_runs, monkeypatch):
    """docs/method.md's sigma figures, drawn by its block, match the committed PNGs."""
    import matplotlib.image as mpimg

    path = ROOT / "docs" / "method.md"
    figure_block = next(b for b in BLOCKS[path] if "method_sigmas_" in b.source)
    run = file_runs(path)
    run.run_through(figure_block, monkeypatch)
    assert run.outcomes[figure_block.line] is None, f"{figure_block.name} failed"
    for name in ("method_sigmas_motion.png", "method_sigmas_biased.png"):
        made = mpimg.imread(run.workdir / name)
        committed = mpimg.imread(ROOT / "docs" / "images" / name)
        assert made.shape == committed.shape, name
        # Fonts and the last bits of the relevance may differ between machines.
        assert np.mean(np.abs(made - committed) > 8 / 255) < 0.01, name
