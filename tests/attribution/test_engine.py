"""The LRP engine on whole models: conservation, residual sums, unsupported
layers, rule layers without positional inputs, and the layer call a rule sees.
(Canonizer, activations, composites and explain have their own test modules.)"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import selrel_jax as sr
from selrel_jax.attribution import (
    Composite,
    LayerCall,
    Rule,
    UnsupportedLayerError,
    composites,
    lrp,
    rules,
)
from selrel_jax.errors import SelrelError
from selrel_jax.layers import Sum
from tests.attribution.flax_nets import ConvNet, ResNet

# ---------------------------------------------------------------- conservation


@pytest.mark.parametrize("method", ["lrp.epsilon", "lrp.zplus"])
def test_bias_free_relu_net_conserves_relevance(normal_clips, random_variables, method):
    model = ConvNet(bias=False)
    x = normal_clips((2, 4, 6, 6, 2))
    variables = random_variables(model, x, 1)
    options = {"epsilon": 1e-9} if method == "lrp.epsilon" else {"stabilizer": 1e-9}
    rel = sr.explain(model, variables, x, jnp.array([0, 2]), method, **options)
    np.testing.assert_allclose(np.asarray(rel.sum(axis=(1, 2, 3, 4))), [1.0, 1.0], rtol=1e-4)


def test_residual_sum_splits_relevance_instead_of_duplicating(normal_clips, random_variables):
    model = ResNet(batchnorm=False)
    x = normal_clips((1, 3, 5, 5, 2))
    variables = random_variables(model, x, 2)
    rel = sr.explain(model, variables, x, jnp.array([1]), "lrp.epsilon", epsilon=1e-9)
    np.testing.assert_allclose(float(rel.sum()), 1.0, rtol=1e-4)

    # The same net with an inline "x + y": the plain gradient copies relevance to both.
    copied = sr.explain(ResNet(batchnorm=False, inline_add=True), variables, x, jnp.array([1]),
                        "lrp.epsilon", epsilon=1e-9)  # fmt: skip
    assert abs(float(copied.sum()) - 1.0) > 1e-2


def test_unsupported_layer_names_path_and_missing_rule(normal_clips):
    class WithLayerNorm(nn.Module):
        @nn.compact
        def __call__(self, x):
            h = nn.relu(nn.Dense(4, name="fc1")(x))
            h = nn.LayerNorm(name="norm")(h)
            return nn.Dense(2, name="fc2")(h)

    class Custom(nn.Module):
        @nn.compact
        def __call__(self, x):
            return x * self.param("gain", nn.initializers.ones, (x.shape[-1],))

    class WithCustom(nn.Module):
        @nn.compact
        def __call__(self, x):
            return nn.Dense(2)(Custom(name="inner")(x))

    class LoneBatchNorm(nn.Module):
        @nn.compact
        def __call__(self, x):
            return nn.Dense(2)(nn.BatchNorm(use_running_average=True, name="bn")(x * 2.0))

    x = normal_clips((1, 3), 16)
    for model, where in ((WithLayerNorm(), "norm"), (WithCustom(), "inner"),
                         (LoneBatchNorm(), "bn")):  # fmt: skip
        v = model.init(jax.random.key(0), x)
        with pytest.raises(UnsupportedLayerError, match=f"'{where}'") as info:
            lrp(model, composites.epsilon_plus())(v, x, jnp.array([0]))
        assert "rule" in str(info.value) or "merge" in str(info.value)
    # A rule given by type makes the custom layer supported.
    model = WithCustom()
    v = model.init(jax.random.key(0), x)
    comp = Composite(((Custom, rules.Epsilon()), (nn.Dense, rules.Epsilon())))
    assert lrp(model, comp)(v, x, jnp.array([0])).shape == x.shape


RECORDED: list = []


class Recorder(Rule):
    """Epsilon that records the LayerCall it was handed."""

    def relevance(self, call, relevance):
        RECORDED.append(call)
        return rules.Epsilon().relevance(call, relevance)


def test_rules_receive_one_layer_call(normal_clips, random_variables):
    class Net(nn.Module):
        @nn.compact
        def __call__(self, x):
            h = nn.relu(nn.Dense(4, name="fc1")(x))
            return nn.Dense(2, name="fc2")(h)

    x = normal_clips((2, 3), 30)
    model = Net()
    v = random_variables(model, x, 31)
    RECORDED.clear()
    got = lrp(model, Composite(((nn.Dense, Recorder()),)))(v, x, jnp.array([0, 1]))
    want = lrp(model, composites.epsilon())(v, x, jnp.array([0, 1]))
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-6)
    fc2, fc1 = RECORDED  # backward order
    assert all(isinstance(c, LayerCall) for c in (fc1, fc2))
    assert fc2.nonnegative and not fc1.nonnegative  # fc2 reads a ReLU output
    np.testing.assert_allclose(np.asarray(fc1.inputs[0]), np.asarray(x))
    h = jax.nn.relu(x @ v["params"]["fc1"]["kernel"] + v["params"]["fc1"]["bias"])
    np.testing.assert_allclose(np.asarray(fc2.inputs[0]), np.asarray(h), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(fc2.fn(fc2.inputs, fc2.params)),
                               np.asarray(fc2.output), rtol=1e-6)  # fmt: skip
    assert set(fc1.params) == {"kernel", "bias"} and dict(fc1.arrays) == {}


def test_module_without_positional_inputs_is_refused(normal_clips, random_variables):
    class KeywordOnly(nn.Module):
        @nn.compact
        def __call__(self, x):
            return nn.Dense(2, name="fc")(inputs=x)

    x = normal_clips((1, 3), 32)
    v = random_variables(KeywordOnly(), x, 33)
    with pytest.raises(SelrelError, match="'fc' was called without positional inputs"):
        lrp(KeywordOnly(), composites.epsilon())(v, x, jnp.array([0]))


# ---------------------------------------------------------------- properties

from hypothesis import assume, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


class BiasFreeMlp(nn.Module):
    @nn.compact
    def __call__(self, x):
        h = nn.relu(nn.Dense(8, use_bias=False)(x.reshape(x.shape[0], -1)))
        h = Sum()(nn.relu(nn.Dense(8, use_bias=False)(h)), h)
        return nn.Dense(4, use_bias=False)(h)


@settings(max_examples=8, deadline=None)
@given(seed=st.integers(0, 2**16), target=st.integers(0, 3),
       method=st.sampled_from(["lrp.epsilon", "lrp.zplus"]))  # fmt: skip
def test_conservation_property_bias_free_nets(normal_clips, random_variables, seed, target, method):
    model = BiasFreeMlp()
    x = normal_clips((1, 2, 2, 2, 2), seed)
    v = random_variables(model, x, seed + 1)
    # Relevance is conserved where the top layer's denominator is not ~0 (hidden
    # units with a zero denominator are dead ReLUs and receive no relevance).
    logits, state = model.apply(v, x, capture_intermediates=True, mutable=["intermediates"])
    hidden = state["intermediates"]["Sum_0"]["__call__"][0][0]
    top = v["params"]["Dense_2"]["kernel"][:, target]
    denominator = logits[0, target] if method == "lrp.epsilon" else hidden @ jnp.maximum(top, 0)
    assume(abs(float(denominator)) > 1e-3)
    fn = _conserving_explainer(method)
    rel = fn(v, x, jnp.array([target]))
    np.testing.assert_allclose(float(rel.sum()), 1.0, rtol=1e-4)


_EXPLAINERS: dict = {}


def _conserving_explainer(method):
    if method not in _EXPLAINERS:
        option = {"epsilon": 1e-9} if method == "lrp.epsilon" else {"stabilizer": 1e-9}
        _EXPLAINERS[method] = jax.jit(sr.make_explainer(BiasFreeMlp(), method, **option))
    return _EXPLAINERS[method]
