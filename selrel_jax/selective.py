"""Selective relevance (Hiley et al., 2020): keep the relevance that changes over time.

Any relevance volume of a 3D CNN (LRP, Grad-CAM, gradients, ...) mixes relevance
for static appearance with relevance for motion. Selective relevance keeps the
voxels whose relevance changes strongly between neighbouring frames:

1. sum the relevance over colour channels -> R of shape (T, H, W);
2. D(t) = S*R(t-1) - S*R(t+1), S the separable spatial smoothing [1,2,1] x [1,2,1]
   (zero padded in H and W) -- the paper's 3x3x3 temporal Sobel operator applied
   as a cross-correlation with padding 1 on T, H and W;
3. mask = |D| > sigma * std(|D|), the std mean-centred with ``ddof=1`` over the
   whole clip;
4. selective relevance = R * mask, the mask broadcast over channels.

Layout is NTHWC everywhere: a relevance map is (T, H, W), (T, H, W, C) or a batch
(N, T, H, W, C). Every function here is pure, jit-compiled on eager calls, and
composes with ``jax.jit``, ``jax.vmap`` and sharded inputs; ``sigma`` may be a
traced value, string options are static.

Example::

    import selrel_jax as sr
    sel = sr.selective_relevance(relevance, sigma=2.0)   # (N, T, H, W, C)
    bias = sr.spatial_bias(relevance, sel)               # (N,) share removed
"""

from __future__ import annotations

import functools
import operator
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np

from selrel_jax._checks import integer, one_of
from selrel_jax.errors import DTypeError, NonFiniteError, OptionError, ShapeError

__all__ = [
    "motion_mask",
    "selective_relevance",
    "spatial_bias",
    "static_relevance",
    "temporal_gradient",
    "validate_relevance",
]

TemporalPadding = Literal["zero", "edge"]
Threshold = Literal["clip", "frame"]

#: ``"zero"``: the paper's zero padding in time; comparable with published
#: results, but a static clip shows spurious motion on its first and last frame.
#: ``"edge"``: replicate the end frames, so D at the ends is a one-sided
#: difference and a static clip selects nothing; use it for sliding windows or
#: whenever end-frame artefacts would distort a comparison.
TEMPORAL_PADDINGS = ("zero", "edge")
#: ``"clip"``: one threshold for the whole clip (the paper); ``"frame"``: one
#: threshold per frame, so a frame of slow motion is not drowned by a fast one.
THRESHOLDS = ("clip", "frame")

_RANK_HELP = "rank 3 (T,H,W), 4 (T,H,W,C) or 5 (N,T,H,W,C)"


def _describe(x: Any) -> str:
    return f"shape {tuple(jnp.shape(x))} {jnp.result_type(x)}"


def _check_relevance(x: Any, fn: str) -> None:
    dtype = jnp.result_type(x)
    if not jnp.issubdtype(dtype, jnp.floating):
        raise DTypeError(f"{fn}: relevance must be a real floating array; got {_describe(x)}")
    shape = jnp.shape(x)
    if len(shape) not in (3, 4, 5):
        raise ShapeError(f"{fn}: relevance must have {_RANK_HELP}; got {_describe(x)}")
    t = shape[1] if len(shape) == 5 else shape[0]
    if t < 3:
        raise ShapeError(
            f"{fn}: the temporal Sobel operator needs at least 3 frames (T >= 3); "
            f"got T={t} in {_describe(x)}"
        )


def _check_options(fn: str, temporal_padding: str, threshold: str = "clip", ddof: int = 1) -> None:
    one_of(f"{fn}: temporal_padding", temporal_padding, TEMPORAL_PADDINGS)
    one_of(f"{fn}: threshold", threshold, THRESHOLDS)
    integer(f"{fn}: ddof", ddof, minimum=0)


def _check_sigma(fn: str, sigma: Any) -> None:
    if jnp.ndim(sigma) != 0:
        raise OptionError(f"{fn}: sigma must be a scalar; got shape {tuple(jnp.shape(sigma))}")
    try:
        value = float(sigma)
    except (TypeError, jax.errors.ConcretizationTypeError):
        return  # traced under jit: checked by the caller's data, not here
    if not value >= 0:  # also rejects NaN
        raise OptionError(f"{fn}: sigma must be >= 0; got {value}")


def _check_sample_count(fn: str, x: Any, threshold: str, ddof: int) -> None:
    shape = jnp.shape(x)
    t, h, w = shape[1:4] if len(shape) == 5 else shape[:3]
    count = h * w if threshold == "frame" else t * h * w
    if count <= ddof:
        raise ShapeError(
            f"{fn}: the {threshold} std needs more than ddof={ddof} values; "
            f"got {count} in {_describe(x)}"
        )


def _compute_dtype(dtype: Any) -> Any:
    # bfloat16/float16 sums of nine smoothed taps lose too much precision; work in
    # at least float32 and cast results back to the input dtype.
    return jnp.promote_types(dtype, jnp.float32)


def _abs_sobel_t(r: jax.Array, temporal_padding: str) -> jax.Array:
    """|D| for one channel-summed clip (T, H, W), in its compute dtype."""
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


def _channel_sum(x: jax.Array, ctype: Any) -> jax.Array:
    x = x.astype(ctype)
    if x.ndim == 3:
        return x
    if x.shape[-1] <= 16:
        # XLA:CPU reduces a short minor axis ~7x slower than it adds its slices.
        return functools.reduce(operator.add, [x[..., c] for c in range(x.shape[-1])])
    return jnp.sum(x, axis=-1)


def _abs_d(clip: jax.Array, temporal_padding: str) -> jax.Array:
    """|D| of one clip (T, H, W) or (T, H, W, C), in its compute dtype."""
    return _abs_sobel_t(_channel_sum(clip, _compute_dtype(clip.dtype)), temporal_padding)


def _clip_mask(x, sigma, temporal_padding, threshold, ddof):
    g = _abs_d(x, temporal_padding)
    axes = (1, 2) if threshold == "frame" else (0, 1, 2)
    std = jnp.std(g, axis=axes, ddof=ddof, keepdims=True)
    return g > jnp.asarray(sigma, g.dtype) * std


def _per_clip(fn, x, *args):
    return (
        jax.vmap(fn, in_axes=(0,) + (None,) * len(args))(x, *args) if x.ndim == 5 else fn(x, *args)
    )


@functools.partial(jax.jit, static_argnames=("temporal_padding",))
def _temporal_gradient(x, temporal_padding):
    return _per_clip(_abs_d, x, temporal_padding).astype(x.dtype)


@functools.partial(jax.jit, static_argnames=("temporal_padding", "threshold", "ddof"))
def _motion_mask(x, sigma, temporal_padding, threshold, ddof):
    return _per_clip(_clip_mask, x, sigma, temporal_padding, threshold, ddof)


@functools.partial(jax.jit, static_argnames=("temporal_padding", "threshold", "ddof", "keep"))
def _split(x, sigma, temporal_padding, threshold, ddof, keep):
    def one(clip, sigma):
        mask = _clip_mask(clip, sigma, temporal_padding, threshold, ddof)
        if clip.ndim == 4:
            mask = mask[..., None]
        if keep == "static":
            mask = ~mask
        # The spec's R * mask; on XLA:CPU a multiply streams ~1.5x faster than a select.
        return clip * mask.astype(clip.dtype)

    return _per_clip(one, x, sigma)


def temporal_gradient(relevance: Any, *, temporal_padding: TemporalPadding = "zero") -> jax.Array:
    """Absolute temporal Sobel derivative |D| of the channel-summed relevance.

    Args:
      relevance: (T, H, W), (T, H, W, C) or (N, T, H, W, C) real floating array, T >= 3.
      temporal_padding: ``"zero"`` (the paper) or ``"edge"`` (replicate end
        frames: no spurious motion on the first and last frame).

    Returns:
      |D| with the input's dtype, (T, H, W) for rank 3 and 4, (N, T, H, W) for rank 5.

    Example::

        g = temporal_gradient(jnp.ones((8, 16, 16, 3)), temporal_padding="edge")  # all 0
    """
    _check_relevance(relevance, "temporal_gradient")
    _check_options("temporal_gradient", temporal_padding)
    return _temporal_gradient(jnp.asarray(relevance), temporal_padding)


def motion_mask(
    relevance: Any,
    sigma: Any = 1.0,
    *,
    ddof: int = 1,
    threshold: Threshold = "clip",
    temporal_padding: TemporalPadding = "zero",
) -> jax.Array:
    """Boolean motion mask ``|D| > sigma * std(|D|)``.

    Args:
      relevance: (T, H, W), (T, H, W, C) or (N, T, H, W, C) real floating array, T >= 3.
      sigma: degree of selectivity, >= 0 (the paper used about 1 to 3); may be traced.
      ddof: delta degrees of freedom of the mean-centred std (1, as the authors' code).
      threshold: ``"clip"`` (one threshold per clip, the paper) or ``"frame"``.
      temporal_padding: ``"zero"`` (the paper) or ``"edge"``.

    Returns:
      bool mask, (T, H, W) for rank 3 and 4, (N, T, H, W) for rank 5.
    """
    _check_relevance(relevance, "motion_mask")
    _check_options("motion_mask", temporal_padding, threshold, ddof)
    _check_sigma("motion_mask", sigma)
    _check_sample_count("motion_mask", relevance, threshold, ddof)
    return _motion_mask(jnp.asarray(relevance), sigma, temporal_padding, threshold, int(ddof))


def _split_checked(fn, relevance, sigma, ddof, threshold, temporal_padding, keep):
    _check_relevance(relevance, fn)
    _check_options(fn, temporal_padding, threshold, ddof)
    _check_sigma(fn, sigma)
    _check_sample_count(fn, relevance, threshold, ddof)
    return _split(jnp.asarray(relevance), sigma, temporal_padding, threshold, int(ddof), keep)


def selective_relevance(
    relevance: Any,
    sigma: Any = 1.0,
    *,
    ddof: int = 1,
    threshold: Threshold = "clip",
    temporal_padding: TemporalPadding = "zero",
) -> jax.Array:
    """Motion relevance: ``relevance`` where the motion mask holds, 0 elsewhere.

    Same shape and dtype as ``relevance``; options as :func:`motion_mask`.

    Example::

        sel = selective_relevance(relevance, sigma=2.0, temporal_padding="edge")
    """
    return _split_checked(
        "selective_relevance", relevance, sigma, ddof, threshold, temporal_padding, "motion"
    )


def static_relevance(
    relevance: Any,
    sigma: Any = 1.0,
    *,
    ddof: int = 1,
    threshold: Threshold = "clip",
    temporal_padding: TemporalPadding = "zero",
) -> jax.Array:
    """The complement of :func:`selective_relevance`: ``relevance - selective``.

    Same shape and dtype as ``relevance``; options as :func:`motion_mask`.
    """
    return _split_checked(
        "static_relevance", relevance, sigma, ddof, threshold, temporal_padding, "static"
    )


@jax.jit
def _spatial_bias(relevance, selective):
    axes = tuple(range(relevance.ndim - 4, relevance.ndim)) if relevance.ndim == 5 else None
    ctype = _compute_dtype(relevance.dtype)
    total = jnp.sum(jnp.abs(relevance.astype(ctype)), axis=axes)
    kept = jnp.sum(jnp.abs(selective.astype(ctype)), axis=axes)
    safe = jnp.where(total > 0, total, 1)
    return jnp.where(total > 0, 1 - kept / safe, 0).astype(ctype)


def spatial_bias(relevance: Any, selective: Any) -> jax.Array:
    """Share of relevance mass removed by selection: ``1 - |sel|_1 / |rel|_1`` per clip.

    The paper's measure of a model's spatial (static appearance) bias; 0 when the
    relevance is all zero. A scalar for one clip (rank 3 or 4), (N,) for a batch.

    Example::

        bias = spatial_bias(rel, selective_relevance(rel, sigma=1.0))
    """
    _check_relevance(relevance, "spatial_bias")
    _check_relevance(selective, "spatial_bias")
    if jnp.shape(relevance) != jnp.shape(selective):
        raise ShapeError(
            f"spatial_bias: relevance and selective must have the same shape; "
            f"got {_describe(relevance)} and {_describe(selective)}"
        )
    return _spatial_bias(jnp.asarray(relevance), jnp.asarray(selective))


def validate_relevance(relevance: Any, name: str = "relevance") -> np.ndarray:
    """Eagerly check a relevance map: rank, dtype, and no NaN or infinite values.

    Returns the map as a NumPy array; raises :class:`NonFiniteError` with the
    count of bad values. Not traceable (it inspects values).
    """
    _check_relevance(relevance, "validate_relevance")
    x = np.asarray(relevance)
    bad = int(np.size(x) - np.count_nonzero(np.isfinite(x)))
    if bad:
        n_nan = int(np.count_nonzero(np.isnan(x)))
        raise NonFiniteError(
            f"validate_relevance: {name} holds {bad} non-finite values "
            f"({n_nan} NaN, {bad - n_nan} infinite) in {_describe(x)}"
        )
    return x
