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
3. each sampled frame's maps are the mean over the windows that cover it.

The result holds the frames, the per-frame maps (channels summed, for display),
the clip logits, the video's class probabilities and the scores;
:func:`save_explanation` writes it as pictures, an overlay video and
``summary.json``.

Example::

    from selrel_jax import models, video_explanation as ve
    model, variables, info = models.load("c3d_small_motion")
    result = ve.explain_video("clip.mp4", model, variables, info, sigma=1.0)
    result.predicted_name, result.summary()["spatial_bias"]
    ve.save_explanation(result, "out/clip")
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import re
import shutil
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from selrel_jax import data, metrics
from selrel_jax._checks import hashable, integer, one_of, positive_int, real
from selrel_jax.attribution import make_explainer, registry
from selrel_jax.data._reader import DEFAULT_DECODE_TIMEOUT, decode_in_worker
from selrel_jax.errors import DataError, OptionError, ShapeError
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
    "VideoExplanation",
    "explain_video",
    "input_bounds",
    "resolve_target",
    "window_starts",
]

DEFAULT_METHOD = "lrp.epsilon_plus_flat"
#: Overlapping windows: under zero padding every window's first and last frame
#: "moves" (the paper's end-frame artefact), and averaging windows would paint that
#: artefact onto every ``clip_stride``-th frame of the video. Edge padding makes a
#: window's end frames one-sided differences instead.
DEFAULT_TEMPORAL_PADDING = "edge"
DEFAULT_THRESHOLD = "clip"


def input_bounds(info: ModelInfo) -> tuple[np.ndarray, np.ndarray]:
    """The model's normalised input range per channel, ``(low, high)`` each (3,):
    pixels 0 and 255 after :func:`selrel_jax.data.normalize` with ``info``'s
    preprocessing (the natural ``low``/``high`` of ``lrp.epsilon_gamma_box``)."""
    lo, hi = info.value_range
    mean, std = np.asarray(info.mean), np.asarray(info.std)
    return ((lo - mean) / std).astype(np.float32), ((hi - mean) / std).astype(np.float32)


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


def resolve_target(target: int | str | None, class_names: Sequence[str]) -> int | None:
    """``None`` / ``"predicted"``: None (the video's prediction); an int or a digit
    string: that class index; anything else: the class of that name."""
    if target is None or target == "predicted":
        return None
    if isinstance(target, str) and target.strip().lstrip("-").isdigit():
        target = int(target)
    if isinstance(target, str):
        if target not in class_names:
            raise OptionError(
                f"target {target!r} is not a class name of the model; classes: "
                f"{_abbreviated(class_names)}"
            )
        return class_names.index(target)
    index = integer("target", target)
    if not 0 <= index < len(class_names):
        raise OptionError(f"target {index} out of range for {len(class_names)} classes")
    return index


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
        if self.clip_stride is not None:
            positive_int("clip_stride", self.clip_stride)
        positive_int("batch_size", self.batch_size)


def _method_options(settings: ExplainSettings, info: ModelInfo) -> dict[str, Any]:
    """The method's options, ``low``/``high`` of ``lrp.epsilon_gamma_box`` defaulting
    to the model's normalised input range (per channel)."""
    options = dict(settings.method_options)
    if "low" in registry.get(settings.method).options:
        low, high = input_bounds(info)
        options.setdefault("low", low)
        options.setdefault("high", high)
    return options


# ---------------------------------------------------------------------------- compute


class _ClipScores:
    """Names of what one jitted batch returns per window (arrays with a leading N)."""

    MAPS = ("relevance", "selective", "static")  # channel-summed (N, T, H, W)
    SCORES = ("relevance_mass", "selective_mass", "kept_voxels", "gini_raw", "gini_selective")


def _normalizer(info: ModelInfo) -> Callable:
    return functools.partial(
        data.normalize,
        mean=info.mean,
        std=info.std,
        value_range=info.value_range,
        channel_order=info.channel_order,
    )


_COMPILED: dict[Any, tuple[Callable, Callable]] = {}


def _compiled(model, info: ModelInfo, settings: ExplainSettings, options) -> tuple:
    """``(forward, explain_batch)`` jit-compiled, shared by every video explained with the
    same model, preprocessing and settings (one compilation for a list of videos)."""
    key = (
        model,
        (info.mean, info.std, info.value_range, info.channel_order),
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
    prepare = _normalizer(info)
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


def _logits_function(model, info: ModelInfo) -> Callable:
    prepare = _normalizer(info)
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
    separate process (:class:`~selrel_jax.data._reader.DecodeWorker`): one that hangs or
    crashes the decoder is a DataError naming it.
    """
    if isinstance(video, np.ndarray | jax.Array):
        frames = _check_video_array(np.asarray(video))
        return _fit_frames(frames, info), info.fps
    side = info.resize_side
    return decode_in_worker(video, decode_timeout, data.read_frames, video, fps=info.fps,
                            frame_step=info.frame_step, size=side,
                            crop=info.crop_size)  # fmt: skip


# ---------------------------------------------------------------------------- result


@dataclasses.dataclass
class VideoExplanation:
    """What :func:`explain_video` found in one video.

    Per sampled frame (F of them): ``frames`` uint8 (F, H, W, 3) at the model's input
    size, sampled at ``fps`` frames per second of video (None: unknown), and the maps
    ``relevance``, ``selective`` and ``static`` float32 (F, H, W) (channels summed;
    each frame's mean over the windows covering it). Per window (K of them):
    ``clip_starts`` (K,) first sampled frame, ``clip_logits`` (K, classes), and
    ``clip_scores`` name -> (K,) (``target_logit``, ``spatial_bias``,
    ``kept_voxels``, ``gini_raw``, ``gini_selective``, ``relevance_mass``,
    ``selective_mass``). ``probs`` is the softmax of the mean clip logits.
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

    @property
    def predicted(self) -> int:
        return int(np.argmax(self.probs))

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


def _progress(total: int, enabled: bool, desc: str):
    from tqdm import tqdm

    return tqdm(total=total, unit="clip", desc=desc, file=sys.stderr, disable=not enabled)


def _clip_logits(forward, variables, window, count, batch_size, progress) -> np.ndarray:
    out = []
    with _progress(count, progress, "predict") as bar:
        for rows, padded in _batches(count, batch_size):
            out.append(np.asarray(forward(variables, window(padded)))[: len(rows)])
            bar.update(len(rows))
    return np.concatenate(out)


class FrameMeans:
    """Running per-frame means of window maps: each frame's mean over the windows that
    cover it, accumulated batch by batch so that window maps are never all held."""

    def __init__(self, num_frames: int) -> None:
        self.num_frames = num_frames
        self._total: np.ndarray | None = None
        self._count = np.zeros(num_frames, np.int64)

    def add(self, maps: np.ndarray, starts: np.ndarray) -> None:
        """``maps`` (K, L, H, W) of the windows starting at ``starts`` (K,); a window
        longer than the video wraps around (loop padding)."""
        if self._total is None:
            self._total = np.zeros((self.num_frames, *maps.shape[2:]), np.float64)
        positions = ((starts[:, None] + np.arange(maps.shape[1])) % self.num_frames).ravel()
        np.add.at(self._total, positions, maps.reshape(-1, *maps.shape[2:]))
        self._count += np.bincount(positions, minlength=self.num_frames)

    def mean(self) -> np.ndarray:
        return (self._total / self._count[:, None, None]).astype(np.float32)


def _explain_windows(run, variables, window, starts, num_frames, target, batch_size, progress):
    """``(per-frame maps, per-window scores)`` of every window, batch by batch."""
    means = {name: FrameMeans(num_frames) for name in _ClipScores.MAPS}
    parts: dict[str, list] = {}
    with _progress(len(starts), progress, "explain") as bar:
        for rows, padded in _batches(len(starts), batch_size):
            targets = jnp.full((len(padded),), target, jnp.int32)
            out = jax.device_get(run(variables, window(padded), targets))
            for name, value in out.items():
                value = np.asarray(value)[: len(rows)]
                if name in means:
                    means[name].add(value, starts[rows])
                else:
                    parts.setdefault(name, []).append(value)
            bar.update(len(rows))
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
    method: str = DEFAULT_METHOD,
    sigma: float = 1.0,
    target: int | str | None = None,
    clip_stride: int | None = None,
    batch_size: int = 8,
    temporal_padding: str = DEFAULT_TEMPORAL_PADDING,
    threshold: str = DEFAULT_THRESHOLD,
    progress: bool = False,
    decode_timeout: float | None = None,
    **method_options: Any,
) -> VideoExplanation:
    """Explain ``video`` (a file path or uint8 frames (T, H, W, 3)) with ``model``.

    ``target``: None or ``"predicted"`` (the video's prediction, the mean of the
    clip logits, explained in every window), a class index or a class name.
    ``clip_stride``: sampled frames between window starts (default half the
    clip length). ``method``/``method_options``: as :func:`selrel_jax.explain`;
    ``lrp.epsilon_gamma_box``'s ``low``/``high`` default to the model's normalised
    input range. ``sigma``, ``temporal_padding`` (default ``"edge"``: see
    :data:`DEFAULT_TEMPORAL_PADDING`) and ``threshold`` go to
    :func:`selrel_jax.selective_relevance`. A video shorter than one clip is
    loop-padded, with a :class:`SelrelWarning`. ``decode_timeout``: decode a file in a
    separate process, stopped after that many seconds (see :func:`sample_frames`).
    """
    settings = ExplainSettings(method, sigma, temporal_padding, threshold, clip_stride,
                               batch_size, dict(method_options))  # fmt: skip
    target_index = resolve_target(target, info.class_names)
    options = _method_options(settings, info)
    registry.resolve(method, options)
    if decode_timeout is not None:
        decode_timeout = real("decode_timeout", decode_timeout, above=0.0)
    clock = _Clock()
    frames, fps = sample_frames(video, info, decode_timeout)
    clock.lap("read_seconds")
    if len(frames) < info.clip_length:
        import warnings

        warnings.warn(
            f"{_video_name(video)} has {len(frames)} sampled frames, fewer than the model's "
            f"clip of {info.clip_length}: it is loop-padded",
            SelrelWarning,
            stacklevel=2,
        )
    result = _explain_frames(frames, model, variables, info, settings, options, target_index,
                             progress, clock)  # fmt: skip
    return dataclasses.replace(result, video=_video_name(video), fps=fps)


def _explain_frames(frames, model, variables, info, settings, options, target, progress, clock):
    """The windows of ``frames``: their logits, then every window explained for the
    target (None: the video's prediction), as a VideoExplanation (video and fps unset)."""
    length, batch_size = info.clip_length, settings.batch_size
    starts = window_starts(len(frames), length, settings.clip_stride or max(1, length // 2))
    window = _windows(frames, starts, length)
    forward, run = _compiled(model, info, settings, options)
    logits = _clip_logits(forward, variables, window, len(starts), batch_size, progress)
    clock.lap("predict_seconds")
    probs = _softmax(logits.mean(0))
    target = int(np.argmax(probs)) if target is None else target
    maps, out = _explain_windows(run, variables, window, starts, len(frames), target,
                                 batch_size, progress)  # fmt: skip
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


# ---------------------------------------------------------------------------- writing


def _rounded(x: Any) -> Any:
    """JSON-ready with 6 significant digits: the same run gives the same bytes, and
    last-bit differences of another machine's arithmetic don't show."""
    if isinstance(x, Mapping):
        return {str(k): _rounded(v) for k, v in x.items()}
    if isinstance(x, list | tuple | np.ndarray | jax.Array):
        return [_rounded(v) for v in np.asarray(x).tolist()]
    if isinstance(x, float | np.floating):
        return float(f"{float(x):.6g}")
    if isinstance(x, np.integer | np.bool_):
        return x.item()
    return x


def _versions() -> dict[str, str]:
    import flax

    from selrel_jax import __version__

    return {"selrel_jax": __version__, "jax": jax.__version__, "flax": flax.__version__,
            "numpy": np.__version__}  # fmt: skip


def summary(result: VideoExplanation, model_name: str) -> dict[str, Any]:
    """The deterministic ``summary.json`` of a result (see the README for every key)."""
    top = np.argsort(-result.probs, kind="stable")[:5]
    s = result.clip_scores
    last = len(result.frames) - 1
    clips = []
    for i, start in enumerate(result.clip_starts):
        end = min(start + result.clip_length - 1, last)  # a loop-padded clip ends at the last
        clip = {"start_frame": start, "end_frame": end}
        if result.fps:
            clip |= {"start_time": start / result.fps, "end_time": end / result.fps}
        clips.append(clip | {k: s[k][i] for k in ("target_logit", "spatial_bias", "kept_voxels")})
    settings = result.settings
    return _rounded({
        "video": result.video,
        "model": model_name,
        "method": settings.method,
        "method_options": result.method_options,
        "sigma": settings.sigma,
        "temporal_padding": settings.temporal_padding,
        "threshold": settings.threshold,
        "target": {"index": result.target, "name": result.target_name},
        "predicted": {"index": result.predicted, "name": result.predicted_name},
        "probs": result.probs,
        "top5": [{"index": int(i), "name": result.class_names[i], "prob": result.probs[i]}
                 for i in top],
        **result.scores(),
        "frames": len(result.frames),
        "fps": result.fps,
        "clip_length": result.clip_length,
        "loop_padded": result.loop_padded,
        "clips": clips,
        "versions": _versions(),
    })  # fmt: skip


def _maps(result: VideoExplanation) -> dict[str, np.ndarray]:
    return {"relevance": result.relevance, "selective": result.selective, "static": result.static}


def _write_pictures(result: VideoExplanation, directory: str, scale: float) -> None:
    from selrel_jax import viz

    maps = _maps(result)
    title = (
        f"{os.path.basename(result.video)}: {result.predicted_name} - "
        f"{result.settings.method}, sigma={result.settings.sigma:g}"
    )
    strip = viz.filmstrip(result.frames, maps, columns=min(8, len(result.frames)),
                          scale=scale, title=title)  # fmt: skip
    viz.save_figure(strip, os.path.join(directory, "filmstrip.png"))
    masses = {name: np.abs(m).sum(axis=(1, 2)) for name, m in maps.items()}
    viz.save_figure(viz.timeline(masses, title=title), os.path.join(directory, "timeline.png"))


def _write_overlay(result: VideoExplanation, path: str, scale: float, chunk: int = 64) -> None:
    """The three panels over every sampled frame, rendered and encoded ``chunk`` frames
    at a time (a long video is never held whole as panels)."""
    from selrel_jax import viz

    caption = f"predicted: {result.predicted_name} ({result.probs[result.predicted]:.0%})" + (
        "" if result.target == result.predicted else f" | explained: {result.target_name}"
    )
    maps = _maps(result)
    panels = (
        viz.panels(result.frames[i : i + chunk], {k: m[i : i + chunk] for k, m in maps.items()},
                   scale=scale, caption=caption)
        for i in range(0, len(result.frames), chunk)
    )  # fmt: skip
    viz.write_overlay_video(path, panels, fps=result.fps or 8.0)


def save_explanation(
    result: VideoExplanation,
    directory: str | os.PathLike,
    *,
    model_name: str = "",
    save_arrays: bool = False,
    overwrite: bool = False,
    timings: Mapping[str, Any] | None = None,
) -> str:
    """Write ``overlay.mp4``, ``filmstrip.png``, ``timeline.png``, ``summary.json``
    (and ``timings.json`` when given, ``relevance.npz`` with ``save_arrays``) into
    ``directory``, atomically: everything is written into a temporary sibling that is
    renamed at the end, so a failure leaves nothing behind (and an existing output
    intact). An existing ``directory`` needs ``overwrite=True``. Returns it.

    The temporary sibling is ``.<name>.<pid>.<random>``: one that a killed process left
    behind is removed by :func:`explain_files` when it next writes ``<name>``."""
    import secrets

    directory = os.path.abspath(os.fspath(directory))
    if os.path.lexists(directory) and not overwrite:
        raise OptionError(f"output {directory} exists; pass overwrite (--overwrite) to replace it")
    parent = os.path.dirname(directory)
    try:
        os.makedirs(parent, exist_ok=True)
        prefix = f".{os.path.basename(directory)}.{os.getpid()}."
        # not mkdtemp: its mode 0700 would hide the renamed output from other users
        staging = os.path.join(parent, prefix + secrets.token_hex(4))
        os.mkdir(staging, 0o777)
    except OSError as e:
        raise DataError(f"cannot write output {directory}: {e.strerror or e}") from None
    try:
        scale = _color_scale(result)
        _write_pictures(result, staging, scale)
        _write_overlay(result, os.path.join(staging, "overlay.mp4"), scale)
        with open(os.path.join(staging, "summary.json"), "w") as f:
            json.dump(summary(result, model_name), f, indent=2, sort_keys=True)
            f.write("\n")
        if timings is not None:
            with open(os.path.join(staging, "timings.json"), "w") as f:
                json.dump(_rounded(dict(timings)), f, indent=2, sort_keys=True)
        if save_arrays:
            np.savez_compressed(os.path.join(staging, "relevance.npz"), **_arrays(result))
        _replace(staging, directory)
    except OSError as e:  # a full disk, a file too large: nothing is left
        shutil.rmtree(staging, ignore_errors=True)
        raise DataError(f"cannot write output {directory}: {e.strerror or e}") from None
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return directory


def _color_scale(result: VideoExplanation) -> float:
    from selrel_jax import viz

    return viz.color_scale(result.relevance, result.selective, result.static)


def _arrays(result: VideoExplanation) -> dict[str, np.ndarray]:
    return {
        **_maps(result),
        "frames": result.frames,
        "clip_starts": result.clip_starts,
        "clip_logits": result.clip_logits,
        "probs": result.probs,
        **{f"clip_{k}": v for k, v in result.clip_scores.items()},
    }


def _replace(staging: str, directory: str) -> None:
    """Move ``staging`` to ``directory``; an existing one is removed only once the new
    one is in place."""
    if not os.path.lexists(directory):
        os.rename(staging, directory)
        return
    old = staging + ".old"
    os.rename(directory, old)
    os.rename(staging, directory)
    shutil.rmtree(old, ignore_errors=True)


# ---------------------------------------------------------------------------- many files


def output_directories(videos: Sequence[Any], out: str | os.PathLike) -> list[str]:
    """``out/<stem>`` for each video; a stem that repeats gets ``-2``, ``-3``, ..."""
    seen: dict[str, int] = {}
    directories = []
    for video in videos:
        stem = os.path.splitext(os.path.basename(os.path.normpath(os.fspath(video))))[0]
        seen[stem] = seen.get(stem, 0) + 1
        name = stem if seen[stem] == 1 else f"{stem}-{seen[stem]}"
        directories.append(os.path.join(os.fspath(out), name))
    return directories


def explain_files(
    videos: Sequence[str | os.PathLike],
    *,
    model: str | os.PathLike = "c3d_small_motion",
    out: str | os.PathLike = "selrel_out",
    overwrite: bool = False,
    save_arrays: bool = False,
    progress: bool = False,
    target: int | str | None = None,
    method_options: Mapping[str, Any] | None = None,
    decode_timeout: float | None = DEFAULT_DECODE_TIMEOUT,
    **settings: Any,
):
    """Explain each file into ``out/<stem>/`` (:func:`save_explanation`), yielding
    ``(video, record)`` per video: the record is ``{"video", "out", "predicted",
    "spatial_bias"}`` (``"kept": True`` added for an output kept from an earlier run)
    or the :class:`~selrel_jax.errors.SelrelError` that video raised (the others still
    run). No videos: the bundled sample clip. The model, method, options and target
    are checked once, before any video is read (and ``decode_timeout``).

    Resuming: without ``overwrite``, an existing ``out/<stem>/`` that holds this
    video's explanation with the same settings is kept and reported (nothing is
    computed), one with other settings is an OptionError naming them; temporary
    folders a killed run left are removed. Each file is decoded in a separate
    process, stopped after ``decode_timeout`` seconds (None: decode in this process).
    ``settings``: ``method``, ``sigma``, ``temporal_padding``, ``threshold``,
    ``clip_stride``, ``batch_size`` of :func:`explain_video`."""
    from selrel_jax import models
    from selrel_jax.errors import SelrelError

    videos = list(videos) or [data.sample_clip_path()]
    net, variables, info = models.load(model)
    checked = ExplainSettings(**settings, method_options=dict(method_options or {}))
    expected = _Expected(checked, _method_options(checked, info), info, model, save_arrays,
                         resolve_target(target, info.class_names))  # fmt: skip
    registry.resolve(checked.method, expected.options)
    if decode_timeout is not None:
        decode_timeout = real("decode_timeout", decode_timeout, above=0.0)
    for video, directory in zip(videos, output_directories(videos, out), strict=True):
        try:
            _remove_stale_staging(directory)
            kept = None if overwrite else expected.finished(video, directory)
            if kept is not None:
                yield os.fspath(video), _record(video, directory, kept) | {"kept": True}
                continue
            result = explain_video(video, net, variables, info, target=target, progress=progress,
                                   decode_timeout=decode_timeout, **settings,
                                   **dict(method_options or {}))  # fmt: skip
            save_explanation(result, directory, model_name=os.fspath(model),
                             save_arrays=save_arrays, overwrite=overwrite,
                             timings={**result.timings, **_backend()})  # fmt: skip
            yield os.fspath(video), _record(video, directory, summary(result, os.fspath(model)))
        except SelrelError as e:
            yield os.fspath(video), e
        except OSError as e:
            yield os.fspath(video), DataError(f"{video}: {e.strerror or e}")


def _record(video: Any, directory: str, summary_: Mapping[str, Any]) -> dict[str, Any]:
    """The line ``selrel explain`` prints for a video, from its ``summary.json``."""
    return {"video": os.fspath(video), "out": directory,
            "predicted": summary_["predicted"]["name"],
            "spatial_bias": summary_["spatial_bias"]}  # fmt: skip


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _remove_stale_staging(directory: str) -> None:
    """Remove the temporary siblings ``.<name>.<pid>.<random>[.old]`` of ``directory``
    that a killed :func:`save_explanation` left (its process no longer runs)."""
    parent, name = os.path.split(os.path.abspath(directory))
    pattern = re.compile(rf"\.{re.escape(name)}\.(\d+)\.[A-Za-z0-9_]+(\.old)?")
    try:
        entries = os.listdir(parent)
    except OSError:  # no folder yet, or a file where it should be: save_explanation says so
        return
    for entry in entries:
        match = pattern.fullmatch(entry)
        pid = int(match.group(1)) if match else None
        if pid is not None and pid != os.getpid() and not _pid_alive(pid):
            shutil.rmtree(os.path.join(parent, entry), ignore_errors=True)


@dataclasses.dataclass(frozen=True)
class _Expected:
    """What an existing output must hold to be kept by a rerun of :func:`explain_files`."""

    settings: ExplainSettings
    options: dict[str, Any]
    info: ModelInfo
    model: Any
    save_arrays: bool
    target: int | None

    def finished(self, video: Any, directory: str) -> dict[str, Any] | None:
        """The summary of ``directory`` if it holds ``video`` explained with these
        settings, None if there is no ``directory``; an OptionError naming what differs
        (or that it holds no summary) otherwise."""
        if not os.path.lexists(directory):
            return None
        refuse = f"output {directory} exists; pass --overwrite to replace it"
        try:
            with open(os.path.join(directory, "summary.json")) as f:
                there = json.load(f)
            changed = self._differences(video, directory, there)
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            raise OptionError(
                f"{refuse} (it holds no readable summary.json of selrel explain)"
            ) from None
        if changed:
            raise OptionError(f"{refuse} (it was made with other settings: {', '.join(changed)})")
        return there

    def _differences(self, video: Any, directory: str, there: Mapping[str, Any]) -> list[str]:
        s = self.settings
        now = json.loads(json.dumps(_rounded({
            "video": os.fspath(video), "model": os.fspath(self.model), "method": s.method,
            "method_options": self.options, "sigma": s.sigma,
            "temporal_padding": s.temporal_padding, "threshold": s.threshold,
        })))  # fmt: skip
        changed = [f"{key} ({json.dumps(there.get(key))} there, {json.dumps(value)} now)"
                   for key, value in now.items() if there.get(key) != value]  # fmt: skip
        explained, predicted = there["target"]["index"], there["predicted"]["index"]
        if explained != (predicted if self.target is None else self.target):
            wanted = "predicted" if self.target is None else self.target
            changed.append(f"target ({explained} there, {json.dumps(wanted)} now)")
        stride = s.clip_stride or max(1, self.info.clip_length // 2)
        starts = window_starts(there["frames"], self.info.clip_length, stride).tolist()
        if [clip["start_frame"] for clip in there["clips"]] != starts:
            changed.append(f"clip_stride (other windows there, {stride} now)")
        arrays = os.path.exists(os.path.join(directory, "relevance.npz"))
        if arrays != self.save_arrays:
            changed.append(f"save_arrays ({json.dumps(arrays)} there, "
                           f"{json.dumps(self.save_arrays)} now)")  # fmt: skip
        return changed


def _backend() -> dict[str, Any]:
    return {"backend": jax.default_backend(), "device_count": jax.device_count()}
