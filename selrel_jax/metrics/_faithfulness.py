"""Faithfulness: does the model's output depend on what a relevance map points at?

Opt-in scores that run the model many times: deletion and insertion curves over the
most relevant voxels, and the drop of the target probability when the clip is frozen
to one frame (no motion left).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from selrel_jax._checks import (
    as_class_index,
    check_finite,
    describe,
    integer,
    one_of,
    positive_int,
    real,
)
from selrel_jax.errors import DTypeError, OptionError, ShapeError
from selrel_jax.metrics._inputs import checked_relevance, rank_of, unit_magnitudes
from selrel_jax.selective import Layout, _as_array, _nan_where, _traced

ApplyFn = Callable[[jax.Array], jax.Array]
Replacement = Literal["temporal_mean", "blur"]
#: What deleted voxels become: ``"temporal_mean"``, the pixel's mean over the clip's
#: frames (static content stays, motion goes); ``"blur"``, the frame blurred by a
#: Gaussian of ``blur_sigma`` pixels (fine detail goes).
REPLACEMENTS = ("temporal_mean", "blur")


class Curve(NamedTuple):
    """A deletion or insertion curve: the target probability after each step."""

    #: (S + 1,) share of the clip's voxels deleted (inserted) at each step, 0 ... 1.
    fractions: jax.Array
    #: (S + 1,) for one clip, (N, S + 1) for a batch: softmax probability of the target.
    probability: jax.Array
    #: () or (N,): trapezoidal area under ``probability`` over ``fractions``.
    auc: jax.Array


class FrameFreezing(NamedTuple):
    """Target probability on the clip and on the clip frozen to one frame."""

    #: () or (N,): on the clip.
    original: jax.Array
    #: () or (N,): on the clip of one repeated frame.
    frozen: jax.Array
    #: ``original - frozen``: how much the prediction relies on motion.
    drop: jax.Array


def _gaussian_taps(sigma: float) -> np.ndarray:
    # Radius int(3 sigma + 0.5), as scipy.ndimage.gaussian_filter1d with truncate=3.
    radius = int(3 * sigma + 0.5)
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    taps = np.exp(-0.5 * (x / sigma) ** 2)
    return taps / taps.sum()


def _blur_axis(x: jax.Array, taps: np.ndarray, axis: int) -> jax.Array:
    radius, size = len(taps) // 2, x.shape[axis]
    pad = [(0, 0)] * x.ndim
    pad[axis] = (radius, radius)
    padded = jnp.pad(x, pad, mode="edge")
    pieces = [
        float(w) * jax.lax.slice_in_dim(padded, i, i + size, axis=axis) for i, w in enumerate(taps)
    ]
    return functools.reduce(jnp.add, pieces)


def _baseline(clips: jax.Array, replacement: str, blur_sigma: float) -> jax.Array:
    """(N, T, H, W, C) values that deleted voxels take."""
    if replacement == "temporal_mean":
        return jnp.broadcast_to(jnp.mean(clips, axis=1, keepdims=True), clips.shape)
    taps = _gaussian_taps(blur_sigma)
    return _blur_axis(_blur_axis(clips, taps, 2), taps, 3)


def _target_probability(logits: jax.Array, target: jax.Array) -> jax.Array:
    """(N,) softmax probability of each clip's target; NaN for a target out of range."""
    p = jax.nn.softmax(logits.astype(jnp.promote_types(logits.dtype, jnp.float32)), axis=-1)
    valid = (target >= 0) & (target < logits.shape[-1])
    picked = jnp.take_along_axis(p, jnp.clip(target, 0, logits.shape[-1] - 1)[:, None], -1)
    return jnp.where(valid, picked[:, 0], jnp.nan)


def _chunked(fn: Callable, xs: np.ndarray, chunk: int) -> jax.Array:
    """``stack([fn(x) for x in xs])`` with ``fn`` evaluated on ``chunk`` values at once,
    one chunk after another (memory of one chunk)."""
    n_chunks = math.ceil(len(xs) / chunk)
    padded = np.concatenate([xs, np.repeat(xs[-1:], n_chunks * chunk - len(xs))])
    out = jax.lax.map(fn, jnp.asarray(padded.reshape(n_chunks, chunk)))
    return out.reshape(n_chunks * chunk, *out.shape[2:])[: len(xs)]


def _step_counts(steps: int, voxels: int) -> np.ndarray:
    """``round(i * voxels / steps)`` for i = 0..steps, halves up, in exact integers."""
    return np.array([(2 * i * voxels + steps) // (2 * steps) for i in range(steps + 1)])


def _invalid_clips(clips: jax.Array, relevance: jax.Array) -> jax.Array:
    axes = tuple(range(1, clips.ndim))
    bad = ~jnp.all(jnp.isfinite(clips), axis=axes)
    return bad | ~jnp.all(jnp.isfinite(relevance), axis=tuple(range(1, relevance.ndim)))


_CURVE_STATIC = ("apply_fn", "insertion", "steps", "replacement", "blur_sigma", "chunk")


@functools.partial(jax.jit, static_argnames=_CURVE_STATIC)
def _curve(apply_fn, clips, relevance, target, insertion, steps, replacement, blur_sigma, chunk):
    n, t, h, w, c = clips.shape
    if target is None:
        target = jnp.argmax(apply_fn(clips), axis=-1)
    base = _baseline(clips, replacement, blur_sigma)
    rank = jax.vmap(lambda r: rank_of(unit_magnitudes(r)))(relevance)[..., None]  # (N, T, H, W, 1)
    counts = _step_counts(steps, t * h * w)

    def probabilities(ks: jax.Array) -> jax.Array:  # (chunk,) -> (chunk, N)
        chosen = rank[None] < ks[:, None, None, None, None, None]
        x = jnp.where(chosen, clips, base) if insertion else jnp.where(chosen, base, clips)
        logits = apply_fn(x.reshape(-1, t, h, w, c))
        return _target_probability(logits, jnp.tile(target, len(ks))).reshape(len(ks), n)

    probability = _chunked(probabilities, counts, chunk).T  # (N, S + 1)
    fractions = jnp.asarray(counts / (t * h * w), probability.dtype)
    widths = jnp.diff(fractions)
    auc = jnp.sum(widths * (probability[:, 1:] + probability[:, :-1]) / 2, axis=-1)
    invalid = _invalid_clips(clips, relevance)
    return Curve(fractions, _nan_where(invalid, probability), _nan_where(invalid, auc))


@functools.partial(jax.jit, static_argnames=("apply_fn", "frame"))
def _frame_freezing(apply_fn, clips, target, frame):
    logits = apply_fn(clips)
    if target is None:
        target = jnp.argmax(logits, axis=-1)
    original = _target_probability(logits, target)
    frozen_clips = jnp.broadcast_to(clips[:, frame : frame + 1], clips.shape)
    frozen = _target_probability(apply_fn(frozen_clips), target)
    invalid = ~jnp.all(jnp.isfinite(clips), axis=(1, 2, 3, 4))
    return FrameFreezing(*(_nan_where(invalid, p) for p in (original, frozen, original - frozen)))


class _ByIdentity:
    """An unhashable ``apply_fn`` as a static jit argument, compared by identity."""

    def __init__(self, fn: ApplyFn):
        self.fn = fn

    def __call__(self, clips: jax.Array) -> jax.Array:
        return self.fn(clips)

    def __hash__(self) -> int:
        return id(self.fn)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _ByIdentity) and other.fn is self.fn


def _checked_apply_fn(fn: str, apply_fn: Any) -> ApplyFn:
    if not callable(apply_fn):
        raise OptionError(
            f"{fn}: apply_fn must be a callable clips -> logits; got {type(apply_fn).__name__}"
        )
    try:
        hash(apply_fn)
    except TypeError:
        return _ByIdentity(apply_fn)
    return apply_fn


def _checked_clips(fn: str, clips: Any) -> tuple[jax.Array, bool]:
    """``(clips (N, T, H, W, C), batched)``: real floating, finite (eager), nonempty."""
    x = _as_array(clips, fn, "clips")
    if not jnp.issubdtype(jnp.result_type(x), jnp.floating):
        raise DTypeError(f"{fn}: clips must be a real floating array; got {describe(x)}")
    if jnp.ndim(x) not in (4, 5):
        raise ShapeError(
            f"{fn}: clips must be one clip (T, H, W, C) or a batch (N, T, H, W, C); "
            f"got {describe(x)}"
        )
    batched = jnp.ndim(x) == 5
    if 0 in jnp.shape(x):
        raise ShapeError(f"{fn}: clips has an empty axis: {describe(x)}")
    check_finite(f"{fn}: clips", x, batched=batched)
    return (jnp.asarray(x) if batched else jnp.asarray(x)[None]), batched


def _checked_relevance_for(fn: str, relevance: Any, clips: jax.Array, batched: bool, layout):
    """Relevance (N, T, H, W[, C]) for the clips (N, T, H, W, C)."""
    r, rel_batched = checked_relevance(fn, relevance, layout)
    r = r if rel_batched else r[None]
    if rel_batched != batched or r.shape[:4] != clips.shape[:4]:
        want = clips.shape[:4] if batched else clips.shape[1:4]
        raise ShapeError(
            f"{fn}: relevance must have the clips' {'(N, T, H, W)' if batched else '(T, H, W)'} "
            f"{tuple(want)}; got {describe(relevance)} (a channel-less batch needs "
            f"layout='NTHW')"
        )
    return r


def _logit_classes(fn: str, apply_fn: ApplyFn, clips: jax.Array) -> int:
    out = jax.eval_shape(apply_fn, jax.ShapeDtypeStruct(clips.shape, clips.dtype))
    shape = getattr(out, "shape", None)
    if shape is None or len(shape) != 2 or shape[0] != clips.shape[0] or shape[1] < 1:
        raise ShapeError(
            f"{fn}: apply_fn must map clips {clips.shape} to logits ({clips.shape[0]}, "
            f"classes); it returns {shape if shape is not None else type(out).__name__}"
        )
    return int(shape[1])


def _checked_target(fn: str, target: Any, clips: int, classes: int, batched: bool):
    """None, or (N,) int32 class indices; a concrete target must lie in [0, classes)."""
    if target is None:
        return None
    t = target if _traced(target) or isinstance(target, jax.Array) else np.asarray(target)
    dtype = jnp.result_type(t)
    if not jnp.issubdtype(dtype, jnp.integer) or dtype == jnp.bool_:
        raise DTypeError(f"{fn}: target must be an integer class index; got {describe(t)}")
    if tuple(jnp.shape(t)) not in (((), (clips,)) if batched else ((),)):
        wanted = f"a scalar or ({clips},)" if batched else "a scalar (one clip)"
        raise ShapeError(f"{fn}: target must be {wanted}; got {describe(t)}")
    if not _traced(t):
        values = np.asarray(t)
        if ((values < 0) | (values >= classes)).any():
            raise OptionError(f"{fn}: target must lie in [0, {classes}); got {values.tolist()}")
        return jnp.broadcast_to(jnp.asarray(t).astype(jnp.int32), (clips,))
    return jnp.broadcast_to(as_class_index(t, classes), (clips,))  # out of range: NaN


def _run_curve(fn, insertion, apply_fn, clips, relevance, target, options) -> Curve:
    steps, replacement, blur_sigma, chunk_size, layout = options
    apply_fn = _checked_apply_fn(fn, apply_fn)
    steps = positive_int(f"{fn}: steps", steps)
    one_of(f"{fn}: replacement", replacement, REPLACEMENTS)
    blur_sigma = real(f"{fn}: blur_sigma", blur_sigma, above=0.0)
    chunk = 1 if chunk_size is None else positive_int(f"{fn}: chunk_size", chunk_size)
    x, batched = _checked_clips(fn, clips)
    r = _checked_relevance_for(fn, relevance, x, batched, layout)
    target = _checked_target(fn, target, x.shape[0], _logit_classes(fn, apply_fn, x), batched)
    curve = _curve(
        apply_fn, x, r, target, insertion, steps, replacement, blur_sigma, min(chunk, steps + 1)
    )
    return curve if batched else Curve(curve.fractions, curve.probability[0], curve.auc[0])


def deletion_curve(
    apply_fn: ApplyFn,
    clips: Any,
    relevance: Any,
    target: Any = None,
    *,
    steps: int = 10,
    replacement: Replacement = "temporal_mean",
    blur_sigma: float = 2.0,
    chunk_size: int | None = None,
    layout: Layout | None = None,
) -> Curve:
    """Target probability as the most relevant voxels are deleted, step by step.

    Voxels are ranked as in :func:`top_k_voxels` (``v = sum_c |R|``, ties by index).
    Step ``i = 0..steps`` replaces the top ``k_i = round(i * n / steps)`` voxels
    (``n = T*H*W``, halves rounded up; every channel of a voxel) by
    :func:`faithfulness_baseline` and records ``p_i = softmax(apply_fn(x_i))[target]``.
    ``auc = sum_i (f_{i+1} - f_i) (p_i + p_{i+1}) / 2`` over ``f_i = k_i / n``: lower
    means the map found what the model uses. ``steps + 1`` forward passes of N clips.

    Args:
      apply_fn: ``clips (B, T, H, W, C) -> logits (B, classes)``, e.g.
        ``functools.partial(model.apply, variables, train=False)``. Reuse the same
        object across calls: it is a static jit argument.
      clips: real floating model input, one clip (T, H, W, C) or a batch (N, T, H, W, C).
      relevance: the clips' relevance maps, (T, H, W[, C]) or (N, T, H, W[, C])
        (``layout="NTHW"`` for a channel-less batch).
      target: class index, a scalar or (N,); None: the class the model predicts on
        each clip. Traced and out of range: NaN for that clip.
      steps: grid size (10: 0%, 10%, ..., 100% of the voxels).
      replacement: ``"temporal_mean"`` or ``"blur"`` (see :data:`REPLACEMENTS`).
      blur_sigma: Gaussian sigma in pixels for ``"blur"``.
      chunk_size: steps evaluated in one forward pass (of ``chunk_size * N`` clips);
        None: one step at a time (least memory).
      layout: how to read the relevance's axes.

    Returns:
      :class:`Curve`: ``fractions`` (S + 1,), ``probability`` (S + 1,) or (N, S + 1),
      ``auc`` () or (N,); float32. NaN for a clip with NaN/Inf clips or relevance
      under jit (eager calls raise).

    Examples:
        >>> import functools
        >>> import jax
        >>> import jax.numpy as jnp
        >>> from selrel_jax import metrics, models, selective_relevance
        >>> model = models.create("c3d_small", 4, width=0.25, clip_size=(8, 32, 32))
        >>> variables = model.init(jax.random.key(0), jnp.zeros((1, 8, 32, 32, 3)), train=False)
        >>> clips = jax.random.normal(jax.random.key(1), (1, 8, 32, 32, 3))
        >>> apply_fn = functools.partial(model.apply, variables, train=False)
        >>> sel = selective_relevance(jnp.abs(clips), sigma=1.0)   # any relevance map
        >>> curve = metrics.deletion_curve(apply_fn, clips, sel, steps=4)
        >>> curve.fractions
        Array([0.  , 0.25, 0.5 , 0.75, 1.  ], dtype=float32)
        >>> curve.probability.shape, curve.auc.shape
        ((1, 5), (1,))
    """
    options = (steps, replacement, blur_sigma, chunk_size, layout)
    return _run_curve("deletion_curve", False, apply_fn, clips, relevance, target, options)


def insertion_curve(
    apply_fn: ApplyFn,
    clips: Any,
    relevance: Any,
    target: Any = None,
    *,
    steps: int = 10,
    replacement: Replacement = "temporal_mean",
    blur_sigma: float = 2.0,
    chunk_size: int | None = None,
    layout: Layout | None = None,
) -> Curve:
    """Target probability as the most relevant voxels are restored into the baseline.

    The mirror of :func:`deletion_curve`: step ``i`` starts from
    :func:`faithfulness_baseline` and puts back the clip's top ``k_i`` voxels (step 0
    is the baseline, the last step the clip). Higher ``auc`` means the map found what
    the model uses. Arguments and result as :func:`deletion_curve`.

    Examples:
        >>> import jax
        >>> import jax.numpy as jnp
        >>> from selrel_jax import models
        >>> model = models.create("c3d_small", 4, width=0.25, clip_size=(8, 32, 32))
        >>> variables = model.init(jax.random.key(0), jnp.zeros((1, 8, 32, 32, 3)), train=False)
        >>> clips = jax.random.normal(jax.random.key(1), (1, 8, 32, 32, 3))
        >>> import functools
        >>> from selrel_jax import selective_relevance
        >>> from selrel_jax.metrics import insertion_curve
        >>> apply_fn = functools.partial(model.apply, variables, train=False)
        >>> sel = selective_relevance(jnp.abs(clips), sigma=1.0)   # any relevance map
        >>> insertion_curve(apply_fn, clips, sel, steps=4, replacement="blur").auc.shape
        (1,)
    """
    options = (steps, replacement, blur_sigma, chunk_size, layout)
    return _run_curve("insertion_curve", True, apply_fn, clips, relevance, target, options)


def faithfulness_baseline(
    clips: Any, replacement: Replacement = "temporal_mean", *, blur_sigma: float = 2.0
) -> jax.Array:
    """What :func:`deletion_curve` puts in place of deleted voxels.

    ``"temporal_mean"``: ``mean_t x[t, h, w, c]`` at every frame (each pixel's mean
    over the clip: its static content, no motion). ``"blur"``: each frame convolved
    over H and W with a normalised Gaussian ``exp(-d^2 / (2 blur_sigma^2))`` of
    radius ``int(3 blur_sigma + 0.5)``, edge pixels repeated beyond the border (as
    ``scipy.ndimage.gaussian_filter1d(..., mode="nearest", truncate=3)`` on H and W).

    Args:
      clips: real floating (T, H, W, C) or (N, T, H, W, C).
      replacement: ``"temporal_mean"`` or ``"blur"``.
      blur_sigma: Gaussian sigma in pixels, > 0.

    Returns:
      the clips' shape and dtype.

    Examples:
        >>> import jax
        >>> from selrel_jax.metrics import faithfulness_baseline
        >>> clips = jax.random.normal(jax.random.key(1), (1, 8, 32, 32, 3))
        >>> deleted = faithfulness_baseline(clips, "blur", blur_sigma=3.0)
        >>> deleted.shape
        (1, 8, 32, 32, 3)
        >>> still = faithfulness_baseline(clips)   # temporal_mean: every frame the same
        >>> bool(jax.numpy.allclose(still[:, 0], still[:, -1]))
        True
    """
    fn = "faithfulness_baseline"
    one_of(f"{fn}: replacement", replacement, REPLACEMENTS)
    blur_sigma = real(f"{fn}: blur_sigma", blur_sigma, above=0.0)
    x, batched = _checked_clips(fn, clips)
    base = _jitted_baseline(x, replacement, blur_sigma)
    return base if batched else base[0]


_jitted_baseline = jax.jit(_baseline, static_argnames=("replacement", "blur_sigma"))


def frame_freezing(
    apply_fn: ApplyFn, clips: Any, target: Any = None, *, frame: int | None = None
) -> FrameFreezing:
    """Motion reliance: the target probability lost when the clip stops moving.

    The frozen clip repeats frame ``frame`` T times; ``drop = p(clip) - p(frozen)``
    with ``p = softmax(apply_fn(.))[target]``. A model that needs motion loses
    confidence (drop near its ``original``); one that reads single frames does not
    (drop near 0, or negative). Two forward passes of N clips.

    Args:
      apply_fn: ``clips -> logits``, as :func:`deletion_curve`.
      clips: real floating, one clip (T, H, W, C) or a batch (N, T, H, W, C).
      target: class index, a scalar or (N,); None: the predicted class on the clip.
      frame: the frame kept, in [0, T); None: the middle one, ``T // 2``.

    Returns:
      :class:`FrameFreezing` (``original``, ``frozen``, ``drop``), each () or (N,),
      float32. NaN for a clip with NaN/Inf values (or, traced, a target out of
      range) under jit; eager calls raise.

    Examples:
        >>> import jax
        >>> import jax.numpy as jnp
        >>> from selrel_jax import models
        >>> model = models.create("c3d_small", 4, width=0.25, clip_size=(8, 32, 32))
        >>> variables = model.init(jax.random.key(0), jnp.zeros((1, 8, 32, 32, 3)), train=False)
        >>> clips = jax.random.normal(jax.random.key(1), (1, 8, 32, 32, 3))
        >>> import functools
        >>> from selrel_jax.metrics import frame_freezing
        >>> apply_fn = functools.partial(model.apply, variables, train=False)
        >>> frozen = frame_freezing(apply_fn, clips)
        >>> frozen.drop.shape, bool(jnp.allclose(frozen.drop, frozen.original - frozen.frozen))
        ((1,), True)
    """
    fn = "frame_freezing"
    apply_fn = _checked_apply_fn(fn, apply_fn)
    x, batched = _checked_clips(fn, clips)
    t = x.shape[1]
    frame = t // 2 if frame is None else integer(f"{fn}: frame", frame, minimum=0)
    if frame >= t:
        raise OptionError(f"{fn}: frame must lie in [0, {t}) (the clip's frames); got {frame}")
    target = _checked_target(fn, target, x.shape[0], _logit_classes(fn, apply_fn, x), batched)
    result = _frame_freezing(apply_fn, x, target, frame)
    return result if batched else FrameFreezing(*(v[0] for v in result))
