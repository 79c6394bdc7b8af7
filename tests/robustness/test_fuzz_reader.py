"""Fuzzing the video reader: truncated and bit-flipped versions of small real videos of
each supported container (and of a frame folder's images), and random bytes. Every file
is decoded in a DecodeWorker, so a hang or a crash cannot stall or end the test run; the
reader must give frames or its own one-line DataError naming the file."""

from __future__ import annotations

import datetime
import pathlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from selrel_jax import data
from selrel_jax._worker import DecodeWorker
from selrel_jax.errors import DataError
from tests.data.videos import codec, coded_frames, write_coded, write_frame_folder
from tests.robustness import jobs

# suffix -> encoder: one small video per container the bundled FFmpeg writes.
CONTAINERS = {
    "mp4": codec("libx264", "h264"),
    "mov": codec("libx264", "h264"),
    "mkv": codec("libx264", "h264"),
    "avi": codec("mpeg4"),
    "webm": codec("libvpx"),
    "vp9.webm": codec("libvpx-vp9"),
    "gif": codec("gif"),
    "y4m": "rawvideo",
}
SOURCES = sorted([name for name, encoder in CONTAINERS.items() if encoder] + ["png", "jpg"])
FLIP = st.tuples(st.floats(0.0, 1.0, exclude_max=True), st.integers(0, 7))  # where, which bit
TIMEOUT = 30.0  # seconds per file: a hang is reported, never waited out
# Bounded: the examples are derandomized (the same on every run) and each has a deadline.
FUZZ = settings(
    max_examples=150,
    deadline=datetime.timedelta(seconds=3 * TIMEOUT),
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@pytest.fixture(scope="module")
def originals(tmp_path_factory) -> dict[str, bytes]:
    """name -> bytes of a 12-frame coded video (``png``/``jpg``: one frame image)."""
    root = tmp_path_factory.mktemp("originals")
    out = {}
    for name in SOURCES:
        if name in ("png", "jpg"):
            [path] = write_frame_folder(root / name, coded_frames(1), suffix=f".{name}")
        elif name == "y4m":
            path = data.write_video(root / "clip.y4m", coded_frames(6, 16, 16), fps=10,
                                    codec="rawvideo", pixel_format="yuv420p")  # fmt: skip
        else:
            path = write_coded(root / f"clip.{name}", 12, 10, CONTAINERS[name])
        out[name] = path.read_bytes()
        assert len(out[name]) > 0
    return out


@pytest.fixture(scope="module")
def worker():
    worker = DecodeWorker()
    yield worker
    worker.close()


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> pathlib.Path:
    return tmp_path_factory.mktemp("fuzzed")


def _write(workdir: pathlib.Path, name: str, content: bytes) -> pathlib.Path:
    """The fuzzed bytes as a video file, or as the second frame of a frame folder."""
    if name in ("png", "jpg"):
        folder = workdir / f"frames_{name}"
        write_frame_folder(folder, coded_frames(2), suffix=f".{name}")
        path = folder / f"frame1.{name}"
        path.write_bytes(content)
        return folder
    path = workdir / f"fuzzed.{name}"
    path.write_bytes(content)
    return path


def _check(worker: DecodeWorker, path: pathlib.Path) -> None:
    """Frames, or a one-line DataError naming ``path``: from the reader itself, or from
    the worker for a decode that hung or crashed (the library's own error too)."""
    try:
        kind, value = worker.run(path, TIMEOUT, jobs.decode_report, str(path))
    except DataError as e:  # a hang or a crash, stopped by the worker
        kind, value = "worker", str(e)
        assert "took longer" in value or "ended the decoder process" in value, value
    if kind == "frames":
        assert value[0] >= 1
        return
    assert str(path) in value and "\n" not in value, value


@given(name=st.sampled_from(SOURCES), cut=st.floats(0.0, 1.0, exclude_max=True))
@FUZZ
def test_truncated_files_give_frames_or_a_data_error_naming_the_file(
    originals, worker, workdir, name, cut
):
    whole = originals[name]
    _check(worker, _write(workdir, name, whole[: int(len(whole) * cut)]))


@given(
    name=st.sampled_from(SOURCES),
    flips=st.lists(FLIP, min_size=1, max_size=24),
)
@FUZZ
def test_bit_flipped_files_give_frames_or_a_data_error_naming_the_file(
    originals, worker, workdir, name, flips
):
    content = bytearray(originals[name])
    for where, bit in flips:
        content[int(where * len(content))] ^= 1 << bit
    _check(worker, _write(workdir, name, bytes(content)))


@given(name=st.sampled_from(SOURCES), content=st.binary(max_size=4096))
@FUZZ
def test_random_bytes_give_a_data_error_naming_the_file(worker, workdir, name, content):
    _check(worker, _write(workdir, name, content))


def test_a_stream_without_a_decoder_is_a_data_error(tmp_path, worker):
    # Found by the fuzzing above: a damaged codec tag leaves PyAV without a codec
    # context, which the reader read as an AttributeError.
    path = write_coded(tmp_path / "clip.mov", 4, 10, CONTAINERS["mov"])
    content = path.read_bytes()
    assert content.count(b"avc1") == 1
    path.write_bytes(content.replace(b"avc1", b"zzz1"))
    with pytest.raises(DataError, match=r"cannot decode video .*clip\.mov: no decoder"):
        data.read_video(path)
    kind, message = worker.run(path, TIMEOUT, jobs.decode_report, str(path))
    assert kind == "error" and "clip.mov" in message


def test_decoded_fuzz_originals_are_real_videos(originals, worker, workdir):
    """The unmutated files decode: the fuzzing starts from valid input."""
    for name, content in originals.items():
        kind, shape = worker.run(name, TIMEOUT, jobs.decode_report,
                                 str(_write(workdir, name, content)))  # fmt: skip
        assert kind == "frames" and shape[0] >= 1, (name, shape)
        assert np.prod(shape[1:]) == 16 * 16 * 3
