"""Argument checks and small pieces the scores share: relevance maps, masks, per-clip
counts, and the voxel ranking every top-k score uses."""

from __future__ import annotations

import functools
import operator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from selrel_jax._checks import check_finite, describe, real, scaled_to_unit
from selrel_jax.errors import DTypeError, OptionError, ShapeError
from selrel_jax.selective import _as_array, _compute_dtype, _resolve_layout, _traced

#: How the axes of a mask are read: one clip (T, H, W) or a batch (N, T, H, W).
MASK_LAYOUTS = {"THW": 3, "NTHW": 4}
_MASK_LAYOUT_OF_RANK = {3: "THW", 4: "NTHW"}


def checked_relevance(
    fn: str, relevance: Any, layout: str | None, name: str = "relevance"
) -> tuple[jax.Array, bool]:
    """``(array, batched)`` of a real floating relevance map without NaN/Inf (eager)."""
    x = _as_array(relevance, fn, name)
    if not jnp.issubdtype(jnp.result_type(x), jnp.floating):
        raise DTypeError(f"{fn}: {name} must be a real floating array; got {describe(x)}")
    layout = _resolve_layout(fn, x, layout, name=name)
    check_finite(f"{fn}: {name}", x, batched=layout.startswith("N"))
    return jnp.asarray(x), layout.startswith("N")


def checked_mask(fn: str, mask: Any, layout: str | None = None, name: str = "mask") -> jax.Array:
    """A bool mask (T, H, W) or (N, T, H, W), its layout by rank unless given."""
    m = _as_array(mask, fn, name)
    if jnp.result_type(m) != jnp.bool_:
        raise DTypeError(f"{fn}: {name} must be a bool array; got {describe(m)}")
    _resolve_layout(fn, m, layout, name=name, layouts=MASK_LAYOUTS, by_rank=_MASK_LAYOUT_OF_RANK)
    return jnp.asarray(m)


def mask_for(fn: str, mask: Any, relevance: jax.Array, batched: bool) -> tuple[jax.Array, bool]:
    """``(mask, mask_batched)``: a bool mask with the relevance's (T, H, W); a batch of
    relevance maps takes one mask per clip (N, T, H, W) or one (T, H, W) for all."""
    m = _as_array(mask, fn, "mask")
    if jnp.result_type(m) != jnp.bool_:
        raise DTypeError(f"{fn}: mask must be a bool array; got {describe(m)}")
    thw = tuple(jnp.shape(relevance)[1:4] if batched else jnp.shape(relevance)[:3])
    shapes = [thw, (jnp.shape(relevance)[0], *thw)] if batched else [thw]
    if tuple(jnp.shape(m)) not in shapes:
        wanted = " or ".join(str(s) for s in shapes)
        raise ShapeError(
            f"{fn}: mask must have shape {wanted} to match relevance "
            f"{describe(relevance)}; got {describe(m)}"
        )
    return jnp.asarray(m), jnp.ndim(m) == 4


def checked_counts(fn: str, name: str, k: Any, clips: int | None, limit: int) -> jax.Array:
    """Per-clip voxel counts as int32, ``()`` for one clip or ``(N,)`` for a batch (a
    scalar is used for every clip). Concrete counts must lie in [0, limit]; a traced
    count out of range is found in the computation (that clip's scores are NaN)."""
    k = k if _traced(k) or isinstance(k, jax.Array) else np.asarray(k)
    dtype = jnp.result_type(k)
    if not jnp.issubdtype(dtype, jnp.integer) or dtype == jnp.bool_:
        raise DTypeError(f"{fn}: {name} must be integer; got {describe(k)}")
    shape = tuple(jnp.shape(k))
    if shape not in ((), (clips,) if clips is not None else ()):
        wanted = "a scalar" + (f" or ({clips},), one per clip" if clips is not None else "")
        raise ShapeError(f"{fn}: {name} must be {wanted}; got {describe(k)}")
    if not _traced(k):
        values = np.asarray(k)
        bad = (values < 0) | (values > limit)
        if bad.any():
            raise OptionError(
                f"{fn}: {name} must lie in [0, {limit}] (the voxels of a clip); got "
                f"{values[bad].ravel()[:5].tolist()}"
            )
    k = jnp.asarray(k).astype(jnp.int32)
    return k if clips is None else jnp.broadcast_to(k, (clips,))


def checked_fraction(fn: str, name: str, value: Any) -> Any:
    """A share in [0, 1]: a concrete one is checked here, a traced scalar is passed on
    (out of range or NaN makes every score NaN)."""
    if _traced(value):
        if jnp.ndim(value) != 0 or not jnp.issubdtype(jnp.result_type(value), jnp.floating):
            raise OptionError(f"{fn}: {name} must be a real scalar; got {describe(value)}")
        return value
    if isinstance(value, np.ndarray | jax.Array) and value.ndim == 0:
        value = value.item()
    value = real(f"{fn}: {name}", value, minimum=0.0)
    if value > 1:
        raise OptionError(f"{fn}: {name} must lie in [0, 1]; got {value!r}")
    return value


def magnitudes(clip: jax.Array) -> jax.Array:
    """(T, H, W) channel-summed |relevance| of one clip, in its compute dtype.

    The channels are added one by one in their order, an elementwise sequence whose
    result does not depend on batching or devices (ties in a ranking stay ties)."""
    a = jnp.abs(clip.astype(_compute_dtype(clip.dtype)))
    if a.ndim == 3:
        return a
    return functools.reduce(operator.add, [a[..., c] for c in range(a.shape[-1])])


def unit_magnitudes(clip: jax.Array) -> jax.Array:
    """:func:`magnitudes` of the clip scaled by a power of two to a largest |value| in
    [1, 2) (:func:`~selrel_jax._checks.scaled_to_unit`), for the scores that do not
    depend on a map's scale: their sums can't overflow (a map scaled by 1e37 gave NaN)
    and a map of subnormal values is read (it gave 0), and the ranking of the voxels
    is the same as of :func:`magnitudes`."""
    return magnitudes(scaled_to_unit(clip.astype(_compute_dtype(clip.dtype))))


def ascending(v: jax.Array) -> jax.Array:
    """The flat values of ``v >= 0`` (magnitudes) sorted ascending.

    Non-negative floats order as their bit patterns read as integers, so the sort
    runs on those: XLA:CPU sorts a lone integer array ~5x faster than floats, whose
    comparator orders NaN and -0 too (the result is the same; a NaN, which has
    no place in either order, only ever makes the callers' scores NaN)."""
    flat = v.ravel()
    bits = jnp.dtype(f"int{8 * flat.dtype.itemsize}")
    keys = jax.lax.bitcast_convert_type(flat, bits)
    return jax.lax.bitcast_convert_type(jnp.sort(keys), flat.dtype)


def top_k_selection(v: jax.Array, k: jax.Array, ascending_v: jax.Array | None = None) -> jax.Array:
    """Bool, shaped as ``v >= 0``: the first ``k`` voxels of :func:`order_of`'s order.

    That is every voxel above the k-th largest value ``t`` and, of those equal to
    ``t``, the ones with the smallest flat indices: one sort of the values
    (``ascending_v``, :func:`ascending` of ``v`` unless given) and O(n) passes,
    instead of the slower sort of (value, index) pairs. ``k`` is clipped to [0, n]."""
    s = ascending(v) if ascending_v is None else ascending_v
    chosen = jnp.clip(k, 0, s.size)
    kth = s[s.size - jnp.maximum(chosen, 1)]  # the k-th largest value
    above = v > kth
    ties = v == kth
    # 1, 2, ... along the ties; an associative scan: jnp.cumsum's reduce_window took
    # ~4x longer on XLA:CPU (integers: the same sums).
    tie_number = jax.lax.associative_scan(jnp.add, ties.ravel().astype(jnp.int32))
    tie_number = tie_number.reshape(v.shape)
    return (above | (ties & (tie_number <= chosen - jnp.sum(above)))) & (chosen > 0)


def order_of(v: jax.Array) -> jax.Array:
    """Flat voxel indices from the largest to the smallest ``v``; equal values in
    increasing index order."""
    flat = v.ravel()
    _, order = jax.lax.sort((-flat, jax.lax.iota(jnp.int32, flat.size)), num_keys=2)
    return order


def rank_of(v: jax.Array) -> jax.Array:
    """The 0-based rank of each voxel in :func:`order_of`'s order, shaped as ``v``."""
    order = order_of(v)
    rank = jnp.zeros(order.shape, jnp.int32).at[order].set(jnp.arange(order.size, dtype=jnp.int32))
    return rank.reshape(v.shape)
