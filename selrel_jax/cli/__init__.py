"""The ``selrel`` command line.

Each subcommand lives in its own module here and registers itself on ``app``;
``main`` turns library errors into a one-line message and a non-zero exit.
"""

from __future__ import annotations

import sys

import typer

from selrel_jax.errors import SelrelError

app = typer.Typer(
    name="selrel",
    help="Selective relevance: explain how much of a 3D CNN's decision was motion.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _root() -> None:
    """Selective relevance: explain how much of a 3D CNN's decision was motion."""


def fail(message: str, code: int = 2) -> None:
    """Print ``selrel: error: message`` to stderr and exit with ``code``."""
    typer.echo(f"selrel: error: {message}", err=True)
    raise typer.Exit(code)


def main() -> None:
    """Console entry point."""
    try:
        app()
    except SelrelError as e:
        typer.echo(f"selrel: error: {e}", err=True)
        sys.exit(2)


from selrel_jax.cli import convert, evaluate, train  # noqa: E402, F401
