"""Flax NNX ports of two zoo models, written the way NNX code usually is
(``jax.nn.relu``, ``nnx.max_pool``, ``jnp.mean`` pooling, residuals as inline
``x + y``), with the zoo's parameter names, so :func:`load_linen` can give them
a linen model's weights (not a test module)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from selrel_jax.models.c3d import scaled

_POOLS = {1: (1, 2, 2), 2: (2, 2, 2), 3: (2, 2, 2)}


class C3DSmall(nnx.Module):
    """selrel_jax.models.C3DSmall (stem stride 1, dropout left out: inference only)."""

    def __init__(self, num_classes: int, width: float, *, rngs: nnx.Rngs) -> None:
        c = [3] + [scaled(n, width) for n in (16, 32, 64, 64)]
        for i in range(1, 5):
            setattr(self, f"conv{i}", nnx.Conv(c[i - 1], c[i], (3, 3, 3), padding=1, rngs=rngs))
        self.fc = nnx.Linear(c[4], num_classes, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        for i in range(1, 5):
            x = jax.nn.relu(getattr(self, f"conv{i}")(x))
            if i in _POOLS:
                x = nnx.max_pool(x, _POOLS[i], _POOLS[i])
        return self.fc(jnp.mean(x, axis=(1, 2, 3)))


def _conv(cin, cout, kernel, strides, rngs):
    padding = tuple((k // 2, k // 2) for k in kernel)
    return nnx.Conv(cin, cout, kernel, strides, padding=padding, use_bias=False, rngs=rngs)


def _bn(features, rngs):
    return nnx.BatchNorm(features, use_running_average=True, epsilon=1e-5, rngs=rngs)


class Block(nnx.Module):
    """r3d_18's BasicBlock."""

    def __init__(self, cin: int, planes: int, stride: int, *, rngs: nnx.Rngs) -> None:
        self.conv1 = _conv(cin, planes, (3, 3, 3), (stride,) * 3, rngs)
        self.bn1 = _bn(planes, rngs)
        self.conv2 = _conv(planes, planes, (3, 3, 3), (1, 1, 1), rngs)
        self.bn2 = _bn(planes, rngs)
        self.downsample = stride != 1 or cin != planes
        if self.downsample:
            self.downsample_conv = _conv(cin, planes, (1, 1, 1), (stride,) * 3, rngs)
            self.downsample_bn = _bn(planes, rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        out = jax.nn.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        residual = self.downsample_bn(self.downsample_conv(x)) if self.downsample else x
        return jax.nn.relu(out + residual)


class R3D18(nnx.Module):
    """selrel_jax.models.VideoResNet(arch="r3d_18") with one block per stage."""

    def __init__(self, num_classes: int, width: float, *, rngs: nnx.Rngs) -> None:
        planes = [scaled(p, width) for p in (64, 64, 128, 256, 512)]
        self.stem_conv = _conv(3, planes[0], (3, 7, 7), (1, 2, 2), rngs)
        self.stem_bn = _bn(planes[0], rngs)
        for stage in range(1, 5):
            stride = 1 if stage == 1 else 2
            block = Block(planes[stage - 1], planes[stage], stride, rngs=rngs)
            setattr(self, f"layer{stage}_0", block)
        self.fc = nnx.Linear(planes[4], num_classes, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = jax.nn.relu(self.stem_bn(self.stem_conv(x)))
        for stage in range(1, 5):
            x = getattr(self, f"layer{stage}_0")(x)
        return self.fc(jnp.mean(x, axis=(1, 2, 3)))


def load_linen(model: nnx.Module, variables) -> nnx.Module:
    """``model`` with the linen ``variables`` of the same layer names and shapes."""
    state = nnx.state(model)

    def take(path, leaf):
        names = [str(getattr(k, "key", getattr(k, "name", k))) for k in path]
        names = names[:-1] if names[-1] == "value" else names
        collection = "batch_stats" if names[-1] in ("mean", "var") else "params"
        value = variables[collection]
        for name in names:
            value = value[name]
        assert value.shape == leaf.shape, (names, value.shape, leaf.shape)
        return jnp.asarray(value)

    nnx.update(model, jax.tree_util.tree_map_with_path(take, state))
    return model
