"""Scores of a relevance map against a ground-truth mask: which voxels it selects (at a
threshold, or its top k), how they overlap the mask, and how much mass lies inside.

Every score reads the voxels' channel-summed magnitude ``v = sum_c |R|``. Rankings
order voxels by ``v``, largest first, equal values in increasing flat (t, h, w) index,
so a top-k selection never depends on batching, devices or sort stability.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from selrel_jax._checks import describe, integer, positive_int, safe_divide
from selrel_jax.errors import DTypeError, OptionError, ShapeError
from selrel_jax.metrics._inputs import (
    checked_counts,
    checked_fraction,
    checked_mask,
    checked_relevance,
    mask_for,
    top_k_selection,
    unit_magnitudes,
)
from selrel_jax.selective import Layout, _as_array, _nan_where, _traced


class Overlap(NamedTuple):
    """Overlap of the selected voxels S with a mask M, per clip (each a scalar for one
    clip, (N,) for a batch). A ratio whose denominator is 0 is 0."""

    #: ``|S & M| / |S|`` (0 when nothing is selected).
    precision: jax.Array
    #: ``|S & M| / |M|`` (0 for an empty mask).
    recall: jax.Array
    #: ``|S & M| / |S | M|`` (0 when both are empty).
    iou: jax.Array


def _overlap(hits: jax.Array, chosen: jax.Array, relevant: jax.Array, dtype: Any) -> Overlap:
    """The scores of ``hits`` of ``chosen`` selected voxels against ``relevant`` ones."""
    hits, chosen, relevant = (jnp.asarray(c).astype(dtype) for c in (hits, chosen, relevant))
    union = chosen + relevant - hits
    return Overlap(safe_divide(hits, chosen), safe_divide(hits, relevant), safe_divide(hits, union))


def _invalid_overlap(invalid: jax.Array, scores: Overlap) -> Overlap:
    return Overlap(*(_nan_where(invalid, s) for s in scores))


def _threshold_selection(v: jax.Array, fraction: Any) -> jax.Array:
    # v > 0: a zero-relevance voxel is never selected, so an all-zero map selects none.
    return (v > 0) & (v >= jnp.asarray(fraction, v.dtype) * jnp.max(v))


def _bad_fraction(fraction: Any) -> jax.Array:
    f = jnp.asarray(fraction, jnp.float32)
    return ~((f >= 0) & (f <= 1))  # NaN too


def _overlap_at_threshold_of_clip(clip, mask, fraction):
    v = unit_magnitudes(clip)
    selected = _threshold_selection(v, fraction)
    scores = _overlap(jnp.sum(selected & mask), jnp.sum(selected), jnp.sum(mask), v.dtype)
    return _invalid_overlap(~jnp.all(jnp.isfinite(v)) | _bad_fraction(fraction), scores)


def _top_k_counts(
    v: jax.Array, mask: jax.Array, k: jax.Array, ascending_v: jax.Array | None = None
) -> tuple[jax.Array, ...]:
    """``(hits, chosen, relevant)`` of the top-k voxels of ``v`` against ``mask``
    (``ascending_v``: ``v``'s sorted values, when the caller has them)."""
    selected = top_k_selection(v, k, ascending_v)
    count = functools.partial(jnp.sum, dtype=jnp.int32)
    return count(selected & mask), jnp.clip(k, 0, v.size), count(mask)


def _overlap_at_k_of_clip(clip, mask, k):
    return _overlap_at_k_of_magnitudes(unit_magnitudes(clip), mask, k)


def _overlap_at_k_of_magnitudes(v, mask, k, ascending_v=None):
    """:func:`overlap_at_k` of one clip's magnitudes ``v`` (``ascending_v``: their
    sorted values, when the caller has them: the sweep sorts once for every sigma)."""
    scores = _overlap(*_top_k_counts(v, mask, k, ascending_v), v.dtype)
    invalid = ~jnp.all(jnp.isfinite(v)) | (k < 0) | (k > v.size)
    return _invalid_overlap(invalid, scores)


def _vmap(fn, batched: bool, mask_batched: bool, k_batched: bool = False):
    """``fn(clip, mask, extra)`` over the clips of a batch (a shared mask or extra stays)."""
    if not batched:
        return fn
    return jax.vmap(fn, in_axes=(0, 0 if mask_batched else None, 0 if k_batched else None))


@functools.partial(jax.jit, static_argnames=("batched", "mask_batched"))
def _overlap_at_threshold(x, mask, fraction, batched, mask_batched):
    return _vmap(_overlap_at_threshold_of_clip, batched, mask_batched)(x, mask, fraction)


@functools.partial(jax.jit, static_argnames=("batched", "mask_batched"))
def _overlap_at_k(x, mask, k, batched, mask_batched):
    return _vmap(_overlap_at_k_of_clip, batched, mask_batched, True)(x, mask, k)


def _top_k_of_clip(clip, k):
    v = unit_magnitudes(clip)
    valid = jnp.all(jnp.isfinite(v)) & (k >= 0) & (k <= v.size)
    return top_k_selection(v, k) & valid


@functools.partial(jax.jit, static_argnames=("batched",))
def _top_k_voxels(x, k, batched):
    return jax.vmap(_top_k_of_clip)(x, k) if batched else _top_k_of_clip(x, k)


def _mass_in_mask_of_clip(clip, mask, _):
    v = unit_magnitudes(clip)
    total = jnp.sum(v)
    share = safe_divide(jnp.sum(jnp.where(mask, v, 0)), total)
    return _nan_where(~jnp.isfinite(total), share)


@functools.partial(jax.jit, static_argnames=("batched", "mask_batched"))
def _mass_in_mask(x, mask, batched, mask_batched):
    return _vmap(_mass_in_mask_of_clip, batched, mask_batched)(x, mask, None)


def _voxel_count(x: jax.Array, batched: bool) -> int:
    return int(np.prod(jnp.shape(x)[1:4] if batched else jnp.shape(x)[:3]))


def top_k_voxels(relevance: Any, k: Any, *, layout: Layout | None = None) -> jax.Array:
    """The ``k`` most relevant voxels of each clip, as a bool mask.

    Voxels are ranked by ``v = sum_c |R|``, largest first; equal values are taken in
    increasing flat (t, h, w) index, so exactly ``k`` voxels are True even when
    many values tie (zeros included), and the choice is the same in any batch.

    Args:
      relevance: real floating (T, H, W), (T, H, W, C) or (N, T, H, W, C); (N, T, H, W)
        with ``layout="NTHW"``.
      k: integer count in [0, T*H*W]: a scalar, or (N,) one per clip of a batch.
      layout: how to read the axes (see :data:`~selrel_jax.selective.LAYOUTS`).

    Returns:
      bool (T, H, W) for one clip, (N, T, H, W) for a batch. Under jit a clip with
      NaN/Inf relevance or ``k`` out of range selects nothing (eager calls raise).

    Examples:
        >>> import jax.numpy as jnp
        >>> import selrel_jax as sr
        >>> from selrel_jax.data import synthetic_motion
        >>> data = synthetic_motion.generate_split("tiny", "test", seed=1, count=2)
        >>> rel = jnp.asarray(data["video"], jnp.float32) / 255   # stands in for a relevance map
        >>> sel = sr.selective_relevance(rel, sigma=2.0)
        >>> from selrel_jax.metrics import top_k_voxels
        >>> k = jnp.sum(sr.motion_mask(rel, 2.0), axis=(1, 2, 3))   # (N,) voxels kept
        >>> top = top_k_voxels(rel, k)   # the raw map's k strongest voxels, clip by clip
        >>> top.shape, bool((top.sum(axis=(1, 2, 3)) == k).all())
        ((2, 8, 32, 32), True)
    """
    x, batched = checked_relevance("top_k_voxels", relevance, layout)
    clips = jnp.shape(x)[0] if batched else None
    k = checked_counts("top_k_voxels", "k", k, clips, _voxel_count(x, batched))
    return _top_k_voxels(x, k, batched)


def overlap_at_threshold(
    relevance: Any, mask: Any, *, fraction: Any = 0.1, layout: Layout | None = None
) -> Overlap:
    """Precision, recall and IoU of the voxels above a share of the clip's maximum.

    Selected: ``S = {v > 0 and v >= fraction * max(v)}`` with ``v = sum_c |R|``, per
    clip. Then ``precision = |S & M| / |S|`` (TP / (TP + FP)), ``recall = |S & M| /
    |M|`` (TP / (TP + FN)), ``iou = |S & M| / |S | M|``; a ratio whose denominator
    is 0 is 0 (nothing selected, as for an all-zero map: precision 0; empty mask:
    recall 0; both: IoU 0). Never NaN for finite input.

    Args:
      relevance: real floating (T, H, W), (T, H, W, C) or (N, T, H, W, C); (N, T, H, W)
        with ``layout="NTHW"``.
      mask: bool ground truth with the relevance's (T, H, W): one clip's (T, H, W),
        or for a batch (N, T, H, W) (or one (T, H, W) for every clip).
      fraction: share of the clip's maximum, in [0, 1]; may be traced (out of range
        or NaN then makes every score NaN).
      layout: how to read the relevance's axes.

    Returns:
      :class:`Overlap` of scalars for one clip, (N,) each for a batch; float32
      (float64 for float64 input). NaN for a clip with NaN/Inf relevance under jit
      (eager calls raise).

    Examples:
        >>> import jax.numpy as jnp
        >>> import selrel_jax as sr
        >>> from selrel_jax.data import synthetic_motion
        >>> data = synthetic_motion.generate_split("tiny", "test", seed=1, count=2)
        >>> rel = jnp.asarray(data["video"], jnp.float32) / 255   # stands in for a relevance map
        >>> sel = sr.selective_relevance(rel, sigma=2.0)
        >>> from selrel_jax.metrics import overlap_at_threshold
        >>> scores = overlap_at_threshold(sel, data["mask"])
        >>> scores.precision.shape, scores.precision.dtype
        ((2,), dtype('float32'))
    """
    fn = "overlap_at_threshold"
    x, batched = checked_relevance(fn, relevance, layout)
    m, mask_batched = mask_for(fn, mask, x, batched)
    fraction = checked_fraction(fn, "fraction", fraction)
    return _overlap_at_threshold(x, m, fraction, batched, mask_batched)


def overlap_at_k(relevance: Any, mask: Any, k: Any, *, layout: Layout | None = None) -> Overlap:
    """Precision, recall and IoU of the top-k voxels (matched sparsity).

    S is :func:`top_k_voxels`'s selection (exactly ``k`` voxels, ties by index), so
    two maps scored with the same ``k`` are compared at equal sparsity. ``precision
    = |S & M| / k``, ``recall = |S & M| / |M|``, ``iou = |S & M| / (k + |M| - |S &
    M|)``; a ratio whose denominator is 0 is 0 (``k = 0``: precision 0; empty mask:
    recall 0; both: IoU 0). Recall is non-decreasing in ``k``; ``k = T*H*W`` gives
    recall 1 (for a nonempty mask) and precision ``|M| / (T*H*W)``.

    Args:
      relevance: as :func:`overlap_at_threshold`.
      mask: as :func:`overlap_at_threshold`.
      k: integer in [0, T*H*W]: a scalar, or (N,) one per clip of a batch (e.g. the
        voxels a motion mask keeps, ``jnp.sum(mask, axis=(1, 2, 3))``). A traced
        ``k`` out of range makes that clip's scores NaN.
      layout: how to read the relevance's axes.

    Returns:
      :class:`Overlap`, as :func:`overlap_at_threshold`.

    Examples:
        >>> import jax.numpy as jnp
        >>> import selrel_jax as sr
        >>> from selrel_jax.data import synthetic_motion
        >>> data = synthetic_motion.generate_split("tiny", "test", seed=1, count=2)
        >>> rel = jnp.asarray(data["video"], jnp.float32) / 255   # stands in for a relevance map
        >>> sel = sr.selective_relevance(rel, sigma=2.0)
        >>> from selrel_jax.metrics import overlap_at_k
        >>> k = jnp.sum(sr.motion_mask(rel, 2.0), axis=(1, 2, 3))
        >>> overlap_at_k(rel, data["mask"], k).precision.shape   # raw map, sel's sparsity
        (2,)
        >>> overlap_at_k(rel, data["mask"], 8 * 32 * 32).recall   # every voxel: recall 1
        Array([1., 1.], dtype=float32)
    """
    x, batched = checked_relevance("overlap_at_k", relevance, layout)
    m, mask_batched = mask_for("overlap_at_k", mask, x, batched)
    clips = jnp.shape(x)[0] if batched else None
    k = checked_counts("overlap_at_k", "k", k, clips, _voxel_count(x, batched))
    return _overlap_at_k(x, m, k, batched, mask_batched)


def mass_in_mask(relevance: Any, mask: Any, *, layout: Layout | None = None) -> jax.Array:
    """Share of relevance mass inside a mask: ``sum_M v / sum v`` with ``v = sum_c |R|``.

    The mask may be the motion mask, a static-object mask or :func:`box_mask` of the
    object's boxes. 1 for a full mask, 0 for an empty one and for an all-zero map.

    Args:
      relevance: as :func:`overlap_at_threshold`.
      mask: as :func:`overlap_at_threshold`.
      layout: how to read the relevance's axes.

    Returns:
      in [0, 1]: a scalar for one clip, (N,) for a batch; float32 (float64 for
      float64 input). NaN for a clip with NaN/Inf relevance under jit.

    Examples:
        >>> import jax.numpy as jnp
        >>> import selrel_jax as sr
        >>> from selrel_jax.data import synthetic_motion
        >>> data = synthetic_motion.generate_split("tiny", "test", seed=1, count=2)
        >>> rel = jnp.asarray(data["video"], jnp.float32) / 255   # stands in for a relevance map
        >>> sel = sr.selective_relevance(rel, sigma=2.0)
        >>> from selrel_jax.metrics import box_mask, mass_in_mask
        >>> share = mass_in_mask(rel, box_mask(data["boxes"], 32, 32))   # on the object
        >>> share.shape, bool(((share >= 0) & (share <= 1)).all())
        ((2,), True)
    """
    x, batched = checked_relevance("mass_in_mask", relevance, layout)
    m, mask_batched = mask_for("mass_in_mask", mask, x, batched)
    return _mass_in_mask(x, m, batched, mask_batched)


@functools.partial(jax.jit, static_argnames=("voxels",))
def _dilate(mask, voxels):
    # OR over a (2N+1) x (2N+1) window of each frame; False beyond the frame's edges.
    window = (1,) * (mask.ndim - 2) + (2 * voxels + 1,) * 2
    padding = ((0, 0),) * (mask.ndim - 2) + ((voxels, voxels),) * 2
    return jax.lax.reduce_window(mask, False, jax.lax.bitwise_or, window, (1,) * mask.ndim, padding)


def dilate_mask(mask: Any, voxels: int, *, layout: str | None = None) -> jax.Array:
    """A mask widened by ``voxels`` pixels in each frame: the tolerance of a ground truth.

    Pixel ``(t, h, w)`` is in the result when some pixel of the same frame within
    Chebyshev distance ``voxels`` (``|h - h'| <= voxels`` and ``|w - w'| <= voxels``)
    is in ``mask``: a binary dilation by a (2N+1) x (2N+1) square, frame by frame (not
    along time: a frame's band is its own motion's, not the neighbouring frames'), that
    stops at the frame's edges. ``voxels=0`` returns the mask unchanged. A map's voxels
    one pixel beside the exact motion mask then count as on the motion, as the
    selection's 3x3 smoothing puts them there.

    Args:
      mask: bool (T, H, W) or a batch (N, T, H, W) (rank 4 is a batch, as masks have
        no channel axis).
      voxels: the tolerance N, an int >= 0.
      layout: ``"THW"`` or ``"NTHW"``; by rank unless given.

    Returns:
      bool, the mask's shape.

    Examples:
        >>> import numpy as np
        >>> from selrel_jax.metrics import dilate_mask
        >>> mask = np.zeros((1, 3, 4), bool)
        >>> mask[0, 0, 0] = True
        >>> dilate_mask(mask, 1).astype(int)
        Array([[[1, 1, 0, 0],
                [1, 1, 0, 0],
                [0, 0, 0, 0]]], dtype=int32)
    """
    m = checked_mask("dilate_mask", mask, layout)
    voxels = integer("dilate_mask: voxels", voxels, minimum=0)
    return _dilate(m, voxels) if voxels else m


def _wrapped_inside(start: jax.Array, stop: jax.Array, size: int) -> jax.Array:
    """(..., size): pixel centres ``i + 0.5`` inside [start, stop] on a circle of ``size``."""
    centres = jnp.arange(size, dtype=start.dtype) + 0.5
    offset = jnp.mod(centres - start[..., None], size)  # in [0, size)
    return offset <= (stop - start)[..., None]


@functools.partial(jax.jit, static_argnames=("height", "width"))
def _box_mask(boxes, height, width):
    rows = _wrapped_inside(boxes[..., 0], boxes[..., 2], height)
    cols = _wrapped_inside(boxes[..., 1], boxes[..., 3], width)
    return rows[..., :, None] & cols[..., None, :]


def _check_boxes(values: np.ndarray) -> None:
    """Concrete boxes: finite, y0 <= y1 and x0 <= x1, compared in their own dtype (an
    int64 coordinate beyond 2**53 is not a float64)."""
    bad = ~np.all(np.isfinite(values), axis=-1) if values.dtype.kind == "f" else False
    bad = bad | (values[..., 2] < values[..., 0]) | (values[..., 3] < values[..., 1])
    if np.any(bad):
        raise OptionError(
            f"box_mask: {int(np.sum(bad))} boxes are not finite (y0, x0, y1, x1) with "
            f"y0 <= y1 and x0 <= x1; the first: {values[bad][0].tolist()}"
        )


def _boxes_in_frame(values: np.ndarray, height: int, width: int) -> np.ndarray:
    """Concrete boxes as float32 covering the same pixels: each start modulo the frame
    size, each extent capped at it (a box taller or wider than the frame covers every
    row or column). Exact for integers of any width (an int64 box past 2**31 wrapped as
    int32 and covered no pixel) and for floats of any size (they rounded in float32)."""
    sizes = np.array([height, width])
    start, stop = values[..., :2], values[..., 2:]
    if values.dtype.kind in "iu":
        # stop >= start, so the difference modulo 2**64 is the exact extent.
        extent = stop.astype(np.uint64) - start.astype(np.uint64)
        extent = np.minimum(extent, sizes.astype(np.uint64)).astype(np.int64)
        start = np.mod(start, sizes.astype(values.dtype)).astype(np.int64)
    else:
        start, stop = start.astype(np.float64), stop.astype(np.float64)
        extent = np.minimum(stop - start, sizes)
        start = np.mod(start, sizes)
    return np.concatenate([start, start + extent], axis=-1).astype(np.float32)


def box_mask(boxes: Any, height: int, width: int) -> jax.Array:
    """A bool mask of the pixels inside each frame's box, wrapping around the frame.

    Pixel ``(h, w)`` of frame ``t`` is inside when its centre ``(h + 0.5, w + 0.5)``
    lies in ``[y0, y1] x [x0, x1]`` modulo the frame size (the synthetic scene is a
    torus: a box past an edge continues on the opposite side; a box taller or wider
    than the frame covers every row or column).

    Args:
      boxes: real (T, 4) or a batch (N, T, 4) of ``(y0, x0, y1, x1)`` in pixels, as
        :func:`~selrel_jax.data.synthetic_motion.generate_example` gives them.
      height: the frame height.
      width: the frame width.

    Returns:
      bool (T, H, W) or (N, T, H, W). Under jit a box with NaN or ``y1 < y0`` is
      empty (eager calls raise).

    Examples:
        >>> import numpy as np
        >>> from selrel_jax.metrics import box_mask
        >>> boxes = np.array([[1.0, 1.0, 3.0, 2.0], [1.0, 3.0, 3.0, 5.0]])  # (T, 4), y0 x0 y1 x1
        >>> box_mask(boxes, 4, 4).astype(int)   # the second box wraps past the right edge
        Array([[[0, 0, 0, 0],
                [0, 1, 0, 0],
                [0, 1, 0, 0],
                [0, 0, 0, 0]],
        <BLANKLINE>
               [[0, 0, 0, 0],
                [1, 0, 0, 1],
                [1, 0, 0, 1],
                [0, 0, 0, 0]]], dtype=int32)
    """
    height, width = positive_int("box_mask: height", height), positive_int("box_mask: width", width)
    b = _as_array(boxes, "box_mask", "boxes")
    dtype = jnp.result_type(b)
    if not (jnp.issubdtype(dtype, jnp.floating) or jnp.issubdtype(dtype, jnp.integer)):
        raise DTypeError(f"box_mask: boxes must be real numbers; got {describe(b)}")
    if jnp.ndim(b) not in (2, 3) or jnp.shape(b)[-1] != 4:
        raise ShapeError(f"box_mask: boxes must be (T, 4) or (N, T, 4); got {describe(b)}")
    if _traced(b):
        return _box_mask(b.astype(jnp.promote_types(b.dtype, jnp.float32)), height, width)
    values = np.asarray(b)
    _check_boxes(values)
    return _box_mask(jnp.asarray(_boxes_in_frame(values, height, width)), height, width)
