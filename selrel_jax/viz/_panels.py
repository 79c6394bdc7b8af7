"""Side-by-side overlay panels as video frames: text drawn once, frames composed in NumPy.

Examples:
    :func:`panels`:

    >>> import numpy as np
    >>> import selrel_jax as sr
    >>> from selrel_jax import data, viz
    >>> frames = data.read_video(data.sample_clip_path())[:8]   # uint8 (8, 48, 48, 3)
    >>> rel = frames.astype(np.float32) / 255 - 0.5             # stands in for relevance
    >>> sel = np.asarray(sr.selective_relevance(rel, sigma=1.0))
    >>> static = rel - sel
    >>> video = viz.panels(frames, {"relevance": rel, "selective": sel}, caption="running")
    >>> video.shape[0], video.dtype
    (8, dtype('uint8'))
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import Colormap
from matplotlib.figure import Figure

from selrel_jax.errors import OptionError
from selrel_jax.viz._color import (
    auto_upscale,
    blend,
    checked_display,
    greyscale,
    lookup_table,
    resolve_cmap,
    upscaled,
)

_DPI = 100
_FONT_SIZE = 10  # points: 14 px at _DPI


@dataclasses.dataclass(frozen=True)
class _Layout:
    """Pixel geometry of a panels frame, top to bottom: title, labels, panels,
    colour bar with its tick labels, caption."""

    panel_h: int
    panel_w: int
    count: int
    title: bool
    colorbar: bool
    caption: bool
    margin: int = 8
    gap: int = 8
    row: int = 22  # one line of text
    bar: int = 10

    @property
    def width(self) -> int:
        return 2 * self.margin + self.count * self.panel_w + (self.count - 1) * self.gap

    @property
    def panel_top(self) -> int:
        return self.margin + self.row * (1 + self.title)

    @property
    def bar_top(self) -> int:
        return self.panel_top + self.panel_h + self.gap

    @property
    def caption_top(self) -> int:
        return self.bar_top + (self.bar + self.row if self.colorbar else 0)

    @property
    def height(self) -> int:
        return self.caption_top + self.row * self.caption + self.margin

    def panel_left(self, i: int) -> int:
        return self.margin + i * (self.panel_w + self.gap)


def _text(fig: Figure, renderer, text: str, x: float, y: float, max_width: float, ha="center"):
    """One line at pixel (x, y) from the top left, shrunk to fit ``max_width`` pixels."""
    width, height = fig.bbox.width, fig.bbox.height
    artist = fig.text(x / width, 1 - y / height, text, ha=ha, va="center", fontsize=_FONT_SIZE)
    extent = artist.get_window_extent(renderer).width
    if extent > max_width:
        artist.set_fontsize(_FONT_SIZE * max_width / extent)


def _draw_text(fig: Figure, layout: _Layout, labels, title, caption, ticks) -> None:
    renderer = fig.canvas.get_renderer()
    full_width = layout.width - 2 * layout.margin
    if title:
        _text(fig, renderer, title, layout.width / 2, layout.margin + layout.row / 2, full_width)
    label_y = layout.panel_top - layout.row / 2
    for i, label in enumerate(labels):
        x = layout.panel_left(i) + layout.panel_w / 2
        _text(fig, renderer, label, x, label_y, layout.panel_w)
    tick_y = layout.bar_top + layout.bar + layout.row / 2
    for fraction, tick in ticks:
        ha = {0.0: "left", 0.5: "center", 1.0: "right"}[fraction]
        x = layout.margin + fraction * full_width
        _text(fig, renderer, tick, x, tick_y, full_width / 3, ha=ha)
    if caption:
        y = layout.caption_top + layout.row / 2
        _text(fig, renderer, caption, layout.width / 2, y, full_width)


def _ticks(scale: float, signed: bool) -> list[tuple[float, str]]:
    """(position along the colour bar, label) of its ends and, if signed, its centre."""
    end = f"{scale:.3g}"
    return [(0.0, f"-{end}"), (0.5, "0"), (1.0, end)] if signed else [(0.0, "0"), (1.0, end)]


def _static_canvas(layout: _Layout, labels, title, caption, scale, signed, lut) -> np.ndarray:
    """uint8 (H', W', 3): background, text and colour bar of every frame, drawn once."""
    fig = Figure(figsize=(layout.width / _DPI, layout.height / _DPI), dpi=_DPI, facecolor="white")
    canvas = FigureCanvasAgg(fig)
    _draw_text(
        fig, layout, labels, title, caption, _ticks(scale, signed) if layout.colorbar else []
    )
    canvas.draw()
    rgba = np.asarray(canvas.buffer_rgba())
    image = np.full((layout.height, layout.width, 3), 255, np.uint8)
    h, w = min(rgba.shape[0], layout.height), min(rgba.shape[1], layout.width)
    image[:h, :w] = rgba[:h, :w, :3]  # guards against a canvas size rounded from inches
    if layout.colorbar:
        bar_width = layout.width - 2 * layout.margin
        bar = lut[np.rint(np.linspace(0, len(lut) - 1, bar_width)).astype(np.intp)]
        rows = slice(layout.bar_top, layout.bar_top + layout.bar)
        image[rows, layout.margin : layout.margin + bar_width] = bar
    return image


def panels(
    frames: Any,
    maps: Mapping[str, Any],
    *,
    scale: float | None = None,
    title: str | None = None,
    caption: str | None = None,
    input_label: str | None = "input",
    colorbar: bool = True,
    signed: bool = True,
    cmap: str | Colormap | None = None,
    alpha: float = 0.7,
    upscale: int | None = None,
) -> np.ndarray:
    """Video frames of the input and its overlays side by side: uint8 (T, H', W', 3).

    Each frame shows, left to right, the input frame (unless ``input_label`` is
    None) and one :func:`overlay` per entry of ``maps`` (e.g. ``{"relevance": rel,
    "selective": sel, "static": static}``), each under its label; below them a
    colour bar from -scale to scale and the ``caption`` line (e.g. the predicted
    class); above them the optional ``title``. Text and colour bar are drawn once
    with matplotlib (Agg) and each frame is composed with NumPy, so long videos
    stay fast.

    Args:
      frames: uint8 RGB (T, H, W, 3).
      maps: non-empty dict of label -> relevance map (T, h, w) or (T, h, w, C), each
        fitting the frames as in :func:`overlay`.
      scale: the one colour scale of every panel; None: :func:`color_scale` of all
        ``maps`` together.
      upscale: integer factor (nearest neighbour) applied to every panel; None: the
        smallest that makes the frames' shorter side >= 160 pixels (48 -> 4).
      signed: as :func:`overlay`.
      cmap: as :func:`overlay`.
      alpha: as :func:`overlay`.
    """
    frames, fitted, scale, alpha = checked_display("panels", frames, maps, scale, alpha)
    for name, text in (("title", title), ("caption", caption), ("input_label", input_label)):
        if text is not None and not isinstance(text, str):
            raise OptionError(f"panels: {name} must be a str or None; got {text!r}")
    factor = auto_upscale("panels", upscale, *frames.shape[1:3])
    lut = lookup_table(resolve_cmap("panels", cmap, bool(signed)))
    labels = ([input_label] if input_label is not None else []) + list(fitted)
    h, w = frames.shape[1:3]
    layout = _Layout(
        h * factor, w * factor, len(labels), bool(title), bool(colorbar), bool(caption)
    )
    canvas = _static_canvas(layout, labels, title, caption, scale, bool(signed), lut)
    grey = greyscale(frames)
    images = ([frames] if input_label is not None else []) + [
        blend(grey, m, (fh, fw), scale, alpha, bool(signed), lut) for m, fh, fw in fitted.values()
    ]
    return _compose(canvas, layout, images, factor)


def _compose(canvas: np.ndarray, layout: _Layout, images: list, factor: int) -> np.ndarray:
    """(T, H', W', 3): the static canvas behind every frame, each panel pasted in."""
    out = np.empty((len(images[0]), *canvas.shape), np.uint8)
    out[:] = canvas
    top = layout.panel_top
    for i, image in enumerate(images):
        left = layout.panel_left(i)
        out[:, top : top + layout.panel_h, left : left + layout.panel_w] = upscaled(image, factor)
    return out
