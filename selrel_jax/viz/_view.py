"""An explanation as an interactive notebook view: a frame slider and a sigma slider.

The view is self-contained HTML (PNG frames as data URIs, a few lines of
JavaScript): it works in Jupyter and Colab without a kernel, widgets or any
install, and in a saved notebook or a web page. Selection is cheap, so every sigma
of the slider is computed once, here, from the explanation's per-frame raw map.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import html as html_text
import io
import json
from collections.abc import Sequence
from typing import Any

import numpy as np
from matplotlib import image as mpimage

from selrel_jax._checks import positive_int, real
from selrel_jax.errors import OptionError
from selrel_jax.selective import selective_relevance
from selrel_jax.viz._color import (
    auto_upscale,
    check_alpha,
    check_frames,
    color_scale,
    finite_float_array,
    overlay,
)

#: The sigmas of the view's slider unless given; the explanation's own is added.
VIEW_SIGMAS = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0)
#: The panels of the view, left to right.
VIEW_PANELS = ("input", "relevance", "selective", "static")


@dataclasses.dataclass(frozen=True)
class ExplanationView:
    """What :func:`explanation_view` shows: ``html`` (notebooks display it; ``str()``
    gives it to write to a file), the ``sigmas`` of its slider, the sampled frames it
    shows (``frame_indices``) and the selective maps, float32 (sigmas, frames, H, W)."""

    html: str
    sigmas: tuple[float, ...]
    frame_indices: np.ndarray
    selective: np.ndarray

    def _repr_html_(self) -> str:
        return self.html

    def __str__(self) -> str:
        return self.html


def _png(image: np.ndarray) -> str:
    buffer = io.BytesIO()
    mpimage.imsave(buffer, image, format="png", metadata={"Software": None})
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _sigmas(sigmas: Sequence[float] | None, explained: float) -> tuple[float, ...]:
    chosen = (*VIEW_SIGMAS, explained) if sigmas is None else tuple(sigmas)
    if not chosen:
        raise OptionError("explanation_view: give at least one sigma")
    return tuple(sorted({real("explanation_view: sigma", s, minimum=0.0) for s in chosen}))


def _picks(count: int, max_frames: int) -> np.ndarray:
    """Every frame, or ``max_frames`` evenly spaced ones (first and last included)."""
    if count <= max_frames:
        return np.arange(count)
    return np.unique(np.round(np.linspace(0, count - 1, max_frames)).astype(np.int64))


def _label(explanation: Any) -> str:
    probs = np.asarray(explanation.probs)
    return (
        f"{explanation.video}: explained: {explanation.target_name} (predicted: "
        f"{explanation.predicted_name}, {float(probs.max()):.0%}) - "
        f"{explanation.settings.method}"
    )


def explanation_view(
    explanation: Any,
    sigmas: Sequence[float] | None = None,
    *,
    max_frames: int = 64,
    upscale: int | None = None,
    alpha: float = 0.7,
) -> ExplanationView:
    """An interactive view of a :class:`~selrel_jax.video_explanation.VideoExplanation`:
    the input frame, its raw relevance, selective and static relevance side by side,
    with a frame slider and a sigma slider.

    The selective map at each sigma (``sigmas``; default :data:`VIEW_SIGMAS` and the
    explanation's own) is :func:`selrel_jax.selective_relevance` of the per-frame raw
    map with the explanation's ``temporal_padding`` and one threshold over the whole
    video: cheap, and close to but not the same as the per-window selection
    ``explain_video`` made (which the files show). One colour scale for every panel
    (:func:`color_scale` of the raw map). At most ``max_frames`` evenly spaced frames
    are shown; images are embedded at the model's size and enlarged by the browser
    (``upscale``, None: shorter side >= 160 pixels). A ``VideoExplanation`` is
    displayed so as a notebook cell's value.

    Example:
        >>> from selrel_jax import data, models, viz
        >>> from selrel_jax import video_explanation as ve
        >>> model, variables, info = models.load("c3d_small_motion")
        >>> result = ve.explain_video(data.sample_clip_path(), model, variables, info)
        >>> view = viz.explanation_view(result, sigmas=[0.5, 1.0, 2.0])
        >>> view.sigmas, view.selective.shape
        ((0.5, 1.0, 2.0), (3, 32, 48, 48))
        >>> str(view).count("<img")   # the four panels
        4
    """
    fn = "explanation_view"
    frames = check_frames(fn, explanation.frames)
    raw = finite_float_array(fn, "relevance", explanation.relevance)
    if raw.shape != frames.shape[:3]:
        raise OptionError(f"{fn}: relevance {raw.shape} does not fit frames {frames.shape}")
    chosen = _sigmas(sigmas, explanation.settings.sigma)
    picks = _picks(len(frames), positive_int(f"{fn}: max_frames", max_frames))
    padding = explanation.settings.temporal_padding
    selective = np.stack([
        np.asarray(selective_relevance(raw, s, temporal_padding=padding, threshold="clip"))[picks]
        for s in chosen
    ]).astype(np.float32)  # fmt: skip
    draw = {"scale": color_scale(raw), "alpha": check_alpha(fn, alpha)}
    images = {
        "input": [_png(f) for f in frames[picks]],
        "relevance": [_png(f) for f in overlay(frames[picks], raw[picks], **draw)],
        "selective": [[_png(f) for f in overlay(frames[picks], s, **draw)] for s in selective],
        "static": [
            [_png(f) for f in overlay(frames[picks], raw[picks] - s, **draw)] for s in selective
        ],
    }
    width = frames.shape[2] * auto_upscale(fn, upscale, *frames.shape[1:3])
    start = min(range(len(chosen)), key=lambda i: abs(chosen[i] - explanation.settings.sigma))
    html = _html(images, chosen, picks, width, start, _label(explanation))
    return ExplanationView(html, chosen, picks, selective)


_SCRIPT = """(function () {
  const root = document.getElementById(%(id)s), d = %(data)s;
  const pick = (name) => root.querySelector("." + name);
  function draw() {
    const f = +pick("frame").value, s = +pick("sigma").value;
    pick("img-input").src = d.input[f];
    pick("img-relevance").src = d.relevance[f];
    pick("img-selective").src = d.selective[s][f];
    pick("img-static").src = d.static[s][f];
    pick("frame-label").textContent = d.frames[f] + " / " + d.last;
    pick("sigma-label").textContent = d.sigmas[s];
  }
  pick("frame").oninput = draw;
  pick("sigma").oninput = draw;
  draw();
})();"""


def _html(images, sigmas, picks, width, start, label) -> str:
    """The view's HTML: four panels, two sliders, the images in the script's data."""
    data = dict(images, sigmas=list(sigmas), frames=picks.tolist(), last=int(picks[-1]))
    payload = json.dumps(data)
    view_id = "selrel-view-" + hashlib.sha1(payload.encode()).hexdigest()[:12]
    style = f"width:{width}px;image-rendering:pixelated;margin:2px"
    heads = "".join(f"<th>{name}</th>" for name in VIEW_PANELS)
    cells = "".join(f'<td><img class="img-{name}" style="{style}"></td>' for name in VIEW_PANELS)
    script = _SCRIPT % {"id": json.dumps(view_id), "data": payload}
    return (
        f'<div id="{view_id}" style="font-family:sans-serif;font-size:13px">'
        f"<div>{html_text.escape(label)}</div><table><tr>{heads}</tr><tr>{cells}</tr></table>"
        f'<label>frame <input type="range" class="frame" min="0" max="{len(picks) - 1}" '
        f'value="0"> <span class="frame-label"></span></label><br>'
        f'<label>sigma <input type="range" class="sigma" min="0" max="{len(sigmas) - 1}" '
        f'value="{start}"> <span class="sigma-label"></span></label> (selective recomputed '
        "from the per-frame relevance, one threshold over the video)"
        f"<script>{script}</script></div>"
    )
