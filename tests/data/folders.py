"""A tiny UCF-101-layout folder of videos for tests (not a test module)."""

from __future__ import annotations

import pathlib

import numpy as np

from selrel_jax import data

CLASSES = ("jump", "run", "sit")


def write_video_folder(root: pathlib.Path, per_class: int = 4, seed: int = 0) -> pathlib.Path:
    """``root/<class>/v_<k>.mp4`` for 3 classes: 6 frames of 20x24 noise with a class-coloured
    bar that moves right (jump), left (run) or stays (sit)."""
    rng = np.random.default_rng(seed)
    for c, cls in enumerate(CLASSES):
        for k in range(per_class):
            frames = rng.integers(0, 96, (6, 20, 24, 3), dtype=np.uint8)
            for t in range(6):
                x = (4 + (t if c == 0 else -t if c == 1 else 0) * 2) % 20
                frames[t, :, x : x + 4, c] = 255
            data.write_video(root / cls / f"v_{k}.mp4", frames, fps=8)
    return root
