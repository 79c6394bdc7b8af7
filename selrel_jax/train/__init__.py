"""Training and evaluation of clip classifiers: optax AdamW, jit steps, orbax checkpoints.

Laid out like Flax's examples/imagenet: :func:`create_train_state` builds a
:class:`TrainState`, :func:`train_step` and :func:`eval_step` are pure functions
for ``jax.jit``, :func:`fit` is the outer loop, and :func:`train_and_evaluate`
runs a whole ``selrel train`` job on a named dataset.

Resume is exact. Everything a training step consumes is a pure function of the
run's settings and the step number, never of how many times the process was
started:

* the rows of step ``s`` are ``data.batch_indices(seed, s, n, B)``: epoch
  ``s // (n // B)``'s permutation ``default_rng([seed, epoch]).permutation(n)``
  cut into batches of ``B`` (the last partial batch of an epoch is dropped, so
  every step has the same shape and compiles once);
* the dropout key of step ``s`` is ``fold_in(key(seed), s)``;
* the optimizer state, parameters, model state, step and running epoch metrics
  are saved together by an orbax ``CheckpointManager`` (atomic: a killed save
  leaves the previous checkpoint intact).

So a run killed at any point and restarted with the same settings replays the
steps after its last checkpoint bit for bit and ends with the same parameters as
a run that was never interrupted.

Examples:
    One epoch of a tiny model on eight clips of the synthetic benchmark:

    >>> from pathlib import Path
    >>> from selrel_jax import models
    >>> from selrel_jax.data import Clips, synthetic_motion
    >>> from selrel_jax.models import ModelInfo
    >>> from selrel_jax.train import TrainConfig, fit
    >>> def clips(config, split, count):
    ...     arrays = synthetic_motion.generate_split(config, split, 0, count)
    ...     return Clips(arrays["video"], arrays["label"])
    >>> train, val = clips("tiny", "train", 8), clips("tiny", "validation", 4)
    >>> model = models.create("c3d_small", 6, width=0.25, clip_size=(8, 32, 32))
    >>> info = ModelInfo.for_arch("c3d_small", 6, width=0.25, clip_length=8,
    ...                           crop_size=(32, 32))
    >>> config = TrainConfig(epochs=1, batch_size=4)
    >>> result = fit(model, info, train, val, config=config, out_dir="runs/tiny",
    ...              progress=False)
    >>> len(result.history), 0 <= result.history[-1]["val_accuracy"] <= 1
    (1, True)
    >>> sorted(p.name for p in Path("runs/tiny").iterdir())
    ['checkpoints', 'run.json']

    Fine-tune a trained model's head on 3 classes:

    >>> import dataclasses
    >>> _, variables, info = models.load("c3d_small_motion")
    >>> model = models.create("c3d_small", 3, clip_size=info.clip_size)
    >>> train = clips("default", "train", 4)
    >>> train = Clips(train.video, train.label % 3)   # 6 classes folded onto 3
    >>> config = TrainConfig(epochs=1, batch_size=4, freeze_backbone=True)
    >>> result = fit(model, dataclasses.replace(info, num_classes=3, class_names=()), train,
    ...              train, config=config, out_dir="runs/ft", progress=False,
    ...              init_variables=variables)
    >>> result.best_variables["params"]["fc"]["kernel"].shape
    (64, 3)
"""

from selrel_jax.data import Clips, batch_indices, epoch_order
from selrel_jax.train._fit import FitResult, evaluate, fit, predict, run_identity
from selrel_jax.train._jobs import (
    TrainSettings,
    evaluate_dataset,
    parse_model_options,
    resolve_settings,
    train_and_evaluate,
)
from selrel_jax.train._run_directory import RunDirectory
from selrel_jax.train._state import (
    PRNG_IMPL,
    EpochMetrics,
    TrainConfig,
    TrainState,
    create_train_state,
    eval_step,
    initial_variables,
    make_optimizer,
    normalizer,
    train_step,
)

# The name training used before the permutation moved to selrel_jax.data.
batch_rows = batch_indices

__all__ = [
    "PRNG_IMPL",
    "Clips",
    "EpochMetrics",
    "FitResult",
    "RunDirectory",
    "TrainConfig",
    "TrainSettings",
    "TrainState",
    "batch_rows",
    "create_train_state",
    "epoch_order",
    "eval_step",
    "evaluate",
    "evaluate_dataset",
    "fit",
    "initial_variables",
    "make_optimizer",
    "normalizer",
    "parse_model_options",
    "predict",
    "resolve_settings",
    "run_identity",
    "train_and_evaluate",
    "train_step",
]
