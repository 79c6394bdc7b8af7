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

Examples:
    A square moving right beside a square that stays put: selection keeps the
    moving one's edges and drops the static one (but on the first and last frame,
    where the zero padding makes it appear and vanish).

    >>> import numpy as np
    >>> import selrel_jax as sr
    >>> relevance = np.zeros((1, 8, 16, 16, 3), np.float32)
    >>> for t in range(8):
    ...     relevance[0, t, 2:6, t:t + 4] = 1.0     # moving
    >>> relevance[0, :, 10:14, 10:14] = 1.0         # static
    >>> sel = sr.selective_relevance(relevance, sigma=1.0)   # (N, T, H, W, C)
    >>> sel.shape, sel.dtype
    ((1, 8, 16, 16, 3), dtype('float32'))
    >>> bool((sel[0, 1:-1, 10:14, 10:14] == 0).all()), bool((sel[0, :, 2:6] != 0).any())
    (True, True)
    >>> sr.spatial_bias(relevance, sel).round(2)     # (N,) share removed
    Array([...], dtype=float32)
"""

from __future__ import annotations

import functools
import math
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import checkify

from selrel_jax._checks import (
    as_array,
    check_finite,
    describe,
    integer,
    near_subnormal,
    one_of,
    real,
    safe_divide,
    scaled_to_unit,
)
from selrel_jax._temporal import abs_temporal_gradient as _abs_temporal_gradient
from selrel_jax._temporal import compute_dtype as _compute_dtype
from selrel_jax.errors import DTypeError, OptionError, ShapeError

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
Layout = Literal["THW", "THWC", "NTHW", "NTHWC"]

#: ``"zero"``: the paper's zero padding in time; comparable with published
#: results, but a static clip shows spurious motion on its first and last frame.
#: ``"edge"``: replicate the end frames, so D at the ends is a one-sided
#: difference and a static clip selects nothing; use it for sliding windows or
#: whenever end-frame artefacts would distort a comparison.
TEMPORAL_PADDINGS = ("zero", "edge")
#: ``"clip"``: one threshold for the whole clip (the paper); ``"frame"``: one
#: threshold per frame, so a frame of slow motion is not drowned by a fast one.
THRESHOLDS = ("clip", "frame")
#: How the axes of a relevance array are read. Without ``layout=`` the rank
#: decides: 3 is one clip (T, H, W), 4 one clip (T, H, W, C), 5 a batch
#: (N, T, H, W, C). A batch without channels (N, T, H, W), such as the output
#: of :func:`temporal_gradient` on a batch, needs ``layout="NTHW"``.
LAYOUTS = {"THW": 3, "THWC": 4, "NTHW": 4, "NTHWC": 5}
_LAYOUT_OF_RANK = {3: "THW", 4: "THWC", 5: "NTHWC"}


def _traced(x: Any) -> bool:
    return isinstance(x, jax.core.Tracer)


def _as_array(x: Any, fn: str, name: str) -> Any:
    return as_array(f"{fn}: {name}", x)


def _resolve_layout(
    fn: str,
    x: Any,
    layout: str | None,
    *,
    name: str = "relevance",
    layouts: dict[str, int] = LAYOUTS,
    by_rank: dict[int, str] = _LAYOUT_OF_RANK,
) -> str:
    """The layout of ``x`` (given, or by its rank) after checking that the rank fits it
    and that no axis but the batch axis is empty."""
    rank = len(jnp.shape(x))
    if layout is None:
        if rank not in by_rank:
            described = [f"{r} ({','.join(k)})" for r, k in by_rank.items()]
            ranks = ", ".join(described[:-1]) + " or " + described[-1]
            raise ShapeError(
                f"{fn}: {name} must have rank {ranks}, or pass layout= (one of "
                f"{', '.join(layouts)}); got {describe(x)}"
            )
        layout = by_rank[rank]
    one_of(f"{fn}: layout", layout, layouts)
    if rank != layouts[layout]:
        raise ShapeError(
            f"{fn}: layout {layout!r} needs rank {layouts[layout]}; {name} has {describe(x)}"
        )
    if 0 in (jnp.shape(x)[1:] if layout.startswith("N") else jnp.shape(x)):
        raise ShapeError(f"{fn}: {name} has an empty axis: {describe(x)}")
    return layout


def _check_relevance(x: Any, fn: str, layout: str | None, name: str = "relevance") -> tuple:
    """``(array, layout)`` after checking dtype, rank against the layout and T >= 3."""
    x = _as_array(x, fn, name)
    dtype = jnp.result_type(x)
    if not jnp.issubdtype(dtype, jnp.floating):
        raise DTypeError(f"{fn}: {name} must be a real floating array; got {describe(x)}")
    layout = _resolve_layout(fn, x, layout, name=name)
    t = jnp.shape(x)[layout.index("T")]
    if t < 3:
        raise ShapeError(
            f"{fn}: the temporal Sobel operator needs at least 3 frames (T >= 3); "
            f"got T={t} in {describe(x)}"
        )
    return x, layout


def _check_options(fn: str, temporal_padding: str, threshold: str = "clip", ddof: int = 1) -> None:
    one_of(f"{fn}: temporal_padding", temporal_padding, TEMPORAL_PADDINGS)
    one_of(f"{fn}: threshold", threshold, THRESHOLDS)
    integer(f"{fn}: ddof", ddof, minimum=0)


def _check_sigma(fn: str, sigma: Any) -> None:
    """A concrete sigma must be a real scalar >= 0; a traced one is checked in the
    computation (an invalid value makes the outputs NaN)."""
    if _traced(sigma):
        if jnp.ndim(sigma) != 0 or not jnp.issubdtype(jnp.result_type(sigma), jnp.number):
            raise OptionError(f"{fn}: sigma must be a real scalar; got {describe(sigma)}")
        return
    if isinstance(sigma, np.ndarray | jax.Array) and sigma.ndim == 0:
        sigma = sigma.item()
    real(f"{fn}: sigma", sigma, minimum=0.0)


def _check_sample_count(fn: str, x: Any, layout: str, threshold: str, ddof: int) -> None:
    shape = dict(zip(layout, jnp.shape(x), strict=True))
    count = shape["H"] * shape["W"] * (1 if threshold == "frame" else shape["T"])
    if count <= ddof:
        raise ShapeError(
            f"{fn}: the {threshold} std needs more than ddof={ddof} values; "
            f"got {count} in {describe(x)}"
        )


def _checked_inputs(fn, relevance, layout, sigma, ddof, threshold, temporal_padding):
    x, layout = _check_relevance(relevance, fn, layout)
    _check_options(fn, temporal_padding, threshold, ddof)
    _check_sigma(fn, sigma)
    _check_sample_count(fn, x, layout, threshold, ddof)
    check_finite(f"{fn}: relevance", x, batched=layout.startswith("N"))
    return jnp.asarray(x), layout


def _abs_d(clip: jax.Array, temporal_padding: str, scaled: bool = False) -> jax.Array:
    """|D| of one clip (T, H, W) or (T, H, W, C), in its compute dtype; of the clip
    scaled to a largest magnitude in [1, 2) with ``scaled`` (|D| of any finite clip
    then stays finite, its square too)."""
    x = clip.astype(_compute_dtype(clip.dtype))
    return _abs_temporal_gradient(scaled_to_unit(x) if scaled else x, temporal_padding)


#: |D| whose largest value lies in [2**-SAFE_EXPONENT, 2**SAFE_EXPONENT] has its
#: squares and their sums in float32's range (up to 2**47 voxels); outside it they
#: overflowed (a map scaled by 1e17) or underflowed to a std of 0 (by 1e-20).
SAFE_EXPONENT = 40


def _clip_mask(x, sigma, temporal_padding, threshold, ddof, scaled):
    """``((mask, nonfinite), unsafe)`` of one clip, of the clip as it is or ``scaled``
    (:func:`~selrel_jax._checks.scaled_to_unit`): ``unsafe`` where |D| left the safe
    range, so the mask must come from the scaled clip. A NaN or infinite relevance
    value makes |D| non-finite next to it, and with it the std: found without another
    pass over x."""
    g = _abs_d(x, temporal_padding, scaled)
    axes = (1, 2) if threshold == "frame" else (0, 1, 2)
    std = _std(g, axes, ddof)
    largest = jnp.max(g)
    safe = (largest >= 2.0**-SAFE_EXPONENT) & (largest <= 2.0**SAFE_EXPONENT)
    return (g > jnp.asarray(sigma, g.dtype) * std, ~jnp.all(jnp.isfinite(std))), ~safe


def _scale_proof(one, x, batched, sigma):
    """The outputs of ``one(clip, sigma, scaled) -> (outputs, unsafe)`` per clip: from
    the clips as they are, and only where some clip is unsafe, from every clip scaled
    by a power of two. Scaling commutes exactly with every step of the computation, so
    a safe clip gets the same result either way, and any clip the same result at any
    scale; the common case costs one max of |D| more, not another pass over the batch
    (scaling every clip took 2x the time)."""
    plain, unsafe = _per_clip_in_steps(functools.partial(one, scaled=False), x, batched, sigma)
    return jax.lax.cond(
        jnp.any(unsafe),
        lambda: _per_clip_in_steps(functools.partial(one, scaled=True), x, batched, sigma)[0],
        lambda: plain,
    )


def _std(g: jax.Array, axes: tuple[int, ...], ddof: int) -> jax.Array:
    """``jnp.std(g, axes, ddof=ddof, keepdims=True)`` from the sums of g and g**2,
    which XLA computes in the same pass as g itself (jnp.std reads g twice more:
    selective relevance took 1.8x one memory pass with it, 1.45x with this).
    g >= 0 with a spread comparable to its mean, so the difference of moments
    loses no more than float32 rounding; it is clamped at 0."""
    n = math.prod(g.shape[a] for a in axes)
    s1 = jnp.sum(g, axis=axes, keepdims=True)
    s2 = jnp.sum(g * g, axis=axes, keepdims=True)
    var = jnp.maximum(s2 - s1 * (s1 / n), 0) / jnp.asarray(n - ddof, g.dtype)
    return jnp.sqrt(var)


#: Most relevance values per loop step when a batch runs on a single CPU device.
#: Selection reads each clip three times (channel sum, moments, mask) through
#: intermediates of its size; in steps of a few clips they stay in the cache. On the
#: 2-core CPU of bench/, batch 32 x 16x112x112x3 went 1.67-1.78x -> 1.36-1.42x the time
#: of one elementwise pass over the batch (steps of 2 to 32 clips alike).
CPU_STEP_ELEMENTS = 2**22


def _clips_per_step(x: jax.Array) -> int | None:
    """Clips per step of a loop over the batch, or None to vmap it whole: on GPUs and
    TPUs, or with several devices (a loop over a sharded batch axis would gather it)."""
    if jax.default_backend() != "cpu" or jax.device_count() != 1:
        return None
    n, most = x.shape[0], CPU_STEP_ELEMENTS // max(1, math.prod(x.shape[1:]))
    if n <= most:  # the whole batch fits in one step
        return None
    # A divisor of the batch: a remainder would copy the batch into the steps and the
    # results back out (2.3-2.7x one pass). One clip per step is slower than vmap.
    step = max((d for d in range(1, min(n - 1, most) + 1) if n % d == 0), default=1)
    return step if step >= 2 else None


def _per_clip(fn, x, batched, *args):
    return jax.vmap(fn, in_axes=(0,) + (None,) * len(args))(x, *args) if batched else fn(x, *args)


def _per_clip_in_steps(fn, x, batched, *args):
    """:func:`_per_clip`, in a loop of a few clips per step where that is faster."""
    step = _clips_per_step(x) if batched else None
    if step is None:
        return _per_clip(fn, x, batched, *args)
    return jax.lax.map(lambda clip: fn(clip, *args), x, batch_size=step)


def _invalid_sigma(sigma) -> jax.Array:
    return ~(jnp.asarray(sigma, jnp.float32) >= 0)  # NaN too


def _checkify_checks(fn: str, nonfinite: jax.Array, sigma) -> None:
    checkify.check(~_invalid_sigma(sigma), f"{fn}: sigma must be >= 0; got {{}}", sigma)
    checkify.check(
        ~jnp.any(nonfinite),
        f"{fn}: relevance holds NaN or infinite values (affected clips True): {{}}",
        nonfinite,
    )


def _nan_where(invalid: jax.Array, out: jax.Array) -> jax.Array:
    """``out`` with every value of an invalid clip (a leading-axis entry of ``invalid``) NaN."""
    invalid = jnp.reshape(invalid, invalid.shape + (1,) * (out.ndim - invalid.ndim))
    return jnp.where(invalid, jnp.asarray(jnp.nan, out.dtype), out)


_STATIC = ("batched", "temporal_padding", "threshold", "ddof", "checked", "fn")


@functools.partial(jax.jit, static_argnames=("batched", "temporal_padding"))
def _temporal_gradient(x, batched, temporal_padding):
    def one(clip):
        g = _abs_d(clip, temporal_padding)
        return _nan_where(~jnp.all(jnp.isfinite(g)), g).astype(clip.dtype)

    return _per_clip_in_steps(one, x, batched)


@functools.partial(jax.jit, static_argnames=_STATIC)
def _motion_mask(x, sigma, batched, temporal_padding, threshold, ddof, checked, fn):
    def one(clip, sigma, scaled):
        (mask, nonfinite), unsafe = _clip_mask(
            clip, sigma, temporal_padding, threshold, ddof, scaled
        )
        # A bool mask can't be NaN: an invalid clip's mask is all False.
        return (mask & ~(nonfinite | _invalid_sigma(sigma)), nonfinite), unsafe

    mask, nonfinite = _scale_proof(one, x, batched, sigma)
    if checked:
        _checkify_checks(fn, nonfinite, sigma)
    return mask


def _kept_where(mask: jax.Array, x: jax.Array) -> jax.Array:
    """``x`` where ``mask`` holds, else 0, as the bits of ``x`` and-ed with all ones or
    all zeros: exact for subnormal values, which a multiply flushes to 0."""
    ints = jnp.dtype(f"int{jnp.finfo(x.dtype).bits}")
    bits = jax.lax.bitcast_convert_type(x, ints) & -mask.astype(ints)
    return jax.lax.bitcast_convert_type(bits, x.dtype)


@functools.partial(jax.jit, static_argnames=(*_STATIC, "keep"))
def _split(x, sigma, batched, temporal_padding, threshold, ddof, checked, fn, keep):
    def one(clip, sigma, scaled):
        (mask, nonfinite), unsafe = _clip_mask(
            clip, sigma, temporal_padding, threshold, ddof, scaled
        )
        if clip.ndim == 4:
            mask = mask[..., None]
        if keep == "static":
            mask = ~mask
        # The spec's R * mask; on XLA:CPU a multiply streams ~1.5x faster than a select
        # (and than and-ing the bits). But it flushes subnormal values to 0: a map of
        # 1e-40 selected nothing. Such a map is unsafe, and scaled it keeps them.
        out = clip * mask.astype(clip.dtype)
        if scaled:
            out = jnp.where(near_subnormal(clip), _kept_where(mask, clip), out)
        # The NaNs of an invalid clip are set in the same step: after a loop over the
        # batch they would cost another pass.
        out = _nan_where(nonfinite | _invalid_sigma(sigma), out)
        return (out, nonfinite), unsafe

    out, nonfinite = _scale_proof(one, x, batched, sigma)
    if checked:
        _checkify_checks(fn, nonfinite, sigma)
    return out


def temporal_gradient(
    relevance: Any, *, temporal_padding: TemporalPadding = "zero", layout: Layout | None = None
) -> jax.Array:
    """Absolute temporal Sobel derivative |D| of the channel-summed relevance.

    Args:
      relevance: real floating array of one clip (T, H, W) or (T, H, W, C) or a batch
        (N, T, H, W, C); (N, T, H, W) with ``layout="NTHW"``. T >= 3.
      temporal_padding: ``"zero"`` (the paper) or ``"edge"`` (replicate end
        frames: no spurious motion on the first and last frame).
      layout: how to read the axes (see :data:`LAYOUTS`); None: by rank.

    Returns:
      |D| with the input's dtype, (T, H, W) for one clip, (N, T, H, W) for a batch;
      all NaN for a clip whose |D| is not finite (under jit; eager calls raise).

    Examples:
        >>> import jax.numpy as jnp
        >>> from selrel_jax import temporal_gradient
        >>> g = temporal_gradient(jnp.ones((8, 16, 16, 3)), temporal_padding="edge")
        >>> g.shape, float(g.max())   # nothing changes over time
        ((8, 16, 16), 0.0)
    """
    x, layout = _check_relevance(relevance, "temporal_gradient", layout)
    one_of("temporal_gradient: temporal_padding", temporal_padding, TEMPORAL_PADDINGS)
    check_finite("temporal_gradient: relevance", x, batched=layout.startswith("N"))
    return _temporal_gradient(jnp.asarray(x), layout.startswith("N"), temporal_padding)


def motion_mask(
    relevance: Any,
    sigma: Any = 1.0,
    *,
    ddof: int = 1,
    threshold: Threshold = "clip",
    temporal_padding: TemporalPadding = "zero",
    layout: Layout | None = None,
    checked: bool = False,
) -> jax.Array:
    """Boolean motion mask ``|D| > sigma * std(|D|)``.

    Args:
      relevance: one clip (T, H, W) or (T, H, W, C), or a batch (N, T, H, W, C), or
        (N, T, H, W) with ``layout="NTHW"``; real floating, T >= 3.
      sigma: degree of selectivity, >= 0 (the paper used about 1 to 3); may be traced.
      ddof: delta degrees of freedom of the mean-centred std (1, as the authors' code).
      threshold: ``"clip"`` (one threshold per clip, the paper) or ``"frame"``.
      temporal_padding: ``"zero"`` (the paper) or ``"edge"``.
      layout: how to read the axes (see :data:`LAYOUTS`); None: by rank.
      checked: add ``jax.experimental.checkify`` checks (call it under
        ``checkify.checkify``): a traced NaN/Inf relevance or negative sigma then
        raises instead of giving an all-False mask.

    Returns:
      bool mask, (T, H, W) for one clip, (N, T, H, W) for a batch.
    """
    x, layout = _checked_inputs(
        "motion_mask", relevance, layout, sigma, ddof, threshold, temporal_padding
    )
    return _under_checkify(
        _motion_mask, "motion_mask", checked,
        x, sigma, layout.startswith("N"), temporal_padding, threshold, int(ddof),
    )  # fmt: skip


def _under_checkify(jitted, fn: str, checked: bool, *args, **kwargs):
    try:
        return jitted(*args, checked=bool(checked), fn=fn, **kwargs)
    except ValueError as e:
        if checked and "checkify" in str(e):
            raise OptionError(
                f"{fn}: checked=True adds checkify checks; call it under "
                f"jax.experimental.checkify.checkify"
            ) from None
        raise


def _split_checked(fn, relevance, sigma, ddof, threshold, temporal_padding, layout, checked, keep):
    x, layout = _checked_inputs(fn, relevance, layout, sigma, ddof, threshold, temporal_padding)
    return _under_checkify(
        _split, fn, checked,
        x, sigma, layout.startswith("N"), temporal_padding, threshold, int(ddof), keep=keep,
    )  # fmt: skip


def selective_relevance(
    relevance: Any,
    sigma: Any = 1.0,
    *,
    ddof: int = 1,
    threshold: Threshold = "clip",
    temporal_padding: TemporalPadding = "zero",
    layout: Layout | None = None,
    checked: bool = False,
) -> jax.Array:
    """Motion relevance: ``relevance`` where the motion mask holds, 0 elsewhere.

    Same shape and dtype as ``relevance``; options as :func:`motion_mask`. Under
    jit, a clip with NaN/Inf relevance (or any clip, for a negative or NaN sigma)
    comes back all NaN; eager calls raise instead.

    Examples:
        >>> import jax
        >>> from selrel_jax import selective_relevance
        >>> relevance = jax.random.normal(jax.random.key(0), (2, 8, 16, 16, 3))
        >>> sel = selective_relevance(relevance, sigma=2.0, temporal_padding="edge")
        >>> sel.shape, bool(((sel == 0) | (sel == relevance)).all())
        ((2, 8, 16, 16, 3), True)
    """
    return _split_checked(
        "selective_relevance", relevance, sigma, ddof, threshold, temporal_padding, layout,
        checked, "motion",
    )  # fmt: skip


def static_relevance(
    relevance: Any,
    sigma: Any = 1.0,
    *,
    ddof: int = 1,
    threshold: Threshold = "clip",
    temporal_padding: TemporalPadding = "zero",
    layout: Layout | None = None,
    checked: bool = False,
) -> jax.Array:
    """The complement of :func:`selective_relevance`: ``relevance - selective``.

    Same shape and dtype as ``relevance``; options and invalid values as
    :func:`selective_relevance`.
    """
    return _split_checked(
        "static_relevance", relevance, sigma, ddof, threshold, temporal_padding, layout,
        checked, "static",
    )  # fmt: skip


def _differ(a: jax.Array, b: jax.Array) -> jax.Array:
    """``a != b`` by value, subnormals included (XLA:CPU compares them as 0), -0 == 0."""
    ints = jnp.dtype(f"int{jnp.finfo(a.dtype).bits}")
    magnitude = jnp.iinfo(ints).max
    a_bits, b_bits = (jax.lax.bitcast_convert_type(v, ints) for v in (a, b))
    both_zero = ((a_bits & magnitude) == 0) & ((b_bits & magnitude) == 0)
    return (a_bits != b_bits) & ~both_zero


@functools.partial(jax.jit, static_argnames=("batched",))
def _spatial_bias(relevance, selective, batched):
    """``(bias, not_a_selection)`` per clip; bias NaN where either input is not finite
    or ``selective`` is not ``relevance`` restricted to some of its voxels."""
    rel, sel = (relevance, selective) if batched else (relevance[None], selective[None])
    axes = tuple(range(1, rel.ndim))
    ctype = _compute_dtype(rel.dtype)
    rel, sel = rel.astype(ctype), sel.astype(ctype)
    not_selected = jnp.sum(_differ(sel, rel) & _differ(sel, jnp.zeros_like(sel)), axis=axes)
    # The share does not depend on the maps' scale: both are scaled by the power of two
    # that brings the relevance to at most 2, so their sums can't overflow (a map
    # scaled by 1e36 gave NaN) and subnormal maps are read.
    sel = jax.vmap(scaled_to_unit)(sel, rel)
    rel = jax.vmap(scaled_to_unit)(rel)
    total = jnp.sum(jnp.abs(rel), axis=axes)
    kept = jnp.sum(jnp.abs(sel), axis=axes)
    bias = jnp.where(total > 0, 1 - safe_divide(kept, total), 0)
    invalid = ~jnp.isfinite(total) | ~jnp.isfinite(kept) | (not_selected > 0)
    bias = jnp.where(invalid, jnp.nan, bias)
    return (bias, not_selected) if batched else (bias[0], not_selected[0])


def spatial_bias(relevance: Any, selective: Any, *, layout: Layout | None = None) -> jax.Array:
    """Share of relevance mass removed by selection: ``1 - |sel|_1 / |rel|_1`` per clip.

    The paper's measure of a model's spatial (static appearance) bias; 0 when the
    relevance is all zero. ``selective`` must be ``relevance`` with some voxels set to
    0 (as :func:`selective_relevance` returns it): anything else, e.g. the arguments
    swapped, raises (NaN under jit), as do NaN or infinite values. A scalar for one
    clip, (N,) for a batch.

    Examples:
        >>> import jax
        >>> from selrel_jax import selective_relevance, spatial_bias
        >>> rel = jax.random.normal(jax.random.key(0), (2, 8, 16, 16, 3))
        >>> bias = spatial_bias(rel, selective_relevance(rel, sigma=1.0))
        >>> bias.shape, bool(((bias >= 0) & (bias <= 1)).all())
        ((2,), True)
    """
    rel, layout = _check_relevance(relevance, "spatial_bias", layout)
    sel, _ = _check_relevance(selective, "spatial_bias", layout, name="selective")
    if jnp.shape(rel) != jnp.shape(sel):
        raise ShapeError(
            f"spatial_bias: relevance and selective must have the same shape; "
            f"got {describe(rel)} and {describe(sel)}"
        )
    batched = layout.startswith("N")
    check_finite("spatial_bias: relevance", rel, batched=batched)
    check_finite("spatial_bias: selective", sel, batched=batched)
    if _traced(rel) or _traced(sel):
        return _spatial_bias(jnp.asarray(rel), jnp.asarray(sel), batched)[0]
    with jax.ensure_compile_time_eval():  # concrete inputs: check them, even inside a trace
        bias, not_selected = _spatial_bias(jnp.asarray(rel), jnp.asarray(sel), batched)
        counts = np.atleast_1d(np.asarray(not_selected))
        if counts.any():
            clips = f" of clip(s) {np.flatnonzero(counts).tolist()}" if batched else ""
            raise OptionError(
                f"spatial_bias: selective is not a selection of relevance: {int(counts.sum())} "
                f"voxels{clips} are neither equal to relevance nor 0 (arguments swapped?)"
            )
    return bias


def validate_relevance(
    relevance: Any, name: str = "relevance", *, layout: Layout | None = None
) -> np.ndarray:
    """Eagerly check a relevance map: rank, dtype, and no NaN or infinite values.

    Returns the map as a NumPy array; raises :class:`NonFiniteError` with the
    count of bad values and the clips that hold them. Not traceable (it inspects
    values).
    """
    x, layout = _check_relevance(relevance, "validate_relevance", layout, name=name)
    if _traced(x):
        raise OptionError("validate_relevance inspects values; it can't run under jit")
    check_finite(f"validate_relevance: {name}", x, batched=layout.startswith("N"))
    return np.asarray(x)
