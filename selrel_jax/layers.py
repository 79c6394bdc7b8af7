"""Layer primitives shared by the model zoo and the relevance engine.

The relevance engine sees every operation of the traced model, so an inline
``x + y``, ``nn.avg_pool``, ``jnp.mean`` or ``nn.max_pool`` gets the same rule
as these modules (Norm for sums and average pooling: relevance is split, not
copied; the plain gradient for max pooling). The modules give those layers
readable paths (``layer1_0/sum``) that a composite's path patterns can select.

Layout is NTHWC (channels last), as everywhere in the library.

Examples:
    A residual block whose sum a composite can select by its path ``sum``:

    >>> import flax.linen as nn
    >>> import jax
    >>> import jax.numpy as jnp
    >>> from selrel_jax.layers import Sum
    >>> class Block(nn.Module):
    ...     @nn.compact
    ...     def __call__(self, x):
    ...         y = nn.relu(nn.Conv(x.shape[-1], (3, 3, 3), padding=1)(x))
    ...         return Sum()(x, y)
    >>> x = jnp.ones((1, 4, 8, 8, 3))   # NTHWC
    >>> variables = Block().init(jax.random.key(0), x)
    >>> Block().apply(variables, x).shape
    (1, 4, 8, 8, 3)
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from selrel_jax._pool import max_pool
from selrel_jax.errors import ShapeError

__all__ = ["AvgPool", "GlobalAvgPool", "MaxPool", "Padding", "Sum"]

#: A pooling padding: ``"VALID"``, ``"SAME"``, or a ``(low, high)`` pair per window axis.
Padding = str | Sequence[tuple[int, int]]


class Sum(nn.Module):
    """Elementwise sum of two or more same-shaped arrays (residual connections)."""

    @nn.compact
    def __call__(self, *xs: jax.Array) -> jax.Array:
        if len(xs) < 2:
            raise ShapeError(f"Sum needs at least two inputs; got {len(xs)}")
        shapes = {tuple(x.shape) for x in xs}
        if len(shapes) != 1:
            raise ShapeError(f"Sum inputs must share one shape; got {sorted(shapes)}")
        return functools.reduce(operator.add, xs)


class _WindowPool(nn.Module):
    """Fields shared by the windowed pools; ``strides`` defaults to ``window``."""

    window: Sequence[int]
    strides: Sequence[int] | None = None
    padding: Padding = "VALID"

    def _window_and_strides(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
        window = tuple(self.window)
        return window, tuple(self.strides) if self.strides is not None else window


class MaxPool(_WindowPool):
    """Max pooling over the spatio-temporal axes; padding pads with -inf. Its
    derivative is elementwise where the windows tile the input (``selrel_jax._pool``)."""

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return max_pool(x, *self._window_and_strides(), self.padding)


class AvgPool(_WindowPool):
    """Average pooling over the spatio-temporal axes (padding counts as zeros)."""

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        window, strides = self._window_and_strides()
        return nn.avg_pool(x, window, strides, self.padding, count_include_pad=True)


class GlobalAvgPool(nn.Module):
    """Mean over every axis between batch and channels: (N, ..., C) -> (N, C)."""

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return jnp.mean(x, axis=tuple(range(1, x.ndim - 1)))
