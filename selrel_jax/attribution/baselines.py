"""Model-free baseline maps, registered as methods ``"baseline.<name>"``, so that
every measure of an explanation can be read against a map that knows nothing of
the model.

Each takes what every method takes (``apply_fn``, clips (N,T,H,W,C), target)
and checks them the same way, but reads only the clips. Each computes a map
(N, T, H, W) and returns it like Grad-CAM: divided by the channel count C and
broadcast over channels, so that summing the result over channels (what
selective relevance and the metrics do) gives the map.

- ``baseline.random``: uniform [0, 1) values drawn from ``key``.
- ``baseline.frame_difference``: ``sum_c |x[t, c] - x[t-1, c]|``; frame 0,
  which has no previous frame, is 0.
- ``baseline.input_sobel``: the selective-relevance temporal kernel applied to
  the channel-summed input, ``|D|`` of :mod:`selrel_jax.selective` (the kernel
  lives in ``selrel_jax._temporal``: attribution may not import selective).

Examples:
    >>> import jax
    >>> import jax.numpy as jnp
    >>> import selrel_jax as sr
    >>> from selrel_jax import models
    >>> model = models.create("c3d_small", 4, width=0.25, clip_size=(8, 32, 32))
    >>> variables = model.init(jax.random.key(0), jnp.zeros((1, 8, 32, 32, 3)), train=False)
    >>> clips = jax.random.normal(jax.random.key(1), (1, 8, 32, 32, 3))
    >>> diff = sr.explain(model, variables, clips, None, "baseline.frame_difference")
    >>> diff.shape, float(diff[0, 0].sum())
    ((1, 8, 32, 32, 3), 0.0)
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from selrel_jax._checks import one_of
from selrel_jax._temporal import PADDINGS, abs_temporal_gradient, compute_dtype
from selrel_jax.attribution._inputs import finish
from selrel_jax.attribution.gradients import ApplyFn, _checked_inputs, prng_key
from selrel_jax.attribution.registry import register_baseline

__all__ = ["frame_difference", "input_sobel", "random_map"]


def _over_channels(maps: jax.Array, clips: jax.Array) -> jax.Array:
    """(N, T, H, W) maps as relevance of the clips' shape and dtype, each channel map / C."""
    per_channel = maps[..., None] / clips.shape[-1]
    return jnp.broadcast_to(per_channel, clips.shape).astype(clips.dtype)


@register_baseline("random")
def random_map(apply_fn: ApplyFn, clips: jax.Array, target=None, *, key: Any = 0) -> jax.Array:
    """A uniform [0, 1) map (T, H, W) drawn from ``key`` (a JAX PRNG key or an int
    seed, as SmoothGrad's), the same for every clip of a call, so a batch gives
    the maps of one call per clip; vary ``key`` for independent draws."""
    key = prng_key("baseline.random key", key)
    inputs = _checked_inputs(apply_fn, clips, target)
    clips = inputs.clips
    draw = jax.random.uniform(key, clips.shape[1:4], compute_dtype(clips.dtype))
    maps = jnp.broadcast_to(draw, clips.shape[:4])
    return finish(_over_channels(maps, clips), inputs.problems)


@register_baseline("frame_difference")
def frame_difference(apply_fn: ApplyFn, clips: jax.Array, target=None) -> jax.Array:
    """``sum_c |x[t, c] - x[t-1, c]|`` for t >= 1; 0 on frame 0 (no previous frame)."""
    inputs = _checked_inputs(apply_fn, clips, target)
    clips = inputs.clips
    x = clips.astype(compute_dtype(clips.dtype))
    change = jnp.sum(jnp.abs(x[:, 1:] - x[:, :-1]), axis=-1)
    maps = jnp.concatenate([jnp.zeros_like(x[:, :1, ..., 0]), change], axis=1)
    return finish(_over_channels(maps, clips), inputs.problems)


@register_baseline("input_sobel")
def input_sobel(
    apply_fn: ApplyFn, clips: jax.Array, target=None, *, temporal_padding: str = "zero"
) -> jax.Array:
    """``|D|`` of the channel-summed input: D(t) = S*X(t-1) - S*X(t+1), S the
    [1,2,1] x [1,2,1] spatial smoothing (zero padded), ``temporal_padding``
    ``"zero"`` (the paper) or ``"edge"`` in time: the map selective relevance
    thresholds, computed on the clip instead of its relevance."""
    one_of("baseline.input_sobel temporal_padding", temporal_padding, PADDINGS)
    inputs = _checked_inputs(apply_fn, clips, target)
    clips = inputs.clips
    maps = jax.vmap(lambda clip: abs_temporal_gradient(clip, temporal_padding))(clips)
    return finish(_over_channels(maps, clips), inputs.problems)
