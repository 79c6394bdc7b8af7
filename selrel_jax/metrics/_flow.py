"""Motion masks of real videos from optical flow, for data without ground truth.

OpenCV is optional (the ``flow`` extra: ``pip install -e ".[flow]"`` in the clone) and
imported on first use. This runs on the host, frame pair by frame pair: it is not traceable.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from selrel_jax._checks import describe, real
from selrel_jax.errors import DTypeError, OptionError, ShapeError
from selrel_jax.selective import _as_array, _resolve_layout

#: Farneback parameters used unless overridden (OpenCV's tutorial values).
FARNEBACK = {
    "pyr_scale": 0.5,
    "levels": 3,
    "winsize": 15,
    "iterations": 3,
    "poly_n": 5,
    "poly_sigma": 1.2,
    "flags": 0,
}


def _cv2():
    try:
        import cv2
    except ImportError:
        raise OptionError(
            'flow_motion_mask needs OpenCV, the flow extra: pip install -e ".[flow]" in the '
            "selrel_jax clone (opencv-python-headless)"
        ) from None
    return cv2


def _gray(frames: np.ndarray, cv2) -> np.ndarray:
    """(T, H, W) uint8 luma of (T, H, W) or (T, H, W, 1|3) RGB frames."""
    if frames.ndim == 3:
        return frames
    if frames.shape[-1] == 1:
        return frames[..., 0]
    return np.stack([cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in frames])


def _flow_mask_of_clip(gray: np.ndarray, cv2, options: dict, min_flow: float) -> np.ndarray:
    """Frame t moves where the flow from t-1 or to t+1 exceeds that pair's std."""
    moving = np.zeros(gray.shape, dtype=bool)
    for t in range(len(gray) - 1):
        flow = cv2.calcOpticalFlowFarneback(gray[t], gray[t + 1], None, **options)
        magnitude = np.hypot(flow[..., 0], flow[..., 1])
        pair = magnitude > max(float(magnitude.std()), min_flow)
        moving[t] |= pair
        moving[t + 1] |= pair
    return moving


def _checked_options(farneback: Mapping[str, Any] | None) -> dict:
    options = dict(FARNEBACK)
    unknown = sorted(set(farneback or {}) - set(FARNEBACK))
    if unknown:
        raise OptionError(
            f"flow_motion_mask: farneback has unknown keys {unknown}; known: {', '.join(FARNEBACK)}"
        )
    options.update(farneback or {})
    return options


def flow_motion_mask(
    video: Any,
    *,
    min_flow: float = 0.0,
    layout: str | None = None,
    farneback: Mapping[str, Any] | None = None,
) -> np.ndarray:
    """A motion mask from OpenCV's Farneback optical flow, as the authors measured it.

    For each pair of frames (t, t+1) of the grey video: ``m = |flow|`` (pixels per
    frame) and the pair moves where ``m > max(std(m), min_flow)`` (population std
    over that pair's H*W pixels). Frame t's mask is the union of its pairs with t-1
    and t+1 (the first and last frames have one), as the synthetic benchmark's
    exact mask. The authors' rule (``min_flow=0``) is relative: two identical frames
    still give a mask of their flow's noise (~0.01 px); ``min_flow=0.1`` or so keeps
    still stretches of a video empty.

    Args:
      video: uint8 frames: one clip (T, H, W, C) with C = 3 (RGB) or 1, or (T, H, W)
        grey; a batch (N, T, H, W, C), or (N, T, H, W) grey with ``layout="NTHW"``.
        T >= 2.
      min_flow: a floor on the threshold, in pixels per frame, >= 0.
      layout: how to read the axes (as :data:`~selrel_jax.selective.LAYOUTS`).
      farneback: overrides of :data:`FARNEBACK` (``cv2.calcOpticalFlowFarneback``'s
        keyword arguments).

    Returns:
      NumPy bool (T, H, W), or (N, T, H, W) for a batch.

    Raises:
      OptionError: OpenCV is not installed (``pip install -e ".[flow]"``).

    Examples:
        Needs OpenCV (``pip install -e ".[flow]"``).

        >>> from selrel_jax import data
        >>> from selrel_jax.metrics import flow_motion_mask
        >>> frames = data.read_video(data.sample_clip_path())[:16]   # uint8 (16, H, W, 3)
        >>> mask = flow_motion_mask(frames)
        >>> mask.shape, mask.dtype, bool(mask.any())
        ((16, 48, 48), dtype('bool'), True)
    """
    options = _checked_options(farneback)
    min_flow = real("flow_motion_mask: min_flow", min_flow, minimum=0.0)
    x = _as_array(video, "flow_motion_mask", "video")
    if np.dtype(x.dtype) != np.uint8:
        raise DTypeError(f"flow_motion_mask: video must be uint8 frames; got {describe(x)}")
    layout = _resolve_layout("flow_motion_mask", x, layout, name="video")
    x = np.asarray(x)
    clips = x if layout.startswith("N") else x[None]
    if "C" in layout and x.shape[-1] not in (1, 3):
        raise ShapeError(f"flow_motion_mask: video must have 1 or 3 channels; got {describe(x)}")
    if clips.shape[1] < 2:
        raise ShapeError(f"flow_motion_mask: flow needs T >= 2 frames; got {describe(x)}")
    cv2 = _cv2()
    masks = [_flow_mask_of_clip(_gray(c, cv2), cv2, options, min_flow) for c in clips]
    masks = np.stack(masks) if masks else np.zeros(clips.shape[:4], dtype=bool)
    return masks if layout.startswith("N") else masks[0]
