"""selrel_jax._pool: max pooling whose derivative is elementwise where its windows
tile the input equals XLA's (select_and_scatter_add) exactly, ties included, and
a traced model still shows one reduce_window_max (what the LRP engine pools)."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from selrel_jax import _pool
from selrel_jax.layers import MaxPool
from tests.examples import examples


def _check(x: jax.Array, window, strides, padding, eager: bool = True) -> None:
    def want_fn(v):
        return nn.max_pool(v, window, strides, padding)

    def got_fn(v):
        return _pool.max_pool(v, window, strides, padding)

    g = jnp.asarray(np.random.default_rng(x.size).standard_normal(want_fn(x).shape), jnp.float32)

    def forward_and_gradient(fn, v):
        out, pull = jax.vjp(fn, v)
        return out, pull(g)[0]

    want = jax.jit(forward_and_gradient, static_argnums=0)(want_fn, x)
    got = jax.jit(forward_and_gradient, static_argnums=0)(got_fn, x)
    for got_value, want_value in zip(got, want, strict=True):
        np.testing.assert_array_equal(got_value, want_value)
    if eager:
        for got_value, want_value in zip(forward_and_gradient(got_fn, x), want, strict=True):
            np.testing.assert_array_equal(got_value, want_value)


CASES = [
    ((2, 4, 6, 6, 3), (2, 2, 2), "VALID"),
    ((1, 5, 7, 7, 2), (2, 2, 2), "VALID"),  # a remainder in no window
    ((1, 2, 7, 7, 4), (2, 2, 2), ((0, 0), (1, 1), (1, 1))),  # C3D's pool5
    ((1, 4, 8, 8, 2), (1, 2, 2), "SAME"),
    ((2, 6, 6, 3), (3, 3), "VALID"),
    ((3, 6, 6, 3), (2, 3), ((1, 0), (0, 2))),
]


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize(("shape", "window", "padding"), CASES)
def test_tiled_windows_equal_xla_forward_and_gradient(shape, window, padding, ties):
    x = np.random.default_rng(len(shape)).standard_normal(shape).astype(np.float32)
    if ties:  # ReLU outputs: whole windows of zeros and repeated values
        x = np.maximum(np.round(x), 0)
    _check(jnp.asarray(x), window, window, padding)


@settings(max_examples=examples(25), deadline=None)
@given(
    window=st.lists(st.integers(1, 3), min_size=3, max_size=3),
    extra=st.lists(st.integers(0, 4), min_size=3, max_size=3),
    pad=st.lists(st.integers(0, 1), min_size=3, max_size=3),
    levels=st.integers(1, 4),
    seed=st.integers(0, 2**16),
)
def test_tiled_gradient_property(window, extra, pad, levels, seed):
    """Any tiling 3D window, padding below the window, quantised values (ties)."""
    shape = (1, *(w + e for w, e in zip(window, extra, strict=True)), 2)
    padding = tuple((min(p, w - 1), 0) for p, w in zip(pad, window, strict=True))
    values = np.random.default_rng(seed).integers(0, levels, shape).astype(np.float32)
    # jitted only: op by op, every draw's shape compiles each operation on its own
    # (eager == jit: the fixed cases above)
    _check(jnp.asarray(values), tuple(window), tuple(window), padding, eager=False)


def test_overlapping_windows_keep_xla_gradient():
    x = jnp.asarray(np.random.default_rng(0).standard_normal((1, 7, 7, 2)), jnp.float32)
    _check(x, (3, 3), (2, 2), "VALID")
    _check(x, (2, 2), (1, 1), "SAME")


def test_max_pool_layer_traces_as_one_reduce_window_max():
    x = jnp.ones((1, 4, 6, 6, 2))
    jaxpr = jax.make_jaxpr(lambda v: MaxPool((2, 2, 2)).apply({}, v))(x).jaxpr
    (call,) = jaxpr.eqns
    inner = [e.primitive.name for e in call.params["call_jaxpr"].jaxpr.eqns]
    assert inner == ["reduce_window_max"]
    backward = jax.make_jaxpr(jax.grad(lambda v: MaxPool((2, 2, 2)).apply({}, v).sum()))(x)
    names = {e.primitive.name for e in backward.jaxpr.eqns}
    assert "select_and_scatter_add" not in names
