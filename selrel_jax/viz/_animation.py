"""Moving pictures: overlay videos as files, and animations for notebooks."""

from __future__ import annotations

import dataclasses
import os
import pathlib
from typing import Any

from matplotlib.animation import FuncAnimation
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from selrel_jax._checks import integer, real
from selrel_jax.data import write_video
from selrel_jax.errors import OptionError
from selrel_jax.viz._color import auto_upscale, check_frames, upscaled

_DPI = 100


def write_overlay_video(
    path: str | os.PathLike, panels_uint8: Any, fps: float = 8.0, *, crf: int = 18
) -> pathlib.Path:
    """Encode uint8 RGB frames (T, H, W, 3), e.g. from :func:`panels`, as H.264.

    ``panels_uint8`` is one array or an iterable of arrays (chunks of frames, encoded as
    they come, so a long video is never held whole). The container follows the suffix
    (.mp4, .mkv, .avi); ``crf`` is the encoder's quality (0 lossless .. 51; 18 keeps
    heat-map colours and text crisp). Odd sizes are padded by a row or column (see
    :func:`selrel_jax.data.write_video`).

    Examples:
        >>> import numpy as np
        >>> import selrel_jax as sr
        >>> from selrel_jax import data, viz
        >>> frames = data.read_video(data.sample_clip_path())[:8]   # uint8 (8, 48, 48, 3)
        >>> rel = frames.astype(np.float32) / 255 - 0.5             # stands in for relevance
        >>> sel = np.asarray(sr.selective_relevance(rel, sigma=1.0))
        >>> static = rel - sel
        >>> from selrel_jax.viz import panels, write_overlay_video
        >>> maps = {"relevance": rel, "selective": sel}
        >>> write_overlay_video("explained.mp4", panels(frames, maps), fps=8)
        PosixPath('explained.mp4')
        >>> data.read_video("explained.mp4").shape[0]
        8
    """
    chunks = [panels_uint8] if hasattr(panels_uint8, "shape") else panels_uint8
    fps = real("write_overlay_video: fps", fps, above=0.0)
    crf = integer("write_overlay_video: crf", crf, minimum=0)
    if crf > 51:
        raise OptionError(f"write_overlay_video: crf must be in 0 .. 51; got {crf}")
    checked = (check_frames("write_overlay_video", c, "panels_uint8") for c in chunks)
    return write_video(path, checked, fps, codec="libx264", options={"crf": str(crf)})


@dataclasses.dataclass(frozen=True)
class HTMLAnimation:
    """An animation as self-contained HTML (JavaScript player, frames as PNG):
    notebooks display it, ``str()`` gives the HTML to write to a file."""

    html: str

    def _repr_html_(self) -> str:
        return self.html

    def __str__(self) -> str:
        return self.html


def show(frames_or_panels: Any, fps: float = 8.0, *, upscale: int | None = None) -> HTMLAnimation:
    """A notebook animation of uint8 RGB frames (T, H, W, 3), such as :func:`panels`.

    Uses matplotlib's ``FuncAnimation.to_jshtml`` (no ffmpeg, no IPython needed);
    displayed as the cell's value. ``upscale`` as :func:`panels` (None: shorter
    side >= 160 pixels). matplotlib's ``animation.embed_limit`` (20 MB by default)
    caps the size: show a slice of a long video.

    Examples:
        >>> import numpy as np
        >>> import selrel_jax as sr
        >>> from selrel_jax import data, viz
        >>> frames = data.read_video(data.sample_clip_path())[:8]   # uint8 (8, 48, 48, 3)
        >>> rel = frames.astype(np.float32) / 255 - 0.5             # stands in for relevance
        >>> sel = np.asarray(sr.selective_relevance(rel, sigma=1.0))
        >>> static = rel - sel
        >>> animation = viz.show(viz.panels(frames, {"relevance": rel}), fps=8)
        >>> html = str(animation)   # what a notebook displays; write it to a .html file
        >>> "<script" in html, html.count("data:image/png") >= 8   # a player, the frames
        (True, True)
    """
    frames = check_frames("show", frames_or_panels, "frames_or_panels")
    fps = real("show: fps", fps, above=0.0)
    factor = auto_upscale("show", upscale, *frames.shape[1:3])
    frames = upscaled(frames, factor)
    height, width = frames.shape[1:3]
    fig = Figure(figsize=(width / _DPI, height / _DPI), dpi=_DPI)
    FigureCanvasAgg(fig)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_axis_off()
    image = ax.imshow(frames[0], interpolation="nearest")

    def draw(i: int) -> list:
        image.set_data(frames[i])
        return [image]

    animation = FuncAnimation(fig, draw, frames=len(frames), interval=1000 / fps, blit=False)
    return HTMLAnimation(animation.to_jshtml(fps=fps, default_mode="loop"))
