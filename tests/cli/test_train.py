"""``selrel train`` end to end: the synthetic benchmark (run directory, export, evaluate,
resume), fine-tuning a checkpoint on a folder of videos (head replacement, frozen
backbone, settings from the checkpoint), the recorded command, and one-line errors."""

from __future__ import annotations

import dataclasses
import json
import shlex
import shutil

import jax
import numpy as np
import pytest
from typer.testing import CliRunner

from selrel_jax import models
from selrel_jax.cli import app
from selrel_jax.data import synthetic_motion
from selrel_jax.train import TrainSettings
from tests.data.folders import CLASSES, write_video_folder

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


def one_line_error(*args: str) -> str:
    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == 2 and result.stdout == "", (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("selrel: error:"), result.stderr
    return lines[0]


@pytest.mark.slow
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
    assert info.extra["freeze_backbone"] is False and "init_from" not in info.extra
    assert info.extra["command"] == (
        "selrel train --dataset synthetic_motion/tiny_biased --out run --epochs 2 "
        "--no-freeze-backbone --arch c3d_small --width 0.25 --model-option 'stem_stride=[1,2,2]' "
        "--batch-size 8 --lr 0.01 --weight-decay 0.0001 --warmup-epochs 1.0 --seed 0 "
        f"--checkpoint-every 50 --data-dir {tmp_path / 'tfds'} --no-progress"
    )
    assert info.extra["test_accuracy"] == summary["test_accuracy"]
    assert len(info.extra["history"]) == 2

    # evaluate on the cached test split reproduces the recorded test accuracy
    out = invoke("evaluate", "--model", "run/model", "--dataset", "synthetic_motion/tiny_biased",
                 "--split", "test", "--no-progress", *data)  # fmt: skip
    assert out["n"] == 24
    assert out["accuracy"] == pytest.approx(summary["test_accuracy"])

    # the recorded command, rerun, only reloads and re-exports the same result
    again = invoke(*shlex.split(info.extra["command"])[1:])
    assert again["test_accuracy"] == summary["test_accuracy"]
    assert again["val_accuracy"] == summary["val_accuracy"]

    # the same directory with other settings is refused with a one-line error naming them
    message = one_line_error(*TRAIN, *data, "--seed", "1")
    assert "was made with other settings (config.seed: 0 -> 1)" in message


@pytest.fixture(scope="module")
def folder_and_checkpoint(tmp_path_factory):
    """A folder of 3 classes x 4 videos, and a 5-class c3d_small checkpoint (4x16x16 clips,
    a strided stem, its own normalisation) to fine-tune from."""
    root = tmp_path_factory.mktemp("data")
    videos = write_video_folder(root / "videos")
    model = models.create("c3d_small", 5, width=0.25, clip_size=(4, 16, 16), stem_stride=(1, 2, 2))
    init = jax.jit(lambda k: model.init(k, np.zeros((1, 4, 16, 16, 3), np.float32)))
    info = models.ModelInfo.for_arch(
        "c3d_small", 5, width=0.25, clip_length=4, crop_size=(16, 16), mean=(0.4, 0.5, 0.6),
        std=(0.2, 0.3, 0.25), extra={"model_kwargs": {"stem_stride": [1, 2, 2]}},
    )  # fmt: skip
    checkpoint = models.save(root / "ck", info, init(jax.random.key(3, impl="rbg")))
    return videos, checkpoint


def fine_tune(videos, checkpoint, out, *extra: str) -> list[str]:
    return ["train", "--dataset", f"folder:{videos}", "--init-from", str(checkpoint),
            "--out", str(out), "--epochs", "2", "--batch-size", "2", "--lr", "0.02",
            "--no-progress", *extra]  # fmt: skip


@pytest.mark.slow
def test_fine_tune_a_checkpoint_on_a_folder_of_videos(folder_and_checkpoint, tmp_path):
    videos, checkpoint = folder_and_checkpoint
    summary = invoke(*fine_tune(videos, checkpoint, tmp_path / "run"))
    assert summary["test_n"] == 3  # one test video per class

    _, variables, info = models.load(tmp_path / "run" / "model")
    _, _, base = models.load(checkpoint)
    assert info.class_names == CLASSES and info.num_classes == 3
    assert variables["params"]["fc"]["kernel"].shape[-1] == 3  # the head was replaced
    for field in ("arch", "width", "clip_length", "frame_step", "crop_size", "mean", "std"):
        assert getattr(info, field) == getattr(base, field), field
    assert info.extra["model_kwargs"] == {"stem_stride": [1, 2, 2]}
    assert info.extra["init_from"] == str(checkpoint) and info.extra["freeze_backbone"] is False
    assert info.resize_size == 16 and "resize" not in info.extra
    command = info.extra["command"]
    for words in ("--arch c3d_small --width 0.25 --model-option 'stem_stride=[1,2,2]'",
                  "--clip-length 4 --frame-step 1 --crop-size 16 16 --resize 16"):  # fmt: skip
        assert words in command

    out = invoke("evaluate", "--model", str(tmp_path / "run" / "model"),
                 "--dataset", f"folder:{videos}", "--no-progress")  # fmt: skip
    assert out["n"] == 3 and out["accuracy"] == pytest.approx(summary["test_accuracy"])
    assert invoke(*shlex.split(command)[1:]) == summary  # the recorded command reloads

    message = one_line_error(*fine_tune(videos, checkpoint, tmp_path / "run", "--freeze-backbone"))
    assert "(config.freeze_backbone: false -> true)" in message


def test_frozen_backbone_leaves_every_other_parameter_bitwise(folder_and_checkpoint, tmp_path):
    videos, checkpoint = folder_and_checkpoint
    invoke(*fine_tune(videos, checkpoint, tmp_path / "run", "--freeze-backbone"))
    _, tuned, info = models.load(tmp_path / "run" / "model")
    _, base, _ = models.load(checkpoint)
    assert info.extra["freeze_backbone"] is True
    assert sorted(tuned["params"]) == ["conv1", "conv2", "conv3", "conv4", "fc"]
    for name in ("conv1", "conv2", "conv3", "conv4"):
        for a, b in zip(jax.tree.leaves(tuned["params"][name]),
                        jax.tree.leaves(base["params"][name]), strict=True):  # fmt: skip
            assert np.array_equal(np.asarray(a).view(np.uint8), np.asarray(b).view(np.uint8))
    assert tuned["params"]["fc"]["kernel"].shape == (16, 3)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--arch", "r3d_18"], "--arch r3d_18 conflicts with --init-from"),
        (["--crop-size", "8", "8"], "--crop-size (8, 8) conflicts"),
        (["--model-option", "stem_stride=[1,1,1]"], "whose model_option is"),
        (["--width", "0.5"], "--width 0.5 conflicts"),
    ],
)
def test_flags_that_contradict_the_checkpoint_are_errors(folder_and_checkpoint, tmp_path, extra,
                                                         message):  # fmt: skip
    videos, checkpoint = folder_and_checkpoint
    assert message in one_line_error(*fine_tune(videos, checkpoint, tmp_path / "run", *extra))
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--limit", "0"], "--limit must be a positive int"),
        (["--epochs", "0"], "--epochs must be a positive int; got 0"),
        (["--batch-size", "-1"], "--batch-size must be a positive int; got -1"),
        (["--lr", "nan"], "--lr must be a finite number > 0.0; got nan"),
        (["--warmup-epochs", "-1"], "--warmup-epochs must be a finite number >= 0.0"),
        (["--checkpoint-every", "0"], "--checkpoint-every must be a positive int"),
        (["--model-option", "stem_stride"], "--model-option must be KEY=JSON"),
        (["--dataset", "synthetic_motion/nope"], "nope"),
        (["--freeze-backbone"], "--freeze-backbone needs --init-from"),
        (["--crop-size", "16", "16"], "--crop-size applies only to folder:PATH datasets"),
        (["--split-file", "list.txt"], "--split-file applies only"),
        (["--init-from", "no_such_model"], "no_such_model"),
    ],
)
def test_bad_train_options_are_one_line_errors(tmp_path, args, message):
    out = ["--out", str(tmp_path / "run"), "--data-dir", str(tmp_path)]
    assert message in one_line_error(*TRAIN, *out, *args)


def test_a_folder_of_one_class_is_refused_before_training(tmp_path):
    # It used to train a 1-class model and report test_accuracy 1.0.
    videos = write_video_folder(tmp_path / "videos")
    for name in CLASSES[1:]:
        shutil.rmtree(videos / name)
    line = one_line_error("train", "--dataset", f"folder:{videos}", "--out", str(tmp_path / "run"),
                          "--epochs", "1", "--batch-size", "2", "--crop-size", "16", "16",
                          "--clip-length", "4", "--no-progress")  # fmt: skip
    assert f"folder:{videos} has 1 class ({CLASSES[0]}); a classifier needs at least 2" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["videos"]


def test_command_defaults_are_the_library_defaults():
    import typer.main

    command = typer.main.get_command(app).commands["train"]
    defaults = {f.name: f.default for f in dataclasses.fields(TrainSettings)}
    for param in command.params:
        if param.name in ("dataset", "out"):
            continue
        want = defaults[param.name]
        assert param.default == (None if want == () else want), param.name


@pytest.mark.parametrize("command", ["train", "evaluate", "convert"])
def test_help(command):
    result = CliRunner().invoke(app, [command, "--help"])
    assert result.exit_code == 0, result.output
    assert "--help" in result.stdout


def _regular_file(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("a regular file\n")
    return path


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--out", "{file}/run"], "--out {file}/run is below {file}, which is a file"),
        (["--out", "{file}"], "--out {file} is a file, not a directory"),
        (["--export", "{file}/model"], "--export {file}/model is below {file}, which is a file"),
        (["--data-dir", "{file}"], "--data-dir {file} is a file, not a directory"),
        (["--data-dir", "{file}/tfds"], "--data-dir {file}/tfds is below {file}"),
    ],
)
def test_unwritable_out_export_or_data_dir_are_one_line_errors_and_write_nothing(
    tmp_path, monkeypatch, args, message
):
    monkeypatch.chdir(tmp_path)
    file = _regular_file(tmp_path)
    defaults = {"--out": str(tmp_path / "run"), "--data-dir": str(tmp_path / "tfds")}
    given = dict(zip(args[::2], (a.format(file=file) for a in args[1::2]), strict=True))
    options = [word for pair in {**defaults, **given}.items() for word in pair]
    assert message.format(file=file) in one_line_error(*TRAIN, *options)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_export_that_would_hold_the_run_directory_is_refused(tmp_path):
    out = tmp_path / "models" / "run"
    for export in (out, tmp_path / "models"):
        message = one_line_error(*TRAIN, "--out", str(out), "--export", str(export),
                                 "--data-dir", str(tmp_path / "tfds"))  # fmt: skip
        assert "would hold the run directory" in message
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("option", "message"),
    [
        ('stem_stride="x"', "model option stem_stride must be 3 positive ints; got 'x'"),
        (
            "foo=1",
            "c3d_small has no model option 'foo'; its options are channels, dropout_rate, "
            "stem_stride",
        ),
        ("dropout_rate=1.5", "model option dropout_rate must be below 1"),
    ],
)
def test_model_option_of_wrong_type_or_unknown_key_writes_nothing(tmp_path, option, message):
    out = tmp_path / "run"
    args = [a for a in TRAIN if a != "stem_stride=[1,2,2]" and a != "--model-option"]
    error = one_line_error(*args, "--model-option", option, "--out", str(out),
                           "--data-dir", str(tmp_path / "tfds"))  # fmt: skip
    assert message in error
    assert list(tmp_path.iterdir()) == []  # not even the dataset cache


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--clip-length", "1"], r"clips of (1, 16, 16) (T, H, W) are too small for c3d_small"),
        (["--arch", "c3d", "--width", "0.125", "--clip-length", "4"], "too small for c3d"),
        (["--crop-size", "0", "0"], "--crop-size must be a positive int; got 0"),
        (["--split-file", "{tmp}/missing.txt"], "missing.txt"),
        (["--split-file", "{tmp}/list.txt"], "lists 1 videos not under"),
        (["--resize", "8"], "--resize 8 is smaller than the crop (16, 16)"),
    ],
)
def test_folder_clips_the_model_cannot_take_are_one_line_errors(tmp_path, extra, message):
    videos = write_video_folder(tmp_path / "videos")
    (tmp_path / "list.txt").write_text("nope/v_9.mp4\n")  # a video the folder lacks
    args = ["train", "--dataset", f"folder:{videos}", "--out", str(tmp_path / "run"),
            "--epochs", "1", "--batch-size", "2", "--crop-size", "16", "16", "--no-progress",
            *(a.format(tmp=tmp_path) for a in extra)]  # fmt: skip
    assert message in one_line_error(*args)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["list.txt", "videos"]
