"""``selrel sanity``: one JSON line, the figure, and one-line errors that write nothing."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest
from typer.testing import CliRunner

from selrel_jax import models
from selrel_jax.cli import app
from selrel_jax.data import synthetic_motion

CLIP = (8, 32, 32)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """An untrained tiny c3d_small saved with models.save."""
    model = models.create("c3d_small", 6, width=0.25, clip_size=CLIP)
    init = jax.jit(lambda key: model.init(key, np.zeros((1, *CLIP, 3), np.float32)))
    variables = init(jax.random.key(1, impl="rbg"))
    info = models.ModelInfo.for_arch(
        "c3d_small", 6, class_names=synthetic_motion.CLASS_NAMES, width=0.25,
        clip_length=CLIP[0], crop_size=CLIP[1:],
    )  # fmt: skip
    return models.save(tmp_path_factory.mktemp("model") / "tiny", info, variables)


def run(model_dir, *args: str):
    common = ["--model", str(model_dir), "--dataset", "synthetic_motion/tiny",
              "--data-seed", "3", "--limit", "1"]  # fmt: skip
    return CliRunner().invoke(app, ["sanity", *common, *args])


@pytest.mark.slow
def test_one_json_line_flags_the_model_free_map_and_writes_the_figure(model_dir, tmp_path):
    figure = tmp_path / "out" / "sanity.png"
    result = run(model_dir, "--method", "baseline.frame_difference", "--method", "gradient",
                 "--figure", str(figure))  # fmt: skip
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 1, result.stdout
    out = json.loads(lines[0])
    assert out["layers"] == ["fc", "conv4", "conv3", "conv2", "conv1"]
    assert out["insensitive"] == ["baseline.frame_difference"]
    frame_difference, gradient = (out["methods"][m] for m in ("baseline.frame_difference",
                                                             "gradient"))  # fmt: skip
    assert frame_difference["spearman"] == pytest.approx([1.0] * 5, abs=1e-5)
    assert gradient["spearman"][-1] < out["threshold"] and not gradient["insensitive"]
    assert len(gradient["ssim_selective"]) == 5
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in figure.parent.iterdir()) == ["sanity.png"]


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--method", "nope"], "unknown method 'nope'"),
        (["--limit", "0"], "limit must be a positive int"),
        (["--seed", "-1"], "seed must be an int >= 0"),
        (["--figure", "x.jpg"], "must be a .png"),
        (["--sigma", "nan"], "sigma"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(model_dir, tmp_path, args, words):
    args = ["--figure", str(tmp_path / "sanity.png"), *args]
    result = run(model_dir, *args)
    assert result.exit_code == 2, result.stdout
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("selrel: error:") and words in lines[0]
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_the_box_rule_gets_the_models_input_bounds(model_dir, tmp_path):
    # lrp.epsilon_gamma_box was refused ("needs low= and high="): a sweep fills them in
    # from the model's input range, sanity did not.
    result = run(model_dir, "--method", "lrp.epsilon_gamma_box",
                 "--figure", str(tmp_path / "s.png"))  # fmt: skip
    assert result.exit_code == 0, result.stderr
    scores = json.loads(result.stdout)["methods"]["lrp.epsilon_gamma_box"]["spearman"]
    assert len(scores) == 5 and all(np.isfinite(scores))
