"""``selrel convert``: PyTorch weights (.pth) -> a selrel_jax checkpoint directory."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from selrel_jax.cli import app
from selrel_jax.cli._names import ARCHS


@app.command()
def convert(
    ctx: typer.Context,
    weights: Annotated[
        Path, typer.Argument(help="PyTorch state_dict file (.pth).", metavar="WEIGHTS")
    ],
    arch: Annotated[str, typer.Option(help=f"Architecture: {', '.join(ARCHS)}.")],
    out: Annotated[Path, typer.Option(help="Checkpoint directory to write.")],
    class_names: Annotated[
        Path | None,
        typer.Option(
            help="Text file, one class name per line in head order (default: "
            "Kinetics-400 for 400-class ResNets, Sports-1M for 487-class C3D)."
        ),
    ] = None,
    overwrite: Annotated[
        bool,
        typer.Option("--overwrite", help="Replace a checkpoint already in OUT."),
    ] = False,
) -> None:
    """Convert torchvision video ResNet or C3D-port weights to an orbax checkpoint + info.json.

    Keys are torchvision's (r3d_18, mc3_18, r2plus1d_18) or the C3D port's
    (conv1 ... conv5b, fc6 ... fc8). The metadata records the published
    preprocessing (torchvision: RGB in [0, 1], Kinetics mean/std, 16 frames at
    112x112 crops of frames resized to 128; C3D: BGR in [0, 255], Sports-1M mean,
    std 1, the same clip). Prints OUT. A file that is no PyTorch state_dict, keys
    that do not fit ARCH, an OUT below a file or holding other files, or a
    checkpoint in OUT without --overwrite is a one-line error; nothing is written.
    """
    from selrel_jax.models.torch_import import convert_torch_file

    typer.echo(str(convert_torch_file(**ctx.params)))
