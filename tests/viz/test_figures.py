"""Filmstrips and timelines as matplotlib figures; PNGs that open and repeat byte for byte."""

from __future__ import annotations

import matplotlib.image
import numpy as np
import pytest
from matplotlib.figure import Figure

import selrel_jax as sr
from selrel_jax import metrics, viz
from tests.viz.test_color import random_frames, random_map

FRAMES = random_frames(1, (10, 12, 12, 3))
MAPS = {"relevance": random_map(2, (10, 12, 12, 3)), "selective": random_map(3, (10, 12, 12))}


def _images(fig: Figure) -> list:
    return [ax for ax in fig.axes if ax.images and ax.get_label() != "<colorbar>"]


def test_filmstrip_rows_are_input_then_maps_at_evenly_spaced_frames():
    fig = viz.filmstrip(FRAMES, MAPS, columns=4, title="clip")
    cells = _images(fig)
    assert len(cells) == 3 * 4
    assert [ax.get_title() for ax in cells[:4]] == ["t=0", "t=3", "t=6", "t=9"]
    assert [cells[r * 4].get_ylabel() for r in range(3)] == ["input", "relevance", "selective"]
    np.testing.assert_array_equal(cells[1].images[0].get_array(), FRAMES[3])
    scale = viz.color_scale(*MAPS.values())
    shown = viz.overlay(FRAMES, MAPS["selective"], scale=scale)
    np.testing.assert_array_equal(cells[8 + 2].images[0].get_array(), shown[6])
    assert fig.get_suptitle() == "clip"
    colorbar = [ax for ax in fig.axes if ax not in cells]
    assert len(colorbar) == 1 and colorbar[0].get_ylim() == pytest.approx((-scale, scale))


def test_filmstrip_of_a_short_video_shows_every_frame():
    fig = viz.filmstrip(FRAMES[:3], {"r": MAPS["selective"][:3]}, columns=8, signed=False)
    assert [ax.get_title() for ax in _images(fig)[:3]] == ["t=0", "t=1", "t=2"]
    assert len(_images(fig)) == 6


def test_timeline_plots_one_line_per_mass():
    masses = {name: metrics.frame_mass(m) for name, m in MAPS.items()}
    fig = viz.timeline(masses, title="mass")
    ax = fig.axes[0]
    assert [line.get_label() for line in ax.lines] == ["relevance", "selective"]
    np.testing.assert_allclose(ax.lines[1].get_ydata(), np.asarray(masses["selective"]))
    np.testing.assert_array_equal(ax.lines[0].get_xdata(), np.arange(10))
    assert ax.get_title() == "mass"


def test_save_figure_writes_a_png_that_opens_and_repeats_byte_for_byte(tmp_path):
    paths = []
    for run in range(2):
        fig = viz.filmstrip(FRAMES, MAPS, columns=3, title="same")
        paths.append(viz.save_figure(fig, tmp_path / f"run{run}" / "strip.png"))
    first, second = (p.read_bytes() for p in paths)
    assert first == second
    assert first[:8] == b"\x89PNG\r\n\x1a\n" and b"Software" not in first
    image = matplotlib.image.imread(paths[0])
    width, height = fig.get_size_inches() * 100
    assert image.shape == (round(height), round(width), 4)
    timeline = viz.timeline({"a": np.arange(5.0)})
    again = viz.timeline({"a": np.arange(5.0)})
    a, b = viz.save_figure(timeline, tmp_path / "a.png"), viz.save_figure(again, tmp_path / "b.png")
    assert a.read_bytes() == b.read_bytes()


@pytest.mark.parametrize(
    "masses, error, message",
    [
        ({}, sr.OptionError, "non-empty dict"),
        ({"a": np.arange(5.0), "b": np.arange(4.0)}, sr.ShapeError, "one length"),
        ({"a": np.ones((2, 5))}, sr.ShapeError, r"1-D"),
        ({"a": np.arange(5)}, sr.DTypeError, "real floating"),
        ({"a": np.array([1.0, np.nan])}, sr.NonFiniteError, r"masses\['a'\]"),
    ],
)
def test_timeline_bad_input(masses, error, message):
    with pytest.raises(error, match=message):
        viz.timeline(masses)


def test_filmstrip_and_save_figure_bad_input(tmp_path):
    with pytest.raises(sr.OptionError, match="filmstrip: columns"):
        viz.filmstrip(FRAMES, MAPS, columns=0)
    with pytest.raises(sr.OptionError, match="filmstrip: maps"):
        viz.filmstrip(FRAMES, {})
    with pytest.raises(sr.ShapeError, match="filmstrip"):
        viz.filmstrip(FRAMES[:4], MAPS)
    with pytest.raises(sr.OptionError, match="must be a matplotlib Figure"):
        viz.save_figure(FRAMES, tmp_path / "x.png")
    fig = viz.timeline({"a": np.arange(3.0)})
    with pytest.raises(sr.OptionError, match=r"\.png"):
        viz.save_figure(fig, tmp_path / "x.jpg")
    with pytest.raises(sr.OptionError, match="dpi"):
        viz.save_figure(fig, tmp_path / "x.png", dpi=0)
