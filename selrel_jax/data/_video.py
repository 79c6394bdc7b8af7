"""Video files: whole-video reading (built on the streaming reader), encoding with PyAV, and
clip sampling."""

from __future__ import annotations

import itertools
import os
import pathlib
import secrets
from collections.abc import Iterable, Iterator, Sequence
from fractions import Fraction

import numpy as np

from selrel_jax._checks import one_of, positive_int, real
from selrel_jax.data._reader import (
    declared_frame_count,
    decoded_frame_count,
    read_frames,
    source_fps,
)
from selrel_jax.errors import DataError, DTypeError, OptionError, SelrelError, ShapeError

#: How clips are cut from a video: one in the middle, ``num_clips`` evenly spaced, or every window.
SAMPLING_MODES = ("center", "uniform", "sliding")


def read_video(
    path: str | os.PathLike,
    *,
    size: int | None = None,
    crop: int | Sequence[int] | None = None,
    max_frames: int | None = None,
) -> np.ndarray:
    """Decode a video file or frame folder into uint8 RGB frames (T, H, W, 3).

    Every frame, in order (:func:`read_frames` with no sampling). ``size`` resizes
    (bilinear) so that the shorter side is ``size`` and the frame covers ``crop``;
    ``crop`` then takes the central ``crop`` (int or (H, W)); ``max_frames`` stops
    decoding early. Missing, empty, corrupt or undecodable files raise
    :class:`~selrel_jax.errors.DataError` naming the file.

    Examples:
        >>> from selrel_jax.data import read_video, sample_clip_path
        >>> read_video(sample_clip_path(), size=40, crop=32).shape   # (T, 32, 32, 3)
        (32, 32, 32, 3)
    """
    return read_frames(path, size=size, crop=crop, max_frames=max_frames)[0]


def video_fps(path: str | os.PathLike) -> float | None:
    """The source frame rate (:attr:`VideoProbe.fps`), or None if it is unknown."""
    return source_fps(path)


def header_frame_count(path: str | os.PathLike) -> int:
    """Frame count the container's header states (0 when it does not say)."""
    return declared_frame_count(path)


def count_frames(path: str | os.PathLike) -> int:
    """Number of frames: from the header when it says, else by decoding."""
    stated = declared_frame_count(path)
    return stated if stated > 0 else decoded_frame_count(path)


def write_video(
    path: str | os.PathLike,
    frames_uint8: np.ndarray | Iterable[np.ndarray],
    fps: float = 8.0,
    *,
    codec: str = "libx264",
    pixel_format: str | None = None,
    options: dict[str, str] | None = None,
) -> pathlib.Path:
    """Encode uint8 RGB frames (T, H, W, 3) at ``fps`` (a finite number > 0) with PyAV.

    ``frames_uint8`` is one array, or an iterable of such arrays (chunks of frames of
    one size, e.g. a generator), encoded as they come so that a long video never has
    to be held in memory. The container follows the suffix (.mp4, .mov, .avi, .webm,
    .mkv, .gif). H.264 and most codecs need even sizes with ``yuv420p``; odd sizes are
    padded by repeating the last row or column. ``options`` go to the encoder (e.g.
    ``{"crf": "18"}``). The file is written atomically: a hidden temporary file beside
    ``path`` replaces it once complete, so a failure leaves no partial file and an
    older ``path`` intact. Returns ``path``.

    Examples:
        >>> import numpy as np
        >>> from selrel_jax.data import read_video, write_video
        >>> frames = np.zeros((8, 32, 32, 3), np.uint8)
        >>> write_video("out.mp4", frames, fps=12)
        PosixPath('out.mp4')
        >>> read_video("out.mp4").shape
        (8, 32, 32, 3)

        A long video in chunks, never all in memory:

        >>> chunks = (np.full((4, 32, 32, 3), 16 * i, np.uint8) for i in range(3))
        >>> write_video("long.mp4", chunks, fps=12)
        PosixPath('long.mp4')
        >>> read_video("long.mp4").shape
        (12, 32, 32, 3)
    """
    chunks = [frames_uint8] if hasattr(frames_uint8, "shape") else frames_uint8
    rate = Fraction(real("fps", fps, above=0.0)).limit_denominator(1001)
    if rate == 0:  # containers store the rate as a fraction
        raise OptionError(f"fps must be at least 1/1001; got {fps!r}")
    if not isinstance(path, str | os.PathLike):
        raise OptionError(f"path must be a str or os.PathLike; got {path!r}")
    path = pathlib.Path(path)
    pix_fmt = pixel_format or ("yuv420p" if codec not in ("mjpeg",) else "yuvj420p")
    _prepare_folder(path)
    # Hidden, unique, and ending in the same suffix: the container follows it.
    unique = f"{os.getpid()}-{secrets.token_hex(4)}"
    temporary = path.with_name(f".{path.stem}.{unique}.tmp{path.suffix}")
    try:
        _encode(temporary, _checked_chunks(chunks, pix_fmt), rate, codec, pix_fmt, options)
        os.replace(temporary, path)
    except BaseException as e:
        temporary.unlink(missing_ok=True)
        if isinstance(e, OSError | ValueError) and not isinstance(e, SelrelError):
            reason = getattr(e, "strerror", None) or e
            raise DataError(f"cannot write video {path} with codec {codec}: {reason}") from None
        raise
    return path


def _checked_chunks(chunks: Iterable[np.ndarray], pix_fmt: str) -> Iterator[np.ndarray]:
    """Each chunk as uint8 (T, H, W, 3) of the first chunk's size, padded to even sizes
    for 4:2:0 pixel formats; no frames at all is a ShapeError."""
    size = None
    for chunk in chunks:
        frames = np.asarray(chunk)
        if frames.dtype != np.uint8:
            raise DTypeError(f"frames must be uint8, got dtype {frames.dtype}")
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.shape[0] == 0:
            raise ShapeError(f"frames must be (T, H, W, 3) with T >= 1, got shape {frames.shape}")
        if size not in (None, frames.shape[1:3]):
            raise ShapeError(f"frames change size from {size} to {frames.shape[1:3]}")
        size = frames.shape[1:3]
        if pix_fmt.endswith("420p"):
            pad_h, pad_w = frames.shape[1] % 2, frames.shape[2] % 2
            frames = np.pad(frames, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="edge")
        yield frames
    if size is None:
        raise ShapeError("frames must be (T, H, W, 3) with T >= 1, got no frames")


def _prepare_folder(path: pathlib.Path) -> None:
    """Create ``path``'s folder; a file where a folder should be is a DataError."""
    existing = next((p for p in (path, *path.parents) if p.exists()), None)
    if existing == path and path.is_dir():
        raise DataError(f"cannot write video {path}: it is a folder")
    if existing not in (None, path) and not existing.is_dir():
        raise DataError(f"cannot write video {path}: {existing} is a file, not a folder")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(f"cannot write video {path}: {e.strerror or e}") from None


def _encode(
    path: pathlib.Path,
    chunks: Iterator[np.ndarray],
    rate: Fraction,
    codec: str,
    pix_fmt: str,
    options: dict[str, str] | None,
) -> None:
    import av

    first = next(chunks)  # checked before the file is created
    with av.open(os.fspath(path), mode="w") as container:
        stream = container.add_stream(codec, rate=rate)
        stream.width, stream.height = first.shape[2], first.shape[1]
        stream.pix_fmt = pix_fmt
        if options:
            stream.options = dict(options)
        for frames in itertools.chain([first], chunks):
            for frame in frames:
                video_frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), "rgb24")
                for packet in stream.encode(video_frame):
                    container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


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


def refuse_still(frames: np.ndarray, name: str | os.PathLike) -> None:
    """DataError naming ``name`` if ``frames`` (T, ...) are all one image: a single frame,
    a still image or a video that never changes. Selective relevance keeps what changes
    from frame to frame; with one distinct frame nothing does, and whatever it kept would
    come from the model's temporal padding, not from the video, so such a video has no
    motion scores."""
    frames = np.asarray(frames)
    if len(frames) == 0 or not np.any(frames[1:] != frames[:-1]):
        raise DataError(
            f"{os.fspath(name)} has no motion: its {len(frames)} sampled frame(s) are one "
            "image; selective relevance needs at least 2 distinct frames, so a still has "
            "no motion scores"
        )
