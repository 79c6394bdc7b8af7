"""Streaming video reading: probe a video file or a folder of frames, then decode, sample,
turn upright, resize and crop one frame at a time.

A video file is anything FFmpeg (through PyAV) reads: mp4, mov, avi, webm, mkv, gif, ...
A directory is a frame folder: image files only, read in natural name order.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import os
import pathlib
import re
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple, TypeVar

import numpy as np

from selrel_jax._checks import positive_int, real
from selrel_jax.data._geometry import (
    MAX_FRAME_SIDE,
    center_crop,
    check_frame_size,
    crop_pair,
    resized_shape,
)
from selrel_jax.data._image_folder import image_array, image_files, upright_size
from selrel_jax.errors import DataError, OptionError, SelrelError

T = TypeVar("T")

# What a failing PyAV call raises: its FFmpegError family subclasses OSError and ValueError.
_AV_ERRORS = (OSError, ValueError, EOFError)


@dataclasses.dataclass(frozen=True)
class VideoProbe:
    """What a video file or frame folder holds, from its header and its first frame.

    ``kind`` is ``"video"`` (a file) or ``"frames"`` (a folder of images); ``codec`` the
    decoder (``"h264"``, ``"vp9"``, ``"gif"``, ...) or the image suffix (``"png"``);
    ``frame_count`` the count the header declares (None where it says none: webm,
    mkv); ``fps`` the source frame rate (None where unknown: frame folders);
    ``duration`` in seconds (None where unknown); ``width`` x ``height`` the upright
    frame size (after rotation); ``rotation`` how many degrees clockwise (0, 90, 180,
    270) decoded frames are turned to stand upright, from the stream's display matrix.
    """

    path: pathlib.Path
    kind: str
    codec: str
    frame_count: int | None
    fps: float | None
    duration: float | None
    width: int
    height: int
    rotation: int

    def sampled_fps(self, fps: float | None = None, frame_step: int = 1) -> float | None:
        """Frame rate of what ``iter_frames(path, fps=fps, frame_step=frame_step)`` yields.

        ``fps`` when the source rate is known, else the source rate over
        ``frame_step``; None when neither is known. Frame ``k`` of the output is the
        frame shown ``k / sampled_fps`` seconds after the first.
        """
        if fps is not None:
            fps = real("fps", fps, above=0.0)
        step = positive_int("frame_step", frame_step)
        if self.fps is None:
            return None
        return fps if fps is not None else self.fps / step


class _Request(NamedTuple):
    fps: float | None
    frame_step: int
    size: int | None
    crop: tuple[int, int] | None
    max_frames: int | None


def _request(fps: Any, frame_step: Any, size: Any, crop: Any, max_frames: Any) -> _Request:
    """The reading options, checked (OptionError naming the option)."""
    if size is not None and positive_int("size", size) > MAX_FRAME_SIDE:
        raise OptionError(f"size must be at most {MAX_FRAME_SIDE}; got {size!r}")
    crop = None if crop is None else crop_pair(crop)
    if crop is not None and max(crop) > MAX_FRAME_SIDE:
        raise OptionError(f"crop must be at most {MAX_FRAME_SIDE} a side; got {crop!r}")
    return _Request(
        fps=None if fps is None else real("fps", fps, above=0.0),
        frame_step=positive_int("frame_step", frame_step),
        size=None if size is None else int(size),
        crop=crop,
        max_frames=None if max_frames is None else positive_int("max_frames", max_frames),
    )


def _locate(path: Any) -> tuple[pathlib.Path, str]:
    """``(path, kind)``: ``"frames"`` for a directory, ``"video"`` for a file."""
    if not isinstance(path, str | os.PathLike):
        raise OptionError(f"path must be a str or os.PathLike; got {path!r}")
    path = pathlib.Path(path)
    if path.is_dir():
        return path, "frames"
    if path.is_file():
        return path, "video"
    if path.exists():
        raise DataError(f"{path} is neither a video file nor a folder of frames")
    raise DataError(f"video file or frame folder not found: {path}")


def _check_header_size(path: pathlib.Path) -> None:
    """Check the frame size a y4m header declares before FFmpeg reads it: FFmpeg refuses
    huge ones with a misleading "Device or resource busy"."""
    try:
        with open(path, "rb") as file:
            head = file.readline(1024)
    except OSError:
        return  # av.open reports it
    if head.startswith(b"YUV4MPEG2 "):
        width, height = re.search(rb" W(\d+)", head), re.search(rb" H(\d+)", head)
        if width and height:
            check_frame_size(path, int(width[1]), int(height[1]), "declares")


def _reason(error: BaseException) -> str:
    return getattr(error, "strerror", None) or str(error) or type(error).__name__


@contextlib.contextmanager
def _open_video(path: pathlib.Path) -> Iterator[tuple[Any, Any]]:
    """``(container, video stream)`` of a video file, its declared frame size checked."""
    import av

    _check_header_size(path)
    try:
        empty = path.stat().st_size == 0
    except OSError as e:  # gone since it was found
        raise DataError(f"cannot open video {path}: {e.strerror or e}") from None
    if empty:
        raise DataError(f"video file {path} is empty (0 bytes)")
    try:
        container = av.open(os.fspath(path))
    except _AV_ERRORS as e:
        hint = "" if isinstance(e, PermissionError) else " (not a video FFmpeg reads, or damaged)"
        raise DataError(f"cannot open video {path}: {_reason(e)}{hint}") from None
    with container:
        if not container.streams.video:
            kinds = ", ".join(sorted({s.type for s in container.streams})) or "none"
            raise DataError(f"no video stream in {path} (its streams: {kinds})")
        stream = container.streams.video[0]
        context = stream.codec_context
        if context is None:  # a codec FFmpeg has no decoder for (or a damaged codec tag)
            raise DataError(f"cannot decode video {path}: no decoder for its video stream")
        check_frame_size(path, context.width, context.height, "declares")
        stream.thread_type = "AUTO"
        yield container, stream


def _decoded(path: pathlib.Path, container: Any, stream: Any) -> Iterator[Any]:
    """The stream's decoded frames (PyAV VideoFrames), each frame's size checked; a
    stream that ends well before its declared duration is an error."""
    count, first_pts, last_pts = 0, None, None
    try:
        for frame in container.decode(stream):
            check_frame_size(path, frame.width, frame.height, "decodes to")
            if frame.pts is not None:
                first_pts = frame.pts if first_pts is None else first_pts
                last_pts = frame.pts
            yield frame
            count += 1
    except SelrelError:
        raise
    except _AV_ERRORS as e:
        raise DataError(f"cannot decode video {path} after {count} frames: {_reason(e)}") from None
    if count:
        _check_complete(path, stream, count, first_pts, last_pts)


def _check_complete(
    path: pathlib.Path, stream: Any, count: int, first_pts: int | None, last_pts: int | None
) -> None:
    """Refuse a stream that ended short of both the frame count and the duration its
    header declares: a truncated file FFmpeg reads to the cut without complaint (AVI,
    mp4 with its index first). Both must fall short, so an mp4 edit list that trims
    frames is no error; webm and mkv declare neither, so their cuts pass unnoticed."""
    if not (stream.frames > count and stream.duration and stream.time_base):
        return
    declared = float(stream.duration * stream.time_base)
    fps = _stream_fps(stream)
    interval = 1 / fps if fps else 0.0
    if first_pts is not None and last_pts is not None:
        decoded = float((last_pts - first_pts) * stream.time_base) + interval
    else:
        decoded = count * interval
    if declared - decoded > max(2 * interval, 0.05 * declared):
        raise DataError(
            f"video {path} ends after {count} frames ({decoded:.2f} s) of the {declared:.2f} s "
            "its header declares: the file is truncated"
        )


def _stream_fps(stream: Any) -> float | None:
    """Source frame rate: declared frames over duration (exact for mp4, avi and gif,
    whose average_rate can be off), else the average rate; None when unknown."""
    if stream.frames and stream.duration and stream.time_base:
        rate = stream.frames / float(stream.duration * stream.time_base)
    else:
        rate = float(stream.average_rate) if stream.average_rate else None
    return rate if rate is not None and np.isfinite(rate) and rate > 0 else None


def _duration(container: Any, stream: Any) -> float | None:
    if stream.duration and stream.time_base:
        return float(stream.duration * stream.time_base)
    return container.duration / 1e6 if container.duration else None  # AV_TIME_BASE units


def _timed(frames: Iterator[T], time_base: Any, fps: float | None) -> Iterator[tuple[Any, T]]:
    """``(seconds since the first frame, frame)``: from timestamps, else index / fps."""
    origin = None
    for index, frame in enumerate(frames):
        if frame.pts is not None and time_base:
            origin = frame.pts if origin is None else origin
            yield float((frame.pts - origin) * time_base), frame
        else:
            yield (index / fps if fps else None), frame


def _pick_by_time(timed: Iterator[tuple[float, T]], fps: float, source_fps: float) -> Iterator[T]:
    """The frame on screen at each time ``k / fps``: the last one starting no later.

    A frame starting within a quarter of a source frame after the time counts as
    started: that absorbs timestamps rounded to a coarse clock (webm's milliseconds,
    gif's centiseconds). The last frame lasts one source frame. Slower sources repeat
    frames, faster ones skip them.
    """
    interval = 1.0 / source_fps
    slack = interval / 4
    k, held, held_time = 0, None, 0.0
    for time, frame in timed:
        while held is not None and k / fps + slack < time:
            yield held
            k += 1
        held, held_time = frame, time
    while held is not None and k / fps + slack < held_time + interval:
        yield held
        k += 1


def _quarter_turns(frame: Any) -> int:
    """Clockwise quarter turns that stand a decoded frame upright (PyAV >= 14 reads the
    display matrix; its ``rotation`` is counterclockwise degrees)."""
    return round(-getattr(frame, "rotation", 0) / 90) % 4


class _Source(NamedTuple):
    fps: float | None  # None: sample with frame_step
    items: Iterator[tuple[Any, Any]]  # (seconds or None, raw frame), decoded lazily
    convert: Callable[[Any], np.ndarray]  # raw frame -> uint8 (H, W, 3), sized


class _VideoFrames:
    """Converts decoded frames: upright, resized to what the first frame gives, cropped."""

    def __init__(self, path: pathlib.Path, request: _Request):
        self.path, self.request, self.shape = path, request, None

    def __call__(self, frame: Any) -> np.ndarray:
        turns = _quarter_turns(frame)
        upright = (frame.height, frame.width) if turns % 2 == 0 else (frame.width, frame.height)
        if self.shape is None:
            self.shape = resized_shape(*upright, self.request.size, self.request.crop)
            check_frame_size(self.path, self.shape[1], self.shape[0], "is resized to")
        height, width = self.shape if turns % 2 == 0 else self.shape[::-1]
        try:
            array = frame.to_ndarray(
                format="rgb24", width=width, height=height, interpolation="BILINEAR"
            )
        except _AV_ERRORS as e:
            raise DataError(f"cannot convert a frame of video {self.path}: {_reason(e)}") from None
        return _finish(np.rot90(array, k=-turns) if turns else array, self.request.crop)


class _ImageFrames:
    """Converts frame-folder image files like :class:`_VideoFrames` does decoded frames."""

    def __init__(self, request: _Request):
        self.request, self.first, self.shape = request, None, None

    def __call__(self, file: pathlib.Path) -> np.ndarray:
        if self.first is None:
            self.first = upright_size(file)
            self.shape = resized_shape(*self.first, self.request.size, self.request.crop)
            check_frame_size(file.parent, self.shape[1], self.shape[0], "is resized to")
        return _finish(image_array(file, self.first, self.shape), self.request.crop)


def _finish(array: np.ndarray, crop: tuple[int, int] | None) -> np.ndarray:
    return np.ascontiguousarray(center_crop(array, crop) if crop is not None else array)


@contextlib.contextmanager
def _source(path: pathlib.Path, kind: str, request: _Request) -> Iterator[_Source]:
    if kind == "frames":
        files = image_files(path)
        yield _Source(None, ((None, f) for f in files), _ImageFrames(request))
        return
    with _open_video(path) as (container, stream):
        fps = _stream_fps(stream)
        frames = _decoded(path, container, stream)
        yield _Source(fps, _timed(frames, stream.time_base, fps), _VideoFrames(path, request))


def _frames(
    path: pathlib.Path, kind: str, request: _Request, report: dict[str, Any]
) -> Iterator[np.ndarray]:
    """The generator behind :func:`iter_frames`; puts the output frame rate in ``report``."""
    count = 0
    with _source(path, kind, request) as source:
        if request.fps is not None and source.fps is not None:
            picked = _pick_by_time(source.items, request.fps, source.fps)
            report["fps"] = request.fps
        else:
            picked = itertools.islice((raw for _, raw in source.items), 0, None, request.frame_step)
            report["fps"] = None if source.fps is None else source.fps / request.frame_step
        for raw in itertools.islice(picked, request.max_frames):
            yield source.convert(raw)
            count += 1
    if count == 0:
        raise DataError(f"no frames in {'frame folder' if kind == 'frames' else 'video'} {path}")


def iter_frames(
    path: str | os.PathLike,
    *,
    fps: float | None = None,
    frame_step: int = 1,
    size: int | None = None,
    crop: int | tuple[int, int] | None = None,
    max_frames: int | None = None,
) -> Iterator[np.ndarray]:
    """Frames of a video file or frame folder, decoded one at a time: uint8 RGB (H, W, 3).

    Sampling: with ``fps`` and a known source rate (:attr:`VideoProbe.fps`), the frame
    on screen at each time ``k / fps`` from the first frame's timestamp on (slower
    sources repeat frames); otherwise every ``frame_step``-th frame. Frames are turned
    upright (display matrix), resized (bilinear) so the shorter side is ``size`` and
    the frame covers ``crop``, then centre-cropped to ``crop`` (int or (H, W)); without
    ``size`` they keep their size and ``crop`` must fit. Every frame gets the size the
    first one gets. ``max_frames`` stops decoding after that many frames.

    Options are checked at the call (OptionError); the file opens when iteration starts,
    and a missing, unreadable, damaged or frameless source raises DataError naming it.
    Decoding is lazy: stopping early never decodes the rest, and nothing but the frame
    being converted is held at full resolution.

    Examples:
        >>> from selrel_jax.data import iter_frames, sample_clip_path
        >>> for frame in iter_frames(sample_clip_path(), fps=2, size=32, crop=24):
        ...     pass   # uint8 (24, 24, 3), 2 per second of video
        >>> frame.shape, frame.dtype
        ((24, 24, 3), dtype('uint8'))
    """
    request = _request(fps, frame_step, size, crop, max_frames)
    path, kind = _locate(path)
    return _frames(path, kind, request, {})


def read_frames(
    path: str | os.PathLike,
    *,
    fps: float | None = None,
    frame_step: int = 1,
    size: int | None = None,
    crop: int | tuple[int, int] | None = None,
    max_frames: int | None = None,
) -> tuple[np.ndarray, float | None]:
    """``(frames uint8 (T, H, W, 3), their frame rate or None)``: :func:`iter_frames`, stacked.

    Examples:
        >>> from selrel_jax.data import read_frames, sample_clip_path
        >>> frames, rate = read_frames(sample_clip_path(), fps=4, size=32, crop=24)
        >>> frames.shape, rate   # 32 frames at 8 fps, halved
        ((16, 24, 24, 3), 4.0)
    """
    request = _request(fps, frame_step, size, crop, max_frames)
    path, kind = _locate(path)
    report: dict[str, Any] = {}
    frames = np.stack(list(_frames(path, kind, request, report)))
    return frames, report["fps"]


def probe_video(path: str | os.PathLike) -> VideoProbe:
    """What a video file or frame folder holds (:class:`VideoProbe`), from its header
    and first frame; a source that cannot be read raises DataError naming it.

    Examples:
        >>> from selrel_jax.data import probe_video, sample_clip_path
        >>> probe = probe_video(sample_clip_path())
        >>> probe.fps, probe.frame_count, (probe.height, probe.width), probe.rotation
        (8.0, 32, (48, 48), 0)
    """
    path, kind = _locate(path)
    if kind == "frames":
        files = image_files(path)
        height, width = upright_size(files[0])
        codec = files[0].suffix.lower().lstrip(".")
        return VideoProbe(path, kind, codec, len(files), None, None, width, height, 0)
    with _open_video(path) as (container, stream):
        first = next(_decoded(path, container, stream), None)
        if first is None:
            raise DataError(f"no frames in video {path}")
        turns = _quarter_turns(first)
        height, width = (first.height, first.width)[:: -1 if turns % 2 else 1]
        return VideoProbe(
            path=path,
            kind=kind,
            codec=stream.codec_context.name,
            frame_count=stream.frames or None,
            fps=_stream_fps(stream),
            duration=_duration(container, stream),
            width=width,
            height=height,
            rotation=90 * turns,
        )


def source_fps(path: str | os.PathLike) -> float | None:
    """The source frame rate :func:`probe_video` reports, from the header alone."""
    path, kind = _locate(path)
    if kind == "frames":
        image_files(path)
        return None
    with _open_video(path) as (_, stream):
        return _stream_fps(stream)


def declared_frame_count(path: str | os.PathLike) -> int:
    """Frame count the header declares (0 when it does not); a frame folder's image count."""
    path, kind = _locate(path)
    if kind == "frames":
        return len(image_files(path))
    with _open_video(path) as (_, stream):
        return int(stream.frames)


def decoded_frame_count(path: str | os.PathLike) -> int:
    """Number of frames, by decoding every one (no conversion to RGB)."""
    path, kind = _locate(path)
    if kind == "frames":
        return len(image_files(path))
    with _open_video(path) as (container, stream):
        return sum(1 for _ in _decoded(path, container, stream))
