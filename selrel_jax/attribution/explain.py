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

from selrel_jax.attribution import composites, gradients, rules
from selrel_jax.attribution.engine import lrp
from selrel_jax.errors import DTypeError, OptionError, ShapeError

__all__ = ["GRADIENT_METHODS", "LRP_METHODS", "METHODS", "explain", "make_explainer"]

_LRP_COMMON = {"epsilon": 1e-6, "stabilizer": 1e-6}
_ALPHA_BETA = {"alpha": 2.0, "beta": 1.0}

LRP_METHODS: dict[str, tuple[Callable[..., composites.Composite], dict[str, Any]]] = {
    "lrp.epsilon": (
        lambda epsilon, stabilizer: composites.uniform(
            rules.Epsilon(epsilon), rules.Epsilon(epsilon), stabilizer=stabilizer
        ),
        _LRP_COMMON,
    ),
    "lrp.zplus": (
        lambda epsilon, stabilizer: composites.uniform(
            rules.ZPlus(stabilizer), rules.ZPlus(stabilizer), stabilizer=stabilizer
        ),
        _LRP_COMMON,
    ),
    "lrp.epsilon_plus": (composites.epsilon_plus, _LRP_COMMON),
    "lrp.epsilon_plus_flat": (composites.epsilon_plus_flat, _LRP_COMMON),
    "lrp.epsilon_gamma_box": (
        composites.epsilon_gamma_box,
        {**_LRP_COMMON, "gamma": 0.25, "low": None, "high": None},
    ),
    "lrp.epsilon_alpha2_beta1": (composites.epsilon_alpha2_beta1, {**_LRP_COMMON, **_ALPHA_BETA}),
    "lrp.epsilon_alpha2_beta1_flat": (
        composites.epsilon_alpha2_beta1_flat,
        {**_LRP_COMMON, **_ALPHA_BETA},
    ),
}

GRADIENT_METHODS: dict[str, tuple[Callable, dict[str, Any]]] = {
    "gradient": (gradients.gradient, {}),
    "gradient_x_input": (gradients.gradient_x_input, {}),
    "integrated_gradients": (
        gradients.integrated_gradients,
        {"steps": 20, "baseline": None, "chunk_size": None},
    ),
    "smoothgrad": (gradients.smoothgrad, {"samples": 20, "noise_level": 0.1, "seed": 0}),
    "grad_cam": (gradients.grad_cam, {"layer": None}),
}

METHODS = (*GRADIENT_METHODS, *LRP_METHODS)
_ARRAY_OPTIONS = ("low", "high", "baseline")


def _resolve(method: str, options: dict[str, Any]) -> tuple[Callable, dict[str, Any]]:
    if not isinstance(method, str) or method not in METHODS:
        raise OptionError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    builder, defaults = {**GRADIENT_METHODS, **LRP_METHODS}[method]
    unknown = sorted(set(options) - set(defaults))
    if unknown:
        valid = ", ".join(defaults) or "none"
        raise OptionError(f"unknown option(s) {unknown} for method {method!r}; valid: {valid}")
    merged = {**defaults, **options}
    if method == "lrp.epsilon_gamma_box" and (merged["low"] is None or merged["high"] is None):
        raise OptionError(
            "lrp.epsilon_gamma_box needs low= and high= (the input bounds in the model's "
            "normalised input space: scalar, per channel (C,) or clip-shaped)"
        )
    return builder, merged


def make_explainer(model: Any, method: str = "lrp.epsilon_plus_flat", **options: Any) -> Callable:
    """The pure function ``(variables, clips, target=None) -> relevance`` of
    ``method`` (see :func:`explain`); ``variables`` is None when ``model`` is a
    plain ``apply_fn(clips) -> logits`` (gradient-family methods only)."""
    builder, merged = _resolve(method, options)
    if method in LRP_METHODS:
        if not hasattr(model, "apply"):
            raise OptionError(
                f"{method} needs a Flax linen model and its variables; got "
                f"{type(model).__name__} (plain callables work with gradient methods)"
            )
        explainer = lrp(model, builder(**merged))
        return lambda variables, clips, target=None: explainer(variables, clips, target)

    def explainer(variables, clips, target=None):
        apply_fn = _apply_fn(model, variables)
        return builder(apply_fn, clips, target, **merged)

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

    Methods: "gradient", "gradient_x_input", "integrated_gradients" (steps=20,
    baseline=None, chunk_size=None), "smoothgrad" (samples=20, noise_level=0.1,
    seed=0), "grad_cam" (layer=None: the last conv), "lrp.epsilon",
    "lrp.zplus", "lrp.epsilon_plus", "lrp.epsilon_plus_flat",
    "lrp.epsilon_gamma_box" (low, high required; gamma=0.25),
    "lrp.epsilon_alpha2_beta1" and "lrp.epsilon_alpha2_beta1_flat" (alpha=2,
    beta=1). LRP methods take epsilon=1e-6 (Epsilon rule) and stabilizer=1e-6.
    The output relevance is the one-hot target (value 1), as in Zennit.

    Example::

        rel = explain(model, variables, clips, jnp.array([3]), "lrp.epsilon_gamma_box",
                      low=-2.0, high=2.0)
    """
    _resolve(method, options)
    clips = _check_clips(clips)
    apply_fn = _apply_fn(model, variables)
    if method in LRP_METHODS and variables is None:
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
