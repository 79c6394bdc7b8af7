"""Decoding under a per-file timeout in a worker process: a file that hangs or crashes the
decoder is a DataError naming it, the caller goes on (the next file gets a fresh worker),
and the explain and sweep paths decode every file this way."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from typer.testing import CliRunner

from selrel_jax import data
from selrel_jax import video_explanation as ve
from selrel_jax._worker import DEFAULT_DECODE_TIMEOUT, DecodeWorker
from selrel_jax.cli import app
from selrel_jax.data import synthetic_motion
from selrel_jax.data._reader import read_frames
from selrel_jax.errors import DataError, OptionError
from selrel_jax.sweep import read_manifest, read_table, run_sweep
from selrel_jax.sweep._sources import FolderClipSource
from tests.robustness import jobs


@pytest.fixture(scope="module")
def worker():
    worker = DecodeWorker()
    yield worker
    worker.close()


def _small_video(path, count=6):
    frames = np.random.default_rng(0).integers(0, 255, (count, 24, 24, 3), dtype=np.uint8)
    return data.write_video(path, frames, fps=8)


def test_a_relative_path_means_the_callers_working_directory_now(worker, tmp_path, monkeypatch):
    """The worker outlives a chdir of its caller (a notebook's os.chdir, a test's)."""
    monkeypatch.chdir(tmp_path)
    worker.run("first.mp4", 60.0, read_frames, os.path.abspath(_small_video("first.mp4")))
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    _small_video("second.mp4", count=4)
    frames, _ = worker.run("second.mp4", 60.0, read_frames, "second.mp4")
    assert len(frames) == 4


@pytest.mark.slow
def test_a_decode_that_hangs_is_stopped_at_the_timeout_naming_the_file(worker, tmp_path):
    video = _small_video(tmp_path / "good.mp4")
    start = time.perf_counter()
    with pytest.raises(DataError, match=r"decoding .*stuck\.mp4 took longer than 1 s") as e:
        worker.run(tmp_path / "stuck.mp4", 1.0, jobs.hang)
    assert time.perf_counter() - start < 30 and "\n" not in str(e.value)
    frames, rate = worker.run(video, 60.0, read_frames, video)  # a fresh worker
    assert frames.shape == (6, 24, 24, 3) and rate == pytest.approx(8)


def test_a_decoder_crash_is_a_data_error_naming_the_file_and_the_caller_goes_on(worker, tmp_path):
    video = _small_video(tmp_path / "good.mp4")
    with pytest.raises(DataError, match=r"decoding .*bad\.avi ended the decoder process "
                                        r"\(signal SIGSEGV\)"):  # fmt: skip
        worker.run(tmp_path / "bad.avi", 60.0, jobs.crash)
    assert worker.run(video, 60.0, read_frames, video)[0].shape[0] == 6


def test_errors_come_back_as_raised_and_others_as_data_errors_naming_the_file(worker, tmp_path):
    with pytest.raises(DataError, match=r"not found: .*missing\.mp4"):
        worker.run(tmp_path / "missing.mp4", 60.0, read_frames, tmp_path / "missing.mp4")
    with pytest.raises(OptionError, match="size must be a positive int"):
        worker.run("x.mp4", 60.0, read_frames, "x.mp4", size=0)
    with pytest.raises(DataError, match=r"cannot decode video x\.mp4: ValueError: invalid"):
        worker.run("x.mp4", 60.0, int, "not a number")
    with pytest.raises(OptionError, match="decode timeout must be a finite number > 0"):
        worker.run("x.mp4", 0, read_frames, "x.mp4")


CALLER = """
import sys
from selrel_jax._worker import DecodeWorker
from tests.robustness import jobs
worker = DecodeWorker()
worker.run("warm-up", 600, int, "1")
print(worker._process.pid, flush=True)
worker.run("stuck.mp4", 3600, jobs.hang)
"""


@pytest.mark.slow
def test_the_worker_ends_when_its_caller_is_killed():
    caller = subprocess.Popen([sys.executable, "-c", CALLER], stdout=subprocess.PIPE, text=True)
    try:
        pid = int(caller.stdout.readline())
        os.kill(pid, 0)  # the worker runs, busy on a decode that never ends
        caller.kill()
        caller.wait()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.2)
        else:
            os.kill(pid, signal.SIGKILL)
            pytest.fail("the worker outlived its killed caller by 30 s")
    finally:
        caller.kill()
        caller.stdout.close()


def _folder(root, names):
    """root/<class>/<name>: small decodable videos (a ``hang``/``crash`` name is enough for
    TroubleFolder to misbehave on it)."""
    for cls, name in names:
        (root / cls).mkdir(parents=True, exist_ok=True)
        _small_video(root / cls / name, count=10)
    return root


@pytest.mark.slow
def test_the_sweep_source_lists_a_file_that_hangs_or_crashes_and_reads_the_others(tmp_path):
    root = _folder(tmp_path / "videos", [("a", "good1.mp4"), ("a", "hang.mp4"),
                                         ("b", "crash.mp4"), ("b", "good2.mp4")])  # fmt: skip
    folder = jobs.TroubleFolder(root, clip_length=4, size=16, crop=16)
    source = FolderClipSource(folder, decode_timeout=4.0)
    batch = source.read(range(4))
    assert sorted(batch.failed) == [1, 2]
    assert "hang.mp4 took longer than 4 s" in batch.failed[1]
    assert "crash.mp4 ended the decoder process (signal SIGSEGV)" in batch.failed[2]
    for row in (0, 3):
        np.testing.assert_array_equal(batch.video[row], folder[row]["video"])


@pytest.mark.slow
def test_a_sweep_lists_every_video_that_exceeds_its_decode_timeout(tmp_path):
    classes = synthetic_motion.CLASS_NAMES[:2]  # the model's
    root = _folder(tmp_path / "videos", [(c, f"v{i}.mp4") for c in classes for i in range(2)])
    out = tmp_path / "sweep"
    summary = run_sweep(out, dataset=f"folder:{root}", model="c3d_small_motion",
                        methods=["gradient"], sigmas=[1.0], target="predicted",
                        decode_timeout=1e-3)  # fmt: skip
    assert summary["complete"] and summary["failed"] == summary["clips"] == 2
    failed = read_manifest(out)["failed"]
    assert [f["clip_id"] for f in failed] == [f"{c}/v1.mp4#0" for c in classes]
    assert all("took longer than 0.001 s" in f["reason"] for f in failed)
    assert read_table(out).num_rows == 0
    assert "decode_timeout" not in read_manifest(out)["settings"]  # a rerun may change it


@pytest.mark.slow
def test_explain_decodes_each_video_under_the_timeout_and_names_the_ones_it_stops(tmp_path):
    videos = [_small_video(tmp_path / f"clip{i}.mp4", count=20) for i in range(2)]
    result = CliRunner().invoke(app, ["explain", "--no-progress", "--method", "gradient",
                                      *map(str, videos), "--out", str(tmp_path / "o"),
                                      "--decode-timeout", "0.001"])  # fmt: skip
    assert result.exit_code == 2 and result.stdout == ""
    assert result.stderr.splitlines() == [
        f"selrel: error: {v}: decoding {v} took longer than 0.001 s (the decode timeout); "
        "its decoder process was stopped"
        for v in videos
    ]
    assert not (tmp_path / "o").exists() or os.listdir(tmp_path / "o") == []


def test_a_bad_decode_timeout_is_one_error_before_any_video_is_read(tmp_path):
    videos = [str(tmp_path / f"missing{i}.mp4") for i in range(2)]
    result = CliRunner().invoke(app, ["explain", "--no-progress", "--method", "gradient",
                                      *videos, "--out", str(tmp_path / "o"),
                                      "--decode-timeout", "0"])  # fmt: skip
    assert result.exit_code == 2 and result.stdout == ""
    assert result.stderr.splitlines() == [
        "selrel: error: decode_timeout must be a finite number > 0.0; got 0.0"
    ]
    with pytest.raises(OptionError, match="decode_timeout must be a finite number > 0"):
        run_sweep(tmp_path / "s", dataset="synthetic_motion", data_seed=0, decode_timeout=-1)
    assert not (tmp_path / "o").exists() and not (tmp_path / "s").exists()


def test_decode_timeout_defaults_agree():
    import inspect

    from selrel_jax.cli import explain as explain_command
    from selrel_jax.cli import sweep as sweep_command

    library = inspect.signature(ve.explain_files).parameters["decode_timeout"].default
    sweeps = inspect.signature(run_sweep).parameters["decode_timeout"].default
    assert library == sweeps == DEFAULT_DECODE_TIMEOUT
    for command in (explain_command.explain, sweep_command.sweep):
        assert inspect.signature(command).parameters["decode_timeout"].default == library
    assert inspect.signature(ve.explain_video).parameters["decode_timeout"].default is None
