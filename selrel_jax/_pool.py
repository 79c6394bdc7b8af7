"""Max pooling whose derivative is elementwise where its windows tile the input.

XLA:CPU computes the derivative of a max pool (``select_and_scatter_add``) by
expanding it into a scatter driven by index arrays: for C3D's first pool
(16x112x112x64) that is five int32 arrays the size of the pool's input (about
260 MiB) and as long as the layer's own relevance rule. Where the windows tile
the input (stride equal to the window on every axis, no dilation: every pool of
C3D and of the video ResNets' 3D variants that have one), the derivative is
elementwise: within each window the first element (row-major window order)
equal to the window's maximum takes the output gradient, every other element 0.
That is exactly what ``select_and_scatter_add`` computes (it keeps the first
maximum, replacing it only with a strictly larger element), ties included.

:func:`reduce_window_max` has the primitive's signature: its primal computation
is the one ``reduce_window_max`` primitive (what a traced model shows), its
derivative (``jax.custom_vjp``) the elementwise form where windows tile, JAX's
own otherwise. :func:`max_pool` is ``flax.linen.max_pool`` on it.

Examples:
    >>> import jax
    >>> import jax.numpy as jnp
    >>> from selrel_jax._pool import max_pool
    >>> x = jnp.arange(2 * 4 * 4 * 1, dtype=jnp.float32).reshape(1, 2, 4, 4, 1)  # NTHWC
    >>> max_pool(x, (2, 2, 2), (2, 2, 2), "VALID")[..., 0]
    Array([[[[21., 23.],
             [29., 31.]]]], dtype=float32)

    The derivative goes to each window's maximum only:

    >>> grad = jax.grad(lambda x: max_pool(x, (2, 2, 2), (2, 2, 2), "VALID").sum())(x)
    >>> int(grad.sum()), float(grad[0, 1, 1, 1, 0]), float(grad[0, 0, 0, 0, 0])
    (4, 1.0, 0.0)
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

__all__ = ["max_pool", "reduce_window_max"]

# Windows of more elements run XLA's derivative (each window element is one
# elementwise pass of the tiled form).
MAX_TILED_WINDOW = 32


def _pads(x_shape, window, strides, padding) -> tuple[tuple[int, int], ...]:
    if isinstance(padding, str):
        return tuple(lax.padtype_to_pads(x_shape, window, strides, padding))
    return tuple((int(lo), int(hi)) for lo, hi in padding)


def _tiles(window, strides, base_dilation, window_dilation) -> bool:
    ones = all(d == 1 for d in (*base_dilation, *window_dilation))
    return ones and tuple(window) == tuple(strides) and math.prod(window) <= MAX_TILED_WINDOW


def _lowest(dtype: Any) -> float | int:
    # A Python scalar: lax.reduce_window recognises max with its identity and emits
    # the reduce_window_max primitive (a traced init would make a generic reduce_window).
    return -math.inf if jnp.issubdtype(dtype, jnp.floating) else int(jnp.iinfo(dtype).min)


def _lax_max(x, window, strides, padding, base=None, dilation=None):
    return lax.reduce_window(x, _lowest(x.dtype), lax.max, window, strides, padding, base, dilation)


def _winners(x: jax.Array, y: jax.Array, window, padding) -> jax.Array:
    """uint8 shaped as ``y``: per window, the row-major offset of its first element
    equal to the maximum ``y``, or the window's size where none is (a NaN maximum).
    ``window`` equals the strides (the windows tile the padded input)."""
    xp = lax.pad(x, jnp.asarray(_lowest(x.dtype), x.dtype), [(lo, hi, 0) for lo, hi in padding])
    covered = [o * w for o, w in zip(y.shape, window, strict=True)]
    xr = xp[tuple(slice(0, c) for c in covered)]
    xr = xr.reshape([d for o, w in zip(y.shape, window, strict=True) for d in (o, w)])
    offsets = list(itertools.product(*(range(w) for w in window)))
    winner = jnp.full(y.shape, len(offsets), jnp.uint8)
    for k, offset in reversed(list(enumerate(offsets))):  # the first hit is the last write
        element = xr[tuple(i for o in offset for i in (slice(None), o))]
        winner = jnp.where(element == y, jnp.uint8(k), winner)
    return winner


def _tiled_grad(winner: jax.Array, g: jax.Array, x_shape, window, padding) -> jax.Array:
    """d(max pool)/dx applied to ``g``: each window's winner (:func:`_winners`) gets
    ``g``; elements in no window (a VALID remainder) get 0."""
    parts = [jnp.where(winner == k, g, jnp.zeros((), g.dtype)) for k in range(math.prod(window))]
    stacked = jnp.stack(parts).reshape(*window, *g.shape)  # (w0, w1, ..., o0, o1, ...)
    rank = len(window)
    order = [a for axis in range(rank) for a in (rank + axis, axis)]
    covered = [o * w for o, w in zip(g.shape, window, strict=True)]
    dx = stacked.transpose(order).reshape(covered)
    padded = [n + lo + hi for n, (lo, hi) in zip(x_shape, padding, strict=True)]
    grow = [(0, p - c, 0) for p, c in zip(padded, covered, strict=True)]
    dx = lax.pad(dx, jnp.zeros((), dx.dtype), grow)
    return dx[tuple(slice(lo, lo + n) for (lo, _), n in zip(padding, x_shape, strict=True))]


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3, 4))
def _tiled_max(x: jax.Array, window, strides, padding, x_shape) -> jax.Array:
    return _lax_max(x, window, strides, padding)


def _tiled_max_fwd(x, window, strides, padding, x_shape):
    # The residual is one byte per output, not the input: the input (C3D's conv1
    # output, 49 MiB at batch 1) would otherwise stay alive from the forward pass to
    # this layer's derivative, under every layer above.
    y = _lax_max(x, window, strides, padding)
    return y, _winners(x, y, window, padding)


def _tiled_max_bwd(window, strides, padding, x_shape, winner, g):
    return (_tiled_grad(winner, g, x_shape, window, padding),)


_tiled_max.defvjp(_tiled_max_fwd, _tiled_max_bwd)


def reduce_window_max(
    operand: jax.Array,
    window_dimensions: Sequence[int],
    window_strides: Sequence[int],
    padding: str | Sequence[tuple[int, int]],
    base_dilation: Sequence[int] | None = None,
    window_dilation: Sequence[int] | None = None,
) -> jax.Array:
    """``lax.reduce_window`` with ``lax.max`` (the ``reduce_window_max`` primitive's
    parameters), with the elementwise derivative where the windows tile a
    floating-point input."""
    window, strides = tuple(window_dimensions), tuple(window_strides)
    pads = _pads(jnp.shape(operand), window, strides, padding)
    base = tuple(base_dilation or (1,) * len(window))
    dilation = tuple(window_dilation or (1,) * len(window))
    x = jnp.asarray(operand)
    if jnp.issubdtype(x.dtype, jnp.floating) and _tiles(window, strides, base, dilation):
        return _tiled_max(x, window, strides, pads, x.shape)
    return _lax_max(x, window, strides, pads, base, dilation)


def max_pool(
    x: jax.Array,
    window_shape: Sequence[int],
    strides: Sequence[int] | None = None,
    padding: str | Sequence[tuple[int, int]] = "VALID",
) -> jax.Array:
    """``flax.linen.max_pool`` (leading batch axes, channels last) on
    :func:`reduce_window_max`."""
    strides = tuple(strides) if strides is not None else (1,) * len(window_shape)
    batch = (1,) * (jnp.ndim(x) - len(window_shape) - 1)
    if not isinstance(padding, str):
        padding = (*((0, 0),) * len(batch), *padding, (0, 0))
    window = (*batch, *window_shape, 1)
    return reduce_window_max(x, window, (*batch, *strides, 1), padding)
