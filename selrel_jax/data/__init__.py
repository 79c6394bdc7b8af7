"""Data: the synthetic motion benchmark, video files and frame folders, and grain input
pipelines.

Layout is NTHWC: clips are uint8 RGB (N, T, H, W, 3) until :func:`normalize` turns them
into float32 model inputs, with the normalisation passed in as parameters (data code
never imports models).

Examples:
    A split of the synthetic benchmark as a source (``load_source("synthetic_motion",
    "train")`` builds and reads the cached dataset instead), normalised, batched:

    >>> from selrel_jax import data
    >>> from selrel_jax.data import synthetic_motion
    >>> source = data.ArraySource(synthetic_motion.generate_split("tiny", "train", 0, 8))
    >>> clip = source[0]["video"]
    >>> clip.shape, clip.dtype
    ((8, 32, 32, 3), dtype('uint8'))
    >>> data.normalize(clip, mean=0.45, std=0.225).dtype
    dtype('float32')
    >>> loader = data.make_loader(source, batch_size=4, seed=0, mean=0.45, std=0.225,
    ...                           num_epochs=1)
    >>> [batch["video"].shape for batch in loader]
    [(4, 8, 32, 32, 3), (4, 8, 32, 32, 3)]

    A folder of videos, a class per sub-folder, and one video streamed frame by frame:

    >>> import pathlib
    >>> import shutil
    >>> from selrel_jax.data import sample_clip_path
    >>> for name in ("walk/a.mp4", "walk/b.mp4", "walk/c.mp4", "wave/a.mp4", "wave/b.mp4"):
    ...     path = pathlib.Path("videos", name)   # a class per folder, as UCF-101
    ...     path.parent.mkdir(parents=True, exist_ok=True)
    ...     _ = shutil.copy(sample_clip_path(), path)
    >>> clips, class_names = data.load_clips("folder:videos", "train", clip_size=(8, 32, 32))
    >>> clips.video.shape, class_names
    ((2, 8, 32, 32, 3), ('walk', 'wave'))
    >>> frames = data.iter_frames(sample_clip_path(), fps=4, size=32, crop=24)
    >>> next(frames).shape   # uint8, 4 frames per second of video
    (24, 24, 3)
"""

from selrel_jax._worker import DEFAULT_DECODE_TIMEOUT, DecodeWorker, decode_in_worker
from selrel_jax.data import synthetic_motion
from selrel_jax.data._clips import Clips, LazyVideos, cap_limit, load_clips, parse_dataset
from selrel_jax.data._folder import (
    SPLIT_NAMES,
    UNLABELLED,
    VIDEO_EXTENSIONS,
    VideoFolder,
    class_folders,
    every_video,
    folder_splits,
    read_split_file,
)
from selrel_jax.data._geometry import MAX_FRAME_PIXELS, MAX_FRAME_SIDE, center_crop
from selrel_jax.data._image_folder import IMAGE_EXTENSIONS
from selrel_jax.data._loader import ArraySource, make_loader
from selrel_jax.data._normalize import normalize
from selrel_jax.data._order import batch_indices, batches_per_epoch, epoch_order
from selrel_jax.data._reader import VideoProbe, iter_frames, probe_video, read_frames
from selrel_jax.data._sample import (
    render_sample_clip,
    sample_clip_info,
    sample_clip_path,
    sample_clip_truth,
    sample_example,
)
from selrel_jax.data._sources import (
    DATA_DIR_ENV,
    default_data_dir,
    load_source,
    load_tfds_videos,
    synthetic_motion_builder,
)
from selrel_jax.data._video import (
    SAMPLING_MODES,
    clip_indices,
    count_frames,
    read_video,
    refuse_still,
    video_fps,
    write_video,
)

__all__ = [
    "DATA_DIR_ENV",
    "DEFAULT_DECODE_TIMEOUT",
    "IMAGE_EXTENSIONS",
    "MAX_FRAME_PIXELS",
    "MAX_FRAME_SIDE",
    "SAMPLING_MODES",
    "SPLIT_NAMES",
    "UNLABELLED",
    "VIDEO_EXTENSIONS",
    "ArraySource",
    "Clips",
    "DecodeWorker",
    "LazyVideos",
    "VideoFolder",
    "VideoProbe",
    "batch_indices",
    "batches_per_epoch",
    "cap_limit",
    "center_crop",
    "class_folders",
    "clip_indices",
    "count_frames",
    "decode_in_worker",
    "default_data_dir",
    "epoch_order",
    "every_video",
    "folder_splits",
    "iter_frames",
    "load_clips",
    "load_source",
    "load_tfds_videos",
    "make_loader",
    "normalize",
    "parse_dataset",
    "probe_video",
    "read_frames",
    "read_split_file",
    "read_video",
    "refuse_still",
    "render_sample_clip",
    "sample_clip_info",
    "sample_clip_path",
    "sample_clip_truth",
    "sample_example",
    "synthetic_motion",
    "synthetic_motion_builder",
    "video_fps",
    "write_video",
]
