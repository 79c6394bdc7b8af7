"""``selrel train``: train a clip classifier on a dataset, resumably, and export the best model."""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path
from typing import Annotated

import typer

from selrel_jax.cli import app, fail


def _parse_options(pairs: list[str]) -> dict:
    """``KEY=VALUE`` pairs -> ``models.create`` kwargs; values are JSON, lists become tuples."""
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            fail(f"--model-option must be KEY=VALUE; got {pair!r}")
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError:
            fail(f"--model-option {key}: value must be JSON (e.g. [8,16,32,64]); got {value!r}")
        out[key] = tuple(parsed) if isinstance(parsed, list) else parsed
    return out


@app.command()
def train(
    dataset: Annotated[
        str, typer.Option(help="synthetic_motion or synthetic_motion/<config> (e.g. /biased).")
    ],
    out: Annotated[Path, typer.Option(help="Run directory: settings, checkpoints, model.")],
    epochs: Annotated[int, typer.Option(help="Training epochs.")] = 10,
    arch: Annotated[str, typer.Option(help="Model architecture (models.create).")] = "c3d_small",
    width: Annotated[float, typer.Option(help="Channel width multiplier.")] = 1.0,
    model_option: Annotated[
        list[str] | None,
        typer.Option(help="Extra models.create keyword as KEY=JSON, repeatable."),
    ] = None,
    batch_size: Annotated[int, typer.Option(help="Clips per training step.")] = 16,
    lr: Annotated[float, typer.Option(help="Peak learning rate (AdamW).")] = 2e-3,
    weight_decay: Annotated[float, typer.Option(help="AdamW weight decay (not on biases).")] = 1e-4,
    warmup_epochs: Annotated[float, typer.Option(help="Linear warmup, then cosine decay.")] = 1.0,
    seed: Annotated[int, typer.Option(help="Seed of initialisation, data order and dropout.")] = 0,
    checkpoint_every: Annotated[
        int, typer.Option(help="Also checkpoint every this many steps (always per epoch).")
    ] = 50,
    limit: Annotated[
        int | None, typer.Option(help="Use only the first K clips of each split (quick runs).")
    ] = None,
    data_dir: Annotated[
        Path | None, typer.Option(help="Dataset cache (default $SELREL_DATA_DIR or ~/.cache).")
    ] = None,
    export: Annotated[
        Path | None, typer.Option(help="Where to export the best model (default OUT/model).")
    ] = None,
    progress: Annotated[bool, typer.Option(help="Progress bar on stderr.")] = True,
) -> None:
    """Train with AdamW (warmup-cosine), validate every epoch, keep latest + best checkpoints.

    Rerunning the same command after an interruption resumes where the last
    checkpoint left off and ends with the same parameters as an uninterrupted
    run. At the end the best model (by validation accuracy) is evaluated on the
    test split and exported with models.save; one JSON summary line goes to
    stdout.
    """
    from selrel_jax.errors import SelrelError

    # every setting spelled out, so the recorded command reproduces the run exactly
    words = ["selrel", "train", "--dataset", dataset, "--out", str(out), "--epochs", str(epochs),
             "--arch", arch, "--width", str(width)]  # fmt: skip
    for option in model_option or []:
        words += ["--model-option", option]
    words += ["--batch-size", str(batch_size), "--lr", str(lr), "--weight-decay",
              str(weight_decay), "--warmup-epochs", str(warmup_epochs), "--seed", str(seed),
              "--checkpoint-every", str(checkpoint_every)]  # fmt: skip
    for flag, value in (("--limit", limit), ("--data-dir", data_dir), ("--export", export)):
        if value is not None:
            words += [flag, str(value)]
    command = shlex.join(words)
    try:
        summary = _train(
            dataset=dataset, out=out, epochs=epochs, arch=arch, width=width,
            model_kwargs=_parse_options(model_option or []), batch_size=batch_size, lr=lr,
            weight_decay=weight_decay, warmup_epochs=warmup_epochs, seed=seed,
            checkpoint_every=checkpoint_every, limit=limit, data_dir=data_dir, export=export,
            progress=progress, command=command,
        )  # fmt: skip
    except SelrelError as e:
        fail(str(e))
    typer.echo(json.dumps(summary))


def _train(*, dataset, out, epochs, arch, width, model_kwargs, batch_size, lr, weight_decay,
           warmup_epochs, seed, checkpoint_every, limit, data_dir, export, progress,
           command) -> dict:  # fmt: skip
    import contextlib
    import dataclasses

    from selrel_jax import models
    from selrel_jax.cli.evaluate import load_clips
    from selrel_jax.errors import OptionError
    from selrel_jax.train import TrainConfig, evaluate, fit

    if limit is not None and limit < 1:
        raise OptionError(f"--limit must be >= 1; got {limit}")
    config = TrainConfig(
        epochs=epochs, batch_size=batch_size, learning_rate=lr, weight_decay=weight_decay,
        warmup_epochs=warmup_epochs, seed=seed, checkpoint_every=checkpoint_every,
    )  # fmt: skip
    with contextlib.redirect_stdout(sys.stderr):  # stdout carries only the summary
        splits = {
            s: load_clips(dataset, s, data_dir=data_dir, limit=limit, progress=progress)
            for s in ("train", "validation", "test")
        }
        train_clips, class_names = splits["train"]
        t, h, w = train_clips.video.shape[1:4]
        model = models.create(
            arch, len(class_names), width=width, clip_size=(t, h, w), **model_kwargs
        )
        extra = {"dataset": dataset, "command": command, "train_config": dataclasses.asdict(config)}
        if model_kwargs:
            extra["model_kwargs"] = dict(model_kwargs)
        info = models.ModelInfo.for_arch(
            arch, len(class_names), class_names=class_names, width=width, clip_length=t,
            crop_size=(h, w), extra=extra,
        )  # fmt: skip
        result = fit(
            model, info, train_clips, splits["validation"][0],
            config=config, out_dir=out, progress=progress,
        )  # fmt: skip
        test = evaluate(model, result.best_variables, info, splits["test"][0], progress=progress)
        summary = {
            "best_epoch": result.best_epoch,
            "val_accuracy": result.best_val_accuracy,
            "test_accuracy": test["accuracy"],
            "test_n": test["n"],
            "train_seconds": round(result.train_seconds, 1),
            "history": result.history,
        }
        info = models.ModelInfo.from_dict({**info.to_dict(), "extra": {**extra, **summary}})
        target = models.save(export if export is not None else out / "model", info,
                             result.best_variables)  # fmt: skip
        print(
            f"best epoch {result.best_epoch}: val {result.best_val_accuracy:.4f}, "
            f"test {test['accuracy']:.4f}; exported to {target}"
        )
    return {k: v for k, v in summary.items() if k != "history"} | {"model": str(target)}
