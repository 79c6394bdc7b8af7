"""``selrel evaluate``: accuracy of a model on a dataset split, as one JSON line on stdout."""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import Annotated

import typer

from selrel_jax.cli import app, json_line, one_line_warnings


@app.command()
def evaluate(
    ctx: typer.Context,
    model: Annotated[str, typer.Option(help="Shipped model name or checkpoint directory.")],
    dataset: Annotated[
        str, typer.Option(help="synthetic_motion(/CONFIG), folder:PATH or a TFDS name.")
    ],
    split: Annotated[str, typer.Option(help="Split: train, validation or test.")] = "test",
    data_seed: Annotated[
        int | None,
        typer.Option(help="Generate the synthetic split afresh with this seed (unseen clips)."),
    ] = None,
    limit: Annotated[int | None, typer.Option(help="Evaluate only the first K clips.")] = None,
    data_dir: Annotated[
        Path | None, typer.Option(help="Dataset cache (default $SELREL_DATA_DIR or ~/.cache).")
    ] = None,
    split_file: Annotated[
        Path | None,
        typer.Option(help="folder: datasets: the training list the model was trained with."),
    ] = None,
    batch_size: Annotated[int, typer.Option(help="Clips per forward pass.")] = 64,
    progress: Annotated[bool, typer.Option(help="Progress bar on stderr.")] = True,
) -> None:
    """Print {"accuracy", "n", ...} of MODEL on DATASET's SPLIT as one JSON line on stdout."""
    from selrel_jax.train import evaluate_dataset

    with one_line_warnings(), contextlib.redirect_stdout(sys.stderr):  # stdout: the result
        result = evaluate_dataset(**ctx.params)
    typer.echo(json_line(result))
