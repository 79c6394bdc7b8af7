"""``selrel sweep``: explain, select and score every clip of a dataset split, resumably."""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from selrel_jax.cli import app, json_line, one_line_warnings

# Literal defaults keep `selrel --help` fast (no JAX import); a test checks that they
# equal the library's (selrel_jax.sweep).
Dataset = Annotated[
    str,
    typer.Option(help="synthetic_motion(/CONFIG), folder:PATH (UCF-101 layout) or a TFDS name."),
]
Split = Annotated[
    str,
    typer.Option(
        help="Split: train, validation or test; for folder:PATH also all: every video under "
        "PATH whatever its folder (a folder named after a class labels its videos; without "
        "labels use --target predicted). The JSON line says how many videos the other "
        "splits hold (videos_left_out)."
    ),
]
Model = Annotated[str, typer.Option(help="Shipped model name or checkpoint directory.")]
Methods = Annotated[
    str | None,
    typer.Option(
        help="Relevance methods, comma-separated (e.g. lrp.epsilon_plus_flat,gradient). "
        "Default: the model's, lrp.epsilon_plus_flat for a 3D CNN, lrp.attn (AttnLRP) for "
        "a video transformer or X3D.",
        show_default=False,
    ),
]
Sigmas = Annotated[str, typer.Option(help="Selectivities, comma-separated numbers >= 0.")]
MethodOption = Annotated[
    list[str] | None,
    typer.Option(
        help="Method option as KEY=JSON, repeatable; goes to every method that takes KEY. "
        "The box rule's low/high (lrp.epsilon_gamma_box, lrp.dtd) default to the model's "
        "normalised input range.",
        metavar="KEY=JSON",
    ),
]
Target = Annotated[str, typer.Option(help="label (the dataset's class) or predicted.")]
DataSeed = Annotated[
    int | None,
    typer.Option(
        help="Generate the synthetic split afresh with this seed (unseen clips, no cache)."
    ),
]
Faithfulness = Annotated[
    bool,
    typer.Option(help="Add deletion/insertion AUCs and frame-freezing motion reliance (slower)."),
]
BatchSize = Annotated[int, typer.Option(help="Clips per jit-compiled batch and per table shard.")]
Limit = Annotated[int | None, typer.Option(help="Only the first K clips.")]
DataDir = Annotated[
    Path | None, typer.Option(help="Dataset cache (default $SELREL_DATA_DIR or ~/.cache).")
]
Out = Annotated[Path, typer.Option(help="Sweep directory: manifest.json and tables/*.parquet.")]
TemporalPadding = Annotated[
    str, typer.Option(help="edge (default: no end-frame motion) or zero (the paper's).")
]
Threshold = Annotated[str, typer.Option(help="clip (one threshold per clip) or frame.")]
MaskTolerance = Annotated[
    int,
    typer.Option(
        help="Pixels the exact motion mask is widened by in each frame for the "
        "*_tolerant_* columns (the exact-mask columns are always there)."
    ),
]
MotionMask = Annotated[
    str,
    typer.Option(
        help="Ground truth of the motion columns: exact (the dataset's mask; a folder has "
        "none, so they are NaN) or flow (each clip's Farneback optical flow, for your own "
        "videos; needs the flow extra: pip install -e '.[flow]')."
    ),
]
FlowMinFlow = Annotated[
    float,
    typer.Option(
        help="With --motion-mask flow: floor on the flow threshold in pixels per frame "
        "(0: the authors' rule, flow above its frame pair's std)."
    ),
]
Distributed = Annotated[
    bool,
    typer.Option(
        help="Call jax.distributed.initialize() first (TPU, Slurm, Open MPI detect the rest); "
        "each process writes its own shards."
    ),
]
Coordinator = Annotated[
    str | None, typer.Option(help="Multi-process without auto-detection: process 0's HOST:PORT.")
]
NumProcesses = Annotated[int | None, typer.Option(help="With --coordinator: how many processes.")]
ProcessId = Annotated[int | None, typer.Option(help="With --coordinator: this process's index.")]
Progress = Annotated[bool, typer.Option(help="Progress bar (clips/s, ETA) on stderr.")]
DecodeTimeout = Annotated[
    float,
    typer.Option(
        help="Seconds a folder video may take to decode (in a separate process) before it "
        "is listed as failed."
    ),
]


@app.command()
def sweep(
    dataset: Dataset,
    out: Out,
    split: Split = "test",
    model: Model = "c3d_small_motion",
    methods: Methods = None,
    sigmas: Sigmas = "0.5,1,2,3",
    method_option: MethodOption = None,
    target: Target = "label",
    data_seed: DataSeed = None,
    faithfulness: Faithfulness = False,
    batch_size: BatchSize = 8,
    limit: Limit = None,
    data_dir: DataDir = None,
    temporal_padding: TemporalPadding = "edge",
    threshold: Threshold = "clip",
    mask_tolerance: MaskTolerance = 1,
    motion_mask: MotionMask = "exact",
    flow_min_flow: FlowMinFlow = 0.0,
    distributed: Distributed = False,
    coordinator: Coordinator = None,
    num_processes: NumProcesses = None,
    process_id: ProcessId = None,
    decode_timeout: DecodeTimeout = 300.0,
    progress: Progress = True,
) -> None:
    """Explain, select and score every clip of DATASET's SPLIT with every method and sigma:
    one row per (clip, method, sigma) in OUT/tables/*.parquet, OUT/manifest.json beside.
    Rerun the same command after an interruption to resume; prints one JSON line. A video
    that fails to decode is counted in its "failed" and listed in the manifest, and the
    exit code stays 0: the sweep's tables are complete without that clip (selrel explain,
    whose outputs are the videos themselves, exits 2)."""
    from selrel_jax._checks import key_json_pairs
    from selrel_jax.sweep import initialize_distributed, parse_list, run_sweep

    options = key_json_pairs("--method-option", method_option or [])
    method_names = None if methods is None else parse_list("--methods", methods, str)
    sigma_values = parse_list("--sigmas", sigmas, float)
    if (
        distributed
        or coordinator is not None
        or num_processes is not None
        or process_id is not None
    ):
        initialize_distributed(coordinator, num_processes, process_id)
    with one_line_warnings(), _stdout_to_stderr():
        result = run_sweep(
            out, dataset=dataset, split=split, model=model, methods=method_names,
            sigmas=sigma_values, method_options=options, target=target, data_seed=data_seed,
            faithfulness=faithfulness, batch_size=batch_size, limit=limit, data_dir=data_dir,
            temporal_padding=temporal_padding, threshold=threshold,
            mask_tolerance=mask_tolerance, motion_mask=motion_mask, flow_min_flow=flow_min_flow,
            progress=progress, decode_timeout=decode_timeout,
        )  # fmt: skip
    typer.echo(json_line(result))


@contextlib.contextmanager
def _stdout_to_stderr():
    """Send what the sweep prints to stderr, C++ libraries' writes to file descriptor 1
    included (gloo's connection messages under jax.distributed): stdout carries only the
    result line."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        os.dup2(2, 1)
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)
