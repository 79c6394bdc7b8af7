"""Folder datasets: deterministic train / validation / test lists (with and without a
UCF-101 split file) and VideoFolder over an explicit list of videos."""

from __future__ import annotations

import pathlib

import numpy as np
import pytest

from selrel_jax import data
from selrel_jax.errors import DataError, OptionError

# Names only: folder_splits never opens the files.
COUNTS = {"Archery": 10, "Bowling": 4, "Cricket": 3, "Diving": 2, "Fencing": 1}


def _names_only(root: pathlib.Path, counts=COUNTS) -> pathlib.Path:
    for cls, count in counts.items():
        (root / cls).mkdir(parents=True)
        for i in range(count):
            (root / cls / f"v_{cls}_g{i:02d}_c01.avi").write_bytes(b"")
        (root / cls / "notes.txt").write_text("not a video")
    return root


def _per_class(videos: list[str]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for v in videos:
        out.setdefault(v.split("/")[0], []).append(v)
    return out


def test_splits_without_a_split_file_are_contiguous_per_class_slices(tmp_path):
    root = _names_only(tmp_path / "ucf")
    splits = data.folder_splits(root)
    assert splits == data.folder_splits(root)  # deterministic
    everything = sorted(v for videos in splits.values() for v in videos)
    assert len(everything) == len(set(everything)) == sum(COUNTS.values())
    test, val, train = (_per_class(splits[s]) for s in ("test", "validation", "train"))
    # 10 videos: 2 test (20 %), then 1 of the remaining 8 for validation (10 %, at least 1)
    assert test["Archery"] == [f"Archery/v_Archery_g{i:02d}_c01.avi" for i in (8, 9)]
    assert val["Archery"] == ["Archery/v_Archery_g07_c01.avi"]
    assert len(train["Archery"]) == 7
    assert [len(d.get("Cricket", [])) for d in (train, val, test)] == [1, 1, 1]
    assert [len(d.get("Diving", [])) for d in (train, val, test)] == [1, 0, 1]
    assert [len(d.get("Fencing", [])) for d in (train, val, test)] == [1, 0, 0]
    for name in ("train", "validation", "test"):
        assert splits[name] == sorted(splits[name])
    none = data.folder_splits(root, validation_fraction=0.0, test_fraction=0.0)
    assert none["validation"] == none["test"] == [] and len(none["train"]) == 20


def test_split_file_is_the_training_pool_and_the_rest_is_test(tmp_path):
    root = _names_only(tmp_path / "ucf")
    listed = [f"Archery/v_Archery_g{i:02d}_c01.avi {1}" for i in range(2, 10)]
    listed += ["Bowling/v_Bowling_g00_c01.avi 2", "", "Bowling/v_Bowling_g01_c01.avi 2"]
    split_file = tmp_path / "trainlist01.txt"
    split_file.write_text("\n".join(listed) + "\n")
    assert data.read_split_file(split_file)[0] == "Archery/v_Archery_g02_c01.avi"
    splits = data.folder_splits(root, split_file=split_file)
    test, val, train = (_per_class(splits[s]) for s in ("test", "validation", "train"))
    assert test["Archery"] == ["Archery/v_Archery_g00_c01.avi", "Archery/v_Archery_g01_c01.avi"]
    assert val["Archery"] == ["Archery/v_Archery_g09_c01.avi"]  # last of the 8 listed
    assert train["Bowling"] == ["Bowling/v_Bowling_g00_c01.avi"]
    assert val["Bowling"] == ["Bowling/v_Bowling_g01_c01.avi"]
    assert len(test["Bowling"]) == 2 and len(test["Cricket"]) == 3 and "Cricket" not in train

    split_file.write_text("Archery/v_missing.avi 1\n")
    with pytest.raises(DataError, match=r"v_missing\.avi"):
        data.folder_splits(root, split_file=split_file)
    with pytest.raises(DataError, match="cannot read split file"):
        data.folder_splits(root, split_file=tmp_path / "nope.txt")
    with pytest.raises(DataError, match="not found"):
        data.folder_splits(tmp_path / "nowhere")
    with pytest.raises(OptionError, match="test_fraction"):
        data.folder_splits(root, test_fraction=-0.1)


def _tiny_videos(root: pathlib.Path) -> pathlib.Path:
    for c, cls in enumerate(("a", "b")):
        for v in range(3):
            level = 40 * (c * 3 + v) + 20  # video identity in the grey level
            frames = np.full((5, 12, 16, 3), level, np.uint8)
            data.write_video(root / cls / f"{v}.mp4", frames, fps=8)
    return root


def test_video_folder_over_a_list_of_videos(tmp_path):
    root = _tiny_videos(tmp_path / "videos")
    folder = data.VideoFolder(root, clip_length=2, crop=(8, 8), videos=["b/2.mp4", "a/0.mp4"])
    assert [p.name for p in folder.paths] == ["2.mp4", "0.mp4"]  # the given order
    assert folder.class_names == ("a", "b")
    np.testing.assert_array_equal(folder.clip_labels, [1, 0])
    assert [int(folder[i]["label"]) for i in range(2)] == folder.clip_labels.tolist()
    assert folder.clip_shape == (2, 8, 8, 3) == folder[0]["video"].shape
    assert abs(float(folder[0]["video"].mean()) - 220) < 6
    assert data.VideoFolder(root, clip_length=2).clip_shape is None
    with pytest.raises(OptionError, match="not both"):
        data.VideoFolder(root, videos=["a/0.mp4"], split_file=tmp_path / "x.txt")


def test_every_video_lists_all_videos_at_any_depth_and_labels_only_class_folders(tmp_path):
    root = _names_only(tmp_path / "mine", {"Archery": 2, "holiday": 1})
    (root / "loose.mp4").write_bytes(b"")
    (root / "Archery.mp4").write_bytes(b"")  # loose: its name is no folder of a class
    (root / "trip" / "day1").mkdir(parents=True)
    (root / "trip" / "day1" / "a.MOV").write_bytes(b"")
    (root / ".hidden").mkdir()
    (root / ".hidden" / "x.mp4").write_bytes(b"")
    (root / ".y.mp4").write_bytes(b"")
    every = data.every_video(root)
    assert every == sorted(["Archery.mp4", "Archery/v_Archery_g00_c01.avi",
                            "Archery/v_Archery_g01_c01.avi", "holiday/v_holiday_g00_c01.avi",
                            "loose.mp4", "trip/day1/a.MOV"])  # fmt: skip
    folder = data.VideoFolder(root, class_names=["Bowling", "Archery"], videos=every,
                              unlabelled=True)  # fmt: skip
    labels = {p.relative_to(root).as_posix(): label
              for p, label in zip(folder.paths, folder.labels, strict=True)}  # fmt: skip
    assert labels == {name: 1 if name.startswith("Archery/") else data.UNLABELLED
                      for name in every}  # fmt: skip
    assert folder.clip_labels.tolist() == [labels[name] for name in every]
    with pytest.raises(DataError, match="video folder not found"):
        data.every_video(root / "nope")


def test_a_folder_that_is_no_class_names_the_folders_and_the_classes(tmp_path):
    root = _names_only(tmp_path / "mine", {"Archery": 1, "holiday": 1, "garden": 1, "zoo": 1})
    many = [f"class{i:02d}" for i in range(25)] + ["Archery"]
    with pytest.raises(OptionError) as error:
        data.VideoFolder(root, class_names=many)
    message = str(error.value)
    assert message.startswith(f"video {root / 'garden' / 'v_garden_g00_c01.avi'} is in folder "
                              "'garden', which is not a class name (nor are holiday, zoo); "
                              "the 26 classes: class00, class01, ")  # fmt: skip
    assert message.endswith("class19, ... (26 in all)")
