"""``selrel explain`` with several videos resumes: a rerun keeps every finished output made
with the same settings (and says so), explains the rest, refuses outputs of other settings
naming them, and removes what a killed run left half-written."""

from __future__ import annotations

import json
import os
import shutil
import socket

import pytest
from typer.testing import CliRunner

from selrel_jax import data
from selrel_jax import video_explanation as ve
from selrel_jax.cli import app
from selrel_jax.errors import OptionError

SETTINGS = {"method": "gradient", "sigma": 1.0}


def _explain(videos, out, **changes):
    kwargs = {**SETTINGS, **changes}
    return [(video, record) for video, record in ve.explain_files(videos, out=out, **kwargs)]


def _moved(record: dict, out) -> dict:
    """``record`` of an output in the fixture's folder, as it reads from the copy ``out``."""
    return record | {"out": os.path.join(out, os.path.basename(record["out"]))}


def _tree(directory) -> dict[str, bytes]:
    return {
        os.path.relpath(os.path.join(d, f), directory): open(os.path.join(d, f), "rb").read()
        for d, _, files in os.walk(directory)
        for f in files
        if f != "timings.json"  # wall times: apart from the results so these can compare
    }


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """Two videos explained into one folder: (videos, out, records)."""
    root = tmp_path_factory.mktemp("resume")
    videos = [root / "first.mp4", root / "second.mp4"]
    for video in videos:
        shutil.copy(data.sample_clip_path(), video)
    records = _explain(videos, root / "out")
    assert all(isinstance(r, dict) for _, r in records), records
    return videos, root / "out", [r for _, r in records]


@pytest.fixture
def copy_of(finished, tmp_path):
    videos, out, records = finished
    shutil.copytree(out, tmp_path / "out")
    return videos, tmp_path / "out", records


def test_a_rerun_keeps_finished_outputs_and_explains_only_the_rest(copy_of, monkeypatch):
    videos, out, records = copy_of
    before = _tree(out / "first")
    shutil.rmtree(out / "second")  # as if the run had been killed before it
    explained = []
    explain_video = ve.explain_video
    monkeypatch.setattr(ve, "explain_video", lambda v, *a, **k: explained.append(v)
                        or explain_video(v, *a, **k))  # fmt: skip
    again = [r for _, r in _explain(videos, out)]
    assert explained == [videos[1]]
    assert again == [_moved(records[0], out) | {"kept": True}, _moved(records[1], out)]
    assert _tree(out / "first") == before
    assert sorted(os.listdir(out)) == ["first", "second"]
    # and the same call once more only reports
    assert [r for _, r in _explain(videos, out)] == [
        _moved(r, out) | {"kept": True} for r in records
    ]
    assert explained == [videos[1]]


def test_the_kept_line_equals_the_line_of_the_run_that_wrote_it(copy_of):
    videos, out, records = copy_of
    summary = json.loads((out / "first" / "summary.json").read_text())
    assert records[0]["predicted"] == summary["predicted"]["name"]
    assert records[0]["spatial_bias"] == summary["spatial_bias"]  # the same 6 digits
    result = CliRunner().invoke(app, ["explain", "--no-progress", "--method", "gradient",
                                      str(videos[0]), "--out", str(out)])  # fmt: skip
    assert result.exit_code == 0, result.stderr
    line = json.loads(result.stdout)
    assert line["kept"] is True and line["spatial_bias"] == summary["spatial_bias"]
    assert line["predicted"] == summary["predicted"]["name"]


@pytest.mark.parametrize(
    "changes, named",
    [
        ({"sigma": 2.0}, "sigma: 1.0 -> 2.0"),
        ({"method": "gradient_x_input"}, 'method: "gradient" -> "gradient_x_input"'),
        ({"temporal_padding": "zero"}, 'temporal_padding: "edge" -> "zero"'),
        ({"threshold": "frame"}, 'threshold: "clip" -> "frame"'),
        ({"window_blend": "taper"}, 'window_blend: "mean" -> "taper"'),
        ({"target": 0}, 'target: "predicted" -> 0'),
        ({"clip_stride": 4}, "clip_starts: [0, 8, 16] -> [0, 4, 8, 12, 16]"),
        ({"save_arrays": True}, "save_arrays: false -> true"),
        ({"model": "c3d_small_biased"}, 'model: "c3d_small_motion" -> "c3d_small_biased"'),
    ],
)
def test_an_output_of_other_settings_is_refused_naming_them(copy_of, changes, named):
    videos, out, _ = copy_of
    before = _tree(out)
    [(_, error)] = _explain(videos[:1], out, **changes)
    assert isinstance(error, OptionError), error
    message = str(error)
    assert message.startswith(f"explanation at {out / 'first'} was made with other settings (")
    assert message.endswith("; pass --overwrite to replace it or choose another output")
    assert named in message and "\n" not in message, message
    assert _tree(out) == before


def test_the_same_output_of_an_explicit_target_or_stride_is_kept(copy_of):
    videos, out, records = copy_of
    # the prediction (class 1) named explicitly, and the default stride spelled out
    [(_, record)] = _explain(videos[:1], out, target="translate_right", clip_stride=8)
    assert record == _moved(records[0], out) | {"kept": True}


def test_another_video_of_the_same_name_is_refused(copy_of, tmp_path):
    _, out, _ = copy_of
    other = tmp_path / "elsewhere" / "first.mp4"
    other.parent.mkdir()
    shutil.copy(data.sample_clip_path(), other)
    [(_, error)] = _explain([other], out)
    assert isinstance(error, OptionError) and "(video: " in str(error)


def test_an_output_that_is_not_an_explanation_is_refused(copy_of):
    videos, out, _ = copy_of
    (out / "first" / "summary.json").write_text('{"video": ')  # cut short
    (out / "second" / "summary.json").unlink()
    [(_, changed), (_, missing)] = _explain(videos, out)
    assert isinstance(changed, OptionError) and isinstance(missing, OptionError)
    # a changed file is not the explanation this library wrote: not even --overwrite replaces it
    assert str(changed) == (f"output {out / 'first'} holds files changed since selrel explain "
                            "wrote them (summary.json); selrel replaces only what it wrote: "
                            "move it away or choose another output")  # fmt: skip
    assert str(missing) == (f"output {out / 'second'} exists; pass --overwrite to replace it (it "
                            "holds no readable summary.json of selrel explain)")  # fmt: skip


def test_temporary_folders_a_killed_run_left_are_removed(copy_of):
    videos, out, _ = copy_of
    dead = 2**22 + 12345  # above the default pid_max: no such process
    stale = [out / f".first.{dead}.0a1b2c3d.tmp", out / f".second.{dead}.deadbeef.tmp"]
    live = out / f".first.{os.getppid()}.00000000.tmp"  # a process that runs
    for folder in (*stale, live):
        folder.mkdir()
        (folder / "summary.json").write_text("{")
    records = [r for _, r in _explain(videos, out)]
    assert all(r.get("kept") for r in records)
    assert sorted(os.listdir(out)) == [live.name, "first", "second"]


# ---------------------------------------------------------------------------- ownership


def _files(directory) -> dict[str, bytes]:
    return {
        os.path.relpath(os.path.join(d, f), directory): open(os.path.join(d, f), "rb").read()
        for d, _, files in os.walk(directory)
        for f in files
    }


def test_overwrite_never_deletes_a_file_explain_did_not_write(copy_of):
    videos, out, _ = copy_of
    (out / "first" / "thesis.txt").write_text("three years of work")
    before = _files(out / "first")
    [(_, error), (_, record)] = _explain(videos, out, overwrite=True)
    assert isinstance(error, OptionError) and str(error) == (
        f"output {out / 'first'} holds files selrel explain did not write (thesis.txt); selrel "
        "replaces only what it wrote: move it away or choose another output"
    )
    assert _files(out / "first") == before  # nothing deleted, nothing written
    assert isinstance(record, dict) and not record.get("kept")  # the other one is replaced


def test_overwrite_never_replaces_a_folder_explain_did_not_write(copy_of, tmp_path):
    videos, out, _ = copy_of
    shutil.rmtree(out / "first")
    (out / "first").mkdir()
    (out / "first" / "summary.json").write_text("{}")  # looks like one, has no marker
    for overwrite in (False, True):
        [(_, error), _] = _explain(videos, out, overwrite=overwrite)
        assert isinstance(error, OptionError)
        assert "was not written by selrel explain (it has no readable .selrel-output.json)" in (
            str(error)
        )
        assert _files(out / "first") == {"summary.json": b"{}"}


def test_an_output_folder_that_is_an_input_is_refused_before_anything_is_read(
    tmp_path, monkeypatch
):
    frames = tmp_path / "myframes"
    frames.mkdir()
    for i in range(3):
        (frames / f"{i:03d}.png").write_bytes(b"png %d" % i)
    before = _files(frames)
    monkeypatch.chdir(tmp_path)
    for out, overwrite in ((".", True), (".", False), ("myframes", True)):
        with pytest.raises(OptionError, match=r"the input myframes; choose a --out where no "):
            _explain(["myframes"], out, overwrite=overwrite)
        assert _files(frames) == before and sorted(os.listdir(tmp_path)) == ["myframes"]


# ---------------------------------------------------------------------------- locks


def test_a_second_run_into_the_same_output_is_refused_naming_the_first(copy_of, monkeypatch):
    videos, out, _ = copy_of
    lock = out / ".selrel.lock"
    holder = {"pid": os.getppid(), "host": socket.gethostname(), "command": "explain",
              "token": "0"}  # fmt: skip
    lock.write_text(json.dumps(holder))
    monkeypatch.setattr(ve, "explain_video", lambda *a, **k: pytest.fail("computed"))
    with pytest.raises(OptionError, match=rf"output {out} is being written by selrel explain "
                       rf"\(pid {os.getppid()} on "):  # fmt: skip
        _explain(videos, out, overwrite=True)
    assert json.loads(lock.read_text()) == holder  # a live run's lock stays


def test_a_lock_a_killed_run_left_is_taken_over_and_removed(copy_of):
    videos, out, _ = copy_of
    dead = 2**22 + 12345
    holder = {"pid": dead, "host": socket.gethostname(), "command": "explain", "token": "0"}
    (out / ".selrel.lock").write_text(json.dumps(holder))
    records = [r for _, r in _explain(videos, out)]
    assert all(r.get("kept") for r in records)
    assert sorted(os.listdir(out)) == ["first", "second"]


def test_two_explains_at_once_into_one_output_one_is_refused(tmp_path):
    out = tmp_path / "out"
    first = ve.explain_files([data.sample_clip_path()], out=out, **SETTINGS)
    second = ve.explain_files([data.sample_clip_path()], out=out, sigma=2.0, method="gradient")
    _, record = next(first)  # the first holds the lock while it is not finished
    with pytest.raises(OptionError, match="is being written by selrel explain"):
        next(second)
    assert isinstance(record, dict)
    assert list(first) == [] and sorted(os.listdir(out)) == ["sample_clip"]
