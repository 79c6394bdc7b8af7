"""Occlusion for video: how much the target logit drops when a spatio-temporal
patch of the clip is replaced by a baseline value.

Patches are boxes of ``window = (t, h, w)`` voxels (every channel), placed at
the multiples of ``strides`` along T, H and W; the last patch along an axis is
cut off at the clip's edge where the strides do not tile it (Captum's
``Occlusion`` places its windows the same way). Each voxel gets the mean drop
``logit(x) - logit(x with the patch set to the baseline)`` of the patches that
cover it, in every channel (Captum's convention). ``window="frame"`` occludes
whole frames, one at a time: the map is constant over each frame.

Forward passes run ``chunk_size`` patches at a time (``jax.vmap`` over patches
inside a ``lax.scan`` over chunks), so memory holds ``chunk_size`` copies of
the batch whatever the number of patches.

Examples:
    >>> import jax
    >>> import jax.numpy as jnp
    >>> from selrel_jax import models
    >>> model = models.create("c3d_small", 4, width=0.25, clip_size=(8, 32, 32))
    >>> variables = model.init(jax.random.key(0), jnp.zeros((1, 8, 32, 32, 3)), train=False)
    >>> clips = jax.random.normal(jax.random.key(1), (1, 8, 32, 32, 3))
    >>> from selrel_jax.attribution.occlusion import occlusion
    >>> apply_fn = lambda x: model.apply(variables, x, train=False)
    >>> occlusion(apply_fn, clips, None, window=(2, 16, 16)).shape
    (1, 8, 32, 32, 3)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from selrel_jax._checks import positive_int
from selrel_jax.attribution._inputs import finish
from selrel_jax.attribution.gradients import ApplyFn, _baseline, _checked_inputs, _predicted
from selrel_jax.attribution.registry import register_gradient
from selrel_jax.errors import OptionError, ShapeError

__all__ = ["occlusion", "patch_grid"]

_AXES = ("T", "H", "W")


def _three_ints(name: str, value: Any) -> tuple[int, int, int]:
    if isinstance(value, str) or not isinstance(value, Sequence | np.ndarray) or len(value) != 3:
        raise OptionError(f"occlusion {name} must be 3 positive ints (t, h, w); got {value!r}")
    return tuple(
        positive_int(f"occlusion {name} {axis}", v) for axis, v in zip(_AXES, value, strict=True)
    )


def patch_grid(
    window: Any, strides: Any, size: tuple[int, int, int]
) -> tuple[tuple[int, int, int], tuple[int, int, int], tuple[int, int, int]]:
    """``(window, strides, counts)`` of the patches over a clip of ``size`` (T, H, W):
    ``counts[i] = ceil((size - window) / stride) + 1`` patches along axis i.
    ``window="frame"`` is ``(1, H, W)``; ``strides=None`` the window (patches
    that tile the clip). A window larger than the clip is a ShapeError; a stride
    larger than the window (voxels no patch covers) an OptionError, as in Captum."""
    if isinstance(window, str):
        if window != "frame":
            raise OptionError(f"occlusion window must be (t, h, w) or 'frame'; got {window!r}")
        window = (1, size[1], size[2])
    window = _three_ints("window", window)
    strides = window if strides is None else _three_ints("strides", strides)
    for axis, w, s, d in zip(_AXES, window, strides, size, strict=True):
        if w > d:
            raise ShapeError(
                f"occlusion window {window} is larger than the clips' (T, H, W) {size}"
            )
        if s > w and w < d:
            raise OptionError(
                f"occlusion strides {strides} skip voxels: the {axis} stride {s} is larger "
                f"than the window's {w}, so some voxels are in no patch"
            )
    counts = tuple(
        math.ceil((d - w) / s) + 1 for w, s, d in zip(window, strides, size, strict=True)
    )
    return window, strides, counts


def _cover(count: int, window: int, stride: int, size: int) -> np.ndarray:
    """(count, size) float32: 1 where patch i along this axis covers the voxel."""
    start = np.arange(count)[:, None] * stride
    voxel = np.arange(size)[None, :]
    return ((voxel >= start) & (voxel < start + window)).astype(np.float32)


def _drops(apply_fn, clips, base, target, covers, chunk) -> jax.Array:
    """(N, patches): the target logit minus that of the clips with each patch occluded."""
    n = clips.shape[0]
    counts = tuple(len(c) for c in covers)
    total = math.prod(counts)
    rows = jnp.arange(n)
    reference = apply_fn(clips)[rows, target]
    cover_t, cover_h, cover_w = (jnp.asarray(c, bool) for c in covers)

    def drop(index):
        a, b, c = jnp.unravel_index(jnp.minimum(index, total - 1), counts)
        mask = cover_t[a][:, None, None] & cover_h[b][None, :, None] & cover_w[c][None, None, :]
        occluded = jnp.where(mask[None, ..., None], base, clips)
        return reference - apply_fn(occluded)[rows, target]

    n_chunks = math.ceil(total / chunk)
    index = jnp.arange(n_chunks * chunk).reshape(n_chunks, chunk)
    _, drops = jax.lax.scan(lambda carry, idx: (carry, jax.vmap(drop)(idx)), None, index)
    return drops.reshape(n_chunks * chunk, n)[:total].T


@register_gradient("occlusion")
def occlusion(
    apply_fn: ApplyFn,
    clips: jax.Array,
    target=None,
    *,
    window: Any = (2, 8, 8),
    strides: Any = None,
    baseline: Any = 0.0,
    chunk_size: int = 8,
) -> jax.Array:
    """Occlusion: each voxel (every channel) gets the mean drop of the target logit
    over the patches covering it, a patch's drop being ``logit(x) - logit(x with
    the patch set to baseline)``. ``window``: the patch (t, h, w), or ``"frame"``
    (whole frames); ``strides``: (t, h, w), None: the window (patches tile the
    clip); ``baseline``: the occluding value, a scalar or anything broadcastable
    to the clips; ``chunk_size``: patches evaluated at once (vmapped)."""
    chunk = positive_int("chunk_size", chunk_size)
    inputs = _checked_inputs(apply_fn, clips, target)
    clips = inputs.clips
    size = tuple(clips.shape[1:4])
    window, strides, counts = patch_grid(window, strides, size)
    covers = [_cover(*args) for args in zip(counts, window, strides, size, strict=True)]
    target = _predicted(apply_fn, clips, inputs.target)
    base, problems = _baseline(baseline, clips)
    drops = _drops(apply_fn, clips, base, target, covers, min(chunk, math.prod(counts)))
    drops = drops.reshape(clips.shape[0], *counts)
    summed = jnp.einsum("nabc,at,bh,cw->nthw", drops, *covers, precision="highest")
    # Every voxel is in at least one patch (patch_grid refuses strides that skip any).
    coverage = np.einsum("at,bh,cw->thw", *covers)
    relevance = jnp.broadcast_to((summed / coverage)[..., None], clips.shape)
    return finish(relevance.astype(clips.dtype), {**inputs.problems, **problems})
