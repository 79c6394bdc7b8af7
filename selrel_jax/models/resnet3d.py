"""torchvision's 18-layer video ResNets (Tran et al. 2018) in Flax: r3d_18, mc3_18, r2plus1d_18.

Same stems, BasicBlocks, downsample paths and channel counts as
``torchvision.models.video``; residual additions are :class:`~selrel_jax.layers.Sum`
modules and every BatchNorm directly follows the conv it normalises, so the
relevance engine can merge them. Module names mirror torchvision's state_dict
(``stem``, ``layer1_0`` for ``layer1.0``, ``conv1``/``bn1`` for ``conv1.0``/
``conv1.1``, ``downsample_conv``/``downsample_bn``, ``fc``), which keeps the
weight import a table.

Examples:
    Traced abstractly (``jax.eval_shape``: shapes only, no compute):

    >>> import jax
    >>> import jax.numpy as jnp
    >>> from selrel_jax.models.resnet3d import VideoResNet
    >>> model = VideoResNet(arch="r2plus1d_18", num_classes=400)
    >>> clips = jnp.zeros((1, 16, 112, 112, 3))   # (N, T, H, W, 3)
    >>> variables = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), clips)
    >>> sorted(variables)
    ['batch_stats', 'params']
    >>> jax.eval_shape(lambda v, x: model.apply(v, x, train=False), variables, clips).shape
    (1, 400)
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax

from selrel_jax._conv import conv_general_dilated
from selrel_jax.layers import GlobalAvgPool, Sum
from selrel_jax.models.c3d import positive_ints, scaled

__all__ = ["RESNET_ARCHS", "VideoResNet", "block_convs", "midplanes"]

#: torchvision's video ResNets.
RESNET_ARCHS = ("r3d_18", "mc3_18", "r2plus1d_18")
STAGE_PLANES = (64, 128, 256, 512)
BLOCKS_PER_STAGE = (2, 2, 2, 2)
BN_EPS = 1e-5  # torch.nn.BatchNorm3d default

# torchvision initialisation: Kaiming normal (fan_out) convs, N(0, 0.01) fc.
conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
fc_init = nn.initializers.normal(0.01)


def midplanes(in_planes: int, out_planes: int) -> int:
    """Channels between R(2+1)D's spatial and temporal convs (same parameter count as 3x3x3)."""
    return (in_planes * out_planes * 3 * 3 * 3) // (in_planes * 3 * 3 + 3 * out_planes)


def block_convs(arch: str, stage: int) -> str:
    """Conv builder of ``stage`` (1..4): "3d", "no_temporal" (1x3x3) or "2plus1d"."""
    if arch == "r2plus1d_18":
        return "2plus1d"
    if arch == "mc3_18" and stage > 1:
        return "no_temporal"
    return "3d"


def _pad(kernel: Sequence[int]) -> tuple[tuple[int, int], ...]:
    return tuple((k // 2, k // 2) for k in kernel)


def _conv(features: int, kernel: Sequence[int], strides: Sequence[int], name: str) -> nn.Conv:
    # conv_general_dilated: the same primitive, with a derivative of stride-1 convs
    # only (XLA:CPU's input gradient of the strided stem is ~80x slower).
    return nn.Conv(
        features,
        tuple(kernel),
        tuple(strides),
        padding=_pad(kernel),
        use_bias=False,
        kernel_init=conv_init,
        conv_general_dilated=conv_general_dilated,
        name=name,
    )


def _bn(train: bool, name: str) -> nn.BatchNorm:
    return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=BN_EPS, name=name)


class Conv2Plus1D(nn.Module):
    """(1,3,3) spatial conv, BatchNorm, ReLU, (3,1,1) temporal conv (torchvision's Conv2Plus1D)."""

    features: int
    mid: int
    stride: int = 1

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        s = self.stride
        x = _conv(self.mid, (1, 3, 3), (1, s, s), "conv_spatial")(x)
        x = nn.relu(_bn(train, "bn_mid")(x))
        return _conv(self.features, (3, 1, 1), (s, 1, 1), "conv_temporal")(x)


class BasicBlock(nn.Module):
    """Two convs with BatchNorm, a residual (downsampled when shapes change), ReLU."""

    planes: int
    convs: str
    stride: int = 1
    downsample: bool = False
    mid: int = 0

    def _make_conv(self, stride: int, name: str) -> nn.Module:
        s = stride
        if self.convs == "2plus1d":
            return Conv2Plus1D(self.planes, self.mid, s, name=name)
        if self.convs == "no_temporal":
            return _conv(self.planes, (1, 3, 3), (1, s, s), name)
        return _conv(self.planes, (3, 3, 3), (s, s, s), name)

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        def apply(conv: nn.Module, h: jax.Array) -> jax.Array:
            return conv(h, train) if isinstance(conv, Conv2Plus1D) else conv(h)

        out = nn.relu(_bn(train, "bn1")(apply(self._make_conv(self.stride, "conv1"), x)))
        out = _bn(train, "bn2")(apply(self._make_conv(1, "conv2"), out))
        residual = x
        if self.downsample:
            s = self.stride
            strides = (1, s, s) if self.convs == "no_temporal" else (s, s, s)
            residual = _conv(self.planes, (1, 1, 1), strides, "downsample_conv")(x)
            residual = _bn(train, "downsample_bn")(residual)
        return nn.relu(Sum(name="sum")(out, residual))


class VideoResNet(nn.Module):
    """r3d_18 / mc3_18 / r2plus1d_18 with channel counts scaled by ``width``.

    ``blocks`` (BasicBlocks per stage) is (2, 2, 2, 2) for the published
    18-layer nets; (1, 1, 1, 1) keeps every kind of layer (identity and
    downsampled residuals) at half the depth, for fast tests.
    """

    arch: str = "r3d_18"
    num_classes: int = 400
    width: float = 1.0
    clip_size: tuple[int, int, int] = (16, 112, 112)
    blocks: tuple[int, ...] = BLOCKS_PER_STAGE

    def _stem(self, x: jax.Array, train: bool) -> jax.Array:
        stem_planes = scaled(64, self.width)
        if self.arch == "r2plus1d_18":
            x = _conv(scaled(45, self.width), (1, 7, 7), (1, 2, 2), "stem_conv_spatial")(x)
            x = nn.relu(_bn(train, "stem_bn_spatial")(x))
            x = _conv(stem_planes, (3, 1, 1), (1, 1, 1), "stem_conv_temporal")(x)
            return nn.relu(_bn(train, "stem_bn_temporal")(x))
        x = _conv(stem_planes, (3, 7, 7), (1, 2, 2), "stem_conv")(x)
        return nn.relu(_bn(train, "stem_bn")(x))

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        stage_blocks = positive_ints("model option blocks", self.blocks, len(STAGE_PLANES))
        x = self._stem(x, train)
        in_planes = scaled(64, self.width)
        for stage, (planes, blocks) in enumerate(zip(STAGE_PLANES, stage_blocks, strict=True), 1):
            planes = scaled(planes, self.width)
            stride = 1 if stage == 1 else 2
            for b in range(blocks):
                x = BasicBlock(
                    planes,
                    block_convs(self.arch, stage),
                    stride if b == 0 else 1,
                    downsample=b == 0 and (stride != 1 or in_planes != planes),
                    # torchvision computes one midplanes per block from its input
                    # planes and uses it for both convs.
                    mid=midplanes(in_planes, planes),
                    name=f"layer{stage}_{b}",
                )(x, train)
                in_planes = planes
        x = GlobalAvgPool(name="avgpool")(x)
        return nn.Dense(self.num_classes, kernel_init=fc_init, name="fc")(x)
