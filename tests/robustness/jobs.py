"""Functions the robustness tests run inside a DecodeWorker (not a test module): the
worker imports this module by name, so they must live at module level."""

from __future__ import annotations

import os
import signal
import threading

import numpy as np

from selrel_jax import data
from selrel_jax.errors import DataError


def decode_report(path: str) -> tuple[str, object]:
    """Read ``path`` as explain and sweep do: ``("frames", shape)`` or ``("error",
    message)`` for the reader's own DataError. Any other exception escapes, so the
    worker reports it as a failure the fuzz test catches."""
    try:
        data.probe_video(path)
        stream = data.iter_frames(path, size=16)
        next(stream, None)
        stream.close()
        frames, _rate = data.read_frames(path, fps=5, size=16, crop=16)
    except DataError as e:
        return "error", str(e)
    assert frames.dtype == np.uint8 and frames.ndim == 4 and frames.shape[1:] == (16, 16, 3)
    return "frames", frames.shape


def hang(seconds: float = 3600.0) -> None:
    """A decode that never finishes (as FFmpeg might on a pathological file)."""
    threading.Event().wait(seconds)


def crash() -> None:
    """A decoder that dies the way C code does on a bad read."""
    os.kill(os.getpid(), signal.SIGSEGV)


class TroubleFolder(data.VideoFolder):
    """A VideoFolder whose videos named ``hang*`` never finish decoding and ``crash*``
    end the process that decodes them; the others read normally."""

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        name = self.paths[index].name
        if name.startswith("hang"):
            hang()
        if name.startswith("crash"):
            crash()
        return super().__getitem__(index)
