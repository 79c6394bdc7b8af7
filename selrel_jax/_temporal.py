"""The selective-relevance temporal kernel, shared below the data path.

``selective`` thresholds it on relevance; ``attribution.baselines`` applies it
to the input (``baseline.input_sobel``). Attribution may not import
``selective`` (the data path imports leftwards: attribution -> selective), so
the kernel lives here, where both can reach it.

D(t) = S*R(t-1) - S*R(t+1), S the separable spatial smoothing [1,2,1] x [1,2,1]
(zero padded in H and W): the paper's 3x3x3 temporal Sobel operator applied as a
cross-correlation with padding 1 on T, H and W (zero or edge padding in T).
"""

from __future__ import annotations

import functools
import operator
from typing import Any

import jax
import jax.numpy as jnp

__all__ = ["PADDINGS", "abs_sobel_t", "abs_temporal_gradient", "channel_sum", "compute_dtype"]

#: The kernel's paddings in time (selective.TEMPORAL_PADDINGS documents them).
PADDINGS = ("zero", "edge")


def compute_dtype(dtype: Any) -> Any:
    """The dtype the kernel works in: at least float32."""
    # bfloat16/float16 sums of nine smoothed taps lose too much precision; work in
    # at least float32 and cast results back to the input dtype.
    return jnp.promote_types(dtype, jnp.float32)


def abs_sobel_t(r: jax.Array, temporal_padding: str) -> jax.Array:
    """|D| for one channel-summed clip (T, H, W), in its compute dtype;
    ``temporal_padding`` is ``"zero"`` or ``"edge"``."""
    t, h, w = r.shape
    p = jnp.pad(r, ((0, 0), (1, 1), (1, 1)))
    p = jnp.pad(
        p, ((1, 1), (0, 0), (0, 0)), mode="constant" if temporal_padding == "zero" else "edge"
    )

    def smoothed(t0: int) -> jax.Array:
        # [1,2,1] x [1,2,1] as nine taps of one padded array: XLA fuses them into one
        # pass, and both neighbours use the same expression tree, so D is exactly 0
        # where content does not change.
        def tap(dh: int, dw: int) -> jax.Array:
            return p[t0 : t0 + t, dh : dh + h, dw : dw + w]

        def row(dh: int) -> jax.Array:
            return tap(dh, 0) + 2 * tap(dh, 1) + tap(dh, 2)

        return row(0) + 2 * row(1) + row(2)

    return jnp.abs(smoothed(0) - smoothed(2))


def channel_sum(x: jax.Array, ctype: Any) -> jax.Array:
    """(T, H, W, C) summed over channels in ``ctype``; (T, H, W) as it is."""
    x = x.astype(ctype)
    if x.ndim == 3:
        return x
    if x.shape[-1] <= 16:
        # XLA:CPU reduces a short minor axis ~7x slower than it adds its slices.
        return functools.reduce(operator.add, [x[..., c] for c in range(x.shape[-1])])
    return jnp.sum(x, axis=-1)


def abs_temporal_gradient(clip: jax.Array, temporal_padding: str) -> jax.Array:
    """|D| of one clip (T, H, W) or (T, H, W, C), in its compute dtype."""
    return abs_sobel_t(channel_sum(clip, compute_dtype(clip.dtype)), temporal_padding)
