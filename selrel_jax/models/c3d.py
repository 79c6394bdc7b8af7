"""C3D (Tran et al. 2015) as in the popular PyTorch port, and a compact variant.

Both take NTHWC clips. ``C3D`` keeps the port's module names (conv1 ... conv5b,
fc6, fc7, fc8) so imported weights map one to one; fc6's input size follows
from ``clip_size``. ``C3DSmall`` is a few conv stages and a global average
pool, small enough to train on a laptop CPU in minutes.

Examples:
    The published C3D, traced abstractly (``jax.eval_shape``: shapes only, no
    compute); ``model.init`` and ``model.apply`` take the same arguments:

    >>> import jax
    >>> import jax.numpy as jnp
    >>> from selrel_jax.models.c3d import C3D
    >>> model = C3D(num_classes=487)
    >>> clips = jnp.zeros((1, 16, 112, 112, 3))
    >>> init = lambda clips: model.init(jax.random.key(0), clips, train=False)
    >>> variables = jax.eval_shape(init, clips)
    >>> variables["params"]["fc6"]["kernel"].shape
    (8192, 4096)
    >>> jax.eval_shape(lambda v, x: model.apply(v, x, train=False), variables, clips).shape
    (1, 487)
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax

from selrel_jax._checks import positive_int, real
from selrel_jax._conv import conv_general_dilated
from selrel_jax.errors import OptionError, ShapeError
from selrel_jax.layers import GlobalAvgPool, MaxPool

__all__ = ["C3D", "C3DSmall", "c3d_pool5_size", "scaled"]

_C3D_CONVS = (
    ("conv1", 64),
    ("conv2", 128),
    ("conv3a", 256),
    ("conv3b", 256),
    ("conv4a", 512),
    ("conv4b", 512),
    ("conv5a", 512),
    ("conv5b", 512),
)
# Pool after these convs: (window == strides, padding) per the port.
_C3D_POOLS = {
    "conv1": ((1, 2, 2), "VALID"),
    "conv2": ((2, 2, 2), "VALID"),
    "conv3b": ((2, 2, 2), "VALID"),
    "conv4b": ((2, 2, 2), "VALID"),
    "conv5b": ((2, 2, 2), ((0, 0), (1, 1), (1, 1))),
}


def scaled(channels: int, width: float) -> int:
    """Channel count ``channels * width``, at least 1."""
    return max(1, round(channels * width))


def _pooled(size: int, window: int, pad: int) -> int:
    return (size + 2 * pad - window) // window + 1


def c3d_pool5_size(clip_size: tuple[int, int, int]) -> tuple[int, int, int]:
    """(T, H, W) after C3D's pool5 for clips of ``clip_size`` (convs keep size)."""
    t, h, w = clip_size
    for window, padding in _C3D_POOLS.values():
        pads = (0, 0, 0) if padding == "VALID" else tuple(p[0] for p in padding)
        t, h, w = (_pooled(s, k, p) for s, k, p in zip((t, h, w), window, pads, strict=True))
    return t, h, w


def check_dropout_rate(rate: float) -> float:
    """``rate`` if it is a probability that keeps something: 0 <= rate < 1."""
    rate = real("model option dropout_rate", rate, minimum=0.0)
    if rate >= 1:
        raise OptionError(f"model option dropout_rate must be below 1; got {rate!r}")
    return rate


def positive_ints(name: str, values: Sequence[int], length: int | None = None) -> tuple[int, ...]:
    """``values`` as a tuple of positive ints (``length`` of them when given)."""
    try:
        out = tuple(positive_int(name, v) for v in values)
    except (OptionError, TypeError):
        out = ()
    if not out or (length is not None and len(out) != length):
        count = f"{length} " if length is not None else ""
        raise OptionError(f"{name} must be {count}positive ints; got {values!r}")
    return out


def check_not_empty(x: jax.Array, clips: tuple[int, ...], model: str, after: str) -> None:
    """Refuse clips so small that pooling leaves no frames or pixels (the model's
    output would be NaN or its fc6 would read nothing)."""
    if 0 in x.shape[1:-1]:
        raise ShapeError(
            f"clips of {clips} (T, H, W) are too small for {model}: {after} leaves "
            f"{tuple(x.shape[1:-1])}"
        )


class C3D(nn.Module):
    """C3D with the PyTorch port's layer names; ReLU after every conv, fc6 and fc7."""

    num_classes: int = 487
    width: float = 1.0
    clip_size: tuple[int, int, int] = (16, 112, 112)
    dropout_rate: float = 0.5
    hidden: int = 4096

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        rate = check_dropout_rate(self.dropout_rate)
        positive_int("model option hidden", self.hidden)
        clips = tuple(x.shape[1:-1])
        for name, channels in _C3D_CONVS:
            # conv_general_dilated: the same primitive, with a derivative computed
            # as 2D convolutions (XLA:CPU's 3D input gradients are 2-5x slower).
            conv = nn.Conv(
                scaled(channels, self.width),
                (3, 3, 3),
                padding=1,
                conv_general_dilated=conv_general_dilated,
                name=name,
            )
            x = nn.relu(conv(x))
            if name in _C3D_POOLS:
                window, padding = _C3D_POOLS[name]
                x = MaxPool(window, window, padding, name=f"pool{name[4]}")(x)
                check_not_empty(x, clips, "c3d", f"pool{name[4]}")
        # fc6 reads the NTHWC flatten; torch_import permutes the port's
        # NCDHW-ordered fc6 rows so that imported weights give the same logits.
        x = x.reshape((x.shape[0], -1))
        hidden = scaled(self.hidden, self.width)
        x = nn.relu(nn.Dense(hidden, name="fc6")(x))
        x = nn.Dropout(rate, deterministic=not train)(x)
        x = nn.relu(nn.Dense(hidden, name="fc7")(x))
        x = nn.Dropout(rate, deterministic=not train)(x)
        return nn.Dense(self.num_classes, name="fc8")(x)


class C3DSmall(nn.Module):
    """Compact C3D-style net: 4 conv stages (16/32/64/64 channels at width 1).

    Pools (1,2,2) after conv1 and (2,2,2) after conv2 and conv3, then global
    average pooling, dropout and one dense layer, so any clip of at least
    4 frames and 8x8 pixels works. ``stem_stride`` (e.g. ``(1, 2, 2)``) strides
    conv1: on CPU a conv over 3 full-resolution input channels dominates the
    step, and a strided conv1 makes training about 4x faster. (An average pool
    in front of conv1 would be as fast, but LRP's Norm rule on signed,
    normalised pixels divides by local means near zero and blows up.)
    """

    num_classes: int
    width: float = 1.0
    clip_size: tuple[int, int, int] = (16, 64, 64)
    dropout_rate: float = 0.3
    channels: tuple[int, ...] = (16, 32, 64, 64)
    stem_stride: tuple[int, int, int] = (1, 1, 1)

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        rate = check_dropout_rate(self.dropout_rate)
        stem_stride = positive_ints("model option stem_stride", self.stem_stride, 3)
        pools = {1: (1, 2, 2), 2: (2, 2, 2), 3: (2, 2, 2)}
        clips = tuple(x.shape[1:-1])
        for i, channels in enumerate(positive_ints("model option channels", self.channels), 1):
            strides = stem_stride if i == 1 else (1, 1, 1)
            conv = nn.Conv(
                scaled(channels, self.width),
                (3, 3, 3),
                strides,
                padding=1,
                conv_general_dilated=conv_general_dilated,
                name=f"conv{i}",
            )
            x = nn.relu(conv(x))
            if i in pools:
                x = MaxPool(pools[i], name=f"pool{i}")(x)
                check_not_empty(x, clips, "c3d_small", f"pool{i}")
        x = GlobalAvgPool(name="global_pool")(x)
        x = nn.Dropout(rate, deterministic=not train)(x)
        return nn.Dense(self.num_classes, name="fc")(x)
