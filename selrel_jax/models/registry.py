"""``create(arch, num_classes, ...)``: one entry point for every architecture."""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from selrel_jax.errors import OptionError, SelrelError
from selrel_jax.models.c3d import C3D, C3DSmall
from selrel_jax.models.resnet3d import RESNET_ARCHS, VideoResNet
from selrel_jax.models.vit import VIT_ARCHS, VideoViT
from selrel_jax.models.x3d import X3D, X3D_ARCHS

__all__ = ["ARCHS", "HEADS", "create", "model_options"]

#: The architecture names ``create`` takes.
ARCHS: tuple[str, ...] = (
    "c3d", "c3d_small", "r3d_18", "mc3_18", "r2plus1d_18", *VIT_ARCHS, *X3D_ARCHS,
)  # fmt: skip

_MODULES: dict[str, type[nn.Module]] = {
    "c3d": C3D,
    "c3d_small": C3DSmall,
    **{arch: VideoResNet for arch in RESNET_ARCHS},
    **{arch: VideoViT for arch in VIT_ARCHS},
    **{arch: X3D for arch in X3D_ARCHS},
}
# The modules that build several archs, told which by their ``arch`` field.
_FAMILIES = (*RESNET_ARCHS, *VIT_ARCHS, *X3D_ARCHS)

#: The top-level module of each arch that maps features to class logits: what a
#: fine-tune replaces when the class count changes, and all that trains when the
#: backbone is frozen.
HEADS: dict[str, str] = {
    "c3d": "fc8",
    "c3d_small": "fc",
    **{a: "fc" for a in RESNET_ARCHS},
    **{a: "classifier" for a in VIT_ARCHS},
    **{a: "head_proj" for a in X3D_ARCHS},
}

# Module fields that create sets itself (Flax's own, and create's arguments).
_NOT_OPTIONS = ("parent", "name", "arch", "num_classes", "width", "clip_size")


def model_options(arch: str) -> tuple[str, ...]:
    """The keyword options ``create`` takes for ``arch`` besides its own arguments
    (e.g. ``channels``, ``dropout_rate``, ``stem_stride`` for c3d_small)."""
    if arch not in _MODULES:
        raise OptionError(f"unknown model arch {arch!r}; expected one of {list(ARCHS)}")
    fields = dataclasses.fields(_MODULES[arch])
    return tuple(sorted(f.name for f in fields if f.name not in _NOT_OPTIONS))


def _build(arch: str, num_classes: int, width: float, size: tuple, kw: dict) -> nn.Module:
    own = {"arch": arch} if arch in _FAMILIES else {}
    return _MODULES[arch](num_classes=num_classes, width=width, clip_size=size, **own, **kw)


def _trace_init(model: nn.Module, clip_size: tuple[int, int, int]) -> None:
    """Trace ``model.init`` on abstract clips: every shape and option type is used,
    nothing is computed."""
    clips = jax.ShapeDtypeStruct((1, *clip_size, 3), jnp.float32)
    jax.eval_shape(lambda c: model.init(jax.random.key(0), c, train=False), clips)


def _gist(error: Exception, limit: int = 160) -> str:
    text = str(error).strip()
    first = text.splitlines()[0] if text else type(error).__name__
    return first if len(first) <= limit else first[: limit - 3] + "..."


def _check_option_values(
    arch: str, num_classes: int, width: float, size: tuple, kw: dict[str, Any]
) -> None:
    """Refuse model options that the module cannot be built with, naming the option.

    Only an option the module's own checks do not cover (a value of the wrong type
    that fails deep inside JAX) reaches the generic path; it is found by building
    with each option alone.
    """
    try:
        _trace_init(_build(arch, num_classes, width, size, kw), size)
        return
    except SelrelError:
        raise  # the module's own checks name the option (or the clip size) already
    except Exception as error:  # JAX and Flax raise many types for a value they cannot use
        reason = _gist(error)
    for key, value in kw.items():
        try:
            _trace_init(_build(arch, num_classes, width, size, {key: value}), size)
        except Exception:  # the same failure, now with one option
            raise OptionError(
                f"model option {key}={value!r} does not work for {arch}: {reason}"
            ) from None
    shown = ", ".join(f"{k}={v!r}" for k, v in kw.items())
    raise OptionError(f"model options {shown} do not work together for {arch}: {reason}")


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
    (T, H, W) of input clips (C3D derives fc6's input size from it). ``kw`` are
    the module's options (:func:`model_options`): an unknown name raises
    OptionError listing the valid ones, and given options are checked by tracing
    the model's init, so a value the module cannot use raises OptionError naming
    it here rather than deep inside JAX later.

    Examples:
        >>> import jax
        >>> import jax.numpy as jnp
        >>> from selrel_jax import models
        >>> model = models.create("c3d_small", 4, width=0.25, clip_size=(8, 32, 32))
        >>> variables = model.init(jax.random.key(0), jnp.zeros((1, 8, 32, 32, 3)), train=False)
        >>> clips = jax.random.normal(jax.random.key(1), (1, 8, 32, 32, 3))
        >>> model.apply(variables, clips, train=False).shape
        (1, 4)
        >>> models.create("c3d_small", 4, depth=3)
        Traceback (most recent call last):
        ...
        selrel_jax.errors.OptionError: ...
    """
    valid = model_options(arch)
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
        raise OptionError(f"num_classes must be a positive int; got {num_classes!r}")
    if not isinstance(width, int | float) or isinstance(width, bool) or not width > 0:
        raise OptionError(f"width must be a positive number; got {width!r}")
    size = tuple(clip_size)
    if len(size) != 3 or not all(isinstance(s, int) and s > 0 for s in size):
        raise SelrelError(f"clip_size must be three positive ints (T, H, W); got {clip_size!r}")
    unknown = sorted(set(kw) - set(valid))
    if unknown:
        raise OptionError(
            f"{arch} has no model option {', '.join(map(repr, unknown))}; its options are "
            f"{', '.join(valid)} (num_classes, width and clip_size are create's arguments)"
        )
    if kw:
        _check_option_values(arch, num_classes, float(width), size, kw)
    return _build(arch, num_classes, float(width), size, kw)
