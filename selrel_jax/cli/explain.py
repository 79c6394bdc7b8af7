"""``selrel explain``: videos in, relevance pictures, an overlay video and scores out."""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import Annotated

import typer

from selrel_jax.cli import app, json_line, one_line_warnings
from selrel_jax.cli._names import METHODS, video_formats

# Literal defaults keep `selrel --help` fast (no JAX import); a test checks that they
# equal the library's (selrel_jax.video_explanation).
Videos = Annotated[
    list[Path] | None,
    typer.Argument(
        help=f"Video files ({video_formats()}, gif: any file FFmpeg reads) or folders of "
        "frames (png, jpg); none: the bundled sample clip.",
        metavar="VIDEO",
        show_default=False,
    ),
]
Model = Annotated[str, typer.Option(help="Shipped model name or checkpoint directory.")]
Method = Annotated[
    str | None,
    typer.Option(
        help=f"Relevance method: {', '.join(METHODS)}. Default: the model's, "
        "lrp.epsilon_plus_flat for a 3D CNN, lrp.attn (AttnLRP) for a video transformer or X3D.",
        show_default=False,
    ),
]
MethodOption = Annotated[
    list[str] | None,
    typer.Option(
        help="Method option as KEY=JSON, repeatable (e.g. epsilon=0.25). The box rule's "
        "low/high (lrp.epsilon_gamma_box, lrp.dtd) default to the model's normalised input range.",
        metavar="KEY=JSON",
    ),
]
Sigma = Annotated[float, typer.Option(help="Selectivity: keep |D| > sigma * std(|D|).")]
TemporalPadding = Annotated[
    str,
    typer.Option(
        help="zero (the paper) or edge. Default edge: overlapping windows would make every "
        "window's first and last frame look like motion under zero padding."
    ),
]
Threshold = Annotated[str, typer.Option(help="clip (one threshold per window) or frame.")]
WindowBlend = Annotated[
    str,
    typer.Option(
        help="How overlapping windows make each frame's maps: mean, or taper (each frame "
        "weighted by its distance from its window's edges; docs/explain.md measures both)."
    ),
]
Target = Annotated[
    str,
    typer.Option(
        help="predicted (the video's prediction), a class index or a class name; index:N "
        "or name:X where class names are numbers (a bare number that names another class "
        "is refused as ambiguous)."
    ),
]
ClipStride = Annotated[
    int | None,
    typer.Option(help="Sampled frames between window starts (default: half the clip length)."),
]
BatchSize = Annotated[int, typer.Option(help="Windows per jit-compiled batch.")]
Out = Annotated[Path, typer.Option(help="Output folder; each video writes OUT/<video-stem>/.")]
Overwrite = Annotated[
    bool,
    typer.Option(
        help="Replace existing outputs (only folders selrel explain wrote, unchanged: any "
        "other is refused). Without it an output of the same video and settings "
        "is kept (a rerun resumes) and one of other settings is an error."
    ),
]
DecodeTimeout = Annotated[
    float,
    typer.Option(
        help="Seconds a video may take to decode (in a separate process) before it is "
        "reported as failed."
    ),
]
SaveArrays = Annotated[
    bool, typer.Option(help="Also write relevance.npz (per-frame maps, clip logits, scores).")
]
Progress = Annotated[bool, typer.Option(help="Progress bars on stderr.")]


@app.command()
def explain(
    videos: Videos = None,
    model: Model = "c3d_small_motion",
    method: Method = None,
    method_option: MethodOption = None,
    sigma: Sigma = 1.0,
    temporal_padding: TemporalPadding = "edge",
    threshold: Threshold = "clip",
    window_blend: WindowBlend = "mean",
    target: Target = "predicted",
    clip_stride: ClipStride = None,
    batch_size: BatchSize = 8,
    out: Out = Path("selrel_out"),
    overwrite: Overwrite = False,
    save_arrays: SaveArrays = False,
    decode_timeout: DecodeTimeout = 300.0,
    progress: Progress = True,
) -> None:
    """Explain each VIDEO: what the model predicted, where its relevance was, and which part
    of it was motion. Writes OUT/<stem>/overlay.mp4, filmstrip.png, timeline.png and
    summary.json; prints one JSON line per video. A bad video is reported and the others
    still run; the exit code is 2 if any failed. Rerun after an interruption, it keeps
    the outputs already written and explains the rest."""
    from selrel_jax._checks import key_json_pairs
    from selrel_jax.cli import ERROR_EXIT_CODE
    from selrel_jax.explanation_files import explain_files

    failed = False
    stdout = sys.stdout  # one JSON line per video; everything else goes to stderr
    with one_line_warnings(), contextlib.redirect_stdout(sys.stderr):
        results = explain_files(
            videos or [], model=model, out=out, overwrite=overwrite, save_arrays=save_arrays,
            progress=progress, target=target, decode_timeout=decode_timeout,
            method_options=key_json_pairs("--method-option", method_option or []),
            method=method, sigma=sigma, temporal_padding=temporal_padding,
            threshold=threshold, window_blend=window_blend, clip_stride=clip_stride,
            batch_size=batch_size,
        )  # fmt: skip
        for video, record in results:
            if isinstance(record, Exception):
                failed = True
                typer.echo(f"selrel: error: {video}: {record}", err=True)
            else:
                print(json_line(record), file=stdout, flush=True)
    if failed:
        raise typer.Exit(ERROR_EXIT_CODE)
