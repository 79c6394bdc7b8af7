"""Scores of one relevance map (or motion mask) alone: how many voxels a mask keeps,
how concentrated and how complex a map is, and its mass per frame."""

from __future__ import annotations

import functools
from typing import Any, Literal

import jax
import jax.numpy as jnp

from selrel_jax._checks import one_of, safe_divide
from selrel_jax.metrics._inputs import (
    ascending,
    checked_mask,
    checked_relevance,
    magnitudes,
    unit_magnitudes,
)
from selrel_jax.selective import Layout, _nan_where, _per_clip

MaskLayout = Literal["THW", "NTHW"]
EntropyUnit = Literal["nats", "bits"]
#: Units of :func:`entropy`: natural logarithm (nats) or base 2 (bits).
ENTROPY_UNITS = ("nats", "bits")


def _gini_of_clip(clip: jax.Array) -> jax.Array:
    return _gini_of_sorted(ascending(unit_magnitudes(clip)))


def _gini_of_sorted(v: jax.Array) -> jax.Array:
    """Gini index of the flat values ``v`` sorted ascending (NaN if their sum is not
    finite): the sweep reuses the sort it ranks voxels with."""
    n = v.size
    total = jnp.sum(v)
    rank = jnp.arange(1, n + 1, dtype=v.dtype)
    # All zero: the numerator is 0 as well, and safe_divide() makes that 0.
    g = safe_divide(jnp.sum((2 * rank - n - 1) * v), n * total)
    return _nan_where(~jnp.isfinite(total), g)


def _ginis_of_selections(v: jax.Array, ascending_v: jax.Array, selections: jax.Array) -> jax.Array:
    """Gini index of ``where(selections[k], v, 0)`` for each of the S bool
    ``selections`` (S, *v.shape) of the magnitudes ``v >= 0`` of one clip, from their
    ascending sort ``ascending_v``: (S,), without a sort per selection.

    A selection's own ascending order is its zeros followed by its selected values in
    ``ascending_v``'s order. Each voxel's rank (the first place of its value in
    ``ascending_v``) and a count of the selected voxels at each rank (a scatter-add,
    ~4x faster on XLA:CPU than a sort) give each run of c equal selected values its
    places ``P + 1 .. P + c`` in that order (``P``: the unselected voxels and the
    selected ones of smaller values), whose Gini weights ``2i - n - 1`` sum to
    ``c (2P + c - n)``. :func:`gini` of the selected map up to float32 rounding; NaN
    handling is the caller's."""
    n = ascending_v.size
    as_int = functools.partial(jax.lax.bitcast_convert_type, new_dtype=jnp.int32)
    rank = jnp.searchsorted(as_int(ascending_v), as_int(v.ravel()), method="scan")
    chosen = selections.reshape(selections.shape[0], n).astype(jnp.int32)  # (S, n)
    count = jnp.zeros_like(chosen).at[:, rank].add(chosen)  # (S, n ranks)
    # Selected voxels of smaller values: an exclusive running sum (an associative scan,
    # as in top_k_selection). Rank along the minor axis: sums over a major axis of
    # (n, S) took 1.3x longer.
    below = jax.lax.associative_scan(jnp.add, count, axis=1) - count
    m = jnp.sum(count, axis=1, keepdims=True)
    dtype = ascending_v.dtype
    c, places = count.astype(dtype), (2 * (n - m + below) - n).astype(dtype)
    weighted = jnp.sum(c * (places + c) * ascending_v, axis=1)
    return safe_divide(weighted, n * jnp.sum(c * ascending_v, axis=1))


def _entropy_of_clip(clip: jax.Array, unit: str) -> jax.Array:
    v = unit_magnitudes(clip).ravel()
    total = jnp.sum(v)
    p = safe_divide(v, total)
    # 0 log 0 = 0: empty voxels (and an all-zero map) add nothing.
    h = -jnp.sum(jnp.where(p > 0, p * jnp.log(jnp.where(p > 0, p, 1)), 0))
    if unit == "bits":
        h = h / jnp.log(jnp.asarray(2, h.dtype))
    return _nan_where(~jnp.isfinite(total), h)


def _frame_mass_of_clip(clip: jax.Array) -> jax.Array:
    mass = jnp.sum(magnitudes(clip), axis=(1, 2))
    return _nan_where(~jnp.all(jnp.isfinite(mass)), mass)


@functools.partial(jax.jit, static_argnames=("batched",))
def _gini(x, batched):
    return _per_clip(_gini_of_clip, x, batched)


@functools.partial(jax.jit, static_argnames=("batched", "unit"))
def _entropy(x, batched, unit):
    return _per_clip(functools.partial(_entropy_of_clip, unit=unit), x, batched)


@functools.partial(jax.jit, static_argnames=("batched",))
def _frame_mass(x, batched):
    return _per_clip(_frame_mass_of_clip, x, batched)


@functools.partial(jax.jit, static_argnames=("batched",))
def _kept_voxels(mask, batched):
    return _per_clip(lambda m: jnp.mean(m, dtype=jnp.float32), mask, batched)


def kept_voxels(mask: Any, *, layout: MaskLayout | None = None) -> jax.Array:
    """Share of voxels a motion mask keeps, per clip: ``mean(mask)`` over (T, H, W).

    Args:
      mask: bool motion mask as :func:`~selrel_jax.motion_mask` returns it: one
        clip (T, H, W) or a batch (N, T, H, W) (masks have no channel axis, so
        rank 4 is a batch).
      layout: ``"THW"`` or ``"NTHW"``; None: by rank.

    Returns:
      float32 in [0, 1]: a scalar for one clip, (N,) for a batch.

    Examples:
        >>> import jax.numpy as jnp
        >>> import selrel_jax as sr
        >>> from selrel_jax.data import synthetic_motion
        >>> data = synthetic_motion.generate_split("tiny", "test", seed=1, count=2)
        >>> rel = jnp.asarray(data["video"], jnp.float32) / 255   # stands in for a relevance map
        >>> sel = sr.selective_relevance(rel, sigma=2.0)
        >>> from selrel_jax.metrics import kept_voxels
        >>> kept = kept_voxels(sr.motion_mask(rel, sigma=2.0))   # share of voxels that move
        >>> kept.shape, bool(((kept > 0) & (kept < 0.5)).all())
        ((2,), True)
    """
    m = checked_mask("kept_voxels", mask, layout)
    return _kept_voxels(m, m.ndim == 4)


def gini(relevance: Any, *, layout: Layout | None = None) -> jax.Array:
    """Gini index of the voxels' channel-summed |relevance|, per clip.

    With ``x`` the T*H*W values ``sum_c |R[t, h, w, c]|`` sorted ascending
    (``i = 1..n``): ``G = sum_i (2i - n - 1) x_i / (n sum_i x_i)``. 0 when every
    voxel holds the same mass, ``(n - 1) / n`` when one voxel holds it all; 0 for
    an all-zero map. Invariant to scaling and to permuting voxels.

    Args:
      relevance: real floating (T, H, W), (T, H, W, C) or (N, T, H, W, C); (N, T, H, W)
        with ``layout="NTHW"``.
      layout: how to read the axes (see :data:`~selrel_jax.selective.LAYOUTS`).

    Returns:
      a scalar for one clip, (N,) for a batch; float32 (float64 for float64 input).
      NaN for a clip with NaN/Inf values under jit (eager calls raise).

    Examples:
        >>> import jax.numpy as jnp
        >>> import selrel_jax as sr
        >>> from selrel_jax.data import synthetic_motion
        >>> data = synthetic_motion.generate_split("tiny", "test", seed=1, count=2)
        >>> rel = jnp.asarray(data["video"], jnp.float32) / 255   # stands in for a relevance map
        >>> sel = sr.selective_relevance(rel, sigma=2.0)
        >>> from selrel_jax.metrics import gini
        >>> gini(sel) > gini(rel)   # selection makes explanations sparser
        Array([ True,  True], dtype=bool)
    """
    x, batched = checked_relevance("gini", relevance, layout)
    return _gini(x, batched)


def entropy(
    relevance: Any, *, unit: EntropyUnit = "nats", layout: Layout | None = None
) -> jax.Array:
    """Shannon entropy of the normalised map, per clip: how spread out relevance is.

    With ``v`` the T*H*W values ``sum_c |R[t, h, w, c]|`` and ``p = v / sum(v)``:
    ``H = -sum_i p_i log p_i`` (``0 log 0 = 0``), natural logarithm for
    ``unit="nats"``, base 2 for ``"bits"``. 0 when one voxel holds all the mass and
    for an all-zero map; at most ``log(n)`` (every voxel equal). ``exp(H)`` reads as
    the number of voxels that effectively carry the relevance. Invariant to scaling
    and to permuting voxels.

    Args:
      relevance: real floating (T, H, W), (T, H, W, C) or (N, T, H, W, C); (N, T, H, W)
        with ``layout="NTHW"``.
      unit: ``"nats"`` or ``"bits"``.
      layout: how to read the axes (see :data:`~selrel_jax.selective.LAYOUTS`).

    Returns:
      a scalar for one clip, (N,) for a batch; float32 (float64 for float64 input).
      NaN for a clip with NaN/Inf values under jit (eager calls raise).

    Examples:
        >>> import jax.numpy as jnp
        >>> import selrel_jax as sr
        >>> from selrel_jax.data import synthetic_motion
        >>> data = synthetic_motion.generate_split("tiny", "test", seed=1, count=2)
        >>> rel = jnp.asarray(data["video"], jnp.float32) / 255   # stands in for a relevance map
        >>> sel = sr.selective_relevance(rel, sigma=2.0)
        >>> from selrel_jax.metrics import entropy
        >>> entropy(sel, unit="bits") < entropy(rel, unit="bits")   # selection simplifies
        Array([ True,  True], dtype=bool)
    """
    one_of("entropy: unit", unit, ENTROPY_UNITS)
    x, batched = checked_relevance("entropy", relevance, layout)
    return _entropy(x, batched, unit)


def frame_mass(relevance: Any, *, layout: Layout | None = None) -> jax.Array:
    """Relevance mass of each frame: ``sum |R|`` over (H, W, C).

    Args:
      relevance: real floating (T, H, W), (T, H, W, C) or (N, T, H, W, C); (N, T, H, W)
        with ``layout="NTHW"``.
      layout: how to read the axes (see :data:`~selrel_jax.selective.LAYOUTS`).

    Returns:
      (T,) for one clip, (N, T) for a batch; float32 (float64 for float64 input).
      All NaN for a clip with NaN/Inf values under jit (eager calls raise).

    Examples:
        >>> import jax.numpy as jnp
        >>> import selrel_jax as sr
        >>> from selrel_jax.data import synthetic_motion
        >>> data = synthetic_motion.generate_split("tiny", "test", seed=1, count=2)
        >>> rel = jnp.asarray(data["video"], jnp.float32) / 255   # stands in for a relevance map
        >>> sel = sr.selective_relevance(rel, sigma=2.0)
        >>> from selrel_jax.metrics import frame_mass
        >>> masses = {"relevance": frame_mass(rel), "selective": frame_mass(sel)}
        >>> masses["selective"].shape, bool((masses["selective"] <= masses["relevance"]).all())
        ((2, 8), True)
    """
    x, batched = checked_relevance("frame_mass", relevance, layout)
    return _frame_mass(x, batched)
