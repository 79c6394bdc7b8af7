"""The clips a sweep scores, read batch by batch, with their ground truth where the
dataset has it (synthetic_motion's motion mask, static-object mask and boxes)."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from selrel_jax import data, metrics
from selrel_jax._checks import listed
from selrel_jax._worker import decode_in_worker
from selrel_jax.data import synthetic_motion
from selrel_jax.errors import DataError, OptionError, ShapeError
from selrel_jax.metrics import _flow
from selrel_jax.models.checkpoint import writable_directory
from selrel_jax.models.info import ModelInfo
from selrel_jax.sweep._settings import ALL_VIDEOS, SweepSettings

#: Ground truth a dataset may carry per clip, scored when present.
TRUTH_KEYS = ("mask", "static_mask", "boxes")


@dataclasses.dataclass
class ClipBatch:
    """Clips ``video`` uint8 (n, T, H, W, 3) and ``label`` int32 (n,), ``truth`` the
    dataset's ground truth of :data:`TRUTH_KEYS` it has ((n, T, H, W) bool masks,
    (n, T, 4) boxes), and ``failed`` row -> reason for clips that could not be read
    (their rows hold zeros and are not scored)."""

    video: np.ndarray
    label: np.ndarray
    truth: dict[str, np.ndarray]
    failed: dict[int, str]


class ClipSource:
    """``count`` clips of one dataset split, read by index.

    ``clip_id(i)`` names clip ``i`` in the table: its index for indexed datasets,
    ``"<relative path>#<clip index>"`` for a folder; ``id_type`` is ``"int64"`` or
    ``"string"``. ``read(indices)`` returns a :class:`ClipBatch`; ``stage`` is what a
    progress bar calls reading."""

    id_type = "int64"
    stage = "read"
    #: A folder split's: how many videos each other split holds (not swept here).
    left_out: dict[str, int] | None = None

    def __init__(
        self,
        count: int,
        clip_shape: tuple[int, ...],
        example: Callable[[int], dict[str, Any]],
        truth_keys: Sequence[str],
    ):
        self.count, self.clip_shape = count, tuple(clip_shape)
        self._example, self.truth_keys = example, tuple(truth_keys)

    def clip_id(self, index: int) -> Any:
        return int(index)

    def read(self, indices: Sequence[int]) -> ClipBatch:
        n = len(indices)
        video = np.zeros((n, *self.clip_shape), np.uint8)
        label = np.zeros((n,), np.int32)
        truth = {key: [] for key in self.truth_keys}
        for row, index in enumerate(indices):
            example = self._example(int(index))
            video[row], label[row] = example["video"], example["label"]
            for key in self.truth_keys:
                truth[key].append(np.asarray(example[key]))
        return ClipBatch(video, label, {k: np.stack(v) for k, v in truth.items()}, {})


class FolderClipSource(ClipSource):
    """The clips of a folder dataset, decoded on demand; a video that fails to decode,
    or whose clip is one image repeated (a still, a single frame: no motion scores), is
    reported in the batch's ``failed`` instead of stopping the sweep. With
    ``decode_timeout`` (seconds) each video is decoded in a separate process, so one
    that hangs or crashes the decoder fails alone (None: decoded in this process)."""

    id_type = "string"
    stage = "decode"

    def __init__(self, folder: data.VideoFolder, decode_timeout: float | None = None):
        if len(folder) != len(folder.paths):  # one centre clip per video
            raise OptionError(f"folder source {folder!r} must give one clip per video")
        super().__init__(len(folder), folder.clip_shape, folder.__getitem__, ())
        self._paths, self._timeout = folder.paths, decode_timeout
        self._names = [path.relative_to(folder.root).as_posix() for path in folder.paths]
        self._labels = folder.clip_labels

    def clip_id(self, index: int) -> str:
        return f"{self._names[index]}#0"

    def read(self, indices: Sequence[int]) -> ClipBatch:
        video = np.zeros((len(indices), *self.clip_shape), np.uint8)
        failed = {}
        for row, index in enumerate(indices):
            try:
                path = self._paths[int(index)]
                clip = decode_in_worker(path, self._timeout, self._example, int(index))
                data.refuse_still(clip["video"], path)  # no motion scores for a still
                video[row] = clip["video"]
            except DataError as e:
                failed[row] = str(e)
        return ClipBatch(video, self._labels[np.asarray(indices, np.int64)], {}, failed)


class FlowMaskedSource(ClipSource):
    """``source``'s clips with ``truth["mask"]`` from optical flow
    (:func:`~selrel_jax.metrics.flow_motion_mask` of each clip read, ``min_flow``, the
    default Farneback parameters), in place of any mask the dataset has: the motion
    columns of videos without ground truth. Clips that failed to read get no mask."""

    def __init__(self, source: ClipSource, min_flow: float):
        keys = [key for key in TRUTH_KEYS if key == "mask" or key in source.truth_keys]
        super().__init__(source.count, source.clip_shape, None, keys)
        self.id_type, self._source, self._min_flow = source.id_type, source, min_flow
        self.stage, self.left_out = f"{source.stage}, optical flow", source.left_out

    def clip_id(self, index: int) -> Any:
        return self._source.clip_id(index)

    def read(self, indices: Sequence[int]) -> ClipBatch:
        batch = self._source.read(indices)
        mask = np.zeros(batch.video.shape[:4], bool)
        read = [row for row in range(len(indices)) if row not in batch.failed]
        if read:
            mask[read] = metrics.flow_motion_mask(batch.video[read], min_flow=self._min_flow)
        return dataclasses.replace(batch, truth={**batch.truth, "mask": mask})


def _check_clip_size(dataset: str, have: Sequence[int], info: ModelInfo) -> None:
    if tuple(have) != info.clip_size:
        raise ShapeError(
            f"{dataset} clips are {tuple(have)} (T, H, W) but the model takes {info.clip_size}"
        )


def _generated(settings: SweepSettings, config: str, info: ModelInfo) -> ClipSource:
    cfg = synthetic_motion.get_config(config or "default")
    _check_clip_size(settings.dataset, (cfg.frames, cfg.height, cfg.width), info)
    count = data.cap_limit(settings.limit, cfg.split_sizes[settings.split], settings.dataset,
                           settings.split)  # fmt: skip
    seed, split = settings.data_seed, settings.split

    def example(index: int) -> dict[str, Any]:
        return synthetic_motion.generate_example(cfg, split, seed, index)

    shape = (cfg.frames, cfg.height, cfg.width, 3)
    return ClipSource(count, shape, example, TRUTH_KEYS)


def _indexed(settings: SweepSettings, info: ModelInfo, data_dir: Any) -> ClipSource:
    source = data.load_source(settings.dataset, settings.split, data_dir=data_dir,
                              limit=settings.limit)  # fmt: skip
    count = data.cap_limit(settings.limit, len(source), settings.dataset, settings.split)
    if count == 0:
        raise DataError(f"dataset {settings.dataset!r} split {settings.split!r} is empty")
    first = source[0]
    shape = np.shape(first["video"])
    _check_clip_size(settings.dataset, shape[:3], info)
    keys = [key for key in TRUTH_KEYS if key in first]
    return ClipSource(count, shape, source.__getitem__, keys)


def _folder_videos(settings: SweepSettings, path: str) -> tuple[list[str], dict[str, int]]:
    """The videos of the sweep's split of folder ``path`` (the first ``limit``), and how
    many each other split holds."""
    if settings.split == ALL_VIDEOS:
        videos, left_out = data.every_video(path), {}
    else:
        splits = data.folder_splits(path)
        videos = splits[settings.split]
        left_out = {name: len(v) for name, v in splits.items() if name != settings.split}
    videos = videos[: data.cap_limit(settings.limit, len(videos), settings.dataset, settings.split)]
    if not videos:
        raise DataError(
            f"the {settings.split} split of folder {path} is empty (validation and test take "
            "a slice of each class with at least 2 videos; see folder_splits); sweep every "
            "video with split 'all' (--split all)"
            if settings.split != ALL_VIDEOS
            else f"folder {path} holds no videos ({', '.join(data.VIDEO_EXTENSIONS)})"
        )
    return videos, left_out


def _folder(
    settings: SweepSettings, path: str, info: ModelInfo, decode_timeout: float | None
) -> ClipSource:
    videos, left_out = _folder_videos(settings, path)
    every = settings.split == ALL_VIDEOS
    try:
        folder = data.VideoFolder(
            path, clip_length=info.clip_length, frame_step=info.frame_step,
            size=info.resize_side, crop=info.crop_size, class_names=info.class_names,
            videos=videos, unlabelled=every,
        )  # fmt: skip
    except OptionError as e:  # a folder that is not a class: there is a split for that
        raise OptionError(f"{e}; or sweep every video, whatever its folder, with split 'all' "
                          "(--split all)") from None  # fmt: skip
    if every and settings.target == "label":
        _refuse_unlabelled(folder, path, info)
    source = FolderClipSource(folder, decode_timeout)
    source.left_out = left_out
    return source


def _refuse_unlabelled(folder: data.VideoFolder, path: str, info: ModelInfo) -> None:
    """OptionError if a video has no label to explain: its folder is no class."""
    unlabelled = [p for p, label in zip(folder.paths, folder.labels, strict=True)
                  if label == data.UNLABELLED]  # fmt: skip
    if unlabelled:
        raise OptionError(
            f"{len(unlabelled)} of the {len(folder.paths)} videos in {path} have no label to "
            f"explain (e.g. {unlabelled[0]}: its folder is not a class of the model); use "
            f"target 'predicted' (--target predicted), or put each video in a folder named "
            f"after its class ({len(info.class_names)} classes: {listed(info.class_names)})"
        )


def open_source(
    settings: SweepSettings,
    info: ModelInfo,
    data_dir: str | os.PathLike | None = None,
    decode_timeout: float | None = None,
) -> ClipSource:
    """The clips of ``settings``' dataset split, cut to ``info``'s clip size (folders) or
    checked against it (others), the first ``settings.limit`` of them.

    synthetic_motion with ``data_seed`` is generated clip by clip (no cache), without
    one it is read from the TFDS cache in ``data_dir`` (built on first use), as are
    other TFDS names; a ``folder:PATH`` split is :func:`~selrel_jax.data.folder_splits`'s,
    its classes the model's, each video decoded in a separate process stopped after
    ``decode_timeout`` seconds (None: in this process). With ``settings.motion_mask``
    ``"flow"`` each clip's motion mask is its optical flow's (:class:`FlowMaskedSource`);
    OptionError naming the ``flow`` extra if OpenCV is missing."""
    source = _dataset_source(settings, info, data_dir, decode_timeout)
    if settings.motion_mask == "flow":
        flow_available()
        return FlowMaskedSource(source, settings.flow_min_flow)
    return source


def flow_available() -> None:
    """OptionError naming the ``flow`` extra unless OpenCV can be imported."""
    _flow._cv2()


def _dataset_source(
    settings: SweepSettings, info: ModelInfo, data_dir: Any, decode_timeout: float | None
) -> ClipSource:
    kind, argument = data.parse_dataset(settings.dataset)
    if kind == "folder":
        return _folder(settings, argument, info, decode_timeout)
    if kind == "synthetic_motion":
        if info.num_classes < len(synthetic_motion.CLASS_NAMES):
            raise OptionError(
                f"{settings.dataset} has {len(synthetic_motion.CLASS_NAMES)} classes but model "
                f"{settings.model!r} has {info.num_classes}"
            )
        if settings.data_seed is not None:
            return _generated(settings, argument, info)
    if data_dir is not None:  # only read from (a cache may be read-only), but a directory
        writable_directory(data_dir, "data_dir", DataError, writable=False)
    return _indexed(settings, info, data_dir)
