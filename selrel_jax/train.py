"""Training and evaluation of clip classifiers: optax AdamW, jit steps, orbax checkpoints.

Resume is exact. Everything a training step consumes is a pure function of the
run's settings and the step number, never of how many times the process was
started:

* the rows of step ``s`` are ``epoch_order(seed, epoch, n)[b*B:(b+1)*B]`` with
  ``epoch, b = divmod(s, steps_per_epoch)`` (the last partial batch of an epoch
  is dropped, so every step has the same shape and compiles once);
* the dropout key of step ``s`` is ``fold_in(key(seed), s)``;
* the optimizer state, parameters, step and running epoch metrics are saved
  together by an orbax ``CheckpointManager`` (atomic: a killed save leaves the
  previous checkpoint intact).

So a run killed at any point and restarted with the same settings replays the
steps after its last checkpoint bit for bit and ends with the same parameters as
a run that was never interrupted.

Example::

    model = selrel_jax.models.create("c3d_small", 6, clip_size=(16, 48, 48))
    info = ModelInfo.for_arch("c3d_small", 6, clip_length=16, crop_size=(48, 48))
    result = fit(model, info, Clips(train_video, train_label), Clips(val_video, val_label),
                 config=TrainConfig(epochs=10), out_dir="runs/motion")
    result.best_variables, result.history[-1]["val_accuracy"]
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp

from selrel_jax.data import normalize
from selrel_jax.errors import OptionError, SelrelError, ShapeError
from selrel_jax.models.info import ModelInfo

__all__ = [
    "Clips",
    "FitResult",
    "TrainConfig",
    "batch_rows",
    "epoch_order",
    "evaluate",
    "fit",
    "make_optimizer",
    "normalizer",
    "predict",
]


# XLA's RngBitGenerator: the same bits on every run of a backend, and it compiles in a
# fraction of the time threefry needs (about 2 s instead of 20 s for a model's init here).
PRNG_IMPL = "rbg"


class Clips(NamedTuple):
    """In-memory clips: ``video`` uint8 (N, T, H, W, 3) RGB, ``label`` int (N,)."""

    video: np.ndarray
    label: np.ndarray


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Settings of a training run; a resumed run must use the same ones.

    ``checkpoint_every`` is in steps; a checkpoint is also written at the end of
    every epoch (after validation).
    """

    epochs: int
    batch_size: int = 16
    learning_rate: float = 2e-3
    weight_decay: float = 1e-4
    warmup_epochs: float = 1.0
    grad_clip: float = 1.0
    seed: int = 0
    checkpoint_every: int = 50
    eval_batch_size: int = 64

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "checkpoint_every", "eval_batch_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise OptionError(f"TrainConfig {name} must be a positive int; got {value!r}")
        for name in ("learning_rate", "grad_clip"):
            if not getattr(self, name) > 0:
                raise OptionError(f"TrainConfig {name} must be > 0; got {getattr(self, name)!r}")
        for name in ("weight_decay", "warmup_epochs"):
            if not getattr(self, name) >= 0:
                raise OptionError(f"TrainConfig {name} must be >= 0; got {getattr(self, name)!r}")


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
    video, label = np.asarray(clips.video), np.asarray(clips.label)
    if video.ndim != 5 or video.shape[-1] != 3:
        raise ShapeError(f"{what} video must be (N, T, H, W, 3); got shape {video.shape}")
    if video.dtype != np.uint8:
        raise SelrelError(f"{what} video must be uint8; got {video.dtype}")
    if label.shape != (video.shape[0],):
        raise ShapeError(f"{what} label must be ({video.shape[0]},); got shape {label.shape}")
    if video.shape[0] == 0:
        raise ShapeError(f"{what} holds no clips")
    return Clips(video, label.astype(np.int32))


def epoch_order(seed: int, epoch: int, n: int) -> np.ndarray:
    """The order in which epoch ``epoch`` visits ``n`` training clips (a pure function)."""
    return np.random.default_rng([seed, epoch]).permutation(n)


def batch_rows(seed: int, step: int, n: int, batch_size: int) -> np.ndarray:
    """Row indices of training step ``step`` (partial last batches are dropped)."""
    steps_per_epoch = n // batch_size
    epoch, b = divmod(step, steps_per_epoch)
    return epoch_order(seed, epoch, n)[b * batch_size : (b + 1) * batch_size]


def make_optimizer(config: TrainConfig, steps_per_epoch: int) -> optax.GradientTransformation:
    """Global-norm clipping, then AdamW on a warmup-cosine schedule.

    Weight decay skips biases and other 1-D parameters (decaying them only
    fights the data).
    """
    total = config.epochs * steps_per_epoch
    warmup = min(round(config.warmup_epochs * steps_per_epoch), total - 1)
    schedule = optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=config.learning_rate,
        warmup_steps=warmup,
        decay_steps=total,
        end_value=config.learning_rate * 1e-2,
    )

    def decay_mask(params: Any) -> Any:
        return jax.tree.map(lambda p: p.ndim > 1, params)

    return optax.chain(
        optax.clip_by_global_norm(config.grad_clip),
        optax.adamw(schedule, weight_decay=config.weight_decay, mask=decay_mask),
    )


def normalizer(info: ModelInfo) -> Callable[[Any], Any]:
    """uint8 RGB clips -> the model's float input, as ``info`` prescribes (jit-friendly)."""
    return functools.partial(
        normalize,
        mean=info.mean,
        std=info.std,
        value_range=info.value_range,
        channel_order=info.channel_order,
    )


def _pad_to(x: np.ndarray, size: int) -> np.ndarray:
    if x.shape[0] == size:
        return x
    pad = np.zeros((size - x.shape[0], *x.shape[1:]), x.dtype)
    return np.concatenate([x, pad])


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
    """Logits (N, num_classes) of uint8 clips given as one array or an iterator of batches.

    Batches are padded to ``batch_size`` so the jitted forward pass compiles once.
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


_EVAL_CACHE: dict[tuple[int, str], Callable] = {}


def _eval_fn(model: nn.Module, info: ModelInfo) -> Callable:
    key = (id(model), json.dumps(info.to_dict(), sort_keys=True))
    if key not in _EVAL_CACHE:
        prepare = normalizer(info)
        _EVAL_CACHE.clear()  # one model at a time; keeps no stale models alive
        _EVAL_CACHE[key] = jax.jit(lambda v, video: model.apply(v, prepare(video), train=False))
    return _EVAL_CACHE[key]


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


# ---------------------------------------------------------------------------- state


def _init_state(
    model: nn.Module, tx: optax.GradientTransformation, clip_shape: tuple[int, ...], seed: int
) -> dict[str, Any]:
    def init() -> dict[str, Any]:
        init_key, _ = jax.random.split(jax.random.key(seed, impl=PRNG_IMPL))
        dummy = jnp.zeros((1, *clip_shape), jnp.float32)
        variables = dict(model.init({"params": init_key, "dropout": init_key}, dummy, train=False))
        params = variables.pop("params")
        return {
            "params": params,
            "model_state": variables,  # e.g. batch_stats; empty for models without BatchNorm
            "opt_state": tx.init(params),
            "step": jnp.zeros((), jnp.int32),
            "rng": jax.random.key_data(jax.random.key(seed, impl=PRNG_IMPL)),
            # running sums over the current epoch, so a resumed epoch reports the same numbers
            "epoch_loss": jnp.zeros((), jnp.float32),
            "epoch_correct": jnp.zeros((), jnp.int32),
            "epoch_seen": jnp.zeros((), jnp.int32),
        }

    # one compiled program instead of dozens of eager initialiser ops
    return jax.jit(init)()


def _variables(state: Mapping[str, Any]) -> dict[str, Any]:
    return {"params": state["params"], **state["model_state"]}


def _train_step_fn(model: nn.Module, tx: optax.GradientTransformation, info: ModelInfo) -> Callable:
    prepare = normalizer(info)

    def step_fn(state: dict[str, Any], video: jax.Array, label: jax.Array) -> dict[str, Any]:
        base_key = jax.random.wrap_key_data(state["rng"], impl=PRNG_IMPL)
        key = jax.random.fold_in(base_key, state["step"])
        mutable = list(state["model_state"])

        def loss_fn(params):
            variables = {"params": params, **state["model_state"]}
            x = prepare(video)
            if mutable:
                logits, new_model_state = model.apply(
                    variables, x, train=True, rngs={"dropout": key}, mutable=mutable
                )
            else:
                logits = model.apply(variables, x, train=True, rngs={"dropout": key})
                new_model_state = {}
            loss = optax.softmax_cross_entropy_with_integer_labels(logits, label).mean()
            return loss, (logits, new_model_state)

        (loss, (logits, new_model_state)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state["params"]
        )
        updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
        n = label.shape[0]
        return {
            "params": optax.apply_updates(state["params"], updates),
            "model_state": dict(new_model_state),
            "opt_state": opt_state,
            "step": state["step"] + 1,
            "rng": state["rng"],
            "epoch_loss": state["epoch_loss"] + loss * n,
            "epoch_correct": state["epoch_correct"]
            + jnp.sum(jnp.argmax(logits, -1) == label).astype(jnp.int32),
            "epoch_seen": state["epoch_seen"] + n,
        }

    return jax.jit(step_fn)


def _fingerprint(clips: Clips) -> str:
    """Cheap identity of a dataset: its shape, labels and a few clips."""
    h = hashlib.sha256()
    h.update(repr(clips.video.shape).encode())
    h.update(np.ascontiguousarray(clips.label).tobytes())
    for i in sorted({0, clips.video.shape[0] // 2, clips.video.shape[0] - 1}):
        h.update(np.ascontiguousarray(clips.video[i]).tobytes())
    return h.hexdigest()[:16]


def _write_json_atomic(path: Path, data: Any) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True))
    os.replace(tmp, path)


def _managers(out_dir: Path) -> tuple[ocp.CheckpointManager, ocp.CheckpointManager]:
    def manager(name: str) -> ocp.CheckpointManager:
        options = ocp.CheckpointManagerOptions(
            max_to_keep=1, enable_async_checkpointing=False, cleanup_tmp_directories=True
        )
        return ocp.CheckpointManager(
            out_dir / "checkpoints" / name, options=options, item_names=("state", "meta")
        )

    return manager("latest"), manager("best")


def _save(manager: ocp.CheckpointManager, state: Any, meta: dict[str, Any]) -> None:
    step = int(state["step"])
    if step in manager.all_steps():
        return  # written before an interruption; a replay produces the same bytes
    manager.save(
        step,
        args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)),
    )


def _restore(manager: ocp.CheckpointManager, template: Any, step: int | None = None):
    step = manager.latest_step() if step is None else step
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, template)
    restored = manager.restore(
        step,
        args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()
        ),
    )
    return restored["state"], restored["meta"]


# ---------------------------------------------------------------------------- fit


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
) -> FitResult:
    """Train ``model`` on ``train``, validating every epoch; resumes from ``out_dir``.

    ``out_dir`` receives ``run.json`` (settings; a rerun with other settings is
    refused), ``checkpoints/latest`` and ``checkpoints/best`` (orbax). Calling
    ``fit`` again on a finished run only reloads its result. ``on_step(step)``
    is called after every step (and after its checkpoint, if any).
    """
    train = _check_clips(train, "train")
    validation = _check_clips(validation, "validation")
    n = train.video.shape[0]
    if n < config.batch_size:
        raise OptionError(
            f"batch size {config.batch_size} is larger than the training set ({n} clips)"
        )
    clip_shape = tuple(int(s) for s in train.video.shape[1:])
    if clip_shape[:3] != info.clip_size:
        raise ShapeError(
            f"clips are {clip_shape[:3]} (T, H, W) but the model takes {info.clip_size}"
        )
    out = Path(out_dir).resolve()  # orbax wants absolute paths
    out.mkdir(parents=True, exist_ok=True)

    steps_per_epoch = n // config.batch_size
    total = config.epochs * steps_per_epoch
    run = {
        "config": dataclasses.asdict(config),
        "model": {k: v for k, v in info.to_dict().items() if k != "extra"},
        "train": {"n": n, "fingerprint": _fingerprint(train)},
        "validation": {"n": validation.video.shape[0], "fingerprint": _fingerprint(validation)},
    }
    run_file = out / "run.json"
    if run_file.exists():
        previous = json.loads(run_file.read_text())
        if previous != run:
            changed = sorted(k for k in run if previous.get(k) != run[k])
            raise SelrelError(
                f"{out} holds a run with other settings ({', '.join(changed)} differ); "
                "use a new --out directory or the original settings"
            )
    else:
        _write_json_atomic(run_file, run)

    tx = make_optimizer(config, steps_per_epoch)
    state = _init_state(model, tx, clip_shape, config.seed)
    latest, best = _managers(out)
    meta: dict[str, Any] = {"history": [], "train_seconds": 0.0}
    if latest.latest_step() is not None:
        state, meta = _restore(latest, state)
    step = int(state["step"])
    history: list[dict[str, Any]] = list(meta["history"])
    seconds_before = float(meta["train_seconds"])

    train_step = _train_step_fn(model, tx, info)
    from tqdm import tqdm

    started = time.perf_counter()
    session_start_step = step
    bar = tqdm(
        total=total, initial=step, unit="step", file=sys.stderr, disable=not progress,
        desc="train", dynamic_ncols=True,
    )  # fmt: skip
    try:
        while step < total:
            rows = np.sort(batch_rows(config.seed, step, n, config.batch_size))
            state = train_step(state, train.video[rows], train.label[rows])
            step += 1
            epoch_done = step % steps_per_epoch == 0
            if progress and (step % 5 == 0 or epoch_done):
                seen = int(state["epoch_seen"])
                rate = (
                    (step - session_start_step)
                    * config.batch_size
                    / (time.perf_counter() - started)
                )
                bar.set_postfix(
                    epoch=f"{(step - 1) // steps_per_epoch + 1}/{config.epochs}",
                    loss=f"{float(state['epoch_loss']) / max(seen, 1):.3f}",
                    acc=f"{int(state['epoch_correct']) / max(seen, 1):.3f}",
                    clips_s=f"{rate:.1f}",
                    refresh=False,
                )
            bar.update(1)
            elapsed = seconds_before + time.perf_counter() - started
            if epoch_done:
                seen = int(state["epoch_seen"])
                val = evaluate(
                    model, _variables(state), info, validation, batch_size=config.eval_batch_size
                )
                record = {
                    "epoch": step // steps_per_epoch,
                    "step": step,
                    "train_loss": float(state["epoch_loss"]) / seen,
                    "train_accuracy": int(state["epoch_correct"]) / seen,
                    "val_loss": val["loss"],
                    "val_accuracy": val["accuracy"],
                    "seconds": round(seconds_before + time.perf_counter() - started, 1),
                }
                history.append(record)
                bar.write(
                    "epoch {epoch}: train loss {train_loss:.4f} acc {train_accuracy:.4f} | "
                    "val loss {val_loss:.4f} acc {val_accuracy:.4f}".format(**record),
                    file=sys.stderr,
                )
                state = {
                    **state,
                    "epoch_loss": jnp.zeros((), jnp.float32),
                    "epoch_correct": jnp.zeros((), jnp.int32),
                    "epoch_seen": jnp.zeros((), jnp.int32),
                }
                elapsed = seconds_before + time.perf_counter() - started
                meta = {"history": history, "train_seconds": elapsed}
                # best first: if killed between the two saves, the replayed epoch
                # finds its best checkpoint already written
                best_so_far = max((h["val_accuracy"] for h in history[:-1]), default=-1.0)
                if record["val_accuracy"] >= best_so_far:
                    _save(best, state, meta)
                _save(latest, state, meta)
            elif step % config.checkpoint_every == 0:
                _save(latest, state, {"history": history, "train_seconds": elapsed})
            if on_step is not None:
                on_step(step)
    finally:
        bar.close()
        latest.wait_until_finished()
        best.wait_until_finished()

    best_state, best_meta = _restore(best, state)
    best_epoch = int(best_state["step"]) // steps_per_epoch
    final_seconds = float(meta["train_seconds"])
    latest.close()
    best.close()
    return FitResult(
        best_variables=jax.device_get(_variables(best_state)),
        final_variables=jax.device_get(_variables(state)),
        history=history,
        best_epoch=best_epoch,
        best_val_accuracy=float(best_meta["history"][best_epoch - 1]["val_accuracy"]),
        train_seconds=final_seconds,
    )
