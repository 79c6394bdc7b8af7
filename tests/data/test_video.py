"""Video files: PyAV round trips (mp4, avi, webm), resize and crop, clip sampling with
loop padding, the UCF-101-layout folder dataset, corrupt files, and the sample clip."""

from __future__ import annotations

import os
import pathlib
import re

import av
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from selrel_jax import data
from selrel_jax.data import synthetic_motion as sm
from selrel_jax.errors import DataError, DTypeError, OptionError, ShapeError

LEVEL0, LEVEL_STEP = 16, 24  # frame k is grey level 16 + 24 k: decodable frame identity


def _frames(count: int, height: int = 32, width: int = 48) -> np.ndarray:
    levels = LEVEL0 + LEVEL_STEP * np.arange(count)
    return np.broadcast_to(levels[:, None, None, None], (count, height, width, 3)).astype(np.uint8)


def _identity(frames: np.ndarray) -> list[int]:
    """Frame numbers of decoded frames written by :func:`_frames`."""
    means = frames.reshape(len(frames), -1).mean(axis=1)
    return np.round((means - LEVEL0) / LEVEL_STEP).astype(int).tolist()


def _codec(*names: str) -> str | None:
    return next((n for n in names if n in av.codecs_available), None)


FORMATS = [
    ("mp4", _codec("libx264", "mpeg4")),
    ("avi", _codec("mpeg4")),
    ("avi", _codec("mjpeg")),
    ("webm", _codec("libvpx-vp9", "libvpx")),
]


@pytest.mark.parametrize(("suffix", "codec"), FORMATS)
def test_write_read_round_trip(tmp_path, suffix, codec):
    if codec is None:
        pytest.skip(f"no encoder for .{suffix} in this PyAV build")
    rng = np.random.default_rng(0)
    frames = _frames(8)
    texture = rng.integers(-6, 7, size=frames.shape[1:], dtype=np.int16)
    frames = np.clip(frames + texture, 0, 255).astype(np.uint8)
    path = data.write_video(tmp_path / f"clip.{suffix}", frames, fps=10, codec=codec)
    decoded = data.read_video(path)
    assert decoded.dtype == np.uint8 and decoded.shape == frames.shape
    assert _identity(decoded) == list(range(8))
    assert np.abs(decoded.astype(int) - frames).mean() < 8
    assert data.count_frames(path) == 8
    assert data.video_fps(path) == pytest.approx(10, rel=0.01)
    assert data.read_video(path, max_frames=3).shape[0] == 3


def test_resize_shorter_side_then_centre_crop(tmp_path):
    frames = np.zeros((3, 32, 48, 3), np.uint8)
    frames[:, :, 16:32] = 255  # a bright central band
    path = data.write_video(tmp_path / "wide.mp4", frames, codec=FORMATS[0][1])
    assert data.read_video(path, size=16).shape == (3, 16, 24, 3)
    cropped = data.read_video(path, size=16, crop=16)
    assert cropped.shape == (3, 16, 16, 3)
    assert cropped[:, :, 4:12].mean() > 200 and cropped[:, :, :2].mean() < 50
    assert data.read_video(path, crop=(12, 20)).shape == (3, 12, 20, 3)
    with pytest.raises(ShapeError, match="larger"):
        data.read_video(path, crop=64)
    with pytest.raises(OptionError, match="size"):
        data.read_video(path, size=0)
    with pytest.raises(OptionError, match="crop"):
        data.read_video(path, crop=(1, 2, 3))


def test_clip_indices_by_mode():
    np.testing.assert_array_equal(data.clip_indices(10, 4), [[3, 4, 5, 6]])
    np.testing.assert_array_equal(data.clip_indices(10, 3, frame_step=2), [[2, 4, 6]])
    np.testing.assert_array_equal(
        data.clip_indices(10, 4, mode="uniform", num_clips=3),
        [[0, 1, 2, 3], [3, 4, 5, 6], [6, 7, 8, 9]],
    )
    np.testing.assert_array_equal(
        data.clip_indices(10, 4, mode="sliding"), [[0, 1, 2, 3], [4, 5, 6, 7]]
    )
    np.testing.assert_array_equal(
        data.clip_indices(10, 4, mode="sliding", stride=3),
        [[0, 1, 2, 3], [3, 4, 5, 6], [6, 7, 8, 9]],
    )
    # Shorter than a clip: loop-padded.
    np.testing.assert_array_equal(data.clip_indices(3, 7), [[0, 1, 2, 0, 1, 2, 0]])
    np.testing.assert_array_equal(
        data.clip_indices(3, 3, frame_step=2, mode="sliding"), [[0, 2, 1]]
    )
    with pytest.raises(OptionError, match="random"):
        data.clip_indices(10, 4, mode="random")
    with pytest.raises(OptionError, match="0"):
        data.clip_indices(10, 0)


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(1, 60),
    length=st.integers(1, 20),
    step=st.integers(1, 4),
    mode=st.sampled_from(data.SAMPLING_MODES),
    clips=st.integers(1, 5),
)
def test_clip_indices_properties(n, length, step, mode, clips):
    idx = data.clip_indices(n, length, frame_step=step, mode=mode, num_clips=clips)
    assert idx.ndim == 2 and idx.shape[1] == length and idx.shape[0] >= 1
    assert idx.min() >= 0 and idx.max() < n
    # Consecutive frames are frame_step apart, modulo the loop padding.
    assert np.all((np.diff(idx, axis=1) - step) % n == 0)
    span = (length - 1) * step + 1
    if n >= span:  # whole clips fit: no wrapping at all
        assert np.all(np.diff(idx, axis=1) == step)
    if mode == "uniform":
        assert idx.shape[0] == clips
    if mode == "center":
        assert idx.shape[0] == 1
        if n >= span:  # as many frames before the clip as after it, give or take one
            assert abs(idx[0, 0] - (n - 1 - idx[0, -1])) <= 1


def _ucf_folder(root: pathlib.Path) -> pathlib.Path:
    mp4, avi, webm = (c for _, c in FORMATS[:2] + FORMATS[3:])
    data.write_video(root / "ApplyLipstick" / "v_a.mp4", _frames(10), codec=mp4)
    data.write_video(root / "ApplyLipstick" / "v_b.avi", _frames(4), codec=avi)
    data.write_video(root / "Basketball" / "v_c.webm", _frames(7), codec=webm)
    (root / "Basketball" / "notes.txt").write_text("not a video")
    return root


def test_video_folder_center_clips_with_loop_padding(tmp_path):
    folder = data.VideoFolder(_ucf_folder(tmp_path / "ucf"), clip_length=6)
    assert folder.class_names == ("ApplyLipstick", "Basketball")
    assert [p.name for p in folder.paths] == ["v_a.mp4", "v_b.avi", "v_c.webm"]
    assert len(folder) == 3
    items = [folder[i] for i in range(3)]
    assert [int(x["label"]) for x in items] == [0, 0, 1]
    assert _identity(items[0]["video"]) == [2, 3, 4, 5, 6, 7]
    assert _identity(items[1]["video"]) == [0, 1, 2, 3, 0, 1]  # 4 frames, loop-padded
    assert _identity(items[2]["video"]) == [0, 1, 2, 3, 4, 5]
    assert items[0]["video"].shape == (6, 32, 48, 3)


def test_video_folder_sliding_uniform_resize_crop_and_loader(tmp_path):
    root = _ucf_folder(tmp_path / "ucf")
    sliding = data.VideoFolder(root, clip_length=4, sampling="sliding", stride=3)
    assert len(sliding) == 3 + 1 + 2
    assert [_identity(sliding[i]["video"]) for i in range(3)] == [
        [0, 1, 2, 3],
        [3, 4, 5, 6],
        [6, 7, 8, 9],
    ]
    assert [int(sliding[i]["clip_index"]) for i in range(6)] == [0, 1, 2, 0, 0, 1]
    uniform = data.VideoFolder(
        root, clip_length=3, frame_step=2, sampling="uniform", num_clips=2, size=16, crop=16
    )
    assert len(uniform) == 6
    assert _identity(uniform[0]["video"]) == [0, 2, 4]
    assert _identity(uniform[1]["video"]) == [5, 7, 9]
    assert uniform[0]["video"].shape == (3, 16, 16, 3)
    only_b = data.VideoFolder(
        root,
        clip_length=2,
        class_names=["Basketball", "ApplyLipstick"],
        split_file=_write(tmp_path / "list.txt", "Basketball/v_c.webm 2\n"),
    )
    assert len(only_b) == 1 and int(only_b[0]["label"]) == 0
    loader = data.make_loader(uniform, batch_size=4, seed=0, mean=0.5, std=0.25)
    batches = list(loader)
    assert [b["video"].shape for b in batches] == [(4, 3, 16, 16, 3), (2, 3, 16, 16, 3)]
    assert sorted(np.concatenate([b["label"] for b in batches]).tolist()) == [0, 0, 0, 0, 1, 1]


def _write(path: pathlib.Path, text: str) -> pathlib.Path:
    path.write_text(text)
    return path


def test_corrupt_and_missing_files_name_the_file(tmp_path):
    root = _ucf_folder(tmp_path / "ucf")
    bad = root / "Basketball" / "v_bad.mp4"
    bad.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    empty = root / "Basketball" / "v_empty.avi"
    empty.write_bytes(b"")
    for path in (bad, empty):
        with pytest.raises(DataError, match=path.name):
            data.read_video(path)
    folder = data.VideoFolder(root, clip_length=4)
    position = [p.name for p in folder.paths].index("v_bad.mp4")
    with pytest.raises(DataError, match=re.escape("v_bad.mp4")):
        folder[position]
    with pytest.raises(DataError, match=r"v_bad\.mp4|v_empty\.avi"):
        data.VideoFolder(root, clip_length=4, sampling="sliding")
    with pytest.raises(DataError, match=re.escape("missing.mp4")):
        data.read_video(tmp_path / "missing.mp4")
    with pytest.raises(DataError, match="no videos"):
        data.VideoFolder(tmp_path / "ucf" / "Basketball")  # files but no class folders
    with pytest.raises(DataError, match="not found"):
        data.VideoFolder(tmp_path / "nowhere")


def test_write_video_rejects_bad_frames(tmp_path):
    with pytest.raises(DTypeError, match="float32"):
        data.write_video(tmp_path / "x.mp4", np.zeros((2, 8, 8, 3), np.float32))
    with pytest.raises(ShapeError, match=r"\(2, 8, 8\)"):
        data.write_video(tmp_path / "x.mp4", np.zeros((2, 8, 8), np.uint8))


@pytest.mark.parametrize("fps", [0, -8, float("nan"), float("inf"), "8", None, 1e-6])
def test_write_video_fps_must_be_a_finite_number_above_zero(tmp_path, fps):
    # fps=0 used to write a 24 fps file.
    with pytest.raises(OptionError, match="fps must be"):
        data.write_video(tmp_path / "x.mp4", _frames(2), fps=fps)
    assert not list(tmp_path.iterdir())


def test_write_video_below_a_regular_file_names_the_path(tmp_path):
    (tmp_path / "notes.txt").write_text("a file, not a folder")
    for target in (tmp_path / "notes.txt" / "clip.mp4", tmp_path / "notes.txt" / "a" / "b.mp4"):
        with pytest.raises(
            DataError, match=rf"{target.name}: .*notes\.txt is a file, not a folder"
        ):
            data.write_video(target, _frames(2))
    (tmp_path / "folder.mp4").mkdir()
    with pytest.raises(DataError, match=r"folder\.mp4: it is a folder"):
        data.write_video(tmp_path / "folder.mp4", _frames(2))


def test_write_video_is_atomic(tmp_path, monkeypatch):
    path = data.write_video(tmp_path / "clip.avi", _frames(6), fps=6, codec="mpeg4")
    before = path.read_bytes()
    real_from_ndarray = av.VideoFrame.from_ndarray
    calls = []

    def failing_on_the_third_frame(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise ValueError("simulated encoder failure")
        return real_from_ndarray(*args, **kwargs)

    monkeypatch.setattr(av.VideoFrame, "from_ndarray", failing_on_the_third_frame)
    # MPEG-4 muxes each frame as it comes, so the file was being written when it failed.
    for target in (path, tmp_path / "new.avi"):
        calls.clear()
        with pytest.raises(DataError, match=f"cannot write video .*{target.name}.*simulated"):
            data.write_video(target, _frames(6, 32, 48) // 2, fps=6, codec="mpeg4")
    assert path.read_bytes() == before  # the old video is intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip.avi"]  # nothing partial
    monkeypatch.undo()
    assert _identity(data.read_video(path)) == list(range(6))


def test_odd_sizes_are_padded_for_yuv420(tmp_path):
    path = data.write_video(tmp_path / "odd.mp4", _frames(3, 15, 17), codec=FORMATS[0][1])
    assert data.read_video(path).shape == (3, 16, 18, 3)


def test_tfds_video_builders_need_the_tf_extra():
    try:
        import tensorflow  # noqa: F401
    except ImportError:
        with pytest.raises(DataError, match=r"selrel-jax\[tf\]"):
            data.load_tfds_videos("ucf101", "train")
    else:
        pytest.skip("TensorFlow is installed")


def test_sample_clip_is_the_generator_clip_it_claims():
    path = data.sample_clip_path()
    assert path.is_file() and path.suffix == ".mp4" and path.stat().st_size < 400_000
    info = data.sample_clip_info()
    assert info["class_name"] == sm.CLASS_NAMES[info["label"]]
    assert info["class_names"] == list(sm.CLASS_NAMES)
    frames = data.read_video(path)
    assert frames.shape == (info["frames"], info["height"], info["width"], 3)
    assert frames.shape[0] / info["fps"] >= 2.0  # a few seconds
    regenerated = data.sample_example()
    assert int(regenerated["label"]) == info["label"]
    assert np.abs(frames.astype(int) - regenerated["video"]).mean() < 3
    truth = data.sample_clip_truth()
    np.testing.assert_array_equal(truth["mask"], regenerated["mask"])
    np.testing.assert_array_equal(truth["boxes"], regenerated["boxes"])
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    pyproject = pathlib.Path(__file__).parents[2] / "pyproject.toml"
    package_data = tomllib.loads(pyproject.read_text())["tool"]["setuptools"]["package-data"]
    assert {"sample/*.mp4", "sample/*.json", "sample/*.npz"} <= set(package_data["selrel_jax.data"])


def test_write_video_streams_chunks_of_frames(tmp_path):
    frames = _frames(10)
    whole = data.write_video(tmp_path / "whole.avi", frames, fps=5, codec="mpeg4")
    chunks = (frames[i : i + 3] for i in range(0, 10, 3))  # a generator, never a list
    chunked = data.write_video(tmp_path / "chunked.avi", chunks, fps=5, codec="mpeg4")
    np.testing.assert_array_equal(data.read_video(whole), data.read_video(chunked))


def test_write_video_refuses_chunks_that_change_size_and_leaves_nothing(tmp_path):
    chunks = iter([_frames(2), _frames(2, 16, 16)])
    with pytest.raises(ShapeError, match=r"frames change size"):
        data.write_video(tmp_path / "v.mp4", chunks, fps=5)
    with pytest.raises(ShapeError, match=r"got no frames"):
        data.write_video(tmp_path / "v.mp4", iter([]), fps=5)
    assert os.listdir(tmp_path) == []


def test_refuse_still_refuses_one_image_and_passes_any_change():
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 256, (6, 5, 3), dtype=np.uint8)
    for count in (1, 2, 17):
        with pytest.raises(DataError, match=rf"clip\.mp4 has no motion: its {count} sampled"):
            data.refuse_still(np.repeat(frame[None], count, 0), "clip.mp4")
    for changed in (0, 8, 16):
        moved = np.repeat(frame[None], 17, 0)
        moved[changed, 4, 2, 1] ^= 1  # one value of one frame: two distinct frames
        data.refuse_still(moved, "clip.mp4")
