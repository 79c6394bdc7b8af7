"""Explain a whole video: clips in sliding windows, relevance, selective relevance, scores.

:func:`explain_video` is what ``selrel explain`` runs for each video. It samples the
video's frames the way the model was trained (its ``fps`` or ``frame_step``, resized
and centre-cropped to its input), cuts them into windows of the model's clip length
every ``clip_stride`` frames, and explains every window in jit-compiled batches:

1. one forward pass over all windows gives the clip logits; their mean is the
   video's prediction, and the target (by default that prediction) is explained in
   every window;
2. the relevance of each window, its selective (motion) relevance and the static
   rest are computed together with the per-window scores;
3. each sampled frame's maps are the mean over the windows that cover it (or a
   weighted mean, each window's frames weighted by a taper: :func:`window_weights`).

The result holds the frames, the per-frame maps (channels summed, for display),
the clip logits, the video's class probabilities and the scores;
:func:`save_explanation` writes it as pictures, an overlay video and
``summary.json`` (:func:`summary`). Those files, and :func:`explain_files` (many
videos, resumable), live in :mod:`selrel_jax.explanation_files` and are exported
here too.

Examples:
    The bundled sample clip (32 frames of 48x48) with the shipped motion model:

    >>> from selrel_jax import data, models
    >>> from selrel_jax import video_explanation as ve
    >>> model, variables, info = models.load("c3d_small_motion")
    >>> result = ve.explain_video(data.sample_clip_path(), model, variables, info, sigma=1.0)
    >>> result.predicted_name
    'translate_right'
    >>> bias = result.scores()["spatial_bias"]
    >>> 0 <= bias <= 1
    True
    >>> ve.summary(result, "c3d_small_motion")["predicted"]["name"]   # summary.json's
    'translate_right'
    >>> ve.save_explanation(result, "out/clip")
    '.../out/clip'
"""

from __future__ import annotations

import dataclasses
import os
import re
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from selrel_jax import data, metrics
from selrel_jax._checks import hashable, integer, one_of, positive_int, real
from selrel_jax._jobs import check_memory, compiling, progress_bar
from selrel_jax._worker import decode_in_worker
from selrel_jax.attribution import make_explainer, registry
from selrel_jax.errors import OptionError, ShapeError
from selrel_jax.models.info import ModelInfo
from selrel_jax.selective import (
    TEMPORAL_PADDINGS,
    THRESHOLDS,
    motion_mask,
    selective_relevance,
)

__all__ = [
    "DEFAULT_METHOD",
    "DEFAULT_TEMPORAL_PADDING",
    "DEFAULT_THRESHOLD",
    "DEFAULT_WINDOW_BLEND",
    "WINDOW_BLENDS",
    "VideoExplanation",
    "check_method_on_model",
    "default_method",
    "domain_warnings",
    "explain_files",  # noqa: F822 (these three: __getattr__ below)
    "explain_video",
    "input_bounds",
    "resolve_target",
    "save_explanation",  # noqa: F822
    "summary",  # noqa: F822
    "unlike_synthetic_share",
    "window_starts",
    "window_weights",
]
#: Exported here, defined in :mod:`selrel_jax.explanation_files`, which imports this
#: module: they are looked up on first use.
_FILES = ("explain_files", "output_directories", "save_explanation", "summary")


def __getattr__(name: str) -> Any:
    if name in _FILES:
        from selrel_jax import explanation_files

        return getattr(explanation_files, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


#: The method of ``explain_video`` and ``selrel explain`` for a 3D CNN unless given; a
#: video transformer or X3D gets ``lrp.attn`` (:func:`default_method`).
DEFAULT_METHOD = registry.CNN_METHOD
#: Overlapping windows: under zero padding every window's first and last frame
#: "moves" (the paper's end-frame artefact), and averaging windows would paint that
#: artefact onto every ``clip_stride``-th frame of the video. Edge padding makes a
#: window's end frames one-sided differences instead.
DEFAULT_TEMPORAL_PADDING = "edge"
#: One motion threshold per window, as the paper does.
DEFAULT_THRESHOLD = "clip"
#: How overlapping windows' maps are blended into per-frame maps (:func:`window_weights`).
WINDOW_BLENDS = ("mean", "taper")
#: The plain mean. The taper (each frame weighted by its distance from its window's
#: edges) was meant to keep the window stride out of the per-frame timeline, but on
#: the shipped models a window's relevance is low in its middle frames, not high at
#: its two end frames only: measured on constant motion (docs/explain.md), the taper
#: leaves LRP's stride component as it was (0.103 vs 0.110 of the mean) and raises
#: the selective map's (0.21 vs 0.13); it lowers the gradient's (0.032 vs 0.055). A
#: smaller ``clip_stride`` (more overlap) lowers all of them.
DEFAULT_WINDOW_BLEND = "mean"


def default_method(info: ModelInfo) -> str:
    """The method ``explain_video``, ``explain_files`` and the sweep use for a model of
    ``info`` unless given one: ``lrp.attn`` (AttnLRP) for the video transformers and
    X3D, whose LayerNorm, softmax and gates the CNN composites refuse, else
    :data:`DEFAULT_METHOD` (:func:`selrel_jax.attribution.registry.default_method`)."""
    return registry.default_method(info.arch)


def input_bounds(info: ModelInfo) -> tuple[np.ndarray, np.ndarray]:
    """The model's normalised input range per channel, ``(low, high)`` each (3,):
    pixels 0 and 255 after :func:`selrel_jax.data.normalize` with ``info``'s
    preprocessing (the natural ``low``/``high`` of ``lrp.epsilon_gamma_box``);
    :meth:`ModelInfo.input_bounds`."""
    return info.input_bounds()


def window_weights(length: int, blend: str = DEFAULT_WINDOW_BLEND) -> jax.Array:
    """Weight of each frame of a window of ``length`` frames when overlapping windows
    are blended into per-frame maps, float32 (length,), all > 0.

    ``"taper"``: a Hann window on ``(i + 1) / (length + 1)``, ``sin(pi (i + 1) /
    (length + 1)) ** 2``, largest in the window's middle and small, never 0, at its
    ends: a frame covered by one window only (the video's first and last frames)
    keeps that window's maps. ``"mean"``: all 1, the plain mean over windows.

    Examples:
        >>> from selrel_jax.video_explanation import window_weights
        >>> window_weights(4, "mean").tolist()
        [1.0, 1.0, 1.0, 1.0]
        >>> [round(w, 3) for w in window_weights(4, "taper").tolist()]
        [0.345, 0.905, 0.905, 0.345]
    """
    one_of("window_blend", blend, WINDOW_BLENDS)
    position = (jnp.arange(length, dtype=jnp.float32) + 1) / (length + 1)
    if blend == "mean":
        return jnp.ones(length, jnp.float32)
    return jnp.sin(jnp.pi * position) ** 2


def window_starts(num_frames: int, clip_length: int, stride: int) -> np.ndarray:
    """First frame of every window: ``0, stride, 2 * stride, ...`` and, if those
    leave the last frames uncovered, one more window ending at the last frame.
    A video shorter than one clip gets the single window 0 (loop-padded)."""
    if num_frames <= clip_length:
        return np.zeros(1, np.int64)
    starts = np.arange(0, num_frames - clip_length + 1, stride)
    if starts[-1] + clip_length < num_frames:
        starts = np.append(starts, num_frames - clip_length)
    return starts


#: A target that is a number: ASCII digits only (``str.isdigit`` also accepts "²").
_INDEX = re.compile(r"[+-]?[0-9]+")


def resolve_target(target: int | str | None, class_names: Sequence[str]) -> int | None:
    """The class index ``target`` names, None for the video's prediction.

    ``None`` / ``"predicted"``: the prediction. An int, ``"index:N"`` or a bare number
    ``"N"``: class index N. ``"name:X"`` or any other string: the class named X. A bare
    number that is also the name of another class is ambiguous (class names that are
    digits) and refused, asking for ``index:N`` or ``name:N``.
    """
    if target is None or target == "predicted":
        return None
    if not isinstance(target, str):
        return _class_index(integer("target", target), class_names)
    text = target.strip()
    if text.startswith("name:"):
        return _class_named(target, text[len("name:") :], class_names)
    if text.startswith("index:"):
        if not _INDEX.fullmatch(text[len("index:") :].strip()):
            raise OptionError(f"target {text}: the index must be an integer, e.g. index:3")
        return _class_index(int(text[len("index:") :]), class_names)
    if not _INDEX.fullmatch(text):
        return _class_named(target, target, class_names)
    index = _class_index(int(text), class_names)
    if text in class_names and class_names.index(text) != index:
        raise OptionError(
            f"target {text!r} is ambiguous: class {index} is named {class_names[index]!r} "
            f"and class {class_names.index(text)} is named {text!r}; pass index:{text} or "
            f"name:{text}"
        )
    return index


def _class_index(index: int, class_names: Sequence[str]) -> int:
    if not 0 <= index < len(class_names):
        raise OptionError(f"target {index} out of range for {len(class_names)} classes")
    return index


def _class_named(target: str, name: str, class_names: Sequence[str]) -> int:
    if name not in class_names:
        raise OptionError(
            f"target {target!r} is not a class name of the model; classes: "
            f"{_abbreviated(class_names)}"
        )
    return list(class_names).index(name)


def _abbreviated(names: Sequence[str], limit: int = 12) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names)} in all)" if len(names) > limit else "")


@dataclasses.dataclass(frozen=True)
class ExplainSettings:
    """What :func:`explain_video` computes, checked once."""

    method: str = DEFAULT_METHOD
    sigma: float = 1.0
    temporal_padding: str = DEFAULT_TEMPORAL_PADDING
    threshold: str = DEFAULT_THRESHOLD
    clip_stride: int | None = None
    batch_size: int = 8
    method_options: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    window_blend: str = DEFAULT_WINDOW_BLEND

    @classmethod
    def for_model(cls, info: ModelInfo, method: str | None = None, *args: Any,
                  **kwargs: Any) -> ExplainSettings:  # fmt: skip
        """The settings for a model of ``info``: ``method`` None is its
        :func:`default_method`; the other arguments as the fields'."""
        return cls(default_method(info) if method is None else method, *args, **kwargs)

    def __post_init__(self) -> None:
        method = registry.get(self.method)
        unknown = sorted(set(self.method_options) - set(method.options))
        if unknown:
            raise OptionError(
                f"unknown option(s) {unknown} for method {self.method!r}; valid: "
                f"{method.describe_options()}"
            )
        real("sigma", self.sigma, minimum=0.0)
        one_of("temporal_padding", self.temporal_padding, TEMPORAL_PADDINGS)
        one_of("threshold", self.threshold, THRESHOLDS)
        one_of("window_blend", self.window_blend, WINDOW_BLENDS)
        if self.clip_stride is not None:
            positive_int("clip_stride", self.clip_stride)
        positive_int("batch_size", self.batch_size)

    def stride_for(self, info: ModelInfo) -> int:
        """Sampled frames between window starts for a model of ``info`` (default half
        its clip); an OptionError if windows that far apart would leave frames between
        them that no window covers (they would have no relevance)."""
        length = info.clip_length
        if self.clip_stride is not None and self.clip_stride > length:
            raise OptionError(
                f"clip_stride {self.clip_stride} is longer than the model's clip of {length} "
                "frames: the frames between windows would have no relevance; use at most "
                f"{length}"
            )
        return self.clip_stride or max(1, length // 2)

    def options_for(self, info: ModelInfo) -> dict[str, Any]:
        """The method's options for a model of ``info``, ``low``/``high`` of
        ``lrp.epsilon_gamma_box`` defaulting to its normalised input range (per
        channel); an OptionError if one the method needs is still missing."""
        options = registry.with_input_bounds(self.method, self.method_options,
                                             info.input_bounds())  # fmt: skip
        registry.resolve(self.method, options)
        return options


# ---------------------------------------------------------------------------- compute


class _ClipScores:
    """Names of what one jitted batch returns per window (arrays with a leading N)."""

    MAPS = ("relevance", "selective", "static")  # channel-summed (N, T, H, W)
    SCORES = ("relevance_mass", "selective_mass", "kept_voxels", "gini_raw", "gini_selective")


_COMPILED: dict[Any, tuple[Callable, Callable]] = {}


def _compiled(model, info: ModelInfo, settings: ExplainSettings, options) -> tuple:
    """``(forward, explain_batch)`` jit-compiled, shared by every video explained with the
    same model, preprocessing and settings (one compilation for a list of videos)."""
    key = (
        model,
        hashable(info.normalization),
        (settings.method, settings.sigma, settings.temporal_padding, settings.threshold),
        hashable(options),
    )
    try:
        hash(key)
    except TypeError:  # an unhashable model: compile for this call only
        return _logits_function(model, info), _batch_function(model, info, settings, options)
    if key not in _COMPILED:
        if len(_COMPILED) >= 8:
            _COMPILED.pop(next(iter(_COMPILED)))
        _COMPILED[key] = (
            _logits_function(model, info),
            _batch_function(model, info, settings, options),
        )
    return _COMPILED[key]


def _batch_function(model, info: ModelInfo, settings: ExplainSettings, options) -> Callable:
    """``(variables, clips_uint8, target) -> dict`` of a batch of windows, jit-compiled:
    the channel-summed maps, the masses and scores, and the target logits."""
    explainer = make_explainer(model, settings.method, **options)
    prepare = info.normalize
    select = {
        "sigma": settings.sigma,
        "temporal_padding": settings.temporal_padding,
        "threshold": settings.threshold,
    }

    def run(variables, clips, target):
        x = prepare(clips)
        logits = model.apply(variables, x)
        relevance = explainer(variables, x, target)
        selective = selective_relevance(relevance, **select)
        mask = motion_mask(relevance, **select)
        axes = (1, 2, 3, 4)
        return {
            "relevance": relevance.sum(-1),
            "selective": selective.sum(-1),
            "static": (relevance - selective).sum(-1),
            "relevance_mass": jnp.abs(relevance).sum(axes),
            "selective_mass": jnp.abs(selective).sum(axes),
            "kept_voxels": metrics.kept_voxels(mask),
            "gini_raw": metrics.gini(relevance),
            "gini_selective": metrics.gini(selective),
            "target_logit": jnp.take_along_axis(logits, target[:, None], 1)[:, 0],
        }

    return jax.jit(run)


def check_method_on_model(
    model: Any, variables: Any, info: ModelInfo, settings: ExplainSettings, options: Any
) -> None:
    """Trace one batch of windows abstractly (no compilation, no data): an option value
    the method refuses (``epsilon="abc"``) or a model it cannot explain is an error now,
    before any video is read, not once per video as if the videos were bad. The trace
    is cached, so the explanation that follows does not trace again."""
    _, run = _compiled(model, info, settings, options)
    clips = jax.ShapeDtypeStruct((settings.batch_size, *info.clip_size, 3), jnp.uint8)
    targets = jax.ShapeDtypeStruct((settings.batch_size,), jnp.int32)
    jax.eval_shape(run, variables, clips, targets)


def check_request(
    model: Any, variables: Any, info: ModelInfo, settings: ExplainSettings, target: Any,
    decode_timeout: float | None,
) -> tuple[int | None, dict[str, Any], float | None]:  # fmt: skip
    """Every check of an explanation request before any video is read: the target
    against the model's classes, the method's options (:meth:`ExplainSettings.options_for`),
    the window stride, ``decode_timeout`` and the method on the model
    (:func:`check_method_on_model`). Returns ``(target index, options, decode_timeout)``;
    :func:`explain_video` and ``explain_files`` both start here."""
    target_index = resolve_target(target, info.class_names)
    options = settings.options_for(info)
    settings.stride_for(info)
    if decode_timeout is not None:
        decode_timeout = real("decode_timeout", decode_timeout, above=0.0)
    check_method_on_model(model, variables, info, settings, options)
    return target_index, options, decode_timeout


def _logits_function(model, info: ModelInfo) -> Callable:
    prepare = info.normalize
    return jax.jit(lambda variables, clips: model.apply(variables, prepare(clips)))


def _windows(frames: np.ndarray, starts: np.ndarray, length: int) -> Callable:
    """``batch(rows) -> uint8 (len(rows), length, H, W, 3)``: the windows at ``starts[rows]``,
    frames taken modulo the video's length (a short video is loop-padded)."""
    offsets = np.arange(length)

    def batch(rows: np.ndarray) -> np.ndarray:
        return frames[(starts[rows, None] + offsets) % len(frames)]

    return batch


def _batches(count: int, batch_size: int):
    """Row indices of each batch, the last one padded by repeating its last row so that
    every batch has one shape (one compilation)."""
    for first in range(0, count, batch_size):
        rows = np.arange(first, min(first + batch_size, count))
        yield rows, np.pad(rows, (0, batch_size - len(rows)), mode="edge")


# ---------------------------------------------------------------------------- frames


class SelrelWarning(UserWarning):
    """Something the user should know about a result that is still computed."""


def _fit_frames(frames: np.ndarray, info: ModelInfo) -> np.ndarray:
    """Frames resized so their shorter side is the model's resize size (else the crop's
    larger side) and centre-cropped to its input; unchanged if they already fit."""
    crop = info.crop_size
    if frames.shape[1:3] == crop:
        return frames
    side = info.resize_side
    h, w = frames.shape[1:3]
    scale = side / min(h, w)
    size = (max(crop[0], round(h * scale)), max(crop[1], round(w * scale)))
    if size != (h, w):
        resized = jax.image.resize(
            jnp.asarray(frames, jnp.float32), (len(frames), *size, 3), "linear", antialias=True
        )
        frames = np.asarray(jnp.clip(jnp.round(resized), 0, 255)).astype(np.uint8)
    return data.center_crop(frames, crop)


def _check_video_array(video: np.ndarray) -> np.ndarray:
    if video.dtype != np.uint8 or video.ndim != 4 or video.shape[-1] != 3:
        raise ShapeError(
            f"video must be uint8 RGB frames (T, H, W, 3); got shape {video.shape} {video.dtype}"
        )
    if len(video) == 0:
        raise ShapeError("video holds no frames")
    return video


def sample_frames(
    video: Any, info: ModelInfo, decode_timeout: float | None = None
) -> tuple[np.ndarray, float | None]:
    """``(frames, fps)``: the video's frames as the model sees them, and their rate.

    ``video`` is a file path (any format :func:`selrel_jax.data.iter_frames` reads,
    or a folder of frames) or uint8 frames (T, H, W, 3). Files are sampled at the
    model's ``fps`` where the file's rate is known, else every ``frame_step``-th
    frame, decoded and downscaled one frame at a time; arrays are taken as already
    sampled. Frames are resized (shorter side to the model's resize size, else the
    crop's larger side) and centre-cropped to its ``crop_size``. ``fps`` is None when
    the rate is unknown. With ``decode_timeout`` (seconds) a file is decoded in a
    separate process (:class:`~selrel_jax.data.DecodeWorker`): one that hangs or
    crashes the decoder is a DataError naming it.
    """
    frames, fps, _ = _sample_frames(video, info, decode_timeout)
    return frames, fps


def _sample_frames(video, info: ModelInfo, decode_timeout) -> tuple[np.ndarray, Any, tuple]:
    """:func:`sample_frames` and the source's frame size (H, W) before any resizing."""
    if isinstance(video, np.ndarray | jax.Array):
        frames = _check_video_array(np.asarray(video))
        return _fit_frames(frames, info), info.fps, frames.shape[1:3]
    side = info.resize_side
    return decode_in_worker(video, decode_timeout, _read_with_size, video, fps=info.fps,
                            frame_step=info.frame_step, size=side,
                            crop=info.crop_size)  # fmt: skip


def _read_with_size(video: Any, **request: Any) -> tuple[np.ndarray, Any, tuple[int, int]]:
    frames, fps = data.read_frames(video, **request)
    probe = data.probe_video(video)
    return frames, fps, (probe.height, probe.width)


# ---------------------------------------------------------------------------- domain

#: Models whose ``info.extra["dataset"]`` starts so were trained on the synthetic clips.
SYNTHETIC_DATASET = "synthetic_motion"
#: A video whose frames' shorter side is more than this many times the model's crop
#: (its larger side) is far larger than the synthetic clips: a camera's video.
FAR_SIZE_FACTOR = 4
#: Synthetic clips have almost no dark pixel (brightest channel below 0.15) or grey
#: one (saturation below 0.12): at most 0.27% of a clip's, over 60 clips of each of
#: the 8 configurations (train and test); the bundled sample has none. Camera
#: pictures have more: skimage's cat, the most colourful of its photos, 1.7% at 48x48
#: (so a small colourful video may pass unwarned); grey ones 100%.
FAR_PIXEL_SHARE = 0.01


def unlike_synthetic_share(frames: np.ndarray) -> float:
    """The share of the pixels of uint8 RGB ``frames`` (..., 3) that are dark (brightest
    channel below 0.15 of full scale) or grey (saturation below 0.12): below 0.3% on
    synthetic clips, more on camera pictures (:data:`FAR_PIXEL_SHARE`).

    Examples:
        >>> import numpy as np
        >>> from selrel_jax.video_explanation import unlike_synthetic_share
        >>> frames = np.zeros((1, 2, 2, 3), np.uint8)
        >>> frames[0, 0] = [200, 40, 40]  # two saturated red pixels, two black ones
        >>> unlike_synthetic_share(frames)
        0.5
    """
    x = np.asarray(frames, np.float32) / 255
    brightest, darkest = x.max(-1), x.min(-1)
    saturation = (brightest - darkest) / np.maximum(brightest, 1e-6)
    return float(np.mean((brightest < 0.15) | (saturation < 0.12)))


def domain_warnings(info: ModelInfo, frames: np.ndarray, source_size: Sequence[int],
                    name: str) -> list[str]:  # fmt: skip
    """Why the model's predictions on video ``name`` may mean little: for a model trained
    on the synthetic clips (:data:`SYNTHETIC_DATASET`), a video whose source frames
    (``source_size``, (H, W)) are far larger than its crop (:data:`FAR_SIZE_FACTOR`) or
    whose sampled ``frames`` have :data:`FAR_PIXEL_SHARE` of pixels unlike any synthetic
    clip's (:func:`unlike_synthetic_share`); empty for any other model or video.

    Examples:
        >>> import numpy as np
        >>> from selrel_jax import models
        >>> from selrel_jax.video_explanation import domain_warnings
        >>> info = models.load("c3d_small_motion")[2]
        >>> frames = np.full((16, 48, 48, 3), (200, 40, 40), np.uint8)
        >>> domain_warnings(info, frames, (48, 48), "clip.mp4")
        []
        >>> domain_warnings(info, frames, (720, 1280), "clip.mp4")[0][:60]
        'clip.mp4: frames of 1280x720, the model was trained on 48x48'
    """
    dataset = str(info.extra.get("dataset", ""))
    if not dataset.startswith(SYNTHETIC_DATASET):
        return []
    crop_h, crop_w = info.crop_size
    reasons = []
    if min(source_size) > FAR_SIZE_FACTOR * max(crop_h, crop_w):
        reasons.append(f"frames of {source_size[1]}x{source_size[0]}")
    share = unlike_synthetic_share(frames)
    if share > FAR_PIXEL_SHARE:
        reasons.append(f"{share:.0%} of its pixels dark or grey (synthetic clips have none)")
    if not reasons:
        return []
    return [
        f"{name}: {', '.join(reasons)}, the model was trained on {crop_w}x{crop_h} "
        f"synthetic clips ({dataset}): its prediction and relevance on this video likely "
        "mean little; explain real videos with a converted torchvision or HuggingFace "
        "model (docs/models.md)"
    ]


# ---------------------------------------------------------------------------- result


@dataclasses.dataclass
class VideoExplanation:
    """What :func:`explain_video` found in one video.

    Per sampled frame (F of them): ``frames`` uint8 (F, H, W, 3) at the model's input
    size, sampled at ``fps`` frames per second of video (None: unknown), and the maps
    ``relevance``, ``selective`` and ``static`` float32 (F, H, W) (channels summed;
    each frame's weighted mean over the windows covering it, see
    :func:`window_weights`). Per window (K of them):
    ``clip_starts`` (K,) first sampled frame, ``clip_logits`` (K, classes), and
    ``clip_scores`` name -> (K,) (``target_logit``, ``spatial_bias``,
    ``kept_voxels``, ``gini_raw``, ``gini_selective``, ``relevance_mass``,
    ``selective_mass``). ``probs`` is the softmax of the mean clip logits.
    ``warnings``: what :func:`explain_video` warned of (a loop-padded video, one far
    from the model's training data: :func:`domain_warnings`).
    """

    video: str
    frames: np.ndarray
    fps: float | None
    relevance: np.ndarray
    selective: np.ndarray
    static: np.ndarray
    clip_starts: np.ndarray
    clip_length: int
    clip_logits: np.ndarray
    clip_scores: dict[str, np.ndarray]
    probs: np.ndarray
    target: int
    class_names: tuple[str, ...]
    settings: ExplainSettings
    method_options: dict[str, Any]
    loop_padded: bool
    timings: dict[str, float] = dataclasses.field(default_factory=dict)
    warnings: tuple[str, ...] = ()

    @property
    def predicted(self) -> int:
        return int(np.argmax(self.probs))

    def _repr_html_(self) -> str:
        """A notebook shows the result as :func:`selrel_jax.viz.explanation_view`."""
        from selrel_jax import viz  # display only: the computation never needs viz

        return viz.explanation_view(self).html

    @property
    def predicted_name(self) -> str:
        return self.class_names[self.predicted]

    @property
    def target_name(self) -> str:
        return self.class_names[self.target]

    def scores(self) -> dict[str, float]:
        """Video-level scores: ``spatial_bias`` = 1 - sum |selective| / sum |relevance|
        over all windows (each window's selection, mass-weighted), ``kept_voxels`` and
        the Gini indices as the mean over windows."""
        s = self.clip_scores
        total = float(np.sum(s["relevance_mass"], dtype=np.float64))
        kept = float(np.sum(s["selective_mass"], dtype=np.float64))
        return {
            "spatial_bias": 1.0 - kept / total if total > 0 else 0.0,
            "kept_voxels": float(np.mean(s["kept_voxels"], dtype=np.float64)),
            "gini_raw": float(np.mean(s["gini_raw"], dtype=np.float64)),
            "gini_selective": float(np.mean(s["gini_selective"], dtype=np.float64)),
        }


# ---------------------------------------------------------------------------- explain


def _first_batch_compiles(bar, rows: int) -> None:
    """Advance ``bar`` by ``rows``, clearing the "compiling" it may show before its first."""
    if bar.n == 0:
        bar.set_postfix_str("")
    bar.update(rows)


def _clip_logits(forward, variables, window, count, batch_size, label) -> np.ndarray:
    out = []
    with progress_bar(count, label is not None, f"{label}: predict") as bar:
        if compiling(forward):
            bar.set_postfix_str("compiling")
        for rows, padded in _batches(count, batch_size):
            out.append(np.asarray(forward(variables, window(padded)))[: len(rows)])
            _first_batch_compiles(bar, len(rows))
    return np.concatenate(out)


class FrameMeans:
    """Running per-frame weighted means of window maps: each frame's mean over the
    windows that cover it, the frame at position i of a window weighted by
    ``weights[i]`` (default 1: the plain mean; :func:`window_weights`), accumulated
    batch by batch so that window maps are never all held."""

    def __init__(self, num_frames: int, weights: Any = None) -> None:
        self.num_frames = num_frames
        self.weights = None if weights is None else np.asarray(weights, np.float64)
        self._total: np.ndarray | None = None
        self._count = np.zeros(num_frames, np.float64)

    def add(self, maps: np.ndarray, starts: np.ndarray) -> None:
        """``maps`` (K, L, H, W) of the windows starting at ``starts`` (K,); a window
        longer than the video wraps around (loop padding)."""
        if self._total is None:
            self._total = np.zeros((self.num_frames, *maps.shape[2:]), np.float64)
        length = maps.shape[1]
        weights = np.ones(length) if self.weights is None else self.weights
        if weights.shape != (length,):
            raise ShapeError(f"window weights {weights.shape} do not fit windows of {length}")
        positions = ((starts[:, None] + np.arange(length)) % self.num_frames).ravel()
        weighted = maps * weights.reshape(1, length, *(1,) * (maps.ndim - 2))
        np.add.at(self._total, positions, weighted.reshape(-1, *maps.shape[2:]))
        self._count += np.bincount(positions, np.tile(weights, len(starts)), self.num_frames)

    def mean(self) -> np.ndarray:
        return (self._total / self._count[:, None, None]).astype(np.float32)


def _explain_windows(run, variables, window, starts, num_frames, target, batch_size, label,
                     weights):  # fmt: skip
    """``(per-frame maps, per-window scores)`` of every window, batch by batch, each
    window's frames weighted by ``weights`` in the per-frame maps (a bar named ``label``:
    None, none)."""
    means = {name: FrameMeans(num_frames, weights) for name in _ClipScores.MAPS}
    parts: dict[str, list] = {}
    with progress_bar(len(starts), label is not None, f"{label}: explain") as bar:
        if compiling(run):
            bar.set_postfix_str("compiling")
        for rows, padded in _batches(len(starts), batch_size):
            targets = jnp.full((len(padded),), target, jnp.int32)
            out = jax.device_get(run(variables, window(padded), targets))
            for name, value in out.items():
                value = np.asarray(value)[: len(rows)]
                if name in means:
                    means[name].add(value, starts[rows])
                else:
                    parts.setdefault(name, []).append(value)
            _first_batch_compiles(bar, len(rows))
    maps = {name: m.mean() for name, m in means.items()}
    return maps, {name: np.concatenate(value) for name, value in parts.items()}


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = np.asarray(logits, np.float64)
    e = np.exp(z - z.max())
    return e / e.sum()


class _Clock:
    def __init__(self) -> None:
        import time

        self._now = time.perf_counter
        self._last = self._now()
        self.laps: dict[str, float] = {}

    def lap(self, name: str) -> None:
        now = self._now()
        self.laps[name] = now - self._last
        self._last = now


def explain_video(
    video: Any,
    model: Any,
    variables: Any,
    info: ModelInfo,
    *,
    method: str | None = None,
    sigma: float = 1.0,
    target: int | str | None = None,
    clip_stride: int | None = None,
    batch_size: int = 8,
    temporal_padding: str = DEFAULT_TEMPORAL_PADDING,
    threshold: str = DEFAULT_THRESHOLD,
    window_blend: str = DEFAULT_WINDOW_BLEND,
    progress: bool = False,
    decode_timeout: float | None = None,
    **method_options: Any,
) -> VideoExplanation:
    """Explain ``video`` (a file path or uint8 frames (T, H, W, 3)) with ``model``.

    ``target``: None or ``"predicted"`` (the video's prediction, the mean of the
    clip logits, explained in every window), a class index or a class name.
    ``clip_stride``: sampled frames between window starts (default half the
    clip length). ``method``/``method_options``: as :func:`selrel_jax.explain`
    (``method`` None: the model's :func:`default_method`, ``lrp.epsilon_plus_flat``
    for a 3D CNN, ``lrp.attn`` for a video transformer or X3D);
    ``lrp.epsilon_gamma_box``'s ``low``/``high`` default to the model's normalised
    input range. ``sigma``, ``temporal_padding`` (default ``"edge"``: see
    :data:`DEFAULT_TEMPORAL_PADDING`) and ``threshold`` go to
    :func:`selrel_jax.selective_relevance`. A video shorter than one clip is
    loop-padded, with a :class:`SelrelWarning`; one whose sampled frames are all one
    image (a still, a single frame) has no motion scores and is a DataError
    (:func:`selrel_jax.data.refuse_still`). A video far from what a model trained on
    the synthetic clips saw is explained with a SelrelWarning saying so
    (:func:`domain_warnings`). ``decode_timeout``: decode a file in a
    separate process, stopped after that many seconds (see :func:`sample_frames`).
    ``progress``: bars on stderr naming the video and its stage (``a.mp4: decode``,
    ``predict``, ``explain``; "compiling" until a jitted batch's first call returns).
    ``window_blend``: how overlapping windows make each frame's maps, ``"mean"``
    (default) or ``"taper"`` (:func:`window_weights`, :data:`DEFAULT_WINDOW_BLEND`).
    """
    settings = ExplainSettings.for_model(info, method, sigma, temporal_padding, threshold,
                                         clip_stride, batch_size, dict(method_options),
                                         window_blend)  # fmt: skip
    target_index, options, decode_timeout = check_request(
        model, variables, info, settings, target, decode_timeout
    )
    clock = _Clock()
    label = display_name(video) if progress else None
    with progress_bar(1, progress, f"{label}: decode", unit="video") as bar:
        frames, fps, source_size = _sample_frames(video, info, decode_timeout)
        bar.update()
    data.refuse_still(frames, _video_name(video))
    clock.lap("read_seconds")
    notes = _warnings_of(info, frames, source_size, _video_name(video))
    result = _explain_frames(frames, model, variables, info, settings, options, target_index,
                             label, clock)  # fmt: skip
    return dataclasses.replace(result, video=_video_name(video), fps=fps, warnings=tuple(notes))


def _warnings_of(info: ModelInfo, frames: np.ndarray, source_size, name: str) -> list[str]:
    """The video's :func:`domain_warnings` and a loop-padding note, each also warned
    as a SelrelWarning (stacklevel: explain_video's caller)."""
    notes = domain_warnings(info, frames, source_size, name)
    if len(frames) < info.clip_length:
        notes.append(f"{name} has {len(frames)} sampled frames, fewer than the model's clip "
                     f"of {info.clip_length}: it is loop-padded")  # fmt: skip
    for note in notes:
        warnings.warn(note, SelrelWarning, stacklevel=3)
    return notes


def _explain_frames(frames, model, variables, info, settings, options, target, label, clock):
    """The windows of ``frames``: their logits, then every window explained for the
    target (None: the video's prediction), as a VideoExplanation (video and fps unset);
    progress bars named ``label`` (None: none)."""
    length = info.clip_length
    starts = window_starts(len(frames), length, settings.stride_for(info))
    batch_size = min(settings.batch_size, len(starts))  # never padded beyond the work there is
    clip_bytes = 4 * length * int(np.prod(frames.shape[1:]))
    check_memory(2 * batch_size * clip_bytes, f"a batch of {batch_size} windows",
                 "use a smaller batch_size (--batch-size)")  # fmt: skip
    window = _windows(frames, starts, length)
    forward, run = _compiled(model, info, settings, options)
    logits = _clip_logits(forward, variables, window, len(starts), batch_size, label)
    clock.lap("predict_seconds")
    probs = _softmax(logits.mean(0))
    target = int(np.argmax(probs)) if target is None else target
    weights = window_weights(length, settings.window_blend)
    maps, out = _explain_windows(run, variables, window, starts, len(frames), target,
                                 batch_size, label, weights)  # fmt: skip
    clock.lap("explain_seconds")
    mass = np.maximum(out["relevance_mass"], np.finfo(np.float32).tiny)
    out["spatial_bias"] = np.where(
        out["relevance_mass"] > 0, 1 - out["selective_mass"] / mass, 0
    ).astype(np.float32)
    return VideoExplanation(
        video="", frames=frames, fps=None, **maps, clip_starts=starts, clip_length=length,
        clip_logits=logits, clip_scores=out, probs=probs, target=target,
        class_names=tuple(info.class_names), settings=settings, method_options=options,
        loop_padded=len(frames) < length, timings=clock.laps,
    )  # fmt: skip


def _video_name(video: Any) -> str:
    return "<array>" if isinstance(video, np.ndarray | jax.Array) else os.fspath(video)


def display_name(video: Any) -> str:
    """What a progress bar calls ``video``: its file or folder name (``a.mp4``)."""
    return os.path.basename(os.path.normpath(_video_name(video))) or _video_name(video)
