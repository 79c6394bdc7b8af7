"""X3D-XS and X3D-S (Feichtenhofer 2020) in Flax, as pytorchvideo builds them.

pytorchvideo's ``create_x3d`` with its hub settings (width factor 2, depth
factor 2.2, bottleneck factor 2.25, 12 stem channels): a stem of a 1x3x3 conv
and a depthwise 5x1x1 conv, four stages of channel-separated bottlenecks (1x1x1,
*depthwise* 3x3x3 with ``feature_group_count``, 1x1x1) with squeeze-excitation
in every other block and Swish after the depthwise conv, residual sums, and
pytorchvideo's head: 1x1x1 conv, BatchNorm, ReLU, an average pool of the
window ``(T, ceil(crop / 32), ceil(crop / 32))`` with stride 1, a 1x1x1 conv to
2048, ReLU, the linear projection, and the mean of what the pool left. XS and
S differ in their clips only (4 and 13 frames). The model returns the logits:
pytorchvideo's evaluation-time softmax is left out.

Module names say what each layer does (``stage2_0/conv_b`` for
``blocks.2.res_blocks.0.branch2.conv_b``); :mod:`selrel_jax.models.torch_import`
holds the table to pytorchvideo's state_dict keys. ``width`` scales every
channel count (1.0 = published); ``blocks`` (per stage; published 3, 5, 11, 7)
makes shallow variants for tests; ``input_crop_size`` is pytorchvideo's
argument of that name, which sizes the head's pool (None: the clip's H and W,
so the pool covers the whole map; the published weights take 160 at a 182 crop).

Examples:
    >>> import jax
    >>> import jax.numpy as jnp
    >>> from selrel_jax import models
    >>> model = models.create("x3d_xs", 4, width=0.25, clip_size=(4, 64, 64), blocks=(1, 2, 1, 1))
    >>> clips = jnp.zeros((1, 4, 64, 64, 3))
    >>> variables = model.init(jax.random.key(0), clips, train=False)
    >>> model.apply(variables, clips, train=False).shape
    (1, 4)
    >>> x3d_widths(1.0)[:3]
    (24, (24, 48, 96, 192), (54, 108, 216, 432))
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from selrel_jax._conv import conv_general_dilated
from selrel_jax.errors import ShapeError
from selrel_jax.layers import AvgPool, GlobalAvgPool, Sum
from selrel_jax.models.c3d import check_dropout_rate, positive_ints, scaled

__all__ = ["X3D", "X3D_ARCHS", "X3D_BLOCKS", "round_width", "x3d_widths"]

#: pytorchvideo's hub X3Ds.
X3D_ARCHS = ("x3d_xs", "x3d_s")
#: Blocks per stage: ceil(2.2 * (1, 2, 5, 3)).
X3D_BLOCKS = (3, 5, 11, 7)
STEM_CHANNELS = 24  # round_width(12, 2.0)
STAGE_CHANNELS = (24, 48, 96, 192)
BOTTLENECK_FACTOR = 2.25
SE_RATIO = 0.0625
HEAD_CHANNELS = 2048
BN_EPS = 1e-5
SPATIAL_STRIDE = 32  # the stem's 2 and each stage's 2

conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def round_width(width: float, multiplier: float, min_width: int = 8, divisor: int = 8) -> int:
    """pytorchvideo's ``round_width``: ``width * multiplier`` to a multiple of ``divisor``
    (at least ``min_width``, and at least 90% of the product)."""
    width *= multiplier
    out = max(min_width, int(width + divisor / 2) // divisor * divisor)
    return int(out + divisor if out < 0.9 * width else out)


def x3d_widths(width: float) -> tuple[int, tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
    """Channels at ``width``: the stem's, each stage's output, bottleneck inner and
    squeeze-excitation reduced counts."""
    outs = tuple(scaled(c, width) for c in STAGE_CHANNELS)
    inner = tuple(int(BOTTLENECK_FACTOR * c) for c in outs)
    return scaled(STEM_CHANNELS, width), outs, inner, tuple(round_width(c, SE_RATIO) for c in inner)


def _conv(features: int, kernel: Sequence[int], strides: Sequence[int] = (1, 1, 1),
          groups: int = 1, name: str = "", bias: bool = False) -> nn.Conv:  # fmt: skip
    return nn.Conv(features, tuple(kernel), tuple(strides),
                   padding=tuple((k // 2, k // 2) for k in kernel), feature_group_count=groups,
                   use_bias=bias, kernel_init=conv_init, conv_general_dilated=conv_general_dilated,
                   name=name)  # fmt: skip


def _bn(train: bool, name: str) -> nn.BatchNorm:
    return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=BN_EPS, name=name)


def swish(x: jax.Array) -> jax.Array:
    """x * sigmoid(x) (pytorchvideo's Swish)."""
    return x * jax.nn.sigmoid(x)


class SqueezeExcitation(nn.Module):
    """fvcore's 3D squeeze-excitation: x * sigmoid(expand(relu(reduce(mean(x)))))."""

    reduced: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        s = jnp.mean(x, axis=(1, 2, 3), keepdims=True)
        s = nn.relu(_conv(self.reduced, (1, 1, 1), name="se_reduce", bias=True)(s))
        s = _conv(x.shape[-1], (1, 1, 1), name="se_expand", bias=True)(s)
        return x * jax.nn.sigmoid(s)


class Bottleneck(nn.Module):
    """X3D's residual block: 1x1x1, depthwise 3x3x3 (strided), [SE], Swish, 1x1x1,
    plus the input (through a strided 1x1x1 conv, normalised when channels change)."""

    out: int
    inner: int
    se: int  # reduced channels; 0: no squeeze-excitation
    stride: int

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        s = self.stride
        y = nn.relu(_bn(train, "bn_a")(_conv(self.inner, (1, 1, 1), name="conv_a")(x)))
        y = _conv(self.inner, (3, 3, 3), (1, s, s), groups=self.inner, name="conv_b")(y)
        y = _bn(train, "bn_b")(y)
        if self.se:
            y = SqueezeExcitation(self.se, name="se")(y)
        y = _bn(train, "bn_c")(_conv(self.out, (1, 1, 1), name="conv_c")(swish(y)))
        shortcut = x
        if x.shape[-1] != self.out or s > 1:
            shortcut = _conv(self.out, (1, 1, 1), (1, s, s), name="shortcut_conv")(x)
            if x.shape[-1] != self.out:
                shortcut = _bn(train, "shortcut_bn")(shortcut)
        return nn.relu(Sum(name="sum")(shortcut, y))


class X3D(nn.Module):
    """x3d_xs / x3d_s (the same network; their clips differ), channels scaled by
    ``width``; see the module docstring for ``blocks`` and ``input_crop_size``."""

    arch: str = "x3d_s"
    num_classes: int = 400
    width: float = 1.0
    clip_size: tuple[int, int, int] = (13, 182, 182)
    blocks: tuple[int, ...] = X3D_BLOCKS
    input_crop_size: int | None = None
    dropout_rate: float = 0.5

    def _head_window(self, x: jax.Array) -> tuple[int, int, int]:
        t, h, w = self.clip_size
        if self.input_crop_size is not None:
            h = w = positive_ints("model option input_crop_size", (self.input_crop_size,))[0]
        window = (t, math.ceil(h / SPATIAL_STRIDE), math.ceil(w / SPATIAL_STRIDE))
        if any(size < k for size, k in zip(x.shape[1:4], window, strict=True)):
            raise ShapeError(
                f"{self.arch}'s head pools {window} windows (clip_size {tuple(self.clip_size)}, "
                f"input_crop_size {self.input_crop_size}) but these clips leave a "
                f"{tuple(x.shape[1:4])} map: clips must be at least the size the head is for"
            )
        return window

    def _head(self, x: jax.Array, inner: int, train: bool) -> jax.Array:
        x = _conv(inner, (1, 1, 1), name="head_pre_conv")(x)
        x = nn.relu(_bn(train, "head_pre_bn")(x))
        x = AvgPool(self._head_window(x), (1, 1, 1), name="head_pool")(x)
        x = nn.relu(_conv(scaled(HEAD_CHANNELS, self.width), (1, 1, 1), name="head_post_conv")(x))
        x = nn.Dropout(check_dropout_rate(self.dropout_rate), deterministic=not train)(x)
        x = nn.Dense(self.num_classes, name="head_proj")(x)
        return GlobalAvgPool(name="head_mean")(x)

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        stage_blocks = positive_ints("model option blocks", self.blocks, len(X3D_BLOCKS))
        stem, outs, inners, reduced = x3d_widths(self.width)
        x = _conv(stem, (1, 3, 3), (1, 2, 2), name="stem_conv_spatial")(x)
        x = _conv(stem, (5, 1, 1), groups=stem, name="stem_conv_temporal")(x)
        x = nn.relu(_bn(train, "stem_bn")(x))
        for stage, blocks in enumerate(stage_blocks):
            for b in range(blocks):
                se = reduced[stage] if b % 2 == 0 else 0  # pytorchvideo: every other block
                x = Bottleneck(outs[stage], inners[stage], se, 2 if b == 0 else 1,
                               name=f"stage{stage + 1}_{b}")(x, train)  # fmt: skip
        return self._head(x, inners[-1], train)
