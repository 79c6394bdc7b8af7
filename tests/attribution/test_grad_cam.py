"""Grad-CAM on any model (private module ``_cam``): one small 3D CNN (conv with
bias, BatchNorm in inference, ReLU, a strided conv, ReLU, global mean, dense
head) written in Flax linen, Flax NNX, Equinox (channels-first per clip under
``jax.vmap``), Haiku and plain JAX gives the linen maps for the default layer
and for each layer named by its parameter path, and Captum's ``LayerGradCam``
on its PyTorch twin."""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import selrel_jax as sr
from selrel_jax.attribution import _cam, gradients
from selrel_jax.errors import OptionError

CLIPS = (2, 4, 8, 8, 3)
TARGET = jnp.array([0, 2])
EPS = 1e-5


@pytest.fixture(scope="module")
def weights():
    """The twins' weights, linen layouts: kernels (kt, kh, kw, in, out)."""
    rng = np.random.default_rng(0)

    def normal(*shape, scale=0.5):
        return (scale * rng.standard_normal(shape)).astype(np.float32)

    return {
        "c1": {"kernel": normal(3, 3, 3, 3, 4), "bias": normal(4, scale=0.1)},
        "bn": {"scale": rng.uniform(0.5, 1.5, 4).astype(np.float32), "bias": normal(4),
               "mean": normal(4, scale=0.2), "var": rng.uniform(0.5, 1.5, 4).astype(np.float32)},
        "c2": {"kernel": normal(3, 3, 3, 4, 5, scale=0.3), "bias": normal(5, scale=0.1)},
        "fc": {"kernel": normal(5, 3), "bias": normal(3, scale=0.1)},
    }  # fmt: skip


@pytest.fixture(scope="module")
def clips():
    return jnp.asarray(np.random.default_rng(1).normal(size=CLIPS), jnp.float32)


class LinenNet(nn.Module):
    @nn.compact
    def __call__(self, x):
        h = nn.Conv(4, (3, 3, 3), padding=1, name="c1")(x)
        h = nn.relu(nn.BatchNorm(use_running_average=True, epsilon=EPS, name="bn")(h))
        h = nn.relu(nn.Conv(5, (3, 3, 3), strides=2, padding=1, name="c2")(h))
        return nn.Dense(3, name="fc")(jnp.mean(h, axis=(1, 2, 3)))


def linen_case(w):
    bn = w["bn"]
    variables = {
        "params": {"c1": w["c1"], "c2": w["c2"], "fc": w["fc"],
                   "bn": {"scale": bn["scale"], "bias": bn["bias"]}},
        "batch_stats": {"bn": {"mean": bn["mean"], "var": bn["var"]}},
    }  # fmt: skip
    return LinenNet(), variables


def plain_apply(w):
    """The net as plain JAX closing over its weights (channels-last)."""
    bn = w["bn"]

    def conv(x, p, stride):
        y = jax.lax.conv_general_dilated(x, p["kernel"], (stride,) * 3, [(1, 1)] * 3,
                                         dimension_numbers=("NDHWC", "DHWIO", "NDHWC"))  # fmt: skip
        return y + p["bias"]

    def apply_fn(x):
        h = conv(x, w["c1"], 1)
        h = (h - bn["mean"]) * (bn["scale"] / jnp.sqrt(bn["var"] + EPS)) + bn["bias"]
        h = jax.nn.relu(conv(jax.nn.relu(h), w["c2"], 2))
        return jnp.mean(h, axis=(1, 2, 3)) @ w["fc"]["kernel"] + w["fc"]["bias"]

    return apply_fn


def equinox_case(w):
    """``(apply(params, clips), params, closure)``: an Equinox module called per
    clip, channels-first, under ``jax.vmap``, split with ``eqx.partition``."""
    eqx = pytest.importorskip("equinox")

    class Net(eqx.Module):
        c1: eqx.nn.Conv3d
        bn: eqx.nn.BatchNorm
        c2: eqx.nn.Conv3d
        fc: eqx.nn.Linear

        def __init__(self, key):
            k1, k2, k3 = jax.random.split(key, 3)
            self.c1 = eqx.nn.Conv3d(3, 4, 3, padding=1, key=k1)
            self.bn = eqx.nn.BatchNorm(4, "batch", eps=EPS, inference=True, mode="ema")
            self.c2 = eqx.nn.Conv3d(4, 5, 3, stride=2, padding=1, key=k2)
            self.fc = eqx.nn.Linear(5, 3, key=k3)

        def __call__(self, x, state):
            h, state = self.bn(self.c1(x), state)
            h = jax.nn.relu(self.c2(jax.nn.relu(h)))
            return self.fc(jnp.mean(h, axis=(1, 2, 3)))

    net, state = eqx.nn.make_with_state(Net)(jax.random.key(0))

    def conv_weights(p):
        return {"weight": jnp.asarray(np.transpose(p["kernel"], (4, 3, 0, 1, 2))),
                "bias": jnp.asarray(p["bias"]).reshape(-1, 1, 1, 1)}  # fmt: skip

    bn = w["bn"]
    net = eqx.tree_at(
        lambda m: (m.c1.weight, m.c1.bias, m.c2.weight, m.c2.bias, m.bn.weight, m.bn.bias,
                   m.fc.weight, m.fc.bias),
        net,
        (*conv_weights(w["c1"]).values(), *conv_weights(w["c2"]).values(),
         jnp.asarray(bn["scale"]), jnp.asarray(bn["bias"]), jnp.asarray(w["fc"]["kernel"].T),
         jnp.asarray(w["fc"]["bias"])),
    )  # fmt: skip
    state = state.set(net.bn.ema_state_index, (jnp.asarray(bn["mean"]), jnp.asarray(bn["var"])))
    params, static = eqx.partition(net, eqx.is_array)

    def apply(p, x):
        model = eqx.combine(p, static)
        return jax.vmap(lambda clip: model(clip, state))(jnp.moveaxis(x, -1, 1))

    return apply, params, lambda x: apply(params, x)


def haiku_case(w):
    """``(apply(params, clips), params, closure)`` of an ``hk.transform``ed net."""
    hk = pytest.importorskip("haiku")

    def forward(x, is_training=False):
        h = hk.Conv3D(4, 3, padding=[(1, 1)] * 3, name="c1")(x)
        h = hk.BatchNorm(True, True, 0.9, eps=EPS, name="bn")(h, is_training=is_training)
        h = hk.Conv3D(5, 3, stride=2, padding=[(1, 1)] * 3, name="c2")(jax.nn.relu(h))
        return hk.Linear(3, name="fc")(jnp.mean(jax.nn.relu(h), axis=(1, 2, 3)))

    net = hk.without_apply_rng(hk.transform_with_state(forward))
    _, state = net.init(jax.random.key(0), jnp.zeros(CLIPS), is_training=True)
    bn = w["bn"]
    params = {
        "c1": {"w": w["c1"]["kernel"], "b": w["c1"]["bias"]},
        "c2": {"w": w["c2"]["kernel"], "b": w["c2"]["bias"]},
        "bn": {"scale": bn["scale"].reshape(1, 1, 1, 1, 4),
               "offset": bn["bias"].reshape(1, 1, 1, 1, 4)},
        "fc": {"w": w["fc"]["kernel"], "b": w["fc"]["bias"]},
    }  # fmt: skip
    state = jax.tree.map(lambda a: a, state)
    for name, value in (("mean_ema", bn["mean"]), ("var_ema", bn["var"])):
        state[f"bn/~/{name}"] = {**state[f"bn/~/{name}"], "average": value.reshape(1, 1, 1, 1, 4)}

    def apply(p, x):
        return net.apply(p, state, x)[0]

    return apply, params, lambda x: apply(params, x)


def nnx_case(w):
    from flax import nnx

    class Net(nnx.Module):
        def __init__(self, rngs):
            self.c1 = nnx.Conv(3, 4, (3, 3, 3), padding=1, rngs=rngs)
            self.bn = nnx.BatchNorm(4, use_running_average=True, epsilon=EPS, rngs=rngs)
            self.c2 = nnx.Conv(4, 5, (3, 3, 3), strides=2, padding=1, rngs=rngs)
            self.fc = nnx.Linear(5, 3, rngs=rngs)

        def __call__(self, x):
            h = jax.nn.relu(self.c2(jax.nn.relu(self.bn(self.c1(x)))))
            return self.fc(jnp.mean(h, axis=(1, 2, 3)))

    net = Net(nnx.Rngs(0))
    for name in ("c1", "c2", "fc"):
        getattr(net, name).kernel.value = jnp.asarray(w[name]["kernel"])
        getattr(net, name).bias.value = jnp.asarray(w[name]["bias"])
    net.bn.scale.value, net.bn.bias.value = jnp.asarray(w["bn"]["scale"]), w["bn"]["bias"]
    net.bn.mean.value, net.bn.var.value = jnp.asarray(w["bn"]["mean"]), w["bn"]["var"]
    return net


@pytest.fixture(scope="module")
def linen_maps(weights, clips):
    """Linen Grad-CAM per layer (None: the default layer)."""
    model, variables = linen_case(weights)
    maps = {}
    for layer in (None, "c1", "c2"):
        cam = np.asarray(sr.explain(model, variables, clips, TARGET, "grad_cam", layer=layer))
        assert cam.shape == CLIPS and cam.max() > 0, layer
        maps[layer] = cam
    np.testing.assert_array_equal(maps[None], maps["c2"])
    return maps


def _assert_close(got, want, what=""):
    got, want = np.asarray(got), np.asarray(want)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * np.abs(want).max(), err_msg=what)


def test_twins_compute_the_same_logits(weights, clips):
    model, variables = linen_case(weights)
    want = model.apply(variables, clips)
    for name, apply_fn in _closures(weights).items():
        _assert_close(apply_fn(clips), want, name)


def _closures(w):
    return {"equinox": equinox_case(w)[2], "haiku": haiku_case(w)[2], "plain": plain_apply(w),
            "nnx": nnx_case(w)}  # fmt: skip


@pytest.mark.parametrize("layer", [None, "c1", "c2"])
@pytest.mark.parametrize("framework", ["equinox", "haiku", "nnx"])
def test_params_forms_equal_linen(weights, clips, linen_maps, framework, layer):
    """Each framework's own parameter path names the layer: Equinox ``c2.weight``,
    Haiku ``c2/w``, NNX ``c2.kernel`` are all the layer ``c2``."""
    if framework == "nnx":
        model, params = nnx_case(weights), None
    else:
        model, params, _ = (equinox_case if framework == "equinox" else haiku_case)(weights)
    got = sr.explain(model, params, clips, TARGET, "grad_cam", layer=layer)
    _assert_close(got, linen_maps[layer])


@pytest.mark.parametrize("framework", ["equinox", "haiku", "plain", "nnx"])
def test_closure_forms_equal_linen_for_the_default_layer(weights, clips, linen_maps, framework):
    apply_fn = _closures(weights)[framework]
    _assert_close(sr.explain(apply_fn, None, clips, TARGET, "grad_cam"), linen_maps[None])
    _assert_close(gradients.grad_cam(apply_fn, clips, TARGET), linen_maps[None])


def test_a_layer_name_in_the_closure_form_asks_for_the_params_form(weights, clips):
    apply_fn = plain_apply(weights)
    message = r"grad_cam layer 'c2': .* pass explain\(apply_fn, params, clips\)"
    with pytest.raises(OptionError, match=message):
        sr.explain(apply_fn, None, clips, TARGET, "grad_cam", layer="c2")
    with pytest.raises(OptionError, match=message):
        gradients.grad_cam(apply_fn, clips, TARGET, layer="c2")


def test_an_unknown_layer_lists_the_conv_layers(weights, clips):
    apply, params, _ = equinox_case(weights)
    with pytest.raises(OptionError, match=r"grad_cam layer 'c3' not found.*conv layers: c1, c2"):
        sr.explain(apply, params, clips, TARGET, "grad_cam", layer="c3")
    with pytest.raises(OptionError, match=r"grad_cam layer 'fc' not found.*: c1, c2"):
        sr.explain(apply, params, clips, TARGET, "grad_cam", layer="fc")


def test_equinox_params_form_composes_with_jit_and_vmap(weights, clips, linen_maps):
    apply, params, _ = equinox_case(weights)
    fn = sr.make_explainer(apply, "grad_cam", layer="c1")
    _assert_close(jax.jit(fn)(params, clips, TARGET), linen_maps["c1"])
    mapped = jax.jit(jax.vmap(fn, in_axes=(None, 0, 0)))(params, clips[:, None], TARGET[:, None])
    _assert_close(mapped[:, 0], linen_maps["c1"])


def _conv(x, kernel, bias=None):
    y = jax.lax.conv_general_dilated(x, kernel, (1, 1, 1), [(1, 1)] * 3,
                                     dimension_numbers=("NDHWC", "DHWIO", "NDHWC"))  # fmt: skip
    return y if bias is None else y + bias


def test_a_layer_run_twice_or_read_before_its_bias_is_refused(weights, clips):
    w1 = weights["c1"]

    def shared(p, x):  # one kernel, two convolutions
        h = jax.nn.relu(_conv(x, p["conv"]["kernel"], p["conv"]["bias"]))
        h = _conv(h[..., :3], p["conv"]["kernel"], p["conv"]["bias"])
        return jnp.mean(h, axis=(1, 2, 3))[:, :3]

    params = {"conv": w1}
    with pytest.raises(OptionError, match="grad_cam's default layer 'conv' runs 2 convolutions"):
        sr.explain(shared, params, clips, TARGET, "grad_cam")

    def split(p, x):  # the conv output read by its bias add and by the head
        y = _conv(x, p["conv"]["kernel"])
        h = jax.nn.relu(y + p["conv"]["bias"]) + 0.5 * y
        return jnp.mean(h, axis=(1, 2, 3))[:, :3]

    refused = r"layer 'conv' cannot be used: .* read more than once before its bias add"
    with pytest.raises(OptionError, match=refused):
        sr.explain(split, params, clips, TARGET, "grad_cam", layer="conv")
    with pytest.raises(OptionError, match="grad_cam's default " + refused):
        sr.explain(split, params, clips, TARGET, "grad_cam")


def test_the_activation_is_taken_after_the_bias_in_any_layout(weights, clips):
    """A channels-first conv whose output is transposed and reshaped before its
    bias add: A is the value after the bias, as the channels-last conv's."""
    w1 = weights["c1"]

    def channels_last(p, x):
        return jnp.mean(jax.nn.relu(_conv(x, p["c"]["kernel"], p["c"]["bias"])), (1, 2, 3))

    def channels_first(p, x):
        y = jax.lax.conv_general_dilated(
            jnp.moveaxis(x, -1, 1), jnp.transpose(p["c"]["kernel"], (4, 3, 0, 1, 2)),
            (1, 1, 1), [(1, 1)] * 3)  # fmt: skip
        y = jnp.moveaxis(y, 1, -1)[:, None]  # (N, 1, T, H, W, C)
        y = (y + p["c"]["bias"])[:, 0]
        return jnp.mean(jax.nn.relu(y), axis=(1, 2, 3))

    params = {"c": w1}
    want = sr.explain(channels_last, params, clips, TARGET, "grad_cam", layer="c")
    assert np.asarray(want).max() > 0
    _assert_close(sr.explain(channels_first, params, clips, TARGET, "grad_cam", layer="c"), want)


def test_equals_captum_layer_grad_cam_on_the_pytorch_twin(weights, clips, linen_maps):
    """Captum hooks the Conv3d module's output (after its bias). At the layer's
    resolution the maps are equal; upsampled, Captum's trilinear interpolation
    (PyTorch, align_corners=False) is JAX's half-pixel trilinear resize."""
    torch = pytest.importorskip("torch")
    captum_attr = pytest.importorskip("captum.attr")
    twin = _torch_twin(torch, weights)
    x = torch.from_numpy(np.moveaxis(np.asarray(clips), -1, 1).copy())
    model, variables = linen_case(weights)
    traced = _cam.trace_cam(functools.partial(model.apply, variables), clips)
    for name, layer in (("c1", twin.c1), ("c2", twin.c2)):
        cam = captum_attr.LayerGradCam(twin, layer)
        attr = cam.attribute(x, target=TARGET.tolist(), relu_attributions=True)
        ours = _cam.layer_cam(traced, _cam.choose(traced, name), clips, TARGET)
        _assert_close(ours, attr.detach().numpy()[:, 0])
        up = captum_attr.LayerAttribution.interpolate(attr, CLIPS[1:4], "trilinear")
        _assert_close(linen_maps[name].sum(-1), up.detach().numpy()[:, 0])


def _torch_twin(torch, w):
    tnn = torch.nn

    class Twin(tnn.Module):
        def __init__(self):
            super().__init__()
            self.c1 = tnn.Conv3d(3, 4, 3, padding=1)
            self.bn = tnn.BatchNorm3d(4, eps=EPS)
            self.c2 = tnn.Conv3d(4, 5, 3, stride=2, padding=1)
            self.fc = tnn.Linear(5, 3)

        def forward(self, x):
            h = torch.relu(self.c2(torch.relu(self.bn(self.c1(x)))))
            return self.fc(h.mean(dim=(2, 3, 4)))

    twin = Twin().eval()

    def tensor(a):
        return torch.from_numpy(np.ascontiguousarray(a, np.float32))

    with torch.no_grad():
        for name in ("c1", "c2"):
            kernel = np.transpose(w[name]["kernel"], (4, 3, 0, 1, 2))
            getattr(twin, name).weight.copy_(tensor(kernel))
            getattr(twin, name).bias.copy_(tensor(w[name]["bias"]))
        twin.fc.weight.copy_(tensor(w["fc"]["kernel"].T))
        twin.fc.bias.copy_(tensor(w["fc"]["bias"]))
        bn = w["bn"]
        twin.bn.weight.copy_(tensor(bn["scale"]))
        twin.bn.bias.copy_(tensor(bn["bias"]))
        twin.bn.running_mean.copy_(tensor(bn["mean"]))
        twin.bn.running_var.copy_(tensor(bn["var"]))
    return twin
