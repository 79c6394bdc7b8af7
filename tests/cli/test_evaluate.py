"""``selrel evaluate``: one JSON line on stdout, accuracy equal to an independent count."""

from __future__ import annotations

import json
import shutil

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from typer.testing import CliRunner

from selrel_jax import models
from selrel_jax.cli import app
from selrel_jax.data import load_source, normalize, synthetic_motion

CLIP = (8, 32, 32)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """An untrained tiny c3d_small saved with models.save (its predictions are arbitrary)."""
    model = models.create("c3d_small", 6, width=0.25, clip_size=CLIP)
    # jit + rbg: compiles in a second or two (eager threefry init takes tens of seconds)
    init = jax.jit(lambda key: model.init(key, np.zeros((1, *CLIP, 3), np.float32)))
    variables = init(jax.random.key(1, impl="rbg"))
    info = models.ModelInfo.for_arch(
        "c3d_small", 6, class_names=synthetic_motion.CLASS_NAMES, width=0.25,
        clip_length=CLIP[0], crop_size=CLIP[1:], mean=(0.4, 0.5, 0.6), std=(0.2, 0.3, 0.25),
    )  # fmt: skip
    return models.save(tmp_path_factory.mktemp("model") / "tiny", info, variables)


def expected_accuracy(directory, video, label) -> float:
    """Accuracy computed directly: normalise as info says, apply, argmax."""
    model, variables, info = models.load(directory)
    x = normalize(video, mean=info.mean, std=info.std, value_range=info.value_range)
    logits = np.asarray(model.apply(variables, x, train=False))
    return float(np.mean(np.argmax(logits, -1) == label))


def run(*args: str):
    return CliRunner().invoke(app, ["evaluate", "--no-progress", *args])


def one_json_line(result) -> dict:
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 1, result.stdout
    return json.loads(lines[0])


def test_fresh_seed_split_matches_direct_computation(model_dir):
    result = run(
        "--model", str(model_dir), "--dataset", "synthetic_motion/tiny", "--split", "test",
        "--data-seed", "5", "--limit", "18", "--batch-size", "7",
    )  # fmt: skip
    out = one_json_line(result)
    data = synthetic_motion.generate_split("tiny", "test", 5, 18)
    assert out["n"] == 18
    assert out["split"] == "test" and out["dataset"] == "synthetic_motion/tiny"
    assert out["data_seed"] == 5
    assert out["accuracy"] == pytest.approx(
        expected_accuracy(model_dir, data["video"], data["label"])
    )


def test_cached_split_matches_direct_computation(model_dir, tmp_path):
    result = run(
        "--model", str(model_dir), "--dataset", "synthetic_motion/tiny", "--split", "validation",
        "--data-dir", str(tmp_path),
    )  # fmt: skip
    out = one_json_line(result)
    source = load_source("synthetic_motion/tiny", "validation", data_dir=tmp_path)
    video = np.stack([source[i]["video"] for i in range(len(source))])
    label = np.array([source[i]["label"] for i in range(len(source))])
    assert out["n"] == len(source) == 12
    assert out["accuracy"] == pytest.approx(expected_accuracy(model_dir, video, label))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--dataset", "synthetic_motion/nope", "--data-seed", "1"], "nope"),
        (["--dataset", "synthetic_motion/tiny", "--split", "bogus", "--data-seed", "1"], "bogus"),
        (["--dataset", "synthetic_motion/tiny", "--limit", "0"], "limit must be a positive int"),
        (["--dataset", "not_a_dataset", "--data-seed", "1"], "data_seed works only"),
        (["--dataset", "synthetic_motion/tiny", "--split-file", "x.txt"], "split_file applies"),
        # the default config's clips are 16x48x48; the model takes 8x32x32
        (["--dataset", "synthetic_motion", "--data-seed", "1", "--limit", "6"], "(8, 32, 32)"),
    ],
)
def test_bad_input_is_one_line_error(model_dir, args, message):
    result = run("--model", str(model_dir), *args)
    assert result.exit_code != 0
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("selrel: error:"), result.stderr
    assert message in lines[0]
    assert "Traceback" not in result.stderr


def test_unknown_model_is_one_line_error():
    result = run("--model", "no_such_model", "--dataset", "synthetic_motion/tiny")
    assert result.exit_code != 0 and result.stdout == ""
    assert result.stderr.strip().startswith("selrel: error:")
    assert "no_such_model" in result.stderr and len(result.stderr.strip().splitlines()) == 1


def _one_line_error(result) -> str:
    assert result.exit_code == 2 and result.stdout == "", (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("selrel: error:"), result.stderr
    return lines[0]


@pytest.mark.parametrize("below", ["", "/cache"])
def test_data_dir_that_is_a_file_is_one_line_error(model_dir, tmp_path, below):
    (tmp_path / "notes.txt").write_text("a regular file\n")
    data_dir = f"{tmp_path / 'notes.txt'}{below}"
    result = run("--model", str(model_dir), "--dataset", "synthetic_motion/tiny",
                 "--data-dir", data_dir)  # fmt: skip
    assert "notes.txt" in _one_line_error(result) and "not a directory" in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_model_with_fewer_classes_than_the_labels(tmp_path):
    model = models.create("c3d_small", 2, width=0.25, clip_size=CLIP)
    init = jax.jit(lambda key: model.init(key, np.zeros((1, *CLIP, 3), np.float32)))
    info = models.ModelInfo.for_arch(
        "c3d_small", 2, width=0.25, clip_length=CLIP[0], crop_size=CLIP[1:]
    )
    two = models.save(tmp_path / "two", info, init(jax.random.key(0, impl="rbg")))
    result = run("--model", str(two), "--dataset", "synthetic_motion/tiny", "--data-seed", "1",
                 "--limit", "6")  # fmt: skip
    assert "has labels up to 5 but model" in _one_line_error(result)
    assert "has 2 classes" in result.stderr


def test_model_path_that_is_a_file(tmp_path):
    (tmp_path / "notes.txt").write_text("a regular file\n")
    result = run("--model", str(tmp_path / "notes.txt"), "--dataset", "synthetic_motion/tiny")
    assert "notes.txt is a file, not a checkpoint" in _one_line_error(result)


def test_a_limit_beyond_the_split_is_capped_with_one_warning_line(model_dir):
    # --limit beyond the split's end used to generate past it without a word.
    result = run("--model", str(model_dir), "--dataset", "synthetic_motion/tiny",
                 "--data-seed", "5", "--limit", "30")  # fmt: skip
    assert one_json_line(result)["n"] == 24
    assert result.stderr.strip().splitlines() == [
        "selrel: warning: limit 30 exceeds the 24 clips of synthetic_motion/tiny's test split; "
        "using 24"
    ]


def test_a_checkpoint_with_nan_weights_is_one_line_naming_the_file_and_parameter(
    model_dir, tmp_path
):
    # It used to load and print {"loss": NaN, ...}.
    _, variables, _ = models.load(model_dir)
    bad = jax.tree_util.tree_map(np.array, variables)
    bad["params"]["fc"]["kernel"][0, 0] = np.nan
    copy = tmp_path / "nan"
    shutil.copytree(model_dir, copy)
    shutil.rmtree(copy / "variables")
    with ocp.PyTreeCheckpointer() as checkpointer:
        checkpointer.save(copy / "variables", bad)
    result = run("--model", str(copy), "--dataset", "synthetic_motion/tiny", "--data-seed", "5")
    assert result.exit_code == 2 and result.stdout == ""
    [line] = result.stderr.strip().splitlines()
    assert line.startswith(f"selrel: error: variables in {copy / 'variables'} hold non-finite")
    assert "params/fc/kernel (1 NaN, 0 infinite" in line


def test_a_nan_in_a_printed_result_is_json_null_not_a_bare_nan():
    from selrel_jax.cli import json_line

    line = json_line({"loss": float("nan"), "accuracy": 0.5, "top": float("-inf")})
    assert line == '{"loss": null, "accuracy": 0.5, "top": null}'
    assert json_line({"b": 1, "a": [1.5]}) == '{"b": 1, "a": [1.5]}'  # order kept, one line


def test_a_limit_on_an_unbuilt_cache_generates_only_those_clips(model_dir, tmp_path):
    # It used to build the whole split set into --data-dir (590 MB for the default
    # config) even for --limit 12, and TFDS said "downloaded and prepared".
    result = CliRunner().invoke(app, [
        "evaluate", "--model", str(model_dir), "--dataset", "synthetic_motion/tiny",
        "--limit", "6", "--data-dir", str(tmp_path),
    ])  # fmt: skip
    out = one_json_line(result)
    assert list(tmp_path.iterdir()) == []  # no dataset written
    assert "download" not in result.stderr.lower()
    assert "synthetic_motion/tiny: generate test" in result.stderr  # the bar says what it does
    cached = synthetic_motion.generate_split("tiny", "test", synthetic_motion.CONFIGS["tiny"].seed)
    assert out["n"] == 6 and "data_seed" not in out
    assert out["accuracy"] == pytest.approx(
        expected_accuracy(model_dir, cached["video"][:6], cached["label"][:6])
    )


def test_building_the_cache_says_generated_never_downloaded(model_dir, tmp_path):
    result = run("--model", str(model_dir), "--dataset", "synthetic_motion/tiny",
                 "--split", "validation", "--data-dir", str(tmp_path))  # fmt: skip
    assert one_json_line(result)["n"] == 12
    assert "download" not in result.stderr.lower()
    assert "Generating synthetic_motion/tiny (" in result.stderr
    assert "made by the procedural generator" in result.stderr
