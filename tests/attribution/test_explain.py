"""explain / make_explainer: errors on bad input, and the same relevance under
jit, vmap, batching, sharding and the default target."""

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
from selrel_jax.attribution.explain import default_precision
from selrel_jax.errors import SelrelError
from tests.attribution.flax_nets import ConvNet, ResNet, with_positive_batch_stats

# ---------------------------------------------------------------- errors


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
        ({"method": "lrp.zplus", "epsilon": 0.1}, r"'lrp.zplus'; valid: stabilizer=1e-06"),
        ({"method": "smoothgrad", "samples": 0}, "samples must be a positive int"),
        ({"method": "smoothgrad", "noise_level": -0.1}, "noise_level must be a finite number"),
        ({"method": "smoothgrad", "key": 1.5}, "smoothgrad key must be a JAX PRNG key"),
        ({"method": "integrated_gradients", "steps": True}, "steps must be a positive int"),
        ({"method": "integrated_gradients", "chunk_size": 0}, "chunk_size must be a positive"),
        ({"method": "lrp.epsilon", "epsilon": -1e-3}, "Epsilon epsilon must be a finite number"),
    ],
)
def test_explain_rejects_bad_input(normal_clips, random_variables, kwargs, message):
    model = ConvNet()
    x = normal_clips((1, 2, 4, 4, 2))
    v = random_variables(model, x, 0)
    with pytest.raises(SelrelError, match=message):
        sr.explain(model, v, x, **kwargs)


def test_explain_rejects_wrong_rank_and_a_linen_model_without_variables(
    normal_clips, random_variables
):
    model = ConvNet()
    x = normal_clips((1, 2, 4, 4, 2))
    v = random_variables(model, x, 0)
    with pytest.raises(SelrelError, match=r"\(N, T, H, W, C\)"):
        sr.explain(model, v, x[0])
    for method in ("lrp.epsilon_plus", "gradient"):
        with pytest.raises(SelrelError, match="Flax linen model ConvNet needs its variables"):
            sr.explain(model, None, x, method=method)
    with pytest.raises(SelrelError, match="a callable apply_fn"):
        sr.explain(3, v, x)


def test_every_method_takes_plain_callables_with_or_without_params(normal_clips, random_variables):
    """LRP too (the module-interception engine needed a linen model)."""
    model = ConvNet()
    x = normal_clips((1, 2, 4, 4, 2))
    v = random_variables(model, x, 0)
    for method in ("lrp.epsilon_plus", "gradient_x_input"):
        want = np.asarray(sr.explain(model, v, x, None, method))
        with_params = sr.explain(model.apply, v, x, None, method)  # apply_fn(params, clips)
        closure = sr.explain(lambda c: model.apply(v, c), None, x, None, method)
        for got in (with_params, closure):
            np.testing.assert_allclose(np.asarray(got), want, atol=1e-6 * np.abs(want).max())


def test_a_composite_is_a_method_and_the_api_is_at_the_top_level(normal_clips, random_variables):
    """explain and make_explainer take a Composite; lrp, register_composite and
    Composite are importable from selrel_jax."""
    model = ConvNet()
    x = normal_clips((2, 2, 4, 4, 2))
    v = random_variables(model, x, 0)
    t = jnp.array([0, 1])
    mine = sr.Composite(layer_map=((nn.Conv, sr.ZPlus()), (nn.Dense, sr.Epsilon(0.1))))
    want = np.asarray(jax.jit(sr.lrp(model, mine))(v, x, t))
    for got in (sr.explain(model, v, x, t, mine), sr.make_explainer(model, mine)(v, x, t),
                sr.explain(lambda c: model.apply(v, c), None, x, t, method=mine)):  # fmt: skip
        np.testing.assert_allclose(np.asarray(got), want, atol=1e-6 * np.abs(want).max())
    assert default_precision(mine) == "highest"
    assert callable(sr.register_composite("top_level_check"))
    with pytest.raises(SelrelError, match="a Composite carries its rules' settings"):
        sr.explain(model, v, x, t, mine, epsilon=0.1)


@pytest.mark.parametrize("dtype", ["float64", "bfloat16", "float16"])
@pytest.mark.parametrize("method", ["lrp.epsilon_plus_flat", "gradient"])
def test_relevance_comes_back_in_the_clips_dtype(normal_clips, random_variables, dtype, method):
    """float64 stays float64 (with jax_enable_x64); bfloat16 and float16 clips into a
    model of that dtype give a map of that dtype, close to the float32 map (the
    rules' divisions run in the low precision: cosine > 0.99 here, not 1e-6)."""
    model = ConvNet()
    x32 = normal_clips((2, 2, 4, 4, 2))
    v32 = random_variables(model, x32, 0)
    t = jnp.array([0, 1])
    want = np.asarray(sr.explain(model, v32, x32, t, method), np.float64)
    with jax.enable_x64(dtype == "float64"):
        cast = jax.tree.map(lambda a: jnp.asarray(a, dtype), (v32, x32))
        got = sr.explain(model, *cast, t, method)
        assert got.dtype == jnp.dtype(dtype)
    got = np.asarray(got, np.float64).ravel()
    cosine = got @ want.ravel() / (np.linalg.norm(got) * np.linalg.norm(want))
    assert cosine > (1 - 1e-6 if dtype == "float64" else 0.99)


def test_a_whole_equinox_module_as_params_is_one_clear_error(normal_clips):
    eqx = pytest.importorskip("equinox")
    net = eqx.nn.MLP(2, 3, 4, 1, key=jax.random.key(0))
    x = normal_clips((2, 2, 4, 4, 2))

    def apply_fn(module, clips):
        return jax.vmap(module)(jnp.mean(clips, axis=(1, 2, 3)))

    for method in ("lrp.epsilon", "gradient"):
        with pytest.raises(SelrelError, match=r"a whole Equinox module\?\): split it with "
                                              r"`params, static = eqx.partition"):  # fmt: skip
            sr.explain(apply_fn, net, x, None, method)
    params, static = eqx.partition(net, eqx.is_array)
    combined = sr.explain(lambda p, c: apply_fn(eqx.combine(p, static), c), params, x)
    assert combined.shape == x.shape


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
    from tests.attribution.flax_nets import ResNet, with_positive_batch_stats
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


# ---------------------------------------------------------------- precision


def _precisions(fn, *args) -> set:
    """The precision of every convolution and matmul in the traced ``fn``."""
    found = set()

    def walk(jaxpr):
        for eqn in jaxpr.eqns:
            if eqn.primitive.name in ("conv_general_dilated", "dot_general"):
                found.add(eqn.params["precision"])
            for value in eqn.params.values():
                inner = getattr(value, "jaxpr", value)
                if hasattr(inner, "eqns"):
                    walk(inner)

    walk(jax.make_jaxpr(fn)(*args).jaxpr)
    return found


HIGHEST = (jax.lax.Precision.HIGHEST, jax.lax.Precision.HIGHEST)
DEFAULT = (jax.lax.Precision.DEFAULT, jax.lax.Precision.DEFAULT)


@pytest.mark.parametrize(
    ("method", "precision", "want"),
    [
        ("lrp.epsilon_plus_flat", "auto", {HIGHEST}),
        ("lrp.epsilon_plus_flat", "default", {DEFAULT}),
        ("gradient", "auto", {None}),
        ("gradient", "highest", {HIGHEST}),
    ],
)
def test_precision_reaches_every_conv_and_matmul(
    normal_clips, random_variables, method, precision, want
):
    """The forward passes, the rules' passes and the convolutions' derivatives all
    run at the asked precision ("auto": highest for LRP, JAX's default else)."""
    model = ConvNet()
    x = normal_clips((1, 2, 4, 4, 2))
    v = random_variables(model, x, 0)
    explainer = sr.make_explainer(model, method, precision=precision)
    assert _precisions(explainer, v, x, jnp.array([1])) == want
    assert default_precision(method) == ("highest" if method.startswith("lrp.") else None)


def test_precision_option_is_checked_and_changes_nothing_on_cpu(normal_clips, random_variables):
    model = ConvNet()
    x = normal_clips((1, 2, 4, 4, 2))
    v = random_variables(model, x, 0)
    with pytest.raises(SelrelError, match="precision must be one of auto, default"):
        sr.explain(model, v, x, precision="fast")
    with pytest.raises(SelrelError, match="precision must be one of"):
        sr.make_explainer(model, "gradient", precision=None)
    high = sr.explain(model, v, x, precision="highest")
    low = sr.explain(model, v, x, precision="default")
    np.testing.assert_allclose(low, high, rtol=1e-6, atol=1e-7)
