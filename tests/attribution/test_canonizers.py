"""BatchNorm merging (canonizer): merged weights, logits kept, every rule
(the plain gradient too) runs on the merged layer, and outputs that a merge
would change are refused."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from selrel_jax.attribution import Composite, UnsupportedLayerError, composites, lrp, rules
from selrel_jax.attribution.canonizers import BatchNormInfo, merge_batchnorm
from selrel_jax.attribution.engine import relevance_vjp
from selrel_jax.errors import SelrelError
from selrel_jax.layers import Sum
from tests.attribution.flax_nets import ResNet, with_positive_batch_stats


class ConvBN(nn.Module):
    @nn.compact
    def __call__(self, x):
        h = nn.Conv(3, (2, 2), use_bias=True, name="conv")(x)
        h = nn.BatchNorm(use_running_average=True, epsilon=1e-3, name="bn")(h)
        return nn.Dense(2, name="fc")(nn.relu(h).reshape(x.shape[0], -1))


class Merged(nn.Module):
    """ConvBN with the BatchNorm folded into the conv by hand."""

    @nn.compact
    def __call__(self, x):
        h = nn.Conv(3, (2, 2), name="conv")(x)
        return nn.Dense(2, name="fc")(nn.relu(h).reshape(x.shape[0], -1))


@pytest.fixture(scope="module")
def conv_bn(normal_clips, random_variables):
    """(x, ConvBN variables, the spec's hand-merged variables for Merged)."""
    x = normal_clips((1, 3, 3, 2), 5)
    v = with_positive_batch_stats(random_variables(ConvBN(), x, 4))
    p, s = v["params"], v["batch_stats"]["bn"]
    k = p["bn"]["scale"] / np.sqrt(s["var"] + 1e-3)
    merged = {"params": {
        "conv": {"kernel": p["conv"]["kernel"] * k,
                 "bias": (p["conv"]["bias"] - s["mean"]) * k + p["bn"]["bias"]},
        "fc": p["fc"],
    }}  # fmt: skip
    return x, v, merged


def test_merge_batchnorm_is_the_spec_formula(conv_bn):
    _, v, merged = conv_bn
    info = BatchNormInfo(("bn",), 1e-3, True, True)
    got = merge_batchnorm(v["params"]["conv"], info, v)
    for name in ("kernel", "bias"):
        want = np.asarray(merged["params"]["conv"][name])
        np.testing.assert_allclose(np.asarray(got[name]), want, rtol=1e-6)
    no_bias = merge_batchnorm({"kernel": v["params"]["conv"]["kernel"]}, info, v)
    stats = v["batch_stats"]["bn"]
    want = -stats["mean"] * v["params"]["bn"]["scale"] / np.sqrt(stats["var"] + 1e-3)
    np.testing.assert_allclose(np.asarray(no_bias["bias"]),
                               np.asarray(want + v["params"]["bn"]["bias"]), rtol=1e-6)  # fmt: skip


def test_batchnorm_merging_keeps_logits_and_relevance_is_finite(normal_clips, random_variables):
    model = ResNet(batchnorm=True)
    x = normal_clips((2, 3, 5, 5, 2))
    variables = with_positive_batch_stats(random_variables(model, x, 3))
    logits, pull = relevance_vjp(model, composites.epsilon_plus(), variables, x)
    np.testing.assert_allclose(np.asarray(logits), np.asarray(model.apply(variables, x)),
                               atol=1e-5, rtol=1e-5)  # fmt: skip
    rel = pull(jax.nn.one_hot(jnp.array([0, 1]), 3))
    assert rel.shape == x.shape and bool(jnp.all(jnp.isfinite(rel)))


def test_batchnorm_merge_equals_hand_merged_conv(conv_bn):
    """LRP of conv+BN equals LRP of one conv holding the spec's merged weights."""
    x, v, merged = conv_bn
    for comp in (composites.epsilon_plus(), composites.epsilon_alpha2_beta1()):
        a = lrp(ConvBN(), comp)(v, x, jnp.array([1]))
        b = lrp(Merged(), comp)(merged, x, jnp.array([1]))
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5 * float(abs(b).max()))


@pytest.mark.parametrize("by", ["layer_map", "path_map"])
def test_gradient_rule_on_merged_layer_uses_merged_weights(conv_bn, by):
    """A conv whose BatchNorm is merged keeps the merge under the plain gradient
    rule: logits and relevance are those of the hand-merged conv (the conv used
    to run unmerged while its BatchNorm was skipped)."""
    x, v, merged = conv_bn
    if by == "layer_map":
        comp = Composite(((nn.Conv, rules.Gradient()), (nn.Dense, rules.Epsilon())))
    else:
        comp = Composite(((nn.Dense, rules.Epsilon()),), (("conv", rules.Gradient()),))
    logits, _ = relevance_vjp(ConvBN(), comp, v, x)
    np.testing.assert_allclose(np.asarray(logits), np.asarray(ConvBN().apply(v, x)),
                               rtol=1e-5, atol=1e-6)  # fmt: skip
    a = lrp(ConvBN(), comp)(v, x, jnp.array([1]))
    b = lrp(Merged(), comp)(merged, x, jnp.array([1]))
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5 * float(abs(b).max()))


class Reuse(nn.Module):
    """The conv output feeds the BatchNorm and, depending on ``reader``, another module."""

    reader: str

    @nn.compact
    def __call__(self, x):
        conv = nn.Conv(3, (2, 2), padding="SAME", name="conv")
        h = conv(x)
        if self.reader == "before":  # read before the BatchNorm is called
            side = nn.Conv(3, (1, 1), name="side")(h)
        y = nn.BatchNorm(use_running_average=True, name="bn")(h)
        if self.reader == "sum":
            y = Sum(name="skip")(y, h)
        elif self.reader == "after":
            y = Sum()(y, nn.Conv(3, (1, 1), name="side")(h))
        elif self.reader == "before":
            y = Sum()(y, side)
        elif self.reader == "second_call":
            y = Sum()(y, conv(x))  # the same conv again, without its BatchNorm
        return nn.Dense(2, name="fc")(y.reshape(x.shape[0], -1))


@pytest.mark.parametrize(
    ("reader", "other"),
    [("sum", "skip"), ("after", "side"), ("before", "side"), ("second_call", None)],
)
def test_merged_output_read_elsewhere_is_refused(normal_clips, reader, other):
    x = normal_clips((1, 3, 3, 2), 6)
    model = Reuse(reader)
    v = with_positive_batch_stats(model.init(jax.random.key(0), x))
    with pytest.raises(UnsupportedLayerError, match="'conv'") as info:
        lrp(model, composites.epsilon_plus())(v, x, jnp.array([0]))
    assert "'bn'" in str(info.value)
    if other is not None:
        assert f"'{other}'" in str(info.value)


class BatchNormBlock(nn.Module):
    @nn.compact
    def __call__(self, h):
        return nn.relu(nn.BatchNorm(use_running_average=True, epsilon=1e-3, name="bn")(h))


class ContainerHandsDown(nn.Module):
    """The conv output reaches its BatchNorm through a container: not a reuse."""

    @nn.compact
    def __call__(self, x):
        h = nn.Conv(3, (2, 2), name="conv")(x)
        h = BatchNormBlock(name="block")(h)
        return nn.Dense(2, name="fc")(h.reshape(x.shape[0], -1))


def test_container_handing_the_output_to_its_batchnorm_is_merged(conv_bn):
    x, v, merged = conv_bn
    params = {"conv": v["params"]["conv"], "fc": v["params"]["fc"],
              "block": {"bn": v["params"]["bn"]}}  # fmt: skip
    nested = {"params": params, "batch_stats": {"block": v["batch_stats"]}}
    a = lrp(ContainerHandsDown(), composites.epsilon_plus())(nested, x, jnp.array([1]))
    b = lrp(Merged(), composites.epsilon_plus())(merged, x, jnp.array([1]))
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5 * float(abs(b).max()))


def test_batchnorm_errors(normal_clips):
    class LoneBatchNorm(nn.Module):
        @nn.compact
        def __call__(self, x):
            return nn.Dense(2)(nn.BatchNorm(use_running_average=True, name="bn")(x * 2.0))

    class TrainMode(nn.Module):
        @nn.compact
        def __call__(self, x):
            h = nn.Dense(3, name="fc1")(x)
            return nn.Dense(2)(nn.BatchNorm(use_running_average=False, name="bn")(h))

    x = normal_clips((2, 3), 16)
    for model, message in ((LoneBatchNorm(), "'bn' does not directly follow"),
                           (TrainMode(), "'bn' uses batch statistics")):  # fmt: skip
        v = model.init(jax.random.key(0), x)
        with pytest.raises(SelrelError, match=message):
            lrp(model, composites.epsilon_plus())(v, x, jnp.array([0, 1]))
