"""Frame sizes: the crop and resize options, the largest frames read, and centre crops."""

from __future__ import annotations

import numbers
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from selrel_jax._checks import positive_int
from selrel_jax.errors import DataError, OptionError, ShapeError

#: The largest frame a file may declare: 8K UHD (7680x4320) fits, and so does a 16384x4096
#: panorama. One RGB frame at the limit takes 192 MiB; FFmpeg itself refuses frames of about
#: 16256x16256 and more with unhelpful errors ("Device or resource busy").
MAX_FRAME_SIDE = 16384
#: The largest frame area a file may declare (8192 x 8192 pixels).
MAX_FRAME_PIXELS = 8192 * 8192


def crop_pair(value: Any, name: str = "crop") -> tuple[int, int]:
    """``value`` (an int or (height, width) of positive ints) as an (H, W) pair."""
    if isinstance(value, numbers.Integral) and not isinstance(value, bool | np.bool_):
        side = positive_int(name, value)
        return side, side
    if isinstance(value, Sequence | np.ndarray) and not isinstance(value, str | bytes):
        if len(value) == 2 and np.ndim(value[0]) == 0 and np.ndim(value[1]) == 0:
            return positive_int(f"{name} height", value[0]), positive_int(f"{name} width", value[1])
    raise OptionError(f"{name} must be a positive int or (height, width); got {value!r}")


def check_frame_size(path: str | os.PathLike, width: int, height: int, what: str) -> None:
    """Refuse frames over the size limits. ``what`` says where the size comes from
    (``"declares"``: a header, where 0 means "not stated"; ``"decodes to"``, ...)."""
    if width > MAX_FRAME_SIDE or height > MAX_FRAME_SIDE or width * height > MAX_FRAME_PIXELS:
        raise DataError(
            f"{path} {what} {width}x{height} frames, over the limit of {MAX_FRAME_SIDE} pixels "
            f"a side and {MAX_FRAME_PIXELS} in all (selrel_jax.data.MAX_FRAME_PIXELS)"
        )
    if what != "declares" and min(width, height) < 1:
        raise DataError(f"{path} {what} {width}x{height} frames")


def resized_shape(
    height: int, width: int, size: int | None, crop: tuple[int, int] | None
) -> tuple[int, int]:
    """(H, W) of a ``height`` x ``width`` frame resized for ``size`` and ``crop``.

    ``size`` None keeps the frame as it is. Otherwise the shorter side becomes ``size``
    (the aspect ratio kept), scaled up further where needed so the frame covers ``crop``.
    """
    if size is None:
        return height, width
    scale = size / min(height, width)
    if crop is not None:
        scale = max(scale, crop[0] / height, crop[1] / width)
    return max(1, round(height * scale)), max(1, round(width * scale))


def center_crop(frames: np.ndarray, crop: int | Sequence[int]) -> np.ndarray:
    """Central ``crop`` (int or (H, W)) of (..., H, W, C) frames; smaller frames are an error."""
    ch, cw = crop_pair(crop)
    h, w = frames.shape[-3], frames.shape[-2]
    if ch > h or cw > w:
        raise ShapeError(f"crop {(ch, cw)} is larger than the frames {(h, w)}")
    top, left = (h - ch) // 2, (w - cw) // 2
    return frames[..., top : top + ch, left : left + cw, :]
