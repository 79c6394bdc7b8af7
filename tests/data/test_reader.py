"""The streaming reader: probe_video, iter_frames and read_frames on every container, frame
folders, sampling at a frame rate, resizing and cropping on the fly, rotation, laziness,
and one clear DataError or OptionError for each kind of bad input."""

from __future__ import annotations

import math
import os
import pathlib
import struct
import zlib

import av
import numpy as np
import pytest
from PIL import Image

from selrel_jax import data
from selrel_jax.errors import DataError, OptionError, ShapeError
from tests.data.videos import (
    codec,
    coded_frames,
    frame_ids,
    write_coded,
    write_frame_folder,
    write_png16,
)

H264, MPEG4 = codec("libx264", "h264"), codec("mpeg4")
CONTAINERS = [
    # (suffix, encoder, declares its frame count)
    ("mp4", H264, True),
    ("mov", H264, True),
    ("avi", MPEG4, True),
    ("webm", codec("libvpx"), False),
    ("webm", codec("libvpx-vp9"), False),
    ("mkv", H264, False),
    ("gif", codec("gif"), True),
]


def _need(encoder: str | None, what: str) -> str:
    if encoder is None:
        pytest.skip(f"this PyAV build has no encoder for {what}")
    return encoder


@pytest.mark.parametrize(("suffix", "encoder", "counted"), CONTAINERS)
def test_each_container_reads_and_samples_30_fps_at_15(tmp_path, suffix, encoder, counted):
    path = write_coded(tmp_path / f"clip.{suffix}", 30, 30, _need(encoder, suffix))
    probe = data.probe_video(path)
    assert (probe.kind, probe.width, probe.height, probe.rotation) == ("video", 48, 32, 0)
    assert probe.fps == pytest.approx(30, rel=0.01)
    assert probe.duration == pytest.approx(1.0, abs=0.04)
    assert probe.frame_count == (30 if counted else None)
    frames, rate = data.read_frames(path)
    assert frames.dtype == np.uint8 and frames.shape == (30, 32, 48, 3)
    assert frame_ids(frames) == list(range(30)) and rate == pytest.approx(30, rel=0.01)
    # By timestamp: webm's millisecond and gif's centisecond clocks round them.
    halved, rate = data.read_frames(path, fps=15)
    assert frame_ids(halved) == list(range(0, 30, 2)) and rate == 15
    assert probe.sampled_fps(15) == 15


def test_25_fps_read_at_15_takes_the_frame_on_screen_at_each_time(tmp_path):
    path = write_coded(tmp_path / "pal.mp4", 50, 25, _need(H264, "mp4"))
    frames, rate = data.read_frames(path, fps=15)
    assert rate == 15 and len(frames) == 30  # 2 seconds
    ids = frame_ids(frames)
    for k, i in enumerate(ids):
        assert i / 25 <= k / 15 < (i + 1) / 25
    assert ids[:8] == [0, 1, 3, 5, 6, 8, 10, 11]


def test_slower_sources_repeat_frames(tmp_path):
    path = write_coded(tmp_path / "slow.avi", 10, 10, _need(MPEG4, "avi"))
    frames, rate = data.read_frames(path, fps=15)
    assert rate == 15
    assert frame_ids(frames) == [math.floor(k * 10 / 15) for k in range(15)]


def test_frame_step_samples_when_fps_is_none_or_the_rate_unknown(tmp_path):
    path = write_coded(tmp_path / "clip.mp4", 12, 30, _need(H264, "mp4"))
    frames, rate = data.read_frames(path, frame_step=4)
    assert frame_ids(frames) == [0, 4, 8] and rate == pytest.approx(7.5, rel=0.01)
    folder = tmp_path / "frames"
    write_frame_folder(folder, coded_frames(10))
    frames, rate = data.read_frames(folder, fps=15, frame_step=3)
    assert frame_ids(frames) == [0, 3, 6, 9] and rate is None
    assert data.probe_video(folder).sampled_fps(15, frame_step=3) is None


@pytest.mark.parametrize("suffix", [".png", ".jpg"])
def test_frame_folder_reads_in_natural_name_order(tmp_path, suffix):
    folder = tmp_path / "frames"
    write_frame_folder(folder, coded_frames(12), suffix)
    (folder / ".DS_Store").write_bytes(b"\0\1")  # hidden entries are skipped
    probe = data.probe_video(folder)
    assert (probe.kind, probe.frame_count, probe.fps, probe.duration) == ("frames", 12, None, None)
    assert (probe.width, probe.height, probe.rotation, probe.codec) == (48, 32, 0, suffix[1:])
    frames, rate = data.read_frames(folder)  # frame2 before frame10
    assert frame_ids(frames) == list(range(12)) and rate is None
    assert data.read_video(folder, size=16, crop=16).shape == (12, 16, 16, 3)
    assert data.count_frames(folder) == 12 and data.video_fps(folder) is None


def test_resize_covers_the_crop_and_centre_crops_on_the_fly(tmp_path):
    frames = coded_frames(4)
    frames[:, 8:24, 16:32] = 128  # a grey square in the centre
    path = data.write_video(tmp_path / "wide.mp4", frames, codec=_need(H264, "mp4"))
    assert frame_ids(data.read_frames(path, size=16)[0]) == [0, 1, 2, 3]
    assert data.read_frames(path, size=16)[0].shape == (4, 16, 24, 3)
    square = data.read_frames(path, size=16, crop=8)[0]
    assert square.shape == (4, 8, 8, 3) and np.abs(square.astype(int) - 128).mean() < 12
    # size 8 alone would give 8x12; the frame is scaled up to cover a 16-wide crop.
    assert data.read_frames(path, size=8, crop=(8, 16))[0].shape == (4, 8, 16, 3)
    assert next(data.iter_frames(path, size=64, crop=(60, 90))).shape == (60, 90, 3)
    with pytest.raises(ShapeError, match="larger"):
        data.read_frames(path, crop=(40, 40))  # no size: the frames must hold the crop


def _marked(count: int = 3) -> np.ndarray:
    frames = np.zeros((count, 32, 48, 3), np.uint8)
    frames[:, :8, :8] = 255  # top-left corner as stored
    return frames


def _rotated(path: pathlib.Path, *, matrix=None, degrees=None) -> pathlib.Path:
    with av.open(str(path), "w") as container:
        stream = container.add_stream(_need(H264, "mp4"), rate=10)
        stream.width, stream.height, stream.pix_fmt = 48, 32, "yuv420p"
        if matrix is not None:
            stream.set_display_matrix(matrix)
        else:
            stream.set_display_rotation(degrees)
        for frame in _marked():
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, "rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def _corner(frame: np.ndarray) -> str:
    h, w = frame.shape[:2]
    means = {
        "top-left": frame[: h // 4, : w // 4].mean(),
        "top-right": frame[: h // 4, -w // 4 :].mean(),
        "bottom-left": frame[-h // 4 :, : w // 4].mean(),
        "bottom-right": frame[-h // 4 :, -w // 4 :].mean(),
    }
    return max(means, key=means.get)


def test_rotated_videos_are_turned_upright(tmp_path):
    # The tkhd matrix a phone writes for a portrait recording: (x, y) -> (H - y, x) in
    # 16.16 fixed point, i.e. shown turned a quarter clockwise.
    portrait = [0, 1 << 16, 0, -(1 << 16), 0, 0, 32 << 16, 0, 1 << 30]
    path = _rotated(tmp_path / "portrait.mp4", matrix=portrait)
    probe = data.probe_video(path)
    assert (probe.rotation, probe.width, probe.height) == (90, 32, 48)
    frames = data.read_video(path)
    assert frames.shape == (3, 48, 32, 3) and _corner(frames[0]) == "top-right"
    assert data.read_video(path, size=16, crop=(20, 16)).shape == (3, 20, 16, 3)
    upside_down = data.read_video(_rotated(tmp_path / "flip.mov", degrees=180))
    assert upside_down.shape == (3, 32, 48, 3) and _corner(upside_down[0]) == "bottom-right"
    counterclockwise = data.read_video(_rotated(tmp_path / "ccw.mp4", degrees=90))
    assert counterclockwise.shape == (3, 48, 32, 3) and _corner(counterclockwise[0]) == (
        "bottom-left"
    )


def test_frame_folder_images_follow_their_exif_orientation(tmp_path):
    folder = tmp_path / "phone"
    folder.mkdir()
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 clockwise to display"
    for k, frame in enumerate(_marked(2)):
        Image.fromarray(frame).save(folder / f"img{k}.jpg", exif=exif, quality=95)
    probe = data.probe_video(folder)
    assert (probe.width, probe.height) == (32, 48)
    frames = data.read_video(folder)
    assert frames.shape == (2, 48, 32, 3) and _corner(frames[0]) == "top-right"


def _truncated_avi(tmp_path: pathlib.Path) -> pathlib.Path:
    path = write_coded(tmp_path / "long.avi", 40, 20, _need(MPEG4, "avi"))
    whole = path.read_bytes()
    cut = tmp_path / "cut.avi"
    cut.write_bytes(whole[: int(len(whole) * 0.8)])
    return cut


def test_iter_frames_streams_and_stops_early(tmp_path):
    cut = _truncated_avi(tmp_path)
    with pytest.raises(DataError, match=r"cut\.avi.*after \d+ frames"):
        data.read_frames(cut)  # decoding to the end hits the cut
    # ... but the first frames come out without decoding that far.
    stream = data.iter_frames(cut, size=16)
    first = next(stream)
    assert first.shape == (16, 24, 3) and frame_ids(first[None]) == [0]
    assert frame_ids(np.stack([next(stream), next(stream)])) == [1, 2]
    stream.close()
    assert frame_ids(data.read_frames(cut, max_frames=5, fps=10)[0]) == [0, 2, 4, 6, 8]
    assert len(list(data.iter_frames(cut, max_frames=7))) == 7


READERS = ("read_video", "count_frames", "video_fps", "probe_video", "iter_frames", "read_frames")


def _each_refuses(path: pathlib.Path, match: str, readers=READERS) -> None:
    """Every reader raises a one-line DataError matching ``match`` (looked up by name, so
    the readers that existed before the streaming reader are tried first)."""
    for name in readers:
        with pytest.raises(DataError, match=match) as error:
            result = getattr(data, name)(path)
            if name == "iter_frames":
                list(result)
        assert "\n" not in str(error.value)


def test_missing_file_is_a_data_error(tmp_path):
    _each_refuses(tmp_path / "missing.mp4", r"not found: .*missing\.mp4")


def test_directory_without_image_frames(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / ".hidden").write_text("")
    readers = ("read_video", "count_frames", "probe_video", "iter_frames", "read_frames")
    _each_refuses(tmp_path / "empty", r"no image frames .*empty", readers)


def test_directory_with_non_image_files_is_refused(tmp_path):
    folder = tmp_path / "frames"
    write_frame_folder(folder, coded_frames(3))
    (folder / "notes.txt").write_text("not a frame")
    (folder / "sub").mkdir()
    with pytest.raises(DataError, match=r"frames holds 2 entries that are not .* 'notes\.txt'"):
        data.read_video(folder)


def test_frame_folder_with_frames_of_another_size(tmp_path):
    folder = tmp_path / "frames"
    write_frame_folder(folder, coded_frames(3))
    Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(folder / "frame3.png")
    with pytest.raises(
        DataError, match=r"frame3\.png is 30x20 but the folder's first frame is 48x32"
    ):
        data.read_video(folder, size=16)


def test_unreadable_file(tmp_path):
    pipe = tmp_path / "pipe.mp4"
    os.mkfifo(pipe)  # opening it for reading would block
    with pytest.raises(DataError, match=r"pipe\.mp4 is neither a video file nor a folder"):
        data.read_video(pipe)
    path = write_coded(tmp_path / "locked.mp4", 3, 10, _need(H264, "mp4"))
    path.chmod(0)
    if os.access(path, os.R_OK):
        pytest.skip("running as a user who reads any file")
    with pytest.raises(DataError, match=r"locked\.mp4: Permission denied"):
        data.read_video(path)


def test_corrupt_file(tmp_path):
    bad = tmp_path / "noise.mp4"
    bad.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    empty = tmp_path / "empty.webm"
    empty.write_bytes(b"")
    _each_refuses(bad, r"cannot open video .*noise\.mp4: Invalid data")
    _each_refuses(empty, r"empty\.webm is empty \(0 bytes\)")


def test_truncated_video(tmp_path):
    # Cut in the middle of its frames: FFmpeg reads the first 14 of the 40 it declares.
    cut = _truncated_avi(tmp_path)
    with pytest.raises(DataError, match=r"cut\.avi ends after 14 frames .* the file is truncated"):
        data.read_video(cut)
    with pytest.raises(DataError, match=r"cut\.avi ends after 14 frames"):
        list(data.iter_frames(cut))
    path = write_coded(tmp_path / "half.mp4", 20, 10, _need(H264, "mp4"))
    whole = path.read_bytes()
    path.write_bytes(whole[: len(whole) // 2])  # the index (moov) is at the end
    _each_refuses(path, r"cannot open video .*half\.mp4")
    # With the index first ("faststart"), FFmpeg reads up to the cut without complaint.
    fast = tmp_path / "fast.mp4"
    with av.open(str(fast), "w", options={"movflags": "faststart"}) as container:
        stream = container.add_stream(H264, rate=20)
        stream.width, stream.height, stream.pix_fmt = 48, 32, "yuv420p"
        for frame in coded_frames(40):
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, "rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    assert frame_ids(data.read_video(fast)) == list(range(40))
    whole = fast.read_bytes()
    fast.write_bytes(whole[: len(whole) * 4 // 5])
    with pytest.raises(DataError, match=r"fast\.mp4 ends after \d+ frames .* of the 2\.00 s"):
        data.read_video(fast)


def test_wrong_container(tmp_path):
    text = tmp_path / "notes.mp4"
    text.write_text("these are notes, not a video\n" * 40)
    _each_refuses(text, r"cannot open video .*notes\.mp4: Invalid data")
    sound = tmp_path / "sound.wav"
    with av.open(str(sound), "w") as container:
        stream = container.add_stream("pcm_s16le", rate=8000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 800), np.int16), "s16", "mono")
        frame.sample_rate = 8000
        for packet in (*stream.encode(frame), *stream.encode()):
            container.mux(packet)
    _each_refuses(sound, r"no video stream in .*sound\.wav \(its streams: audio\)")


def test_zero_frames(tmp_path):
    path = tmp_path / "none.y4m"
    path.write_bytes(b"YUV4MPEG2 W32 H32 F25:1 Ip A1:1 C420jpeg\n")  # a header, no FRAME
    readers = ("read_video", "probe_video", "iter_frames", "read_frames")
    _each_refuses(path, r"no frames in video .*none\.y4m", readers)


def _png_header(path: pathlib.Path, width: int, height: int) -> pathlib.Path:
    """A PNG that declares ``width`` x ``height`` and holds no pixels."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", b"") + chunk(b"IEND", b"")
    )
    return path


@pytest.mark.parametrize("side", [100_000, 9000])
def test_huge_declared_resolution(tmp_path, side):
    # FFmpeg refuses 100000x100000 with "Device or resource busy"; 9000x9000 it would
    # decode, but it is over the limit too: both are refused before any decoding.
    huge = tmp_path / "huge.y4m"
    huge.write_bytes(f"YUV4MPEG2 W{side} H{side} F25:1 Ip C420jpeg\nFRAME\n".encode() + bytes(64))
    _each_refuses(huge, f"huge.y4m declares {side}x{side} frames, over the limit")
    folder = tmp_path / "frames"
    write_frame_folder(folder, coded_frames(1))
    _png_header(folder / "frame1.png", side, side)
    with pytest.raises(DataError, match=r"frame1\.png (declares|is too large)"):
        data.read_video(folder)


def test_odd_sizes(tmp_path):
    odd = np.random.default_rng(1).integers(0, 256, (3, 15, 17, 3), dtype=np.uint8)
    lossless = data.write_video(tmp_path / "odd.mkv", odd, codec="ffv1", pixel_format="bgr0")
    np.testing.assert_array_equal(data.read_video(lossless), odd)
    write_frame_folder(tmp_path / "frames", odd)
    np.testing.assert_array_equal(data.read_video(tmp_path / "frames"), odd)
    tiny = data.write_video(tmp_path / "dot.mkv", odd[:, :1, :1], codec="ffv1", pixel_format="bgr0")
    assert data.probe_video(tiny).width == 1
    assert data.read_video(tiny, size=4, crop=(4, 4)).shape == (3, 4, 4, 3)
    assert data.read_video(lossless, size=7).shape == (3, 7, 8, 3)


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("size", "abc", "size must be a positive int"),
        ("size", 0, "size must be a positive int"),
        ("size", 10**6, "size must be at most 16384"),
        ("crop", "abc", "crop must be a positive int or"),
        ("crop", (1.5, 2), "crop height must be a positive int"),
        ("crop", (8, 8, 8), "crop must be a positive int or"),
        ("crop", True, "crop must be a positive int or"),
        ("max_frames", -1, "max_frames must be a positive int"),
    ],
)
def test_read_video_option_errors(tmp_path, option, value, message):
    path = write_coded(tmp_path / "clip.mp4", 2, 10, _need(H264, "mp4"))
    with pytest.raises(OptionError, match=message) as error:
        data.read_video(path, **{option: value})
    assert "\n" not in str(error.value)


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("fps", 0, "fps must be a finite number > 0"),
        ("fps", float("nan"), "fps must be a finite number > 0"),
        ("fps", "15", "fps must be a finite number > 0"),
        ("frame_step", 0, "frame_step must be a positive int"),
        ("frame_step", 1.5, "frame_step must be a positive int"),
    ],
)
def test_iter_frames_option_errors_are_raised_at_the_call(tmp_path, option, value, message):
    with pytest.raises(OptionError, match=message):
        data.iter_frames(tmp_path / "not-even-there.mp4", **{option: value})
    with pytest.raises(OptionError, match=r"path must be a str or os\.PathLike; got 3"):
        data.read_video(3)


@pytest.mark.parametrize("channels", [1, 2, 3, 4])
def test_sixteen_bit_png_frames_are_scaled_to_eight_bits(tmp_path, channels):
    # Pillow opens 16-bit grey as mode I;16, whose convert("RGB") clips every value above
    # 255 to white: such frames were read all white. Each 16-bit value v is read as the
    # 8-bit round(v / 257), the scaling that maps 65535 to 255 (oracle: NumPy).
    rng = np.random.default_rng(channels)
    folder = tmp_path / "frames16"
    folder.mkdir()
    shape = (2, 12, 10) if channels == 1 else (2, 12, 10, channels)
    pixels = rng.integers(0, 65536, shape, dtype=np.uint16)
    pixels[0, 0, 0] = 0
    pixels[1, 0, 0] = 65535
    for i, frame in enumerate(pixels):
        write_png16(folder / f"f{i}.png", frame)
    frames, _ = data.read_frames(folder)
    eight = np.round(pixels.astype(np.float64) / 257).astype(np.uint8)
    # grey (+ alpha) is repeated over RGB; the alpha is dropped
    expected = np.repeat(eight[..., None], 3, -1) if channels == 1 else eight[..., :3]
    expected = np.repeat(eight[..., :1], 3, -1) if channels == 2 else expected
    assert frames.shape == (2, 12, 10, 3)
    # Pillow takes the high byte of 16-bit colour (v >> 8): within 1 of round(v / 257)
    assert np.abs(frames.astype(int) - expected).max() <= (0 if channels == 1 else 1)
    assert frames.min() < 128 < frames.max()
