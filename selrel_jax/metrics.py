"""Scores of relevance maps and motion masks: one definition of each.

Every score here is a pure function of arrays: jit-compiled on eager calls, and
composable with ``jax.jit`` and ``jax.vmap``. Axes are read as in
:mod:`selrel_jax.selective`: without ``layout=`` the rank decides (3 is one clip
(T, H, W), 4 one clip (T, H, W, C), 5 a batch (N, T, H, W, C)); a channel-less
batch (N, T, H, W) needs ``layout="NTHW"``. Motion masks never have channels, so
:func:`kept_voxels` reads rank 4 as a batch of masks (N, T, H, W).

Invalid values follow the library's policy: an eager call with NaN or infinite
relevance raises :class:`~selrel_jax.errors.NonFiniteError` naming the count and
the clips; under ``jit`` the affected clip's score is NaN and the other clips'
are untouched.

Scores:

- :func:`spatial_bias` (from :mod:`selrel_jax.selective`): share of relevance
  mass that selection removed. For a whole video, call it on the video's frames
  (T, H, W[, C]) or on its clips joined along time,
  ``spatial_bias(rel.reshape(-1, *rel.shape[2:]), sel.reshape(-1, *sel.shape[2:]))``:
  one number, the per-clip values weighted by each clip's relevance mass (not
  their plain mean).
- :func:`kept_voxels`: share of voxels a motion mask keeps.
- :func:`gini`: how concentrated relevance is (0 uniform, towards 1 one voxel).
- :func:`frame_mass`: relevance mass of each frame.

Example::

    from selrel_jax import metrics
    sel = sr.selective_relevance(rel, sigma=2.0)         # rel: (N, T, H, W, C)
    metrics.spatial_bias(rel, sel)                       # (N,)
    metrics.kept_voxels(sr.motion_mask(rel, sigma=2.0))  # (N,)
    metrics.gini(rel), metrics.gini(sel)                 # (N,) each: sel is sparser
    metrics.frame_mass(rel)                              # (N, T)
"""

from __future__ import annotations

import functools
from typing import Any, Literal

import jax
import jax.numpy as jnp

from selrel_jax.errors import DTypeError
from selrel_jax.selective import (
    Layout,
    _as_array,
    _check_finite,
    _compute_dtype,
    _describe,
    _nan_where,
    _per_clip,
    _resolve_layout,
    spatial_bias,
)

__all__ = ["MASK_LAYOUTS", "frame_mass", "gini", "kept_voxels", "spatial_bias"]

#: How the axes of a motion mask are read: one clip (T, H, W) or a batch (N, T, H, W).
MASK_LAYOUTS = {"THW": 3, "NTHW": 4}
MaskLayout = Literal["THW", "NTHW"]
_MASK_LAYOUT_OF_RANK = {3: "THW", 4: "NTHW"}


def _checked_relevance(fn: str, relevance: Any, layout: str | None) -> tuple[jax.Array, bool]:
    """``(array, batched)`` of a real floating relevance map without NaN/Inf (eager)."""
    x = _as_array(relevance, fn, "relevance")
    if not jnp.issubdtype(jnp.result_type(x), jnp.floating):
        raise DTypeError(f"{fn}: relevance must be a real floating array; got {_describe(x)}")
    layout = _resolve_layout(fn, x, layout)
    _check_finite(fn, x, layout)
    return jnp.asarray(x), layout.startswith("N")


def _abs_voxels(clip: jax.Array) -> jax.Array:
    """(T, H, W) channel-summed |relevance| of one clip, in its compute dtype."""
    a = jnp.abs(clip.astype(_compute_dtype(clip.dtype)))
    return jnp.sum(a, axis=-1) if clip.ndim == 4 else a


def _gini_of_clip(clip: jax.Array) -> jax.Array:
    v = jnp.sort(_abs_voxels(clip).ravel())
    n = v.size
    total = jnp.sum(v)
    rank = jnp.arange(1, n + 1, dtype=v.dtype)
    # All zero: the numerator is 0 as well; dividing by 1 instead of 0 makes that 0.
    g = jnp.sum((2 * rank - n - 1) * v) / (n * jnp.where(total > 0, total, 1))
    return _nan_where(~jnp.isfinite(total), g)


def _frame_mass_of_clip(clip: jax.Array) -> jax.Array:
    mass = jnp.sum(_abs_voxels(clip), axis=(1, 2))
    return _nan_where(~jnp.all(jnp.isfinite(mass)), mass)


@functools.partial(jax.jit, static_argnames=("batched",))
def _gini(x, batched):
    return _per_clip(_gini_of_clip, x, batched)


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

    Example::

        kept_voxels(sr.motion_mask(rel, sigma=2.0))   # e.g. 0.04: 4% of voxels move
    """
    m = _as_array(mask, "kept_voxels", "mask")
    if jnp.result_type(m) != jnp.bool_:
        raise DTypeError(f"kept_voxels: mask must be a bool array; got {_describe(m)}")
    layout = _resolve_layout(
        "kept_voxels", m, layout, name="mask", layouts=MASK_LAYOUTS, by_rank=_MASK_LAYOUT_OF_RANK
    )
    return _kept_voxels(jnp.asarray(m), layout.startswith("N"))


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

    Example::

        gini(sel) > gini(rel)   # selection makes explanations sparser
    """
    x, batched = _checked_relevance("gini", relevance, layout)
    return _gini(x, batched)


def frame_mass(relevance: Any, *, layout: Layout | None = None) -> jax.Array:
    """Relevance mass of each frame: ``sum |R|`` over (H, W, C).

    Args:
      relevance: real floating (T, H, W), (T, H, W, C) or (N, T, H, W, C); (N, T, H, W)
        with ``layout="NTHW"``.
      layout: how to read the axes (see :data:`~selrel_jax.selective.LAYOUTS`).

    Returns:
      (T,) for one clip, (N, T) for a batch; float32 (float64 for float64 input).
      All NaN for a clip with NaN/Inf values under jit (eager calls raise).

    Example::

        masses = {"relevance": frame_mass(rel), "selective": frame_mass(sel)}
    """
    x, batched = _checked_relevance("frame_mass", relevance, layout)
    return _frame_mass(x, batched)
