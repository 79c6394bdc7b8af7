"""The ``selrel`` command line.

Each subcommand lives in its own module here and registers itself on ``app``; a
command only parses its options, makes one library call and prints the result.
Library errors (:class:`~selrel_jax.errors.SelrelError`) and operating-system
errors (``OSError``: a path below a regular file, a full disk, no permission)
become one line, ``selrel: error: ...`` on stderr with exit status 2, in one
place: the root command group, which every invocation (``selrel``, ``main()``,
``CliRunner``) goes through. The library turns the errors it can foresee into
SelrelErrors naming the path (and checks output paths before writing anything);
an OSError that still gets here is reported with its path.
"""

from __future__ import annotations

import contextlib
import shlex
import warnings
from collections.abc import Iterator, Mapping
from typing import Annotated, Any

import typer
from typer.core import TyperArgument, TyperGroup

from selrel_jax.errors import SelrelError

ERROR_EXIT_CODE = 2


def json_line(value: Any) -> str:
    """``value`` as one line of strict JSON (a NaN or infinite number is ``null``)."""
    from selrel_jax._jobs import json_text

    return json_text(value, indent=None, sort_keys=False)


def os_error_line(error: OSError) -> str:
    """``path: reason`` of an OSError, on one line."""
    lines = str(error).strip().splitlines()
    reason = error.strerror or (lines[0] if lines else type(error).__name__)
    paths = [str(p) for p in (error.filename, error.filename2) if p is not None]
    return f"{' -> '.join(paths)}: {reason}" if paths else reason


class _PlainArgument(TyperArgument):
    """An argument shown the way click shows it: ``SWEEP...``, ``[VIDEO]...``, no type
    label (typer 0.29 writes ``{sweeps}...`` and ``<list[Path]>``)."""

    def _usage_display_name(self) -> str:
        name = self.display_name_raw if self.required else f"[{self.display_name_raw}]"
        return name + ("..." if self.nargs != 1 else "")

    def display_type_rich(self, ctx: typer.Context) -> str | None:
        return None


class _SelrelGroup(TyperGroup):
    """The root group: runs a subcommand and turns a SelrelError or OSError into one line."""

    def get_command(self, ctx: typer.Context, cmd_name: str) -> Any:
        command = super().get_command(ctx, cmd_name)
        for param in getattr(command, "params", ()):
            if type(param) is TyperArgument:
                param.__class__ = _PlainArgument
        return command

    def invoke(self, ctx: typer.Context) -> Any:
        try:
            return super().invoke(ctx)
        except SelrelError as e:
            message = str(e)
        except OSError as e:
            message = os_error_line(e)
        typer.echo(f"selrel: error: {message}", err=True)
        ctx.exit(ERROR_EXIT_CODE)


app = typer.Typer(
    name="selrel",
    cls=_SelrelGroup,
    help="Selective relevance: explain how much of a 3D CNN's decision was motion.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    # Click's plain help: it wraps to the terminal, and rich's boxes showed `<bool>` after
    # --help, `<list[Path]>` types and `{sweeps}...` (and import rich: ~0.1 s).
    rich_markup_mode=None,
)


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"selrel {package_version()}")
        raise typer.Exit()


def package_version() -> str:
    """The installed selrel-jax's version (the package's own when run from a source tree)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("selrel-jax")
    except PackageNotFoundError:
        from selrel_jax import __version__

        return __version__


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_print_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """Selective relevance: explain how much of a 3D CNN's decision was motion."""


def command_line(ctx: typer.Context, values: Mapping[str, Any]) -> str:
    """``selrel <command> ...`` with every parameter of ``values``, in declaration order.

    Spelled the way the command parses it: ``--name value``, repeated options once
    per value, ``--flag`` / ``--no-flag`` for booleans; None is left out.
    """
    words = ["selrel", ctx.info_name or ctx.command.name or ""]
    for param in ctx.command.params:
        value = values.get(param.name)
        if value is None:
            continue
        if param.param_type_name == "argument":
            words.append(str(value))
        elif getattr(param, "is_flag", False):
            if value or param.secondary_opts:
                words.append(param.opts[0] if value else param.secondary_opts[0])
        elif getattr(param, "multiple", False):
            for item in value:
                words += [param.opts[0], str(item)]
        elif isinstance(value, tuple | list):
            words += [param.opts[0], *map(str, value)]
        else:
            words += [param.opts[0], str(value)]
    return shlex.join(words)


@contextlib.contextmanager
def one_line_warnings() -> Iterator[None]:
    """The library's warnings as ``selrel: warning: ...`` lines on stderr."""

    def show(message, category, filename, lineno, file=None, line=None):
        typer.echo(f"selrel: warning: {message}", err=True)

    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = show
        yield


def main() -> None:
    """Console entry point."""
    app()


from selrel_jax.cli import (  # noqa: E402, F401
    convert,
    evaluate,
    explain,
    report,
    sanity,
    sweep,
    train,
)
