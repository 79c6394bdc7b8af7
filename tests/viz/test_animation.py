"""Overlay videos decode back; notebook animations are plain HTML, without IPython."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import selrel_jax as sr
from selrel_jax import data, viz
from tests.viz.test_color import random_frames, random_map


def test_overlay_video_decodes_back_with_its_frames(tmp_path):
    frames = random_frames(1, (6, 16, 16, 3))
    video = viz.panels(frames, {"r": random_map(2, (6, 16, 16))}, caption="c", upscale=2)
    path = viz.write_overlay_video(tmp_path / "out" / "panels.mp4", video, fps=4)
    decoded = data.read_video(path)
    height, width = video.shape[1:3]
    assert decoded.shape == (6, height + height % 2, width + width % 2, 3)
    assert data.video_fps(path) == pytest.approx(4)
    # Lossy, but close on the flat parts (text, colour bar, margins).
    error = np.abs(decoded[:, :height, :width].astype(int) - video.astype(int))
    assert np.median(error) <= 2


def test_show_returns_html_with_every_frame():
    frames = random_frames(3, (5, 8, 8, 3))
    animation = viz.show(frames, fps=5)
    assert isinstance(animation, viz.HTMLAnimation)
    html = animation._repr_html_()
    assert html == str(animation) and "<script" in html
    assert html.count("data:image/png;base64") == 5


def test_viz_needs_neither_ipython_nor_is_imported_by_the_package():
    code = textwrap.dedent(
        """
        import sys
        sys.modules["IPython"] = None  # any import of IPython now fails
        import numpy as np
        import selrel_jax as sr
        assert "matplotlib" not in sys.modules, "import selrel_jax pulled in matplotlib"
        frames = np.zeros((2, 4, 4, 3), np.uint8)
        html = sr.viz.show(frames, fps=2)._repr_html_()
        assert "<script" in html
        """
    )
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr[-2000:]


@pytest.mark.parametrize(
    "call, error, message",
    [
        (lambda f, p: viz.show(f.astype(np.float32)), sr.DTypeError, "show: frames_or_panels"),
        (lambda f, p: viz.show(f[0]), sr.ShapeError, "show: frames_or_panels"),
        (lambda f, p: viz.show(f, fps=0), sr.OptionError, "show: fps"),
        (lambda f, p: viz.show(f, upscale=-1), sr.OptionError, "show: upscale"),
        (lambda f, p: viz.write_overlay_video(p, f, fps=-1), sr.OptionError, "fps"),
        (lambda f, p: viz.write_overlay_video(p, f, crf=52), sr.OptionError, "crf"),
        (lambda f, p: viz.write_overlay_video(p, f[..., 0]), sr.ShapeError, "panels_uint8"),
        (
            lambda f, p: viz.write_overlay_video(p, f.astype(np.int16)),
            sr.DTypeError,
            "panels_uint8",
        ),
    ],
)
def test_bad_input(tmp_path, call, error, message):
    with pytest.raises(error, match=message):
        call(random_frames(4, (2, 4, 4, 3)), tmp_path / "x.mp4")
    assert not (tmp_path / "x.mp4").exists()
