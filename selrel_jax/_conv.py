"""Convolutions whose forward and input gradient run as stride-1 2D convolutions.

XLA:CPU computes a 3D convolution about 1.5-2x slower than the same work as 2D
convolutions, and the input gradient of a *strided* convolution (lowered to a
convolution with lhs dilation) 20-200x slower than PyTorch. Here every
channels-last convolution without dilation (grouped and depthwise ones included,
``feature_group_count``) is computed as:

* stride 1, 3D, more than one temporal tap: the sum over the kernel's temporal
  taps of 2D convolutions of the shifted frames (the *temporal-tap
  decomposition*);
* strided: the padded input split into its stride phases (space to depth), one
  stride-1 convolution per phase with the kernel taps of that phase, summed
  (the *polyphase* form); a stride along a kernel axis of size 1 is a slice.

Both are exact rearrangements of the same sums (float32 rounding apart), and
their gradients are again stride-1 convolutions plus slices and reshapes: the
input gradient of a stride-1 convolution is computed as the forward
convolution of the output gradient with the flipped, transposed kernel (for
``G`` groups, each group's kernel transposed in place: the same ``G`` groups).

Two entry points, with :func:`jax.lax.conv_general_dilated`'s signature:

* :func:`conv_general_dilated` for ``flax.linen.Conv(...,
  conv_general_dilated=...)``: its primal computation is the single
  ``conv_general_dilated`` primitive (what a traced model shows, so the LRP
  engine still sees one convolution), its derivative (``jax.custom_vjp``) the
  fast forms above. Forward-mode differentiation (``jax.jvp``) of it raises,
  as for any ``custom_vjp`` function.
* :func:`fast_conv`: the fast forms in the primal computation too; what the
  LRP engine runs for every convolution of a model.

Anything else (dilation, batch groups, other layouts) is handed to
:func:`jax.lax.conv_general_dilated` unchanged.

Examples:
    The same convolution and the same input gradient as Flax's default, computed
    the faster way:

    >>> import flax.linen as nn
    >>> import jax
    >>> import jax.numpy as jnp
    >>> from selrel_jax._conv import conv_general_dilated
    >>> conv = nn.Conv(8, (3, 7, 7), (1, 2, 2), conv_general_dilated=conv_general_dilated)
    >>> plain = nn.Conv(8, (3, 7, 7), (1, 2, 2))
    >>> x = jax.random.normal(jax.random.key(0), (1, 4, 16, 16, 3))
    >>> variables = plain.init(jax.random.key(1), x)
    >>> conv.apply(variables, x).shape
    (1, 4, 8, 8, 8)
    >>> def input_grad(module):
    ...     return jax.grad(lambda x: module.apply(variables, x).sum())(x)
    >>> bool(jnp.allclose(input_grad(conv), input_grad(plain), atol=1e-4))
    True
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

__all__ = ["ConvConfig", "conv_config", "conv_general_dilated", "fast_conv"]

_CHANNELS_LAST = {1: ("NHC", "HIO", "NHC"), 2: ("NHWC", "HWIO", "NHWC"),
                  3: ("NDHWC", "DHWIO", "NDHWC")}  # fmt: skip


@dataclasses.dataclass(frozen=True)
class ConvConfig:
    """A channels-last convolution without dilation: per spatial axis its stride
    and explicit ``(low, high)`` padding; its ``feature_group_count`` (``groups``);
    the precision and output type handed to every convolution it runs."""

    strides: tuple[int, ...]
    padding: tuple[tuple[int, int], ...]
    precision: Any = None
    preferred_element_type: Any = None
    groups: int = 1

    @property
    def strided(self) -> bool:
        return any(s != 1 for s in self.strides)


def _ones(value: Sequence[int] | None) -> bool:
    return value is None or all(v == 1 for v in value)


def conv_config(
    lhs_shape: Sequence[int],
    rhs_shape: Sequence[int],
    window_strides: Sequence[int],
    padding: str | Sequence[tuple[int, int]],
    lhs_dilation: Sequence[int] | None = None,
    rhs_dilation: Sequence[int] | None = None,
    dimension_numbers: Any = None,
    feature_group_count: int = 1,
    batch_group_count: int = 1,
    precision: Any = None,
    preferred_element_type: Any = None,
    out_sharding: Any = None,
) -> ConvConfig | None:
    """The :class:`ConvConfig` of a ``lax.conv_general_dilated`` call, or None
    when the fast forms do not apply (dilation, batch groups, a layout other than
    channels last, more than 3 spatial axes, or feature groups that do not fit the
    channels: lax's own error then)."""
    nd = len(lhs_shape) - 2
    if nd not in _CHANNELS_LAST or len(rhs_shape) != nd + 2:
        return None
    if not (_ones(lhs_dilation) and _ones(rhs_dilation)):
        return None
    if batch_group_count != 1 or out_sharding is not None:
        return None
    numbers = lax.conv_dimension_numbers(lhs_shape, rhs_shape, dimension_numbers)
    wanted = lax.conv_dimension_numbers(lhs_shape, rhs_shape, _CHANNELS_LAST[nd])
    if numbers != wanted:
        return None
    groups = int(feature_group_count)
    channels_in, kernel_in, kernel_out = lhs_shape[-1], rhs_shape[-2], rhs_shape[-1]
    if groups < 1 or channels_in != groups * kernel_in or kernel_out % groups:
        return None
    strides = tuple(int(s) for s in window_strides)
    if isinstance(padding, str):
        pads = lax.padtype_to_pads(lhs_shape[1:-1], rhs_shape[:-2], strides, padding)
    else:
        pads = padding
    pads = tuple((int(lo), int(hi)) for lo, hi in pads)
    if isinstance(precision, list):
        precision = tuple(precision)
    if precision is None:
        # The precision in force now (jax.default_matmul_precision), kept for the
        # derivative, which may be traced outside that context.
        precision = jax.config.jax_default_matmul_precision
    return ConvConfig(strides, pads, precision, preferred_element_type, groups)


# --------------------------------------------------------------------------
# Stride-1 convolutions.


def _lax_conv(x: jax.Array, w: jax.Array, strides, padding, config: ConvConfig) -> jax.Array:
    nd = x.ndim - 2
    return lax.conv_general_dilated(
        x, w, tuple(strides), tuple(padding), dimension_numbers=_CHANNELS_LAST[nd],
        feature_group_count=config.groups, precision=config.precision,
        preferred_element_type=config.preferred_element_type,
    )  # fmt: skip


def _after(w: jax.Array, x: jax.Array) -> jax.Array:
    """``w``, computed once ``x`` exists. XLA slices every layer's kernel taps (which
    depend on parameters only) at the start of a program and holds them all to the
    end (C3D's LRP: 27 copies of 9 MiB); tied to the layer's input by adding 0 times
    one of its elements, each layer's are made when it runs. (An optimization
    barrier does not survive to XLA:CPU's scheduling.) The element is replaced by 0
    where it is not finite, so a NaN in one clip never reaches another's kernel."""
    first = lax.stop_gradient(jnp.ravel(x)[0]).astype(w.dtype)
    return w + jnp.where(jnp.isfinite(first), first, 0) * 0


def _temporal_taps(x: jax.Array, w: jax.Array, padding, config: ConvConfig) -> jax.Array:
    """Stride-1 3D convolution as the sum over temporal taps of 2D convolutions
    of the (N * T') frames each tap reads."""
    w = _after(w, x)
    (t_lo, t_hi), spatial = padding[0], padding[1:]
    x = lax.pad(x, jnp.zeros((), x.dtype), [(0, 0, 0), (t_lo, t_hi, 0)] + [(0, 0, 0)] * 3)
    n, frames, h, width, c = x.shape
    taps = w.shape[0]
    t_out = frames - taps + 1
    total = None
    for tap in range(taps):
        window = lax.slice_in_dim(x, tap, tap + t_out, axis=1).reshape(n * t_out, h, width, c)
        y = _lax_conv(window, w[tap], (1, 1), spatial, config)
        total = y if total is None else total + y
    return total.reshape(n, t_out, *total.shape[1:])


def _single_tap(x: jax.Array, w: jax.Array, padding, config: ConvConfig) -> jax.Array:
    """Stride-1 3D convolution with one temporal tap: a 2D convolution of every
    frame; temporal padding adds zero frames to the output."""
    n, t, h, width, c = x.shape
    y = _lax_conv(x.reshape(n * t, h, width, c), w[0], (1, 1), padding[1:], config)
    y = y.reshape(n, t, *y.shape[1:])
    (t_lo, t_hi) = padding[0]
    if t_lo or t_hi:
        y = lax.pad(y, jnp.zeros((), y.dtype), [(0, 0, 0), (t_lo, t_hi, 0)] + [(0, 0, 0)] * 3)
    return y


def _forward_s1(x: jax.Array, w: jax.Array, padding, config: ConvConfig) -> jax.Array:
    """Stride-1 convolution with explicit ``padding`` (negative pads crop)."""
    if x.ndim == 5 and w.shape[0] > 1:
        return _temporal_taps(x, w, padding, config)
    if x.ndim == 5:
        return _single_tap(x, w, padding, config)
    return _lax_conv(x, w, (1,) * (x.ndim - 2), padding, config)


def _flipped(w: jax.Array, groups: int = 1) -> jax.Array:
    """The kernel of the transposed convolution: spatial axes reversed, in/out swapped
    within each of the ``groups`` (kernel (..., I/G, G*O') -> (..., O', G*I/G), so the
    transposed convolution has the same groups, group g's outputs g's inputs)."""
    nd = w.ndim - 2
    w = lax.rev(w, tuple(range(nd)))
    if groups == 1:
        return jnp.swapaxes(w, -1, -2)
    *kernel, per_group_in, out = w.shape
    w = w.reshape(*kernel, per_group_in, groups, out // groups)
    w = jnp.moveaxis(w, (-3, -2, -1), (-1, -2, -3))  # (..., O', G, I/G)
    return w.reshape(*kernel, out // groups, groups * per_group_in)


def _input_grad_s1(g: jax.Array, w: jax.Array, padding, x_shape) -> tuple:
    """Padding of the forward convolution of ``g`` with :func:`_flipped` ``w`` that
    gives the input gradient of a stride-1 convolution of an input of ``x_shape``."""
    pads = []
    for (lo, _), k, size_in, size_out in zip(padding, w.shape, x_shape[1:-1], g.shape[1:-1],
                                             strict=False):  # fmt: skip
        low = k - 1 - lo
        pads.append((low, size_in - (size_out + low - k + 1)))
    return tuple(pads)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _s1(x: jax.Array, w: jax.Array, padding, config: ConvConfig) -> jax.Array:
    return _forward_s1(x, w, padding, config)


def _s1_fwd(x, w, padding, config):
    return _forward_s1(x, w, padding, config), (x, w)


def _s1_bwd(padding, config, residuals, g):
    x, w = residuals
    w = _after(w, g)
    pads = _input_grad_s1(g, w, padding, x.shape)
    dx = _forward_s1(g, _flipped(w, config.groups).astype(g.dtype), pads, config)
    dx = dx.astype(x.dtype)
    # The kernel gradient (training) of the same decomposed forward, by autodiff.
    _, pull = jax.vjp(lambda v: _forward_s1(x, v, padding, config), w)
    (dw,) = pull(g)
    return dx, dw.astype(w.dtype)


_s1.defvjp(_s1_fwd, _s1_bwd)


# --------------------------------------------------------------------------
# Strided convolutions: the polyphase form.


def _phase_taps(k: int, s: int, r: int) -> int:
    """How many of a kernel axis' ``k`` taps fall on stride phase ``r``."""
    return max(0, -(-(k - r) // s))


def _polyphase(x: jax.Array, w: jax.Array, config: ConvConfig) -> jax.Array:
    """Strided convolution as a sum of stride-1 convolutions, one per stride phase:
    tap ``k = s q + r`` of an axis reads padded input ``s (o + q) + r``, so phase
    ``r`` of the padded input (every s-th element from r) convolved with the taps
    ``r, r + s, ...`` gives that phase's share of every output."""
    nd = x.ndim - 2
    out_sizes, pads, phase_counts = [], [], []
    for axis in range(nd):
        size, k, s = x.shape[1 + axis], w.shape[axis], config.strides[axis]
        lo, hi = config.padding[axis]
        out = (size + lo + hi - k) // s + 1
        out_sizes.append(out)
        if s == 1:
            pads.append((0, 0, 0))
            phase_counts.append(1)
            continue
        phases = min(k, s)
        rows = out + _phase_taps(k, s, 0) - 1  # padded length / s, phase 0 the longest
        pads.append((lo, rows * s - size - lo, 0))
        phase_counts.append(phases)
    padded = lax.pad(x, jnp.zeros((), x.dtype), [(0, 0, 0), *pads, (0, 0, 0)])
    total = None
    for phase in _product(phase_counts):
        window, kernel, padding = [slice(None)], [], []
        for axis, r in enumerate(phase):
            s = config.strides[axis]
            if s == 1:
                window.append(slice(None))
                kernel.append(slice(None))
                padding.append(config.padding[axis])
            else:
                window.append(slice(r, None, s))
                kernel.append(slice(r, None, s))
                padding.append((0, 0))
        part_x = padded[tuple(window)]
        part_w = w[tuple(kernel)]
        y = _s1(part_x, part_w, tuple(padding), config)
        y = y[(slice(None), *(slice(0, o) for o in out_sizes))]
        total = y if total is None else total + y
    return total


def _product(counts: list[int]) -> list[tuple[int, ...]]:
    out: list[tuple[int, ...]] = [()]
    for count in counts:
        out = [(*p, r) for p in out for r in range(count)]
    return out


# --------------------------------------------------------------------------
# Entry points.


def _fast(x: jax.Array, w: jax.Array, config: ConvConfig) -> jax.Array:
    if config.strided:
        return _polyphase(x, w, config)
    return _s1(x, w, config.padding, config)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _model_conv(x: jax.Array, w: jax.Array, config: ConvConfig) -> jax.Array:
    return _lax_conv(x, w, config.strides, config.padding, config)


def _model_conv_fwd(x, w, config):
    return _fast(x, w, config), (x, w)


def _model_conv_bwd(config, residuals, g):
    x, w = residuals
    _, pull = jax.vjp(lambda a, b: _fast(a, b, config), x, w)
    return pull(g)


_model_conv.defvjp(_model_conv_fwd, _model_conv_bwd)


#: Convolutions whose input and output both hold fewer elements than this stay
#: lax's own: their time is small either way, while the fast forms' several
#: convolutions per layer cost compilation time (a thin R3D-18 at 8x32x32,
#: gradient: 33.7 s with them, 3.5 s without, nearly all compiling). Elements,
#: not flops: lax's 3D convolutions with few channels are slow whatever their
#: flops (C3D's Flat through one unit, 16x112x112x3 -> 1: 3x slower, 33 MFLOP).
#: Tests set it to 0 to test the fast forms.
MIN_FAST_ELEMENTS = 150_000


def _output_shape(lhs_shape, rhs_shape, config: ConvConfig) -> tuple[int, ...]:
    axes = zip(lhs_shape[1:-1], rhs_shape[:-2], config.strides, config.padding, strict=True)
    sizes = [(size + lo + hi - k) // s + 1 for size, k, s, (lo, hi) in axes]
    return (lhs_shape[0], *sizes, rhs_shape[-1])


def _dispatch(lhs, rhs, args, kwargs, fast: bool) -> jax.Array:
    config = conv_config(jnp.shape(lhs), jnp.shape(rhs), *args, **kwargs)
    if config is not None:
        out = _output_shape(jnp.shape(lhs), jnp.shape(rhs), config)
        if max(math.prod(jnp.shape(lhs)), math.prod(out)) < MIN_FAST_ELEMENTS:
            config = None
            if fast:  # the rules' modified kernels: made when the layer runs (see _after)
                rhs = _after(jnp.asarray(rhs), jnp.asarray(lhs))
    if config is None:
        if kwargs.get("out_sharding", 1) is None:  # a primitive's parameters: lax's default
            del kwargs["out_sharding"]
        return lax.conv_general_dilated(lhs, rhs, *args, **kwargs)
    lhs, rhs = jnp.asarray(lhs), jnp.asarray(rhs)
    return _fast(lhs, rhs, config) if fast else _model_conv(lhs, rhs, config)


def conv_general_dilated(lhs: jax.Array, rhs: jax.Array, *args: Any, **kwargs: Any) -> jax.Array:
    """:func:`jax.lax.conv_general_dilated` (same arguments and result) whose
    derivative runs the fast forms of this module; its primal computation is
    the one primitive. Pass it to ``flax.linen.Conv(conv_general_dilated=...)``."""
    return _dispatch(lhs, rhs, args, kwargs, fast=False)


def fast_conv(lhs: jax.Array, rhs: jax.Array, *args: Any, **kwargs: Any) -> jax.Array:
    """:func:`jax.lax.conv_general_dilated` computed in the fast forms, forward
    and derivative; also takes the primitive's parameters as keywords
    (``fast_conv(x, w, **eqn.params)``)."""
    return _dispatch(lhs, rhs, args, kwargs, fast=True)


def flops(lhs_shape: Sequence[int], rhs_shape: Sequence[int], out_shape: Sequence[int]) -> int:
    """Multiply-adds x 2 of a convolution (for benchmarks' GFLOP/s)."""
    return 2 * math.prod(out_shape) * math.prod(rhs_shape[:-1])
