"""``selrel train`` end to end on the tiny config: run directory, export, evaluate, resume."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from selrel_jax import models
from selrel_jax.cli import app
from selrel_jax.data import synthetic_motion

TRAIN = [
    "train", "--dataset", "synthetic_motion/tiny_biased", "--epochs", "2", "--batch-size", "8",
    "--width", "0.25", "--model-option", "stem_stride=[1,2,2]", "--lr", "0.01",
    "--out", "run", "--no-progress",
]  # fmt: skip


def invoke(*args: str):
    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 1, result.stdout
    return json.loads(lines[0])


def test_train_exports_a_model_that_evaluate_reads(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a relative --out must work (orbax needs absolute paths)
    data = ["--data-dir", str(tmp_path / "tfds")]
    summary = invoke(*TRAIN, *data)
    assert summary["model"] == str(tmp_path / "run" / "model")
    assert summary["test_n"] == 24 and 1 <= summary["best_epoch"] <= 2

    _, _, info = models.load(tmp_path / "run" / "model")
    assert info.class_names == synthetic_motion.CLASS_NAMES
    assert info.clip_size == (8, 32, 32)
    assert info.extra["model_kwargs"] == {"stem_stride": [1, 2, 2]}  # JSON
    assert info.extra["dataset"] == "synthetic_motion/tiny_biased"
    assert info.extra["command"].startswith("selrel train --dataset synthetic_motion/tiny_biased")
    assert info.extra["test_accuracy"] == summary["test_accuracy"]
    assert len(info.extra["history"]) == 2

    # evaluate on the cached test split reproduces the recorded test accuracy
    out = invoke("evaluate", "--model", "run/model", "--dataset", "synthetic_motion/tiny_biased",
                 "--split", "test", "--no-progress", *data)  # fmt: skip
    assert out["n"] == 24
    assert out["accuracy"] == pytest.approx(summary["test_accuracy"])

    # rerunning the finished command only reloads and re-exports the same result
    again = invoke(*TRAIN, *data)
    assert again["test_accuracy"] == summary["test_accuracy"]
    assert again["val_accuracy"] == summary["val_accuracy"]

    # the same directory with other settings is refused with a one-line error
    result = CliRunner().invoke(app, [*TRAIN, *data, "--seed", "1"])
    assert result.exit_code != 0 and result.stdout == ""
    assert result.stderr.startswith("selrel: error:") and "other settings" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--limit", "0"], "--limit"),
        (["--epochs", "0"], "epochs"),
        (["--model-option", "stem_stride"], "KEY=VALUE"),
        (["--dataset", "synthetic_motion/nope"], "nope"),
    ],
)
def test_bad_train_options_are_one_line_errors(tmp_path, args, message):
    result = CliRunner().invoke(
        app, [*TRAIN, "--out", str(tmp_path / "run"), "--data-dir", str(tmp_path), *args]
    )
    assert result.exit_code != 0 and result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("selrel: error:"), result.stderr
    assert message in lines[0]
