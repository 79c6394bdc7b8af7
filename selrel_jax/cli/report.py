"""``selrel report``: a markdown report with figures of one or several sweeps."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from selrel_jax.cli import app

# Literal defaults keep `selrel --help` fast; a test checks them against selrel_jax.report.
Sweeps = Annotated[
    list[Path],
    typer.Argument(
        help="Sweep directories (selrel sweep --out), e.g. one per model.", metavar="SWEEP"
    ),
]
Out = Annotated[
    Path, typer.Option(help="The markdown file; its PNG figures are written beside it.")
]
Sigma = Annotated[
    float | None,
    typer.Option(help="Sigma of the distribution and correlation sections (default: the "
                 "middle sigma every sweep has)."),
]  # fmt: skip
Resamples = Annotated[int, typer.Option(help="Bootstrap resamples of the clips per interval.")]
Seed = Annotated[int, typer.Option(help="Seed of the bootstrap (the report is deterministic).")]
Sanity = Annotated[
    list[Path] | None,
    typer.Option(help="A file holding the JSON line of selrel sanity (repeatable): the "
                 "report draws its curves per layer and names the flagged methods.",
                 metavar="FILE"),
]  # fmt: skip


@app.command()
def report(
    sweeps: Sweeps,
    out: Out = Path("report/report.md"),
    sigma: Sigma = None,
    resamples: Resamples = 1000,
    seed: Seed = 0,
    sanity: Sanity = None,
) -> None:
    """Write a markdown report (OUT, PNGs beside it) of the SWEEPS: each score against sigma
    per method, motion precision and relevance on static objects raw vs selective, each
    model's spatial-bias distribution, motion reliance vs spatial bias; numbers with
    bootstrap 95% intervals; sweeps of models that differ only by training seed are
    resampled together (models, then clips), and every comparison gets a p-value with
    Holm and Benjamini-Hochberg adjustments. Prints the report's path."""
    from selrel_jax.report import write_report

    path = write_report(
        sweeps, out, sigma=sigma, resamples=resamples, seed=seed, sanity=sanity or ()
    )
    typer.echo(str(path))
