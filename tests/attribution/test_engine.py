"""The LRP engine on whole models: conservation, canonization, activations as
Pass, composites, errors, and jit / vmap / batching / sharding invariance."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import selrel_jax as sr
from selrel_jax.attribution import Composite, UnsupportedLayerError, composites, lrp, rules
from selrel_jax.attribution.engine import relevance_vjp
from selrel_jax.errors import SelrelError
from selrel_jax.layers import AvgPool, GlobalAvgPool, MaxPool, Sum

LRP_METHODS = [
    "lrp.epsilon",
    "lrp.zplus",
    "lrp.epsilon_plus",
    "lrp.epsilon_plus_flat",
    "lrp.epsilon_alpha2_beta1",
    "lrp.epsilon_alpha2_beta1_flat",
]


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
    inline_add: bool = False  # "x + y" instead of Sum: invisible to the engine

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


def test_batchnorm_merging_keeps_logits_and_relevance_is_finite(normal_clips, random_variables):
    model = ResNet(batchnorm=True)
    x = normal_clips((2, 3, 5, 5, 2))
    variables = with_positive_batch_stats(random_variables(model, x, 3))
    logits, pull = relevance_vjp(model, composites.epsilon_plus(), variables, x)
    np.testing.assert_allclose(np.asarray(logits), np.asarray(model.apply(variables, x)),
                               atol=1e-5, rtol=1e-5)  # fmt: skip
    rel = pull(jax.nn.one_hot(jnp.array([0, 1]), 3))
    assert rel.shape == x.shape and bool(jnp.all(jnp.isfinite(rel)))


def test_batchnorm_merge_equals_hand_merged_conv(normal_clips, random_variables):
    """LRP of conv+BN equals LRP of one conv holding the spec's merged weights."""

    class ConvBN(nn.Module):
        @nn.compact
        def __call__(self, x):
            h = nn.Conv(3, (2, 2), use_bias=True, name="conv")(x)
            h = nn.BatchNorm(use_running_average=True, epsilon=1e-3, name="bn")(h)
            return nn.Dense(2, name="fc")(nn.relu(h).reshape(x.shape[0], -1))

    class Merged(nn.Module):
        @nn.compact
        def __call__(self, x):
            h = nn.Conv(3, (2, 2), name="conv")(x)
            return nn.Dense(2, name="fc")(nn.relu(h).reshape(x.shape[0], -1))

    x = normal_clips((1, 3, 3, 2), 5)
    v = with_positive_batch_stats(random_variables(ConvBN(), x, 4))
    p, s = v["params"], v["batch_stats"]["bn"]
    k = p["bn"]["scale"] / np.sqrt(s["var"] + 1e-3)
    merged = {"params": {
        "conv": {"kernel": p["conv"]["kernel"] * k,
                 "bias": (p["conv"]["bias"] - s["mean"]) * k + p["bn"]["bias"]},
        "fc": p["fc"],
    }}  # fmt: skip
    for comp in (composites.epsilon_plus(), composites.epsilon_alpha2_beta1()):
        a = lrp(ConvBN(), comp)(v, x, jnp.array([1]))
        b = lrp(Merged(), comp)(merged, x, jnp.array([1]))
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5 * float(abs(b).max()))


# ---------------------------------------------------------------- activations = Pass


class Mlp(nn.Module):
    activation: str = "relu"
    visible: bool = True  # False: the activation is hidden from the engine (jnp call)

    @nn.compact
    def __call__(self, x):
        h = nn.Dense(6, name="fc1")(x)
        if self.visible:
            h = getattr(nn, self.activation)(h)
        else:
            h = jnp.maximum(h, 0) if self.activation == "relu" else jnp.tanh(h)
        return nn.Dense(3, name="fc2")(h)


def _stab(z):
    return z + 1e-6 * np.where(z >= 0, 1.0, -1.0)


def test_activation_passes_relevance_where_relu_input_was_negative(normal_clips, random_variables):
    """Flat on the top layer hands relevance to dead ReLU units; Pass must keep it
    (plain autodiff would multiply it by relu'(z) = 0)."""
    x = normal_clips((1, 5), 6)
    model = Mlp("relu")
    v = random_variables(model, x, 7)
    comp = Composite(path_map=(("fc2", rules.Flat()), ("fc1", rules.Epsilon(1e-6))))
    rel = np.asarray(lrp(model, comp)(v, x, jnp.array([2])))[0]
    W1, b1 = np.asarray(v["params"]["fc1"]["kernel"]), np.asarray(v["params"]["fc1"]["bias"])
    a = np.asarray(x[0], np.float64)
    z1 = a @ W1 + b1
    assert (z1 < 0).any() and (z1 > 0).any()
    R2 = np.zeros(3)
    R2[2] = 1.0
    R1 = np.ones((6, 3)) @ (R2 / _stab(np.full(3, 6.0)))  # Flat: 1/6 to every hidden unit
    want = a * (W1 @ (R1 / _stab(z1)))  # Pass through the ReLU, then Epsilon
    np.testing.assert_allclose(rel, want, atol=1e-5 * np.abs(want).max())
    masked = a * (W1 @ (R1 * (z1 > 0) / _stab(z1)))
    assert np.abs(masked - want).max() > 1e-3 * np.abs(want).max()


def test_tanh_passes_relevance_unchanged(normal_clips, random_variables):
    x = normal_clips((1, 5), 8)
    model = Mlp("tanh")
    v = random_variables(model, x, 9)
    rel = np.asarray(
        lrp(model, composites.uniform(rules.Epsilon(), rules.Epsilon()))(v, x, jnp.array([0]))
    )[0]
    p = jax.tree.map(lambda t: np.asarray(t, np.float64), v["params"])
    a = np.asarray(x[0], np.float64)
    z1 = a @ p["fc1"]["kernel"] + p["fc1"]["bias"]
    h = np.tanh(z1)
    z2 = h @ p["fc2"]["kernel"] + p["fc2"]["bias"]
    R1 = h * (p["fc2"]["kernel"] @ (np.eye(3)[0] / _stab(z2)))
    want = a * (p["fc1"]["kernel"] @ (R1 / _stab(z1)))
    np.testing.assert_allclose(rel, want, atol=1e-5 * np.abs(want).max())
    # Afterwards the activation functions are the originals again.
    assert nn.tanh is jnp.tanh and nn.relu is jax.nn.relu


def _count(jaxpr, name):
    total = 0
    for eqn in jaxpr.eqns:
        total += eqn.primitive.name == name
        for sub in jax.core.subjaxprs(eqn.jaxpr) if hasattr(jax.core, "subjaxprs") else ():
            total += _count(sub, name)
        for param in eqn.params.values():
            inner = getattr(param, "jaxpr", None)
            if inner is not None and hasattr(inner, "eqns"):
                total += _count(inner, name)
            elif hasattr(param, "eqns"):
                total += _count(param, name)
    return total


def test_negative_passes_are_skipped_after_relu(normal_clips, random_variables):
    class Net(nn.Module):
        visible: bool

        @nn.compact
        def __call__(self, x):
            h = nn.Conv(4, (3, 3), padding=1, name="c1")(x)
            h = nn.relu(h) if self.visible else jnp.maximum(h, 0)
            h = nn.Conv(4, (3, 3), padding=1, name="c2")(h)
            return nn.Dense(2, name="fc")(h.reshape(x.shape[0], -1))

    x = normal_clips((1, 4, 4, 2), 10)
    v = random_variables(Net(True), x, 11)
    comp = composites.uniform(rules.Gamma(0.25), rules.Epsilon())
    fns = [jax.jit(lrp(Net(flag), comp)) for flag in (True, False)]
    a, b = (np.asarray(f(v, x, jnp.array([1]))) for f in fns)
    np.testing.assert_allclose(a, b, atol=1e-5 * np.abs(b).max())
    convs = [
        _count(jax.make_jaxpr(lrp(Net(flag), comp))(v, x, jnp.array([1])).jaxpr,
               "conv_general_dilated")
        for flag in (True, False)
    ]  # fmt: skip
    assert convs[0] < convs[1], convs


# ---------------------------------------------------------------- composites


def test_path_map_and_first_layer_rules(normal_clips, random_variables):
    model = ConvNet()
    x = normal_clips((1, 4, 6, 6, 2), 12)
    v = random_variables(model, x, 13)
    t = jnp.array([1])
    by_first = lrp(model, composites.epsilon_plus_flat())(v, x, t)
    by_path = lrp(model, Composite(
        layer_map=((nn.Conv, rules.ZPlus()), (nn.Dense, rules.Epsilon())),
        path_map=(("conv1", rules.Flat()),),
    ))(v, x, t)  # fmt: skip
    np.testing.assert_allclose(np.asarray(by_first), np.asarray(by_path), rtol=1e-6, atol=1e-9)
    # Swapping which rule comes from the path map and which from the type map.
    a = lrp(model, Composite(((nn.Conv, rules.ZPlus()), (nn.Dense, rules.Epsilon())),
                             (("conv2", rules.Epsilon()),)))(v, x, t)  # fmt: skip
    b = lrp(model, Composite(((nn.Conv, rules.Epsilon()), (nn.Dense, rules.Epsilon())),
                             (("conv[13]", rules.ZPlus()),)))(v, x, t)  # fmt: skip
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-9)
    assert np.abs(np.asarray(a) - np.asarray(by_path)).max() > 1e-6


def test_epsilon_gamma_box_uses_bounds(normal_clips, random_variables):
    model = ConvNet()
    x = jnp.clip(normal_clips((1, 4, 6, 6, 2), 14), -1.0, 1.0)
    v = random_variables(model, x, 15)
    a = sr.explain(model, v, x, jnp.array([0]), "lrp.epsilon_gamma_box", low=-1.0, high=1.0)
    b = sr.explain(model, v, x, jnp.array([0]), "lrp.epsilon_gamma_box",
                   low=jnp.array([-1.0, -1.0]), high=jnp.ones(x.shape[1:]))  # fmt: skip
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-8)
    c = sr.explain(model, v, x, jnp.array([0]), "lrp.epsilon_gamma_box", low=-3.0, high=3.0)
    assert np.abs(np.asarray(c) - np.asarray(a)).max() > 1e-6
    with pytest.raises(SelrelError, match="low= and high="):
        sr.explain(model, v, x, jnp.array([0]), "lrp.epsilon_gamma_box")


# ---------------------------------------------------------------- errors


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


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"method": "lrp.nope"}, "unknown method"),
        ({"method": "lrp.epsilon", "gamma": 0.3}, "unknown option"),
        ({"method": "gradient", "epsilon": 0.3}, "unknown option"),
        ({"target": jnp.array([5])}, "out of range"),
        ({"target": jnp.array([-1])}, "out of range"),
        ({"target": jnp.array([0, 1])}, "shape"),
        ({"target": jnp.array([0.5])}, "int"),
        ({"method": "lrp.epsilon_alpha2_beta1", "alpha": 3.0, "beta": 1.0}, "alpha - beta"),
    ],
)
def test_explain_rejects_bad_input(normal_clips, random_variables, kwargs, message):
    model = ConvNet()
    x = normal_clips((1, 2, 4, 4, 2))
    v = random_variables(model, x, 0)
    with pytest.raises(SelrelError, match=message):
        sr.explain(model, v, x, **kwargs)


def test_explain_rejects_wrong_rank_and_plain_callable_for_lrp(normal_clips, random_variables):
    model = ConvNet()
    x = normal_clips((1, 2, 4, 4, 2))
    v = random_variables(model, x, 0)
    with pytest.raises(SelrelError, match=r"\(N, T, H, W, C\)"):
        sr.explain(model, v, x[0])
    with pytest.raises(SelrelError, match="Flax linen model"):
        sr.explain(lambda c: model.apply(v, c), None, x, method="lrp.epsilon_plus")


# ---------------------------------------------------------------- transformations


@pytest.fixture(scope="module")
def small_problem(normal_clips, random_variables):
    model = ResNet(batchnorm=True)
    x = normal_clips((3, 2, 4, 4, 2), 17)
    v = with_positive_batch_stats(random_variables(model, x, 18))
    return model, v, x, jnp.array([0, 2, 1])


def test_jit_equals_eager_and_batch_equals_single_calls(small_problem):
    model, v, x, t = small_problem
    for method in ("lrp.epsilon_plus_flat", "lrp.epsilon_alpha2_beta1"):
        fn = sr.make_explainer(model, method)
        eager = np.asarray(fn(v, x, t))
        jitted = np.asarray(sr.explain(model, v, x, t, method))
        scale = np.abs(eager).max()
        np.testing.assert_allclose(jitted, eager, atol=1e-5 * scale)
        single = jax.jit(fn)
        singles = np.concatenate([np.asarray(single(v, x[i : i + 1], t[i : i + 1]))
                                  for i in range(3)])  # fmt: skip
        np.testing.assert_allclose(singles, eager, atol=1e-5 * scale)


def test_vmap_equals_loop(small_problem):
    model, v, x, t = small_problem
    fn = sr.make_explainer(model, "lrp.epsilon_plus")
    xs = jnp.stack([x[:2], x[1:]])
    ts = jnp.stack([t[:2], t[1:]])
    mapped = np.asarray(jax.jit(jax.vmap(fn, in_axes=(None, 0, 0)))(v, xs, ts))
    loop = np.stack([np.asarray(fn(v, xs[i], ts[i])) for i in range(2)])
    np.testing.assert_allclose(mapped, loop, atol=1e-5 * np.abs(loop).max())


def test_predicted_class_is_default_target(small_problem):
    model, v, x, _ = small_problem
    predicted = jnp.argmax(model.apply(v, x), axis=-1)
    a = sr.explain(model, v, x, None, "lrp.epsilon_plus")
    b = sr.explain(model, v, x, predicted, "lrp.epsilon_plus")
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-9)


SHARDING_SCRIPT = textwrap.dedent(
    """
    import jax, jax.numpy as jnp, numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    import selrel_jax as sr
    from tests.conftest import _normal_clips as normal_clips, _signed_variables as random_variables
    from tests.attribution.test_engine import ResNet, with_positive_batch_stats
    assert jax.device_count() == 2
    model = ResNet(batchnorm=True)
    x = normal_clips((4, 2, 4, 4, 2), 19)
    v = with_positive_batch_stats(random_variables(model, x, 20))
    t = jnp.array([0, 1, 2, 0])
    fn = jax.jit(sr.make_explainer(model, "lrp.epsilon_plus_flat"))
    want = np.asarray(fn(v, x, t))
    mesh = Mesh(np.array(jax.devices()), ("batch",))
    xs = jax.device_put(x, NamedSharding(mesh, P("batch")))
    ts = jax.device_put(t, NamedSharding(mesh, P("batch")))
    got = fn(v, xs, ts)
    assert len(got.sharding.device_set) == 2, got.sharding
    np.testing.assert_allclose(np.asarray(got), want, atol=1e-5 * np.abs(want).max())
    print("OK")
    """
)


def test_sharded_batch_equals_unsharded():
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2",
           "JAX_PLATFORMS": "cpu"}  # fmt: skip
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    out = subprocess.run([sys.executable, "-c", SHARDING_SCRIPT], env=env, cwd=root,
                         capture_output=True, text=True, timeout=300)  # fmt: skip
    assert out.returncode == 0 and "OK" in out.stdout, out.stderr[-3000:]


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
