"""selrel_jax._conv: the fast convolution forms are jax.lax.conv_general_dilated,
forward and gradients, and the zoo still shows the engine one convolution."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jax import lax

from selrel_jax import _conv

LAYOUTS = {1: ("NHC", "HIO", "NHC"), 2: ("NHWC", "HWIO", "NHWC"), 3: ("NDHWC", "DHWIO", "NDHWC")}

# (input shape, kernel shape, strides, padding): stride 1 and strided, padded,
# uneven padding, strides larger than the kernel, "SAME"/"VALID", 1/2/3D.
CASES = [
    ((2, 6, 9, 10, 3), (3, 7, 7, 3, 4), (1, 2, 2), ((1, 1), (3, 3), (3, 3))),
    ((2, 6, 9, 10, 3), (3, 3, 3, 3, 4), (2, 2, 2), ((1, 1), (1, 1), (1, 1))),
    ((2, 6, 9, 10, 3), (1, 1, 1, 3, 4), (2, 2, 2), ((0, 0), (0, 0), (0, 0))),
    ((2, 6, 9, 10, 3), (3, 3, 3, 3, 4), (1, 1, 1), ((1, 1), (1, 1), (1, 1))),
    ((2, 6, 9, 10, 3), (3, 1, 1, 3, 4), (2, 1, 1), ((1, 1), (0, 0), (0, 0))),
    ((2, 6, 9, 10, 3), (1, 3, 3, 3, 4), (1, 2, 2), ((0, 0), (1, 1), (1, 1))),
    ((1, 5, 8, 7, 2), (2, 3, 3, 2, 3), (1, 1, 1), ((1, 0), (2, 0), (0, 1))),
    ((1, 5, 8, 7, 2), (1, 3, 3, 2, 3), (1, 1, 1), ((1, 1), (1, 1), (1, 1))),
    ((2, 6, 9, 10, 3), (3, 3, 3, 3, 4), (1, 1, 1), "SAME"),
    ((2, 7, 9, 10, 3), (3, 3, 3, 3, 4), (2, 3, 2), "VALID"),
    ((1, 7, 9, 10, 2), (2, 2, 2, 2, 3), (3, 3, 3), ((0, 1), (1, 0), (2, 2))),
    ((2, 9, 10, 3), (3, 3, 3, 4), (2, 2), ((1, 1), (1, 1))),
    ((2, 9, 3), (3, 3, 4), (2,), ((1, 0),)),
    ((2, 9, 3), (3, 3, 4), (1,), ((1, 1),)),
]
# Grouped (feature_group_count) and depthwise convolutions, X3D's channel-separated
# ones among them: (input shape, kernel shape, strides, padding, groups).
GROUPED_CASES = [
    ((2, 6, 9, 10, 4), (3, 3, 3, 1, 4), (1, 1, 1), ((1, 1), (1, 1), (1, 1)), 4),
    ((2, 6, 9, 10, 4), (3, 3, 3, 1, 4), (1, 2, 2), ((1, 1), (1, 1), (1, 1)), 4),
    ((1, 5, 8, 7, 6), (3, 3, 3, 2, 9), (2, 2, 2), ((1, 1), (1, 1), (1, 1)), 3),
    ((2, 6, 9, 10, 3), (1, 3, 3, 1, 6), (1, 2, 2), ((0, 0), (1, 1), (1, 1)), 3),
]
# (1D groupings of every kind: test_grouped_fast_forms_equal_a_numpy_oracle.)


@pytest.fixture(autouse=True)
def _fast_forms_at_every_size(monkeypatch):
    """The cases here are tiny: test the fast forms, not the small-conv fallback."""
    monkeypatch.setattr(_conv, "MIN_FAST_ELEMENTS", 0)


def _relative_error(got: jax.Array, want: jax.Array) -> float:
    return float(jnp.max(jnp.abs(got - want)) / jnp.max(jnp.abs(want)))


@pytest.mark.parametrize("entry", [_conv.conv_general_dilated, _conv.fast_conv])
@pytest.mark.parametrize(
    ("x_shape", "w_shape", "strides", "padding", "groups"),
    [(*case, 1) for case in CASES] + GROUPED_CASES,
)
def test_equals_lax_forward_and_gradients(entry, x_shape, w_shape, strides, padding, groups):
    rng = np.random.default_rng(len(x_shape) + sum(w_shape))
    x = jnp.asarray(rng.standard_normal(x_shape), jnp.float32)
    w = jnp.asarray(rng.standard_normal(w_shape), jnp.float32)
    layout = LAYOUTS[len(x_shape) - 2]
    options = {"dimension_numbers": layout, "feature_group_count": groups}
    assert _conv.conv_config(x_shape, w_shape, strides, padding, **options) is not None

    def want_fn(a, b):
        return lax.conv_general_dilated(a, b, strides, padding, **options)

    def got_fn(a, b):
        return entry(a, b, strides, padding, **options)

    cotangent = jnp.asarray(rng.standard_normal(want_fn(x, w).shape), jnp.float32)
    want = _forward_and_gradients(want_fn, x, w, cotangent)
    got = _forward_and_gradients(got_fn, x, w, cotangent)
    assert got[0].shape == want[0].shape
    for name, got_value, want_value in zip(("output", "dx", "dw", "penalty"), got, want,
                                           strict=True):  # fmt: skip
        assert _relative_error(got_value, want_value) < 1e-5, name


def _forward_and_gradients(fn, x, w, cotangent):
    """``fn``'s output, its VJP for ``cotangent`` and the kernel gradient of the input
    gradient's squared norm (double backward, as a gradient penalty needs: the VJP is
    itself differentiable), in one jitted program: op by op, the fast forms' many
    small operations each compile on their own (8 s a case; eager: the test below)."""

    def everything(a, b, c):
        out, pull = jax.vjp(fn, a, b)
        dx, dw = pull(c)
        penalty = jax.grad(lambda k: jnp.sum(jax.vjp(lambda v: fn(v, k), a)[1](c)[0] ** 2))(b)
        return out, dx, dw, penalty

    return jax.jit(everything)(x, w, cotangent)


@pytest.mark.parametrize("entry", [_conv.conv_general_dilated, _conv.fast_conv])
def test_eager_equals_jit(entry):
    x_shape, w_shape, strides, padding = CASES[-2]
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal(x_shape), jnp.float32)
    w = jnp.asarray(rng.standard_normal(w_shape), jnp.float32)
    options = {"dimension_numbers": LAYOUTS[1]}

    def fn(a, b):
        return entry(a, b, strides, padding, **options)

    cotangent = jnp.asarray(rng.standard_normal(fn(x, w).shape), jnp.float32)
    out, pull = jax.vjp(fn, x, w)
    eager = (out, *pull(cotangent))
    for got, want in zip(eager, _forward_and_gradients(fn, x, w, cotangent)[:3], strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


@settings(max_examples=12, deadline=None)
@given(
    groups=st.integers(1, 4),
    per_group_in=st.integers(1, 3),
    per_group_out=st.integers(1, 3),
    kernel=st.integers(1, 4),
    stride=st.integers(1, 3),
    pad=st.tuples(st.integers(0, 2), st.integers(0, 2)),
    length=st.integers(4, 9),
)
def test_grouped_fast_forms_equal_a_numpy_oracle(
    groups, per_group_in, per_group_out, kernel, stride, pad, length
):
    """Any grouping: output, input gradient and kernel gradient of the fast forms equal
    per-group NumPy sums (each group a plain convolution of its own channels)."""
    rng = np.random.default_rng(groups * 100 + kernel * 10 + stride)
    x = rng.standard_normal((2, length, groups * per_group_in)).astype(np.float32)
    w = rng.standard_normal((kernel, per_group_in, groups * per_group_out)).astype(np.float32)
    padded = np.pad(x, ((0, 0), pad, (0, 0)))
    out_len = (padded.shape[1] - kernel) // stride + 1
    if out_len < 1:
        return
    want = np.zeros((2, out_len, w.shape[-1]), np.float64)
    for g in range(groups):
        xs = padded[..., g * per_group_in : (g + 1) * per_group_in]
        ws = w[..., g * per_group_out : (g + 1) * per_group_out]
        for o in range(out_len):
            window = xs[:, o * stride : o * stride + kernel]  # (N, K, I/G)
            want[:, o, g * per_group_out : (g + 1) * per_group_out] = np.einsum(
                "nki,kio->no", window, ws
            )
    cotangent = rng.standard_normal(want.shape).astype(np.float32)
    options = {"dimension_numbers": LAYOUTS[1], "feature_group_count": groups}
    got, dx, dw, _ = _forward_and_gradients(
        lambda a, b: _conv.fast_conv(a, b, (stride,), (pad,), **options), x, w, cotangent
    )
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    # The VJP is the adjoint: <conv(x), c> = <x, dx>, and linear in w likewise.
    total = float(np.sum(want * cotangent))
    assert np.isclose(float(np.sum(x * np.asarray(dx))), total, rtol=1e-3, atol=1e-3)
    assert np.isclose(float(np.sum(w * np.asarray(dw))), total, rtol=1e-3, atol=1e-3)


def test_other_convolutions_are_handed_to_lax():
    """Dilation, batch groups, feature groups that do not fit the channels and other
    layouts are lax's own convolution (no config)."""
    x, w = jnp.ones((1, 8, 8, 4)), jnp.ones((3, 3, 2, 4))
    assert _conv.conv_config(x.shape, w.shape, (1, 1), "SAME", None, (2, 2)) is None
    nhwc = {"dimension_numbers": LAYOUTS[2]}
    assert _conv.conv_config(x.shape, w.shape, (1, 1), "SAME", feature_group_count=2,
                             **nhwc).groups == 2  # fmt: skip
    for groups in (3, 4):  # 4 input channels in groups of 2: only 2 groups fit
        assert _conv.conv_config(x.shape, w.shape, (1, 1), "SAME", feature_group_count=groups,
                                 **nhwc) is None  # fmt: skip
    batch = _conv.conv_config((2, 8, 8, 4), (3, 3, 4, 4), (1, 1), "SAME", batch_group_count=2,
                              **nhwc)  # fmt: skip
    assert batch is None
    nchw = _conv.conv_config((1, 4, 8, 8), (4, 4, 3, 3), (1, 1), "SAME",
                             dimension_numbers=("NCHW", "OIHW", "NCHW"))  # fmt: skip
    assert nchw is None
    got = _conv.fast_conv(x, w, (1, 1), "SAME", rhs_dilation=(2, 2), feature_group_count=2,
                          dimension_numbers=LAYOUTS[2])  # fmt: skip
    want = lax.conv_general_dilated(
        x, w, (1, 1), "SAME", rhs_dilation=(2, 2), feature_group_count=2,
        dimension_numbers=LAYOUTS[2],
    )  # fmt: skip
    np.testing.assert_array_equal(got, want)


def test_model_conv_traces_as_one_primitive():
    """The zoo's convolution shows one conv_general_dilated inside its custom_vjp
    (what the LRP engine looks through); its derivative shows no lhs dilation."""
    x, w = jnp.ones((1, 4, 8, 8, 3)), jnp.ones((3, 3, 3, 3, 5))

    def fn(a):
        return _conv.conv_general_dilated(a, w, (2, 2, 2), ((1, 1),) * 3,
                                          dimension_numbers=LAYOUTS[3])  # fmt: skip

    primal = jax.make_jaxpr(fn)(x).jaxpr
    (call,) = primal.eqns
    inner = [e.primitive.name for e in call.params["call_jaxpr"].jaxpr.eqns]
    assert inner == ["conv_general_dilated"]
    backward = jax.make_jaxpr(lambda a: jax.vjp(fn, a)[1](jnp.ones((1, 2, 4, 4, 5))))(x)
    convs = [e for e in _all_eqns(backward.jaxpr) if e.primitive.name == "conv_general_dilated"]
    assert convs
    assert all(set(e.params["lhs_dilation"]) == {1} for e in convs)
    assert all(set(e.params["window_strides"]) == {1} for e in convs)


def _all_eqns(jaxpr):
    for eqn in jaxpr.eqns:
        yield eqn
        for value in eqn.params.values():
            inner = getattr(value, "jaxpr", None)
            if inner is not None and hasattr(inner, "eqns"):
                yield from _all_eqns(inner)
            elif hasattr(value, "eqns"):
                yield from _all_eqns(value)


@pytest.mark.parametrize("entry", [_conv.conv_general_dilated, _conv.fast_conv])
def test_a_non_finite_clip_leaves_the_other_clips_of_a_batch_alone(entry):
    """Each layer's kernel taps are tied to one element of its input (so XLA makes
    them when the layer runs); a NaN or inf there must not reach another clip."""
    x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 4, 6, 6, 3)), jnp.float32)
    w = jnp.asarray(np.random.default_rng(1).standard_normal((3, 3, 3, 3, 4)), jnp.float32)
    layout = LAYOUTS[3]

    def fn(a):
        return entry(a, w, (1, 1, 1), "SAME", dimension_numbers=layout)

    clean, pull_clean = jax.vjp(fn, x)
    g = jnp.ones_like(clean)
    for bad in (jnp.nan, jnp.inf):
        dirty = x.at[0, 0, 0, 0, 0].set(bad)
        out, pull = jax.jit(lambda a: jax.vjp(fn, a))(dirty)
        np.testing.assert_array_equal(out[1], clean[1])
        np.testing.assert_array_equal(pull(g)[0][1], pull_clean(g)[0][1])
        assert not np.all(np.isfinite(np.asarray(out[0])))


def test_small_convolutions_stay_lax_own(monkeypatch):
    """Below MIN_FAST_ELEMENTS (input and output) the model's convolution is lax's,
    derivative included; from it the derivative runs the fast forms (no lhs dilation)."""
    x, w = jnp.ones((1, 4, 8, 8, 3)), jnp.ones((3, 3, 3, 3, 5))
    largest = max(x.size, 1 * 2 * 4 * 4 * 5)

    def backward_convs():
        def fn(a):
            return _conv.conv_general_dilated(a, w, (2, 2, 2), ((1, 1),) * 3,
                                              dimension_numbers=LAYOUTS[3])  # fmt: skip

        jaxpr = jax.make_jaxpr(lambda a: jax.vjp(fn, a)[1](jnp.ones((1, 2, 4, 4, 5))))(x)
        return [e for e in _all_eqns(jaxpr.jaxpr) if e.primitive.name == "conv_general_dilated"]

    monkeypatch.setattr(_conv, "MIN_FAST_ELEMENTS", largest + 1)
    assert any(set(e.params["lhs_dilation"]) != {1} for e in backward_convs())
    monkeypatch.setattr(_conv, "MIN_FAST_ELEMENTS", largest)
    assert all(set(e.params["lhs_dilation"]) == {1} for e in backward_convs())
