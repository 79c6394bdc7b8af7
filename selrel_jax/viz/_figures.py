"""Still pictures: filmstrips of overlays, per-frame relevance timelines, deterministic PNGs."""

from __future__ import annotations

import os
import pathlib
from collections.abc import Mapping
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Colormap, Normalize
from matplotlib.figure import Figure

from selrel_jax._checks import describe, positive_int
from selrel_jax.errors import OptionError, ShapeError
from selrel_jax.viz._color import (
    blend,
    check_maps,
    checked_display,
    finite_float_array,
    greyscale,
    lookup_table,
    resolve_cmap,
)

#: Inches per filmstrip cell; with save_figure's 100 dpi a cell is 110 pixels.
_CELL = 1.1


def _strip_rows(frames, fitted, picks, scale, alpha, signed, lut) -> dict[str, np.ndarray]:
    grey = greyscale(frames[picks])
    rows = {"input": frames[picks]}
    for name, (m, fh, fw) in fitted.items():
        rows[name] = blend(grey, m[picks], (fh, fw), scale, alpha, signed, lut)
    return rows


def _grid(rows: dict[str, np.ndarray], picks: np.ndarray, title: str | None) -> tuple:
    """A figure with one image per cell: ``(figure, axes)``, rows labelled, columns t=..."""
    size = (_CELL * len(picks) + 1.6, _CELL * len(rows) + 0.5 + 0.3 * bool(title))
    fig = Figure(figsize=size, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(rows), len(picks), squeeze=False)
    for r, (name, images) in enumerate(rows.items()):
        for c, image in enumerate(images):
            ax = axes[r, c]
            ax.imshow(image, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(f"t={picks[c]}", fontsize=9)
        axes[r, 0].set_ylabel(name, fontsize=9)
    if title:
        fig.suptitle(title)
    return fig, axes


def filmstrip(
    frames: Any,
    maps: Mapping[str, Any],
    *,
    columns: int = 8,
    scale: float | None = None,
    title: str | None = None,
    signed: bool = True,
    cmap: str | Colormap | None = None,
    alpha: float = 0.7,
) -> Figure:
    """A still picture of a video: rows input, then one :func:`overlay` per map;
    ``columns`` evenly spaced frames (first and last included); a colour bar.

    Args:
      frames: uint8 RGB (T, H, W, 3).
      maps: non-empty dict of label -> relevance map, each fitting the frames as in
        :func:`overlay`.
      columns: how many frames to show (all of them if T is smaller).
      scale: one colour scale for every row; None: :func:`color_scale` of all maps.
      title: a line above the grid.
      signed: as :func:`overlay`.
      cmap: as :func:`overlay`.
      alpha: as :func:`overlay`.

    Returns:
      a matplotlib Figure (Agg canvas, not registered with pyplot); write it with
      :func:`save_figure`.

    Examples:
        >>> import numpy as np
        >>> import selrel_jax as sr
        >>> from selrel_jax import data, viz
        >>> frames = data.read_video(data.sample_clip_path())[:8]   # uint8 (8, 48, 48, 3)
        >>> rel = frames.astype(np.float32) / 255 - 0.5             # stands in for relevance
        >>> sel = np.asarray(sr.selective_relevance(rel, sigma=1.0))
        >>> static = rel - sel
        >>> from selrel_jax.viz import filmstrip, save_figure
        >>> save_figure(filmstrip(frames, {"relevance": rel, "selective": sel}), "strip.png")
        PosixPath('strip.png')
    """
    frames, fitted, scale, alpha = checked_display("filmstrip", frames, maps, scale, alpha)
    columns = positive_int("filmstrip: columns", columns)
    colormap = resolve_cmap("filmstrip", cmap, bool(signed))
    t = frames.shape[0]
    picks = np.unique(np.rint(np.linspace(0, t - 1, min(columns, t))).astype(np.intp))
    lut = lookup_table(colormap)
    rows = _strip_rows(frames, fitted, picks, scale, alpha, bool(signed), lut)
    fig, axes = _grid(rows, picks, title)
    norm = Normalize(-scale if signed else 0.0, scale)
    fig.colorbar(ScalarMappable(norm, colormap), ax=axes, shrink=0.8, label="relevance")
    return fig


def timeline(
    masses: Mapping[str, Any],
    *,
    title: str | None = None,
    xlabel: str = "frame",
    ylabel: str = "relevance mass",
) -> Figure:
    """Per-frame relevance mass, one line per entry (e.g. relevance, selective, static).

    Args:
      masses: non-empty dict of label -> (T,) real array, all of the same T, such as
        :func:`selrel_jax.metrics.frame_mass` of each map.
      title: the axes' title.
      xlabel: the x axis' label.
      ylabel: the y axis' label.

    Examples:
        >>> import numpy as np
        >>> import selrel_jax as sr
        >>> from selrel_jax import data, viz
        >>> frames = data.read_video(data.sample_clip_path())[:8]   # uint8 (8, 48, 48, 3)
        >>> rel = frames.astype(np.float32) / 255 - 0.5             # stands in for relevance
        >>> sel = np.asarray(sr.selective_relevance(rel, sigma=1.0))
        >>> static = rel - sel
        >>> from selrel_jax import metrics
        >>> maps = {"relevance": rel, "selective": sel, "static": static}
        >>> masses = {name: metrics.frame_mass(m) for name, m in maps.items()}
        >>> viz.save_figure(viz.timeline(masses, title="clip 0"), "mass.png")
        PosixPath('mass.png')
    """
    curves = {
        name: finite_float_array("timeline", f"masses[{name!r}]", m)
        for name, m in check_maps("timeline", masses).items()
    }
    lengths = {c.shape for c in curves.values()}
    if any(len(shape) != 1 for shape in lengths) or len(lengths) != 1:
        shapes = ", ".join(f"{n}: {describe(c)}" for n, c in curves.items())
        raise ShapeError(f"timeline: masses must be 1-D arrays of one length (T,); got {shapes}")
    fig = Figure(figsize=(6.4, 3.2), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for name, curve in curves.items():
        ax.plot(np.arange(curve.size), curve, marker=".", label=name)
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title or "")
    ax.legend()
    return fig


def save_figure(fig: Figure, path: str | os.PathLike, *, dpi: int = 100) -> pathlib.Path:
    """Write ``fig`` as a PNG, byte-identical for the same figure: fixed ``dpi``, no
    software or time stamp in the metadata. The parent folder is created.

    Examples:
        >>> import numpy as np
        >>> import selrel_jax as sr
        >>> from selrel_jax import data, viz
        >>> frames = data.read_video(data.sample_clip_path())[:8]   # uint8 (8, 48, 48, 3)
        >>> rel = frames.astype(np.float32) / 255 - 0.5             # stands in for relevance
        >>> sel = np.asarray(sr.selective_relevance(rel, sigma=1.0))
        >>> static = rel - sel
        >>> viz.save_figure(viz.filmstrip(frames, {"relevance": rel}), "out/strip.png")
        PosixPath('out/strip.png')
    """
    if not isinstance(fig, Figure):
        raise OptionError(f"save_figure: fig must be a matplotlib Figure; got {type(fig).__name__}")
    path = pathlib.Path(path)
    if path.suffix.lower() != ".png":
        raise OptionError(f"save_figure: path must end in .png; got {str(path)!r}")
    dpi = positive_int("save_figure: dpi", dpi)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=dpi, metadata={"Software": None})
    return path
