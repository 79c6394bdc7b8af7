"""Colours of relevance: the diverging map's centre at zero, one scale for every panel,
overlays that leave the frame grey where the map is zero."""

from __future__ import annotations

import matplotlib
import numpy as np
import pytest

import selrel_jax as sr
from selrel_jax import viz


def random_map(seed: int, shape) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(shape) * (rng.random(shape) < 0.5)).astype(np.float32)


def random_frames(seed: int, shape) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def test_colorize_zero_is_the_diverging_centre_and_the_sign_flips_the_hue():
    values = np.array([[-4.0, -1.0, 0.0, 1.0, 4.0, 9.0]], np.float32)
    rgb = viz.colorize(values, scale=4.0)
    assert rgb.shape == (1, 6, 3) and rgb.dtype == np.uint8
    centre = np.round(np.asarray(matplotlib.colormaps["RdBu_r"](0.5))[:3] * 255)
    np.testing.assert_array_equal(rgb[0, 2], centre)
    assert rgb[0, 2].min() >= 240  # white-ish
    neg, pos = rgb[0, 1].astype(int), rgb[0, 3].astype(int)
    assert pos[0] > pos[2] and neg[2] > neg[0]  # red above zero, blue below
    # Beyond the scale: the end colours; the ends are the map's ends.
    np.testing.assert_array_equal(rgb[0, 4], rgb[0, 5])
    np.testing.assert_array_equal(
        rgb[0, [0, 4]],
        np.round(np.asarray(matplotlib.colormaps["RdBu_r"]([0.0, 1.0]))[:, :3] * 255),
    )


def test_colorize_magnitudes_and_custom_colormaps():
    values = np.array([-2.0, 0.0, 2.0], np.float32)
    rgb = viz.colorize(values, scale=2.0, signed=False)
    np.testing.assert_array_equal(rgb[0], rgb[2])  # magnitude only
    inferno = matplotlib.colormaps["inferno"]
    np.testing.assert_array_equal(rgb[1], np.round(np.asarray(inferno(0.0))[:3] * 255))
    by_object = viz.colorize(values, scale=2.0, cmap=matplotlib.colormaps["bwr"])
    np.testing.assert_array_equal(by_object, viz.colorize(values, scale=2.0, cmap="bwr"))
    assert by_object[1].min() >= 254  # bwr's centre is white (to its 256-entry quantisation)


def test_colorize_is_monotone_in_value():
    values = np.linspace(0, 1, 50, dtype=np.float32)
    reds = viz.colorize(values, scale=1.0).astype(int)
    assert (np.diff(reds[:, 2]) <= 0).all()  # blue fades out as the value grows


def test_color_scale_is_robust_to_one_outlier_and_shared_by_its_maps():
    rel = np.abs(random_map(1, (4, 8, 8)))
    outlier = rel.copy()
    outlier[0, 0, 0] = 1e6
    # One of the ordinary values sets the scale, never the outlier (even with few values).
    assert viz.color_scale(outlier) in set(rel.ravel()) and viz.color_scale(outlier) > 0
    assert viz.color_scale(outlier[:, :2, :2]) <= rel[:, :2, :2].max()
    # A value of the maps, never interpolated; the maps are pooled.
    assert viz.color_scale(rel) in set(rel.ravel())
    half = rel * 0.5
    assert viz.color_scale(rel, half) == viz.color_scale(np.concatenate([rel, half]))
    # Channels are summed as displayed; batches are allowed; zeros are ignored.
    with_channels = np.stack([rel, -2 * rel], -1)  # sums to -rel
    assert viz.color_scale(with_channels) == viz.color_scale(rel)
    assert viz.color_scale(with_channels[None]) == viz.color_scale(rel)
    assert viz.color_scale(np.zeros((3, 4, 4), np.float32)) == 1.0
    assert viz.color_scale(rel, percentile=100) == float(rel.max())


def test_overlay_keeps_frames_grey_where_the_map_is_zero():
    frames = random_frames(2, (3, 6, 6, 3))
    rel = random_map(3, (3, 6, 6, 2))
    rel[:, :3] = 0
    out = viz.overlay(frames, rel, scale=1.0, alpha=0.8)
    assert out.shape == frames.shape and out.dtype == np.uint8
    grey = np.rint(frames @ np.array([0.299, 0.587, 0.114])).astype(np.uint8)
    np.testing.assert_array_equal(out[:, :3], np.repeat(grey[:, :3, :, None], 3, -1))
    coloured = out[:, 3:][rel[:, 3:].sum(-1) != 0]
    assert (coloured.max(-1) != coloured.min(-1)).any()
    np.testing.assert_array_equal(
        viz.overlay(frames, rel, scale=1.0, alpha=0.0), np.repeat(grey[..., None], 3, -1)
    )


def test_overlay_at_full_opacity_shows_the_colour_of_strong_relevance():
    frames = random_frames(4, (2, 4, 4, 3))
    rel = np.full((2, 4, 4), 5.0, np.float32)
    out = viz.overlay(frames, rel, scale=2.0, alpha=1.0)
    np.testing.assert_array_equal(out, viz.colorize(rel, scale=2.0))


def test_overlay_upsamples_a_smaller_map_by_integer_factors():
    frames = random_frames(5, (3, 8, 12, 3))
    rel = random_map(6, (3, 4, 4))
    big = np.repeat(np.repeat(rel, 2, axis=1), 3, axis=2)
    np.testing.assert_array_equal(
        viz.overlay(frames, rel, scale=1.0), viz.overlay(frames, big, scale=1.0)
    )


FRAMES = random_frames(7, (3, 6, 6, 3))
MAP = random_map(8, (3, 6, 6))


@pytest.mark.parametrize(
    "frames, rel, kwargs, error, message",
    [
        (FRAMES.astype(np.float32), MAP, {}, sr.DTypeError, "frames must be uint8"),
        (FRAMES[..., :2], MAP, {}, sr.ShapeError, r"\(T, H, W, 3\)"),
        (FRAMES[0], MAP, {}, sr.ShapeError, r"\(T, H, W, 3\)"),
        (FRAMES[:0], MAP[:0], {}, sr.ShapeError, r"\(T, H, W, 3\)"),
        (FRAMES, MAP.astype(np.int32), {}, sr.DTypeError, "real floating"),
        (FRAMES, MAP[0], {}, sr.ShapeError, r"must be \(T, H, W\) or \(T, H, W, C\)"),
        (FRAMES, MAP[:2], {}, sr.ShapeError, "does not fit frames"),
        (FRAMES, MAP[:, :4], {}, sr.ShapeError, "integer multiple"),
        (FRAMES, np.where(MAP > 0, np.nan, MAP), {}, sr.NonFiniteError, "NaN or infinite"),
        (FRAMES, MAP, {"scale": 0.0}, sr.OptionError, "scale must be a finite number > 0"),
        (FRAMES, MAP, {"scale": -1.0}, sr.OptionError, "scale"),
        (FRAMES, MAP, {"scale": float("nan")}, sr.OptionError, "scale"),
        (FRAMES, MAP, {"scale": np.float32(np.inf)}, sr.OptionError, "scale"),
        (FRAMES, MAP, {"scale": "1"}, sr.OptionError, "scale"),
        (FRAMES, MAP, {"alpha": 1.5}, sr.OptionError, r"alpha must be in \[0, 1\]"),
        (FRAMES, MAP, {"cmap": "no_such_map"}, sr.OptionError, "cmap"),
    ],
)
def test_overlay_bad_input_raises_one_clear_line(frames, rel, kwargs, error, message):
    kwargs = {"scale": 1.0} | kwargs
    with pytest.raises(error, match=message) as info:
        viz.overlay(frames, rel, **kwargs)
    assert str(info.value).startswith("overlay: ") and "\n" not in str(info.value)


def test_scale_accepts_numpy_and_jax_scalars():
    import jax.numpy as jnp

    want = viz.colorize(MAP, scale=2.0)
    np.testing.assert_array_equal(viz.colorize(MAP, scale=np.float32(2.0)), want)
    np.testing.assert_array_equal(viz.colorize(MAP, scale=jnp.float32(2.0)), want)


@pytest.mark.parametrize(
    "maps, kwargs, error, message",
    [
        ((), {}, sr.OptionError, "at least one map"),
        ((MAP,), {"percentile": 0}, sr.OptionError, "percentile"),
        ((MAP,), {"percentile": 101}, sr.OptionError, "percentile"),
        ((MAP, MAP.astype(np.int64)), {}, sr.DTypeError, "map 1"),
        ((MAP[0],), {}, sr.ShapeError, "map 0"),
        ((np.full((3, 2, 2), np.inf, np.float32),), {}, sr.NonFiniteError, "map 0"),
    ],
)
def test_color_scale_bad_input(maps, kwargs, error, message):
    with pytest.raises(error, match=message):
        viz.color_scale(*maps, **kwargs)


def test_colorize_bad_input():
    with pytest.raises(sr.ShapeError, match="colorize: values must be an array; got a ragged"):
        viz.colorize([[1.0, 2.0], [3.0]], scale=1.0)
    with pytest.raises(sr.DTypeError, match="colorize: values"):
        viz.colorize(np.ones(3, np.uint8), scale=1.0)
    with pytest.raises(sr.NonFiniteError, match="colorize"):
        viz.colorize(np.array([np.nan], np.float32), scale=1.0)
    with pytest.raises(sr.OptionError, match="colorize: scale"):
        viz.colorize(MAP, scale=None)
