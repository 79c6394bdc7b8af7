"""The bundled sample clip: a few seconds rendered by the synthetic_motion generator."""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
from importlib import resources

import numpy as np

from selrel_jax.data import synthetic_motion as sm

SAMPLE_FILE = "sample_clip.mp4"
SAMPLE_INFO_FILE = "sample_clip.json"
SAMPLE_TRUTH_FILE = "sample_clip_truth.npz"

# What the shipped clip is: change these, rerun render_sample_clip, and commit the files.
_SAMPLE = dict(config="default", split="test", seed=2024, index=61, frames=32, fps=8.0)


def _sample_dir() -> pathlib.Path:
    return pathlib.Path(str(resources.files("selrel_jax.data") / "sample"))


def sample_clip_path() -> pathlib.Path:
    """Path of the bundled sample clip (mp4, 48x48, 32 frames at 8 fps).

    Examples:
        >>> from selrel_jax.data import read_video, sample_clip_info, sample_clip_path
        >>> frames = read_video(sample_clip_path())
        >>> frames.shape, frames.dtype
        ((32, 48, 48, 3), dtype('uint8'))
        >>> sample_clip_info()["class_name"]
        'translate_right'
    """
    return _sample_dir() / SAMPLE_FILE


def sample_clip_info() -> dict:
    """Metadata of the sample clip: class_name, label, class_names, fps, frames, size,
    and the generator arguments (config, split, seed, index) that reproduce it."""
    return json.loads((_sample_dir() / SAMPLE_INFO_FILE).read_text())


def sample_clip_truth() -> dict[str, np.ndarray]:
    """Ground truth of the sample clip: ``mask`` bool (T,H,W) and ``boxes`` float32 (T,4)."""
    with np.load(_sample_dir() / SAMPLE_TRUTH_FILE) as f:
        return {"mask": f["mask"].astype(bool), "boxes": f["boxes"]}


def sample_example() -> dict[str, np.ndarray]:
    """The sample clip's example, regenerated exactly (uncompressed frames)."""
    base = sm.get_config(_SAMPLE["config"])
    cfg = dataclasses.replace(base, name="sample", frames=_SAMPLE["frames"])
    return sm.generate_example(cfg, _SAMPLE["split"], _SAMPLE["seed"], _SAMPLE["index"])


def render_sample_clip(directory: str | os.PathLike) -> pathlib.Path:
    """Write the sample clip, its JSON metadata and its truth npz into ``directory``."""
    from selrel_jax.data._video import write_video

    directory = pathlib.Path(directory)
    example = sample_example()
    video = example["video"]
    # Near-lossless H.264 with full chroma: the clip should look to a model like the
    # uncompressed examples it was trained on.
    path = write_video(
        directory / SAMPLE_FILE,
        video,
        fps=_SAMPLE["fps"],
        codec="libx264",
        pixel_format="yuv444p",
        options={"crf": "4", "preset": "veryslow"},
    )
    label = int(example["label"])
    info = {
        "file": SAMPLE_FILE,
        "class_name": sm.CLASS_NAMES[label],
        "label": label,
        "class_names": list(sm.CLASS_NAMES),
        "frames": int(video.shape[0]),
        "height": int(video.shape[1]),
        "width": int(video.shape[2]),
        "fps": _SAMPLE["fps"],
        "generator": {
            "module": "selrel_jax.data.synthetic_motion",
            "config": _SAMPLE["config"],
            "frames": _SAMPLE["frames"],
            "split": _SAMPLE["split"],
            "seed": _SAMPLE["seed"],
            "index": _SAMPLE["index"],
        },
        "truth_file": SAMPLE_TRUTH_FILE,
    }
    (directory / SAMPLE_INFO_FILE).write_text(json.dumps(info, indent=2) + "\n")
    np.savez_compressed(directory / SAMPLE_TRUTH_FILE, mask=example["mask"], boxes=example["boxes"])
    return path
