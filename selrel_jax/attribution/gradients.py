"""The gradient family: gradient, gradient x input, integrated gradients,
SmoothGrad and Grad-CAM 3D.

Each function takes ``apply_fn(clips) -> logits`` (a closure over a Flax
model's variables, a Flax NNX model, any JAX function), the clips (N,T,H,W,C)
and the target classes (N,) (None: the predicted class), and differentiates the
target logit (not its probability), as Zennit does. All are pure JAX: they
compose with ``jax.jit``, ``jax.vmap`` and sharding. Each is registered as a
method of :func:`~selrel_jax.attribution.explain` under its name; its
keyword-only parameters are the method's options.

``grad_cam`` finds its layer on the traced computation of ``apply_fn`` (any
framework) and names it by the path of the kernel it consumes; the paths come
from ``apply_fn`` given as ``functools.partial(apply, params)``, which is what
``explain`` and ``make_explainer`` hand these functions for a model with its
parameters.

Each checks its arguments first (clips (N,T,H,W,C) floating, target, options;
the model's output and minimum clip size on an abstract trace): concrete
values that are invalid raise a ``SelrelError``; traced ones (a NaN clip, an
out-of-range target, a NaN baseline) make the relevance of their clip all NaN.

Examples:
    >>> import jax
    >>> import jax.numpy as jnp
    >>> from selrel_jax import models
    >>> model = models.create("c3d_small", 4, width=0.25, clip_size=(8, 32, 32))
    >>> variables = model.init(jax.random.key(0), jnp.zeros((1, 8, 32, 32, 3)), train=False)
    >>> clips = jax.random.normal(jax.random.key(1), (1, 8, 32, 32, 3))
    >>> from selrel_jax.attribution import gradients
    >>> apply_fn = lambda x: model.apply(variables, x, train=False)
    >>> ig = gradients.integrated_gradients(apply_fn, clips, None, steps=4)
    >>> ig.shape, ig.dtype
    ((1, 8, 32, 32, 3), dtype('float32'))
    >>> gradients.grad_cam(apply_fn, clips, jnp.array([1]), layer="conv4").shape
    (1, 8, 32, 32, 3)
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from selrel_jax._checks import positive_int, real
from selrel_jax.attribution._cam import choose, layer_cam, trace_cam
from selrel_jax.attribution._inputs import (
    check_clips,
    check_logits,
    check_option_array,
    check_target,
    finish,
    input_problems,
    per_clip,
    traced,
)
from selrel_jax.attribution._model_checks import inspect_forward
from selrel_jax.attribution.registry import register_gradient
from selrel_jax.attribution.types import one_hot_seed
from selrel_jax.errors import OptionError, ShapeError

__all__ = [
    "grad_cam",
    "gradient",
    "gradient_x_input",
    "integrated_gradients",
    "smoothgrad",
    "target_gradient",
]

ApplyFn = Callable[[jax.Array], jax.Array]


class _Inputs(NamedTuple):
    """Checked inputs of one call, and the per-clip flags of traced invalid
    values (see ``_inputs.finish``)."""

    clips: jax.Array
    target: jax.Array | None
    problems: dict[str, jax.Array]


def _checked_inputs(apply_fn: ApplyFn, clips: Any, target: Any) -> _Inputs:
    clips = check_clips(clips)
    logits, _ = inspect_forward(apply_fn, clips)
    classes = check_logits(logits, clips.shape)
    target = check_target(target, clips.shape[0], classes)
    return _Inputs(clips, target, input_problems(clips, target, classes))


def _predicted(apply_fn: ApplyFn, clips: jax.Array, target):
    return jnp.argmax(apply_fn(clips), axis=-1) if target is None else target


def target_gradient(apply_fn: ApplyFn, clips: jax.Array, target) -> jax.Array:
    """d logits[n, target[n]] / d clips[n] for every n (one backward pass)."""
    logits, pull = jax.vjp(apply_fn, clips)
    (grad,) = pull(one_hot_seed(logits, target))
    return grad


@register_gradient("gradient")
def gradient(apply_fn: ApplyFn, clips: jax.Array, target=None) -> jax.Array:
    """Input gradient of the target logit."""
    inputs = _checked_inputs(apply_fn, clips, target)
    grad = target_gradient(apply_fn, inputs.clips, inputs.target)
    return finish(grad.astype(inputs.clips.dtype), inputs.problems)


@register_gradient("gradient_x_input")
def gradient_x_input(apply_fn: ApplyFn, clips: jax.Array, target=None) -> jax.Array:
    """Input gradient times input."""
    inputs = _checked_inputs(apply_fn, clips, target)
    grad = target_gradient(apply_fn, inputs.clips, inputs.target)
    return finish((grad * inputs.clips).astype(inputs.clips.dtype), inputs.problems)


def _mean_over(fn: Callable, count: int, chunk: int, like: jax.Array) -> jax.Array:
    """mean_{i < count} fn(i), evaluating ``chunk`` indices at once (vmapped)."""
    n_chunks = math.ceil(count / chunk)
    index = jnp.arange(n_chunks * chunk).reshape(n_chunks, chunk)

    def body(total, idx):
        values = jax.vmap(fn)(idx)
        weights = (idx < count).astype(values.dtype).reshape((chunk,) + (1,) * like.ndim)
        return total + jnp.sum(values * weights, axis=0), None

    total, _ = jax.lax.scan(body, jnp.zeros(like.shape, like.dtype), index)
    return total / count


@register_gradient("integrated_gradients")
def integrated_gradients(
    apply_fn: ApplyFn,
    clips: jax.Array,
    target=None,
    *,
    steps: int = 20,
    baseline=None,
    chunk_size: int | None = None,
) -> jax.Array:
    """(x - baseline) * mean_i grad(baseline + alpha_i (x - baseline)),
    alpha_i = i / steps for i = 1..steps (right Riemann sum). ``baseline``:
    None (zeros), a scalar or anything broadcastable to the clips.
    ``chunk_size`` interpolation steps run at once (vmapped); None: one at a
    time (least memory)."""
    steps = positive_int("steps", steps)
    chunk = 1 if chunk_size is None else min(positive_int("chunk_size", chunk_size), steps)
    inputs = _checked_inputs(apply_fn, clips, target)
    clips = inputs.clips
    target = _predicted(apply_fn, clips, inputs.target)
    base, problems = _baseline(baseline, clips)
    diff = clips - base

    def grad_at(i):
        alpha = (i + 1).astype(clips.dtype) / steps
        return target_gradient(apply_fn, base + alpha * diff, target)

    relevance = (diff * _mean_over(grad_at, steps, chunk, clips)).astype(clips.dtype)
    return finish(relevance, {**inputs.problems, **problems})


def _baseline(baseline: Any, clips: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The baseline broadcast to the clips, and the per-clip flag of a traced
    baseline holding NaN or Inf (a concrete one is checked here)."""
    if baseline is None:
        return jnp.zeros_like(clips), {}
    base = check_option_array("baseline", baseline)
    try:
        broadcast = jnp.broadcast_to(base.astype(clips.dtype), clips.shape)
    except ValueError:
        raise ShapeError(
            f"baseline of shape {base.shape} does not broadcast to clips {clips.shape}"
        ) from None
    if not traced(base):
        return broadcast, {}
    flags = per_clip(~jnp.isfinite(base), len(clips))
    return broadcast, {"baseline holds NaN or infinite values": flags}


@register_gradient("smoothgrad")
def smoothgrad(
    apply_fn: ApplyFn,
    clips: jax.Array,
    target=None,
    *,
    samples: int = 20,
    noise_level: float = 0.1,
    key: Any = 0,
) -> jax.Array:
    """Mean input gradient over ``samples`` noisy copies; noise std =
    ``noise_level * (max - min)`` of each clip. ``key`` is a JAX PRNG key
    (``jax.random.key(...)``, or raw ``uint32[2]`` key data); an int ``n`` is a
    convenience for ``jax.random.key(n)``. Sample i draws its noise from
    ``fold_in(key, i)`` with the shape of one clip, shared across the batch, so
    a batch gives the same maps as one call per clip."""
    samples = positive_int("samples", samples)
    noise_level = real("noise_level", noise_level, minimum=0.0)
    key = prng_key("smoothgrad key", key)
    inputs = _checked_inputs(apply_fn, clips, target)
    clips = inputs.clips
    target = _predicted(apply_fn, clips, inputs.target)
    axes = tuple(range(1, clips.ndim))
    span = jnp.max(clips, axis=axes, keepdims=True) - jnp.min(clips, axis=axes, keepdims=True)
    std = noise_level * span

    def grad_at(i):
        noise = jax.random.normal(jax.random.fold_in(key, i), clips.shape[1:], clips.dtype)
        return target_gradient(apply_fn, clips + std * noise, target)

    return finish(_mean_over(grad_at, samples, 1, clips).astype(clips.dtype), inputs.problems)


def prng_key(name: str, key: Any) -> jax.Array:
    """A typed PRNG key from a key, raw ``uint32[2]`` key data or an int in [0, 2**32)."""
    if isinstance(key, jax.Array | np.ndarray) and jax.dtypes.issubdtype(
        key.dtype, jax.dtypes.prng_key
    ):
        return key
    if isinstance(key, jax.Array | np.ndarray) and key.shape == (2,) and key.dtype == np.uint32:
        return jax.random.wrap_key_data(key)
    if isinstance(key, int | np.integer) and not isinstance(key, bool) and 0 <= key < 2**32:
        return jax.random.key(int(key))
    raise OptionError(
        f"{name} must be a JAX PRNG key (jax.random.key(n)) or an int in [0, 2**32); got {key!r}"
    )


@register_gradient("grad_cam")
def grad_cam(apply_fn: ApplyFn, clips: jax.Array, target=None, *, layer: str | None = None):
    """Grad-CAM 3D on the conv layer ``layer`` of any model (default: the last
    conv layer on the path to the logits). The layer is found on the traced
    computation, as LRP finds its layers: a 3D convolution of the clips'
    activations with a parameter kernel, its activation A taken after its bias
    add (what a linen ``nn.Conv`` or a PyTorch ``Conv3d`` returns), in any
    layout. ``layer`` is the path of the parameter the convolution consumes
    (``conv1/kernel`` -> ``"conv1"``; for linen models the module path); names
    need the model with its parameters (``explain(apply_fn, params, clips)``,
    a linen or NNX model, or ``apply_fn`` a ``functools.partial(f, params)``),
    since a plain ``apply_fn(clips)`` closes over them without a path (only a
    linen model called inside it, by this function directly, still names its
    modules). Channel weights = target-logit
    gradient averaged over the layer's (T, H, W); map = ReLU(sum_c w_c A_c),
    resized trilinearly to the clips' (T, H, W), divided by the clips' channel
    count C and broadcast over channels (so summing over channels gives the
    map)."""
    if layer is not None and not isinstance(layer, str):
        raise OptionError(f"grad_cam layer must be a module path (str) or None; got {layer!r}")
    clips = check_clips(clips)
    model = trace_cam(apply_fn, clips)
    classes = check_logits(model.outputs, clips.shape)
    target = check_target(target, clips.shape[0], classes)
    problems = input_problems(clips, target, classes)
    cam = layer_cam(model, choose(model, layer), clips, target)
    cam = jax.image.resize(cam, clips.shape[:-1], method="trilinear")
    cam = cam[..., None] / clips.shape[-1]
    return finish(jnp.broadcast_to(cam, clips.shape).astype(clips.dtype), problems)
