"""Labelled clips, in memory or decoded on demand, and one split of a named dataset.

Dataset names: ``synthetic_motion[/<config>]`` (the TFDS cache, or generated
afresh with ``data_seed``), ``folder:<path>`` (a UCF-101-layout folder of videos,
split by :func:`~selrel_jax.data.folder_splits`), or any other TFDS name prepared
in array_record format.

Examples:
    :func:`load_clips`:

    >>> import pathlib
    >>> import shutil
    >>> from selrel_jax.data import sample_clip_path
    >>> for name in ("walk/a.mp4", "walk/b.mp4", "walk/c.mp4", "wave/a.mp4", "wave/b.mp4"):
    ...     path = pathlib.Path("videos", name)   # a class per folder, as UCF-101
    ...     path.parent.mkdir(parents=True, exist_ok=True)
    ...     _ = shutil.copy(sample_clip_path(), path)
    >>> from selrel_jax.data import load_clips
    >>> _ = pathlib.Path("trainlist.txt").write_text("walk/a.mp4\\nwave/a.mp4\\n")
    >>> clips, names = load_clips("folder:videos", "train", clip_size=(8, 32, 32),
    ...                           size=40, split_file="trainlist.txt")
    >>> clips.video.shape, clips.label.tolist(), names
    ((2, 8, 32, 32, 3), [0, 1], ('walk', 'wave'))
"""

from __future__ import annotations

import os
import pathlib
import sys
import warnings
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np

from selrel_jax._checks import integer, one_of, positive_int
from selrel_jax.data import synthetic_motion
from selrel_jax.data._folder import SPLIT_NAMES, VideoFolder, folder_splits
from selrel_jax.data._sources import load_source
from selrel_jax.errors import DataError, DataWarning, OptionError, ShapeError

SYNTHETIC = "synthetic_motion"
FOLDER_PREFIX = "folder:"


class Clips(NamedTuple):
    """Labelled clips: ``video`` uint8 (N, T, H, W, 3) RGB, ``label`` int (N,).

    ``video`` is a NumPy array or an array-like with ``shape``, ``dtype`` and
    row indexing, such as :class:`LazyVideos`, which decodes rows on demand.
    """

    video: Any
    label: np.ndarray


class LazyVideos:
    """uint8 (N, T, H, W, 3) array-like over a clip source; rows decode when indexed.

    ``source[i]["video"]`` is clip ``i`` (e.g. a :class:`VideoFolder`). Indexing with
    an int, a slice or a 1-D sequence of ints returns NumPy arrays, so a big folder
    never has to fit in memory; ``np.asarray`` decodes every clip. ``clip_shape``
    (T, H, W, 3) is read from the first clip when not given; every clip must have it.

    Examples:
        >>> import pathlib
        >>> import shutil
        >>> from selrel_jax.data import sample_clip_path
        >>> for name in ("walk/a.mp4", "walk/b.mp4", "walk/c.mp4", "wave/a.mp4", "wave/b.mp4"):
        ...     path = pathlib.Path("videos", name)   # a class per folder, as UCF-101
        ...     path.parent.mkdir(parents=True, exist_ok=True)
        ...     _ = shutil.copy(sample_clip_path(), path)
        >>> from selrel_jax.data import LazyVideos, VideoFolder
        >>> videos = LazyVideos(VideoFolder("videos", clip_length=8, crop=32))
        >>> len(videos), videos[[0, 3]].shape    # two videos decoded
        (5, (2, 8, 32, 32, 3))
    """

    dtype = np.dtype(np.uint8)
    ndim = 5

    def __init__(self, source: Sequence, clip_shape: Sequence[int] | None = None):
        self.source = source
        if clip_shape is None:
            if len(source) == 0:
                raise ShapeError("LazyVideos needs clip_shape for an empty source")
            clip_shape = np.shape(source[0]["video"])
        self.clip_shape = tuple(int(s) for s in clip_shape)
        if len(self.clip_shape) != 4 or self.clip_shape[-1] != 3:
            raise ShapeError(f"clip_shape must be (T, H, W, 3); got {self.clip_shape}")

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self.source), *self.clip_shape)

    def __len__(self) -> int:
        return len(self.source)

    def _clip(self, index: int) -> np.ndarray:
        clip = np.asarray(self.source[int(index)]["video"])
        if clip.shape != self.clip_shape or clip.dtype != np.uint8:
            raise ShapeError(
                f"clip {index} is {clip.dtype} {clip.shape}; expected uint8 {self.clip_shape}"
            )
        return clip

    def _stack(self, indices: Sequence[int]) -> np.ndarray:
        out = np.empty((len(indices), *self.clip_shape), np.uint8)
        for row, index in enumerate(indices):
            out[row] = self._clip(index)
        return out

    def __getitem__(self, key: Any) -> np.ndarray:
        if isinstance(key, int | np.integer):
            return self._clip(key)
        if isinstance(key, slice):
            return self._stack(range(*key.indices(len(self))))
        indices = np.asarray(key)
        if indices.ndim != 1 or not np.issubdtype(indices.dtype, np.integer):
            raise IndexError(f"LazyVideos takes an int, a slice or 1-D ints; got {key!r}")
        return self._stack(indices.tolist())

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        video = self[:]
        return video if dtype is None else video.astype(dtype)

    def __repr__(self) -> str:
        return f"LazyVideos({self.shape}, source={self.source!r})"


def parse_dataset(dataset: str) -> tuple[str, str]:
    """``(kind, argument)`` of a dataset name.

    ``"synthetic_motion/biased"`` -> ``("synthetic_motion", "biased")`` (config
    ``""`` means default), ``"folder:/data/ucf"`` -> ``("folder", "/data/ucf")``,
    anything else -> ``("tfds", name)``.
    """
    if dataset.startswith(FOLDER_PREFIX):
        path = dataset[len(FOLDER_PREFIX) :]
        if not path:
            raise OptionError(f"dataset {dataset!r} names no folder; use folder:PATH")
        return "folder", path
    base, _, config = dataset.partition("/")
    if base == SYNTHETIC:
        return SYNTHETIC, config
    return "tfds", dataset


def cap_limit(limit: int | None, available: int, dataset: str, split: str) -> int:
    """The clips to take of a split of ``available`` clips: ``limit``, capped at the
    split's end with a :class:`~selrel_jax.errors.DataWarning` saying so (None: all)."""
    if limit is None or limit <= available:
        return available if limit is None else limit
    warnings.warn(
        f"limit {limit} exceeds the {available} clips of {dataset}'s {split} split; "
        f"using {available}",
        DataWarning,
        stacklevel=3,
    )
    return available


def _numeric_class_names(num_classes: int) -> tuple[str, ...]:
    return tuple(f"class_{i}" for i in range(num_classes))


def _check_clip_size(dataset: str, have: Sequence[int], want: Sequence[int] | None) -> None:
    if want is not None and tuple(have) != tuple(want):
        raise ShapeError(
            f"{dataset} clips are {tuple(have)} (T, H, W) but {tuple(want)} are needed"
        )


# 61 lines, most of them the docstring of twelve options; the body checks which options
# the dataset kind allows, then hands over to the folder, synthetic or TFDS reader.
def load_clips(
    dataset: str,
    split: str,
    *,
    data_dir: str | os.PathLike | None = None,
    limit: int | None = None,
    data_seed: int | None = None,
    clip_size: Sequence[int] | None = None,
    frame_step: int | None = None,
    size: int | None = None,
    split_file: str | os.PathLike | None = None,
    class_names: Sequence[str] | None = None,
    progress: bool = False,
) -> tuple[Clips, tuple[str, ...]]:
    """``(Clips, class_names)`` of ``dataset``'s ``split`` (train, validation or test).

    ``limit`` keeps the first K clips. ``clip_size`` (T, H, W) is what the caller
    needs: a folder's clips are cut to it (``frame_step`` apart, frames resized to a
    shorter side of ``size``, default max(H, W), then centre-cropped); other datasets
    whose clips differ are refused before anything is read or generated.
    ``data_seed`` generates a synthetic_motion split afresh with that seed instead
    of reading the cached one (``data_dir``). A folder's videos are decoded on
    demand (:class:`LazyVideos`); its classes are its sub-folders (or
    ``class_names``, in that order) and ``split_file`` is passed to
    :func:`folder_splits`. Class names of other TFDS datasets are ``class_<i>``.
    """
    kind, argument = parse_dataset(dataset)
    one_of("split", split, SPLIT_NAMES)
    if limit is not None:
        limit = positive_int("limit", limit)
    folder_only = {"frame_step": frame_step, "size": size, "split_file": split_file}
    given = [k for k, v in folder_only.items() if v is not None]
    if kind != "folder" and given:
        raise OptionError(f"{given[0]} applies only to folder: datasets; got {dataset!r}")
    if data_seed is not None and kind != SYNTHETIC:
        raise OptionError(f"data_seed works only with {SYNTHETIC}[/config]; got {dataset!r}")
    data_seed = None if data_seed is None else integer("data_seed", data_seed, minimum=0)
    if kind == "folder":
        return _folder_clips(
            pathlib.Path(argument), split, limit=limit, clip_size=clip_size,
            frame_step=frame_step, size=size, split_file=split_file, class_names=class_names,
        )  # fmt: skip
    if kind == SYNTHETIC:
        config = synthetic_motion.get_config(argument or "default")
        _check_clip_size(dataset, (config.frames, config.height, config.width), clip_size)
        if data_seed is not None:
            count = cap_limit(limit, config.split_sizes[split], dataset, split)
            if progress:
                print(f"generating {count} {dataset} {split} clips, seed {data_seed}",
                      file=sys.stderr)  # fmt: skip
            arrays = synthetic_motion.generate_split(config, split, data_seed, count)
            return Clips(arrays["video"], arrays["label"]), synthetic_motion.CLASS_NAMES
    clips = _read_source(dataset, split, data_dir, limit, clip_size, progress)
    if kind == SYNTHETIC:
        return clips, synthetic_motion.CLASS_NAMES
    return clips, _numeric_class_names(int(clips.label.max()) + 1)


def _read_source(
    dataset: str,
    split: str,
    data_dir: str | os.PathLike | None,
    limit: int | None,
    clip_size: Sequence[int] | None,
    progress: bool,
) -> Clips:
    """Every example of a random-access source, read into memory."""
    from tqdm import tqdm

    source = load_source(dataset, split, data_dir=data_dir, limit=limit)
    n = cap_limit(limit, len(source), dataset, split)
    if n == 0:
        raise DataError(f"dataset {dataset!r} split {split!r} is empty")
    first = source[0]
    _check_clip_size(dataset, np.shape(first["video"])[:3], clip_size)
    video = np.empty((n, *np.shape(first["video"])), np.uint8)
    label = np.empty((n,), np.int32)
    verb = getattr(source, "verb", "read")  # the first clips generated, or read from disk
    for i in tqdm(range(n), desc=f"{dataset}: {verb} {split}", unit="clip", file=sys.stderr,
                  disable=not progress, leave=False):  # fmt: skip
        example = source[i]
        video[i], label[i] = example["video"], example["label"]
    return Clips(video, label)


def _folder_clips(
    root: pathlib.Path,
    split: str,
    *,
    limit: int | None,
    clip_size: Sequence[int] | None,
    frame_step: int | None,
    size: int | None,
    split_file: str | os.PathLike | None,
    class_names: Sequence[str] | None,
) -> tuple[Clips, tuple[str, ...]]:
    if clip_size is None:
        raise OptionError(f"a folder dataset needs clip_size (T, H, W); got none for {root}")
    t, h, w = (positive_int("clip_size", int(s)) for s in clip_size)
    videos = folder_splits(root, split_file=split_file)[split]
    videos = videos[: cap_limit(limit, len(videos), f"{FOLDER_PREFIX}{root}", split)]
    if not videos:
        raise DataError(
            f"the {split} split of folder {root} is empty (validation and test take a slice "
            "of each class with at least 2 videos; see folder_splits)"
        )
    folder = VideoFolder(
        root,
        clip_length=t,
        frame_step=1 if frame_step is None else frame_step,
        size=max(h, w) if size is None else size,
        crop=(h, w),
        class_names=class_names,
        videos=videos,
    )
    return Clips(LazyVideos(folder, folder.clip_shape), folder.clip_labels), folder.class_names
