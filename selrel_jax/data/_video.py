"""Video files: decoding and encoding with PyAV, clip sampling, resize and centre crop."""

from __future__ import annotations

import os
import pathlib
from collections.abc import Sequence

import numpy as np

from selrel_jax._checks import one_of, positive_int
from selrel_jax.errors import DataError, DTypeError, OptionError, ShapeError

SAMPLING_MODES = ("center", "uniform", "sliding")


def _pair(name: str, value: int | Sequence[int]) -> tuple[int, int]:
    pair = (int(value), int(value)) if np.ndim(value) == 0 else tuple(int(v) for v in value)
    if len(pair) != 2 or min(pair) < 1:
        raise OptionError(f"{name} must be a positive int or (height, width), got {value!r}")
    return pair  # type: ignore[return-value]


def _resized_shape(height: int, width: int, size: int) -> tuple[int, int]:
    """(H, W) with the shorter side ``size`` and the aspect ratio kept."""
    if height <= width:
        return size, max(1, round(width * size / height))
    return max(1, round(height * size / width)), size


def center_crop(frames: np.ndarray, crop: int | Sequence[int]) -> np.ndarray:
    """Central ``crop`` (int or (H, W)) of (..., H, W, C) frames; smaller frames are an error."""
    ch, cw = _pair("crop", crop)
    h, w = frames.shape[-3], frames.shape[-2]
    if ch > h or cw > w:
        raise ShapeError(f"crop {(ch, cw)} is larger than the frames {(h, w)}")
    top, left = (h - ch) // 2, (w - cw) // 2
    return frames[..., top : top + ch, left : left + cw, :]


def read_video(
    path: str | os.PathLike,
    *,
    size: int | None = None,
    crop: int | Sequence[int] | None = None,
    max_frames: int | None = None,
) -> np.ndarray:
    """Decode a video file into uint8 RGB frames (T, H, W, 3).

    ``size`` resizes (bilinear, in the decoder) so that the shorter side is ``size``;
    ``crop`` then takes the central ``crop`` (int or (H, W)); ``max_frames`` stops
    decoding early. Missing, empty, corrupt or undecodable files raise
    :class:`~selrel_jax.errors.DataError` naming the file.

    Example::

        frames = read_video("clip.mp4", size=128, crop=112)   # (T, 112, 112, 3)
    """
    import av

    if size is not None:
        size = positive_int("size", size)
    if max_frames is not None:
        max_frames = positive_int("max_frames", max_frames)
    if crop is not None:
        _pair("crop", crop)
    path = pathlib.Path(path)
    if not path.is_file():
        raise DataError(f"video file not found: {path}")
    frames: list[np.ndarray] = []
    try:
        with av.open(os.fspath(path)) as container:
            if not container.streams.video:
                raise DataError(f"no video stream in {path}")
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            target = None
            for frame in container.decode(stream):
                if target is None and size is not None:
                    target = _resized_shape(frame.height, frame.width, int(size))
                kwargs = {}
                if target is not None:
                    kwargs = {"height": target[0], "width": target[1], "interpolation": "BILINEAR"}
                frames.append(frame.to_ndarray(format="rgb24", **kwargs))
                if max_frames is not None and len(frames) >= max_frames:
                    break
    except DataError:
        raise
    except (av.FFmpegError, OSError, ValueError, EOFError) as e:
        raise DataError(f"cannot decode video {path}: {type(e).__name__}: {e}") from e
    if not frames:
        raise DataError(f"no decodable frames in video {path}")
    video = np.stack(frames)
    return center_crop(video, crop) if crop is not None else video


def video_fps(path: str | os.PathLike) -> float | None:
    """The video stream's average frame rate, or None if the container does not say."""
    import av

    try:
        with av.open(os.fspath(path)) as container:
            rate = container.streams.video[0].average_rate
    except (av.FFmpegError, OSError, IndexError) as e:
        raise DataError(f"cannot open video {path}: {type(e).__name__}: {e}") from e
    return float(rate) if rate else None


def header_frame_count(path: str | os.PathLike) -> int:
    """Frame count the container's header states (0 when it does not say)."""
    import av

    try:
        with av.open(os.fspath(path)) as container:
            return int(container.streams.video[0].frames)
    except (av.FFmpegError, OSError, IndexError) as e:
        raise DataError(f"cannot open video {path}: {type(e).__name__}: {e}") from e


def count_frames(path: str | os.PathLike) -> int:
    """Number of frames: from the header when it says, else by decoding."""
    stated = header_frame_count(path)
    return stated if stated > 0 else len(read_video(path))


def write_video(
    path: str | os.PathLike,
    frames_uint8: np.ndarray,
    fps: float = 8.0,
    *,
    codec: str = "libx264",
    pixel_format: str | None = None,
    options: dict[str, str] | None = None,
) -> pathlib.Path:
    """Encode uint8 RGB frames (T, H, W, 3) into a video file with PyAV.

    The container follows the suffix (.mp4, .avi, .webm, .mkv). H.264 and most codecs
    need even sizes with ``yuv420p``; odd sizes are padded by repeating the last row or
    column. ``options`` go to the encoder (e.g. ``{"crf": "18"}``).

    Example::

        write_video("out.mp4", frames, fps=12)
    """
    import av

    frames = np.asarray(frames_uint8)
    if frames.dtype != np.uint8:
        raise DTypeError(f"frames must be uint8, got dtype {frames.dtype}")
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.shape[0] == 0:
        raise ShapeError(f"frames must be (T, H, W, 3) with T >= 1, got shape {frames.shape}")
    pix_fmt = pixel_format or ("yuv420p" if codec not in ("mjpeg",) else "yuvj420p")
    if pix_fmt.endswith("420p"):
        pad_h, pad_w = frames.shape[1] % 2, frames.shape[2] % 2
        frames = np.pad(frames, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="edge")
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    from fractions import Fraction

    try:
        with av.open(os.fspath(path), mode="w") as container:
            stream = container.add_stream(codec, rate=Fraction(fps).limit_denominator(1001))
            stream.width, stream.height = frames.shape[2], frames.shape[1]
            stream.pix_fmt = pix_fmt
            if options:
                stream.options = dict(options)
            for frame in frames:
                video_frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), "rgb24")
                for packet in stream.encode(video_frame):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)
    except (av.FFmpegError, OSError, ValueError) as e:
        raise DataError(f"cannot write video {path} with codec {codec}: {e}") from e
    return path


def clip_indices(
    num_frames: int,
    clip_length: int,
    *,
    frame_step: int = 1,
    mode: str = "center",
    num_clips: int = 1,
    stride: int | None = None,
) -> np.ndarray:
    """Frame indices of the clips to take from a video of ``num_frames`` frames.

    A clip spans ``span = (clip_length - 1) * frame_step + 1`` frames. Modes:

    - ``"center"``: one clip in the middle (``num_clips`` is ignored).
    - ``"uniform"``: ``num_clips`` clips with starts evenly spaced from the first to the
      last possible start.
    - ``"sliding"``: every clip starting at 0, ``stride``, 2 ``stride``, ... that fits
      (``stride`` defaults to ``span``: non-overlapping windows); at least one.

    Videos shorter than ``span`` are loop-padded: indices wrap around modulo
    ``num_frames``. Returns int64 (K, clip_length).
    """
    num_frames = positive_int("num_frames", num_frames)
    clip_length = positive_int("clip_length", clip_length)
    frame_step = positive_int("frame_step", frame_step)
    num_clips = positive_int("num_clips", num_clips)
    one_of("sampling mode", mode, SAMPLING_MODES)
    span = (clip_length - 1) * frame_step + 1
    last_start = max(num_frames - span, 0)
    if mode == "center":
        starts = np.array([last_start // 2])
    elif mode == "uniform":
        starts = np.round(np.linspace(0, last_start, num_clips)).astype(np.int64)
    else:
        step = span if stride is None else positive_int("stride", stride)
        starts = np.arange(0, last_start + 1, step)
    offsets = np.arange(clip_length) * frame_step
    return (starts[:, None] + offsets[None, :]) % num_frames
