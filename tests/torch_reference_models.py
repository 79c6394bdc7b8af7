"""Plain torch.nn reference models with the checkpoint key layouts (no torchvision).

Written from torchvision.models.video.resnet and the C3D PyTorch port so that
their state_dict keys and forward passes are those of the real checkpoints;
``width`` thins every channel count with the same rounding as the Flax models.
``residual_sum`` (video ResNets) is a factory of a parameter-free module that
sums a stacked last axis, e.g. ``zennit.layer.Sum``: the residual additions
then run through it (``sum(stack([out, residual], -1))``), so LRP libraries
see them as layers; the state_dict keys stay the same. Shared by the tests
and the benchmarks (``bench/lrp.py`` imports it with the repo root on
``sys.path``).
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from collections.abc import Callable

import torch
from torch import nn


def ch(channels: int, width: float) -> int:
    return max(1, round(channels * width))


class C3D(nn.Module):
    """The C3D port (conv1 ... conv5b, pool5 padded (0, 1, 1), fc6-8), logits out."""

    def __init__(self, num_classes=487, width=1.0, clip_size=(16, 112, 112)):
        super().__init__()
        c = [ch(n, width) for n in (64, 128, 256, 512)]
        self.conv1 = nn.Conv3d(3, c[0], 3, padding=1)
        self.pool1 = nn.MaxPool3d((1, 2, 2), (1, 2, 2))
        self.conv2 = nn.Conv3d(c[0], c[1], 3, padding=1)
        self.pool2 = nn.MaxPool3d(2, 2)
        self.conv3a = nn.Conv3d(c[1], c[2], 3, padding=1)
        self.conv3b = nn.Conv3d(c[2], c[2], 3, padding=1)
        self.pool3 = nn.MaxPool3d(2, 2)
        self.conv4a = nn.Conv3d(c[2], c[3], 3, padding=1)
        self.conv4b = nn.Conv3d(c[3], c[3], 3, padding=1)
        self.pool4 = nn.MaxPool3d(2, 2)
        self.conv5a = nn.Conv3d(c[3], c[3], 3, padding=1)
        self.conv5b = nn.Conv3d(c[3], c[3], 3, padding=1)
        self.pool5 = nn.MaxPool3d(2, 2, padding=(0, 1, 1))
        with torch.no_grad():
            flat = self.features(torch.zeros(1, 3, *clip_size)).shape[1]
        hidden = ch(4096, width)
        self.fc6 = nn.Linear(flat, hidden)
        self.fc7 = nn.Linear(hidden, hidden)
        self.fc8 = nn.Linear(hidden, num_classes)
        self.dropout = nn.Dropout(0.5)

    def features(self, x):
        r = torch.relu
        x = self.pool1(r(self.conv1(x)))
        x = self.pool2(r(self.conv2(x)))
        x = self.pool3(r(self.conv3b(r(self.conv3a(x)))))
        x = self.pool4(r(self.conv4b(r(self.conv4a(x)))))
        x = self.pool5(r(self.conv5b(r(self.conv5a(x)))))
        return x.reshape(x.shape[0], -1)

    def forward(self, x):
        h = self.dropout(torch.relu(self.fc6(self.features(x))))
        h = self.dropout(torch.relu(self.fc7(h)))
        return self.fc8(h)


class C3DSmall(nn.Module):
    """selrel_jax's compact C3D: conv1-4 with ReLU, max pools, global mean, fc."""

    def __init__(self, num_classes, width=1.0):
        super().__init__()
        c = [3] + [ch(n, width) for n in (16, 32, 64, 64)]
        for i in range(1, 5):
            setattr(self, f"conv{i}", nn.Conv3d(c[i - 1], c[i], 3, padding=1))
        self.pools = {1: nn.MaxPool3d((1, 2, 2)), 2: nn.MaxPool3d(2), 3: nn.MaxPool3d(2)}
        self.fc = nn.Linear(c[4], num_classes)

    def forward(self, x):
        for i in range(1, 5):
            x = torch.relu(getattr(self, f"conv{i}")(x))
            x = self.pools[i](x) if i in self.pools else x
        return self.fc(x.mean(dim=(2, 3, 4)))


def conv3d_simple(i, o, mid, stride=1):
    return nn.Conv3d(i, o, 3, stride, 1, bias=False)


def conv3d_no_temporal(i, o, mid, stride=1):
    return nn.Conv3d(i, o, (1, 3, 3), (1, stride, stride), (0, 1, 1), bias=False)


def conv2plus1d(i, o, mid, stride=1):
    return nn.Sequential(
        nn.Conv3d(i, mid, (1, 3, 3), (1, stride, stride), (0, 1, 1), bias=False),
        nn.BatchNorm3d(mid),
        nn.ReLU(inplace=True),
        nn.Conv3d(mid, o, (3, 1, 1), (stride, 1, 1), (1, 0, 0), bias=False),
    )


class BasicBlock(nn.Module):
    def __init__(self, inplanes, planes, builder, stride=1, downsample=None, residual_sum=None):
        super().__init__()
        mid = (inplanes * planes * 3 * 3 * 3) // (inplanes * 3 * 3 + 3 * planes)
        self.conv1 = nn.Sequential(
            builder(inplanes, planes, mid, stride), nn.BatchNorm3d(planes), nn.ReLU(inplace=True)
        )
        self.conv2 = nn.Sequential(builder(planes, planes, mid), nn.BatchNorm3d(planes))
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        if residual_sum is not None:  # parameter-free: the state_dict keys stay the same
            self.sum = residual_sum()

    def forward(self, x):
        out = self.conv2(self.conv1(x))
        residual = x if self.downsample is None else self.downsample(x)
        if hasattr(self, "sum"):
            return self.relu(self.sum(torch.stack([out, residual], dim=-1)))
        return self.relu(out + residual)


class VideoResNet(nn.Module):
    """torchvision's r3d_18 / mc3_18 / r2plus1d_18 with the same module tree."""

    def __init__(self, arch, num_classes=400, width=1.0, residual_sum=None):
        super().__init__()
        self.residual_sum = residual_sum
        w64 = ch(64, width)
        if arch == "r2plus1d_18":
            mid = ch(45, width)
            self.stem = nn.Sequential(
                nn.Conv3d(3, mid, (1, 7, 7), (1, 2, 2), (0, 3, 3), bias=False),
                nn.BatchNorm3d(mid),
                nn.ReLU(inplace=True),
                nn.Conv3d(mid, w64, (3, 1, 1), 1, (1, 0, 0), bias=False),
                nn.BatchNorm3d(w64),
                nn.ReLU(inplace=True),
            )
            builders = [conv2plus1d] * 4
        else:
            self.stem = nn.Sequential(
                nn.Conv3d(3, w64, (3, 7, 7), (1, 2, 2), (1, 3, 3), bias=False),
                nn.BatchNorm3d(w64),
                nn.ReLU(inplace=True),
            )
            second = conv3d_no_temporal if arch == "mc3_18" else conv3d_simple
            builders = [conv3d_simple] + [second] * 3
        self.inplanes = w64
        stages = zip((64, 128, 256, 512), (1, 2, 2, 2), strict=True)
        for i, (planes, stride) in enumerate(stages, 1):
            setattr(self, f"layer{i}", self._layer(builders[i - 1], ch(planes, width), stride))
        self.avgpool = nn.AdaptiveAvgPool3d(1)
        self.fc = nn.Linear(ch(512, width), num_classes)

    def _layer(self, builder, planes, stride):
        downsample = None
        if stride != 1 or self.inplanes != planes:
            ds = (1, stride, stride) if builder is conv3d_no_temporal else (stride,) * 3
            downsample = nn.Sequential(
                nn.Conv3d(self.inplanes, planes, 1, ds, bias=False), nn.BatchNorm3d(planes)
            )
        rsum = self.residual_sum
        blocks = [BasicBlock(self.inplanes, planes, builder, stride, downsample, rsum)]
        self.inplanes = planes
        blocks.append(BasicBlock(planes, planes, builder, residual_sum=rsum))
        return nn.Sequential(*blocks)

    def forward(self, x):
        x = self.stem(x)
        for i in range(1, 5):
            x = getattr(self, f"layer{i}")(x)
        return self.fc(self.avgpool(x).flatten(1))


def randomise_batchnorm(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial BatchNorm statistics and affine parameters, eval mode."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm3d):
                n = m.num_features
                m.running_mean.copy_(0.2 * torch.randn(n, generator=g))
                m.running_var.copy_(0.5 + torch.rand(n, generator=g))
                m.weight.copy_(0.5 + torch.rand(n, generator=g))
                m.bias.copy_(0.2 * torch.randn(n, generator=g))
                m.num_batches_tracked.fill_(7)
    return model.eval()


def build(
    arch: str,
    num_classes: int,
    width: float,
    clip_size=(16, 112, 112),
    seed: int = 0,
    residual_sum: Callable[[], nn.Module] | None = None,
):
    torch.manual_seed(seed)
    if arch == "c3d":
        return C3D(num_classes, width, clip_size).eval()
    if arch == "c3d_small":
        return C3DSmall(num_classes, width).eval()
    return randomise_batchnorm(VideoResNet(arch, num_classes, width, residual_sum), seed)


def import_zennit() -> types.SimpleNamespace:
    """Zennit's ``composites``, ``Gradient`` (attributor), ``SequentialMergeBatchNorm``
    and ``Sum``. Zennit imports torchvision, which is not installed here, only
    for two class names of its ResNet canonizer; where torchvision is missing a
    stand-in provides them while zennit is imported and is removed again."""
    names = ("torchvision", "torchvision.models", "torchvision.models.resnet")
    stubbed = importlib.util.find_spec("torchvision") is None
    if stubbed:
        stub, models, resnet = (types.ModuleType(n) for n in names)
        resnet.Bottleneck = resnet.BasicBlock = type("Block", (torch.nn.Module,), {})
        stub.models, models.resnet = models, resnet
        sys.modules.update({m.__name__: m for m in (stub, models, resnet)})
    try:
        return types.SimpleNamespace(
            composites=importlib.import_module("zennit.composites"),
            Gradient=importlib.import_module("zennit.attribution").Gradient,
            SequentialMergeBatchNorm=importlib.import_module(
                "zennit.canonizers"
            ).SequentialMergeBatchNorm,
            Sum=importlib.import_module("zennit.layer").Sum,
        )
    finally:
        if stubbed:
            for name in names:
                sys.modules.pop(name, None)
