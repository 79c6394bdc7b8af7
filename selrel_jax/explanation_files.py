"""An explanation's files, and explaining many videos into them with resume.

:func:`save_explanation` writes what :func:`~selrel_jax.video_explanation.explain_video`
found as pictures, an overlay video and ``summary.json``, atomically (one folder,
renamed into place whole). :func:`explain_files` is what ``selrel explain`` runs: each
video into ``out/<stem>/``, keeping the outputs an earlier run finished with the same
settings and refusing those of other settings; the temporary folders a killed run
left are removed.

Examples:
    >>> import shutil
    >>> from selrel_jax import data, explanation_files, models
    >>> from selrel_jax import video_explanation as ve
    >>> model, variables, info = models.load("c3d_small_motion")
    >>> result = ve.explain_video(data.sample_clip_path(), model, variables, info)
    >>> explanation_files.save_explanation(result, "out/clip", model_name="c3d_small_motion")
    '.../out/clip'

    Many videos (here two copies of the sample clip), each into ``out/<stem>/``; a
    second run keeps what the first finished:

    >>> videos = [shutil.copy(data.sample_clip_path(), name) for name in ("a.mp4", "b.mp4")]
    >>> for video, record in explanation_files.explain_files(videos, out="out"):
    ...     print(video, record["out"], record["predicted"])
    a.mp4 out/a translate_right
    b.mp4 out/b translate_right
    >>> [record.get("kept") for _, record in explanation_files.explain_files(videos, out="out")]
    [True, True]
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import pathlib
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import jax
import numpy as np

from selrel_jax import data, models, video_explanation
from selrel_jax._jobs import (
    check_not_input,
    check_owned,
    finite_json,
    json_text,
    output_lock,
    progress_bar,
    refuse_other_settings,
    remove_stale_temporaries,
    settings_record,
    versions,
    write_folder,
    write_marker,
)
from selrel_jax._worker import DEFAULT_DECODE_TIMEOUT
from selrel_jax.errors import DataError, OptionError, SelrelError
from selrel_jax.models.info import ModelInfo
from selrel_jax.video_explanation import (
    ExplainSettings,
    VideoExplanation,
    window_starts,
)

__all__ = ["explain_files", "output_directories", "save_explanation", "summary"]

#: The kind of output an explanation folder's marker file names (``selrel explain``).
MARKER_KIND = "explain"

#: The settings ``summary.json`` records as they were given.
_RECORDED = ("video", "model", "method", "method_options", "sigma", "temporal_padding",
             "threshold", "window_blend")  # fmt: skip
#: What a ``summary.json`` without a key (one written by an earlier version) was made with.
_BEFORE_RECORDED = {"window_blend": "mean"}


# ---------------------------------------------------------------------------- summary


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


def _clips(result: VideoExplanation) -> list[dict[str, Any]]:
    """Each window's frames (and times, where the rate is known) and scores."""
    s = result.clip_scores
    last = len(result.frames) - 1
    clips = []
    for i, start in enumerate(result.clip_starts):
        end = min(start + result.clip_length - 1, last)  # a loop-padded clip ends at the last
        clip = {"start_frame": start, "end_frame": end}
        if result.fps:
            clip |= {"start_time": start / result.fps, "end_time": end / result.fps}
        clips.append(clip | {k: s[k][i] for k in ("target_logit", "spatial_bias", "kept_voxels")})
    return clips


def summary(result: VideoExplanation, model_name: str) -> dict[str, Any]:
    """The deterministic ``summary.json`` of a result (docs/explain.md lists every key).
    A score that is not a finite number (a model with NaN weights) is None, and
    ``null_reasons`` says which and why: the file is strict JSON."""
    record, nulls = finite_json(_summary_values(result, model_name))
    if nulls:
        record["null_reasons"] = nulls
    if result.warnings:  # a kept output's line repeats them
        record["warnings"] = list(result.warnings)
    return record


def _summary_values(result: VideoExplanation, model_name: str) -> dict[str, Any]:
    top = np.argsort(-result.probs, kind="stable")[:5]
    settings = result.settings
    return _rounded({
        "video": result.video,
        "model": model_name,
        "method": settings.method,
        "method_options": result.method_options,
        "sigma": settings.sigma,
        "temporal_padding": settings.temporal_padding,
        "threshold": settings.threshold,
        "window_blend": settings.window_blend,
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
        "clips": _clips(result),
        "versions": versions(),
    })  # fmt: skip


# ---------------------------------------------------------------------------- writing


def _maps(result: VideoExplanation) -> dict[str, np.ndarray]:
    return {"relevance": result.relevance, "selective": result.selective, "static": result.static}


def explained_label(result: VideoExplanation) -> str:
    """``explained: X (predicted: Y, 93%)``: the class the maps are of, first, since it
    need not be the one predicted (``--target``)."""
    probability = result.probs[result.predicted]
    return (
        f"explained: {result.target_name} (predicted: {result.predicted_name}, {probability:.0%})"
    )


def _write_pictures(result: VideoExplanation, directory: str, scale: float, bar) -> None:
    """``filmstrip.png`` and ``timeline.png``, each a step of ``bar``."""
    from selrel_jax import viz

    maps = _maps(result)
    title = (
        f"{os.path.basename(result.video)}: {explained_label(result)} - "
        f"{result.settings.method}, sigma={result.settings.sigma:g}"
    )
    strip = viz.filmstrip(result.frames, maps, columns=min(8, len(result.frames)),
                          scale=scale, title=title)  # fmt: skip
    viz.save_figure(strip, os.path.join(directory, "filmstrip.png"))
    bar.update()
    masses = {name: np.abs(m).sum(axis=(1, 2)) for name, m in maps.items()}
    viz.save_figure(viz.timeline(masses, title=title), os.path.join(directory, "timeline.png"))
    bar.update()


def _write_overlay(result: VideoExplanation, path: str, scale: float, bar,
                   chunk: int = 64) -> None:  # fmt: skip
    """The panels over every sampled frame, rendered and encoded ``chunk`` frames at a
    time (a long video is never held whole as panels); ``bar`` counts the frames."""
    from selrel_jax import viz

    caption = explained_label(result)
    maps = _maps(result)

    def panels():
        for i in range(0, len(result.frames), chunk):
            frames = result.frames[i : i + chunk]
            yield viz.panels(frames, {k: m[i : i + chunk] for k, m in maps.items()},
                             scale=scale, caption=caption)  # fmt: skip
            bar.update(len(frames))  # once the encoder has taken this chunk

    viz.write_overlay_video(path, panels(), fps=result.fps or 8.0)


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


def _write_files(
    folder: pathlib.Path,
    result: VideoExplanation,
    model_name: str,
    save_arrays: bool,
    timings: Mapping[str, Any] | None,
    progress: bool,
) -> None:
    """Every file of an explanation, into ``folder``; with ``progress``, a bar per stage
    named after the video (``a.mp4: write overlay``)."""
    scale = _color_scale(result)
    name = video_explanation.display_name(result.video)
    with progress_bar(2, progress, f"{name}: write pictures", unit="file") as bar:
        _write_pictures(result, os.fspath(folder), scale, bar)
    with progress_bar(len(result.frames), progress, f"{name}: write overlay", "frame") as bar:
        _write_overlay(result, os.fspath(folder / "overlay.mp4"), scale, bar)
    (folder / "summary.json").write_text(json_text(summary(result, model_name)) + "\n")
    if timings is not None:
        (folder / "timings.json").write_text(json_text(_rounded(dict(timings))))
    if save_arrays:
        np.savez_compressed(folder / "relevance.npz", **_arrays(result))
    write_marker(folder, MARKER_KIND, {"video": result.video, "model": model_name},
                 unhashed=("timings.json",))  # fmt: skip


def save_explanation(
    result: VideoExplanation,
    directory: str | os.PathLike,
    *,
    model_name: str = "",
    save_arrays: bool = False,
    overwrite: bool = False,
    timings: Mapping[str, Any] | None = None,
    progress: bool = False,
) -> str:
    """Write ``overlay.mp4``, ``filmstrip.png``, ``timeline.png``, ``summary.json``
    (and ``timings.json`` when given, ``relevance.npz`` with ``save_arrays``) into
    ``directory``, atomically: everything is written into a temporary sibling that is
    renamed at the end, so a failure leaves nothing behind (and an existing output
    intact). An existing ``directory`` needs ``overwrite=True``, and is replaced only
    if it is provably an explanation this library wrote: its marker file
    (``.selrel-output.json``) lists exactly the files there, unchanged (else an
    OptionError naming it, ``overwrite`` or not). Returns it. ``progress``: bars on
    stderr for writing the pictures and the overlay, named after the video.

    The temporary sibling is ``.<name>.<pid>.<token>.tmp``: one that a killed process
    left behind is removed by :func:`explain_files` when it next writes ``<name>``."""
    directory = os.path.abspath(os.fspath(directory))
    if os.path.lexists(directory) and not overwrite:
        raise OptionError(f"output {directory} exists; pass overwrite (--overwrite) to replace it")
    check_owned(directory, MARKER_KIND)
    fill = functools.partial(_write_files, result=result, model_name=model_name,
                             save_arrays=save_arrays, timings=timings,
                             progress=progress)  # fmt: skip
    try:
        os.makedirs(os.path.dirname(directory), exist_ok=True)
        write_folder(directory, fill)
    except OSError as e:  # a full disk, a file too large: nothing is left
        raise DataError(f"cannot write output {directory}: {e.strerror or e}") from None
    return directory


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
) -> Iterator[tuple[str, dict[str, Any] | SelrelError]]:
    """Explain each file into ``out/<stem>/`` (:func:`save_explanation`), yielding
    ``(video, record)`` per video: the record is ``{"video", "out", "target": {"index",
    "name"}, "predicted", "spatial_bias"}`` (``"warnings"`` added where the explanation
    warned, ``"kept": True`` for an output kept from an earlier run) or the
    :class:`~selrel_jax.errors.SelrelError` that video raised (the others still run).
    No videos: the bundled sample clip. The model, method, options (their values too,
    on the model) and target are checked once, before any video is read (and
    ``decode_timeout``).

    Resuming: without ``overwrite``, an existing ``out/<stem>/`` that holds this
    video's explanation with the same settings is kept and reported (nothing is
    computed), one with other settings is an OptionError naming them; temporary
    folders a killed run left are removed. An existing ``out/<stem>/`` that is not
    provably an explanation written here (no marker, files added or changed) is
    refused naming it, with ``overwrite`` too; an output that is, holds or lies in an
    input is refused before anything is read. While it runs, ``out/.selrel.lock``
    refuses a second run into ``out`` (a killed run's lock is taken over). Each file
    is decoded in a separate process, stopped after ``decode_timeout`` seconds (None:
    decode in this process).
    ``settings``: ``method``, ``sigma``, ``temporal_padding``, ``threshold``,
    ``window_blend``, ``clip_stride``, ``batch_size`` of
    :func:`~selrel_jax.video_explanation.explain_video` (no ``method`` or None: the
    model's :func:`~selrel_jax.video_explanation.default_method`)."""
    videos = list(videos) or [data.sample_clip_path()]
    net, variables, info = models.load(model)
    checked = ExplainSettings.for_model(info, **settings,
                                        method_options=dict(method_options or {}))  # fmt: skip
    target_index, options, decode_timeout = video_explanation.check_request(
        net, variables, info, checked, target, decode_timeout
    )
    expected = _Expected(checked, options, info, model, save_arrays, target_index)
    directories = output_directories(videos, out)
    check_not_input(directories, videos)
    explain_one = functools.partial(
        _explain_one, net=net, variables=variables, info=info, model=model, target=target,
        progress=progress, decode_timeout=decode_timeout, settings=settings,
        method_options=dict(method_options or {}), save_arrays=save_arrays,
        overwrite=overwrite, expected=expected,
    )  # fmt: skip
    with output_lock(out, "explain"):
        for video, directory in zip(videos, directories, strict=True):
            try:
                yield os.fspath(video), explain_one(video, directory)
            except SelrelError as e:
                yield os.fspath(video), e
            except OSError as e:
                yield os.fspath(video), DataError(f"{video}: {e.strerror or e}")


def _explain_one(video, directory, *, net, variables, info, model, target, progress,
                 decode_timeout, settings, method_options, save_arrays, overwrite,
                 expected) -> dict[str, Any]:  # fmt: skip
    """One video of :func:`explain_files`: its kept output's record, or its new one."""
    remove_stale_temporaries(directory)
    check_owned(directory, MARKER_KIND)
    kept = None if overwrite else expected.finished(video, directory)
    if kept is not None:
        return _record(video, directory, kept) | {"kept": True}
    # through its module: a patched explain_video (a test counting calls) is the one run
    result = video_explanation.explain_video(
        video, net, variables, info, target=target, progress=progress,
        decode_timeout=decode_timeout, **settings, **method_options,
    )  # fmt: skip
    save_explanation(result, directory, model_name=os.fspath(model), save_arrays=save_arrays,
                     overwrite=overwrite, timings={**result.timings, **_backend()},
                     progress=progress)  # fmt: skip
    return _record(video, directory, summary(result, os.fspath(model)))


def _record(video: Any, directory: str, summary_: Mapping[str, Any]) -> dict[str, Any]:
    """The line ``selrel explain`` prints for a video, from its ``summary.json``."""
    return {"video": os.fspath(video), "out": directory,
            "target": {key: summary_["target"][key] for key in ("index", "name")},
            "predicted": summary_["predicted"]["name"],
            "spatial_bias": summary_["spatial_bias"]} | (
        {"warnings": summary_["warnings"]} if summary_.get("warnings") else {})  # fmt: skip


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
        try:
            with open(os.path.join(directory, "summary.json")) as f:
                there = json.load(f)
            made, asked = self._made(directory, there), self._asked(video, there)
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            raise OptionError(
                f"output {directory} exists; pass --overwrite to replace it (it holds no "
                "readable summary.json of selrel explain)"
            ) from None
        refuse_other_settings("explanation", directory, made, asked, replaceable=True)
        return there

    @staticmethod
    def _made(directory: str, there: Mapping[str, Any]) -> dict[str, Any]:
        """The settings record of the explanation in ``directory`` (``there``: its summary)."""
        explained, predicted = there["target"]["index"], there["predicted"]["index"]
        return {
            **{key: there.get(key, _BEFORE_RECORDED.get(key)) for key in _RECORDED},
            "target": "predicted" if explained == predicted else explained,
            "clip_starts": [clip["start_frame"] for clip in there["clips"]],
            "save_arrays": os.path.exists(os.path.join(directory, "relevance.npz")),
        }

    def _asked(self, video: Any, there: Mapping[str, Any]) -> dict[str, Any]:
        """The settings record this run would make of ``video`` (whose summary ``there``
        says how many frames it has and which class the model predicts)."""
        s = self.settings
        stride = s.stride_for(self.info)
        predicted = there["predicted"]["index"]
        return settings_record(_rounded({
            "video": os.fspath(video), "model": os.fspath(self.model), "method": s.method,
            "method_options": self.options, "sigma": s.sigma,
            "temporal_padding": s.temporal_padding, "threshold": s.threshold,
            "window_blend": s.window_blend,
            "target": "predicted" if self.target in (None, predicted) else self.target,
            "clip_starts": window_starts(there["frames"], self.info.clip_length, stride),
            "save_arrays": self.save_arrays,
        }))  # fmt: skip


def _backend() -> dict[str, Any]:
    return {"backend": jax.default_backend(), "device_count": jax.device_count()}
