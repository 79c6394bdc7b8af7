"""``selrel sanity``: cascading model-parameter randomisation of a model's explanations,
as one JSON line on stdout and a figure."""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import Annotated

import typer

from selrel_jax.cli import app, json_line, one_line_warnings


@app.command()
def sanity(
    ctx: typer.Context,
    model: Annotated[str, typer.Option(help="Shipped model name or checkpoint directory.")],
    dataset: Annotated[
        str, typer.Option(help="synthetic_motion(/CONFIG), folder:PATH or a TFDS name.")
    ],
    split: Annotated[str, typer.Option(help="Split: train, validation or test.")] = "test",
    methods: Annotated[
        list[str], typer.Option("--method", help="Attribution method (repeat for several).")
    ] = ["gradient"],  # noqa: B006 - typer reads the default, never mutates it
    limit: Annotated[int, typer.Option(help="Use the first K clips.")] = 8,
    data_seed: Annotated[
        int | None, typer.Option(help="Generate the synthetic split afresh with this seed.")
    ] = None,
    data_dir: Annotated[
        Path | None, typer.Option(help="Dataset cache (default $SELREL_DATA_DIR or ~/.cache).")
    ] = None,
    sigma: Annotated[float, typer.Option(help="Selective relevance's sigma.")] = 1.0,
    seed: Annotated[int, typer.Option(help="Seed of the random weights.")] = 0,
    threshold: Annotated[
        float, typer.Option(help="Flag a method whose last-step rank correlation is above this.")
    ] = 0.5,
    figure: Annotated[Path, typer.Option(help="The figure (.png) to write.")] = Path("sanity.png"),
) -> None:
    """Randomise MODEL's layers head first; print per method and layer the Spearman and
    SSIM with the trained model's maps (raw and selective) as one JSON line."""
    from selrel_jax.sanity import run_sanity

    with one_line_warnings(), contextlib.redirect_stdout(sys.stderr):  # stdout: the result
        result = run_sanity(**ctx.params)
    typer.echo(json_line(result))
