"""TFDS builder for the synthetic_motion benchmark (package layout, no TensorFlow needed).

Features are plain ``tfds.features.Tensor`` s stored in ``array_record`` files, so the
dataset is built and read (``tfds.data_source`` / ``builder.as_data_source``) with NumPy
only. The examples are exactly those of
``synthetic_motion.generate_split(config, split, config.seed)``.
"""

from __future__ import annotations

import numpy as np
import tensorflow_datasets as tfds

from selrel_jax.data import synthetic_motion as sm


class SyntheticMotionConfig(tfds.core.BuilderConfig):
    """A :class:`tfds.core.BuilderConfig` wrapping one :class:`MotionConfig`."""

    def __init__(self, motion: sm.MotionConfig, **kwargs):
        super().__init__(name=motion.name, description=motion.description, **kwargs)
        self.motion = motion


class Builder(tfds.core.GeneratorBasedBuilder):
    """synthetic_motion: classes that only motion tells apart, with exact motion masks."""

    VERSION = tfds.core.Version("1.1.0")
    RELEASE_NOTES = {  # noqa: RUF012
        "1.0.0": "First release.",
        "1.1.0": (
            "Every config gains static_mask (all False without static objects); new "
            "configs distractors, biased_still, tiny_distractors, tiny_biased_still. The "
            "other features of the first four configs are byte for byte as in 1.0.0."
        ),
    }
    BUILDER_CONFIGS = [SyntheticMotionConfig(c) for c in sm.CONFIGS.values()]  # noqa: RUF012
    DEFAULT_CONFIG_NAME = "default"

    def __init__(self, **kwargs):
        kwargs.setdefault("file_format", "array_record")
        super().__init__(**kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        m = self.builder_config.motion
        t, h, w = m.frames, m.height, m.width
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict(
                {
                    "video": tfds.features.Tensor(
                        shape=(t, h, w, 3), dtype=np.uint8, encoding="bytes"
                    ),
                    "label": tfds.features.ClassLabel(names=list(sm.CLASS_NAMES)),
                    "mask": tfds.features.Tensor(shape=(t, h, w), dtype=np.bool_, encoding="zlib"),
                    "boxes": tfds.features.Tensor(shape=(t, 4), dtype=np.float32),
                    "static_mask": tfds.features.Tensor(
                        shape=(t, h, w), dtype=np.bool_, encoding="zlib"
                    ),
                }
            ),
            supervised_keys=("video", "label"),
            # Keep index order, so record i is generate_example(config, split, seed, i).
            disable_shuffling=True,
            homepage="https://github.com/selrel-jax/selrel_jax",
        )

    def _log_download_bytes(self) -> None:
        # tfds says "Downloading and preparing dataset": nothing is downloaded here.
        m = self.builder_config.motion
        print(f"Generating synthetic_motion/{m.name} ({sum(m.split_sizes.values())} clips; "
              f"made by the procedural generator) in {self.data_dir} ...")  # fmt: skip

    def _log_download_done(self) -> None:
        print(f"Generated synthetic_motion/{self.builder_config.motion.name} in "
              f"{self.data_dir}; later runs read it from there.")  # fmt: skip

    def _split_generators(self, dl_manager):
        del dl_manager  # procedural: nothing to download
        return {split: self._generate_examples(split) for split in sm.SPLITS}

    def _generate_examples(self, split: str):
        m = self.builder_config.motion
        for index in range(m.split_sizes[split]):
            example = sm.generate_example(m, split, m.seed, index)
            example["label"] = int(example["label"])
            yield index, example
