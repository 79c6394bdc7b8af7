"""One entry point for every attribution method: :func:`explain`.

Example::

    import selrel_jax as sr
    relevance = sr.explain(model, variables, clips, method="lrp.epsilon_plus_flat")
    grads = sr.explain(lambda x: my_fn(x), None, clips, method="gradient")

For repeated calls under your own ``jax.jit`` / ``jax.vmap`` use
:func:`make_explainer`, which returns the pure function
``(variables, clips, target) -> relevance``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

# composites and gradients register their methods when imported.
from selrel_jax.attribution import composites, gradients, registry  # noqa: F401
from selrel_jax.attribution.engine import lrp
from selrel_jax.errors import DTypeError, OptionError, ShapeError

__all__ = ["GRADIENT_METHODS", "LRP_METHODS", "METHODS", "explain", "make_explainer"]

GRADIENT_METHODS: tuple[str, ...] = registry.method_names("gradient")
LRP_METHODS: tuple[str, ...] = registry.method_names("lrp")
METHODS: tuple[str, ...] = (*GRADIENT_METHODS, *LRP_METHODS)
# Options that may be arrays: handed to the jitted explainer as traced arguments.
_ARRAY_OPTIONS = ("low", "high", "baseline")


def make_explainer(model: Any, method: str = "lrp.epsilon_plus_flat", **options: Any) -> Callable:
    """The pure function ``(variables, clips, target=None) -> relevance`` of
    ``method`` (see :func:`explain`); ``variables`` is None when ``model`` is a
    plain ``apply_fn(clips) -> logits`` (gradient-family methods only)."""
    entry, merged = registry.resolve(method, options)
    if entry.family == "lrp":
        if not hasattr(model, "apply"):
            raise OptionError(
                f"{method} needs a Flax linen model and its variables; got "
                f"{type(model).__name__} (plain callables work with gradient methods)"
            )
        explainer = lrp(model, entry.build(**merged))
        return lambda variables, clips, target=None: explainer(variables, clips, target)

    def explainer(variables, clips, target=None):
        apply_fn = _apply_fn(model, variables)
        return entry.build(apply_fn, clips, target, **merged)

    return explainer


def _apply_fn(model: Any, variables: Any) -> Callable:
    if variables is None:
        if not callable(model) or hasattr(model, "apply"):
            raise OptionError(
                f"variables is None, so model must be a plain callable apply_fn(clips) -> "
                f"logits; got {type(model).__name__}"
            )
        return model
    if not hasattr(model, "apply"):
        raise OptionError(f"model with variables must have .apply; got {type(model).__name__}")
    return functools.partial(model.apply, variables)


@functools.lru_cache(maxsize=32)
def _jitted(model: Any, method: str, static: tuple) -> Callable:
    def run(variables, clips, target, arrays):
        return make_explainer(model, method, **dict(static), **arrays)(variables, clips, target)

    return jax.jit(run)


def _check_clips(clips: Any) -> jax.Array:
    shape = np.shape(clips)
    if len(shape) != 5:
        raise ShapeError(f"clips must have shape (N, T, H, W, C); got shape {shape}")
    dtype = jnp.result_type(clips)
    if not jnp.issubdtype(dtype, jnp.floating):
        raise DTypeError(f"clips must be a float array (normalised); got dtype {dtype}")
    return jnp.asarray(clips)


def _check_target(target: Any, n: int, classes: int) -> jax.Array | None:
    if target is None:
        return None
    try:
        arr = np.asarray(target)
    except jax.errors.TracerArrayConversionError:  # traced: no range check possible
        arr = target
    if arr.ndim == 0:
        raise ShapeError(f"target must have shape ({n},) (one class per clip); got a scalar")
    if arr.shape != (n,):
        raise ShapeError(f"target must have shape ({n},) (one class per clip); got {arr.shape}")
    if not jnp.issubdtype(arr.dtype, jnp.integer):
        raise DTypeError(f"target must be an int array; got dtype {arr.dtype}")
    if isinstance(arr, np.ndarray) and arr.size and (arr.min() < 0 or arr.max() >= classes):
        bad = arr[(arr < 0) | (arr >= classes)]
        raise OptionError(f"target {bad.tolist()} out of range for {classes} classes")
    return jnp.asarray(arr, jnp.int32)


def explain(
    model: Any,
    variables: Any,
    clips: Any,
    target: Any = None,
    method: str = "lrp.epsilon_plus_flat",
    **options: Any,
) -> jax.Array:
    """Relevance of ``clips`` (float (N,T,H,W,C), normalised) for ``target``
    (int (N,), None: the predicted class) under ``method``; float32 (N,T,H,W,C).

    ``model.apply(variables, clips)`` must return logits (N, classes); for the
    gradient-family methods ``model`` may instead be a plain callable
    ``apply_fn(clips) -> logits`` with ``variables=None``.

    ``method`` is one of :data:`METHODS`: the gradient family
    (:mod:`~selrel_jax.attribution.gradients`) or ``"lrp.<composite>"``
    (:mod:`~selrel_jax.attribution.composites`). ``options`` are the
    keyword-only parameters of that function, with its defaults. LRP seeds
    the one-hot target (value 1), as Zennit does.

    Example::

        rel = explain(model, variables, clips, jnp.array([3]), "lrp.epsilon_gamma_box",
                      low=-2.0, high=2.0)
    """
    entry, _ = registry.resolve(method, options)
    clips = _check_clips(clips)
    apply_fn = _apply_fn(model, variables)
    if entry.family == "lrp" and variables is None:
        raise OptionError(f"{method} needs a Flax linen model and its variables; got None")
    logits = jax.eval_shape(apply_fn, jax.ShapeDtypeStruct(clips.shape, clips.dtype))
    if len(logits.shape) != 2 or logits.shape[0] != clips.shape[0]:
        raise ShapeError(
            f"model must map clips {clips.shape} to logits (N, classes); got {logits.shape}"
        )
    target = _check_target(target, clips.shape[0], logits.shape[1])
    if variables is None:
        return make_explainer(model, method, **options)(None, clips, target)
    arrays = {
        k: jnp.asarray(v) for k, v in options.items() if k in _ARRAY_OPTIONS and v is not None
    }
    static = tuple(sorted((k, v) for k, v in options.items() if k not in _ARRAY_OPTIONS))
    try:
        run = _jitted(model, method, static)
    except TypeError:  # unhashable model or option: compile without the cache
        run = _jitted.__wrapped__(model, method, static)
    return run(variables, clips, target, arrays)
