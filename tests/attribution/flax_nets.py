"""Small Flax nets shared by the attribution tests (not a test module)."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from selrel_jax.layers import AvgPool, GlobalAvgPool, MaxPool, Sum


class ConvNet(nn.Module):
    """Small 3D conv net with every pooling module."""

    bias: bool = True

    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Conv(4, (3, 3, 3), padding=1, use_bias=self.bias, name="conv1")(x))
        x = MaxPool((1, 2, 2))(x)
        x = nn.relu(nn.Conv(6, (2, 3, 3), strides=(1, 1, 1), padding="SAME", use_bias=self.bias,
                            feature_group_count=2, name="conv2")(x))  # fmt: skip
        x = AvgPool((2, 1, 1))(x)
        x = nn.relu(nn.Conv(4, (1, 1, 1), use_bias=self.bias, name="conv3")(x))
        x = GlobalAvgPool()(x)
        x = nn.Dropout(0.5, deterministic=True)(x)
        return nn.Dense(3, use_bias=self.bias, name="fc")(x)


class ResNet(nn.Module):
    """Residual net: conv + BatchNorm, a block with a Sum, global pooling."""

    batchnorm: bool = True
    inline_add: bool = False  # "x + y" instead of Sum (the engine sees both)

    @nn.compact
    def __call__(self, x):
        def conv_bn(h, c, name):
            h = nn.Conv(c, (3, 3, 3), padding=1, use_bias=False, name=name)(h)
            if self.batchnorm:
                h = nn.BatchNorm(use_running_average=True, epsilon=1e-3, name=name + "_bn")(h)
            return h

        x = nn.relu(conv_bn(x, 4, "stem"))
        y = nn.relu(conv_bn(x, 4, "block_conv1"))
        y = conv_bn(y, 4, "block_conv2")
        x = nn.relu(x + y if self.inline_add else Sum(name="sum")(x, y))
        return nn.Dense(3, use_bias=self.batchnorm, name="fc")(GlobalAvgPool()(x))


def with_positive_batch_stats(variables):
    """BatchNorm variances must be positive; give scale/mean some spread."""
    stats = jax.tree.map(lambda v: v, variables["batch_stats"])
    stats = {k: {"mean": v["mean"], "var": jnp.abs(v["var"]) + 0.5} for k, v in stats.items()}
    return {**variables, "batch_stats": stats}
