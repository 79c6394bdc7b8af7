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
        Path,
        typer.Argument(
            help="PyTorch state_dict file (.pth, .bin, .pyth) or .safetensors, or a "
            "HuggingFace VideoMAE folder (config.json beside the weights).",
            metavar="WEIGHTS",
        ),
    ],
    out: Annotated[Path, typer.Option(help="Checkpoint directory to write.")],
    arch: Annotated[
        str | None,
        typer.Option(
            help=f"Architecture: {', '.join(ARCHS)}. Default: what a VideoMAE folder's "
            "config.json says (needed for every other file).",
            show_default=False,
        ),
    ] = None,
    class_names: Annotated[
        Path | None,
        typer.Option(
            help="Text file, one class name per line in head order (default: a VideoMAE "
            "folder's id2label, Kinetics-400 for 400-class ResNets, Sports-1M for 487-class C3D)."
        ),
    ] = None,
    overwrite: Annotated[
        bool,
        typer.Option("--overwrite", help="Replace a checkpoint already in OUT."),
    ] = False,
) -> None:
    """Convert PyTorch video-model weights to an orbax checkpoint + info.json.

    Keys are torchvision's (r3d_18, mc3_18, r2plus1d_18), the C3D port's
    (conv1 ... conv5b, fc6 ... fc8), transformers' VideoMAEForVideoClassification's
    (videomae_vit_s, videomae_vit_b, vit_small) or pytorchvideo's create_x3d's
    (x3d_xs, x3d_s). A HuggingFace VideoMAE folder (save_pretrained's or a hub
    download: config.json, preprocessor_config.json, model.safetensors) needs no
    --arch: its config gives the arch, clip and class names, its processor the
    mean, std and resize. The metadata records the published preprocessing
    (torchvision: RGB in [0, 1], Kinetics mean/std, 16 frames at 112x112 crops of
    frames resized to 128; C3D: BGR in [0, 255], Sports-1M mean, std 1, the same
    clip; VideoMAE: ImageNet mean/std, 16 frames every 4th at 224x224; X3D: mean
    0.45, std 0.225, 182x182 crops) and the model options the weights fix. Prints
    OUT. A file that is no PyTorch state_dict, keys that do not fit ARCH, an OUT
    below a file or holding other files, or a checkpoint in OUT without
    --overwrite is a one-line error; nothing is written.
    """
    from selrel_jax.models.torch_import import convert_torch_file

    typer.echo(str(convert_torch_file(**ctx.params)))
