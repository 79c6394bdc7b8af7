"""The twin (``twin.py``) in every JAX framework ``selrel_jax.explain`` takes, each
with the twin's weights and in each of its forms (not a test module).

:func:`build` returns ``{form: Form(model, variables, logits)}``: ``explain(model,
variables, clips, ...)`` and ``logits(clips)``, the framework's own forward pass.
Forms: ``closure`` (``model`` a ``lambda clips: ...``, ``variables`` None) and,
where the framework has a params pytree, ``params`` (``apply_fn(params, clips)``
or the linen model with its variables); NNX: ``module`` (``explain(module, None)``)
and ``state`` (``explain(module, nnx.state(module))``).

Penzai has no conv, BatchNorm or pooling layers: those are plain jnp/lax inside
penzai layers (:class:`PzConv`, :class:`PzBatchNorm`, :class:`PzPool`,
:class:`PzMean`); the biases, ReLU, residual, dropout and dense head are penzai's
(``pz.nn.AddBias``, ``Elementwise``, ``Residual``, ``DisabledDropout``, ``Linear``);
the BatchNorm statistics are ``pz.Parameter``s, so ``pz.unbind_params`` puts them in
the params pytree of the functional form.
Haiku has no inference-mode dropout module (``hk.dropout`` is training-only), nor
has plain JAX: both leave it out.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import equinox as eqx
import flax.linen as nn
import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax import lax
from penzai import pz

import selrel_jax as sr
from tests.attribution.conformance.twin import CLASSES, EPS, OPTIONS, TARGET

WINDOW = (1, 2, 2)
PAD = ((1, 1),) * 3


class Form(NamedTuple):
    model: Any
    variables: Any
    logits: Any


# ---------------------------------------------------------------- Flax linen
class LinenNet(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.Conv(4, (3, 3, 3), padding=1, name="conv1")(x)
        x = nn.BatchNorm(use_running_average=True, epsilon=EPS, name="bn")(x)
        x = nn.max_pool(nn.relu(x), WINDOW, WINDOW)
        x = x + nn.relu(nn.Conv(4, (3, 3, 3), padding=1, name="conv2")(x))
        x = nn.avg_pool(nn.Dropout(0.5, deterministic=True)(x), WINDOW, WINDOW)
        return nn.Dense(CLASSES, name="fc")(jnp.mean(x, axis=(1, 2, 3)))


def linen(w):
    model = LinenNet()
    bn = w["bn"]
    params = {k: w[k] for k in ("conv1", "conv2", "fc")}
    variables = jax.tree.map(jnp.asarray, {
        "params": {**params, "bn": {"scale": bn["scale"], "bias": bn["bias"]}},
        "batch_stats": {"bn": {"mean": bn["mean"], "var": bn["var"]}},
    })  # fmt: skip

    def logits(x):
        return model.apply(variables, x)

    return {"closure": Form(logits, None, logits), "params": Form(model, variables, logits)}


# ---------------------------------------------------------------- Flax NNX
class NnxNet(nnx.Module):
    def __init__(self, rngs):
        self.conv1 = nnx.Conv(3, 4, (3, 3, 3), padding=1, rngs=rngs)
        self.bn = nnx.BatchNorm(4, use_running_average=True, epsilon=EPS, rngs=rngs)
        self.conv2 = nnx.Conv(4, 4, (3, 3, 3), padding=1, rngs=rngs)
        self.dropout = nnx.Dropout(0.5, deterministic=True)
        self.fc = nnx.Linear(4, CLASSES, rngs=rngs)

    def __call__(self, x):
        x = nnx.max_pool(jax.nn.relu(self.bn(self.conv1(x))), WINDOW, WINDOW)
        x = x + jax.nn.relu(self.conv2(x))
        x = nnx.avg_pool(self.dropout(x), WINDOW, WINDOW)
        return self.fc(jnp.mean(x, axis=(1, 2, 3)))


def nnx_(w):
    net = NnxNet(nnx.Rngs(0))
    for name in ("conv1", "conv2", "fc", "bn"):
        for leaf, value in w[name].items():
            getattr(getattr(net, name), leaf).value = jnp.asarray(value)

    def logits(x):
        return net(x)

    return {
        "closure": Form(lambda x: net(x), None, logits),
        "module": Form(net, None, logits),
        "state": Form(net, nnx.state(net), logits),
    }


# ---------------------------------------------------------------- Haiku
def _haiku_forward(x, is_training=False):
    """Training mode only at init (a haiku BatchNorm creates its statistics there)."""
    conv = dict(output_channels=4, kernel_shape=3, padding=PAD)
    x = hk.Conv3D(**conv, name="conv1")(x)
    x = hk.BatchNorm(True, True, 0.9, eps=EPS, name="bn")(x, is_training=is_training)
    x = hk.max_pool(jax.nn.relu(x), (1, *WINDOW, 1), (1, *WINDOW, 1), "VALID")
    x = x + jax.nn.relu(hk.Conv3D(**conv, name="conv2")(x))
    x = hk.avg_pool(x, (1, *WINDOW, 1), (1, *WINDOW, 1), "VALID")
    return hk.Linear(CLASSES, name="fc")(jnp.mean(x, axis=(1, 2, 3)))


def _haiku_variables(w, params, state):
    bn, shape = w["bn"], params["bn"]["scale"].shape
    params = {k: {"w": w[k]["kernel"], "b": w[k]["bias"]} for k in ("conv1", "conv2", "fc")}
    params["bn"] = {"scale": bn["scale"].reshape(shape), "offset": bn["bias"].reshape(shape)}
    state = jax.tree.map(np.asarray, state)
    for stat in ("mean", "var"):
        ema = state[f"bn/~/{stat}_ema"]
        ema["average"] = ema["hidden"] = bn[stat].reshape(ema["average"].shape)
    return jax.tree.map(jnp.asarray, {"params": params, "state": state})


def haiku(w):
    fn = hk.without_apply_rng(hk.transform_with_state(_haiku_forward))
    variables = _haiku_variables(w, *fn.init(jax.random.key(0), jnp.zeros((2, 4, 8, 8, 3)), True))

    def apply_fn(ps, x):
        return fn.apply(ps["params"], ps["state"], x)[0]

    def logits(x):
        return apply_fn(variables, x)

    return {"closure": Form(logits, None, logits), "params": Form(apply_fn, variables, logits)}


# ---------------------------------------------------------------- Equinox
class EqxNet(eqx.Module):
    """One clip (T, H, W, C) -> logits (5,); channels first inside."""

    conv1: eqx.nn.Conv3d
    bn: eqx.nn.BatchNorm
    pool1: eqx.nn.MaxPool3d
    conv2: eqx.nn.Conv3d
    dropout: eqx.nn.Dropout
    pool2: eqx.nn.AvgPool3d
    fc: eqx.nn.Linear

    def __init__(self, key):
        k1, k2, k3 = jax.random.split(key, 3)
        self.conv1 = eqx.nn.Conv3d(3, 4, 3, padding=1, key=k1)
        self.bn = eqx.nn.BatchNorm(4, "batch", eps=EPS, inference=True, mode="ema")
        self.pool1 = eqx.nn.MaxPool3d(WINDOW, WINDOW)
        self.conv2 = eqx.nn.Conv3d(4, 4, 3, padding=1, key=k2)
        self.dropout = eqx.nn.Dropout(0.5, inference=True)
        self.pool2 = eqx.nn.AvgPool3d(WINDOW, WINDOW)
        self.fc = eqx.nn.Linear(4, CLASSES, key=k3)

    def __call__(self, x, state):
        x, _ = self.bn(self.conv1(jnp.transpose(x, (3, 0, 1, 2))), state)
        x = self.pool1(jax.nn.relu(x))
        x = x + jax.nn.relu(self.conv2(x))
        return self.fc(jnp.mean(self.pool2(self.dropout(x)), axis=(1, 2, 3)))


def _eqx_load(model, state, w):
    def conv(k):
        return w[k]["kernel"].transpose(4, 3, 0, 1, 2), w[k]["bias"].reshape(-1, 1, 1, 1)

    leaves = (*conv("conv1"), *conv("conv2"), w["fc"]["kernel"].T, w["fc"]["bias"],
              w["bn"]["scale"], w["bn"]["bias"])  # fmt: skip
    model = eqx.tree_at(
        lambda m: (m.conv1.weight, m.conv1.bias, m.conv2.weight, m.conv2.bias,
                   m.fc.weight, m.fc.bias, m.bn.weight, m.bn.bias),
        model, tuple(jnp.asarray(v) for v in leaves),
    )  # fmt: skip
    stats = (jnp.asarray(w["bn"]["mean"]), jnp.asarray(w["bn"]["var"]))
    return model, state.set(model.bn.ema_state_index, stats)


def equinox(w):
    model, state = _eqx_load(*eqx.nn.make_with_state(EqxNet)(jax.random.key(0)), w)
    params, static = eqx.partition(model, eqx.is_array)

    def apply_fn(ps, x):
        net = eqx.combine(ps["model"], static)
        return jax.vmap(net, in_axes=(0, None), axis_name="batch")(x, ps["state"])

    variables = {"model": params, "state": state}

    def logits(x):
        return apply_fn(variables, x)

    return {"closure": Form(logits, None, logits), "params": Form(apply_fn, variables, logits)}


# ---------------------------------------------------------------- Penzai
AXES = ("batch", "t", "h", "w", "c")
SPATIAL = ("t", "h", "w", "c")


def _per_clip(fn, x):
    """``fn`` on each clip's (T, H, W, C) array, mapped over the named batch axis."""
    return pz.nx.nmap(fn)(x.untag(*SPATIAL)).tag(*SPATIAL)


@pz.pytree_dataclass
class PzConv(pz.nn.Layer):
    """Conv3d without bias (penzai has no conv): lax.conv_general_dilated per clip."""

    kernel: pz.nn.ParameterLike

    def __call__(self, x, **_side_inputs):
        def conv(v):
            dn = ("NDHWC", "DHWIO", "NDHWC")
            return lax.conv_general_dilated(v[None], self.kernel.value, (1, 1, 1), PAD,
                                            dimension_numbers=dn)[0]  # fmt: skip

        return _per_clip(conv, x)


@pz.pytree_dataclass
class PzBatchNorm(pz.nn.Layer):
    """Inference BatchNorm (penzai has none): named-array arithmetic over "c"."""

    scale: pz.nn.ParameterLike
    bias: pz.nn.ParameterLike
    mean: pz.nn.ParameterLike
    var: pz.nn.ParameterLike

    def __call__(self, x, **_side_inputs):
        inv = pz.nx.nmap(lax.rsqrt)(self.var.value + EPS)
        return (x - self.mean.value) * inv * self.scale.value + self.bias.value


@pz.pytree_dataclass
class PzPool(pz.nn.Layer):
    """(1, 2, 2) max or average pooling (penzai has none): lax.reduce_window per clip."""

    kind: str = dataclasses.field(metadata={"pytree_node": False})

    def __call__(self, x, **_side_inputs):
        def pool(v):
            init, op = (-jnp.inf, lax.max) if self.kind == "max" else (0.0, lax.add)
            out = lax.reduce_window(v, init, op, (*WINDOW, 1), (*WINDOW, 1), "VALID")
            return out if self.kind == "max" else out / np.prod(WINDOW)

        return _per_clip(pool, x)


@pz.pytree_dataclass
class PzMean(pz.nn.Layer):
    """Global mean over T, H, W (jnp.mean per clip and channel)."""

    def __call__(self, x, **_side_inputs):
        return pz.nx.nmap(jnp.mean)(x.untag("t", "h", "w"))


def _named(label, value, *axes):
    return pz.Parameter(value=pz.nx.wrap(jnp.asarray(value)).tag(*axes), label=label)


def _penzai_conv(w, name):
    kernel = pz.Parameter(value=jnp.asarray(w[name]["kernel"]), label=f"{name}.kernel")
    bias = _named(f"{name}.bias", w[name]["bias"], "c")
    return [PzConv(kernel), pz.nn.AddBias(bias=bias, new_axis_names=())]


def penzai_net(w):
    stats = ("scale", "bias", "mean", "var")
    bn = PzBatchNorm(*(_named(f"bn.{k}", w["bn"][k], "c") for k in stats))
    relu = pz.nn.Elementwise(jax.nn.relu)
    branch = pz.nn.Sequential([*_penzai_conv(w, "conv2"), relu])
    fc = pz.nn.Linear(weights=_named("fc.weights", w["fc"]["kernel"], "c", "classes"),
                      in_axis_names=("c",), out_axis_names=("classes",))  # fmt: skip
    fc_bias = pz.nn.AddBias(bias=_named("fc.bias", w["fc"]["bias"], "classes"), new_axis_names=())
    return pz.nn.Sequential([
        *_penzai_conv(w, "conv1"), bn, relu, PzPool("max"), pz.nn.Residual(branch),
        pz.nn.DisabledDropout(drop_rate=0.5, share_across_axes=()), PzPool("avg"), PzMean(),
        fc, fc_bias,
    ])  # fmt: skip


def penzai(w):
    net = penzai_net(w)
    unbound, params = pz.unbind_params(net, freeze=True)

    def run(model, x):
        return model(pz.nx.wrap(x).tag(*AXES)).unwrap("batch", "classes")

    def apply_fn(ps, x):
        return run(pz.bind_variables(unbound, ps), x)

    def logits(x):
        return run(net, x)

    return {"closure": Form(logits, None, logits), "params": Form(apply_fn, params, logits)}


# ---------------------------------------------------------------- plain JAX
def _conv(x, p):
    """A conv of clips (N, T, H, W, C) or, per clip, of one (T, H, W, C), + bias."""
    v = x if x.ndim == 5 else x[None]
    dn = ("NDHWC", "DHWIO", "NDHWC")
    out = lax.conv_general_dilated(v, p["kernel"], (1, 1, 1), PAD, dimension_numbers=dn)
    return (out if x.ndim == 5 else out[0]) + p["bias"]


def _pool(x, init, op):
    window = (1,) * (x.ndim - 4) + (*WINDOW, 1)
    return lax.reduce_window(x, init, op, window, window, "VALID")


def _bn(x, p):
    return (x - p["mean"]) * lax.rsqrt(p["var"] + EPS) * p["scale"] + p["bias"]


def jax_forward(p, x):
    """The net in plain JAX, for a batch (N, T, H, W, C) or one clip (T, H, W, C)."""
    x = _pool(jnp.maximum(_bn(_conv(x, p["conv1"]), p["bn"]), 0.0), -jnp.inf, lax.max)
    x = x + jnp.maximum(_conv(x, p["conv2"]), 0.0)
    x = _pool(x, 0.0, lax.add) / np.prod(WINDOW)
    h = jnp.mean(x, axis=tuple(range(x.ndim - 4, x.ndim - 1)))
    return h @ p["fc"]["kernel"] + p["fc"]["bias"]


def _plain(apply_fn, w):
    params = jax.tree.map(jnp.asarray, w)

    def logits(x):
        return apply_fn(params, x)

    return {"closure": Form(logits, None, logits), "params": Form(apply_fn, params, logits)}


def jax_batched(w):
    return _plain(jax_forward, w)


def jax_vmap(w):
    return _plain(jax.vmap(jax_forward, in_axes=(None, 0)), w)


BUILDERS = {
    "linen": linen,
    "nnx": nnx_,
    "haiku": haiku,
    "equinox": equinox,
    "penzai": penzai,
    "jax": jax_batched,
    "jax_vmap": jax_vmap,
}
FORMS = {name: ("closure", "params") for name in BUILDERS} | {"nnx": ("closure", "module", "state")}
CASES = [(fw, form) for fw, forms in FORMS.items() for form in forms]


def case_id(case):
    return "-".join(case)


def explain(form, clips, method):
    """``selrel_jax.explain`` of a framework's form for the twin's target, as NumPy."""
    target = jnp.asarray(TARGET)
    options = OPTIONS.get(method, {})
    return np.asarray(sr.explain(form.model, form.variables, clips, target, method, **options))
