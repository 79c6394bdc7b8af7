"""A tiny video ViT in Flax linen (``nn.MultiHeadDotProductAttention``), Flax NNX
(``nnx.MultiHeadAttention``), Equinox (``eqx.nn.MultiheadAttention``, per clip,
vmapped) and plain JAX (``jnp.einsum`` attention), and its PyTorch twin built
from lxt's explicit AttnLRP functions (``lxt.explicit.functional``): the same
weights, the same computation, so selrel_jax's ``lrp.attn`` / ``lrp.cp`` and
lxt's AttnLRP / CP-LRP can be compared on the input relevance (not a test module).

The net: a tubelet Conv3d embedding (2x4x4, stride = kernel), a learned
position embedding, ``BLOCKS`` pre-norm blocks (LayerNorm, two-head
self-attention, residual; LayerNorm, GELU MLP, residual), mean pool over the
tokens, LayerNorm and a dense head. Clips are NTHWC ``(1, 4, 16, 16, 3)``.
The attention scale is applied to the queries (as Flax does), so lxt's
relevance never meets a bare constant division.
"""

from __future__ import annotations

import equinox as eqx
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

CLIP = (1, 4, 16, 16, 3)
TUBELET = (2, 4, 4)
DIM, HEADS, HIDDEN, CLASSES, BLOCKS = 16, 2, 32, 5, 2
TOKENS = (CLIP[1] // 2) * (CLIP[2] // 4) * (CLIP[3] // 4)
EPS = 1e-5
TARGET = 3


def weights(seed: int = 0) -> dict:
    """The weights as NumPy arrays (JAX layouts: conv DHWIO, dense (in, out))."""
    rng = np.random.default_rng(seed)

    def normal(*shape, scale=0.3):
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    w = {"embed_kernel": normal(*TUBELET, CLIP[-1], DIM, scale=0.2), "embed_bias": normal(DIM),
         "pos": normal(TOKENS, DIM, scale=0.1), "head_kernel": normal(DIM, CLASSES),
         "head_bias": normal(CLASSES, scale=0.1), "norm_scale": 1 + normal(DIM, scale=0.1),
         "norm_bias": normal(DIM, scale=0.1)}  # fmt: skip
    for b in range(BLOCKS):
        for name, shape in (
            ("q", (DIM, DIM)),
            ("k", (DIM, DIM)),
            ("v", (DIM, DIM)),
            ("o", (DIM, DIM)),
            ("fc1", (DIM, HIDDEN)),
            ("fc2", (HIDDEN, DIM)),
        ):
            w[f"{b}_{name}_kernel"] = normal(*shape)
            w[f"{b}_{name}_bias"] = normal(shape[1], scale=0.1)
        for name in ("ln1", "ln2"):
            w[f"{b}_{name}_scale"] = 1 + normal(DIM, scale=0.1)
            w[f"{b}_{name}_bias"] = normal(DIM, scale=0.1)
    return w


def clips(seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(CLIP).astype(np.float32)


# ---------------------------------------------------------------- plain JAX


def _layer_norm(x, scale, bias):
    centred = x - jnp.mean(x, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(centred), axis=-1, keepdims=True)
    return centred * jax.lax.rsqrt(var + EPS) * scale + bias


def _attention(p, b, h):
    n, length, _ = h.shape
    split = (n, length, HEADS, DIM // HEADS)
    q = ((h @ p[f"{b}_q_kernel"] + p[f"{b}_q_bias"]) / np.sqrt(DIM // HEADS)).reshape(split)
    k = (h @ p[f"{b}_k_kernel"] + p[f"{b}_k_bias"]).reshape(split)
    v = (h @ p[f"{b}_v_kernel"] + p[f"{b}_v_bias"]).reshape(split)
    attn = jax.nn.softmax(jnp.einsum("nqhd,nkhd->nhqk", q, k), axis=-1)
    out = jnp.einsum("nhqk,nkhd->nqhd", attn, v).reshape(n, length, DIM)
    return out @ p[f"{b}_o_kernel"] + p[f"{b}_o_bias"]


def jax_apply(p: dict, x: jax.Array) -> jax.Array:
    """The ViT as ``apply_fn(params, clips)``, attention by ``jnp.einsum``."""
    h = jax.lax.conv_general_dilated(x, p["embed_kernel"], TUBELET, "VALID",
                                     dimension_numbers=("NDHWC", "DHWIO", "NDHWC"))  # fmt: skip
    h = (h + p["embed_bias"]).reshape(x.shape[0], TOKENS, DIM) + p["pos"]
    for b in range(BLOCKS):
        h = h + _attention(p, b, _layer_norm(h, p[f"{b}_ln1_scale"], p[f"{b}_ln1_bias"]))
        m = _layer_norm(h, p[f"{b}_ln2_scale"], p[f"{b}_ln2_bias"])
        m = jax.nn.gelu(m @ p[f"{b}_fc1_kernel"] + p[f"{b}_fc1_bias"], approximate=False)
        h = h + (m @ p[f"{b}_fc2_kernel"] + p[f"{b}_fc2_bias"])
    pooled = _layer_norm(jnp.mean(h, axis=1), p["norm_scale"], p["norm_bias"])
    return pooled @ p["head_kernel"] + p["head_bias"]


# ---------------------------------------------------------------- Flax linen


class LinenViT(nn.Module):
    @nn.compact
    def __call__(self, x):
        h = nn.Conv(DIM, TUBELET, strides=TUBELET, padding="VALID", name="embed")(x)
        pos = self.param("pos", nn.initializers.zeros, (TOKENS, DIM))
        h = h.reshape(x.shape[0], TOKENS, DIM) + pos
        for b in range(BLOCKS):
            a = nn.LayerNorm(epsilon=EPS, name=f"ln1_{b}")(h)
            h = h + nn.MultiHeadDotProductAttention(HEADS, qkv_features=DIM, name=f"attn_{b}")(a)
            m = nn.LayerNorm(epsilon=EPS, name=f"ln2_{b}")(h)
            m = nn.gelu(nn.Dense(HIDDEN, name=f"fc1_{b}")(m), approximate=False)
            h = h + nn.Dense(DIM, name=f"fc2_{b}")(m)
        pooled = nn.LayerNorm(epsilon=EPS, name="norm")(jnp.mean(h, axis=1))
        return nn.Dense(CLASSES, name="head")(pooled)


def _heads(w, b):
    """The attention's projections as (in, heads, head dim) / (heads, head dim, out)."""
    split = (HEADS, DIM // HEADS)
    out = {n: {"kernel": w[f"{b}_{n}_kernel"].reshape(DIM, *split),
               "bias": w[f"{b}_{n}_bias"].reshape(split)} for n in ("q", "k", "v")}  # fmt: skip
    out["o"] = {"kernel": w[f"{b}_o_kernel"].reshape(*split, DIM), "bias": w[f"{b}_o_bias"]}
    return out


def linen_variables(w: dict) -> dict:
    def dense(name):
        return {"kernel": w[f"{name}_kernel"], "bias": w[f"{name}_bias"]}

    def norm(name):
        return {"scale": w[f"{name}_scale"], "bias": w[f"{name}_bias"]}

    p = {"embed": dense("embed"), "pos": w["pos"], "norm": norm("norm"), "head": dense("head")}
    for b in range(BLOCKS):
        heads = _heads(w, b)
        p[f"attn_{b}"] = {"query": heads["q"], "key": heads["k"], "value": heads["v"],
                          "out": heads["o"]}  # fmt: skip
        p[f"ln1_{b}"], p[f"ln2_{b}"] = norm(f"{b}_ln1"), norm(f"{b}_ln2")
        p[f"fc1_{b}"], p[f"fc2_{b}"] = dense(f"{b}_fc1"), dense(f"{b}_fc2")
    return {"params": jax.tree.map(jnp.asarray, p)}


# ---------------------------------------------------------------- Flax NNX


class NnxViT(nnx.Module):
    def __init__(self, rngs):
        self.embed = nnx.Conv(CLIP[-1], DIM, TUBELET, strides=TUBELET, padding="VALID",
                              rngs=rngs)  # fmt: skip
        self.pos = nnx.Param(jnp.zeros((TOKENS, DIM)))
        self.blocks = nnx.List([_NnxBlock(rngs) for _ in range(BLOCKS)])
        self.norm = nnx.LayerNorm(DIM, epsilon=EPS, rngs=rngs)
        self.head = nnx.Linear(DIM, CLASSES, rngs=rngs)

    def __call__(self, x):
        h = self.embed(x).reshape(x.shape[0], TOKENS, DIM) + self.pos[...]
        for block in self.blocks:
            h = block(h)
        return self.head(self.norm(jnp.mean(h, axis=1)))


class _NnxBlock(nnx.Module):
    def __init__(self, rngs):
        self.ln1 = nnx.LayerNorm(DIM, epsilon=EPS, rngs=rngs)
        self.attn = nnx.MultiHeadAttention(HEADS, DIM, DIM, decode=False, rngs=rngs)
        self.ln2 = nnx.LayerNorm(DIM, epsilon=EPS, rngs=rngs)
        self.fc1 = nnx.Linear(DIM, HIDDEN, rngs=rngs)
        self.fc2 = nnx.Linear(HIDDEN, DIM, rngs=rngs)

    def __call__(self, h):
        h = h + self.attn(self.ln1(h))
        return h + self.fc2(nnx.gelu(self.fc1(self.ln2(h)), approximate=False))


def nnx_model(w: dict) -> NnxViT:
    net = NnxViT(nnx.Rngs(0))
    v = linen_variables(w)["params"]
    _set(net.embed, v["embed"])
    net.pos[...] = v["pos"]
    _set(net.norm, v["norm"])
    _set(net.head, v["head"])
    for b, block in enumerate(net.blocks):
        for name in ("ln1", "ln2", "fc1", "fc2"):
            _set(getattr(block, name), v[f"{name}_{b}"])
        for name in ("query", "key", "value", "out"):
            _set(getattr(block.attn, name), v[f"attn_{b}"][name])
    return net


def _set(module, values):
    for name, value in values.items():
        getattr(module, name)[...] = value


# ---------------------------------------------------------------- Equinox


class EqxViT(eqx.Module):
    """Per clip (T, H, W, C); Equinox's Conv3d is channels-first."""

    embed: eqx.nn.Conv3d
    pos: jax.Array
    ln1: list
    attn: list
    ln2: list
    fc1: list
    fc2: list
    norm: eqx.nn.LayerNorm
    head: eqx.nn.Linear

    def __init__(self, key):
        keys = iter(jax.random.split(key, 4 * BLOCKS + 2))
        self.embed = eqx.nn.Conv3d(CLIP[-1], DIM, TUBELET, TUBELET, key=next(keys))
        self.pos = jnp.zeros((TOKENS, DIM))
        self.ln1 = [eqx.nn.LayerNorm(DIM, EPS) for _ in range(BLOCKS)]
        self.ln2 = [eqx.nn.LayerNorm(DIM, EPS) for _ in range(BLOCKS)]
        self.attn = [eqx.nn.MultiheadAttention(HEADS, DIM, use_query_bias=True,
                                               use_key_bias=True, use_value_bias=True,
                                               use_output_bias=True, key=next(keys))
                     for _ in range(BLOCKS)]  # fmt: skip
        self.fc1 = [eqx.nn.Linear(DIM, HIDDEN, key=next(keys)) for _ in range(BLOCKS)]
        self.fc2 = [eqx.nn.Linear(HIDDEN, DIM, key=next(keys)) for _ in range(BLOCKS)]
        self.norm = eqx.nn.LayerNorm(DIM, EPS)
        self.head = eqx.nn.Linear(DIM, CLASSES, key=next(keys))

    def __call__(self, x):
        h = self.embed(jnp.moveaxis(x, -1, 0)).reshape(DIM, TOKENS).T + self.pos
        for b in range(BLOCKS):
            a = jax.vmap(self.ln1[b])(h)
            h = h + self.attn[b](a, a, a)
            m = jax.nn.gelu(jax.vmap(self.fc1[b])(jax.vmap(self.ln2[b])(h)), approximate=False)
            h = h + jax.vmap(self.fc2[b])(m)
        return self.head(self.norm(jnp.mean(h, axis=0)))


def eqx_model(w: dict) -> EqxViT:
    net = EqxViT(jax.random.key(0))
    a = {k: jnp.asarray(v) for k, v in w.items()}

    def linear(name):
        return a[f"{name}_kernel"].T, a[f"{name}_bias"]

    pairs = [(lambda n: n.embed.weight, jnp.transpose(a["embed_kernel"], (4, 3, 0, 1, 2))),
             (lambda n: n.embed.bias, a["embed_bias"].reshape(DIM, 1, 1, 1)),
             (lambda n: n.pos, a["pos"]), (lambda n: n.norm.weight, a["norm_scale"]),
             (lambda n: n.norm.bias, a["norm_bias"]), (lambda n: n.head.weight, linear("head")[0]),
             (lambda n: n.head.bias, linear("head")[1])]  # fmt: skip
    for b in range(BLOCKS):
        pairs += _eqx_block(a, b, linear)
    where = [p[0] for p in pairs]
    return eqx.tree_at(lambda n: [f(n) for f in where], net, [p[1] for p in pairs])


def _eqx_block(a, b, linear):
    projections = {"q": "query_proj", "k": "key_proj", "v": "value_proj", "o": "output_proj"}
    pairs = []
    for short, name in projections.items():
        weight, bias = linear(f"{b}_{short}")
        pairs += [(lambda n, b=b, name=name: getattr(n.attn[b], name).weight, weight),
                  (lambda n, b=b, name=name: getattr(n.attn[b], name).bias, bias)]  # fmt: skip
    for name in ("fc1", "fc2"):
        weight, bias = linear(f"{b}_{name}")
        pairs += [(lambda n, b=b, name=name: getattr(n, name)[b].weight, weight),
                  (lambda n, b=b, name=name: getattr(n, name)[b].bias, bias)]  # fmt: skip
    for name in ("ln1", "ln2"):
        pairs += [
            (lambda n, b=b, name=name: getattr(n, name)[b].weight, a[f"{b}_{name}_scale"]),
            (lambda n, b=b, name=name: getattr(n, name)[b].bias, a[f"{b}_{name}_bias"]),
        ]
    return pairs


def forms(w: dict) -> dict:
    """``{framework: (model, variables)}`` for ``selrel_jax.explain``."""
    net = eqx_model(w)
    params, static = eqx.partition(net, eqx.is_array)

    def eqx_apply(ps, x):
        return jax.vmap(eqx.combine(ps, static))(x)

    return {
        "linen": (LinenViT(), linen_variables(w)),
        "nnx": (nnx_model(w), None),
        "equinox": (eqx_apply, params),
        "jax": (jax_apply, jax.tree.map(jnp.asarray, w)),
    }


# ---------------------------------------------------------------- torch + lxt


def lxt_relevance(
    w: dict, x: np.ndarray, target: int = TARGET, cp: bool = False, dtype: str = "float64"
) -> tuple:
    """``(relevance NTHWC, logits)`` of lxt's AttnLRP (``cp``: CP-LRP, the softmax
    held constant) on the torch twin, seeded with the one-hot target; the
    embedding gets the Flat rule (epsilon_plus_flat's first layer)."""
    import torch
    import torch.nn.functional as F
    from lxt.explicit import functional as lf
    from lxt.explicit.rules import epsilon_lrp, identity

    kind = getattr(torch, dtype)
    t = {k: torch.tensor(v, dtype=kind) for k, v in w.items()}
    clip = torch.tensor(np.moveaxis(x, -1, 1), dtype=kind, requires_grad=True)

    def dense(h, name, b):
        return lf.linear_epsilon(h, t[f"{b}{name}_kernel"].T, t[f"{b}{name}_bias"], 1e-6)

    def norm(h, prefix):
        return lf.layer_norm(h, t[f"{prefix}_scale"], t[f"{prefix}_bias"], EPS)

    h = flat_conv(TUBELET)(clip, t["embed_kernel"].permute(4, 3, 0, 1, 2), t["embed_bias"])
    h = lf.add2(h.flatten(2).transpose(1, 2), t["pos"][None], epsilon=1e-6)
    for b in range(BLOCKS):
        a = norm(h, f"{b}_ln1")
        scale = 1 / np.sqrt(DIM // HEADS)
        q = lf.linear_epsilon(a, t[f"{b}_q_kernel"].T * scale, t[f"{b}_q_bias"] * scale, 1e-6)
        k, v = dense(a, "_k", b), dense(a, "_v", b)
        heads = [z.unflatten(-1, (HEADS, DIM // HEADS)).transpose(1, 2) for z in (q, k, v)]
        scores = lf.matmul(heads[0], heads[1].transpose(-1, -2), epsilon=1e-8)
        attn = lf.softmax(scores, -1)
        if cp:  # lxt's multi_head_attention_cp: epsilon on attn @ v, attn held constant
            out = epsilon_lrp(torch.matmul, 1e-6, attn.detach(), heads[2])
        else:
            out = lf.matmul(attn, heads[2], epsilon=1e-8)
        out = out.transpose(1, 2).flatten(2)
        h = lf.add2(h, dense(out, "_o", b), epsilon=1e-6)
        m = identity(F.gelu, dense(norm(h, f"{b}_ln2"), "_fc1", b))
        h = lf.add2(h, dense(m, "_fc2", b), epsilon=1e-6)
    pooled = norm(lf.mean(h, 1, False, 1e-6), "norm")
    logits = lf.linear_epsilon(pooled, t["head_kernel"].T, t["head_bias"], 1e-6)
    logits.backward(torch.eye(CLASSES, dtype=kind)[[target]])
    return np.moveaxis(clip.grad.numpy(), 1, -1), logits.detach().numpy()


def flat_conv(stride, padding=0):
    """A torch Conv3d under the Flat rule: each output's relevance spread evenly
    over its in-bounds receptive field (zero padding takes none)."""
    import torch
    import torch.nn.functional as F

    class FlatConv(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, kernel, bias):
            ctx.save_for_backward(x, kernel)
            return F.conv3d(x, kernel, bias, stride=stride, padding=padding)

        @staticmethod
        def backward(ctx, relevance):
            x, kernel = ctx.saved_tensors
            ones, kernel_ones = torch.ones_like(x), torch.ones_like(kernel)
            n = F.conv3d(ones, kernel_ones, stride=stride, padding=padding)
            ratio = relevance / (n + 1e-6)
            out = F.conv_transpose3d(ratio, kernel_ones, stride=stride, padding=padding)
            return out, None, None

    return FlatConv.apply
