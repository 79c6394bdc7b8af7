"""Panels: the overlays side by side under their labels, one colour scale, text drawn once."""

from __future__ import annotations

import numpy as np
import pytest

import selrel_jax as sr
from selrel_jax import viz
from selrel_jax.viz._panels import _Layout
from tests.viz.test_color import random_frames, random_map


def _panel(out: np.ndarray, layout: _Layout, i: int) -> np.ndarray:
    top, left = layout.panel_top, layout.panel_left(i)
    return out[:, top : top + layout.panel_h, left : left + layout.panel_w]


def _layout_of(frames, count, factor, title=False, colorbar=True, caption=False) -> _Layout:
    h, w = frames.shape[1:3]
    return _Layout(h * factor, w * factor, count, title, colorbar, caption)


def test_panels_show_the_input_and_each_overlay_in_place():
    frames = random_frames(1, (5, 12, 10, 3))
    rel = random_map(2, (5, 12, 10, 3))
    sel = np.asarray(sr.selective_relevance(rel, 1.0))
    maps = {"relevance": rel, "selective": sel}
    out = viz.panels(frames, maps, scale=1.5, upscale=3, caption="predicted: waving")
    layout = _layout_of(frames, 3, 3, caption=True)
    assert out.shape == (5, layout.height, layout.width, 3) and out.dtype == np.uint8
    up = lambda x: np.repeat(np.repeat(x, 3, axis=1), 3, axis=2)  # noqa: E731
    np.testing.assert_array_equal(_panel(out, layout, 0), up(frames))
    for i, m in enumerate(maps.values(), start=1):
        np.testing.assert_array_equal(_panel(out, layout, i), up(viz.overlay(frames, m, scale=1.5)))


def test_static_parts_are_the_same_in_every_frame_and_hold_text_and_colour_bar():
    frames = random_frames(3, (4, 8, 8, 3))
    out = viz.panels(frames, {"a": random_map(4, (4, 8, 8))}, title="title", caption="caption")
    layout = _layout_of(frames, 2, viz.MIN_DISPLAY_SIDE // 8, title=True, caption=True)
    assert out.shape[1:3] == (layout.height, layout.width)
    outside = np.ones(out.shape[1:3], bool)
    for i in range(2):
        top, left = layout.panel_top, layout.panel_left(i)
        outside[top : top + layout.panel_h, left : left + layout.panel_w] = False
    assert (out[:, outside] == out[0, outside]).all()
    ink = (out[0] < 128).all(-1)  # dark text on white
    assert ink[: layout.margin + layout.row].any()  # title
    assert ink[layout.panel_top - layout.row : layout.panel_top].any()  # labels
    assert ink[layout.caption_top :].any()  # caption
    bar = out[0, layout.bar_top + layout.bar // 2, layout.margin : layout.width - layout.margin]
    middle = bar[len(bar) // 2]
    assert bar[0, 2] > bar[0, 0] and bar[-1, 0] > bar[-1, 2] and middle.min() >= 240


def test_shared_scale_gives_equal_values_equal_colours_in_every_panel():
    frames = np.full((3, 6, 6, 3), 100, np.uint8)
    a = random_map(5, (3, 6, 6))
    b = a[:, ::-1].copy()
    b[:, :, 3:] *= 4.0  # b has other values too, so a scale of its own would differ
    out = viz.panels(frames, {"a": a, "b": b}, input_label=None, upscale=1)
    layout = _layout_of(frames, 2, 1)
    same = b == a[:, ::-1]
    pa, pb = _panel(out, layout, 0)[:, ::-1], _panel(out, layout, 1)
    assert same.sum() > 20
    np.testing.assert_array_equal(pa[same], pb[same])
    scale = viz.color_scale(a, b)
    np.testing.assert_array_equal(pb, viz.overlay(frames, b, scale=scale))


def test_small_frames_are_upscaled_and_options_change_the_layout():
    frames = random_frames(6, (2, 48, 48, 3))
    rel = random_map(7, (2, 48, 48))
    full = viz.panels(frames, {"r": rel}, caption="c")
    assert full.shape[1:3] == (_layout_of(frames, 2, 4, caption=True).height, 8 + 2 * 192 + 8 + 8)
    bare = viz.panels(frames, {"r": rel}, colorbar=False, input_label=None, upscale=1)
    assert bare.shape[1:3] == (_layout_of(frames, 1, 1, colorbar=False).height, 48 + 16)
    big = random_frames(6, (2, 200, 300, 3))
    assert viz.panels(big, {"r": np.zeros((2, 100, 100))}).shape[2] == 16 + 2 * 300 + 8


def test_long_labels_shrink_to_their_panel():
    frames = random_frames(8, (2, 16, 16, 3))
    label = "a label far too long for one small panel of sixteen pixels"
    maps = {label: random_map(9, (2, 16, 16))}
    out = viz.panels(frames, maps, upscale=4, colorbar=False, input_label=None)
    layout = _layout_of(frames, 1, 4, colorbar=False)
    row = (out[0, layout.panel_top - layout.row : layout.panel_top] < 128).all(-1)
    columns = np.flatnonzero(row.any(0))
    left = layout.panel_left(0)
    assert columns.size > 20
    assert columns.min() >= left - 1 and columns.max() <= left + layout.panel_w


def test_panels_of_the_same_input_are_identical():
    frames = random_frames(10, (3, 8, 8, 3))
    maps = {"r": random_map(11, (3, 8, 8, 2)), "s": random_map(12, (3, 8, 8, 2))}
    np.testing.assert_array_equal(viz.panels(frames, maps), viz.panels(frames, maps))


FRAMES = random_frames(13, (3, 6, 6, 3))
MAP = random_map(14, (3, 6, 6))


@pytest.mark.parametrize(
    "frames, maps, kwargs, error, message",
    [
        (FRAMES, {}, {}, sr.OptionError, "non-empty dict"),
        (FRAMES, [MAP], {}, sr.OptionError, "non-empty dict"),
        (FRAMES, {1: MAP}, {}, sr.OptionError, "keys are labels"),
        (FRAMES, {"r": MAP[:, :4]}, {}, sr.ShapeError, r"maps\['r'\].*does not fit"),
        (FRAMES, {"r": MAP.astype(int)}, {}, sr.DTypeError, r"maps\['r'\]"),
        (FRAMES.astype(float), {"r": MAP}, {}, sr.DTypeError, "frames must be uint8"),
        (FRAMES, {"r": MAP}, {"scale": -2.0}, sr.OptionError, "scale"),
        (FRAMES, {"r": MAP}, {"scale": MAP}, sr.OptionError, "scale must be a number"),
        (FRAMES, {"r": MAP}, {"caption": 3}, sr.OptionError, "caption must be a str"),
        (FRAMES, {"r": MAP}, {"upscale": 0}, sr.OptionError, "upscale"),
        (FRAMES, {"r": MAP}, {"upscale": 1.5}, sr.OptionError, "upscale"),
        (FRAMES, {"r": MAP}, {"cmap": 3}, sr.OptionError, "cmap"),
    ],
)
def test_panels_bad_input_raises_one_clear_line(frames, maps, kwargs, error, message):
    with pytest.raises(error, match=message) as info:
        viz.panels(frames, maps, **kwargs)
    assert str(info.value).startswith("panels: ") and "\n" not in str(info.value)
