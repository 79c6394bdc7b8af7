"""Pictures and videos of relevance: colours, overlays, panels, filmstrips, timelines.

Array in, array or file out; no pyplot state (figures use matplotlib's Agg canvas
directly), no IPython or ffmpeg needed. Frames are uint8 RGB (T, H, W, 3);
relevance maps are real floating (T, h, w) or (T, h, w, C), their channels summed
for display, and (h, w) must divide the frames' (H, W) by integers.

Colour: signed relevance on a diverging map centred on zero (``"RdBu_r"``:
negative blue, zero white, positive red), magnitudes on a sequential one
(``"inferno"``). Use ONE scale per video, shared by every panel, so equal values
get equal colours: :func:`color_scale` of all maps shown together (a high
percentile, so one outlier voxel does not wash the rest out).

Examples:
    >>> import numpy as np
    >>> import selrel_jax as sr
    >>> from selrel_jax import data, viz
    >>> frames = data.read_video(data.sample_clip_path())[:8]   # uint8 (8, 48, 48, 3)
    >>> rel = frames.astype(np.float32) / 255 - 0.5             # stands in for relevance
    >>> sel = np.asarray(sr.selective_relevance(rel, sigma=1.0))
    >>> static = rel - sel
    >>> maps = {"relevance": rel, "selective": sel, "static": static}   # each (T, H, W, C)
    >>> video = viz.panels(frames, maps, caption="predicted: translate_right")
    >>> video.dtype, video.shape[0]   # one picture of four panels per frame
    (dtype('uint8'), 8)
    >>> viz.write_overlay_video("explained.mp4", video, fps=8)
    PosixPath('explained.mp4')
    >>> viz.save_figure(viz.filmstrip(frames, maps), "filmstrip.png")
    PosixPath('filmstrip.png')
"""

from selrel_jax.viz._animation import HTMLAnimation, show, write_overlay_video
from selrel_jax.viz._color import (
    MAGNITUDE_CMAP,
    MIN_DISPLAY_SIDE,
    SIGNED_CMAP,
    color_scale,
    colorize,
    overlay,
)
from selrel_jax.viz._figures import filmstrip, save_figure, timeline
from selrel_jax.viz._panels import panels
from selrel_jax.viz._sanity import randomization_curves
from selrel_jax.viz._view import VIEW_PANELS, VIEW_SIGMAS, ExplanationView, explanation_view

__all__ = [
    "MAGNITUDE_CMAP",
    "MIN_DISPLAY_SIDE",
    "SIGNED_CMAP",
    "VIEW_PANELS",
    "VIEW_SIGMAS",
    "ExplanationView",
    "HTMLAnimation",
    "color_scale",
    "colorize",
    "explanation_view",
    "filmstrip",
    "overlay",
    "panels",
    "randomization_curves",
    "save_figure",
    "show",
    "timeline",
    "write_overlay_video",
]
