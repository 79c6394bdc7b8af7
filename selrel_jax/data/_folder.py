"""A folder of videos in UCF-101 layout (``root/<class>/<file>``) as a clip source."""

from __future__ import annotations

import os
import pathlib
from collections.abc import Sequence

import numpy as np

from selrel_jax._checks import listed, positive_int, real
from selrel_jax.data._geometry import crop_pair
from selrel_jax.data._video import clip_indices, count_frames, header_frame_count, read_video
from selrel_jax.errors import DataError, OptionError

#: File suffixes a video folder's videos are recognised by.
VIDEO_EXTENSIONS = (".mp4", ".avi", ".webm", ".mkv", ".mov", ".m4v", ".mpg", ".mpeg")
#: The label of a video whose folder is no class (``VideoFolder(unlabelled=True)``).
UNLABELLED = -1


class VideoFolder(Sequence):
    """Random-access source of clips from ``root/<class>/<file>`` videos.

    Classes are the sorted sub-folder names (or ``class_names``, in that order). Each
    video gives one clip (``sampling="center"``), ``num_clips`` clips (``"uniform"``) or
    all windows with ``stride`` (``"sliding"``; frame counts are read when the folder is
    opened). Frames are resized so the shorter side is ``size`` and centre-cropped to
    ``crop``; videos shorter than a clip are loop-padded. ``split_file`` (e.g. UCF-101's
    ``trainlist01.txt``: lines ``Class/file.avi [label]``) or ``videos`` (such relative
    paths, e.g. one split of :func:`folder_splits`) restricts the videos, in that order.
    A video whose folder is not a class is an OptionError listing the classes, unless
    ``unlabelled``: then its label is :data:`UNLABELLED` (-1), as is that of a video
    directly in ``root`` (``videos=every_video(root)``: any layout).

    Items are ``{"video": uint8 (T,H,W,3), "label": int32, "video_index": int32,
    "clip_index": int32}``; ``paths[video_index]`` is the file. Works directly as a
    :func:`make_loader` source.

    Examples:
        >>> import pathlib
        >>> import shutil
        >>> from selrel_jax.data import sample_clip_path
        >>> for name in ("walk/a.mp4", "walk/b.mp4", "walk/c.mp4", "wave/a.mp4", "wave/b.mp4"):
        ...     path = pathlib.Path("videos", name)   # a class per folder, as UCF-101
        ...     path.parent.mkdir(parents=True, exist_ok=True)
        ...     _ = shutil.copy(sample_clip_path(), path)
        >>> from selrel_jax.data import VideoFolder
        >>> folder = VideoFolder("videos", clip_length=8, size=40, crop=32)
        >>> len(folder), folder.class_names[folder[4]["label"]], folder[0]["video"].shape
        (5, 'wave', (8, 32, 32, 3))
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
        videos: Sequence[str | os.PathLike] | None = None,
        extensions: Sequence[str] = VIDEO_EXTENSIONS,
        unlabelled: bool = False,
    ):
        self.root = pathlib.Path(root)
        self.unlabelled = bool(unlabelled)
        if not self.root.is_dir():
            raise DataError(f"video folder not found: {self.root}")
        # Validate the sampling options once, on a dummy video length.
        clip_indices(
            1, clip_length, frame_step=frame_step, mode=sampling, num_clips=num_clips, stride=stride
        )
        if size is not None:
            size = positive_int("size", size)
        if crop is not None:
            crop_pair(crop)
        if split_file is not None and videos is not None:
            raise OptionError("pass split_file or videos, not both")
        self.clip_length, self.frame_step = int(clip_length), int(frame_step)
        self.sampling, self.num_clips, self.stride = sampling, int(num_clips), stride
        self.size, self.crop = size, crop
        found = class_folders(self.root)
        self.class_names = tuple(class_names) if class_names is not None else found
        if split_file is not None:
            videos = read_split_file(split_file)
        if videos is not None:
            candidates = [self.root / v for v in videos]
        else:
            candidates = sorted(
                f for name in found for f in (self.root / name).iterdir() if f.is_file()
            )
        self.paths, self.labels = self._labelled(candidates, extensions)
        self._clips: list[tuple[int, int]] = []
        for v, path in enumerate(self.paths):
            if sampling == "center":
                k = 1
            elif sampling == "uniform":
                k = self.num_clips
            else:
                k = len(self._indices(count_frames(path)))
            self._clips.extend((v, c) for c in range(k))

    def _labelled(
        self, candidates: Sequence[pathlib.Path], extensions: Sequence[str]
    ) -> tuple[list[pathlib.Path], list[int]]:
        """The video files among ``candidates`` and their class indices."""
        index_of = {name: i for i, name in enumerate(self.class_names)}
        exts = tuple(e.lower() for e in extensions)
        paths = [path for path in candidates if path.suffix.lower() in exts]
        labels = [UNLABELLED if path.parent == self.root else
                  index_of.get(path.parent.name, UNLABELLED) for path in paths]  # fmt: skip
        if not self.unlabelled:
            self._refuse_other_folders(paths, labels)
        if not paths:
            raise DataError(f"no videos with extensions {exts} under {self.root}")
        return paths, labels

    def _refuse_other_folders(self, paths: Sequence[pathlib.Path], labels: Sequence[int]) -> None:
        """OptionError naming the videos' folders that are no class, and the classes."""
        other = sorted({p.parent.name for p, label in zip(paths, labels, strict=True)
                        if label == UNLABELLED})  # fmt: skip
        if other:
            first = next(p for p in paths if p.parent.name == other[0])
            raise OptionError(
                f"video {first} is in folder {other[0]!r}, which is not a class name"
                f"{'' if len(other) == 1 else f' (nor are {listed(other[1:], 5)})'}; "
                f"the {len(self.class_names)} classes: {listed(self.class_names)}"
            )

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

    @property
    def clip_labels(self) -> np.ndarray:
        """int32 (len(self),): the label of every clip, known without decoding anything."""
        return np.array([self.labels[v] for v, _ in self._clips], dtype=np.int32)

    @property
    def clip_shape(self) -> tuple[int, ...] | None:
        """(T, H, W, 3) of every clip when ``crop`` fixes the frame size, else None."""
        if self.crop is None:
            return None
        return (self.clip_length, *crop_pair(self.crop), 3)

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


def class_folders(root: str | os.PathLike) -> tuple[str, ...]:
    """The sorted names of ``root``'s sub-folders: the classes of a UCF-101-layout folder."""
    return tuple(sorted(d.name for d in pathlib.Path(root).iterdir() if d.is_dir()))


def every_video(root: str | os.PathLike, extensions: Sequence[str] = VIDEO_EXTENSIONS) -> list[str]:
    """Every video under ``root``, at any depth and in any folder, as sorted paths
    relative to it (hidden files and folders skipped): the ``all`` split of a folder."""
    root = pathlib.Path(root)
    if not root.is_dir():
        raise DataError(f"video folder not found: {root}")
    exts = tuple(e.lower() for e in extensions)
    found = []
    for folder, subfolders, files in os.walk(root):
        subfolders[:] = sorted(d for d in subfolders if not d.startswith("."))
        found += [pathlib.Path(folder, f).relative_to(root).as_posix() for f in files
                  if not f.startswith(".") and os.path.splitext(f)[1].lower() in exts]  # fmt: skip
    return sorted(found)


def read_split_file(path: str | os.PathLike) -> list[str]:
    """Relative video paths (``Class/file.avi``) of a UCF-101 style list, in file order.

    Lines are ``Class/file.avi`` optionally followed by a label, as in ``trainlist01.txt``
    and ``testlist01.txt``; blank lines are skipped.
    """
    path = pathlib.Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read split file {path}: {e}") from None
    return [line.split()[0] for line in lines if line.strip()]


#: The splits of a dataset, in order.
SPLIT_NAMES = ("train", "validation", "test")


def _tail(count: int, fraction: float) -> int:
    """How many of a class's ``count`` videos a ``fraction`` slice takes: at least one (for a
    non-zero fraction), and never the last one (a class with one video keeps it)."""
    if count < 2 or fraction == 0:
        return 0
    return min(count - 1, max(1, round(count * fraction)))


def folder_splits(
    root: str | os.PathLike,
    *,
    split_file: str | os.PathLike | None = None,
    validation_fraction: float = 0.1,
    test_fraction: float = 0.2,
    extensions: Sequence[str] = VIDEO_EXTENSIONS,
) -> dict[str, list[str]]:
    """Deterministic train / validation / test lists of a UCF-101-layout folder.

    With ``split_file`` (e.g. UCF-101's ``trainlist01.txt``) its videos are the
    training pool and every other video in the folder is the test split. Without
    one, the last ``test_fraction`` of each class's sorted videos is the test split
    and the rest the pool. Validation is then the last ``validation_fraction`` of
    each class's sorted pool. Slices are contiguous in sorted order, so UCF-101's
    groups (``v_Class_g08_c01`` ... clips cut from one long video) stay mostly on
    one side. Each slice takes at least one video of a class with two or more and
    never a class's last one, so every class keeps a training video (a zero
    fraction takes none).

    Returns ``{"train": [...], "validation": [...], "test": [...]}`` of paths
    relative to ``root`` (``"Class/file.mp4"``), sorted.
    """
    root = pathlib.Path(root)
    if not root.is_dir():
        raise DataError(f"video folder not found: {root}")
    validation_fraction = real("validation_fraction", validation_fraction, minimum=0.0)
    test_fraction = real("test_fraction", test_fraction, minimum=0.0)
    exts = tuple(e.lower() for e in extensions)
    by_class = {
        name: sorted(
            f"{name}/{f.name}"
            for f in (root / name).iterdir()
            if f.is_file() and f.suffix.lower() in exts
        )
        for name in class_folders(root)
    }
    if split_file is not None:
        listed = set(read_split_file(split_file))
        known = {v for videos in by_class.values() for v in videos}
        unknown = sorted(listed - known)
        if unknown:
            raise DataError(
                f"split file {split_file} lists {len(unknown)} videos not under {root}, "
                f"e.g. {unknown[0]!r}"
            )
    splits: dict[str, list[str]] = {name: [] for name in SPLIT_NAMES}
    for videos in by_class.values():
        if split_file is not None:
            pool = [v for v in videos if v in listed]
            test = [v for v in videos if v not in listed]
        else:
            cut = len(videos) - _tail(len(videos), test_fraction)
            pool, test = videos[:cut], videos[cut:]
        cut = len(pool) - _tail(len(pool), validation_fraction)
        splits["train"] += pool[:cut]
        splits["validation"] += pool[cut:]
        splits["test"] += test
    return {name: sorted(videos) for name, videos in splits.items()}
