"""The notebook view of an explanation: panels, sliders, and selection at every sigma."""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
import subprocess
import types

import numpy as np
import pytest
from matplotlib import image as mpimage

import selrel_jax as sr
from selrel_jax import viz
from tests.viz.test_color import random_frames, random_map


def fake_explanation(num_frames: int = 10, sigma: float = 1.0, padding: str = "edge"):
    """What explanation_view reads of a VideoExplanation, with random maps."""
    settings = types.SimpleNamespace(sigma=sigma, temporal_padding=padding, method="gradient")
    return types.SimpleNamespace(
        video="clip.mp4", frames=random_frames(1, (num_frames, 12, 16, 3)),
        relevance=random_map(2, (num_frames, 12, 16)), settings=settings,
        probs=np.array([0.25, 0.75]), target_name="<walk>", predicted_name="run",
    )  # fmt: skip


def view_data(html: str) -> dict:
    return json.loads(re.search(r", d = (\{.*?\});\n", html).group(1))


def decoded(uri: str) -> np.ndarray:
    raw = base64.b64decode(uri.removeprefix("data:image/png;base64,"))
    return (mpimage.imread(io.BytesIO(raw), format="png")[..., :3] * 255).round()


def test_the_view_has_four_panels_two_sliders_and_an_image_per_frame_and_sigma():
    view = viz.explanation_view(fake_explanation(), sigmas=[2.0, 0.5, 1.0, 1.0])
    html = str(view)
    assert view.sigmas == (0.5, 1.0, 2.0)  # sorted, once each
    assert re.findall(r'<img class="img-(\w+)"', html) == list(viz.VIEW_PANELS)
    assert re.findall(r"<th>(\w+)</th>", html) == list(viz.VIEW_PANELS)
    assert 'class="frame" min="0" max="9"' in html
    assert 'class="sigma" min="0" max="2" value="1"' in html  # starts at the explained sigma
    d = view_data(html)
    assert len(d["input"]) == len(d["relevance"]) == 10
    assert [len(s) for s in d["selective"]] == [len(s) for s in d["static"]] == [10, 10, 10]
    assert html.count("data:image/png") == 10 * (2 + 2 * 3)
    assert "explained: &lt;walk&gt; (predicted: run, 75%)" in html  # escaped
    np.testing.assert_array_equal(decoded(d["input"][3]), fake_explanation().frames[3])


@pytest.mark.parametrize("padding", ["edge", "zero"])
def test_the_selective_maps_are_selective_relevance_of_the_raw_map(padding):
    explanation = fake_explanation(padding=padding)
    view = viz.explanation_view(explanation, sigmas=[0.0, 1.0, 2.5])
    for sigma, shown in zip(view.sigmas, view.selective, strict=True):
        want = sr.selective_relevance(explanation.relevance, sigma, temporal_padding=padding)
        np.testing.assert_array_equal(shown, np.asarray(want))
    # a larger sigma keeps fewer voxels: the sigma slider changes what is shown
    kept = [(s != 0).sum() for s in view.selective]
    assert kept[0] > kept[1] > kept[2] > 0


def test_default_sigmas_include_the_explained_one_and_long_videos_are_thinned():
    view = viz.explanation_view(fake_explanation(num_frames=30, sigma=1.25), max_frames=7)
    assert view.sigmas == tuple(sorted({*viz.VIEW_SIGMAS, 1.25}))
    assert view.frame_indices.tolist() == [0, 5, 10, 14, 19, 24, 29]
    assert view.selective.shape == (len(view.sigmas), 7, 12, 16)
    full = sr.selective_relevance(fake_explanation(30).relevance, 1.25, temporal_padding="edge")
    np.testing.assert_array_equal(view.selective[view.sigmas.index(1.25)],
                                  np.asarray(full)[view.frame_indices])  # fmt: skip


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"sigmas": []}, r"explanation_view: give at least one sigma"),
        ({"sigmas": [-1.0]}, r"explanation_view: sigma must be a finite number >= 0"),
        ({"max_frames": 0}, r"max_frames must be a positive int"),
        ({"alpha": 2.0}, r"alpha"),
    ],
)
def test_bad_view_options_are_one_error(kwargs, match):
    with pytest.raises(sr.OptionError, match=match):
        viz.explanation_view(fake_explanation(), **kwargs)


def test_a_map_that_does_not_fit_the_frames_is_refused():
    explanation = fake_explanation()
    explanation.relevance = explanation.relevance[:, :6]
    with pytest.raises(sr.OptionError, match=r"relevance \(10, 6, 16\) does not fit frames"):
        viz.explanation_view(explanation)


NODE_DOM = """
const elements = {};
const element = (name) => (elements[name] ??= {value: "0", src: "", textContent: ""});
globalThis.document = {getElementById: () => ({querySelector: (s) => element(s.slice(1))})};
const script = require("fs").readFileSync(0, "utf8");
eval(script);
elements.frame.value = "2"; elements.sigma.value = "1"; elements.sigma.oninput();
console.log(JSON.stringify(elements));
"""


@pytest.mark.skipif(shutil.which("node") is None, reason="needs node to run the view's script")
def test_the_sliders_show_the_images_of_the_chosen_frame_and_sigma():
    html = str(viz.explanation_view(fake_explanation(), sigmas=[0.5, 2.0]))
    script = re.search(r"<script>(.*)</script>", html, re.S).group(1)
    run = subprocess.run(["node", "-e", NODE_DOM], input=script, capture_output=True,
                         text=True, check=True, timeout=60)  # fmt: skip
    shown, d = json.loads(run.stdout), view_data(html)
    assert shown["img-input"]["src"] == d["input"][2]
    assert shown["img-selective"]["src"] == d["selective"][1][2]
    assert shown["img-static"]["src"] == d["static"][1][2]
    assert shown["frame-label"]["textContent"] == "2 / 9"
    assert shown["sigma-label"]["textContent"] == 2
