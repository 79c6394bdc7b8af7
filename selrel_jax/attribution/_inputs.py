"""Argument checks of the relevance methods, and what they do with invalid values.

Private: :func:`~selrel_jax.attribution.explain`, the functions that
:func:`~selrel_jax.attribution.lrp` and ``make_explainer`` return, and the
gradient family use it, so they share one policy (docs/errors.md, "Errors and invalid
values"):

* Concrete arrays (an eager call) are checked value by value: rank, dtype,
  shape, NaN/Inf (:class:`NonFiniteError` with the count and the clips), target
  range; each raises a :class:`SelrelError` naming the argument.
* Traced arrays (under ``jit`` or ``vmap``) can't be: each problem becomes a
  per-clip flag (``problems``), and :func:`finish` makes every relevance value
  of a flagged clip NaN, leaving the other clips untouched. With checkify on
  (``checked=True``) it also adds ``jax.experimental.checkify`` checks.

Examples:
    >>> import jax
    >>> import jax.numpy as jnp
    >>> from selrel_jax.attribution._inputs import (
    ...     check_clips, check_target, finish, input_problems,
    ... )
    >>> clips = check_clips(jnp.ones((2, 3, 4, 4, 3)))
    >>> check_target([1, 3], clips.shape[0], classes=4)
    Array([1, 3], dtype=int32)
    >>> check_target([1, 4], clips.shape[0], classes=4)
    Traceback (most recent call last):
    ...
    selrel_jax.errors.OptionError: target [4] out of range for 4 classes

    Under ``jit`` a clip with NaN gets an all-NaN relevance, the others are kept:

    >>> @jax.jit
    ... def doubled(clips):
    ...     return finish(2 * clips, input_problems(clips, None, classes=4))
    >>> doubled(clips.at[1, 0, 0, 0, 0].set(jnp.nan))[:, 0, 0, 0, 0]
    Array([ 2., nan], dtype=float32)
"""

from __future__ import annotations

import contextvars
import functools
import operator
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import checkify

from selrel_jax._checks import as_array, as_class_index, check_finite, describe
from selrel_jax.errors import DTypeError, OptionError, ShapeError

__all__ = [
    "CHECKIFY",
    "check_clips",
    "check_finite",
    "check_logits",
    "check_option_array",
    "check_target",
    "finish",
    "input_problems",
    "per_clip",
    "traced",
]

# Set by make_explainer(checked=True) around a gradient-family call, whose
# signature holds only the method's options.
CHECKIFY: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "selrel_attribution_checkify", default=False
)


def traced(x: Any) -> bool:
    return isinstance(x, jax.core.Tracer)


def _is_real(dtype: Any) -> bool:
    return jnp.issubdtype(dtype, jnp.integer) or jnp.issubdtype(dtype, jnp.floating)


def check_clips(clips: Any, *, video: bool = True, values: bool = True) -> jax.Array:
    """Clips as a JAX array: floating, no empty axis, rank 5 (N, T, H, W, C), or
    with ``video=False`` (the LRP transform, for any model) any rank >= 1 with
    the batch first; concrete clips also finite (unless ``values=False``: a
    caller that hands them on to a check of its own)."""
    x = as_array("clips", clips)
    if (len(x.shape) != 5) if video else (len(x.shape) < 1):
        layout = "(N, T, H, W, C)" if video else "(N, ...), the batch first"
        raise ShapeError(f"clips must have shape {layout}; got {describe(x)}")
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise DTypeError(f"clips must be a float array (normalised); got dtype {x.dtype}")
    if 0 in x.shape:
        raise ShapeError(
            f"clips must hold at least one clip and no empty axis; got shape {tuple(x.shape)}"
        )
    if values and not traced(x):
        check_finite("clips", x, batched=True)
    return jnp.asarray(x)


def check_target(target: Any, n: int, classes: int) -> jax.Array | None:
    """Target classes as int32 (n,), or None; a concrete target must be in range."""
    if target is None:
        return None
    t = target if traced(target) else as_array("target", target)
    shape = tuple(np.shape(t))
    if shape != (n,):
        got = "a scalar" if not shape else str(shape)
        raise ShapeError(f"target must have shape ({n},) (one class per clip); got {got}")
    if not jnp.issubdtype(t.dtype, jnp.integer):
        raise DTypeError(f"target must be an int array; got dtype {t.dtype}")
    if not traced(t):
        t = np.asarray(t)
        bad = t[(t < 0) | (t >= classes)]
        if bad.size:
            raise OptionError(f"target {bad.tolist()} out of range for {classes} classes")
        return jnp.asarray(t, jnp.int32)
    return as_class_index(t, classes)


def check_logits(logits: Any, clips_shape: tuple[int, ...]) -> int:
    """The number of classes, after checking the model output (a ShapeDtypeStruct)
    is one floating array (N, classes)."""
    if not (hasattr(logits, "shape") and hasattr(logits, "dtype")):
        count = len(jax.tree.leaves(logits))
        raise ShapeError(
            f"the model must map clips {tuple(clips_shape)} to one logits array "
            f"(N, classes); got a {type(logits).__name__} of {count} arrays"
        )
    shape = tuple(logits.shape)
    if len(shape) != 2 or shape[0] != clips_shape[0] or shape[1] < 1:
        raise ShapeError(
            f"the model must map clips {tuple(clips_shape)} to logits (N, classes); got "
            f"shape {shape}"
        )
    if not jnp.issubdtype(logits.dtype, jnp.floating):
        raise DTypeError(f"the model's logits must be floating; got dtype {logits.dtype}")
    return shape[1]


def check_option_array(name: str, value: Any) -> jax.Array:
    """An array option (bounds, baseline): real numbers; a concrete one also
    finite (else OptionError: an option out of range)."""
    arr = value if traced(value) else as_array(name, value)
    if not _is_real(arr.dtype):
        raise OptionError(f"{name} must be a real number or array of them; got {value!r}")
    if not traced(arr):
        check_finite(name, arr, batched=False, error=OptionError)
    return jnp.asarray(arr)


def per_clip(bad: jax.Array, n: int, rank: int = 5) -> jax.Array:
    """(n,) flags from an elementwise mask: per clip if it has the clips' ``rank``
    (batch first), else one flag for all clips."""
    bad = jnp.asarray(bad)
    flags = jnp.any(bad, axis=tuple(range(1, rank))) if bad.ndim == rank else jnp.any(bad)
    return jnp.broadcast_to(flags, (n,))


def input_problems(clips: jax.Array, target: jax.Array | None, classes: int) -> dict:
    """Per-clip flags of the traced inputs (concrete ones were checked eagerly)."""
    problems = {}
    if traced(clips):
        nonfinite = per_clip(~jnp.isfinite(clips), len(clips), clips.ndim)
        problems["clips hold NaN or infinite values"] = nonfinite
    if target is not None and traced(target):
        problems[f"target out of range for {classes} classes"] = (target < 0) | (target >= classes)
    return problems


def finish(
    relevance: jax.Array, problems: Mapping[str, jax.Array], checked: bool = False
) -> jax.Array:
    """``relevance`` with every value of a flagged clip NaN; with ``checked`` (or
    :data:`CHECKIFY` set) a checkify check per problem, too."""
    if not problems:
        return relevance
    if checked or CHECKIFY.get():
        for what, bad in problems.items():
            checkify.check(~jnp.any(bad), f"{what} (flags per clip: {{}})", bad)
    invalid = functools.reduce(operator.or_, problems.values())
    invalid = jnp.reshape(invalid, invalid.shape + (1,) * (relevance.ndim - 1))
    return jnp.where(invalid, jnp.asarray(jnp.nan, relevance.dtype), relevance)
