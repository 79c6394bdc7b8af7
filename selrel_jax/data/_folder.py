"""A folder of videos in UCF-101 layout (``root/<class>/<file>``) as a clip source."""

from __future__ import annotations

import os
import pathlib
from collections.abc import Sequence

import numpy as np

from selrel_jax.data._video import (
    _pair,
    clip_indices,
    count_frames,
    header_frame_count,
    read_video,
)
from selrel_jax.errors import DataError, OptionError

VIDEO_EXTENSIONS = (".mp4", ".avi", ".webm", ".mkv", ".mov", ".m4v", ".mpg", ".mpeg")


class VideoFolder(Sequence):
    """Random-access source of clips from ``root/<class>/<file>`` videos.

    Classes are the sorted sub-folder names (or ``class_names``, in that order). Each
    video gives one clip (``sampling="center"``), ``num_clips`` clips (``"uniform"``) or
    all windows with ``stride`` (``"sliding"``; frame counts are read when the folder is
    opened). Frames are resized so the shorter side is ``size`` and centre-cropped to
    ``crop``; videos shorter than a clip are loop-padded. ``split_file`` (e.g. UCF-101's
    ``trainlist01.txt``: lines ``Class/file.avi [label]``) restricts the videos.

    Items are ``{"video": uint8 (T,H,W,3), "label": int32, "video_index": int32,
    "clip_index": int32}``; ``paths[video_index]`` is the file. Works directly as a
    :func:`make_loader` source.

    Example::

        folder = VideoFolder("UCF-101", clip_length=16, size=128, crop=112)
        folder.class_names[folder[0]["label"]]
    """

    def __init__(
        self,
        root: str | os.PathLike,
        *,
        clip_length: int = 16,
        frame_step: int = 1,
        sampling: str = "center",
        num_clips: int = 1,
        stride: int | None = None,
        size: int | None = None,
        crop: int | Sequence[int] | None = None,
        class_names: Sequence[str] | None = None,
        split_file: str | os.PathLike | None = None,
        extensions: Sequence[str] = VIDEO_EXTENSIONS,
    ):
        self.root = pathlib.Path(root)
        if not self.root.is_dir():
            raise DataError(f"video folder not found: {self.root}")
        # Validate the sampling options once, on a dummy video length.
        clip_indices(
            1, clip_length, frame_step=frame_step, mode=sampling, num_clips=num_clips, stride=stride
        )
        if crop is not None:
            _pair("crop", crop)
        self.clip_length, self.frame_step = int(clip_length), int(frame_step)
        self.sampling, self.num_clips, self.stride = sampling, int(num_clips), stride
        self.size, self.crop = size, crop
        found = sorted(d.name for d in self.root.iterdir() if d.is_dir())
        self.class_names = tuple(class_names) if class_names is not None else tuple(found)
        index_of = {name: i for i, name in enumerate(self.class_names)}
        exts = tuple(e.lower() for e in extensions)
        if split_file is not None:
            lines = pathlib.Path(split_file).read_text().split("\n")
            candidates = [self.root / line.split()[0] for line in lines if line.strip()]
        else:
            candidates = sorted(
                f for name in found for f in (self.root / name).iterdir() if f.is_file()
            )
        self.paths: list[pathlib.Path] = []
        self.labels: list[int] = []
        for path in candidates:
            if path.suffix.lower() not in exts:
                continue
            cls = path.parent.name
            if cls not in index_of:
                raise OptionError(f"video {path} is in class folder {cls!r}, not in class_names")
            self.paths.append(path)
            self.labels.append(index_of[cls])
        if not self.paths:
            raise DataError(f"no videos with extensions {exts} under {self.root}")
        self._clips: list[tuple[int, int]] = []
        for v, path in enumerate(self.paths):
            if sampling == "center":
                k = 1
            elif sampling == "uniform":
                k = self.num_clips
            else:
                k = len(self._indices(count_frames(path)))
            self._clips.extend((v, c) for c in range(k))

    def _indices(self, num_frames: int) -> np.ndarray:
        return clip_indices(
            num_frames,
            self.clip_length,
            frame_step=self.frame_step,
            mode=self.sampling,
            num_clips=self.num_clips,
            stride=self.stride,
        )

    def __len__(self) -> int:
        return len(self._clips)

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"clip index {index} out of range for {len(self)} clips")
        v, c = self._clips[index]
        path = self.paths[v]
        # Decode only up to the last frame needed when the header gives the length; a
        # video that ends sooner than its header says is re-sampled on what decoded.
        stated = header_frame_count(path)
        needed = None
        if stated > 0:
            indices = self._indices(stated)
            needed = int(indices[min(c, len(indices) - 1)].max()) + 1
        frames = read_video(path, size=self.size, crop=self.crop, max_frames=needed)
        if needed is None or len(frames) < needed:
            indices = self._indices(len(frames))
        clip = indices[min(c, len(indices) - 1)]
        return {
            "video": frames[clip],
            "label": np.int32(self.labels[v]),
            "video_index": np.int32(v),
            "clip_index": np.int32(c),
        }

    def __repr__(self) -> str:
        return (
            f"VideoFolder({str(self.root)!r}, {len(self.paths)} videos, "
            f"{len(self.class_names)} classes, {len(self)} clips)"
        )
