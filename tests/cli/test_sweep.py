"""``selrel sweep``: one JSON line, every bad flag a one-line error that writes nothing, the
library's defaults, and two processes under jax.distributed sharing one sweep."""

from __future__ import annotations

import inspect
import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
from typer.testing import CliRunner

from selrel_jax import data, sweep
from selrel_jax.cli import app
from selrel_jax.cli import sweep as sweep_command
from selrel_jax.sweep import _compute

CLIP = (8, 32, 32)
runner = CliRunner()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, save_tiny_model):
    """An untrained tiny c3d_small."""
    return save_tiny_model(tmp_path_factory.mktemp("model") / "tiny", 2)


def _args(model_dir, out, *extra):
    return ["sweep", "--dataset", "synthetic_motion/tiny", "--data-seed", "4", "--limit", "3",
            "--model", str(model_dir), "--methods", "gradient,gradient_x_input",
            "--sigmas", "1,2", "--batch-size", "2", "--out", str(out),
            *map(str, extra)]  # fmt: skip


def test_a_sweep_prints_one_json_line_and_shows_progress(model_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(_compute, "_COMPILED", {})  # compiled afresh: the bar says so
    (tmp_path / "s").mkdir()  # as a sweep killed while writing its first manifest left it
    dead = 2**22 + 12345  # above the default pid_max: no such process
    (tmp_path / "s" / f".manifest.json.{dead}.0a1b2c3d.tmp").write_text('{"sett')
    result = runner.invoke(app, _args(model_dir, tmp_path / "s"))
    assert result.exit_code == 0, result.stderr
    [line] = result.stdout.splitlines()
    record = json.loads(line)
    assert record["rows"] == 3 * 2 * 2 and record["clips"] == 3 and record["complete"]
    assert record["out"] == str(tmp_path / "s") and record["shards"] == 2
    assert "sweep: 100%" in result.stderr and "clip/s]" in result.stderr  # the progress bar
    # It used to sit at 0% while compiling, saying nothing; now each stage is named.
    first_batch = result.stderr.split("sweep: write")[0]
    for line in ("compiling the model's forward pass ...", "compiling gradient ...",
                 "compiling gradient_x_input ..."):  # fmt: skip
        assert f"\r{line}\n" in first_batch
    assert "sweep: read:   0%" in first_batch and "sweep: explain:   0%" in first_batch
    assert result.stderr.count("compiling") == 3  # once, before the first batch
    assert sorted(os.listdir(tmp_path / "s")) == ["manifest.json", "tables"]
    table = sweep.read_table(tmp_path / "s")
    assert table.num_rows == 12 and sorted(set(table.column("method").to_pylist())) == [
        "gradient", "gradient_x_input"]  # fmt: skip
    again = runner.invoke(app, [*_args(model_dir, tmp_path / "s"), "--no-progress"])
    assert again.exit_code == 0 and json.loads(again.stdout)["shards_written"] == 0
    assert again.stderr == ""


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--methods", "lrp.nope"], "unknown method 'lrp.nope'"),
        (["--methods", "gradient,,grad_cam"], "--methods must be a comma-separated list without"),
        (["--methods", "gradient,gradient"], "methods repeat gradient"),
        (["--sigmas", "1,x"], "--sigmas must be comma-separated numbers; got '1,x'"),
        (["--sigmas", "-1"], "sigma must be a finite number >= 0.0; got -1.0"),
        (["--sigmas", "nan"], "sigma must be a finite number >= 0.0; got nan"),
        (["--sigmas", "1,1.0"], "sigmas repeat 1"),
        (["--method-option", "epsilon=0.1"], "method option 'epsilon' is taken by none of the"),
        (["--method-option", "epsilon"], "--method-option must be KEY=JSON"),
        (["--methods", "smoothgrad", "--method-option", "samples=0"], "samples must be a positive"),
        (["--target", "truth"], "target must be one of label, predicted; got 'truth'"),
        (["--data-seed", "-1"], "data_seed must be an int >= 0; got -1"),
        (["--batch-size", "0"], "batch_size must be a positive int; got 0"),
        (["--limit", "0"], "limit must be a positive int; got 0"),
        (["--split", "dev"], "split must be one of train, validation, test; got 'dev'"),
        (["--temporal-padding", "wrap"], "temporal_padding must be one of zero, edge"),
        (["--threshold", "pixel"], "threshold must be one of clip, frame"),
        (["--mask-tolerance", "-1"], "mask_tolerance must be an int >= 0; got -1"),
        (["--motion-mask", "optical"], "motion_mask must be one of exact, flow; got 'optical'"),
        (["--flow-min-flow", "-1"], "flow_min_flow must be a finite number >= 0.0; got -1.0"),
        (["--model", "no_such_model"], "no checkpoint named or at 'no_such_model'"),
        (["--dataset", "synthetic_motion/nope"], "synthetic_motion config must be one of"),
        (["--dataset", "synthetic_motion"], "clips are (16, 48, 48) (T, H, W) but the model takes"),
        (["--dataset", "folder:/no/such/folder"], "data_seed works only with synthetic_motion"),
        (["--coordinator", "localhost:1"], "a coordinator needs num_processes and process_id"),
        (["--coordinator", "localhost:1", "--num-processes", "2", "--process-id", "2"],
         "process_id must lie in [0, 2); got 2"),
    ],
)  # fmt: skip
def test_bad_flags_are_one_line_and_write_nothing(model_dir, tmp_path, extra, message):
    result = runner.invoke(app, [*_args(model_dir, tmp_path / "s", "--no-progress"), *extra])
    assert result.exit_code == 2 and result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("selrel: error: "), result.stderr
    assert message in lines[0]
    assert not (tmp_path / "s").exists()


def test_a_missing_folder_and_bad_output_paths_are_one_line(model_dir, tmp_path):
    (tmp_path / "file").write_text("x")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    cases = [
        (["--dataset", "folder:/no/such/folder"], tmp_path / "s", "video folder not found"),
        ([], tmp_path / "file" / "s", "which is a file, not a directory"),
        ([], tmp_path / "other", "holds other files than a sweep"),
    ]
    for extra, out, message in cases:
        args = _args(model_dir, out, "--no-progress", *extra)
        if extra:  # a folder takes no data seed
            i = args.index("--data-seed")
            del args[i : i + 2]
        result = runner.invoke(app, args)
        assert result.exit_code == 2, result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and message in lines[0], result.stderr
    assert not (tmp_path / "s").exists()
    assert os.listdir(tmp_path / "other") == ["notes.txt"]


def test_command_defaults_are_the_librarys():
    command = inspect.signature(sweep_command.sweep).parameters
    library = inspect.signature(sweep.run_sweep).parameters
    assert command["methods"].default is None is library["methods"].default
    assert [float(s) for s in command["sigmas"].default.split(",")] == list(sweep.DEFAULT_SIGMAS)
    assert command["temporal_padding"].default == sweep.DEFAULT_TEMPORAL_PADDING
    names = (
        "split",
        "model",
        "target",
        "batch_size",
        "threshold",
        "faithfulness",
        "mask_tolerance",
    )
    for name in names:
        assert command[name].default == library[name].default, name


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_under_jax_distributed_write_one_table(model_dir, tmp_path):
    port = _free_port()
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1")
    commands = [
        [sys.executable, "-c", "from selrel_jax.cli import main; main()",
         *_args(model_dir, tmp_path / "two", "--no-progress", "--coordinator",
                f"localhost:{port}", "--num-processes", 2, "--process-id", i)]
        for i in range(2)
    ]  # fmt: skip
    procs = [subprocess.Popen(c, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env=env) for c in commands]  # fmt: skip
    outputs = [p.communicate(timeout=300) for p in procs]
    for proc, (_, stderr) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, stderr[-3000:]
    first, second = (json.loads(stdout) for stdout, _ in outputs)
    assert first["shards_written"] == second["shards_written"] == 1  # shards 0 and 1
    assert first["complete"] and first["rows"] == 12
    result = runner.invoke(app, [*_args(model_dir, tmp_path / "one"), "--no-progress"])
    assert result.exit_code == 0, result.stderr
    two = sweep.table_columns(sweep.read_table(tmp_path / "two"))
    one = sweep.table_columns(sweep.read_table(tmp_path / "one"))
    for name, values in one.items():
        if values.dtype.kind == "f":
            np.testing.assert_allclose(two[name], values, rtol=0, atol=1e-5, err_msg=name)
        else:
            assert two[name].tolist() == values.tolist(), name


def _my_videos(root):
    """Five videos: two in a class folder, two in folders of other names, one loose."""
    rng = np.random.default_rng(3)
    for name in ("translate_left/a.mp4", "translate_left/b.mp4", "holiday/c.mp4",
                 "garden/d.mp4", "e.mp4"):  # fmt: skip
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        data.write_video(root / name, rng.integers(0, 255, (10, 40, 40, 3), np.uint8), fps=8)
    return root


def _folder_sweep(model_dir, out, videos, *extra):
    return runner.invoke(app, ["sweep", "--dataset", f"folder:{videos}", "--model",
                               str(model_dir), "--methods", "gradient", "--sigmas", "1",
                               "--out", str(out), "--no-progress",
                               *map(str, extra)])  # fmt: skip


def test_split_all_sweeps_every_video_whatever_its_folder(model_dir, tmp_path):
    # A folder sweep used to take one split of class folders only: the other folders
    # were an error naming one file, and a class with one video left its test split empty.
    videos = _my_videos(tmp_path / "videos")
    result = _folder_sweep(model_dir, tmp_path / "s", videos, "--split", "all",
                           "--target", "predicted")  # fmt: skip
    assert result.exit_code == 0, result.stderr
    record = json.loads(result.stdout)
    assert record["clips"] == 5 and record["failed"] == 0 and record["videos_left_out"] == {}
    table = sweep.read_table(tmp_path / "s").to_pydict()
    labels = dict(zip(table["clip_id"], table["label"], strict=True))
    assert labels == {"e.mp4#0": -1, "garden/d.mp4#0": -1, "holiday/c.mp4#0": -1,
                      "translate_left/a.mp4#0": 0, "translate_left/b.mp4#0": 0}  # fmt: skip
    assert table["target"] == table["predicted"]


def test_split_all_explaining_labels_needs_labels_and_writes_nothing(model_dir, tmp_path):
    videos = _my_videos(tmp_path / "videos")
    result = _folder_sweep(model_dir, tmp_path / "s", videos, "--split", "all")
    assert result.exit_code == 2 and result.stdout == ""
    [line] = result.stderr.strip().splitlines()
    assert line.startswith(
        f"selrel: error: 3 of the 5 videos in {videos} have no label to "
        f"explain (e.g. {videos / 'e.mp4'}: its folder is not a class"
    )
    assert "use target 'predicted' (--target predicted)" in line
    assert "(6 classes: translate_left, translate_right, " in line
    assert not (tmp_path / "s").exists()
    other = runner.invoke(app, [*_args(model_dir, tmp_path / "s"), "--split", "all"])
    assert "split 'all' works only with folder:PATH datasets" in other.stderr


def test_a_folder_that_is_no_class_is_refused_listing_the_classes(model_dir, tmp_path):
    videos = _my_videos(tmp_path / "videos")
    (videos / "e.mp4").unlink()
    result = _folder_sweep(model_dir, tmp_path / "s", videos, "--split", "train")
    assert result.exit_code == 2 and result.stdout == ""
    [line] = result.stderr.strip().splitlines()
    assert f"video {videos / 'garden' / 'd.mp4'} is in folder 'garden', which is not a " in line
    assert "class name (nor are holiday); the 6 classes: translate_left, translate_right, " in line
    assert line.endswith("; or sweep every video, whatever its folder, with split 'all' "
                         "(--split all)")  # fmt: skip


def test_a_folder_splits_json_line_says_how_many_videos_the_other_splits_hold(model_dir, tmp_path):
    videos = tmp_path / "videos"
    for i, name in enumerate(("translate_left", "translate_right")):
        (videos / name).mkdir(parents=True)
        for k in range(3):
            rng = np.random.default_rng(10 * i + k)
            frames = rng.integers(0, 255, (10, 40, 40, 3), np.uint8)
            data.write_video(videos / name / f"v{k}.mp4", frames, fps=8)
    result = _folder_sweep(model_dir, tmp_path / "s", videos, "--split", "test")
    assert result.exit_code == 0, result.stderr
    record = json.loads(result.stdout)
    assert record["clips"] == 2 and record["videos_left_out"] == {"train": 2, "validation": 2}
