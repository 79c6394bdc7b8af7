"""Pixel normalisation: uint8 RGB clips in, float32 model inputs out."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from selrel_jax.errors import DTypeError, NonFiniteError, OptionError, ShapeError


def _per_channel(name: str, value: float | Sequence[float]) -> np.ndarray:
    arr = np.asarray(value, dtype=np.float64)
    if arr.ndim == 0:
        arr = np.repeat(arr, 3)
    if arr.shape != (3,):
        raise ShapeError(f"{name} must be a scalar or 3 values, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise NonFiniteError(f"{name} must be finite, got {arr.tolist()}")
    return arr


def normalize(
    clips_uint8,
    *,
    mean: float | Sequence[float],
    std: float | Sequence[float],
    value_range: tuple[float, float] = (0.0, 1.0),
    channel_order: str = "RGB",
):
    """Scale RGB uint8 clips to ``value_range``, reorder channels, then ``(x - mean) / std``.

    ``clips_uint8``: uint8 RGB, (N,T,H,W,3) or (T,H,W,3). Pixel 0 maps to
    ``value_range[0]`` and 255 to ``value_range[1]``; with ``channel_order="BGR"`` the
    channels are reversed; ``mean`` and ``std`` (scalars or 3 values, in that range and
    that channel order) are applied last. Works on NumPy and JAX arrays alike and returns
    float32 of the same shape.

    Examples:
        >>> import numpy as np
        >>> from selrel_jax.data import normalize
        >>> clips = np.full((1, 2, 4, 4, 3), 255, np.uint8)
        >>> x = normalize(clips, mean=(0.43, 0.40, 0.37), std=(0.23, 0.22, 0.22))
        >>> x.dtype, x[0, 0, 0, 0].round(3)
        (dtype('float32'), array([2.478, 2.727, 2.864], dtype=float32))
    """
    dtype = getattr(clips_uint8, "dtype", None)
    if dtype != np.uint8:
        raise DTypeError(f"clips must be uint8 RGB, got dtype {dtype}")
    shape = tuple(clips_uint8.shape)
    if len(shape) not in (4, 5) or shape[-1] != 3:
        raise ShapeError(f"clips must be (N,T,H,W,3) or (T,H,W,3), got shape {shape}")
    if channel_order not in ("RGB", "BGR"):
        raise OptionError(f"channel_order must be 'RGB' or 'BGR', got {channel_order!r}")
    lo, hi = (float(v) for v in value_range)
    if not (np.isfinite(lo) and np.isfinite(hi) and hi > lo):
        raise OptionError(f"value_range must be finite with high > low, got {value_range}")
    mean_arr = _per_channel("mean", mean)
    std_arr = _per_channel("std", std)
    if np.any(std_arr <= 0):
        raise OptionError(f"std must be > 0, got {std_arr.tolist()}")
    # One multiply-add per pixel: (p * (hi-lo)/255 + lo - mean) / std.
    scale = ((hi - lo) / 255.0 / std_arr).astype(np.float32)
    offset = ((lo - mean_arr) / std_arr).astype(np.float32)
    if channel_order == "BGR":
        clips_uint8 = clips_uint8[..., ::-1]
    return clips_uint8.astype(np.float32) * scale + offset
