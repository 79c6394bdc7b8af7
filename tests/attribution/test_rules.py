"""Every LRP rule against a NumPy implementation of its formula (spec: lrp-rules.md).

The oracle writes a conv layer as its explicit dense matrix M[j, k] (input
element j, output element k), built by loops over output positions and kernel
taps with stride, padding, dilation and groups; padded taps have no entry, so
"in-bounds" needs no special case. The rules then are the spec's sums over j
and k, written directly in NumPy.
"""

from __future__ import annotations

import itertools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from selrel_jax.attribution import composites, rules
from selrel_jax.attribution.engine import relevance_vjp
from selrel_jax.layers import AvgPool, GlobalAvgPool, MaxPool, Sum

# ---------------------------------------------------------------- NumPy oracle


def conv_matrix(kernel, in_shape, strides, padding, dilation, groups):
    """Dense (J, K) matrix and (J, K) receptive-field mask of an N-d conv."""
    kernel = np.asarray(kernel, np.float64)
    *ksize, cin_g, cout = kernel.shape
    spatial = in_shape[:-1]
    out_sp = [
        (s + lo + hi - (d * (k - 1) + 1)) // st + 1
        for s, (lo, hi), k, st, d in zip(spatial, padding, ksize, strides, dilation, strict=True)
    ]
    J, K = int(np.prod(in_shape)), int(np.prod(out_sp)) * cout
    M, mask = np.zeros((J, K)), np.zeros((J, K))
    cout_g = cout // groups
    for opos in itertools.product(*map(range, out_sp)):
        for tap in itertools.product(*map(range, ksize)):
            ipos = [
                o * st - lo + t * d
                for o, st, (lo, _), t, d in zip(opos, strides, padding, tap, dilation, strict=True)
            ]
            if any(p < 0 or p >= s for p, s in zip(ipos, spatial, strict=True)):
                continue
            for co in range(cout):
                g = co // cout_g
                for ci in range(cin_g):
                    j = np.ravel_multi_index((*ipos, g * cin_g + ci), in_shape)
                    k = np.ravel_multi_index((*opos, co), (*out_sp, cout))
                    M[j, k] += kernel[(*tap, ci, co)]
                    mask[j, k] = 1.0
    return M, mask, (*out_sp, cout)


def stab(z, eps=1e-6):
    return z + eps * np.where(z >= 0, 1.0, -1.0)


pos, neg = (lambda v: np.maximum(v, 0)), (lambda v: np.minimum(v, 0))


def oracle(rule, a, M, mask, b, R, low=None, high=None):
    """The spec's formula for one example: a (J,), M (J, K), b (K,), R (K,)."""
    z = a @ M + b
    ap, an = pos(a), neg(a)
    if isinstance(rule, rules.Epsilon):
        return a * (M @ (R / stab(z, rule.epsilon)))
    if isinstance(rule, rules.ZPlus | rules.AlphaBeta):
        alpha, beta = (1.0, 0.0) if isinstance(rule, rules.ZPlus) else (rule.alpha, rule.beta)
        zp = ap @ pos(M) + pos(b) + an @ neg(M)
        zn = ap @ neg(M) + neg(b) + an @ pos(M)
        cp, cn = R / stab(zp), R / stab(zn)
        return alpha * (ap * (pos(M) @ cp) + an * (neg(M) @ cp)) - beta * (
            ap * (neg(M) @ cn) + an * (pos(M) @ cn)
        )
    if isinstance(rule, rules.Gamma):
        g = rule.gamma
        Wp, Wn = M + g * pos(M), M + g * neg(M)
        o1, o2 = ap @ Wp + (b + g * pos(b)), an @ Wn
        o3, o4 = ap @ Wn + (b + g * neg(b)), an @ Wp
        cp = np.where(z > 0, R / stab(o1 + o2), 0.0)
        cn = np.where(z < 0, R / stab(o3 + o4), 0.0)
        return ap * (Wp @ cp + Wn @ cn) + an * (Wn @ cp + Wp @ cn)
    if isinstance(rule, rules.ZBox):
        den = a @ M - low @ pos(M) - high @ neg(M)
        c = R / stab(den)
        return a * (M @ c) - low * (pos(M) @ c) - high * (neg(M) @ c)
    if isinstance(rule, rules.WSquare):
        return (M**2) @ (R / stab(np.ones_like(a) @ M**2 + b**2))
    if isinstance(rule, rules.Flat):
        return mask @ (R / stab(mask.sum(0)))
    raise AssertionError(rule)


# ---------------------------------------------------------------- engine side


class Single(nn.Module):
    """One layer; the flattened layer output is the model output."""

    layer: nn.Module

    def __call__(self, x):
        y = self.layer(x)
        return y.reshape(y.shape[0], -1)


def engine_relevance(random_variables, layer, rule, x, R, key):
    model = Single(layer)
    variables = random_variables(model, x, key)
    comp = composites.uniform(rule, rule)

    @jax.jit
    def run(variables, x, R):
        out, pull = relevance_vjp(model, comp, variables, x)
        return pull(R.reshape(out.shape))

    return np.asarray(run(variables, x, R)), variables["params"]["layer"]


LAYERS = {
    "dense": (lambda: nn.Dense(5), (2, 7)),
    "conv2d_strided_padded": (
        lambda: nn.Conv(4, (3, 2), strides=(2, 1), padding=((1, 1), (0, 1))),
        (2, 6, 5, 3),
    ),
    "conv2d_grouped_dilated": (
        lambda: nn.Conv(
            4, (2, 3), padding=((1, 0), (2, 2)), kernel_dilation=(1, 2), feature_group_count=2
        ),
        (1, 5, 6, 4),
    ),
    "conv3d_strided_padded": (
        lambda: nn.Conv(3, (2, 3, 3), strides=(1, 2, 2), padding=((0, 1), (1, 1), (1, 1))),
        (1, 3, 5, 5, 2),
    ),
}

RULES = {
    "epsilon": rules.Epsilon(0.1),
    "zplus": rules.ZPlus(),
    "alpha2beta1": rules.AlphaBeta(2.0, 1.0),
    "alpha3beta2": rules.AlphaBeta(3.0, 2.0),
    "gamma": rules.Gamma(0.25),
    "wsquare": rules.WSquare(),
    "flat": rules.Flat(),
}


def layer_matrix(name, params, in_shape):
    kernel = np.asarray(params["kernel"], np.float64)
    bias = np.asarray(params["bias"], np.float64)
    if name == "dense":
        return kernel, np.ones_like(kernel), bias
    layer = LAYERS[name][0]()
    ksize = kernel.shape[:-2]
    padding = layer.padding

    def spread(v):
        return (v,) * len(ksize) if isinstance(v, int) else tuple(v or (1,) * len(ksize))

    dilation, strides = spread(layer.kernel_dilation), spread(layer.strides)
    M, mask, out_shape = conv_matrix(
        kernel, in_shape, strides, padding, dilation, layer.feature_group_count
    )
    return M, mask, np.tile(bias, int(np.prod(out_shape[:-1])))


def check(random_variables, layer_name, rule, low=None, high=None):
    make, shape = LAYERS[layer_name]
    rng = np.random.default_rng(len(layer_name))
    x = jnp.asarray(rng.normal(size=shape), jnp.float32)
    out_shape = jax.eval_shape(Single(make()).init_with_output, jax.random.key(0), x)[0].shape
    R = jnp.asarray(rng.normal(size=out_shape), jnp.float32)
    kp = len(layer_name) + 1
    if low is not None:
        low_e, high_e = jnp.broadcast_to(low, shape), jnp.broadcast_to(high, shape)
        x = jnp.clip(x, low_e, high_e)
        rule = rules.ZBox(low, high)
    got, params = engine_relevance(random_variables, make(), rule, x, R, kp)
    M, mask, b = layer_matrix(layer_name, params, shape[1:])
    for n in range(shape[0]):
        kw = {}
        if low is not None:
            kw = {"low": np.asarray(low_e[n], np.float64).ravel(),
                  "high": np.asarray(high_e[n], np.float64).ravel()}  # fmt: skip
        want = oracle(
            rule, np.asarray(x[n], np.float64).ravel(), M, mask, b,
            np.asarray(R[n], np.float64).ravel(), **kw,
        )  # fmt: skip
        scale = np.abs(want).max()
        np.testing.assert_allclose(got[n].ravel(), want, atol=1e-4 * scale, rtol=0)


@pytest.mark.parametrize("layer_name", list(LAYERS))
@pytest.mark.parametrize("rule_name", list(RULES))
def test_rule_matches_numpy_formula(random_variables, layer_name, rule_name):
    check(random_variables, layer_name, RULES[rule_name])


@pytest.mark.parametrize("layer_name", list(LAYERS))
def test_zbox_matches_numpy_formula_per_channel_bounds(random_variables, layer_name):
    channels = LAYERS[layer_name][1][-1]
    low = -1.0 - jnp.arange(channels, dtype=jnp.float32) * 0.1
    check(random_variables, layer_name, None, low=low, high=jnp.float32(1.5))


def test_zbox_elementwise_bounds_on_padded_conv(random_variables):
    shape = LAYERS["conv3d_strided_padded"][1]
    low = jnp.asarray(-1.5 - 0.5 * np.random.default_rng(3).uniform(size=shape[1:]), jnp.float32)
    check(random_variables, "conv3d_strided_padded", None, low=low, high=-low)


def test_gamma_matches_formula_on_nonnegative_input(random_variables):
    """After a ReLU the engine skips the a- passes; the result must not change."""

    class ReluConv(nn.Module):
        @nn.compact
        def __call__(self, x):
            h = nn.relu(x)
            return nn.Conv(3, (3, 3), padding=1, name="conv")(h).reshape(x.shape[0], -1)

    x = jnp.asarray(np.random.default_rng(0).normal(size=(1, 4, 4, 2)), jnp.float32)
    model = ReluConv()
    variables = random_variables(model, x, 1)
    for rule in (rules.Gamma(0.5), rules.AlphaBeta(2.0, 1.0), rules.ZPlus()):
        out, pull = relevance_vjp(model, composites.uniform(rule, rule), variables, x)
        R = jnp.asarray(np.random.default_rng(2).normal(size=out.shape), jnp.float32)
        params = variables["params"]["conv"]
        M, mask, _ = conv_matrix(params["kernel"], (4, 4, 2), (1, 1), ((1, 1), (1, 1)),
                                 (1, 1), 1)  # fmt: skip
        b = np.tile(np.asarray(params["bias"], np.float64), 16)
        a = np.maximum(np.asarray(x[0], np.float64).ravel(), 0)
        want = oracle(rule, a, M, mask, b, np.asarray(R[0], np.float64).ravel())
        # The ReLU passes relevance unchanged, so the input relevance is the conv's.
        got = np.asarray(pull(R))[0].ravel()
        np.testing.assert_allclose(got, want, atol=1e-4 * np.abs(want).max())


# ---------------------------------------------------------------- Norm, max pool


class Pools(nn.Module):
    kind: str

    @nn.compact
    def __call__(self, x):
        if self.kind == "sum":
            y = Sum()(x, x[:, ::-1], x[:, :, ::-1])
        elif self.kind == "avg":
            y = AvgPool((2, 2), strides=(1, 2), padding=((1, 0), (0, 0)))(x)
        elif self.kind == "gap":
            y = GlobalAvgPool()(x)
        else:
            y = MaxPool((2, 2))(x)
        return y.reshape(x.shape[0], -1)


@pytest.mark.parametrize("kind", ["sum", "avg", "gap", "max"])
def test_norm_and_maxpool_match_formula(kind):
    x = jnp.asarray(np.random.default_rng(4).normal(size=(1, 4, 4, 2)), jnp.float32)
    model = Pools(kind)
    out, pull = relevance_vjp(model, composites.epsilon_plus(), {}, x)
    R = jnp.asarray(np.random.default_rng(5).normal(size=out.shape), jnp.float32)
    got = np.asarray(pull(R))[0].ravel()
    a = np.asarray(x[0], np.float64)
    r = np.asarray(R[0], np.float64)
    if kind == "sum":
        terms = [a, a[::-1], a[:, ::-1]]
        c = r.reshape(a.shape) / stab(sum(terms))
        # Flips are functional (plain gradient): they route each share back unchanged.
        want = (a * c + (a[::-1] * c)[::-1] + (a[:, ::-1] * c)[:, ::-1]).ravel()
    elif kind in ("avg", "gap"):
        if kind == "avg":
            M = np.zeros((a.size, r.size))
            out_shape = (4, 2, 2)
            for i, j, ch in itertools.product(*map(range, out_shape)):
                k = np.ravel_multi_index((i, j, ch), out_shape)
                for di, dj in itertools.product(range(2), range(2)):
                    pi, pj = i + di - 1, 2 * j + dj
                    if 0 <= pi < 4:
                        M[np.ravel_multi_index((pi, pj, ch), a.shape), k] = 0.25
        else:
            M = np.zeros((a.size, 2))
            for i, j, ch in itertools.product(range(4), range(4), range(2)):
                M[np.ravel_multi_index((i, j, ch), a.shape), ch] = 1 / 16
        y = a.ravel() @ M
        want = a.ravel() * (M @ (r / stab(y)))
    else:
        want = np.zeros(a.size)
        for i, j, ch in itertools.product(range(2), range(2), range(2)):
            win = a[2 * i : 2 * i + 2, 2 * j : 2 * j + 2, ch]
            di, dj = np.unravel_index(np.argmax(win), (2, 2))
            want[np.ravel_multi_index((2 * i + di, 2 * j + dj, ch), a.shape)] += r[
                np.ravel_multi_index((i, j, ch), (2, 2, 2))
            ]
    np.testing.assert_allclose(got, want, atol=1e-4 * np.abs(want).max())
