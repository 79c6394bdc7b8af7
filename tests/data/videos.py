"""Small test videos whose frames say which frame they are (not a test module).

Frame ``k`` shows the bits of ``k`` as ``BITS`` black or white vertical bands, big enough
to survive lossy codecs, palettes and resizing that keeps the whole width.
"""

from __future__ import annotations

import pathlib
import struct
import zlib

import av
import numpy as np
from PIL import Image

from selrel_jax import data

BITS = 6  # frames 0 .. 63


def coded_frames(count: int, height: int = 32, width: int = 48) -> np.ndarray:
    """uint8 (count, height, width, 3): frame k shows k in binary, bit 0 leftmost."""
    bands = (np.arange(width) * BITS) // width
    bits = (np.arange(count)[:, None] >> bands[None, :]) & 1
    frames = np.broadcast_to((bits * 255)[:, None, :, None], (count, height, width, 3))
    return frames.astype(np.uint8)


def frame_ids(frames: np.ndarray) -> list[int]:
    """The frame numbers drawn by :func:`coded_frames` in (possibly resized) frames."""
    width = frames.shape[2]
    centres = ((np.arange(BITS) + 0.5) * width / BITS).astype(int)
    bits = frames[:, :, centres].astype(float).mean(axis=(1, 3)) > 128
    return (bits * (1 << np.arange(BITS))).sum(axis=1).astype(int).tolist()


def codec(*names: str) -> str | None:
    """The first of ``names`` this PyAV build can encode with, or None."""
    return next((n for n in names if n in av.codecs_available), None)


def write_coded(path: pathlib.Path, count: int, fps: float, codec_name: str) -> pathlib.Path:
    """A ``count``-frame coded video at ``fps``; gifs need a palette pixel format."""
    pixel_format = "rgb8" if codec_name == "gif" else None
    frames = coded_frames(count)
    return data.write_video(path, frames, fps=fps, codec=codec_name, pixel_format=pixel_format)


def write_frame_folder(folder: pathlib.Path, frames: np.ndarray, suffix: str = ".png") -> list:
    """``folder/frame<k><suffix>`` (no zero padding, so name order is not frame order)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"frame{k}{suffix}" for k in range(len(frames))]
    for frame, path in zip(frames, paths, strict=True):
        Image.fromarray(frame).save(path, quality=95)
    return paths


def write_png16(path: pathlib.Path, pixels: np.ndarray) -> pathlib.Path:
    """A 16-bit PNG of ``pixels`` uint16 (H, W) grey, (H, W, 2) grey + alpha, (H, W, 3)
    RGB or (H, W, 4) RGBA (written by hand: Pillow writes no 16-bit colour PNG)."""
    colour_type = {1: 0, 2: 4, 3: 2, 4: 6}[1 if pixels.ndim == 2 else pixels.shape[2]]
    height, width = pixels.shape[:2]
    rows = pixels.reshape(height, -1).astype(">u2").tobytes()
    row_bytes = len(rows) // height
    raw = b"".join(b"\0" + rows[r * row_bytes : (r + 1) * row_bytes] for r in range(height))

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 16, colour_type, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )  # fmt: skip
    return path
