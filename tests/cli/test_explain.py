"""``selrel explain``: the main job, from video files to pictures, and its one-line errors."""

from __future__ import annotations

import inspect
import json
import os
import shutil
import subprocess
import sys

import matplotlib.image as mpimg
import numpy as np
import pytest
from typer.testing import CliRunner

from selrel_jax import data, models
from selrel_jax import video_explanation as ve
from selrel_jax.cli import app
from selrel_jax.cli import explain as explain_command
from tests.data.videos import write_png16

runner = CliRunner()


def _run(*args, cwd=None):
    old = os.getcwd()
    try:
        if cwd is not None:
            os.chdir(cwd)
        result = runner.invoke(app, ["explain", "--no-progress", *map(str, args)])
    finally:
        os.chdir(old)
    return result.exit_code, result.stdout, result.stderr


def test_no_arguments_explains_the_bundled_sample_as_its_class(tmp_path):
    code, stdout, stderr = _run(cwd=tmp_path)
    assert code == 0, stderr
    lines = stdout.splitlines()
    assert len(lines) == 1
    record = json.loads(lines[0])
    assert record["predicted"] == data.sample_clip_info()["class_name"]
    assert record["out"] == os.path.join("selrel_out", "sample_clip")
    assert 0 <= record["spatial_bias"] <= 1
    out = tmp_path / "selrel_out" / "sample_clip"
    assert {"overlay.mp4", "filmstrip.png", "timeline.png", "summary.json", "timings.json"} <= set(
        os.listdir(out)
    )
    timings = json.loads((out / "timings.json").read_text())
    assert timings["backend"] and timings["device_count"] >= 1


def test_epsilon_gamma_box_runs_without_options(tmp_path):
    code, _stdout, stderr = _run("--method", "lrp.epsilon_gamma_box", "--out", tmp_path)
    assert code == 0, stderr
    summary = json.loads((tmp_path / "sample_clip" / "summary.json").read_text())
    assert summary["method"] == "lrp.epsilon_gamma_box"
    assert len(summary["method_options"]["low"]) == 3  # the model's normalised pixel range


@pytest.mark.parametrize("method", ["lrp.dtd", "baseline.frame_difference"])
def test_dtd_and_a_model_free_baseline_run_without_options(tmp_path, method):
    code, _stdout, stderr = _run("--method", method, "--out", tmp_path)
    assert code == 0, stderr
    summary = json.loads((tmp_path / "sample_clip" / "summary.json").read_text())
    assert summary["method"] == method
    if method == "lrp.dtd":  # the box rule's bounds: the model's normalised pixel range
        low, high = models.load("c3d_small_motion")[2].input_bounds()
        np.testing.assert_allclose(summary["method_options"]["low"], low)
        np.testing.assert_allclose(summary["method_options"]["high"], high)


def test_a_bad_video_is_reported_and_the_others_still_run(tmp_path):
    sample = data.sample_clip_path()
    code, stdout, stderr = _run(tmp_path / "missing.mp4", sample, "--out", tmp_path / "o",
                                "--method", "gradient")  # fmt: skip
    assert code == 2
    missing = tmp_path / "missing.mp4"
    assert stderr.strip().splitlines() == [
        f"selrel: error: {missing}: video file or frame folder not found: {missing}"
    ]
    assert [json.loads(line)["video"] for line in stdout.splitlines()] == [str(sample)]
    assert os.listdir(tmp_path / "o") == ["sample_clip"]


def test_a_camera_video_through_a_synthetic_model_is_warned_of_on_stderr_and_in_the_line(
    tmp_path,
):
    cat = pytest.importorskip("skimage.data").chelsea()
    video = tmp_path / "cat.mp4"
    data.write_video(video, np.stack([cat[:, 100 + 2 * t : 400 + 2 * t] for t in range(16)]), fps=8)
    code, stdout, stderr = _run(video, "--out", tmp_path / "o", "--method", "gradient")
    assert code == 0, stderr
    [line] = [json.loads(text) for text in stdout.splitlines()]
    [warning] = line["warnings"]
    assert warning.startswith(f"{video}: frames of 300x300, ") and "(docs/models.md)" in warning
    assert f"selrel: warning: {warning}" in stderr.splitlines()
    code, stdout, _ = _run(video, "--out", tmp_path / "o", "--method", "gradient")
    assert json.loads(stdout)["warnings"] == [warning]  # a kept output's line too


@pytest.mark.parametrize(
    "args, message",
    [
        (["--model", "no_such_model"], "no checkpoint named or at 'no_such_model'"),
        (["--method", "lrp.nope"], "unknown method 'lrp.nope'"),
        (["--method-option", "epsilon=0.1", "--method", "gradient"], "unknown option(s)"),
        (["--method-option", "epsilon"], "--method-option must be KEY=JSON"),
        (["--method-option", "epsilon=abc"], "--method-option epsilon: the value must be JSON"),
        (["--sigma", "-1"], "sigma must be a finite number >= 0.0; got -1.0"),
        (["--target", "99"], "target 99 out of range for 6 classes"),
        (["--target", "jumping"], "target 'jumping' is not a class name"),
        (["--target", "\u00b2"], "target '\u00b2' is not a class name"),
        (["--target", "name:2"], "target 'name:2' is not a class name"),
        (["--temporal-padding", "wrap"], "temporal_padding must be one of zero, edge"),
        (["--threshold", "pixel"], "threshold must be one of clip, frame"),
        (["--clip-stride", "0"], "clip_stride must be a positive int"),
        (["--batch-size", "0"], "batch_size must be a positive int"),
    ],
)
def test_bad_settings_are_one_line_and_write_nothing(tmp_path, args, message):
    code, stdout, stderr = _run(*args, "--out", tmp_path / "o")
    assert code == 2 and stdout == ""
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("selrel: error: "), stderr
    assert message in lines[0]
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    ("method", "option", "message"),
    [
        ("lrp.epsilon_plus_flat", 'epsilon="abc"', "epsilon must be a finite number"),
        ("smoothgrad", 'noise_level="abc"', "noise_level must be a finite number"),
    ],
)
def test_a_bad_method_option_value_stops_before_any_video_is_read(
    tmp_path, method, option, message
):
    # The value used to be found only when each video was explained, and reported per
    # video as if the videos were bad: here two missing videos were each "not found".
    missing = [tmp_path / "a.mp4", tmp_path / "b.mp4"]
    code, stdout, stderr = _run(*missing, "--method", method, "--method-option", option,
                                "--out", tmp_path / "o")  # fmt: skip
    assert code == 2 and stdout == ""
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("selrel: error: "), stderr
    assert message in lines[0] and "a.mp4" not in lines[0]
    assert not (tmp_path / "o").exists()


def test_a_sixteen_bit_frame_folder_is_explained_scaled_and_a_still_is_refused(tmp_path):
    # 16-bit PNG frames used to be read all white and "explained"; a 1-frame folder got
    # motion scores for a still image.
    pixels = np.random.default_rng(2).integers(0, 65536, (16, 48, 48), dtype=np.uint16)
    (tmp_path / "deep").mkdir()
    for i, frame in enumerate(pixels):
        write_png16(tmp_path / "deep" / f"f{i}.png", frame)
    (tmp_path / "still").mkdir()
    write_png16(tmp_path / "still" / "f0.png", pixels[0])
    code, stdout, stderr = _run(tmp_path / "still", tmp_path / "deep", "--method", "gradient",
                                "--save-arrays", "--out", tmp_path / "o")  # fmt: skip
    assert code == 2
    error, warning = stderr.strip().splitlines()
    assert error == (
        f"selrel: error: {tmp_path / 'still'}: {tmp_path / 'still'} has no motion: its 1 "
        "sampled frame(s) are one image; selective relevance needs at least 2 distinct "
        "frames, so a still has no motion scores"
    )
    # grey noise is nothing like the synthetic clips the model was trained on
    assert warning.startswith(f"selrel: warning: {tmp_path / 'deep'}: 100% of its pixels dark")
    assert [json.loads(line)["video"] for line in stdout.splitlines()] == [str(tmp_path / "deep")]
    assert sorted(os.listdir(tmp_path / "o")) == ["deep"]
    frames = np.load(tmp_path / "o" / "deep" / "relevance.npz")["frames"]
    eight = np.round(pixels / 257).astype(np.uint8)
    np.testing.assert_array_equal(frames, np.repeat(eight[..., None], 3, -1))


def test_existing_output_needs_overwrite(tmp_path):
    assert _run("--out", tmp_path, "--method", "gradient")[0] == 0
    before = (tmp_path / "sample_clip" / "summary.json").read_bytes()
    code, _stdout, stderr = _run("--out", tmp_path, "--method", "gradient_x_input")
    assert code == 2 and "was made with other settings (method: " in stderr
    assert "; pass --overwrite to replace it or choose another output" in stderr
    assert (tmp_path / "sample_clip" / "summary.json").read_bytes() == before
    code, _, stderr = _run("--out", tmp_path, "--method", "gradient_x_input", "--overwrite")
    assert code == 0, stderr
    summary = json.loads((tmp_path / "sample_clip" / "summary.json").read_text())
    assert summary["method"] == "gradient_x_input"


def test_output_below_a_regular_file_is_one_line_without_traceback(tmp_path):
    (tmp_path / "file").write_text("x")
    proc = subprocess.run(
        [sys.executable, "-c", "from selrel_jax.cli import main; main()", "explain",
         "--no-progress", "--method", "gradient", "--out", str(tmp_path / "file" / "out")],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("selrel: error: ")
    assert "cannot write output" in proc.stderr
    assert os.listdir(tmp_path) == ["file"]


def test_two_runs_give_identical_summaries(tmp_path):
    for name in ("a", "b"):
        assert _run("--out", tmp_path / name, "--method", "gradient_x_input")[0] == 0
    a, b = (tmp_path / n / "sample_clip" / "summary.json" for n in "ab")
    assert a.read_bytes() == b.read_bytes()


def test_command_defaults_are_the_librarys():
    params = inspect.signature(explain_command.explain).parameters
    library = inspect.signature(ve.explain_files).parameters
    video = inspect.signature(ve.explain_video).parameters
    assert params["model"].default == library["model"].default
    assert str(params["out"].default) == library["out"].default
    for name in (
        "method",
        "sigma",
        "temporal_padding",
        "threshold",
        "window_blend",
        "batch_size",
        "clip_stride",
    ):
        assert params[name].default == video[name].default, name


def _sample_in_every_format(root):
    """The sample clip's frames written in each container the bundled encoder allows,
    and as a folder of png frames: name -> path."""
    from tests.data.videos import codec, write_frame_folder

    frames = data.read_video(data.sample_clip_path())
    formats = {"mp4": ("libx264",), "avi": ("mpeg4",), "webm": ("libvpx-vp9", "libvpx"),
               "mov": ("libx264",), "gif": ("gif",)}  # fmt: skip
    paths = {}
    for suffix, encoders in formats.items():
        encoder = codec(*encoders)
        if encoder is None:
            continue
        pixel_format = "rgb8" if encoder == "gif" else None
        path = root / f"clip_{suffix}.{suffix}"
        data.write_video(path, frames, fps=8, codec=encoder, pixel_format=pixel_format)
        paths[suffix] = path
    write_frame_folder(root / "clip_frames", frames)
    paths["frames"] = root / "clip_frames"
    return paths


# Four videos written, decoded and explained end to end (~12 s): the slow step. The
# sample clip's own end-to-end run stays in the fast suite (test_no_arguments_...).
@pytest.mark.slow
def test_every_container_and_a_frame_folder_end_to_end(tmp_path):
    paths = _sample_in_every_format(tmp_path / "in")
    assert {"mp4", "avi", "gif", "frames"} <= set(paths)
    code, stdout, stderr = _run(*paths.values(), "--out", tmp_path / "o", "--method",
                                "gradient_x_input")  # fmt: skip
    assert code == 0, stderr
    records = [json.loads(line) for line in stdout.splitlines()]
    assert [r["video"] for r in records] == [str(p) for p in paths.values()]
    for record in records:
        out = record["out"]
        summary = json.loads(open(os.path.join(out, "summary.json")).read())
        assert {"video", "probs", "top5", "spatial_bias", "clips", "target"} <= set(summary)
        assert abs(sum(summary["probs"]) - 1) < 1e-5 and 0 <= summary["spatial_bias"] <= 1
        assert summary["frames"] == 32, record  # 8 fps in, every frame sampled
        overlay = data.read_video(os.path.join(out, "overlay.mp4"))
        assert overlay.shape[0] == 32 and overlay.shape[1] > 48, record
        for png in ("filmstrip.png", "timeline.png"):
            assert mpimg.imread(os.path.join(out, png)).ndim == 3
        # lossy codecs change pixels, not what the motion model sees
        assert record["predicted"] == data.sample_clip_info()["class_name"], record


def test_a_folder_without_frames_is_one_error(tmp_path):
    (tmp_path / "empty").mkdir()
    code, stdout, stderr = _run(tmp_path / "empty", "--out", tmp_path / "o")
    assert code == 2 and stdout == ""
    assert stderr.strip().startswith(f"selrel: error: {tmp_path / 'empty'}: ")
    assert not (tmp_path / "o" / "empty").exists()


def test_a_corrupt_video_is_one_error(tmp_path):
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"\x00\x00\x00\x18ftypmp42" + os.urandom(2000))
    code, stdout, stderr = _run(bad, "--out", tmp_path / "o")
    assert code == 2 and stdout == "" and len(stderr.strip().splitlines()) == 1
    assert stderr.startswith(f"selrel: error: {bad}: ")
    assert not (tmp_path / "o").exists() or os.listdir(tmp_path / "o") == []


def test_an_output_that_would_replace_the_input_frames_is_refused_and_deletes_nothing(tmp_path):
    from tests.data.videos import write_frame_folder

    write_frame_folder(tmp_path / "myframes", data.read_video(data.sample_clip_path())[:20])
    before = {p.name: p.read_bytes() for p in (tmp_path / "myframes").iterdir()}
    for extra in ([], ["--overwrite"]):
        code, stdout, stderr = _run("myframes", "--out", ".", "--method", "gradient", *extra,
                                    cwd=tmp_path)  # fmt: skip
        assert code == 2 and stdout == "" and "Traceback" not in stderr
        assert stderr.strip() == ("selrel: error: output ./myframes is the input myframes; choose "
                                  "a --out where no input lies")  # fmt: skip
        assert {p.name: p.read_bytes() for p in (tmp_path / "myframes").iterdir()} == before
        assert os.listdir(tmp_path) == ["myframes"]


def test_overwrite_refuses_an_output_holding_a_users_file(tmp_path):
    assert _run("--out", tmp_path, "--method", "gradient")[0] == 0
    (tmp_path / "sample_clip" / "thesis.txt").write_text("three years")
    code, stdout, stderr = _run("--out", tmp_path, "--method", "gradient", "--overwrite")
    assert code == 2 and stdout == ""
    assert "holds files selrel explain did not write (thesis.txt)" in stderr
    assert (tmp_path / "sample_clip" / "thesis.txt").read_text() == "three years"


def _recording_viz(monkeypatch):
    """Patch viz so that each saved figure's title (by file name) and each overlay
    caption are recorded: the titles read back from the figures themselves."""
    from selrel_jax import viz

    titles, captions = {}, []
    save_figure, panels = viz.save_figure, viz.panels

    def saving(fig, path, **kwargs):
        titles[os.path.basename(path)] = fig.get_suptitle() or fig.axes[0].get_title()
        return save_figure(fig, path, **kwargs)

    def drawing(*args, caption=None, **kwargs):
        captions.append(caption)
        return panels(*args, caption=caption, **kwargs)

    monkeypatch.setattr(viz, "save_figure", saving)
    monkeypatch.setattr(viz, "panels", drawing)
    return titles, captions


def test_saved_pictures_name_the_class_explained_and_the_prediction(tmp_path, monkeypatch):
    # They used to be titled with the predicted class only, whatever was explained.
    from selrel_jax import explanation_files

    rng = np.random.default_rng(0)
    maps = {name: rng.normal(size=(4, 8, 8)).astype(np.float32)
            for name in ("relevance", "selective", "static")}  # fmt: skip
    result = ve.VideoExplanation(
        video="clip.mp4", frames=rng.integers(0, 256, (4, 8, 8, 3), dtype=np.uint8), fps=8.0,
        **maps, clip_starts=np.array([0]), clip_length=4,
        clip_logits=np.array([[0.0, 2.0, 1.0]], np.float32),
        clip_scores={k: np.array([0.5], np.float32)
                     for k in ("target_logit", "spatial_bias", "kept_voxels", "relevance_mass",
                               "selective_mass", "gini_raw", "gini_selective")},
        probs=np.array([0.1, 0.7, 0.2], np.float32), target=2, class_names=("a", "b", "c"),
        settings=ve.ExplainSettings(method="gradient", sigma=2.0), method_options={},
        loop_padded=False,
    )  # fmt: skip
    titles, captions = _recording_viz(monkeypatch)
    explanation_files.save_explanation(result, tmp_path / "clip")
    label = "explained: c (predicted: b, 70%)"
    assert titles == {name: f"clip.mp4: {label} - gradient, sigma=2"
                      for name in ("filmstrip.png", "timeline.png")}  # fmt: skip
    assert captions == [label]


@pytest.mark.slow
def test_pictures_and_the_json_line_name_the_class_explained(tmp_path, monkeypatch):
    # The JSON line used to have no target, and the pictures named only the prediction.
    titles, captions = _recording_viz(monkeypatch)
    code, stdout, stderr = _run("--target", "translate_left", "--method", "gradient",
                                "--out", tmp_path)  # fmt: skip
    assert code == 0, stderr
    record = json.loads(stdout)
    summary = json.loads((tmp_path / "sample_clip" / "summary.json").read_text())
    assert record["target"] == summary["target"] == {"index": 0, "name": "translate_left"}
    probability = summary["probs"][summary["predicted"]["index"]]
    label = f"explained: translate_left (predicted: translate_right, {probability:.0%})"
    assert summary["predicted"]["name"] == record["predicted"] == "translate_right"
    assert titles == {
        name: f"sample_clip.mp4: {label} - gradient, sigma=1" for name in
        ("filmstrip.png", "timeline.png")
    }  # fmt: skip
    assert captions and set(captions) == {label}


def test_progress_names_each_video_and_stage_on_stderr_only(tmp_path, monkeypatch):
    # Two videos used to give four anonymous bars ("predict", "explain"), and decoding
    # and writing the overlay and pictures showed nothing.
    monkeypatch.setattr(ve, "_COMPILED", {})  # a fresh compilation, which the bar names
    videos = [str(shutil.copy(data.sample_clip_path(), tmp_path / f"{n}.mp4")) for n in "ab"]
    result = runner.invoke(app, ["explain", *videos, "--method", "gradient", "--out",
                                 str(tmp_path / "o")])  # fmt: skip
    assert result.exit_code == 0, result.stderr
    assert [json.loads(line)["video"] for line in result.stdout.splitlines()] == videos
    stages = ("decode", "predict", "explain", "write pictures", "write overlay")
    for video in ("a.mp4", "b.mp4"):
        for stage in stages:
            assert f"{video}: {stage}: 100%" in result.stderr, (video, stage)
    assert "a.mp4: write overlay: 100%|██████████| 32/32" in result.stderr  # every frame
    first, second = result.stderr.split("b.mp4: decode", 1)
    assert "a.mp4: predict:   0%|          | 0/3 [00:00<?, ?clip/s, compiling]" in first
    assert "a.mp4: explain:   0%|          | 0/3 [00:00<?, ?clip/s, compiling]" in first
    assert "compiling" not in second  # compiled once, for both videos
    assert "\rpredict" not in result.stderr and "\rexplain" not in result.stderr  # all named
