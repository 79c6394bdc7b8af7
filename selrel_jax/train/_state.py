"""The train state and the jitted steps, as in Flax's examples/imagenet/train.py.

``create_train_state`` builds a :class:`TrainState` (parameters, optimizer state,
model state such as BatchNorm statistics, the run's key, running epoch metrics),
from random weights or from given variables; ``train_step`` and ``eval_step`` are
pure functions meant for ``jax.jit``.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct
from flax.training import train_state
from flax.traverse_util import flatten_dict, unflatten_dict

from selrel_jax._checks import integer, one_of, positive_int, real
from selrel_jax.errors import CheckpointError, OptionError
from selrel_jax.models.info import ModelInfo
from selrel_jax.models.registry import HEADS

#: XLA's RngBitGenerator: the same bits on every run of a backend, and it compiles in a
#: fraction of the time threefry needs (about 2 s instead of 20 s for a model's init here).
PRNG_IMPL = "rbg"


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Settings of a training run; a resumed run must use the same ones.

    ``checkpoint_every`` is in steps; a checkpoint is also written at the end of
    every epoch (after validation). ``freeze_backbone`` trains only the head (the
    arch's last dense layer, ``models.registry.HEADS``) of given initial variables;
    the rest runs in inference mode and keeps its parameters and BatchNorm
    statistics bit for bit.
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
    freeze_backbone: bool = False

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            value = check_config_value(field.name, getattr(self, field.name))
            object.__setattr__(self, field.name, value)


def _boolean(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise OptionError(f"{name} must be a bool; got {value!r}")
    return value


# The one place the range of each TrainConfig field is checked (TrainSettings checks its
# options with these too, under the command's flag names).
_CHECKS: dict[str, Callable[[str, Any], Any]] = {
    **dict.fromkeys(("epochs", "batch_size", "checkpoint_every", "eval_batch_size"), positive_int),
    **dict.fromkeys(("learning_rate", "grad_clip"), functools.partial(real, above=0.0)),
    **dict.fromkeys(("weight_decay", "warmup_epochs"), functools.partial(real, minimum=0.0)),
    # default_rng([seed, epoch]) orders the data: it takes no negative seeds
    "seed": functools.partial(integer, minimum=0),
    "freeze_backbone": _boolean,
}


def check_config_value(field: str, value: Any, name: str | None = None) -> Any:
    """``value`` of TrainConfig's ``field`` in canonical form, or an OptionError that
    calls it ``name`` (default ``"TrainConfig <field>"``)."""
    return _CHECKS[field](name or f"TrainConfig {field}", value)


class EpochMetrics(NamedTuple):
    """Running sums over the current epoch (saved with the state, so a resumed epoch
    reports the same numbers as an uninterrupted one)."""

    loss_sum: jax.Array  # float32: sum of the clips' cross-entropies
    correct: jax.Array  # int32
    seen: jax.Array  # int32

    @classmethod
    def zeros(cls) -> EpochMetrics:
        return cls(jnp.zeros((), jnp.float32), jnp.zeros((), jnp.int32), jnp.zeros((), jnp.int32))

    def add(self, loss: jax.Array, logits: jax.Array, label: jax.Array) -> EpochMetrics:
        """These sums plus one batch's mean ``loss`` and its ``logits`` against ``label``."""
        n = label.shape[0]
        correct = jnp.sum(jnp.argmax(logits, -1) == label).astype(jnp.int32)
        return EpochMetrics(self.loss_sum + loss * n, self.correct + correct, self.seen + n)

    def means(self) -> tuple[float, float]:
        """(mean loss, accuracy) so far, on the host; zeros before the first step."""
        seen = max(int(self.seen), 1)
        return float(self.loss_sum) / seen, int(self.correct) / seen


class TrainState(train_state.TrainState):
    """Flax's TrainState plus the model state, the run's key and the epoch metrics.

    ``head_only`` names the one top-level module that trains (the head, with a
    frozen backbone), or is None when everything trains.
    """

    model_state: Mapping[str, Any]  # non-parameter collections, e.g. batch_stats
    rng: jax.Array  # key data of the run's base key; step s uses fold_in(key, s)
    metrics: EpochMetrics
    head_only: str | None = struct.field(pytree_node=False, default=None)

    @property
    def variables(self) -> dict[str, Any]:
        """What ``model.apply`` takes: params plus the model state."""
        return {"params": self.params, **self.model_state}


def make_optimizer(
    config: TrainConfig, steps_per_epoch: int, *, train_only: str | None = None
) -> optax.GradientTransformation:
    """Global-norm clipping, then AdamW on a warmup-cosine schedule.

    Weight decay skips biases and other 1-D parameters (decaying them only
    fights the data). With ``train_only`` (a top-level module name) every other
    module gets zero updates and no optimizer state, and the clipping norm is the
    trained module's alone.
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

    optimizer = optax.chain(
        optax.clip_by_global_norm(config.grad_clip),
        optax.adamw(schedule, weight_decay=config.weight_decay, mask=decay_mask),
    )
    if train_only is None:
        return optimizer

    def labels(params: Mapping[str, Any]) -> dict[str, str]:
        return {name: "train" if name == train_only else "frozen" for name in params}

    return optax.multi_transform({"train": optimizer, "frozen": optax.set_to_zero()}, labels)


def normalizer(info: ModelInfo) -> Callable[[Any], Any]:
    """uint8 RGB clips -> the model's float input, as ``info`` prescribes (jit-friendly):
    :meth:`ModelInfo.normalize`."""
    return info.normalize


def initial_variables(
    fresh: Mapping[str, Any], given: Mapping[str, Any], head: str
) -> dict[str, Any]:
    """``given`` in the structure of ``fresh`` (a model's own init), as float arrays.

    When the head's shapes differ (another class count) the head is ``fresh``'s:
    a new, randomly initialised one. Any other missing, unexpected or misshaped
    array raises one CheckpointError listing them.
    """
    want = flatten_dict(dict(fresh))
    have = flatten_dict(jax.tree.map(np.asarray, dict(given)))

    def in_head(path: tuple[str, ...]) -> bool:
        return path[:2] == ("params", head)

    new_head = any(
        in_head(p) and (p not in have or np.shape(have[p]) != want[p].shape) for p in want
    )
    missing = sorted("/".join(p) for p in want.keys() - have.keys() if not in_head(p))
    unexpected = sorted("/".join(p) for p in have.keys() - want.keys() if not in_head(p))
    wrong = sorted(
        f"{'/'.join(p)} {np.shape(have[p])} (model: {want[p].shape})"
        for p in want.keys() & have.keys()
        if not in_head(p) and np.shape(have[p]) != want[p].shape
    )
    if missing or unexpected or wrong:
        problems = {"missing": missing, "unexpected": unexpected, "wrong shapes": wrong}
        raise CheckpointError(
            "initial variables do not fit the model: "
            + "; ".join(f"{k} {v}" for k, v in problems.items() if v)
        )
    return unflatten_dict(
        {
            p: value if new_head and in_head(p) else jnp.asarray(have[p], value.dtype)
            for p, value in want.items()
        }
    )


def create_train_state(
    model: nn.Module,
    info: ModelInfo,
    config: TrainConfig,
    steps_per_epoch: int,
    *,
    init_variables: Mapping[str, Any] | None = None,
) -> TrainState:
    """The state at step 0: random weights from ``config.seed``, or ``init_variables``.

    ``init_variables`` (e.g. from ``models.load``) are taken as they are, except a
    head of another class count, which is replaced by a fresh one (see
    :func:`initial_variables`). ``config.freeze_backbone`` then trains only the head.
    """
    head = HEADS[one_of("model arch", info.arch, HEADS)]
    if config.freeze_backbone and init_variables is None:
        raise OptionError("freeze_backbone needs init_variables: a trained backbone to keep")
    head_only = head if config.freeze_backbone else None
    tx = make_optimizer(config, steps_per_epoch, train_only=head_only)

    def init() -> Any:
        init_key, _ = jax.random.split(jax.random.key(config.seed, impl=PRNG_IMPL))
        dummy = jnp.zeros((1, *info.clip_size, 3), jnp.float32)
        return model.init({"params": init_key, "dropout": init_key}, dummy, train=False)

    # one compiled program instead of dozens of eager initialiser ops
    variables = dict(jax.jit(init)())
    if head not in variables["params"]:
        raise OptionError(f"the {info.arch} model has no head module {head!r}")
    if init_variables is not None:
        variables = initial_variables(variables, init_variables, head)
    params = variables.pop("params")

    def build(params: Any, model_state: Any) -> TrainState:
        return TrainState(
            step=jnp.zeros((), jnp.int32),
            apply_fn=model.apply,
            params=params,
            tx=tx,
            opt_state=tx.init(params),
            model_state=model_state,
            rng=jax.random.key_data(jax.random.key(config.seed, impl=PRNG_IMPL)),
            metrics=EpochMetrics.zeros(),
            head_only=head_only,
        )

    return jax.jit(build)(params, variables)


def train_step(
    state: TrainState, video: jax.Array, label: jax.Array, *, prepare: Callable[[Any], Any]
) -> TrainState:
    """One optimizer step on uint8 clips ``video`` (normalised by ``prepare``).

    Jit it with ``prepare`` bound: ``jax.jit(functools.partial(train_step,
    prepare=normalizer(info)))``. Dropout's key is ``fold_in(key, step)``. With
    ``state.head_only`` the model runs in inference mode (BatchNorm statistics stay,
    dropout is off) and every other module's parameters are carried over as they
    are rather than updated by zeros (``-0.0 + 0.0`` is ``+0.0``).
    """
    key = jax.random.fold_in(jax.random.wrap_key_data(state.rng, impl=PRNG_IMPL), state.step)
    mutable = list(state.model_state) if state.head_only is None else []

    def loss_fn(params: Any) -> tuple[jax.Array, tuple[jax.Array, Any]]:
        variables = {"params": params, **state.model_state}
        x = prepare(video)
        if state.head_only is not None:
            logits, new_model_state = state.apply_fn(variables, x, train=False), state.model_state
        elif mutable:
            logits, new_model_state = state.apply_fn(
                variables, x, train=True, rngs={"dropout": key}, mutable=mutable
            )
        else:
            logits = state.apply_fn(variables, x, train=True, rngs={"dropout": key})
            new_model_state = {}
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, label).mean()
        return loss, (logits, new_model_state)

    (loss, (logits, model_state)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    new = state.apply_gradients(
        grads=grads, model_state=dict(model_state), metrics=state.metrics.add(loss, logits, label)
    )
    if state.head_only is None:
        return new
    kept = {k: new.params[k] if k == state.head_only else v for k, v in state.params.items()}
    return new.replace(params=kept)


def eval_step(
    model: nn.Module, variables: Mapping[str, Any], video: jax.Array, *, prepare: Callable
) -> jax.Array:
    """Logits of uint8 clips ``video`` (normalised by ``prepare``), in inference mode."""
    return model.apply(variables, prepare(video), train=False)
