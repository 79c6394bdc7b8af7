"""A directory of image files read as the frames of a video, in natural name order."""

from __future__ import annotations

import os
import pathlib
import re
import warnings

import numpy as np

from selrel_jax.data._geometry import check_frame_size
from selrel_jax.errors import DataError

#: File suffixes of the images a frame folder may hold.
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp")


def natural_key(name: str) -> tuple:
    """Sort key that orders the digit runs of a name by value: frame2 < frame10."""
    parts = re.split(r"([0-9]+)", name)
    # Text and digit runs alternate from a text part, so position i always compares like
    # with like; the name itself breaks ties such as frame01 / frame1.
    keyed = tuple(int(p) if i % 2 else p.casefold() for i, p in enumerate(parts))
    return (keyed, name)


def image_files(directory: pathlib.Path) -> list[pathlib.Path]:
    """The frames of a frame folder in natural order.

    Hidden entries (``.DS_Store``) are skipped; any other entry that is not an image
    file (another file type, a sub-folder) is an error rather than silently left out,
    since it suggests the folder is not one video's frames.
    """
    try:
        entries = [e for e in os.scandir(directory) if not e.name.startswith(".")]
    except OSError as e:
        raise DataError(f"cannot list frame folder {directory}: {e.strerror or e}") from None
    strays = sorted(
        e.name
        for e in entries
        if not (e.is_file() and os.path.splitext(e.name)[1].lower() in IMAGE_EXTENSIONS)
    )
    if strays:
        raise DataError(
            f"frame folder {directory} holds {len(strays)} entries that are not "
            f"{'/'.join(IMAGE_EXTENSIONS)} images, e.g. {strays[0]!r}"
        )
    if not entries:
        raise DataError(f"no image frames ({'/'.join(IMAGE_EXTENSIONS)}) in directory {directory}")
    return [directory / name for name in sorted((e.name for e in entries), key=natural_key)]


def open_image(path: pathlib.Path):
    """The image at ``path``, upright (EXIF orientation applied), in RGB.

    The declared size is checked against the limits before the pixels are decoded.
    """
    from PIL import Image, ImageOps

    try:
        with warnings.catch_warnings():
            # The size check below replaces Pillow's decompression-bomb warning.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(path)
        check_frame_size(path, image.width, image.height, "declares")
        with image:
            upright = ImageOps.exif_transpose(image)
            return _eight_bit_rgb(upright, path, image.mode, image.format)
    except Image.DecompressionBombError as e:
        raise DataError(f"image {path} is too large: {e}") from None
    except (OSError, ValueError, SyntaxError) as e:
        if isinstance(e, DataError):
            raise
        raise DataError(f"cannot read image {path}: {e}") from None


#: Pillow's modes of 16-bit grey PNGs ("I": older Pillows; colour ones come as RGB).
_SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N")


def _eight_bit_rgb(image, path: pathlib.Path, mode: str, file_format: str | None):
    """``image`` as 8-bit RGB. Pillow's convert("RGB") clips 16-bit grey to 255 (all
    white), so those values are scaled (``round(v / 257)``: 65535 -> 255) first.
    Pillow reads 16-bit colour as 8-bit RGB itself (the high byte)."""
    from PIL import Image

    if mode in _SIXTEEN_BIT_MODES or (mode == "I" and file_format == "PNG"):
        values = np.asarray(image, dtype=np.float64)
        grey = np.clip(np.round(values / 257), 0, 255).astype(np.uint8)
        return Image.fromarray(grey, "L").convert("RGB")
    return image.convert("RGB")


def upright_size(path: pathlib.Path) -> tuple[int, int]:
    """(height, width) of the upright image, from its header only."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            width, height = image.size
            check_frame_size(path, width, height, "declares")
            # EXIF orientations 5 to 8 turn the image a quarter turn.
            if image.getexif().get(0x0112, 1) in (5, 6, 7, 8):
                width, height = height, width
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        if isinstance(e, DataError):
            raise
        raise DataError(f"cannot read image {path}: {e}") from None
    return height, width


def image_array(
    path: pathlib.Path, first_size: tuple[int, int], shape: tuple[int, int]
) -> np.ndarray:
    """uint8 (H, W, 3) of the image at ``path`` resized (bilinear) to ``shape`` (H, W).

    Every frame must have the first frame's upright size ``first_size`` (H, W).
    """
    from PIL import Image

    image = open_image(path)
    if (image.height, image.width) != first_size:
        raise DataError(
            f"frame {path} is {image.width}x{image.height} but the folder's first frame is "
            f"{first_size[1]}x{first_size[0]}"
        )
    if (image.height, image.width) != shape:
        image = image.resize((shape[1], shape[0]), Image.Resampling.BILINEAR)
    return np.asarray(image, dtype=np.uint8)
