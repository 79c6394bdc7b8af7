"""Canonizer: per-channel affine maps after a conv/dense layer (its bias, a
BatchNorm, written any way) folded into it with the spec's formula, logits
kept, every rule (the plain gradient too) run on the merged layer, and outputs
that a merge would change refused."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from selrel_jax.attribution import Composite, UnsupportedLayerError, composites, lrp, rules
from selrel_jax.attribution.canonizers import AffineStep, fold, merged_params
from selrel_jax.errors import SelrelError
from selrel_jax.layers import Sum
from tests.attribution.engine_helpers import relevance_vjp
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


def test_folded_chain_is_the_spec_formula(conv_bn):
    """Flax's BatchNorm steps (bias add, - mean, * scale/sqrt(var + eps), + beta)
    and the same written another way fold to W' and b' of the spec."""
    _, v, merged = conv_bn
    p, s = v["params"], v["batch_stats"]["bn"]
    values = {0: p["conv"]["bias"], 1: s["mean"], 2: p["bn"]["scale"] / jnp.sqrt(s["var"] + 1e-3),
              3: p["bn"]["bias"], 4: jnp.sqrt(s["var"] + 1e-3) / p["bn"]["scale"]}  # fmt: skip
    values = {k: jnp.reshape(a, (1, 1, 1, 3)) for k, a in values.items()}  # as traced
    flax_way = [AffineStep("add", 0), AffineStep("sub", 1), AffineStep("mul", 2),
                AffineStep("add", 3)]  # fmt: skip
    # -(mean - (z + b)) / (sqrt(var + eps) / scale) + beta
    other_way = [AffineStep("add", 0), AffineStep("rsub", 1), AffineStep("neg", None),
                 AffineStep("div", 4), AffineStep("add", 3)]  # fmt: skip
    want = merged["params"]["conv"]
    for steps in (flax_way, other_way):
        scale, shift = fold(steps, values, (1, 2, 2, 3), (3,))
        got = merged_params(p["conv"]["kernel"], scale, shift, (3,))
        for name in ("kernel", "bias"):
            np.testing.assert_allclose(np.asarray(got[name]), np.asarray(want[name]), rtol=1e-5)
    # A lone bias add changes no weight; no bias add gives no bias.
    assert fold([AffineStep("add", 0)], values, (1, 2, 2, 3), (3,))[0] is None
    assert set(merged_params(p["conv"]["kernel"], None, None, (3,))) == {"kernel"}


def test_batchnorm_merging_keeps_logits_and_relevance_is_finite(normal_clips, random_variables):
    model = ResNet(batchnorm=True)
    x = normal_clips((2, 3, 5, 5, 2))
    variables = with_positive_batch_stats(random_variables(model, x, 3))
    logits, pull = relevance_vjp(model, composites.epsilon_plus(), variables, x)
    np.testing.assert_allclose(np.asarray(logits), np.asarray(model.apply(variables, x)),
                               atol=1e-5, rtol=1e-5)  # fmt: skip
    rel = pull(jax.nn.one_hot(jnp.array([0, 1]), 3))
    assert rel.shape == x.shape and bool(jnp.all(jnp.isfinite(rel)))


def _assert_close(a, b):
    b = np.asarray(b)
    np.testing.assert_allclose(np.asarray(a), b, atol=1e-5 * float(np.abs(b).max()))


def test_batchnorm_merge_equals_hand_merged_conv(conv_bn):
    """LRP of conv+BN equals LRP of one conv holding the spec's merged weights."""
    x, v, merged = conv_bn
    for comp in (composites.epsilon_plus(), composites.epsilon_alpha2_beta1()):
        _assert_close(lrp(ConvBN(), comp)(v, x, jnp.array([1])),
                      lrp(Merged(), comp)(merged, x, jnp.array([1])))  # fmt: skip


def _inline_batchnorm(params, x):
    """ConvBN as a plain function, its BatchNorm written out by hand."""
    h = jax.lax.conv_general_dilated(x, params["conv"]["kernel"], (1, 1), "SAME",
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))  # fmt: skip
    h = h + params["conv"]["bias"]
    bn, stats = params["bn"], params["stats"]
    h = (h - stats["mean"]) / jnp.sqrt(stats["var"] + 1e-3) * bn["scale"] + bn["bias"]
    return jax.nn.relu(h).reshape(x.shape[0], -1) @ params["fc"]["kernel"] + params["fc"]["bias"]


def test_batchnorm_written_by_hand_is_merged_too(conv_bn):
    x, v, merged = conv_bn
    params = {**v["params"], "stats": v["batch_stats"]["bn"]}
    np.testing.assert_allclose(np.asarray(_inline_batchnorm(params, x)),
                               np.asarray(ConvBN().apply(v, x)), rtol=1e-5)  # fmt: skip
    for comp in (composites.epsilon_plus(), composites.epsilon_gamma_box(low=-3.0, high=3.0)):
        _assert_close(lrp(_inline_batchnorm, comp)(params, x, jnp.array([1])),
                      lrp(Merged(), comp)(merged, x, jnp.array([1])))  # fmt: skip


class DenseBN(nn.Module):
    @nn.compact
    def __call__(self, x):
        h = nn.BatchNorm(use_running_average=True, name="bn")(nn.Dense(4, name="fc1")(x))
        return nn.Dense(2, name="fc2")(nn.relu(h))


def test_batchnorm_after_a_dense_layer_is_merged(normal_clips, random_variables):
    x = normal_clips((2, 3), 7)
    v = with_positive_batch_stats(random_variables(DenseBN(), x, 8))
    p, s = v["params"], v["batch_stats"]["bn"]
    k = p["bn"]["scale"] / np.sqrt(s["var"] + 1e-5)
    fc1 = {"kernel": p["fc1"]["kernel"] * k,
           "bias": (p["fc1"]["bias"] - s["mean"]) * k + p["bn"]["bias"]}  # fmt: skip

    def by_hand(params, x):
        return (
            jax.nn.relu(x @ params["fc1"]["kernel"] + params["fc1"]["bias"])
            @ params["fc2"]["kernel"]
            + params["fc2"]["bias"]
        )

    comp, t = composites.epsilon(), jnp.array([0, 1])
    _assert_close(lrp(DenseBN(), comp)(v, x, t),
                  lrp(by_hand, comp)({"fc1": fc1, "fc2": p["fc2"]}, x, t))  # fmt: skip


@pytest.mark.parametrize("by", ["layer_map", "path_map"])
def test_gradient_rule_on_merged_layer_uses_merged_weights(conv_bn, by):
    """A conv whose BatchNorm is merged keeps the merge under the plain gradient
    rule: logits and relevance are those of the hand-merged conv."""
    x, v, merged = conv_bn
    if by == "layer_map":
        comp = Composite(((nn.Conv, rules.Gradient()), (nn.Dense, rules.Epsilon())))
    else:
        comp = Composite(((nn.Dense, rules.Epsilon()),), (("conv", rules.Gradient()),))
    logits, _ = relevance_vjp(ConvBN(), comp, v, x)
    np.testing.assert_allclose(np.asarray(logits), np.asarray(ConvBN().apply(v, x)),
                               rtol=1e-5, atol=1e-6)  # fmt: skip
    _assert_close(lrp(ConvBN(), comp)(v, x, jnp.array([1])),
                  lrp(Merged(), comp)(merged, x, jnp.array([1])))  # fmt: skip


class Reuse(nn.Module):
    """The conv output feeds the BatchNorm and, depending on ``reader``, something else."""

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
        elif self.reader == "inline":
            y = y + h
        elif self.reader == "after":
            y = Sum()(y, nn.Conv(3, (1, 1), name="side")(h))
        elif self.reader == "before":
            y = Sum()(y, side)
        elif self.reader == "second_call":
            y = Sum()(y, conv(x))  # the same conv again, without its BatchNorm
        return nn.Dense(2, name="fc")(y.reshape(x.shape[0], -1))


@pytest.mark.parametrize(
    ("reader", "other"),
    [("sum", "'skip'"), ("after", "'side'"), ("before", "'side'"),
     ("inline", "add at .*test_canonizers.py")],
)  # fmt: skip
def test_merged_output_read_elsewhere_is_refused(normal_clips, reader, other):
    """Also an inline reuse (``bn(h) + h``), which the module-interception engine missed."""
    x = normal_clips((1, 3, 3, 2), 6)
    model = Reuse(reader)
    v = with_positive_batch_stats(model.init(jax.random.key(0), x))
    message = f"'bn'.* reads the output of 'conv', which is also read by {other}"
    with pytest.raises(UnsupportedLayerError, match=message):
        lrp(model, composites.epsilon_plus())(v, x, jnp.array([0]))


def test_a_layer_called_twice_is_merged_per_call(normal_clips):
    """Only the call that feeds the BatchNorm gets its merged weights."""

    class Twice(nn.Module):
        merged: bool

        @nn.compact
        def __call__(self, x):
            y = nn.Conv(3, (2, 2), padding="SAME", name="first")(x)
            if not self.merged:
                y = nn.BatchNorm(use_running_average=True, name="bn")(y)
            y = Sum()(y, nn.Conv(3, (2, 2), padding="SAME", name="second")(x))
            return nn.Dense(2, name="fc")(y.reshape(x.shape[0], -1))

    x = normal_clips((1, 3, 3, 2), 6)
    v = with_positive_batch_stats(Reuse("second_call").init(jax.random.key(0), x))
    p, s = v["params"], v["batch_stats"]["bn"]
    k = p["bn"]["scale"] / np.sqrt(s["var"] + 1e-5)
    first = {"kernel": p["conv"]["kernel"] * k,
             "bias": (p["conv"]["bias"] - s["mean"]) * k + p["bn"]["bias"]}  # fmt: skip
    by_hand = {"params": {"first": first, "second": p["conv"], "fc": p["fc"]}}
    comp = composites.epsilon_plus()
    _assert_close(lrp(Reuse("second_call"), comp)(v, x, jnp.array([1])),
                  lrp(Twice(True), comp)(by_hand, x, jnp.array([1])))  # fmt: skip


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
    _assert_close(lrp(ContainerHandsDown(), composites.epsilon_plus())(nested, x, jnp.array([1])),
                  lrp(Merged(), composites.epsilon_plus())(merged, x, jnp.array([1])))  # fmt: skip


class LoneBatchNorm(nn.Module):
    @nn.compact
    def __call__(self, x):
        return nn.Dense(2)(nn.BatchNorm(use_running_average=True, name="bn")(x * 2.0))


class TrainMode(nn.Module):
    @nn.compact
    def __call__(self, x):
        h = nn.Dense(3, name="fc1")(x)
        return nn.Dense(2)(nn.BatchNorm(use_running_average=False, name="bn")(h))


class TimeAxis(nn.Module):
    """A BatchNorm over axis 1: not per output channel."""

    @nn.compact
    def __call__(self, x):
        h = nn.Conv(3, (1, 1), name="conv")(x)
        h = nn.BatchNorm(use_running_average=True, axis=1, name="bn")(h)
        return nn.Dense(2, name="fc")(h.reshape(x.shape[0], -1))


@pytest.mark.parametrize(
    ("model", "shape", "message"),
    [
        (LoneBatchNorm(), (2, 3), "'bn': sub .* is not the output of a conv/dense layer"),
        (TrainMode(), (2, 3), r"changes its variables .* needs it in inference mode"),
        (TimeAxis(), (2, 3, 3, 2), "'bn'.* follows 'conv' but varies along more than its output "
                                   "channels"),
    ],
)  # fmt: skip
def test_batchnorm_errors(normal_clips, model, shape, message):
    x = normal_clips(shape, 16)
    v = model.init(jax.random.key(0), x)
    with pytest.raises(SelrelError, match=message):
        lrp(model, composites.epsilon_plus())(v, x, jnp.array([0, 1]))


# ------------------------------------------- shape operations before the bias


def _per_clip(params, clip):
    """ConvBN for one clip (H, W, C), channels first inside as Equinox writes it:
    conv -> squeeze -> bias (C, 1, 1) -> BatchNorm by hand -> relu -> dense."""
    h = jax.lax.conv_general_dilated(clip.transpose(2, 0, 1)[None], params["w"], (1, 1), "SAME",
                                     dimension_numbers=("NCHW", "OIHW", "NCHW"))  # fmt: skip
    h = jnp.squeeze(h, 0) + params["b"].reshape(-1, 1, 1)
    stats = params["stats"]
    h = (h - stats["mean"][:, None, None]) * jax.lax.rsqrt(stats["var"][:, None, None] + 1e-3)
    h = h * params["scale"][:, None, None] + params["shift"][:, None, None]
    flat = jax.nn.relu(h).transpose(1, 2, 0).reshape(-1)
    return params["fc_w"].T @ flat + params["fc_b"]  # dot_general -> transpose -> add


def _per_clip_params(v):
    p, s = v["params"], v["batch_stats"]["bn"]
    return {"w": p["conv"]["kernel"].transpose(3, 2, 0, 1), "b": p["conv"]["bias"],
            "stats": s, "scale": p["bn"]["scale"], "shift": p["bn"]["bias"],
            "fc_w": p["fc"]["kernel"], "fc_b": p["fc"]["bias"]}  # fmt: skip


@pytest.mark.parametrize("form", ["params", "closure"])
@pytest.mark.parametrize("composite", ["epsilon", "epsilon_plus", "epsilon_gamma_box"])
def test_bias_and_batchnorm_behind_shape_operations_are_merged(conv_bn, form, composite):
    """Per-clip code under vmap (squeeze, transposes, vmap's reshapes and
    broadcasts between each conv/dense op and its bias and BatchNorm) gets the
    relevance of the batched linen model. The bias used to pass through like an
    activation (every map summing to 1 per clip)."""
    x, v, merged = conv_bn
    x = jnp.concatenate([x, -x])
    params = _per_clip_params(v)

    def batched(p, clips):
        return jax.vmap(lambda clip: _per_clip(p, clip))(clips)

    np.testing.assert_allclose(np.asarray(batched(params, x)), np.asarray(ConvBN().apply(v, x)),
                               rtol=1e-5, atol=1e-6)  # fmt: skip
    options = {"low": -3.0, "high": 3.0} if composite == "epsilon_gamma_box" else {}
    comp = getattr(composites, composite)(**options)
    want = lrp(Merged(), comp)(merged, x, jnp.array([1, 0]))
    if form == "params":
        got = lrp(batched, comp)(params, x, jnp.array([1, 0]))
    else:
        got = lrp(lambda clips: batched(params, clips), comp)(None, x, jnp.array([1, 0]))
    _assert_close(got, want)


def test_a_closure_bias_that_cannot_be_merged_is_refused(normal_clips):
    """A closed-over bias added where it cannot be merged is an error, not a Pass."""
    x = normal_clips((2, 3), 3)
    w, b = jnp.ones((3, 3)), jnp.arange(3.0)

    def model(clips):
        h = clips @ w
        return (h + b) + h

    with pytest.raises(UnsupportedLayerError, match=r"adds a closed-over array \(a bias\?\)"):
        lrp(model, composites.epsilon())(None, x, jnp.array([0, 1]))
