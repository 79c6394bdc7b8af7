"""``fit``: the training loop, plus ``predict`` and ``evaluate`` on labelled clips."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import flax.linen as nn
import jax
import numpy as np

from selrel_jax.data import Clips, batch_indices
from selrel_jax.errors import DTypeError, OptionError, ShapeError
from selrel_jax.models.info import ModelInfo
from selrel_jax.train._run_directory import RunDirectory
from selrel_jax.train._state import (
    EpochMetrics,
    TrainConfig,
    TrainState,
    create_train_state,
    eval_step,
    normalizer,
    train_step,
)


@dataclasses.dataclass
class FitResult:
    """What :func:`fit` returns: the best variables (by validation accuracy) and the log."""

    best_variables: dict[str, Any]
    final_variables: dict[str, Any]
    history: list[dict[str, Any]]
    best_epoch: int
    best_val_accuracy: float
    train_seconds: float


def _check_clips(clips: Clips, what: str) -> Clips:
    """``clips`` with int32 labels; the video may be an array-like decoded on demand."""
    video, label = clips.video, np.asarray(clips.label)
    if not (hasattr(video, "shape") and hasattr(video, "dtype")):
        video = np.asarray(video)
    shape = tuple(video.shape)
    if len(shape) != 5 or shape[-1] != 3:
        raise ShapeError(f"{what} video must be (N, T, H, W, 3); got shape {shape}")
    if np.dtype(video.dtype) != np.uint8:
        raise DTypeError(f"{what} video must be uint8; got {video.dtype}")
    if label.shape != (shape[0],):
        raise ShapeError(f"{what} label must be ({shape[0]},); got shape {label.shape}")
    if shape[0] == 0:
        raise ShapeError(f"{what} holds no clips")
    return Clips(video, label.astype(np.int32))


def _pad_to(x: np.ndarray, size: int) -> np.ndarray:
    if x.shape[0] == size:
        return x
    pad = np.zeros((size - x.shape[0], *x.shape[1:]), x.dtype)
    return np.concatenate([x, pad])


_EVAL_CACHE: dict[tuple[int, str], Callable] = {}


def _eval_fn(model: nn.Module, info: ModelInfo) -> Callable:
    key = (id(model), json.dumps(info.to_dict(), sort_keys=True))
    if key not in _EVAL_CACHE:
        _EVAL_CACHE.clear()  # one model at a time; keeps no stale models alive
        _EVAL_CACHE[key] = jax.jit(functools.partial(eval_step, model, prepare=normalizer(info)))
    return _EVAL_CACHE[key]


def predict(
    model: nn.Module,
    variables: Mapping[str, Any],
    info: ModelInfo,
    batches: Iterator[np.ndarray] | Clips,
    *,
    batch_size: int = 64,
    progress: bool = False,
    total: int | None = None,
) -> np.ndarray:
    """Logits (N, num_classes) of uint8 clips given as Clips or an iterator of batches.

    Batches are padded to ``batch_size`` so the jitted forward pass compiles once;
    Clips whose video decodes on demand are read one batch at a time.
    """
    from tqdm import tqdm

    apply = _eval_fn(model, info)
    if isinstance(batches, Clips):
        clips = batches.video
        total = clips.shape[0]
        batches = (clips[i : i + batch_size] for i in range(0, total, batch_size))
    out = []
    with tqdm(total=total, unit="clip", file=sys.stderr, disable=not progress, desc="eval") as bar:
        for video in batches:
            n = video.shape[0]
            for i in range(0, n, batch_size):
                chunk = np.asarray(video[i : i + batch_size])
                logits = apply(variables, _pad_to(chunk, batch_size))
                out.append(np.asarray(logits)[: chunk.shape[0]])
                bar.update(chunk.shape[0])
    if not out:
        raise ShapeError("predict got no clips")
    return np.concatenate(out)


def evaluate(
    model: nn.Module,
    variables: Mapping[str, Any],
    info: ModelInfo,
    clips: Clips,
    *,
    batch_size: int = 64,
    progress: bool = False,
) -> dict[str, float]:
    """Accuracy, mean cross-entropy and count of ``model`` on ``clips``."""
    clips = _check_clips(clips, "evaluate")
    logits = predict(model, variables, info, clips, batch_size=batch_size, progress=progress)
    logits = logits.astype(np.float64)
    top = logits.max(-1)
    log_norm = top + np.log(np.exp(logits - top[:, None]).sum(-1))
    loss = log_norm - np.take_along_axis(logits, clips.label[:, None], -1)[:, 0]
    correct = int(np.sum(np.argmax(logits, -1) == clips.label))
    n = int(clips.label.shape[0])
    return {"accuracy": correct / n, "loss": float(loss.mean()), "n": n}


# ---------------------------------------------------------------------------- identity


def _clips_fingerprint(clips: Clips) -> str:
    """Cheap identity of a dataset: its shape, labels and a few clips."""
    h = hashlib.sha256()
    h.update(repr(tuple(clips.video.shape)).encode())
    h.update(np.ascontiguousarray(clips.label).tobytes())
    for i in sorted({0, clips.video.shape[0] // 2, clips.video.shape[0] - 1}):
        h.update(np.ascontiguousarray(clips.video[i]).tobytes())
    return h.hexdigest()[:16]


def _variables_fingerprint(variables: Mapping[str, Any]) -> str:
    """Identity of a set of variables: every path, shape, dtype and byte."""
    h = hashlib.sha256()
    leaves = jax.tree_util.tree_flatten_with_path(dict(variables))[0]
    for path, leaf in sorted(leaves, key=lambda item: jax.tree_util.keystr(item[0])):
        array = np.ascontiguousarray(leaf)
        h.update(f"{jax.tree_util.keystr(path)} {array.shape} {array.dtype}".encode())
        h.update(array.tobytes())
    return h.hexdigest()[:16]


def _module_settings(model: nn.Module) -> dict[str, Any]:
    """The module's class and dataclass fields (width, channels, stem_stride...)."""
    fields = {
        f.name: getattr(model, f.name)
        for f in dataclasses.fields(model)
        if f.name not in ("parent", "name")
    }
    return {"module": type(model).__name__, **json.loads(json.dumps(fields, default=str))}


def run_identity(
    model: nn.Module,
    info: ModelInfo,
    train: Clips,
    validation: Clips,
    config: TrainConfig,
    init_variables: Mapping[str, Any] | None = None,
    identity: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Everything that makes two runs the same run (what ``run.json`` records).

    The model's configuration (module fields, and the metadata without ``extra``:
    classes, clip size, normalisation), every training setting, the data (size,
    labels, a few clips), the initial variables' bytes, and the caller's
    ``identity`` (e.g. the dataset's name and the checkpoint it started from).
    """
    info_dict = info.to_dict()
    info_dict.pop("extra")
    return {
        "config": dataclasses.asdict(config),
        "model": _module_settings(model),
        "info": info_dict,
        "train": {"n": len(train.label), "fingerprint": _clips_fingerprint(train)},
        "validation": {"n": len(validation.label), "fingerprint": _clips_fingerprint(validation)},
        "init": None if init_variables is None else _variables_fingerprint(init_variables),
        "run": dict(identity or {}),
    }


# ---------------------------------------------------------------------------- fit


class _Progress:
    """The run's tqdm bar on stderr: epoch, running loss and accuracy, clips/s."""

    def __init__(self, total: int, step: int, steps_per_epoch: int, config: TrainConfig,
                 enabled: bool):  # fmt: skip
        from tqdm import tqdm

        self.steps_per_epoch, self.config, self.enabled = steps_per_epoch, config, enabled
        self.first_step, self.started = step, time.perf_counter()
        self.bar = tqdm(total=total, initial=step, unit="step", file=sys.stderr,
                        disable=not enabled, desc="train", dynamic_ncols=True)  # fmt: skip

    def update(self, step: int, metrics: EpochMetrics) -> None:
        if self.enabled and (step % 5 == 0 or step % self.steps_per_epoch == 0):
            loss, accuracy = metrics.means()
            seconds = time.perf_counter() - self.started
            self.bar.set_postfix(
                epoch=f"{(step - 1) // self.steps_per_epoch + 1}/{self.config.epochs}",
                loss=f"{loss:.3f}",
                acc=f"{accuracy:.3f}",
                clips_s=f"{(step - self.first_step) * self.config.batch_size / seconds:.1f}",
                refresh=False,
            )
        self.bar.update(1)

    def write(self, record: Mapping[str, Any]) -> None:
        self.bar.write(
            "epoch {epoch}: train loss {train_loss:.4f} acc {train_accuracy:.4f} | "
            "val loss {val_loss:.4f} acc {val_accuracy:.4f}".format(**record),
            file=sys.stderr,
        )

    def close(self) -> None:
        self.bar.close()


def _steps_per_epoch(train: Clips, info: ModelInfo, config: TrainConfig) -> int:
    n = train.video.shape[0]
    if n < config.batch_size:
        raise OptionError(
            f"batch size {config.batch_size} is larger than the training set ({n} clips)"
        )
    if tuple(train.video.shape[1:4]) != info.clip_size:
        raise ShapeError(
            f"clips are {tuple(train.video.shape[1:4])} (T, H, W) but the model takes "
            f"{info.clip_size}"
        )
    return n // config.batch_size


def _epoch_record(
    model: nn.Module, info: ModelInfo, validation: Clips, config: TrainConfig,
    state: TrainState, steps_per_epoch: int, seconds: float,
) -> dict[str, Any]:  # fmt: skip
    """The history entry of the epoch that ``state`` just finished."""
    val = evaluate(model, state.variables, info, validation, batch_size=config.eval_batch_size)
    train_loss, train_accuracy = state.metrics.means()
    step = int(state.step)
    return {
        "epoch": step // steps_per_epoch,
        "step": step,
        "train_loss": train_loss,
        "train_accuracy": train_accuracy,
        "val_loss": val["loss"],
        "val_accuracy": val["accuracy"],
        "seconds": round(seconds, 1),
    }


# The outer loop of `selrel train`, like Flax's train_and_evaluate: one place reads the
# order of a run (claim, restore, epochs, evaluate, save); each step is its own function.
def fit(
    model: nn.Module,
    info: ModelInfo,
    train: Clips,
    validation: Clips,
    *,
    config: TrainConfig,
    out_dir: str | os.PathLike,
    progress: bool = True,
    on_step: Callable[[int], None] | None = None,
    init_variables: Mapping[str, Any] | None = None,
    identity: Mapping[str, Any] | None = None,
) -> FitResult:
    """Train ``model`` on ``train``, validating every epoch; resumes from ``out_dir``.

    ``out_dir`` receives ``run.json`` (:func:`run_identity`; a rerun with other
    settings is refused, naming them), ``checkpoints/latest`` and
    ``checkpoints/best`` (orbax). Calling ``fit`` again on a finished run only
    reloads its result. ``init_variables`` start from trained weights (see
    :func:`create_train_state`); ``identity`` adds the caller's facts to run.json.
    ``on_step(step)`` is called after every step (and after its checkpoint, if any).
    """
    train, validation = _check_clips(train, "train"), _check_clips(validation, "validation")
    steps_per_epoch = _steps_per_epoch(train, info, config)
    total, n = config.epochs * steps_per_epoch, train.video.shape[0]
    # before run.json is claimed, so that bad initial variables leave no run behind
    state = create_train_state(model, info, config, steps_per_epoch, init_variables=init_variables)
    step_fn = jax.jit(functools.partial(train_step, prepare=normalizer(info)))
    # The loop is the order of events of a resumable run, kept in one place: the step,
    # the epoch's validation and history, then the checkpoints (best before latest).
    identity = run_identity(model, info, train, validation, config, init_variables, identity)
    with RunDirectory(out_dir, identity) as run:
        state, meta = run.restore_latest(state) or (state, {"history": [], "train_seconds": 0.0})
        history, started, step = list(meta["history"]), time.perf_counter(), int(state.step)

        def elapsed(before: float = float(meta["train_seconds"])) -> float:
            return before + time.perf_counter() - started

        bar = _Progress(total, step, steps_per_epoch, config, progress)
        try:
            while step < total:
                rows = np.sort(batch_indices(config.seed, step, n, config.batch_size))
                state = step_fn(state, train.video[rows], train.label[rows])
                step += 1
                bar.update(step, state.metrics)
                if step % steps_per_epoch == 0:
                    record = _epoch_record(
                        model, info, validation, config, state, steps_per_epoch, elapsed()
                    )
                    history.append(record)
                    bar.write(record)
                    state = state.replace(metrics=EpochMetrics.zeros())
                    meta = {"history": history, "train_seconds": elapsed()}
                    # best first: if killed between the two saves, the replayed epoch
                    # finds its best checkpoint already written
                    best_before = max((h["val_accuracy"] for h in history[:-1]), default=-1.0)
                    if record["val_accuracy"] >= best_before:
                        run.save_best(state, meta)
                    run.save_latest(state, meta)
                elif step % config.checkpoint_every == 0:
                    run.save_latest(state, {"history": history, "train_seconds": elapsed()})
                if on_step is not None:
                    on_step(step)
        finally:
            bar.close()
        best_state, best_meta = run.restore_best(state)
    best_epoch = int(best_state.step) // steps_per_epoch
    return FitResult(
        best_variables=jax.device_get(best_state.variables),
        final_variables=jax.device_get(state.variables),
        history=history,
        best_epoch=best_epoch,
        best_val_accuracy=float(best_meta["history"][best_epoch - 1]["val_accuracy"]),
        train_seconds=float(meta["train_seconds"]),
    )
