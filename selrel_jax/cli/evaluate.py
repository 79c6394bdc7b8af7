"""``selrel evaluate``: accuracy of a model on a dataset split, as one JSON line on stdout."""

from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from selrel_jax.cli import app, fail

SYNTHETIC = "synthetic_motion"


def load_clips(
    dataset: str,
    split: str,
    *,
    data_dir: Path | None = None,
    limit: int | None = None,
    data_seed: int | None = None,
    progress: bool = False,
):
    """Clips of ``dataset``'s ``split`` in memory -> ``(Clips(video, label), class_names)``.

    ``video`` is uint8 (N, T, H, W, 3), ``label`` int32 (N,). ``data_seed``
    generates a synthetic_motion split procedurally with that seed instead of
    reading the cached dataset; ``limit`` keeps the first K clips.
    """
    import numpy as np
    from tqdm import tqdm

    from selrel_jax import data
    from selrel_jax.data import synthetic_motion
    from selrel_jax.errors import OptionError
    from selrel_jax.train import Clips

    if limit is not None and limit < 1:
        raise OptionError(f"--limit must be >= 1; got {limit}")
    base, _, config = dataset.partition("/")
    if data_seed is not None:
        if base != SYNTHETIC:
            raise OptionError(f"--data-seed works only with {SYNTHETIC}[/config]; got {dataset!r}")
        cfg = synthetic_motion.get_config(config or "default")
        if split not in synthetic_motion.SPLITS:
            raise OptionError(
                f"unknown split {split!r}; expected one of {list(synthetic_motion.SPLITS)}"
            )
        count = cfg.split_sizes[split] if limit is None else limit
        if progress:
            print(f"generating {count} {dataset} {split} clips, seed {data_seed}", file=sys.stderr)
        arrays = synthetic_motion.generate_split(cfg, split, data_seed, count)
        return Clips(arrays["video"], arrays["label"]), synthetic_motion.CLASS_NAMES
    source = data.load_source(dataset, split, data_dir=data_dir)
    n = len(source) if limit is None else min(limit, len(source))
    if n == 0:
        raise OptionError(f"dataset {dataset!r} split {split!r} is empty")
    first = source[0]
    video = np.empty((n, *np.shape(first["video"])), np.uint8)
    label = np.empty((n,), np.int32)
    for i in tqdm(range(n), desc=f"read {split}", unit="clip", file=sys.stderr,
                  disable=not progress, leave=False):  # fmt: skip
        example = source[i]
        video[i], label[i] = example["video"], example["label"]
    if base == SYNTHETIC:
        names = synthetic_motion.CLASS_NAMES
    else:
        from selrel_jax.models import numeric_class_names

        names = numeric_class_names(int(label.max()) + 1)
    return Clips(video, label), names


@app.command()
def evaluate(
    model: Annotated[str, typer.Option(help="Shipped model name or checkpoint directory.")],
    dataset: Annotated[str, typer.Option(help="Dataset name, e.g. synthetic_motion/biased.")],
    split: Annotated[str, typer.Option(help="Split: train, validation or test.")] = "test",
    data_seed: Annotated[
        int | None,
        typer.Option(help="Generate the synthetic split afresh with this seed (unseen clips)."),
    ] = None,
    limit: Annotated[int | None, typer.Option(help="Evaluate only the first K clips.")] = None,
    data_dir: Annotated[
        Path | None, typer.Option(help="Dataset cache (default $SELREL_DATA_DIR or ~/.cache).")
    ] = None,
    batch_size: Annotated[int, typer.Option(help="Clips per forward pass.")] = 64,
    progress: Annotated[bool, typer.Option(help="Progress bar on stderr.")] = True,
) -> None:
    """Print {"accuracy", "n", ...} of MODEL on DATASET's SPLIT as one JSON line on stdout."""
    from selrel_jax.errors import SelrelError

    try:
        with contextlib.redirect_stdout(sys.stderr):  # stdout carries only the result
            result = _evaluate(model, dataset, split, data_seed, limit, data_dir, batch_size,
                               progress)  # fmt: skip
    except SelrelError as e:
        fail(str(e))
    typer.echo(json.dumps(result))


def _check_clip_size(size, info, dataset, model_name) -> None:
    from selrel_jax.errors import ShapeError

    if tuple(size) != info.clip_size:
        raise ShapeError(
            f"{dataset} clips are {tuple(size)} (T, H, W) but model {model_name!r} takes "
            f"{info.clip_size}"
        )


def _evaluate(model_name, dataset, split, data_seed, limit, data_dir, batch_size, progress):
    import numpy as np

    from selrel_jax import models
    from selrel_jax.data import synthetic_motion
    from selrel_jax.errors import OptionError
    from selrel_jax.train import evaluate

    if batch_size < 1:
        raise OptionError(f"--batch-size must be >= 1; got {batch_size}")
    if limit is not None and limit < 1:
        raise OptionError(f"--limit must be >= 1; got {limit}")
    model, variables, info = models.load(model_name)
    if data_seed is not None and dataset.partition("/")[0] == SYNTHETIC:
        # refuse a mismatch before spending time generating clips
        cfg = synthetic_motion.get_config(dataset.partition("/")[2] or "default")
        _check_clip_size((cfg.frames, cfg.height, cfg.width), info, dataset, model_name)
    clips, _ = load_clips(
        dataset, split, data_dir=data_dir, limit=limit, data_seed=data_seed, progress=progress
    )
    video, label = clips
    _check_clip_size(tuple(video.shape[1:4]), info, dataset, model_name)
    if int(np.max(label)) >= info.num_classes:
        raise OptionError(
            f"{dataset} has labels up to {int(np.max(label))} but model {model_name!r} "
            f"has {info.num_classes} classes"
        )
    metrics = evaluate(model, variables, info, clips, batch_size=batch_size, progress=progress)
    result = {
        "accuracy": metrics["accuracy"],
        "n": metrics["n"],
        "loss": metrics["loss"],
        "model": model_name,
        "dataset": dataset,
        "split": split,
    }
    if data_seed is not None:
        result["data_seed"] = data_seed
    return result
