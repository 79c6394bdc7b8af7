"""``create(arch, num_classes, ...)``: one entry point for every architecture."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn

from selrel_jax.errors import OptionError, SelrelError
from selrel_jax.models.c3d import C3D, C3DSmall
from selrel_jax.models.resnet3d import RESNET_ARCHS, VideoResNet

__all__ = ["ARCHS", "HEADS", "create"]


def _c3d(num_classes: int, width: float, clip_size: tuple[int, int, int], **kw: Any) -> nn.Module:
    return C3D(num_classes=num_classes, width=width, clip_size=clip_size, **kw)


def _c3d_small(
    num_classes: int, width: float, clip_size: tuple[int, int, int], **kw: Any
) -> nn.Module:
    return C3DSmall(num_classes=num_classes, width=width, clip_size=clip_size, **kw)


def _resnet(arch: str) -> Callable[..., nn.Module]:
    def build(
        num_classes: int, width: float, clip_size: tuple[int, int, int], **kw: Any
    ) -> nn.Module:
        return VideoResNet(
            arch=arch, num_classes=num_classes, width=width, clip_size=clip_size, **kw
        )

    return build


_BUILDERS: dict[str, Callable[..., nn.Module]] = {
    "c3d": _c3d,
    "c3d_small": _c3d_small,
    **{arch: _resnet(arch) for arch in RESNET_ARCHS},
}

ARCHS: tuple[str, ...] = ("c3d", "c3d_small", "r3d_18", "mc3_18", "r2plus1d_18")

# The top-level module of each arch that maps features to class logits: what a
# fine-tune replaces when the class count changes, and all that trains when the
# backbone is frozen.
HEADS: dict[str, str] = {"c3d": "fc8", "c3d_small": "fc", **{a: "fc" for a in RESNET_ARCHS}}


def create(
    arch: str,
    num_classes: int,
    *,
    width: float = 1.0,
    clip_size: tuple[int, int, int] = (16, 112, 112),
    **kw: Any,
) -> nn.Module:
    """Build an (uninitialised) Flax model.

    ``arch`` is one of :data:`ARCHS`; ``width`` multiplies every channel count
    (1.0 = published size, which imported weights need); ``clip_size`` is the
    (T, H, W) of input clips (C3D derives fc6's input size from it).

    Example::

        model = create("c3d_small", num_classes=8, clip_size=(16, 64, 64))
        variables = model.init(jax.random.key(0), jnp.zeros((1, 16, 64, 64, 3)))
        logits = model.apply(variables, clips, train=False)
    """
    if arch not in _BUILDERS:
        raise OptionError(f"unknown model arch {arch!r}; expected one of {list(ARCHS)}")
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
        raise OptionError(f"num_classes must be a positive int; got {num_classes!r}")
    if not isinstance(width, int | float) or not width > 0:
        raise OptionError(f"width must be a positive number; got {width!r}")
    size = tuple(clip_size)
    if len(size) != 3 or not all(isinstance(s, int) and s > 0 for s in size):
        raise SelrelError(f"clip_size must be three positive ints (T, H, W); got {clip_size!r}")
    return _BUILDERS[arch](num_classes, float(width), size, **kw)
