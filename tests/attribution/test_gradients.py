"""Gradient family: gradient, gradient x input, integrated gradients, SmoothGrad,
Grad-CAM 3D, through ``explain`` with Flax models and plain callables."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import selrel_jax as sr
from selrel_jax.attribution import gradients
from selrel_jax.errors import SelrelError
from selrel_jax.layers import GlobalAvgPool


class SmoothNet(nn.Module):
    @nn.compact
    def __call__(self, x):
        h = jnp.tanh(nn.Conv(3, (2, 3, 3), padding=1, name="conv")(x))
        h = nn.softplus(nn.Conv(4, (1, 3, 3), strides=(1, 2, 2), name="conv2")(h))
        return nn.Dense(3, name="fc")(GlobalAvgPool()(h))


@pytest.fixture(scope="module")
def problem(normal_clips, random_variables):
    model = SmoothNet()
    x = normal_clips((2, 3, 6, 6, 2), 1)
    v = random_variables(model, x, 2)
    return model, v, x, jnp.array([2, 0])


def target_logit_grad(model, v, x, t):
    def f(xi, ti):
        return model.apply(v, xi[None])[0, ti]

    return jax.vmap(jax.grad(f))(x, t)


def test_gradient_and_gradient_x_input(problem):
    model, v, x, t = problem
    want = np.asarray(target_logit_grad(model, v, x, t))
    got = sr.explain(model, v, x, t, "gradient")
    assert got.dtype == jnp.float32 and got.shape == x.shape
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-7)
    gxi = sr.explain(model, v, x, t, "gradient_x_input")
    np.testing.assert_allclose(np.asarray(gxi), want * np.asarray(x), rtol=1e-5, atol=1e-7)
    # A plain callable (variables=None) gives the same.
    plain = sr.explain(lambda c: model.apply(v, c), None, x, t, "gradient")
    np.testing.assert_allclose(np.asarray(plain), want, rtol=1e-5, atol=1e-7)


class GentleNet(nn.Module):
    """Smooth and mildly curved (slopes in [1, 1.1]): a right Riemann sum with
    64 steps is then within 1% of the path integral."""

    @nn.compact
    def __call__(self, x):
        h = nn.Conv(4, (2, 3, 3), padding=1, name="conv")(x)
        h = h + 0.1 * jnp.tanh(h)
        h = nn.Conv(4, (1, 3, 3), strides=(1, 2, 2), name="conv2")(h)
        h = h + 0.1 * nn.softplus(h)
        return nn.Dense(3, name="fc")(GlobalAvgPool()(h))


@pytest.mark.parametrize("seed", [2, 3])
def test_integrated_gradients_completeness(normal_clips, random_variables, seed):
    model = GentleNet()
    x = normal_clips((2, 3, 6, 6, 2), seed)
    v = random_variables(model, x, seed + 10)
    base = 0.3 * normal_clips(x.shape, 3)
    for baseline in (None, base):
        b = jnp.zeros_like(x) if baseline is None else base
        change = model.apply(v, x) - model.apply(v, b)
        t = jnp.argmax(jnp.abs(change), axis=-1)  # the class whose logit moves most
        ig = sr.explain(model, v, x, t, "integrated_gradients", steps=64, baseline=baseline)
        total = np.asarray(ig.sum(axis=(1, 2, 3, 4)))
        np.testing.assert_allclose(total, np.asarray(change[jnp.arange(2), t]), rtol=1e-2)


def test_integrated_gradients_is_right_riemann_sum_any_chunking(problem):
    model, v, x, t = problem
    steps = 7
    grads = [target_logit_grad(model, v, x * (i / steps), t) for i in range(1, steps + 1)]
    want = np.asarray(x * sum(grads) / steps)
    for chunk in (None, 3, 7, 50):
        got = sr.explain(model, v, x, t, "integrated_gradients", steps=steps, chunk_size=chunk)
        np.testing.assert_allclose(np.asarray(got), want, rtol=1e-4, atol=1e-6)


def test_smoothgrad_is_seeded_and_batch_independent(problem):
    """The documented noise, drawn by hand: sample i is normal(fold_in(key, i))
    of one clip's shape, scaled by noise_level * (max - min) of each clip. The
    key is a JAX key (typed or raw data, traced under jit) or an int n for key(n)."""
    model, v, x, t = problem
    key = jax.random.key(3)
    span = np.asarray(x.max(axis=(1, 2, 3, 4)) - x.min(axis=(1, 2, 3, 4)))
    std = jnp.asarray(0.1 * span).reshape(-1, 1, 1, 1, 1)
    noises = [jax.random.normal(jax.random.fold_in(key, i), x.shape[1:]) for i in range(4)]
    want = np.mean([np.asarray(target_logit_grad(model, v, x + std * n, t)) for n in noises], 0)
    a = sr.explain(model, v, x, t, "smoothgrad", samples=4, key=3)
    np.testing.assert_allclose(np.asarray(a), want, rtol=1e-4, atol=1e-6)
    for same in (key, jax.random.key_data(key)):
        got = sr.explain(model, v, x, t, "smoothgrad", samples=4, key=same)
        np.testing.assert_allclose(np.asarray(got), np.asarray(a), rtol=1e-6, atol=1e-9)
    c = sr.explain(model, v, x, t, "smoothgrad", samples=4, key=4)
    assert np.abs(np.asarray(a) - np.asarray(c)).max() > 1e-3 * np.abs(want).max()
    fn = jax.jit(sr.make_explainer(model, "smoothgrad", samples=4, key=3))
    single = fn(v, x[1:], t[1:])
    np.testing.assert_allclose(np.asarray(single), want[1:], rtol=1e-4, atol=1e-6)
    zero_noise = sr.explain(model, v, x, t, "smoothgrad", samples=2, noise_level=0.0)
    want = np.asarray(target_logit_grad(model, v, x, t))
    np.testing.assert_allclose(np.asarray(zero_noise), want, rtol=1e-5, atol=1e-7)


def test_smoothgrad_statistics_on_quadratic_model(normal_clips):
    """f_c(x) = sum w_c x^2: the expected noisy gradient is 2 w_c x exactly."""
    x = normal_clips((1, 2, 3, 3, 2), 5)
    w = jnp.asarray(np.random.default_rng(6).normal(size=(3, *x.shape[1:])), jnp.float32)

    def apply_fn(c):
        return jnp.einsum("nthwc,kthwc->nk", c**2, w)

    n = 400
    got = np.asarray(sr.explain(apply_fn, None, x, jnp.array([1]), "smoothgrad", samples=n,
                                noise_level=0.2, key=0))  # fmt: skip
    sigma = 0.2 * float(x.max() - x.min())
    want = np.asarray(2 * w[1] * x[0])
    err = np.abs(got[0] - want) / (2 * np.abs(np.asarray(w[1])) * sigma / np.sqrt(n))
    assert err.mean() < 1.2 and err.max() < 4.5, (err.mean(), err.max())  # |N(0,1)| mean 0.8


def trilinear_half_pixel(a, size):
    """Resize (t, h, w) -> size, half-pixel centres, edges clamped (PyTorch
    trilinear with align_corners=False)."""
    out = np.asarray(a, np.float64)
    for axis, n_out in enumerate(size):
        n_in = out.shape[axis]
        src = np.clip((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0, n_in - 1)
        lo = np.floor(src).astype(int)
        hi = np.minimum(lo + 1, n_in - 1)
        frac = src - lo
        shape = [1] * out.ndim
        shape[axis] = n_out
        out = np.take(out, lo, axis) * (1 - frac.reshape(shape)) + np.take(
            out, hi, axis
        ) * frac.reshape(shape)
    return out


class CamNet(nn.Module):
    @nn.compact
    def __call__(self, x):
        h = nn.Conv(4, (3, 3, 3), strides=(2, 2, 2), padding=1, name="conv")(x)
        return nn.Dense(3, name="fc")(GlobalAvgPool()(nn.relu(h)))


def test_grad_cam_equals_hand_computation(normal_clips, random_variables):
    model = CamNet()
    x = normal_clips((2, 4, 6, 6, 3), 7)
    v = random_variables(model, x, 8)
    t = jnp.array([0, 2])
    got = np.asarray(sr.explain(model, v, x, t, "grad_cam"))  # default: last conv = "conv"
    conv = nn.Conv(4, (3, 3, 3), strides=(2, 2, 2), padding=1)
    A = np.asarray(conv.apply({"params": v["params"]["conv"]}, x), np.float64)  # (2,2,3,3,4)
    W = np.asarray(v["params"]["fc"]["kernel"], np.float64)
    positions = np.prod(A.shape[1:4])
    for n in range(2):
        grad = (A[n] > 0) * W[:, int(t[n])] / positions  # d logit / dA through relu + mean
        weights = grad.mean(axis=(0, 1, 2))
        cam = np.maximum((A[n] * weights).sum(-1), 0)
        want = trilinear_half_pixel(cam, x.shape[1:4])
        assert want.max() > 0
        np.testing.assert_allclose(got[n].sum(-1), want, rtol=1e-4, atol=1e-6 * want.max())
        np.testing.assert_allclose(got[n], np.broadcast_to(want[..., None] / 3, x.shape[1:]),
                                   rtol=1e-4, atol=1e-6 * want.max())  # fmt: skip
    plain = sr.explain(lambda c: model.apply(v, c), None, x, t, "grad_cam")
    np.testing.assert_allclose(np.asarray(plain), got, rtol=1e-6, atol=1e-9)
    # Called directly, a closure over a linen model still names its modules.
    direct = gradients.grad_cam(lambda c: model.apply(v, c), x, t, layer="conv")
    np.testing.assert_allclose(np.asarray(direct), got, rtol=1e-6, atol=1e-9)


def test_grad_cam_bad_layer_and_jit_vmap(normal_clips, random_variables):
    model = CamNet()
    x = normal_clips((2, 2, 4, 4, 3), 9)
    v = random_variables(model, x, 10)
    with pytest.raises(SelrelError, match="not found"):
        sr.explain(model, v, x, None, "grad_cam", layer="nope")
    with pytest.raises(SelrelError, match=r"\(N, T, H, W, C\)"):
        sr.explain(model, v, x, None, "grad_cam", layer="fc")
    fn = sr.make_explainer(model, "grad_cam")
    eager = np.asarray(fn(v, x, jnp.array([1, 2])))
    mapped = jax.jit(jax.vmap(fn, in_axes=(None, 0, 0)))(v, x[:, None], jnp.array([[1], [2]]))
    np.testing.assert_allclose(np.asarray(mapped)[:, 0], eager, rtol=1e-5, atol=1e-7)


def test_gradient_methods_accept_nnx_model(normal_clips):
    from flax import nnx

    class Net(nnx.Module):
        def __init__(self, rngs):
            self.conv = nnx.Conv(2, 3, (1, 3, 3), rngs=rngs)
            self.fc = nnx.Linear(3, 4, rngs=rngs)

        def __call__(self, x):
            return self.fc(jnp.tanh(self.conv(x)).mean(axis=(1, 2, 3)))

    net = Net(nnx.Rngs(0))
    x = normal_clips((2, 2, 4, 4, 2), 11)
    t = jnp.array([3, 1])
    want = jax.vmap(jax.grad(lambda xi, ti: net(xi[None])[0, ti]))(x, t)
    got = sr.explain(net, None, x, t, "gradient")
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-7)
    ig = sr.explain(net, None, x, t, "integrated_gradients", steps=4)
    grad = jax.vmap(jax.grad(lambda xi, ti: net(xi[None])[0, ti]))
    want = x * sum(grad(x * (i / 4), t) for i in range(1, 5)) / 4
    np.testing.assert_allclose(np.asarray(ig), np.asarray(want), rtol=1e-4, atol=1e-6)
