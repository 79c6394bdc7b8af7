"""Files the reader meets in uncontrolled video that the data tests don't make: a variable
frame rate."""

from __future__ import annotations

import fractions

import av
import numpy as np

from selrel_jax import data

# When each frame starts (ms): bursts and gaps, as a phone or a screen recorder writes them.
STARTS_MS = [0, 100, 150, 400, 450, 460, 900]


def _variable_rate_video(path):
    """Frame i is a flat grey of level 30 * i, shown from STARTS_MS[i]."""
    millisecond = fractions.Fraction(1, 1000)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264")
        stream.width = stream.height = 32
        stream.pix_fmt = "yuv420p"
        stream.time_base = stream.codec_context.time_base = millisecond
        for i, start in enumerate(STARTS_MS):
            frame = av.VideoFrame.from_ndarray(np.full((32, 32, 3), 30 * i, np.uint8), "rgb24")
            frame.pts, frame.time_base = start, millisecond
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return path


def test_a_variable_frame_rate_video_gives_the_frame_on_screen_at_each_sampled_time(tmp_path):
    path = _variable_rate_video(tmp_path / "variable.mkv")
    frames, rate = data.read_frames(path, fps=10)
    assert rate == 10 and frames.shape == (10, 32, 32, 3)
    levels = np.round(frames[:, 16, 16].astype(float).mean(axis=1) / 30).astype(int)
    # at 0.0, 0.1, ..., 0.9 s: the last frame started by then (the last lasts one frame
    # of the stream's nominal rate, so 0.9 s shows frame 6 and nothing follows)
    on_screen = [max(i for i, s in enumerate(STARTS_MS) if s <= 100 * k) for k in range(10)]
    assert levels.tolist() == on_screen == [0, 1, 2, 2, 3, 5, 5, 5, 5, 6]
