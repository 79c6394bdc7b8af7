"""Every front end of the LRP engine (private module ``_frontends``): Flax NNX
ports of zoo models equal the linen models, plain ``apply_fn(params, clips)``
and ``apply_fn(clips)`` equal them too, NNX explainers stay pure, and layers
are addressed by the path of the parameter they consume (or, for linen, of the
module that computes them) and by the NNX module type."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import selrel_jax as sr
from selrel_jax.attribution import Composite, lrp, rules
from selrel_jax.attribution._frontends import _leaf_paths
from selrel_jax.layers import Sum
from tests.attribution import nnx_nets
from tests.attribution.engine_reference import COMPOSITES, TARGET, key, load_reference, zoo_case
from tests.attribution.flax_nets import ResNet


@pytest.fixture(scope="module")
def reference():
    return load_reference()


def _assert_equal(got, want, tolerance=1e-5):
    got, want = np.asarray(got), np.asarray(want)
    np.testing.assert_allclose(got, want, atol=tolerance * np.abs(want).max(), rtol=0)


PORTS = {"c3d_small": (nnx_nets.C3DSmall, 0.25), "r3d_18": (nnx_nets.R3D18, 1 / 16)}


@pytest.mark.parametrize("arch", list(PORTS))
def test_nnx_ports_equal_the_linen_models(reference, arch):
    """NNX code with inline residuals, jnp.mean pooling and merged nnx.BatchNorm:
    the relevance of the linen model (the reference maps test_zoo checks)."""
    model, variables, clips = zoo_case(arch)
    cls, width = PORTS[arch]
    net = nnx_nets.load_linen(cls(5, width, rngs=nnx.Rngs(0)), variables)
    _assert_equal(net(clips), model.apply(variables, clips), 1e-6)
    for method in ("lrp.epsilon_plus_flat", "lrp.epsilon_gamma_box", "lrp.epsilon_alpha2_beta1"):
        got = sr.explain(net, None, clips, TARGET, method, **COMPOSITES[method])
        _assert_equal(got, reference[key(arch, method)])


def test_plain_apply_functions_equal_the_linen_model(reference):
    model, variables, clips = zoo_case("c3d_small")
    want = reference[key("c3d_small", "lrp.epsilon_plus_flat")]
    _assert_equal(sr.explain(model.apply, variables, clips, TARGET), want)  # apply_fn(params, x)
    closure = jax.jit(sr.make_explainer(lambda x: model.apply(variables, x)))
    _assert_equal(closure(None, clips, TARGET), want)  # apply_fn(x): parameters closed over


class Small(nnx.Module):
    def __init__(self, rngs: nnx.Rngs) -> None:
        self.conv = nnx.Conv(2, 4, (1, 3, 3), rngs=rngs)
        self.fc = nnx.Linear(4, 3, rngs=rngs)

    def __call__(self, x):
        return self.fc(jnp.mean(jax.nn.relu(self.conv(x)), axis=(1, 2, 3)))


def test_nnx_explainers_are_pure_and_explain_sees_updated_weights(normal_clips):
    net = Small(nnx.Rngs(0))
    x = normal_clips((2, 2, 4, 4, 2), 3)
    t = jnp.array([0, 2])
    fn = jax.jit(sr.make_explainer(net, "lrp.epsilon_plus"))
    before = np.asarray(fn(None, x, t))  # the state at make_explainer time
    _assert_equal(sr.explain(net, None, x, t, "lrp.epsilon_plus"), before)
    net.conv.kernel.value = jnp.flip(net.conv.kernel.value, axis=-2)  # swap input channels
    _assert_equal(fn(None, x, t), before)  # the function did not change with the module
    after = np.asarray(fn(nnx.state(net), x, t))  # ... until given the new state
    assert np.abs(after - before).max() > 1e-3 * np.abs(before).max()
    _assert_equal(sr.explain(net, None, x, t, "lrp.epsilon_plus"), after)  # explain: no stale cache


def test_nnx_layers_by_path_and_by_module_type(normal_clips):
    net = Small(nnx.Rngs(1))
    x = normal_clips((1, 2, 4, 4, 2), 4)
    t = jnp.array([1])
    want = lrp(net, Composite(((nn.Conv, rules.Gamma(0.5)), (nn.Dense, rules.Epsilon()))))
    by_path = lrp(net, Composite(path_map=(("conv", rules.Gamma(0.5)), ("fc", rules.Epsilon()))))
    by_type = lrp(net, Composite(((nnx.Conv, rules.Gamma(0.5)), (nnx.Linear, rules.Epsilon()))))
    other = lrp(net, Composite(path_map=(("conv", rules.ZPlus()), ("fc", rules.Epsilon()))))
    reference = np.asarray(want(None, x, t))
    _assert_equal(by_path(None, x, t), reference, 1e-6)
    _assert_equal(by_type(None, x, t), reference, 1e-6)
    assert np.abs(np.asarray(other(None, x, t)) - reference).max() > 1e-4 * np.abs(reference).max()


def test_linen_parameter_free_layers_have_their_module_path(normal_clips, random_variables):
    """A pattern selects the Sum module at 'sum' (it has no parameter to name it)."""
    model = ResNet(batchnorm=False)
    x = normal_clips((1, 2, 4, 4, 2), 5)
    v = random_variables(model, x, 6)
    layers = ((nn.Conv, rules.Epsilon()), (nn.Dense, rules.Epsilon()))
    by_path = lrp(model, Composite(layers, (("sum", rules.Gradient()),)))(v, x, jnp.array([0]))
    by_type = lrp(model, Composite(((Sum, rules.Gradient()), *layers)))(v, x, jnp.array([0]))
    norm = lrp(model, Composite(layers))(v, x, jnp.array([0]))
    _assert_equal(by_path, by_type, 1e-6)
    assert np.abs(np.asarray(by_path - norm)).max() > 1e-4 * float(jnp.abs(norm).max())


def test_leaf_paths_name_the_layer_of_each_parameter():
    linen = {"params": {"conv1": {"kernel": 0, "bias": 1}}, "batch_stats": {"bn": {"mean": 2}}}
    assert _leaf_paths(linen) == ((("bn",), ("conv1",), ("conv1",)), ("mean", "bias", "kernel"))
    state = nnx.state(Small(nnx.Rngs(0)))
    paths, names = _leaf_paths(state)
    found = set(zip(paths, names, strict=True))
    assert found == {(("conv",), "bias"), (("conv",), "kernel"), (("fc",), "bias"),
                     (("fc",), "kernel")}  # fmt: skip
    assert _leaf_paths({"layers": [{"w": 0}], "b": 1}) == (((), ("layers", "0")), ("b", "w"))


def test_penzai_parameters_are_named_by_their_labels():
    """Penzai's unbound parameters (a tuple of ParameterValues) are named by label,
    so path patterns reach them; they used to all be '<root>'."""
    import penzai.nn as pnn
    from penzai import pz

    layer = pnn.linear_and_affine.Affine.from_config(
        name="fc", init_base_rng=jax.random.key(0), input_axes={"c": 3}, output_axes={"o": 2}
    )
    _, params = pz.unbind_params(layer, freeze=True)
    assert set(zip(*_leaf_paths(params), strict=True)) == {
        (("fc",), "Linear.weights"), (("fc",), "AddBias.bias")
    }  # fmt: skip
    assert _leaf_paths([pz.ParameterValue(label="conv1.kernel", value=jnp.ones(2))]) == (
        (("conv1",),), ("kernel",)
    )  # fmt: skip
