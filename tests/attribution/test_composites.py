"""Composites: path map, first layer (typed), type map, the shared base map,
and the named composites' rule choices."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import selrel_jax as sr
from selrel_jax.attribution import Composite, composites, lrp, rules
from selrel_jax.errors import OptionError, SelrelError, ShapeError
from selrel_jax.layers import AvgPool, GlobalAvgPool, MaxPool, Sum
from tests.attribution.flax_nets import ConvNet


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


def test_dtd_is_zbox_first_then_zplus_on_conv_and_dense():
    comp = composites.dtd(low=-2.0, high=2.0, stabilizer=1e-4)
    assert comp.rule_for(nn.Conv, "conv1", first=True, leaf=True) == rules.ZBox(-2.0, 2.0, 1e-4)
    assert comp.rule_for(nn.Dense, "fc", first=True, leaf=True) == rules.ZBox(-2.0, 2.0, 1e-4)
    for layer in (nn.Conv, nn.Dense):
        assert comp.rule_for(layer, "x", first=False, leaf=True) == rules.ZPlus(1e-4)
    assert isinstance(comp.rule_for(Sum, "sum", first=False, leaf=True), rules.Norm)


BAD_BOUNDS = [
    (1.0, -1.0, OptionError, r"ZBox needs low <= high everywhere; 1 value\(s\) of low are above"),
    (np.array([0.0, 2.0]), 1.0, OptionError, r"1 value\(s\) of low are above high"),
    (np.nan, 1.0, OptionError, r"ZBox low holds 1 non-finite values \(1 NaN"),
    (-1.0, np.inf, OptionError, r"ZBox high holds 1 non-finite values \(0 NaN, 1 infinite\)"),
    (np.zeros(5), 1.0, ShapeError,
     r"ZBox low of shape \(5,\) and high of shape \(\) must broadcast to the first layer's "
     r"input \(1, 4, 6, 6, 2\)"),
    (np.zeros(2), np.ones(3), ShapeError,
     r"ZBox low of shape \(2,\) and high of shape \(3,\) do not broadcast together"),
]  # fmt: skip


@pytest.mark.parametrize(("low", "high", "error", "message"), BAD_BOUNDS)
def test_epsilon_gamma_box_bounds_out_of_order_nan_or_unbroadcastable_raise(
    normal_clips, random_variables, low, high, error, message
):
    model = ConvNet()
    x = normal_clips((1, 4, 6, 6, 2), 16)
    v = random_variables(model, x, 17)
    with pytest.raises(error, match=message) as info:
        sr.explain(model, v, x, jnp.array([0]), "lrp.epsilon_gamma_box", low=low, high=high)
    assert "\n" not in str(info.value)


def test_traced_zbox_bounds_out_of_order_give_nan_for_the_affected_clips(
    normal_clips, random_variables
):
    model = ConvNet()
    x = normal_clips((3, 4, 6, 6, 2), 18)
    v = random_variables(model, x, 19)
    t = jnp.array([0, 1, 2])

    @jax.jit
    def fn(low, high):
        return sr.make_explainer(model, "lrp.epsilon_gamma_box", low=low, high=high)(v, x, t)

    clean = np.asarray(fn(jnp.full(x.shape, -3.0), jnp.float32(3.0)))
    assert np.isfinite(clean).all()
    low = np.full(x.shape, -3.0, np.float32)
    low[1, 0, 0, 0, 0] = 4.0  # above high in clip 1 only
    got = np.asarray(fn(jnp.asarray(low), jnp.float32(3.0)))
    assert np.isnan(got[1]).all()
    np.testing.assert_allclose(got[[0, 2]], clean[[0, 2]], rtol=1e-6)
    assert np.isnan(np.asarray(fn(jnp.full(x.shape, jnp.nan), jnp.float32(3.0)))).all()


class DenseThenConv(nn.Module):
    """A pointwise dense layer before the first convolution."""

    @nn.compact
    def __call__(self, x):
        h = nn.relu(nn.Dense(3, name="embed")(x))
        h = nn.relu(nn.Conv(4, (2, 3, 3), padding=1, name="conv")(h))
        return nn.Dense(3, name="fc")(GlobalAvgPool()(h))


def test_epsilon_gamma_box_puts_zbox_on_the_first_convolution_only(normal_clips, random_variables):
    """As Zennit's EpsilonGammaBox (first_map: convolutions): a dense layer the
    input reaches first keeps Epsilon, and ZBox goes to the first conv."""
    model = DenseThenConv()
    x = jnp.clip(normal_clips((1, 3, 4, 4, 2), 21), -1.0, 1.0)
    v = random_variables(model, x, 22)
    t = jnp.array([2])
    got = sr.explain(model, v, x, t, "lrp.epsilon_gamma_box", low=-1.0, high=1.0)
    layers = ((nn.Conv, rules.Gamma(0.25)), (nn.Dense, rules.Epsilon()))
    want = lrp(model, Composite(layers, (("conv", rules.ZBox(-1.0, 1.0)),)))(v, x, t)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-9)
    on_dense = lrp(model, Composite(layers, (("embed", rules.ZBox(-1.0, 1.0)),)))(v, x, t)
    assert np.abs(np.asarray(on_dense) - np.asarray(want)).max() > 1e-4 * np.abs(want).max()


def test_flat_composites_count_a_dense_layer_as_first(normal_clips, random_variables):
    """Zennit's _flat composites: the first Linear or Conv gets Flat."""
    model = DenseThenConv()
    x = normal_clips((1, 3, 4, 4, 2), 23)
    v = random_variables(model, x, 24)
    t = jnp.array([0])
    got = sr.explain(model, v, x, t, "lrp.epsilon_plus_flat")
    layers = ((nn.Conv, rules.ZPlus()), (nn.Dense, rules.Epsilon()))
    want = lrp(model, Composite(layers, (("embed", rules.Flat()),)))(v, x, t)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-9)


def test_first_types_and_readme_composite():
    box = rules.ZBox(low=-2.0, high=2.0)
    comp = Composite(
        layer_map=((nn.Conv, rules.Gamma(0.5)), (nn.Dense, rules.Epsilon(0.25))),
        path_map=(("layer4/*", rules.ZPlus()),),
        first=box,
    )
    assert comp.first_types == (nn.Conv, nn.Dense)
    assert composites.epsilon_gamma_box(low=-1, high=1).first_types == (nn.Conv,)
    assert composites.epsilon_plus_flat().first_types == (nn.Conv, nn.Dense)
    conv, dense = nn.Conv(2, (1,)), nn.Dense(2)
    assert comp.rule_for(dense, "fc", first=True, leaf=True) is box
    assert comp.rule_for(dense, "fc", first=False, leaf=True) == rules.Epsilon(0.25)
    assert comp.rule_for(conv, "layer4/conv", first=True, leaf=True) == rules.ZPlus()
    assert comp.rule_for(conv, "layer4/conv", first=False, leaf=False) == rules.Gamma(0.5)
    with pytest.raises(TypeError):
        comp.rule_for(conv, "conv", True, True)  # the flags are keyword-only

    # The engine passes a layer's kind and the class of the module computing it.
    class Head(nn.Module):
        pass

    assert comp.rule_for((nn.Dense, Head), "head/fc", first=False, leaf=True) == rules.Epsilon(0.25)
    assert comp.rule_for(nn.Conv, None, first=True, leaf=True) is box  # no path: no pattern
    by_owner = Composite(((Head, rules.Flat()), (nn.Dense, rules.Epsilon())))
    assert by_owner.rule_for((nn.Dense, Head), None, first=False, leaf=True) == rules.Flat()
    assert by_owner.rule_for((nn.Dense,), "x", first=False, leaf=True) == rules.Epsilon()


def test_layer_map_base_is_shared_data():
    base = composites.layer_map_base(0.5)
    assert base == (((Sum, AvgPool, GlobalAvgPool), rules.Norm(0.5)),
                    ((MaxPool, nn.Dropout), rules.Gradient()))  # fmt: skip
    comp = Composite(stabilizer=0.5)
    for module, rule in ((Sum(), rules.Norm(0.5)), (AvgPool((2,)), rules.Norm(0.5)),
                         (MaxPool((2,)), rules.Gradient()),
                         (nn.Dropout(0.1), rules.Gradient())):  # fmt: skip
        assert comp.rule_for(module, "m", first=False, leaf=True) == rule
    # The layer map comes before the base map.
    pool_eps = Composite(((AvgPool, rules.Epsilon(0.1)),))
    assert pool_eps.rule_for(AvgPool((2,)), "p", first=False, leaf=True) == rules.Epsilon(0.1)
    assert Composite().rule_for(nn.LayerNorm(), "norm", first=False, leaf=True) is None


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"layer_map": ((nn.Conv, "zplus"),)}, "not a Rule"),
        ({"layer_map": (("conv", rules.ZPlus()),)}, "layer_map key"),
        ({"path_map": (("conv", None),)}, "not a Rule"),
        ({"first": "flat"}, "first must be a Rule"),
        ({"first_types": "conv"}, "first_types"),
        ({"stabilizer": -1.0}, "stabilizer"),
    ],
)
def test_composite_rejects_bad_fields(kwargs, message):
    with pytest.raises(SelrelError, match=message):
        Composite(**kwargs)


def test_named_composites_choose_the_spec_rules():
    conv, dense = nn.Conv(2, (1,)), nn.Dense(2)

    def rules_of(comp):
        return tuple(comp.rule_for(m, "x", first=first, leaf=True)
                     for first in (True, False) for m in (conv, dense))  # fmt: skip

    eps, zp = rules.Epsilon(0.1), rules.ZPlus(0.2)
    assert rules_of(composites.epsilon(epsilon=0.1)) == (rules.Epsilon(0.1),) * 4
    assert rules_of(composites.zplus(stabilizer=0.2)) == (zp,) * 4
    assert rules_of(composites.epsilon_plus(epsilon=0.1, stabilizer=0.2)) == (zp, eps) * 2
    flat = rules.Flat(0.2)
    got = rules_of(composites.epsilon_plus_flat(epsilon=0.1, stabilizer=0.2))
    assert got == (flat, flat, zp, eps)
    ab = rules.AlphaBeta(3.0, 2.0, 0.2)
    got = rules_of(composites.epsilon_alpha2_beta1_flat(alpha=3.0, beta=2.0, epsilon=0.1,
                                                         stabilizer=0.2))  # fmt: skip
    assert got == (flat, flat, ab, eps)
    box = composites.epsilon_gamma_box(low=-1.0, high=1.0, gamma=0.5)
    first_conv, first_dense, other_conv, other_dense = rules_of(box)
    assert isinstance(first_conv, rules.ZBox) and first_conv.low == -1.0
    assert other_conv == rules.Gamma(0.5) and other_dense == first_dense == rules.Epsilon()
