"""Class-name lists shipped with the package (one name per line, head order)."""

from __future__ import annotations

import functools
from importlib.resources import files

__all__ = ["kinetics400_class_names", "sports1m_class_names"]


@functools.cache
def _read(filename: str) -> tuple[str, ...]:
    text = files("selrel_jax.models").joinpath(filename).read_text(encoding="utf-8")
    return tuple(line for line in text.splitlines() if line)


def kinetics400_class_names() -> tuple[str, ...]:
    """The 400 Kinetics-400 labels in torchvision's head order (alphabetical)."""
    return _read("kinetics400_classes.txt")


def sports1m_class_names() -> tuple[str, ...]:
    """The 487 Sports-1M labels in the order of the C3D port's fc8."""
    return _read("sports1m_classes.txt")
