"""``selrel explain`` with several videos resumes: a rerun keeps every finished output made
with the same settings (and says so), explains the rest, refuses outputs of other settings
naming them, and removes what a killed run left half-written."""

from __future__ import annotations

import json
import os
import shutil

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
    for (_, error), name in zip(_explain(videos, out), ("first", "second"), strict=True):
        assert isinstance(error, OptionError)
        assert str(error) == (f"output {out / name} exists; pass --overwrite to replace it (it "
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
