"""Labelled clips: dataset names, LazyVideos (decoding on demand), and load_clips for
generated, cached and folder datasets."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from selrel_jax import data
from selrel_jax.data import synthetic_motion
from selrel_jax.errors import DataError, DataWarning, OptionError, ShapeError


def test_parse_dataset():
    assert data.parse_dataset("synthetic_motion") == ("synthetic_motion", "")
    assert data.parse_dataset("synthetic_motion/biased") == ("synthetic_motion", "biased")
    assert data.parse_dataset("folder:/data/UCF-101") == ("folder", "/data/UCF-101")
    assert data.parse_dataset("folder:rel/dir") == ("folder", "rel/dir")
    assert data.parse_dataset("ucf101/ucf101_1_256") == ("tfds", "ucf101/ucf101_1_256")
    with pytest.raises(OptionError, match="folder:PATH"):
        data.parse_dataset("folder:")


class CountingSource:
    """Clip i is filled with the value i; counts how many clips were read."""

    def __init__(self, n: int, shape=(2, 3, 4, 3)):
        self.n, self.shape, self.reads = n, shape, 0

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict:
        self.reads += 1
        return {"video": np.full(self.shape, i, np.uint8), "label": np.int32(i % 2)}


def test_lazy_videos_decode_only_the_rows_asked_for():
    source = CountingSource(7)
    videos = data.LazyVideos(source, (2, 3, 4, 3))
    assert videos.shape == (7, 2, 3, 4, 3) and videos.dtype == np.uint8 and videos.ndim == 5
    assert len(videos) == 7 and source.reads == 0
    rows = videos[np.array([5, 1, 3])]
    assert rows.shape == (3, 2, 3, 4, 3) and rows[:, 0, 0, 0, 0].tolist() == [5, 1, 3]
    assert source.reads == 3
    assert videos[2:6:2][:, 0, 0, 0, 0].tolist() == [2, 4]
    assert videos[np.int64(6)].shape == (2, 3, 4, 3)
    assert np.asarray(videos)[:, 0, 0, 0, 0].tolist() == list(range(7))
    assert data.LazyVideos(CountingSource(2)).clip_shape == (2, 3, 4, 3)  # read from clip 0
    with pytest.raises(ShapeError, match="clip 1"):
        data.LazyVideos(CountingSource(3, (2, 3, 5, 3)), (2, 3, 4, 3))[1]
    with pytest.raises(IndexError, match="1-D ints"):
        videos[np.array([0.5])]


def test_generated_split_and_clip_size_check():
    clips, names = data.load_clips("synthetic_motion/tiny", "test", data_seed=4, limit=7)
    expected = synthetic_motion.generate_split("tiny", "test", 4, 7)
    np.testing.assert_array_equal(clips.video, expected["video"])
    np.testing.assert_array_equal(clips.label, expected["label"])
    assert names == synthetic_motion.CLASS_NAMES
    # refused before generating 1200 clips
    with pytest.raises(ShapeError, match=r"\(16, 48, 48\).*\(8, 32, 32\)"):
        data.load_clips("synthetic_motion", "test", data_seed=4, clip_size=(8, 32, 32))


@pytest.mark.parametrize(
    ("dataset", "kwargs", "error", "message"),
    [
        ("synthetic_motion/tiny", {"size": 64}, OptionError, "size applies only to folder"),
        ("synthetic_motion/tiny", {"split_file": "x.txt"}, OptionError, "split_file applies"),
        ("ucf101", {"data_seed": 1}, OptionError, "data_seed works only"),
        ("synthetic_motion/tiny", {"limit": 0}, OptionError, "limit must be a positive int"),
        ("synthetic_motion/tiny", {"data_seed": 1, "split": "dev"}, OptionError, "split"),
        ("synthetic_motion/tiny", {"data_seed": -1}, OptionError, "data_seed must be an int >= 0"),
        ("synthetic_motion", {"data_seed": 1.5}, OptionError, "data_seed must be an int >= 0"),
    ],
)
def test_bad_arguments(dataset, kwargs, error, message):
    split = kwargs.pop("split", "train")
    with pytest.raises(error, match=message):
        data.load_clips(dataset, split, **kwargs)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """3 classes x 4 videos of 6 frames (20x24); video k of class c has grey 10 + 20 (4c + k)."""
    root = tmp_path_factory.mktemp("videos")
    for c, cls in enumerate(("jump", "run", "sit")):
        for k in range(4):
            frames = np.full((6, 20, 24, 3), 10 + 20 * (4 * c + k), np.uint8)
            data.write_video(root / cls / f"v_{k}.mp4", frames, fps=8)
    return root


def test_folder_splits_load_lazily_with_the_folders_class_names(folder):
    splits = {
        s: data.load_clips(f"folder:{folder}", s, clip_size=(4, 16, 16))
        for s in ("train", "validation", "test")
    }
    for clips, names in splits.values():
        assert isinstance(clips.video, data.LazyVideos)
        assert names == ("jump", "run", "sit")
        assert clips.video.shape[1:] == (4, 16, 16, 3) and clips.label.dtype == np.int32
    train, val, test = (splits[s][0] for s in ("train", "validation", "test"))
    assert [len(c.label) for c in (train, val, test)] == [6, 3, 3]
    np.testing.assert_array_equal(test.label, [0, 1, 2])
    levels = np.round((test.video[:][:, 0, 0, 0, 0].astype(float) - 10) / 20).astype(int)
    assert levels.tolist() == [3, 7, 11]  # the last video of each class
    limited, _ = data.load_clips(f"folder:{folder}", "train", clip_size=(4, 16, 16), limit=2)
    assert len(limited.label) == 2
    renamed, names = data.load_clips(
        f"folder:{folder}", "test", clip_size=(2, 8, 8), class_names=["sit", "run", "jump"],
        frame_step=2, size=10,
    )  # fmt: skip
    assert names == ("sit", "run", "jump") and renamed.label.tolist() == [2, 1, 0]
    assert renamed.video[0].shape == (2, 8, 8, 3)


def test_a_limit_beyond_the_split_is_capped_with_a_warning(folder):
    # --limit 5000 on a generated 1200-clip test split used to generate past its end.
    with pytest.warns(
        DataWarning,
        match=r"limit 30 exceeds the 24 clips of synthetic_motion/"
        r"tiny's test split; using 24",
    ):
        clips, _ = data.load_clips("synthetic_motion/tiny", "test", data_seed=4, limit=30)
    assert len(clips.label) == 24
    with pytest.warns(DataWarning, match=r"limit 9 exceeds the 3 clips of folder:.*'s test"):
        clips, _ = data.load_clips(f"folder:{folder}", "test", clip_size=(4, 16, 16), limit=9)
    assert len(clips.label) == 3
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a limit within the split: no warning
        data.load_clips("synthetic_motion/tiny", "test", data_seed=4, limit=24)


def test_folder_needs_a_clip_size_and_non_empty_splits(folder, tmp_path):
    with pytest.raises(OptionError, match="clip_size"):
        data.load_clips(f"folder:{folder}", "train")
    single = tmp_path / "single"
    data.write_video(single / "a" / "v.mp4", np.zeros((3, 8, 8, 3), np.uint8))
    with pytest.raises(DataError, match=r"validation split of folder .* is empty"):
        data.load_clips(f"folder:{single}", "validation", clip_size=(2, 8, 8))


def test_data_imports_nothing_from_models_train_or_cli():
    import ast
    import pathlib

    package = pathlib.Path(data.__file__).parent
    for path in package.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom | ast.Import):
                names = [node.module or ""] if isinstance(node, ast.ImportFrom) else []
                names += [a.name for a in node.names] if isinstance(node, ast.Import) else []
                for name in names:
                    assert not name.startswith(
                        ("selrel_jax.models", "selrel_jax.train", "selrel_jax.cli")
                    ), (path, name)


def test_class_folders_are_the_sorted_sub_folders(tmp_path):
    for name in ("b", "a", "c"):
        (tmp_path / name).mkdir()
    (tmp_path / "file.mp4").write_bytes(b"")
    assert data.class_folders(tmp_path) == ("a", "b", "c")
