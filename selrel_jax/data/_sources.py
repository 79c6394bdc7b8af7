"""Random-access sources of examples: the TFDS cache and dataset names."""

from __future__ import annotations

import contextlib
import os
import pathlib
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from selrel_jax._checks import one_of
from selrel_jax.errors import DataError, OptionError

if TYPE_CHECKING:
    from selrel_jax.data.synthetic_motion import MotionConfig

#: The environment variable naming where TFDS datasets are built and read.
DATA_DIR_ENV = "SELREL_DATA_DIR"


def default_data_dir() -> pathlib.Path:
    """Where TFDS datasets are built: ``$SELREL_DATA_DIR``, else the user's cache.

    The cache is ``$XDG_CACHE_HOME/selrel_jax/tensorflow_datasets`` (``~/.cache`` when
    ``XDG_CACHE_HOME`` is unset).
    """
    env = os.environ.get(DATA_DIR_ENV)
    if env:
        return pathlib.Path(env).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return pathlib.Path(cache) / "selrel_jax" / "tensorflow_datasets"


class _LabelAsInt32(Sequence):
    """A TFDS data source whose ``label`` comes out as int32, like ``generate_split``."""

    def __init__(self, source: Any):
        self._source = source

    def __len__(self) -> int:
        return len(self._source)

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        example = dict(self._source[index])
        example["label"] = np.int32(example["label"])
        return example

    def __getitems__(self, indices: Sequence[int]) -> list[dict[str, np.ndarray]]:
        return [self[i] for i in indices]

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._source!r})"


def synthetic_motion_builder(
    config: str | MotionConfig = "default", data_dir: str | os.PathLike | None = None
):
    """The (not yet prepared) TFDS builder of ``synthetic_motion/<config>``.

    ``config`` is a registered config name or your own
    :class:`~selrel_jax.data.synthetic_motion.MotionConfig` (size, frame count, split
    sizes, seed...), built under its ``name``. ``data_dir`` defaults to
    :func:`default_data_dir`.

    Examples:
        Your own config (here a small one), built on first use (generated, not
        downloaded):

        >>> import dataclasses
        >>> from selrel_jax.data import synthetic_motion_builder
        >>> from selrel_jax.data.synthetic_motion import CONFIGS
        >>> small = dataclasses.replace(
        ...     CONFIGS["tiny"], name="small24", height=24, width=24,
        ...     split_sizes={"train": 4, "validation": 2, "test": 2},
        ... )
        >>> builder = synthetic_motion_builder(small, data_dir="tfds")
        >>> builder.download_and_prepare()
        Generating synthetic_motion/small24 (8 clips; made by the procedural generator) in ...
        Generated synthetic_motion/small24 in ...; later runs read it from there.
        >>> source = builder.as_data_source("test")
        >>> len(source), source[0]["video"].shape
        (2, (8, 24, 24, 3))
    """
    from selrel_jax.data.synthetic_motion import CONFIGS, MotionConfig, get_config
    from selrel_jax.data.synthetic_motion.synthetic_motion_dataset_builder import (
        Builder,
        SyntheticMotionConfig,
    )

    root = pathlib.Path(data_dir).expanduser() if data_dir is not None else default_data_dir()
    if isinstance(config, MotionConfig):
        if config.name in CONFIGS and CONFIGS[config.name] != config:
            raise OptionError(
                f"custom MotionConfig named {config.name!r} differs from the registered "
                "config of that name; give it another name"
            )
        return Builder(config=SyntheticMotionConfig(config), data_dir=os.fspath(root))
    get_config(config)  # a registered name
    return Builder(config=config, data_dir=os.fspath(root))


class GeneratedExamples(Sequence):
    """The first ``count`` examples of a synthetic_motion split under ``seed``, each
    generated when read: what the TFDS cache holds at those indices (with the config's
    own seed), without building it."""

    verb = "generate"

    def __init__(self, config: MotionConfig, split: str, seed: int, count: int):
        self._config, self._split, self._seed, self._count = config, split, seed, count

    def __len__(self) -> int:
        return self._count

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        from selrel_jax.data.synthetic_motion import generate_example

        if not 0 <= index < self._count:
            raise IndexError(f"example {index} out of range for {self._count} examples")
        return generate_example(self._config, self._split, self._seed, int(index))

    def __repr__(self) -> str:
        return (
            f"GeneratedExamples({self._config.name!r}, {self._split!r}, seed={self._seed}, "
            f"{self._count} examples)"
        )


def load_source(
    name: str, split: str, data_dir: str | os.PathLike | None = None, limit: int | None = None
) -> Sequence:
    """Random-access source (``len`` and ``[i]``) of example dicts.

    ``name`` is ``"synthetic_motion"`` or ``"synthetic_motion/<config>"`` (any config of
    ``synthetic_motion.CONFIGS``): built into ``data_dir`` (default
    :func:`default_data_dir`) on first use, then read with ``tfds``'s array_record data
    source; each example is ``{"video": uint8 (T,H,W,3), "label": int32, "mask": bool
    (T,H,W), "boxes": float32 (T,4), "static_mask": bool (T,H,W)}``. With ``limit`` K
    and no built cache, only the first K examples are generated, each when read (the
    same examples as the cache's), and nothing is written. Any other
    name is passed to ``tfds.data_source(name, split=split, data_dir=data_dir)``, which
    needs a dataset already prepared in array_record format.

    Examples:
        >>> from selrel_jax.data import load_source
        >>> source = load_source("synthetic_motion/tiny", "train", data_dir="tfds")
        >>> len(source), source[0]["video"].shape
        (48, (8, 32, 32, 3))
    """
    from selrel_jax.data.synthetic_motion import SPLITS

    base, _, config = name.partition("/")
    if base == "synthetic_motion":
        one_of("split", split, SPLITS)
        builder = synthetic_motion_builder(config or "default", data_dir)
        motion = builder.builder_config.motion
        # is_prepared() alone logs a warning about a folder that is not there
        if limit is not None and not (builder.data_path.exists() and builder.is_prepared()):
            count = min(limit, motion.split_sizes[split])
            return GeneratedExamples(motion, split, motion.seed, count)
        # tfds prints its build messages on stdout; keep stdout for results (CLI JSON).
        with contextlib.redirect_stdout(sys.stderr):
            builder.download_and_prepare()
        return _LabelAsInt32(builder.as_data_source(split))
    import tensorflow_datasets as tfds

    try:
        return tfds.data_source(
            name,
            split=split,
            data_dir=os.fspath(data_dir) if data_dir is not None else None,
            download=False,
        )
    except Exception as e:  # tfds raises many types; report one clear error
        first_line = str(e).strip().splitlines()[0].rstrip(" :.") if str(e).strip() else ""
        raise DataError(
            f"cannot load dataset {name!r} split {split!r} as a random-access source "
            f"({type(e).__name__}: {first_line}); it must be a TFDS dataset prepared in "
            "array_record format (TensorFlow-only builders: load_tfds_videos, extra [tf])"
        ) from e


def load_tfds_videos(
    name: str,
    split: str,
    *,
    data_dir: str | os.PathLike | None = None,
    download: bool = True,
    **load_kwargs: Any,
):
    """Iterate a TFDS video builder that needs TensorFlow (e.g. ``"ucf101"``).

    Optional path, for builders whose ``Video`` features and tfrecord files can only be
    read by ``tfds.load``: install the ``[tf]`` extra (``pip install "selrel-jax[tf]"``).
    Returns ``tfds.as_numpy(tfds.load(name, split=split, ...))``: an iterable of NumPy
    example dicts (for ucf101: ``{"video": uint8 (T,H,W,3), "label": int64}``); cut
    clips with :func:`clip_indices` and :func:`center_crop`. ``data_dir`` defaults to
    :func:`default_data_dir`; ``load_kwargs`` go to ``tfds.load``.

    Examples:
        Skipped as a doctest: it needs TensorFlow and downloads UCF-101 (6.5 GB).

        >>> from selrel_jax.data import clip_indices, load_tfds_videos
        >>> for example in load_tfds_videos("ucf101/ucf101_1_256", "test"):  # doctest: +SKIP
        ...     frames = example["video"][clip_indices(len(example["video"]), 16)[0]]
    """
    try:
        import tensorflow  # noqa: F401
    except ImportError as e:
        raise DataError(
            f"dataset {name!r} needs TensorFlow (tfds.load); install it with "
            "pip install 'selrel-jax[tf]'"
        ) from e
    import tensorflow_datasets as tfds

    root = pathlib.Path(data_dir).expanduser() if data_dir is not None else default_data_dir()
    dataset = tfds.load(
        name, split=split, data_dir=os.fspath(root), download=download, **load_kwargs
    )
    return tfds.as_numpy(dataset)
