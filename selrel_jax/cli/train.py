"""``selrel train``: train a clip classifier on a dataset, resumably, and export the best model."""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import Annotated

import typer

from selrel_jax.cli import app, command_line, json_line, one_line_warnings

_DEFAULT = "(default: from --init-from, else {})"

# The options, declared once as types so that the command's signature reads as a list.
Dataset = Annotated[
    str,
    typer.Option(
        help="synthetic_motion or synthetic_motion/CONFIG (e.g. /biased), or "
        "folder:PATH, a folder of videos in UCF-101 layout PATH/<class>/<video>."
    ),
]
Out = Annotated[Path, typer.Option(help="Run directory: settings, checkpoints, model.")]
Epochs = Annotated[int, typer.Option(help="Training epochs.")]
InitFrom = Annotated[
    str | None,
    typer.Option(
        help="Start from this checkpoint (shipped name or directory): its arch, width, "
        "model options, clip size, frame step and normalisation; a head of another "
        "class count is replaced by a fresh one."
    ),
]
FreezeBackbone = Annotated[
    bool, typer.Option(help="Train only the head of --init-from's model; the rest is frozen.")
]
SplitFile = Annotated[
    Path | None,
    typer.Option(
        help="folder: the training list (UCF-101 trainlist01.txt style); the folder's "
        "other videos are the test split."
    ),
]
Arch = Annotated[
    str | None, typer.Option(help="Model architecture " + _DEFAULT.format("c3d_small"))
]
Width = Annotated[float | None, typer.Option(help="Channel width multiplier " + _DEFAULT.format(1))]
ModelOption = Annotated[
    list[str] | None,
    typer.Option(help="Extra models.create keyword as KEY=JSON, repeatable.", metavar="KEY=JSON"),
]
ClipLength = Annotated[
    int | None, typer.Option(help="folder: frames per clip " + _DEFAULT.format(16))
]
FrameStep = Annotated[
    int | None, typer.Option(help="folder: step between a clip's frames " + _DEFAULT.format(1))
]
CropSize = Annotated[
    tuple[int, int] | None,
    typer.Option(help="folder: centre crop H W " + _DEFAULT.format("112 112")),
]
Resize = Annotated[
    int | None,
    typer.Option(
        help="folder: shorter side frames are resized to before cropping (default: the "
        "checkpoint's, else the larger crop side)."
    ),
]
BatchSize = Annotated[int, typer.Option(help="Clips per training step.")]
Lr = Annotated[float, typer.Option(help="Peak learning rate (AdamW).")]
WeightDecay = Annotated[float, typer.Option(help="AdamW weight decay (not on biases).")]
WarmupEpochs = Annotated[float, typer.Option(help="Linear warmup, then cosine decay.")]
Seed = Annotated[int, typer.Option(help="Seed of initialisation, data order and dropout.")]
CheckpointEvery = Annotated[
    int, typer.Option(help="Also checkpoint every this many steps (always per epoch).")
]
Limit = Annotated[
    int | None, typer.Option(help="Use only the first K clips of each split (quick runs).")
]
DataDir = Annotated[
    Path | None, typer.Option(help="Dataset cache (default $SELREL_DATA_DIR or ~/.cache).")
]
Export = Annotated[
    Path | None, typer.Option(help="Where to export the best model (default OUT/model).")
]
Progress = Annotated[bool, typer.Option(help="Progress bar on stderr.")]


@app.command()
def train(
    ctx: typer.Context,
    dataset: Dataset,
    out: Out,
    epochs: Epochs = 10,
    init_from: InitFrom = None,
    freeze_backbone: FreezeBackbone = False,
    split_file: SplitFile = None,
    arch: Arch = None,
    width: Width = None,
    model_option: ModelOption = None,
    clip_length: ClipLength = None,
    frame_step: FrameStep = None,
    crop_size: CropSize = None,
    resize: Resize = None,
    batch_size: BatchSize = 16,
    lr: Lr = 2e-3,
    weight_decay: WeightDecay = 1e-4,
    warmup_epochs: WarmupEpochs = 1.0,
    seed: Seed = 0,
    checkpoint_every: CheckpointEvery = 50,
    limit: Limit = None,
    data_dir: DataDir = None,
    export: Export = None,
    progress: Progress = True,
) -> None:
    """Train with AdamW (warmup-cosine), validate every epoch, keep latest + best checkpoints.

    Rerunning the same command after an interruption resumes where the last
    checkpoint left off and ends with the same parameters as an uninterrupted
    run. At the end the best model (by validation accuracy) is evaluated on the
    test split and exported with models.save; its info.json records the full
    command, every setting spelled out. One JSON summary line goes to stdout.
    Bad options (out of range, an unknown or unusable --model-option, an --out,
    --export or --data-dir that cannot be written) are one-line errors before
    anything is written.
    """
    from selrel_jax.train import TrainSettings, train_and_evaluate

    settings = TrainSettings(**ctx.params)
    with one_line_warnings(), contextlib.redirect_stdout(sys.stderr):  # stdout: the summary
        summary = train_and_evaluate(
            settings, command_line=lambda resolved: command_line(ctx, vars(resolved))
        )
    typer.echo(json_line(summary))
