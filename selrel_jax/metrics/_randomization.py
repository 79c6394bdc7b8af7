"""Cascading model-parameter randomisation (Adebayo et al. 2018, "Sanity checks for
saliency maps"): how much an explanation depends on the weights it explains.

The layers' parameters are re-initialised from the head down, one more layer at
each step, the rest kept trained; at each step every method's map of the
randomised model is compared with the trained model's map, raw and selective,
by Spearman rank correlation and SSIM. A method whose maps stay the same when
the weights are random explains the input, not the model.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from selrel_jax._checks import check_finite, describe, safe_divide
from selrel_jax.errors import DTypeError, OptionError, ShapeError
from selrel_jax.metrics._faithfulness import _checked_target
from selrel_jax.selective import selective_relevance

#: A method whose mean raw or selective Spearman correlation with the trained
#: model's map is above this once every layer is randomised is flagged.
INSENSITIVE_THRESHOLD = 0.5

#: SSIM's window: 7x7 uniform, sample covariance, constants K1=0.01, K2=0.03 on
#: maps scaled to [0, 1] (scikit-image's ``structural_similarity`` defaults).
SSIM_WINDOW = 7
_K1, _K2 = 0.01, 0.03

FN = "cascading_randomization"


class Randomization(NamedTuple):
    """Scores of :func:`cascading_randomization`, each (methods, steps, clips).

    ``layers[s]`` is the layer that step ``s`` randomised in addition to the
    steps before it (head first); ``methods[m]`` the method of row ``m``.
    """

    layers: tuple[str, ...]
    methods: tuple[str, ...]
    spearman: jax.Array
    ssim: jax.Array
    spearman_selective: jax.Array
    ssim_selective: jax.Array

    def insensitive(self, threshold: float = INSENSITIVE_THRESHOLD) -> tuple[str, ...]:
        """Methods whose mean raw or selective rank correlation over the clips is
        above ``threshold`` at the last step (every layer randomised)."""
        last = np.maximum(
            np.nanmean(np.asarray(self.spearman[:, -1]), axis=-1),
            np.nanmean(np.asarray(self.spearman_selective[:, -1]), axis=-1),
        )
        return tuple(m for m, value in zip(self.methods, last, strict=True) if value > threshold)


def _magnitudes(relevance: jax.Array) -> jax.Array:
    """Channel-summed |R| of a batch (N, T, H, W, C): (N, T, H, W) in float32."""
    return jnp.sum(jnp.abs(relevance.astype(jnp.float32)), axis=-1)


def _average_ranks(values: jax.Array) -> jax.Array:
    """Ranks 1..n of a flat array, ties sharing their mean rank (as scipy's rankdata)."""
    ordered = jnp.sort(values)
    below = jnp.searchsorted(ordered, values, side="left")
    up_to = jnp.searchsorted(ordered, values, side="right")
    return (below + up_to + 1) / 2.0


def _pearson(a: jax.Array, b: jax.Array) -> jax.Array:
    a = a - jnp.mean(a)
    b = b - jnp.mean(b)
    return safe_divide(jnp.sum(a * b), jnp.sqrt(jnp.sum(a * a) * jnp.sum(b * b)))


@jax.jit
def spearman(first: jax.Array, second: jax.Array) -> jax.Array:
    """Spearman rank correlation per clip of two map batches (N, T, H, W, C): (N,).

    Voxels are ranked by channel-summed |R|, ties by mean rank; a constant map
    (no ranking) scores 0.

    Examples:
        >>> import jax.numpy as jnp
        >>> maps = jnp.arange(24.0).reshape(1, 2, 3, 4, 1)
        >>> spearman(maps, 2 * maps + 1).tolist(), spearman(maps, 23 - maps).tolist()
        ([1.0], [-1.0])
    """

    def one(a: jax.Array, b: jax.Array) -> jax.Array:
        return _pearson(_average_ranks(a.ravel()), _average_ranks(b.ravel()))

    return jax.vmap(one)(_magnitudes(first), _magnitudes(second))


def _box_mean(frames: jax.Array) -> jax.Array:
    """Mean of each valid 7x7 window of frames (F, H, W): (F, H-6, W-6)."""
    window = jnp.ones((SSIM_WINDOW, SSIM_WINDOW, 1, 1), frames.dtype) / SSIM_WINDOW**2
    out = jax.lax.conv_general_dilated(
        frames[..., None], window, (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC")
    )
    return out[..., 0]


def _unit_frames(maps: jax.Array) -> jax.Array:
    """Channel-summed |R| per frame divided by the frame's maximum (an all-zero frame stays 0)."""
    frames = _magnitudes(maps)
    return safe_divide(frames, jnp.max(frames, axis=(-2, -1), keepdims=True))


@jax.jit
def ssim(first: jax.Array, second: jax.Array) -> jax.Array:
    """Mean SSIM over the frames of each clip of two map batches (N, T, H, W, C): (N,).

    Each frame is the channel-summed |R| scaled to [0, 1] by its maximum; the
    window is :data:`SSIM_WINDOW` square and uniform, over the frame's interior.

    Examples:
        >>> import jax.numpy as jnp
        >>> maps = jnp.arange(2 * 8 * 8.0).reshape(1, 2, 8, 8, 1)
        >>> round(float(ssim(maps, 3 * maps)[0]), 4)   # the same map once scaled to [0, 1]
        1.0
    """
    x, y = _unit_frames(first), _unit_frames(second)
    n, t, h, w = x.shape
    x, y = x.reshape(n * t, h, w), y.reshape(n * t, h, w)
    mx, my = _box_mean(x), _box_mean(y)
    unbiased = SSIM_WINDOW**2 / (SSIM_WINDOW**2 - 1)
    vx = (_box_mean(x * x) - mx * mx) * unbiased
    vy = (_box_mean(y * y) - my * my) * unbiased
    vxy = (_box_mean(x * y) - mx * my) * unbiased
    c1, c2 = _K1**2, _K2**2
    index = ((2 * mx * my + c1) * (2 * vxy + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
    return jnp.mean(index.reshape(n, t, -1), axis=-1).mean(axis=-1)


def _layer_order(variables: Any, layers: Sequence[str] | None) -> tuple[str, ...]:
    """The layers to randomise, in the order the model uses them."""
    if not isinstance(variables, Mapping) or "params" not in variables:
        raise OptionError(f"{FN}: variables must be a Flax linen model's variables with 'params'")
    names = tuple(variables["params"].keys())
    if layers is None:
        return names
    unknown = [name for name in layers if name not in names]
    if unknown or not layers:
        wrong = list(unknown or layers)
        raise OptionError(f"{FN}: layers {wrong!r} are not among the params {names}")
    return tuple(layers)


def _checked_clips(clips: Any) -> jax.Array:
    """Float clips (N, T, H, W, C) of finite values, frames at least the SSIM window."""
    shape = tuple(np.shape(clips))
    if len(shape) != 5 or min(shape[2:4]) < SSIM_WINDOW:
        raise ShapeError(
            f"{FN}: clips must be (N, T, H, W, C) with H, W >= {SSIM_WINDOW}; got {describe(clips)}"
        )
    if not jnp.issubdtype(jnp.result_type(clips), jnp.floating):
        raise DTypeError(f"{FN}: clips must be floating (normalised); got {describe(clips)}")
    check_finite(f"{FN}: clips", clips, batched=True)
    return jnp.asarray(clips)


def _cascade(variables: Any, fresh: Any, order: tuple[str, ...]) -> list[Any]:
    """The variables of each step: the last 1, 2, ... layers of ``order`` re-initialised."""
    steps = []
    for count in range(1, len(order) + 1):
        random_layers = set(order[-count:])
        params = {k: fresh[k] if k in random_layers else v for k, v in variables["params"].items()}
        steps.append({**variables, "params": params})
    return steps


def _scores(trained: jax.Array, randomised: jax.Array, sigma: float) -> tuple[jax.Array, ...]:
    sel_trained = selective_relevance(trained, sigma, layout="NTHWC")
    sel_random = selective_relevance(randomised, sigma, layout="NTHWC")
    return (
        spearman(trained, randomised),
        ssim(trained, randomised),
        spearman(sel_trained, sel_random),
        ssim(sel_trained, sel_random),
    )


def cascading_randomization(
    model: Any,
    variables: Any,
    clips: Any,
    target: Any = None,
    methods: str | Sequence[str] = ("gradient",),
    *,
    key: Any,
    sigma: float = 1.0,
    layers: Sequence[str] | None = None,
    method_options: Mapping[str, Mapping[str, Any]] | None = None,
) -> Randomization:
    """Cascading randomisation of a Flax linen ``model``'s ``variables``.

    ``layers`` are the top-level ``params`` keys in the order the model uses them
    (default: all, in the order Flax recorded them: for the zoo models the call
    order, the head last), randomised head first by the model's own initialisers
    (``model.init`` with ``key``); batch statistics stay trained. ``target`` None is
    the trained model's predicted class, kept for every step. ``sigma``: selective
    relevance's; ``method_options``: per method its options (``{"lrp.epsilon_gamma_box":
    {"low": ..., "high": ...}}``). Scores: :func:`spearman`, :func:`ssim` per clip.

    Examples (a model-free map does not change when the head is randomised):
        >>> import jax
        >>> import jax.numpy as jnp
        >>> from selrel_jax import metrics, models
        >>> model = models.create("c3d_small", 6, width=0.25, clip_size=(8, 32, 32))
        >>> variables = model.init(jax.random.key(0), jnp.zeros((1, 8, 32, 32, 3)), train=False)
        >>> clips = jax.random.normal(jax.random.key(1), (1, 8, 32, 32, 3))
        >>> result = metrics.cascading_randomization(model, variables, clips, None,
        ...     ["baseline.frame_difference"], key=jax.random.key(2), layers=["fc"])
        >>> result.layers, result.spearman.shape, round(float(result.spearman[0, 0, 0]), 4)
        (('fc',), (1, 1, 1), 1.0)
        >>> result.insensitive()
        ('baseline.frame_difference',)
    """
    from selrel_jax.attribution import make_explainer

    names = (methods,) if isinstance(methods, str) else tuple(methods)
    if not names:
        raise OptionError(f"{FN}: methods is empty; name at least one method")
    order = _layer_order(variables, layers)
    clips = _checked_clips(clips)
    logits = model.apply(variables, clips, train=False)
    if target is None:
        target = jnp.argmax(logits, axis=-1)
    target = _checked_target(FN, target, clips.shape[0], logits.shape[-1], True)
    fresh = model.init(key, clips[:1], train=False)["params"]
    steps = _cascade(variables, fresh, order)
    rows = []
    for method in names:
        # Inputs are checked above, so the explainer runs jitted (eager checks would
        # cost seconds per method) and one compilation serves every step.
        explain = jax.jit(make_explainer(model, method, **(method_options or {}).get(method, {})))
        trained = explain(variables, clips, target)
        check_finite(f"{FN}: the trained model's {method} map", trained, batched=True)
        rows.append([_scores(trained, explain(step, clips, target), sigma) for step in steps])
    stacked = [jnp.stack([jnp.stack([s[i] for s in row]) for row in rows]) for i in range(4)]
    return Randomization(tuple(reversed(order)), names, *stacked)


__all__ = [
    "INSENSITIVE_THRESHOLD",
    "SSIM_WINDOW",
    "Randomization",
    "cascading_randomization",
    "spearman",
    "ssim",
]
