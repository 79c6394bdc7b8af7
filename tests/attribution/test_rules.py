"""Every LRP rule against a NumPy implementation of its formula (spec: lrp-rules.md).

A layer is written as its explicit dense matrix M[j, k] (input element j,
output element k); for a conv it is built by loops over output positions and
kernel taps with stride, padding, dilation and groups, and padded taps have no
entry, so "in-bounds" needs no special case. Each rule then has one reference
function below: the spec's sums over j and k, written directly in NumPy.
"""

from __future__ import annotations

import dataclasses
import itertools
import re
import sys
import types
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis.extra.numpy import arrays
from hypothesis.strategies import floats

import selrel_jax as sr
from selrel_jax.attribution import LayerCall, composites, lrp, rules
from selrel_jax.errors import SelrelError
from selrel_jax.layers import AvgPool, GlobalAvgPool, MaxPool, Sum
from tests.attribution.engine_helpers import relevance_vjp

METHODS_PAGE = Path(__file__).resolve().parents[2] / "docs" / "methods.md"

# ---------------------------------------------------------------- NumPy references


def pos(v):
    return np.maximum(v, 0)


def neg(v):
    return np.minimum(v, 0)


def stab(z, eps=1e-6):
    """S(z) = z + eps * s(z), s(0) = +1."""
    return z + eps * np.where(z >= 0, 1.0, -1.0)


def ratio(R, denominator):
    """R / denominator, 0 where the denominator is exactly 0 (only possible with eps = 0)."""
    return np.divide(R, denominator, out=np.zeros_like(R), where=denominator != 0)


def epsilon_reference(a, M, b, R, *, epsilon):
    """R_j = a_j sum_k w_jk R_k / S(z_k), z = a M + b."""
    return a * (M @ ratio(R, stab(a @ M + b, epsilon)))


def zplus_reference(a, M, b, R, *, stabilizer=1e-6):
    """zP = a+ W+ + b+ + a- W-;  R_j = a+_j sum_k w+_jk c_k + a-_j sum_k w-_jk c_k."""
    zp = pos(a) @ pos(M) + pos(b) + neg(a) @ neg(M)
    c = ratio(R, stab(zp, stabilizer))
    return pos(a) * (pos(M) @ c) + neg(a) * (neg(M) @ c)


def alpha_beta_reference(a, M, b, R, *, alpha, beta, stabilizer=1e-6):
    """alpha [a+ W+ cP + a- W- cP] - beta [a+ W- cN + a- W+ cN]."""
    zp = pos(a) @ pos(M) + pos(b) + neg(a) @ neg(M)
    zn = pos(a) @ neg(M) + neg(b) + neg(a) @ pos(M)
    cp, cn = ratio(R, stab(zp, stabilizer)), ratio(R, stab(zn, stabilizer))
    positive = pos(a) * (pos(M) @ cp) + neg(a) * (neg(M) @ cp)
    negative = pos(a) * (neg(M) @ cn) + neg(a) * (pos(M) @ cn)
    return alpha * positive - beta * negative


def gamma_reference(a, M, b, R, *, gamma, stabilizer=1e-6):
    """The spec's four passes o1..o4; c+ on units z > 0, c- on units z < 0."""
    z = a @ M + b
    w_up, w_down = M + gamma * pos(M), M + gamma * neg(M)
    o1, o2 = pos(a) @ w_up + (b + gamma * pos(b)), neg(a) @ w_down
    o3, o4 = pos(a) @ w_down + (b + gamma * neg(b)), neg(a) @ w_up
    c_plus = np.where(z > 0, ratio(R, stab(o1 + o2, stabilizer)), 0.0)
    c_minus = np.where(z < 0, ratio(R, stab(o3 + o4, stabilizer)), 0.0)
    return pos(a) * (w_up @ c_plus + w_down @ c_minus) + neg(a) * (w_down @ c_plus + w_up @ c_minus)


def zbox_reference(a, M, R, *, low, high, stabilizer=1e-6):
    """den = a W - low W+ - high W- (the bias cancels); R = a W c - low W+ c - high W- c."""
    c = ratio(R, stab(a @ M - low @ pos(M) - high @ neg(M), stabilizer))
    return a * (M @ c) - low * (pos(M) @ c) - high * (neg(M) @ c)


def wsquare_reference(M, b, R, *, stabilizer=1e-6):
    """R_j = sum_k w_jk^2 R_k / S(sum_j' w_j'k^2 + b_k^2), j' over in-bounds inputs."""
    return (M**2) @ ratio(R, stab(np.ones(M.shape[0]) @ M**2 + b**2, stabilizer))


def flat_reference(mask, R, *, stabilizer=1e-6):
    """R_j = sum_k R_k / S(n_k), n_k = in-bounds inputs of unit k (mask: receptive fields)."""
    return mask @ ratio(R, stab(mask.sum(0), stabilizer))


def norm_reference(a, M, R, *, stabilizer=1e-6):
    """Proportional split through a parameter-free linear map y = a M (sums, average pooling)."""
    return a * (M @ ratio(R, stab(a @ M, stabilizer)))


def max_pool_reference(a, R, window):
    """Plain gradient of max pooling over (H, W) windows: each window's winner gets its R."""
    h, w, channels = a.shape
    out_shape = (h // window, w // window, channels)
    grad = np.zeros(a.size)
    for i, j, ch in itertools.product(*map(range, out_shape)):
        win = a[window * i : window * (i + 1), window * j : window * (j + 1), ch]
        di, dj = np.unravel_index(np.argmax(win), win.shape)
        k = np.ravel_multi_index((i, j, ch), out_shape)
        grad[np.ravel_multi_index((window * i + di, window * j + dj, ch), a.shape)] += R[k]
    return grad


# ---------------------------------------------------------------- layers as matrices


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


class Single(nn.Module):
    """One layer; the flattened layer output is the model output."""

    layer: nn.Module

    def __call__(self, x):
        y = self.layer(x)
        return y.reshape(y.shape[0], -1)


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


@dataclasses.dataclass
class Example:
    """One example n of a layer test in matrix form (float64)."""

    a: np.ndarray  # input (J,)
    M: np.ndarray  # (J, K)
    mask: np.ndarray  # (J, K) receptive fields
    b: np.ndarray  # bias per output element (K,)
    R: np.ndarray  # output relevance (K,)
    low: np.ndarray | None = None
    high: np.ndarray | None = None


def layer_matrix(name, params, in_shape):
    kernel = np.asarray(params["kernel"], np.float64)
    bias = np.asarray(params["bias"], np.float64)
    if name == "dense":
        return kernel, np.ones_like(kernel), bias
    layer = LAYERS[name][0]()
    ksize = kernel.shape[:-2]

    def spread(v):
        return (v,) * len(ksize) if isinstance(v, int) else tuple(v or (1,) * len(ksize))

    dilation, strides = spread(layer.kernel_dilation), spread(layer.strides)
    M, mask, out_shape = conv_matrix(
        kernel, in_shape, strides, layer.padding, dilation, layer.feature_group_count
    )
    return M, mask, np.tile(bias, int(np.prod(out_shape[:-1])))


def engine_relevance(random_variables, layer, rule, x, R, key):
    model = Single(layer)
    variables = random_variables(model, x, key)
    comp = composites.uniform(rule, rule)

    @jax.jit
    def run(variables, x, R):
        out, pull = relevance_vjp(model, comp, variables, x)
        return pull(R.reshape(out.shape))

    return np.asarray(run(variables, x, R)), variables["params"]["layer"]


def check(random_variables, layer_name, rule, reference, low=None, high=None):
    """The engine's relevance under ``rule`` equals ``reference(example)`` per example."""
    make, shape = LAYERS[layer_name]
    rng = np.random.default_rng(len(layer_name))
    x = jnp.asarray(rng.normal(size=shape), jnp.float32)
    out_shape = jax.eval_shape(Single(make()).init_with_output, jax.random.key(0), x)[0].shape
    R = jnp.asarray(rng.normal(size=out_shape), jnp.float32)
    if low is not None:
        low, high = jnp.broadcast_to(low, shape), jnp.broadcast_to(high, shape)
        x = jnp.clip(x, low, high)
    got, params = engine_relevance(random_variables, make(), rule, x, R, len(layer_name) + 1)
    M, mask, b = layer_matrix(layer_name, params, shape[1:])

    def flat(v, n):
        return None if v is None else np.asarray(v[n], np.float64).ravel()

    for n in range(shape[0]):
        example = Example(flat(x, n), M, mask, b, flat(R, n), flat(low, n), flat(high, n))
        want = reference(example)
        scale = np.abs(want).max()
        np.testing.assert_allclose(got[n].ravel(), want, atol=1e-4 * scale, rtol=0)


RULES = {
    "epsilon": (rules.Epsilon(0.1), lambda e: epsilon_reference(e.a, e.M, e.b, e.R, epsilon=0.1)),
    "zplus": (rules.ZPlus(), lambda e: zplus_reference(e.a, e.M, e.b, e.R)),
    "alpha2beta1": (
        rules.AlphaBeta(2.0, 1.0),
        lambda e: alpha_beta_reference(e.a, e.M, e.b, e.R, alpha=2.0, beta=1.0),
    ),
    "alpha3beta2": (
        rules.AlphaBeta(3.0, 2.0),
        lambda e: alpha_beta_reference(e.a, e.M, e.b, e.R, alpha=3.0, beta=2.0),
    ),
    "gamma": (rules.Gamma(0.25), lambda e: gamma_reference(e.a, e.M, e.b, e.R, gamma=0.25)),
    "wsquare": (rules.WSquare(), lambda e: wsquare_reference(e.M, e.b, e.R)),
    "flat": (rules.Flat(), lambda e: flat_reference(e.mask, e.R)),
}


def zbox(example):
    return zbox_reference(example.a, example.M, example.R, low=example.low, high=example.high)


@pytest.mark.parametrize("layer_name", list(LAYERS))
@pytest.mark.parametrize("rule_name", list(RULES))
def test_rule_matches_numpy_formula(random_variables, layer_name, rule_name):
    check(random_variables, layer_name, *RULES[rule_name])


def _conv_call(kernel_axes: tuple, out_axes: tuple) -> tuple[LayerCall, jax.Array]:
    """A strided, padded 3D conv with a bias as a hand-built LayerCall, and its R."""
    rng = np.random.default_rng(7)
    x = jnp.asarray(rng.normal(size=(2, 4, 6, 5, 3)), jnp.float32)
    params = {"kernel": jnp.asarray(rng.normal(size=(3, 3, 2, 3, 5)), jnp.float32),
              "bias": jnp.asarray(rng.normal(size=5), jnp.float32)}  # fmt: skip

    def fn(xs, p):
        y = jax.lax.conv_general_dilated(xs[0], p["kernel"], (2, 1, 2), ((1, 1), (1, 1), (0, 1)),
                                         dimension_numbers=("NDHWC", "DHWIO", "NDHWC"))  # fmt: skip
        return y + p["bias"] if "bias" in p else y

    y = fn((x,), params)
    R = jnp.asarray(rng.normal(size=y.shape), jnp.float32)
    return LayerCall(fn, (x,), params, y, False, {}, out_axes, kernel_axes), R


def test_flat_through_one_unit_equals_the_full_rule():
    """Given the output-unit axes, Flat computes one unit's pass (all units share the
    ones weights); the result is the full rule's, the one the formula test checks."""
    full, R = _conv_call((), ())
    one_unit, _ = _conv_call((4,), (4,))
    want = np.asarray(rules.Flat().relevance(full, R)[0])
    got = np.asarray(rules.Flat().relevance(one_unit, R)[0])
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6 * np.abs(want).max())
    np.testing.assert_allclose(got.sum(), R.sum(), rtol=1e-4)


@pytest.mark.parametrize("layer_name", list(LAYERS))
def test_zbox_matches_numpy_formula_per_channel_bounds(random_variables, layer_name):
    channels = LAYERS[layer_name][1][-1]
    low = -1.0 - jnp.arange(channels, dtype=jnp.float32) * 0.1
    high = jnp.float32(1.5)
    check(random_variables, layer_name, rules.ZBox(low, high), zbox, low=low, high=high)


def test_zbox_elementwise_bounds_on_padded_conv(random_variables):
    shape = LAYERS["conv3d_strided_padded"][1]
    low = jnp.asarray(-1.5 - 0.5 * np.random.default_rng(3).uniform(size=shape[1:]), jnp.float32)
    rule = rules.ZBox(low, -low)
    check(random_variables, "conv3d_strided_padded", rule, zbox, low=low, high=-low)


def test_rules_match_formula_on_nonnegative_input(random_variables):
    """After a ReLU the engine skips the a- passes; the result must not change."""

    class ReluConv(nn.Module):
        @nn.compact
        def __call__(self, x):
            h = nn.relu(x)
            return nn.Conv(3, (3, 3), padding=1, name="conv")(h).reshape(x.shape[0], -1)

    x = jnp.asarray(np.random.default_rng(0).normal(size=(1, 4, 4, 2)), jnp.float32)
    model = ReluConv()
    variables = random_variables(model, x, 1)
    params = variables["params"]["conv"]
    M, _, _ = conv_matrix(params["kernel"], (4, 4, 2), (1, 1), ((1, 1), (1, 1)), (1, 1), 1)
    b = np.tile(np.asarray(params["bias"], np.float64), 16)
    a = np.maximum(np.asarray(x[0], np.float64).ravel(), 0)
    cases = (
        (rules.Gamma(0.5), lambda R: gamma_reference(a, M, b, R, gamma=0.5)),
        (rules.AlphaBeta(2.0, 1.0), lambda R: alpha_beta_reference(a, M, b, R, alpha=2, beta=1)),
        (rules.ZPlus(), lambda R: zplus_reference(a, M, b, R)),
    )
    for rule, reference in cases:
        out, pull = relevance_vjp(model, composites.uniform(rule, rule), variables, x)
        R = jnp.asarray(np.random.default_rng(2).normal(size=out.shape), jnp.float32)
        want = reference(np.asarray(R[0], np.float64).ravel())
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


def pooling_matrix(kind, shape):
    """(J, K) matrix of the (4, 4, 2) input's average pooling of ``kind``."""
    if kind == "gap":
        M = np.zeros((int(np.prod(shape)), shape[-1]))
        for i, j, ch in itertools.product(*map(range, shape)):
            M[np.ravel_multi_index((i, j, ch), shape), ch] = 1 / (shape[0] * shape[1])
        return M
    out_shape = (4, 2, 2)  # window (2, 2), strides (1, 2), one padded row on top
    M = np.zeros((int(np.prod(shape)), int(np.prod(out_shape))))
    for i, j, ch in itertools.product(*map(range, out_shape)):
        for di, dj in itertools.product(range(2), range(2)):
            pi, pj = i + di - 1, 2 * j + dj
            if 0 <= pi < shape[0]:
                M[np.ravel_multi_index((pi, pj, ch), shape),
                  np.ravel_multi_index((i, j, ch), out_shape)] = 0.25  # fmt: skip
    return M


@pytest.mark.parametrize("kind", ["sum", "avg", "gap", "max"])
def test_norm_and_maxpool_match_formula(kind):
    x = jnp.asarray(np.random.default_rng(4).normal(size=(1, 4, 4, 2)), jnp.float32)
    out, pull = relevance_vjp(Pools(kind), composites.epsilon_plus(), {}, x)
    R = jnp.asarray(np.random.default_rng(5).normal(size=out.shape), jnp.float32)
    got = np.asarray(pull(R))[0].ravel()
    a = np.asarray(x[0], np.float64)
    r = np.asarray(R[0], np.float64)
    if kind == "sum":
        # Sum(u, v, w) is the linear map [u; v; w] -> u + v + w; the flips feeding it
        # are functional (plain gradient) and route each share back unflipped.
        terms = [a, a[::-1], a[:, ::-1]]
        stacked = np.vstack([np.eye(a.size)] * 3)
        shares = norm_reference(np.concatenate([t.ravel() for t in terms]), stacked, r)
        u, v, w = (s.reshape(a.shape) for s in np.split(shares, 3))
        want = (u + v[::-1] + w[:, ::-1]).ravel()
    elif kind in ("avg", "gap"):
        want = norm_reference(a.ravel(), pooling_matrix(kind, a.shape), r)
    else:
        want = max_pool_reference(a, r, 2)
    np.testing.assert_allclose(got, want, atol=1e-4 * np.abs(want).max())


# ---------------------------------------------------------------- LRP-0 (stabiliser 0)


class DeadUnitDense(nn.Module):
    """Dense layer whose unit 0 has zero weights and bias: z_0 = 0 exactly."""

    @nn.compact
    def __call__(self, x):
        return nn.Dense(4, name="layer")(x)


def _dead_unit_problem():
    rng = np.random.default_rng(11)
    kernel = rng.normal(size=(6, 4)).astype(np.float32)
    bias = rng.normal(size=4).astype(np.float32)
    kernel[:, 0], bias[0] = 0.0, 0.0
    variables = {"params": {"layer": {"kernel": jnp.asarray(kernel), "bias": jnp.asarray(bias)}}}
    x = jnp.asarray(rng.normal(size=(2, 6)), jnp.float32)
    R = jnp.asarray(rng.normal(size=(2, 4)), jnp.float32)
    return variables, x, R


@pytest.mark.parametrize(
    ("rule", "reference"),
    [
        (rules.Epsilon(0.0), lambda a, M, b, R: epsilon_reference(a, M, b, R, epsilon=0.0)),
        (rules.ZPlus(0.0), lambda a, M, b, R: zplus_reference(a, M, b, R, stabilizer=0.0)),
        (rules.Gamma(0.25, 0.0),
         lambda a, M, b, R: gamma_reference(a, M, b, R, gamma=0.25, stabilizer=0.0)),
    ],
)  # fmt: skip
def test_zero_stabilizer_gives_zero_where_denominator_is_zero(rule, reference):
    """LRP-0: the unit with z = 0 passes no relevance (was 0/0 = NaN), others are exact."""
    variables, x, R = _dead_unit_problem()
    out, pull = relevance_vjp(DeadUnitDense(), composites.uniform(rule, rule), variables, x)
    assert float(jnp.abs(out[:, 0]).max()) == 0.0
    got = np.asarray(pull(R))
    assert np.isfinite(got).all()
    M = np.asarray(variables["params"]["layer"]["kernel"], np.float64)
    b = np.asarray(variables["params"]["layer"]["bias"], np.float64)
    for n in range(2):
        want = reference(np.asarray(x[n], np.float64), M, b, np.asarray(R[n], np.float64))
        np.testing.assert_allclose(got[n], want, atol=1e-5 * np.abs(want).max())


def test_zero_stabilizer_gradients_are_finite():
    """The safe division keeps gradients through the relevance free of NaN too."""
    variables, x, R = _dead_unit_problem()
    params = variables["params"]["layer"]

    def fn(xs, p):
        return xs[0] @ p["kernel"] + p["bias"]

    def total(x, p):
        call = LayerCall(fn, (x,), p, fn((x,), p), False, {})
        return rules.Epsilon(0.0).relevance(call, R)[0].sum()

    grad_x, grad_p = jax.grad(total, argnums=(0, 1))(x, params)
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves((grad_x, grad_p)))
    assert float(jnp.abs(grad_x).max()) > 0
    zero = rules.safe_divide(jnp.zeros(3), jnp.array([0.0, 2.0, -4.0]))
    np.testing.assert_array_equal(np.asarray(zero), [0.0, 0.0, -0.0])


def test_lrp0_through_explain_on_a_dead_relu_unit(normal_clips):
    """A whole net with epsilon=0 and a unit whose z is exactly 0: finite, and
    the same as a tiny epsilon (which the dead unit cannot tell apart)."""

    class Net(nn.Module):
        @nn.compact
        def __call__(self, x):
            h = nn.relu(nn.Dense(4, name="fc1")(x.reshape(x.shape[0], -1)))
            return nn.Dense(3, name="fc2")(h)

    x = normal_clips((1, 1, 2, 2, 2), 3)
    rng = np.random.default_rng(12)
    k1 = rng.normal(size=(8, 4)).astype(np.float32)
    k1[:, 1] = 0.0  # hidden unit 1: z = 0 exactly, so fc1's LRP-0 divides 0 by 0 there
    variables = {"params": {
        "fc1": {"kernel": k1, "bias": np.array([0.3, 0.0, -0.2, 0.1], np.float32)},
        "fc2": {"kernel": rng.normal(size=(4, 3)).astype(np.float32),
                "bias": np.zeros(3, np.float32)},
    }}  # fmt: skip
    t = jnp.array([2])
    lrp0 = np.asarray(sr.explain(Net(), variables, x, t, "lrp.epsilon", epsilon=0.0))
    assert np.isfinite(lrp0).all() and np.abs(lrp0).sum() > 0
    tiny = np.asarray(sr.explain(Net(), variables, x, t, "lrp.epsilon", epsilon=1e-12))
    np.testing.assert_allclose(lrp0, tiny, rtol=1e-5, atol=1e-7)


# ---------------------------------------------------------------- rule options


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: rules.Epsilon(-1.0), "Epsilon epsilon"),
        (lambda: rules.Flat(float("nan")), "Flat stabilizer"),
        (lambda: rules.ZPlus("1e-6"), "ZPlus stabilizer"),
        (lambda: rules.Gamma(-0.5), "Gamma gamma"),
        (lambda: rules.AlphaBeta(3.0, 1.0), "alpha - beta"),
        (lambda: rules.AlphaBeta(True, 0.0), "AlphaBeta alpha"),
    ],
)
def test_rule_options_are_checked(make, message):
    with pytest.raises(SelrelError, match=message):
        make()


def test_one_input_rules_reject_two_inputs():
    def add(xs, params):
        return xs[0] + xs[1]

    inputs = (jnp.array([1.0, 3.0]), jnp.array([3.0, 1.0]))
    call = LayerCall(add, inputs, {}, add(inputs, {}), False, {})
    with pytest.raises(SelrelError, match="one-input layers; this layer has 2 inputs"):
        rules.Epsilon().relevance(call, jnp.ones(2))
    u, v = rules.Norm().relevance(call, jnp.array([4.0, 8.0]))
    np.testing.assert_allclose(np.asarray(u), [1.0, 6.0], rtol=1e-5)
    np.testing.assert_allclose(np.asarray(v), [3.0, 2.0], rtol=1e-5)


# ---------------------------------------------------------------- docs/methods.md: your own rule


def test_documented_custom_rule_example_runs_and_conserves(capsys, monkeypatch):
    """docs/methods.md's worked example of a custom rule, executed as written."""
    text = METHODS_PAGE.read_text()
    section = text[text.index("**Your own rule.**") :]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    module = types.ModuleType("documented_custom_rule")  # dataclasses look their module up
    monkeypatch.setitem(sys.modules, module.__name__, module)
    namespace = module.__dict__
    exec(compile(code, "docs/methods.md (Your own rule)", "exec"), namespace)
    relevance = np.asarray(namespace["relevance"])
    np.testing.assert_allclose(relevance.sum(axis=(1, 2, 3, 4)), [1.0, 1.0], rtol=1e-4)
    assert "[1. 1.]" in capsys.readouterr().out
    # Its rule is Epsilon without the bias: with zero biases the two agree.
    model, variables, clips = namespace["model"], namespace["variables"], namespace["clips"]
    no_bias = jax.tree_util.tree_map_with_path(
        lambda p, v: jnp.zeros_like(v) if p[-1].key == "bias" else v, variables
    )
    comp = namespace["comp"]
    a = lrp(model, comp)(no_bias, clips, jnp.array([0, 2]))
    b = lrp(model, composites.epsilon())(no_bias, clips, jnp.array([0, 2]))
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-8)


# ---------------------------------------------------------------- AttnLRP's rules


def _call(fn, xs, gates=(), out_axes=()):
    xs = tuple(jnp.asarray(x) for x in xs)
    return LayerCall(lambda v, p: fn(*v), xs, {}, fn(*xs), False, {}, out_axes, (), gates)


def test_attn_softmax_matches_lxt_formula():
    """R_x = x * (R - s * sum R) over the softmax axis (AttnLRP Prop. 3.1), -inf -> 0."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 5)).astype(np.float32)
    x[0, 1] = -np.inf  # a masked logit
    R = rng.standard_normal((3, 5)).astype(np.float32)
    s = np.exp(x - x.max(-1, keepdims=True))
    s /= s.sum(-1, keepdims=True)
    want = np.where(np.isneginf(x), 0.0, x) * (R - s * R.sum(-1, keepdims=True))
    call = _call(lambda v: jax.nn.softmax(v, -1), [x], out_axes=(1,))
    (got,) = rules.AttnSoftmax().relevance(call, R)
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-6)
    # Without the axes: the same where no probability is 0.
    (got,) = rules.AttnSoftmax().relevance(_call(lambda v: jax.nn.softmax(v, -1), [x]), R)
    np.testing.assert_allclose(np.asarray(got)[1:], want[1:], rtol=1e-4, atol=1e-6)


def test_uniform_matches_lxt_matmul_and_mul2():
    """R_a = a * (R / S(2y)) b^T, R_b = b * a^T (R / S(2y)) (lxt's matmul); an
    elementwise product splits R in halves (mul2); a gate held constant gets 0."""
    rng = np.random.default_rng(1)
    a, b = rng.standard_normal((4, 3)), rng.standard_normal((3, 2))
    R = rng.standard_normal((4, 2))
    norm = R / stab(2 * (a @ b), 1e-8)
    got = rules.Uniform().relevance(_call(jnp.matmul, [a, b]), jnp.asarray(R))
    np.testing.assert_allclose(np.asarray(got[0]), a * (norm @ b.T), rtol=1e-4)
    np.testing.assert_allclose(np.asarray(got[1]), b * (a.T @ norm), rtol=1e-4)
    u, g = rng.uniform(0.5, 2, (4, 3)), rng.uniform(0.1, 0.9, (4, 3))
    Ru = rng.standard_normal((4, 3))
    halves = rules.Uniform().relevance(_call(jnp.multiply, [u, g]), jnp.asarray(Ru))
    for half in halves:
        np.testing.assert_allclose(np.asarray(half), Ru / 2, rtol=1e-5)
    held = rules.Uniform(gate_constant=True).relevance(
        _call(jnp.multiply, [u, g], gates=(False, True)), jnp.asarray(Ru)
    )
    np.testing.assert_allclose(np.asarray(held[0]), Ru, rtol=1e-5)
    np.testing.assert_array_equal(np.asarray(held[1]), 0.0)


@settings(max_examples=25, deadline=None)
@given(arrays(np.float64, (3, 4), elements=floats(0.2, 3)),
       arrays(np.float64, (4, 2), elements=floats(0.2, 3)),
       arrays(np.float64, (3, 2), elements=floats(-2, 2)))  # fmt: skip
def test_uniform_conserves_relevance(a, b, R):
    """Away from y = 0, the factors' relevance sums to the product's (AttnLRP Prop. 3.3)."""
    got = rules.Uniform().relevance(_call(jnp.matmul, [a, b]), jnp.asarray(R))
    total = sum(float(np.sum(np.asarray(r))) for r in got)
    np.testing.assert_allclose(total, R.sum(), rtol=1e-4, atol=1e-5)


def test_uniform_gate_constant_without_a_gate_splits_uniformly():
    rng = np.random.default_rng(2)
    u, v, R = rng.uniform(0.5, 2, (2, 3)), rng.uniform(0.5, 2, (2, 3)), rng.normal(size=(2, 3))
    call = _call(jnp.multiply, [u, v], gates=(False, False))
    for half in rules.Uniform(gate_constant=True).relevance(call, jnp.asarray(R)):
        np.testing.assert_allclose(np.asarray(half), R / 2, rtol=1e-5)
