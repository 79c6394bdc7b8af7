"""Relevance to colour: one colour scale per video, colour maps, overlays on frames."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import jax.numpy as jnp
import matplotlib
import numpy as np
from matplotlib.colors import Colormap

from selrel_jax._checks import describe, positive_int, real
from selrel_jax.errors import DTypeError, NonFiniteError, OptionError, ShapeError

#: Colour maps used when ``cmap=None``: signed relevance on a diverging map whose
#: centre (zero) is near white, magnitudes on a sequential one.
SIGNED_CMAP = "RdBu_r"
#: The colour map of magnitudes (``signed=False``) when ``cmap=None``.
MAGNITUDE_CMAP = "inferno"
#: Entries of the colour lookup table; odd, so that zero hits the diverging map's centre.
_LUT_SIZE = 511
#: Auto upscale: the smallest integer factor that makes the shorter frame side at
#: least this many pixels, so labels and colour bars stay readable next to it.
MIN_DISPLAY_SIDE = 160
#: ITU-R BT.601 luma weights: the greyscale a heat map is blended onto.
_LUMA = np.array([0.299, 0.587, 0.114])


def check_frames(fn: str, frames: Any, name: str = "frames") -> np.ndarray:
    """uint8 RGB frames (T, H, W, 3) with T, H, W >= 1, as a NumPy array."""
    if not (hasattr(frames, "shape") and hasattr(frames, "dtype")):
        frames = np.asarray(frames)
    if frames.dtype != np.uint8:
        raise DTypeError(f"{fn}: {name} must be uint8 RGB (T, H, W, 3); got {describe(frames)}")
    if frames.ndim != 4 or frames.shape[-1] != 3 or 0 in frames.shape:
        raise ShapeError(f"{fn}: {name} must be uint8 RGB (T, H, W, 3); got {describe(frames)}")
    return np.asarray(frames)


def finite_float_array(fn: str, name: str, x: Any) -> np.ndarray:
    """A real floating NumPy array (bfloat16 and float16 become float32) without NaN/Inf."""
    dtype = getattr(x, "dtype", None)
    try:
        x = np.asarray(x)
    except ValueError:  # ragged nesting
        raise ShapeError(f"{fn}: {name} must be an array; got a ragged nested list") from None
    if not jnp.issubdtype(dtype if dtype is not None else x.dtype, jnp.floating):
        raise DTypeError(f"{fn}: {name} must be a real floating array; got {describe(x)}")
    x = x.astype(np.promote_types(x.dtype, np.float32) if x.dtype.itemsize > 2 else np.float32)
    if x.size == 0:
        raise ShapeError(f"{fn}: {name} is empty: {describe(x)}")
    bad = x.size - int(np.count_nonzero(np.isfinite(x)))
    if bad:
        raise NonFiniteError(f"{fn}: {name} holds {bad} NaN or infinite values ({describe(x)})")
    return x


def channel_summed(fn: str, name: str, relevance: Any, ranks: tuple[int, ...] = (3, 4)) -> Any:
    """A map as displayed: (T, H, W), the channels of (T, H, W, C) summed (and, with
    rank 5 allowed, (N, T, H, W, C) -> (N, T, H, W))."""
    x = finite_float_array(fn, name, relevance)
    if x.ndim not in ranks:
        wanted = {3: "(T, H, W)", 4: "(T, H, W, C)", 5: "(N, T, H, W, C)"}
        raise ShapeError(
            f"{fn}: {name} must be {' or '.join(wanted[r] for r in ranks)}; got {describe(x)}"
        )
    return x.sum(axis=-1) if x.ndim in (4, 5) else x


def check_scale(fn: str, scale: Any) -> float:
    if hasattr(scale, "dtype"):  # NumPy or JAX scalar
        if np.ndim(scale) != 0:
            raise OptionError(f"{fn}: scale must be a number; got an array of {describe(scale)}")
        scale = np.asarray(scale).item()
    return real(f"{fn}: scale", scale, above=0.0)


def check_maps(fn: str, maps: Any) -> Mapping[str, Any]:
    if not isinstance(maps, Mapping) or not maps:
        got = "an empty dict" if isinstance(maps, Mapping) else f"a {type(maps).__name__}"
        raise OptionError(f"{fn}: maps must be a non-empty dict of label -> map; got {got}")
    for name in maps:
        if not isinstance(name, str):
            raise OptionError(f"{fn}: maps' keys are labels and must be str; got {name!r}")
    return maps


def auto_upscale(fn: str, upscale: int | None, height: int, width: int) -> int:
    if upscale is None:
        return max(1, math.ceil(MIN_DISPLAY_SIDE / min(height, width)))
    return positive_int(f"{fn}: upscale", upscale)


def upscaled(images: np.ndarray, factor_h: int, factor_w: int | None = None) -> np.ndarray:
    """(T, H, W, ...) nearest-neighbour upsampled by integer factors in H and W."""
    factor_w = factor_h if factor_w is None else factor_w
    if factor_h > 1:
        images = np.repeat(images, factor_h, axis=1)
    return np.repeat(images, factor_w, axis=2) if factor_w > 1 else images


def resolve_cmap(fn: str, cmap: str | Colormap | None, signed: bool) -> Colormap:
    if cmap is None:
        cmap = SIGNED_CMAP if signed else MAGNITUDE_CMAP
    if isinstance(cmap, Colormap):
        return cmap
    if not isinstance(cmap, str) or cmap not in matplotlib.colormaps:
        raise OptionError(f"{fn}: cmap must be a matplotlib colormap or its name; got {cmap!r}")
    return matplotlib.colormaps[cmap]


def lookup_table(cmap: Colormap) -> np.ndarray:
    """(511, 3) uint8 colours of ``cmap`` from its start to its end."""
    rgba = cmap(np.linspace(0.0, 1.0, _LUT_SIZE))
    return np.round(np.asarray(rgba)[:, :3] * 255).astype(np.uint8)


def lut_positions(values: np.ndarray, scale: float, signed: bool) -> np.ndarray:
    """Lookup-table indices: -scale .. scale (signed) or |v| in 0 .. scale, clipped."""
    t = np.clip(values / scale, -1.0, 1.0)
    u = (t + 1.0) / 2.0 if signed else np.abs(t)
    return np.rint(u * (_LUT_SIZE - 1)).astype(np.intp)


def color_scale(*maps: Any, percentile: float = 99.0) -> float:
    """One colour scale for maps shown side by side: a high percentile of |R|.

    Each map is a relevance map (T, H, W), (T, H, W, C) or (N, T, H, W, C), its
    channels summed as :func:`overlay` shows them. The scale is the ``percentile``
    of the nonzero magnitudes of all maps together, taken with NumPy's
    ``method="lower"`` (an actual value, never interpolated towards the maximum),
    so a single outlier voxel never sets it for ``percentile < 100``; 1.0 when
    every value is 0. Pass the raw, selective and static maps of one video
    together so that equal values get equal colours in every panel.

    Examples:
        >>> import numpy as np
        >>> import selrel_jax as sr
        >>> from selrel_jax import data, viz
        >>> frames = data.read_video(data.sample_clip_path())[:8]   # uint8 (8, 48, 48, 3)
        >>> rel = frames.astype(np.float32) / 255 - 0.5             # stands in for relevance
        >>> sel = np.asarray(sr.selective_relevance(rel, sigma=1.0))
        >>> static = rel - sel
        >>> scale = viz.color_scale(rel, sel, static)
        >>> isinstance(scale, float) and scale > 0
        True
    """
    if not maps:
        raise OptionError("color_scale: give at least one map")
    percentile = real("color_scale: percentile", percentile, above=0.0)
    if percentile > 100:
        raise OptionError(f"color_scale: percentile must be in (0, 100]; got {percentile!r}")
    magnitudes = [
        np.abs(channel_summed("color_scale", f"map {i}", m, (3, 4, 5))).ravel()
        for i, m in enumerate(maps)
    ]
    nonzero = np.concatenate(magnitudes)
    nonzero = nonzero[nonzero > 0]
    if nonzero.size == 0:
        return 1.0
    return float(np.percentile(nonzero, percentile, method="lower"))


def colorize(
    values: Any, *, scale: float, signed: bool = True, cmap: str | Colormap | None = None
) -> np.ndarray:
    """Colours of a map's values: uint8 RGB of shape ``values.shape + (3,)``.

    Signed (default): -scale .. 0 .. scale runs through a diverging map (default
    ``"RdBu_r"``: blue, white at 0, red); ``signed=False``: |value| from 0 to scale
    through a sequential map (default ``"inferno"``). Values beyond the scale take
    the end colours. Works elementwise on any shape: sum channels first to show a
    (T, H, W, C) relevance map as :func:`overlay` does.

    Examples:
        >>> import numpy as np
        >>> import selrel_jax as sr
        >>> from selrel_jax import data, viz
        >>> frames = data.read_video(data.sample_clip_path())[:8]   # uint8 (8, 48, 48, 3)
        >>> rel = frames.astype(np.float32) / 255 - 0.5             # stands in for relevance
        >>> sel = np.asarray(sr.selective_relevance(rel, sigma=1.0))
        >>> static = rel - sel
        >>> rgb = viz.colorize(rel.sum(-1), scale=viz.color_scale(rel))
        >>> rgb.shape, rgb.dtype
        ((8, 48, 48, 3), dtype('uint8'))
    """
    x = finite_float_array("colorize", "values", values)
    scale = check_scale("colorize", scale)
    lut = lookup_table(resolve_cmap("colorize", cmap, bool(signed)))
    return lut[lut_positions(x, scale, bool(signed))]


def _fit_map(fn: str, name: str, relevance: Any, frames: np.ndarray) -> tuple[np.ndarray, int, int]:
    """``(map (T, h, w), fh, fw)``: the channel-summed map and the integer factors
    from its (h, w) to the frames' (H, W)."""
    m = channel_summed(fn, name, relevance)
    (t, h, w), (ft, fh, fw) = m.shape, frames.shape[:3]
    if t != ft or fh % h or fw % w:
        raise ShapeError(
            f"{fn}: {name} {describe(m)} does not fit frames {describe(frames)}: the same T, "
            f"and H, W an integer multiple of the map's (read_video(size=, crop=) as the model)"
        )
    return m, fh // h, fw // w


def blend(grey: np.ndarray, m: np.ndarray, factors, scale, alpha, signed, lut) -> np.ndarray:
    """uint8 (T, H, W, 3): ``grey`` (T, H, W) under the map's colours, each voxel's
    opacity ``alpha * min(|R| / scale, 1)`` (so a zero voxel leaves the frame grey)."""
    colors = upscaled(lut[lut_positions(m, scale, signed)], *factors)
    weight = upscaled(alpha * np.clip(np.abs(m) / scale, 0.0, 1.0), *factors)[..., None]
    out = grey[..., None] * (1.0 - weight) + colors * weight
    return np.rint(out).astype(np.uint8)


def greyscale(frames: np.ndarray) -> np.ndarray:
    """float (T, H, W) luma of uint8 RGB frames."""
    return frames @ _LUMA


def overlay(
    frames: Any,
    relevance: Any,
    *,
    scale: float,
    alpha: float = 0.7,
    signed: bool = True,
    cmap: str | Colormap | None = None,
) -> np.ndarray:
    """A relevance heat map blended on the greyscale frames: uint8 (T, H, W, 3).

    Args:
      frames: uint8 RGB (T, H, W, 3), the frames the model saw (or an integer
        multiple of their size).
      relevance: real floating (T, h, w) or (T, h, w, C), channels summed. (H, W)
        must be the map's (h, w) times integer factors; each map voxel then covers a
        block of pixels (nearest neighbour, no blur). Other sizes raise ShapeError:
        read the frames with the model's ``size=`` and ``crop=``.
      scale: colour scale (> 0), e.g. :func:`color_scale` of all maps shown together.
      alpha: opacity of the strongest colour, in [0, 1]. A voxel's opacity is
        ``alpha * min(|R| / scale, 1)``, so where the map is 0 the frame stays grey.
      signed: as :func:`colorize`.
      cmap: as :func:`colorize`.

    Examples:
        >>> import numpy as np
        >>> import selrel_jax as sr
        >>> from selrel_jax import data, viz
        >>> frames = data.read_video(data.sample_clip_path())[:8]   # uint8 (8, 48, 48, 3)
        >>> rel = frames.astype(np.float32) / 255 - 0.5             # stands in for relevance
        >>> sel = np.asarray(sr.selective_relevance(rel, sigma=1.0))
        >>> static = rel - sel
        >>> video = viz.overlay(frames, rel, scale=viz.color_scale(rel, sel))
        >>> video.shape, video.dtype
        ((8, 48, 48, 3), dtype('uint8'))
    """
    frames = check_frames("overlay", frames)
    m, fh, fw = _fit_map("overlay", "relevance", relevance, frames)
    scale = check_scale("overlay", scale)
    alpha = check_alpha("overlay", alpha)
    lut = lookup_table(resolve_cmap("overlay", cmap, bool(signed)))
    return blend(greyscale(frames), m, (fh, fw), scale, alpha, bool(signed), lut)


def check_alpha(fn: str, alpha: Any) -> float:
    alpha = real(f"{fn}: alpha", alpha, minimum=0.0)
    if alpha > 1:
        raise OptionError(f"{fn}: alpha must be in [0, 1]; got {alpha!r}")
    return alpha


def fit_maps(fn: str, frames: np.ndarray, maps: Mapping[str, Any]) -> dict[str, tuple]:
    """Every map checked against the frames: ``{name: (map, fh, fw)}``."""
    return {name: _fit_map(fn, f"maps[{name!r}]", m, frames) for name, m in maps.items()}


def checked_display(fn: str, frames: Any, maps: Any, scale: Any, alpha: Any) -> tuple:
    """``(frames, fitted maps, scale, alpha)`` of a multi-map picture, the scale
    :func:`color_scale` of all maps when None."""
    frames = check_frames(fn, frames)
    fitted = fit_maps(fn, frames, check_maps(fn, maps))
    scale = color_scale(*(m for m, _, _ in fitted.values())) if scale is None else scale
    return frames, fitted, check_scale(fn, scale), check_alpha(fn, alpha)
