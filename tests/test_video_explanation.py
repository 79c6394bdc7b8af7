"""explain_video and save_explanation: windows, per-frame maps, scores, files."""

from __future__ import annotations

import dataclasses
import json
import os

import jax
import jax.numpy as jnp
import matplotlib.image as mpimg
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import selrel_jax as sr
from selrel_jax import _jobs, data, explanation_files, models
from selrel_jax import video_explanation as ve
from selrel_jax.data import synthetic_motion

SUMMARY_KEYS = {
    "video", "model", "method", "method_options", "sigma", "temporal_padding", "threshold",
    "window_blend",
    "target", "predicted", "probs", "top5", "spatial_bias", "kept_voxels", "gini_raw",
    "gini_selective", "clips", "versions", "frames", "fps", "clip_length", "loop_padded",
}  # fmt: skip


@pytest.fixture(scope="module")
def motion_model():
    return models.load("c3d_small_motion")


@pytest.fixture(scope="module")
def sample_result(motion_model):
    model, variables, info = motion_model
    return ve.explain_video(data.sample_clip_path(), model, variables, info)


# --- pieces ---


@pytest.mark.parametrize(
    "frames, length, stride, want",
    [
        (32, 16, 8, [0, 8, 16]),
        (33, 16, 8, [0, 8, 16, 17]),  # one more window so the last frame is covered
        (16, 16, 8, [0]),
        (5, 16, 8, [0]),  # shorter than a clip: one loop-padded window
        (40, 16, 16, [0, 16, 24]),
    ],
)
def test_window_starts_cover_every_frame(frames, length, stride, want):
    starts = ve.window_starts(frames, length, stride)
    assert starts.tolist() == want
    covered = np.zeros(max(frames, length), bool)
    for s in starts:
        covered[s : s + length] = True
    assert covered[:frames].all()


def test_per_frame_maps_are_the_mean_of_the_windows_covering_each_frame():
    rng = np.random.default_rng(0)
    starts = np.array([0, 2, 4])
    maps = rng.normal(size=(3, 4, 2, 2)).astype(np.float32)  # 3 windows of 4 frames
    means = ve.FrameMeans(8)
    means.add(maps[:2], starts[:2])  # two batches, as explain_video adds them
    means.add(maps[2:], starts[2:])
    got = means.mean()
    for f in range(8):
        covering = [maps[k, f - s] for k, s in enumerate(starts) if s <= f < s + 4]
        np.testing.assert_allclose(got[f], np.mean(covering, axis=0), rtol=1e-6)
    # a loop-padded window of 4 over 3 frames: frame 0 appears twice
    looped = ve.FrameMeans(3)
    looped.add(maps[:1], np.array([0]))
    looped = looped.mean()
    np.testing.assert_allclose(looped[0], (maps[0, 0] + maps[0, 3]) / 2, rtol=1e-6)


@pytest.mark.parametrize("length", [1, 2, 16, 17])
def test_taper_weights_are_positive_symmetric_and_peak_in_the_middle(length):
    w = np.asarray(ve.window_weights(length, "taper"), np.float64)
    assert w.shape == (length,) and (w > 0).all()  # an edge frame is never dropped
    np.testing.assert_allclose(w, w[::-1], rtol=1e-5)
    i = np.arange(length)
    np.testing.assert_allclose(w, np.sin(np.pi * (i + 1) / (length + 1)) ** 2, rtol=1e-5)
    np.testing.assert_array_equal(ve.window_weights(length, "mean"), np.ones(length))


def test_window_weights_jit_equals_eager():
    jitted = jax.jit(ve.window_weights, static_argnums=(0, 1))
    for blend in ve.WINDOW_BLENDS:
        # XLA's fused sin may round differently from the eager one: float32 last bits
        np.testing.assert_allclose(jitted(16, blend), ve.window_weights(16, blend), rtol=1e-5)


def test_an_unknown_window_blend_is_refused():
    with pytest.raises(sr.OptionError, match=r"window_blend must be one of .*taper"):
        ve.window_weights(16, "hann")
    with pytest.raises(sr.OptionError, match=r"window_blend must be one of"):
        ve.ExplainSettings(window_blend="median")


@settings(max_examples=25, deadline=None)
@given(
    frames=st.integers(1, 40),
    length=st.integers(1, 12),
    stride=st.integers(1, 12),  # capped to the length below, as explain_video refuses more
    value=st.floats(-1e3, 1e3, allow_nan=False),
    blend=st.sampled_from(ve.WINDOW_BLENDS),
)
def test_a_blend_of_constant_window_maps_is_that_constant(frames, length, stride, value,
                                                          blend):  # fmt: skip
    # Every frame, the first and last (covered by one window) included, gets the constant:
    # the weights are normalised per frame and never 0, so no 0/0 and no frame lost.
    starts = ve.window_starts(frames, length, min(stride, length))
    means = ve.FrameMeans(frames, ve.window_weights(length, blend))
    means.add(np.full((len(starts), length, 2, 3), value, np.float32), starts)
    np.testing.assert_allclose(means.mean(), value, rtol=1e-6, atol=1e-30)


def test_the_taper_blend_is_the_weighted_mean_of_the_covering_windows():
    rng = np.random.default_rng(1)
    starts, weights = np.array([0, 2, 4]), np.array([0.1, 0.7, 0.9, 0.3])
    maps = rng.normal(size=(3, 4, 2, 2))
    means = ve.FrameMeans(8, weights)
    means.add(maps, starts)
    for f in range(8):
        cover = [(k, f - s) for k, s in enumerate(starts) if s <= f < s + 4]
        want = sum(weights[p] * maps[k, p] for k, p in cover) / sum(weights[p] for _, p in cover)
        np.testing.assert_allclose(means.mean()[f], want, rtol=1e-5)
    with pytest.raises(sr.ShapeError, match=r"window weights \(4,\) do not fit windows of 5"):
        means.add(maps[:, :1].repeat(5, 1), starts[:1].repeat(3))


def constant_motion(num_frames: int) -> np.ndarray:
    """A colour grating drifting 2 pixels a frame with a 10-pixel wavelength: the same
    motion in every frame, periodic every 5 frames (no component at a stride of 8)."""
    t = np.arange(num_frames)[:, None, None]
    y, x = np.mgrid[0:48, 0:48]
    g = 0.5 + 0.5 * np.sin(2 * np.pi * (x + 0.5 * y - 2.0 * t) / 10.0)
    return np.round(255 * np.stack([g, 0.3 + 0.4 * g, 1 - g], -1)).astype(np.uint8)


def stride_components(relevance: np.ndarray, stride: int, inner: slice) -> np.ndarray:
    """|DFT| of the per-frame relevance mass at the stride's frequency and its harmonics,
    relative to the mean, over ``inner`` (frames covered by two windows, whole strides)."""
    timeline = np.abs(relevance).sum((1, 2))[inner]
    spectrum = np.abs(np.fft.rfft(timeline))
    periods = len(timeline) // stride
    return spectrum[periods::periods][: stride // 2] / spectrum[0]


#: The largest stride component (relative to the mean) the taper leaves on the constant
#: motion video with the gradient; the plain mean leaves 0.055 (measured: taper 0.032).
SEAM_BOUND = 0.04


@pytest.mark.slow
def test_the_taper_removes_most_of_the_window_seams_of_constant_motion(motion_model):
    model, variables, info = motion_model
    video = constant_motion(56)  # 6 windows of 16 every 8 frames
    seams = {}
    for blend in ve.WINDOW_BLENDS:
        r = ve.explain_video(video, model, variables, info, method="gradient",
                             window_blend=blend)  # fmt: skip
        assert r.clip_starts.tolist() == [0, 8, 16, 24, 32, 40]
        seams[blend] = stride_components(r.relevance, 8, slice(8, 48))
    assert seams["taper"].max() < SEAM_BOUND < seams["mean"].max(), seams


# --- videos far from a synthetic model's training data ---


def natural_video(num_frames: int = 20) -> np.ndarray:
    """A camera's picture (skimage's cat, the most colourful of its photos: 1.7% of its
    pixels dark or grey at 48x48) panned 2 pixels a frame, 300x300."""
    cat = pytest.importorskip("skimage.data").chelsea()  # (300, 451, 3) uint8
    return np.stack([cat[:, 100 + 2 * t : 400 + 2 * t] for t in range(num_frames)])


@pytest.mark.parametrize("config", synthetic_motion.CONFIGS)
def test_synthetic_clips_are_below_the_share_of_pixels_unlike_them(config):
    shares = [ve.unlike_synthetic_share(synthetic_motion.generate_example(config, "test", 1, i)
                                        ["video"]) for i in range(4)]  # fmt: skip
    assert max(shares) < ve.FAR_PIXEL_SHARE / 3


def test_a_synthetic_model_warns_of_a_camera_video_not_of_synthetic_ones(motion_model):
    info = motion_model[2]
    video = natural_video()
    small, _ = ve.sample_frames(video, info)  # as the model sees it: 48x48
    [both] = ve.domain_warnings(info, small, video.shape[1:3], "cat.mp4")
    assert both.startswith("cat.mp4: frames of 300x300, 2% of its pixels dark or grey")
    assert both.endswith("explain real videos with a converted torchvision or HuggingFace "
                         "model (docs/models.md)")  # fmt: skip
    [content] = ve.domain_warnings(info, small, (48, 48), "cat.mp4")  # small but a photo
    assert "frames of" not in content and "of its pixels dark or grey" in content
    big_synthetic = np.repeat(np.repeat(data.read_video(data.sample_clip_path()), 6, 1), 6, 2)
    [size] = ve.domain_warnings(info, big_synthetic, big_synthetic.shape[1:3], "big.mp4")
    assert "frames of 288x288" in size and "dark or grey" not in size
    for clip in (
        data.read_video(data.sample_clip_path()),
        synthetic_motion.generate_example("distractors", "test", 0, 0)["video"],
    ):
        assert ve.domain_warnings(info, clip, clip.shape[1:3], "clip.mp4") == []  # fmt: skip
    kinetics = dataclasses.replace(info, extra={"dataset": "kinetics400"})
    assert ve.domain_warnings(kinetics, small, video.shape[1:3], "cat.mp4") == []


def test_explain_video_warns_of_a_camera_video_and_records_it(motion_model, sample_result):
    model, variables, info = motion_model
    with pytest.warns(ve.SelrelWarning, match=r"<array>: frames of 300x300, .* synthetic"):
        r = ve.explain_video(natural_video(16), model, variables, info, method="gradient")
    assert len(r.warnings) == 1 and r.warnings[0].startswith("<array>: frames of 300x300")
    assert explanation_files.summary(r, "m")["warnings"] == list(r.warnings)
    assert sample_result.warnings == ()  # the bundled sample: no warning
    assert "warnings" not in explanation_files.summary(sample_result, "m")


def test_input_bounds_are_the_normalised_pixel_range(motion_model):
    info = motion_model[2]
    low, high = ve.input_bounds(info)
    extremes = np.array([[[[0, 0, 0], [255, 255, 255]]]], np.uint8)
    x = np.asarray(info.normalize(extremes))
    np.testing.assert_allclose(x[0, 0, 0], low, rtol=1e-6)
    np.testing.assert_allclose(x[0, 0, 1], high, rtol=1e-6)


def test_targets_by_name_index_or_prediction():
    names = ("walk", "run", "jump")
    assert ve.resolve_target(None, names) is None
    assert ve.resolve_target("predicted", names) is None
    assert ve.resolve_target("run", names) == 1
    assert ve.resolve_target("2", names) == 2
    assert ve.resolve_target(0, names) == 0
    with pytest.raises(sr.OptionError, match=r"target 'swim' is not a class name.*walk, run"):
        ve.resolve_target("swim", names)
    with pytest.raises(sr.OptionError, match=r"target 3 out of range for 3 classes"):
        ve.resolve_target("3", names)
    with pytest.raises(sr.OptionError, match=r"target -1 out of range"):
        ve.resolve_target(-1, names)


def test_digit_class_names_a_bare_number_is_an_index_and_ambiguity_is_refused():
    # Class names that are digits used to turn --target 0 into the class *named* '0'.
    # The rule: index:N is an index, name:X a name; a bare number is an index, refused
    # when another class is named so.
    names = ("5", "4", "3", "2", "1", "0", "walk")
    assert ve.resolve_target("index:0", names) == 0
    assert ve.resolve_target("name:0", names) == 5
    assert ve.resolve_target("name:walk", names) == ve.resolve_target("walk", names) == 6
    assert ve.resolve_target(" 6 ", names) == 6  # no class is named '6'
    assert ve.resolve_target("index:6", names) == 6
    with pytest.raises(
        sr.OptionError,
        match=r"target '0' is ambiguous: class 0 is named '5' "
        r"and class 5 is named '0'; pass index:0 or name:0",
    ):
        ve.resolve_target("0", names)  # fmt: skip
    with pytest.raises(sr.OptionError, match=r"target 'name:9' is not a class name"):
        ve.resolve_target("name:9", names)
    with pytest.raises(sr.OptionError, match=r"target index:x: the index must be an integer"):
        ve.resolve_target("index:x", names)
    with pytest.raises(sr.OptionError, match=r"target 9 out of range for 7 classes"):
        ve.resolve_target("index:9", names)
    same = ("0", "1")  # each digit name names its own index: not ambiguous
    assert ve.resolve_target("1", same) == 1


@pytest.mark.parametrize("target", ["\u00b2", "\u0663"])
def test_non_ascii_digits_are_names_not_a_raw_value_error(target):
    # str.isdigit accepts '²' and '٣', which int() refuses with a raw ValueError.
    with pytest.raises(sr.OptionError, match=f"target {target!r} is not a class name"):
        ve.resolve_target(target, ("walk", "run"))
    assert ve.resolve_target(target, ("walk", target)) == 1


def test_output_directories_number_repeated_stems():
    got = ve.output_directories(["a/clip.mp4", "b/clip.avi", "c/other.mp4", "d/clip"], "out")
    assert got == [os.path.join("out", n) for n in ("clip", "clip-2", "other", "clip-3")]


# --- explain_video ---


def test_sample_clip_is_explained_as_its_class(sample_result):
    r = sample_result
    assert r.predicted_name == data.sample_clip_info()["class_name"] == r.target_name
    assert r.frames.shape == (32, 48, 48, 3) and r.relevance.shape == (32, 48, 48)
    assert r.clip_starts.tolist() == [0, 8, 16] and r.clip_logits.shape == (3, 6)
    np.testing.assert_allclose(r.probs.sum(), 1.0, rtol=1e-9)
    np.testing.assert_allclose(r.static, r.relevance - r.selective, atol=1e-6)
    scores = r.scores()
    assert 0 < scores["spatial_bias"] < 1 and 0 < scores["kept_voxels"] < 1
    assert scores["gini_selective"] > scores["gini_raw"]  # selection makes maps sparser


def test_a_notebook_shows_the_result_as_the_interactive_view(sample_result):
    html = sample_result._repr_html_()
    assert html.count("<img") == 4 and 'class="frame" min="0" max="31"' in html
    assert "explained: translate_right (predicted: translate_right" in html


def test_window_scores_match_the_library_on_the_same_clip(motion_model, sample_result):
    model, variables, info = motion_model
    clip = sample_result.frames[8:24][None]
    x = data.normalize(clip, mean=info.mean, std=info.std, value_range=info.value_range,
                       channel_order=info.channel_order)  # fmt: skip
    rel = sr.explain(model, variables, x, jnp.array([1]), "lrp.epsilon_plus_flat")
    sel = sr.selective_relevance(rel, 1.0, temporal_padding="edge")
    s = sample_result.clip_scores
    np.testing.assert_allclose(s["spatial_bias"][1], sr.spatial_bias(rel, sel)[0], rtol=1e-4)
    mask = sr.motion_mask(rel, 1.0, temporal_padding="edge")
    np.testing.assert_allclose(s["kept_voxels"][1], sr.metrics.kept_voxels(mask)[0], rtol=1e-5)


def test_array_input_equals_file_input(motion_model, sample_result):
    model, variables, info = motion_model
    frames = data.read_video(data.sample_clip_path())
    r = ve.explain_video(frames, model, variables, info)
    np.testing.assert_array_equal(r.frames, sample_result.frames)
    np.testing.assert_allclose(r.relevance, sample_result.relevance, rtol=1e-5, atol=1e-9)


def test_larger_frames_are_resized_and_centre_cropped(motion_model):
    info = motion_model[2]
    frames = np.random.default_rng(1).integers(0, 256, (16, 96, 128, 3), dtype=np.uint8)
    fitted, _ = ve.sample_frames(frames, info)
    assert fitted.shape == (16, 48, 48, 3)


def test_short_video_is_loop_padded_with_a_warning(motion_model):
    model, variables, info = motion_model
    frames = data.read_video(data.sample_clip_path())[:10]
    with pytest.warns(ve.SelrelWarning, match=r"10 sampled frames, fewer than .* loop-padded"):
        r = ve.explain_video(frames, model, variables, info, method="gradient_x_input")
    assert r.loop_padded and r.relevance.shape == (10, 48, 48)
    assert r.warnings == ("<array> has 10 sampled frames, fewer than the model's clip of 16: "
                          "it is loop-padded",)  # fmt: skip
    assert np.isfinite(r.relevance).all()


@pytest.mark.parametrize("count", [1, 20])
def test_a_still_video_has_no_motion_scores_and_is_refused(motion_model, count):
    # A 1-frame video (loop-padded to a clip) used to report kept_voxels and a spatial
    # bias for a still image; so did a video of one frame repeated.
    model, variables, info = motion_model
    frame = data.read_video(data.sample_clip_path())[5]
    still = np.repeat(frame[None], count, axis=0)
    with pytest.raises(sr.DataError, match=rf"<array> has no motion: its {count} sampled fr"):
        ve.explain_video(still, model, variables, info, method="gradient")


def test_explicit_target_is_explained_in_every_window(motion_model):
    model, variables, info = motion_model
    frames = data.read_video(data.sample_clip_path())[:16]
    r = ve.explain_video(frames, model, variables, info, target="rotate_clockwise",
                         method="gradient")  # fmt: skip
    assert r.target == 4 and r.predicted == 1
    np.testing.assert_allclose(r.clip_scores["target_logit"], r.clip_logits[:, 4], rtol=1e-5)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"method": "lrp.nope"}, sr.OptionError, r"unknown method 'lrp.nope'"),
        ({"sigma": -1.0}, sr.OptionError, r"sigma must be a finite number >= 0"),
        ({"sigma": float("nan")}, sr.OptionError, r"sigma"),
        ({"temporal_padding": "wrap"}, sr.OptionError, r"temporal_padding must be one of"),
        ({"clip_stride": 0}, sr.OptionError, r"clip_stride must be a positive int"),
        # frames between windows 17 apart used to get 0/0 = NaN maps
        (
            {"clip_stride": 17},
            sr.OptionError,
            r"clip_stride 17 is longer than the model's "
            r"clip of 16 frames: the frames between windows would have no relevance",
        ),
        ({"window_blend": "hann"}, sr.OptionError, r"window_blend must be one of"),
        ({"batch_size": 0}, sr.OptionError, r"batch_size must be a positive int"),
        ({"epsilon": 0.1, "method": "gradient"}, sr.OptionError, r"unknown option"),
        ({"target": "swim"}, sr.OptionError, r"not a class name"),
    ],
)
def test_bad_options_raise_before_reading(motion_model, kwargs, error, match):
    model, variables, info = motion_model
    with pytest.raises(error, match=match):
        ve.explain_video("/no/such/video.mp4", model, variables, info, **kwargs)


@pytest.mark.parametrize(
    "video, match",
    [
        ("/no/such/video.mp4", r"video file or frame folder not found: /no/such/video.mp4"),
        (np.zeros((4, 8, 8, 3), np.float32), r"uint8 RGB frames"),
        (np.zeros((0, 8, 8, 3), np.uint8), r"no frames"),
    ],
)
def test_bad_videos_raise(motion_model, video, match):
    model, variables, info = motion_model
    with pytest.raises(sr.SelrelError, match=match):
        ve.explain_video(video, model, variables, info)


# --- files ---


def test_saved_files_and_deterministic_summary(sample_result, tmp_path):
    a = ve.save_explanation(sample_result, tmp_path / "a", model_name="c3d_small_motion")
    b = ve.save_explanation(sample_result, tmp_path / "b", model_name="c3d_small_motion",
                            save_arrays=True)  # fmt: skip
    assert sorted(os.listdir(a)) == [".selrel-output.json", "filmstrip.png", "overlay.mp4",
                                     "summary.json", "timeline.png"]  # fmt: skip
    summary = json.loads(open(os.path.join(a, "summary.json")).read())
    assert set(summary) == SUMMARY_KEYS
    assert abs(sum(summary["probs"]) - 1) < 1e-5 and 0 <= summary["spatial_bias"] <= 1
    assert summary["target"] == {"index": 1, "name": "translate_right"}
    assert [c["start_frame"] for c in summary["clips"]] == [0, 8, 16]
    assert summary["top5"][0]["name"] == "translate_right"
    for name in ("summary.json", "filmstrip.png", "timeline.png"):
        with open(os.path.join(a, name), "rb") as fa, open(os.path.join(b, name), "rb") as fb:
            assert fa.read() == fb.read(), name
    overlay = data.read_video(os.path.join(a, "overlay.mp4"))
    assert overlay.shape[0] == 32 and overlay.shape[2] > 3 * 48
    assert mpimg.imread(os.path.join(a, "filmstrip.png")).ndim == 3
    with np.load(os.path.join(b, "relevance.npz")) as arrays:
        np.testing.assert_array_equal(arrays["selective"], sample_result.selective)


def test_a_summary_from_before_window_blend_was_recorded_reads_as_the_mean(sample_result,
                                                                          tmp_path):  # fmt: skip
    # Summaries written before the option existed were all made with the plain mean: a
    # rerun with the default keeps them, one asking for the taper is refused.
    there = explanation_files.summary(sample_result, "c3d_small_motion")
    del there["window_blend"]
    made = explanation_files._Expected._made(str(tmp_path), there)
    assert made["window_blend"] == "mean" == sample_result.settings.window_blend


def test_existing_output_is_refused_and_kept_without_overwrite(sample_result, tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    (target / "keep.txt").write_text("mine")
    with pytest.raises(sr.OptionError, match=r"exists; pass overwrite"):
        ve.save_explanation(sample_result, target)
    assert os.listdir(target) == ["keep.txt"]
    # a folder it did not write is never replaced, overwrite or not
    with pytest.raises(sr.OptionError, match=rf"^output {target} was not written by selrel "
                       r"explain \(it has no readable \.selrel-output\.json\); selrel "
                       r"replaces only what it wrote"):  # fmt: skip
        ve.save_explanation(sample_result, target, overwrite=True)
    assert os.listdir(target) == ["keep.txt"]
    ours = ve.save_explanation(sample_result, tmp_path / "ours")
    ve.save_explanation(sample_result, ours, overwrite=True)  # its own: replaced
    assert "summary.json" in os.listdir(ours)


def test_the_output_folder_has_the_mode_of_any_new_folder(sample_result, tmp_path):
    """Others on a shared machine can read it (the staging folder is not mkdtemp's 0700)."""
    mask = os.umask(0o022)
    try:
        out = ve.save_explanation(sample_result, tmp_path / "shared")
    finally:
        os.umask(mask)
    assert os.stat(out).st_mode & 0o777 == 0o755


def test_a_failure_while_writing_leaves_nothing(sample_result, tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(explanation_files, "_write_overlay", broken)
    with pytest.raises(sr.DataError, match=r"cannot write output .*out: No space left on device"):
        ve.save_explanation(sample_result, tmp_path / "out")
    assert os.listdir(tmp_path) == []


def test_output_below_a_regular_file_is_one_error(sample_result, tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(sr.DataError, match=r"cannot write output .*file/out"):
        ve.save_explanation(sample_result, tmp_path / "file" / "out")


def test_a_summary_of_nan_scores_is_strict_json_with_the_reasons(sample_result, tmp_path):
    scores = {k: np.full_like(v, np.nan) for k, v in sample_result.clip_scores.items()}
    broken = dataclasses.replace(sample_result, clip_scores=scores,
                                 probs=np.full_like(sample_result.probs, np.nan))  # fmt: skip
    out = ve.save_explanation(broken, tmp_path / "nan", model_name="nan_weights")
    text = open(os.path.join(out, "summary.json")).read()
    summary = json.loads(text, parse_constant=lambda c: pytest.fail(f"bare {c}"))
    assert summary["probs"][0] is None and summary["top5"][0]["prob"] is None
    assert summary["clips"][0]["spatial_bias"] is None
    assert summary["null_reasons"]["probs[0]"] == "not a finite number (NaN)"
    assert summary["null_reasons"]["clips[0].target_logit"] == "not a finite number (NaN)"
    assert "null_reasons" not in explanation_files.summary(sample_result, "m")  # only then


def test_the_batch_is_capped_to_the_windows_and_a_batch_that_cannot_fit_is_refused(
    motion_model, sample_result, monkeypatch
):
    model, variables, info = motion_model
    big = ve.explain_video(data.sample_clip_path(), model, variables, info, batch_size=10**6)
    np.testing.assert_allclose(big.selective, sample_result.selective, rtol=1e-5, atol=1e-6)
    monkeypatch.setattr(_jobs, "available_memory", lambda: 2**20)
    with pytest.raises(
        sr.OptionError,
        match=r"^a batch of 3 windows needs at least .* GiB of "
        r"memory; 0\.0 GiB are available; use a smaller batch_size",
    ):
        ve.explain_video(data.sample_clip_path(), model, variables, info, batch_size=10**6)
