"""A small gated 3D CNN: a convolution, Swish, a squeeze-excitation gate
(``h * sigmoid(dense(relu(dense(mean h))))``), mean pooling and a dense head, in
Flax linen and plain JAX, and its PyTorch twin from lxt's explicit functions
(``mul2`` for the gate, held constant with ``gate_constant``), not a test module.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from tests.attribution.conformance.vit import flat_conv

CLIP = (1, 4, 8, 8, 3)
WIDTH, SQUEEZE, CLASSES, TARGET = 4, 2, 5, 2


def weights(seed: int = 2) -> dict:
    rng = np.random.default_rng(seed)

    def normal(*shape, scale=0.4):
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    return {
        "conv": {"kernel": normal(3, 3, 3, CLIP[-1], WIDTH), "bias": normal(WIDTH)},
        "squeeze": {"kernel": normal(WIDTH, SQUEEZE), "bias": normal(SQUEEZE)},
        "excite": {"kernel": normal(SQUEEZE, WIDTH), "bias": normal(WIDTH)},
        "head": {"kernel": normal(WIDTH, CLASSES), "bias": normal(CLASSES, scale=0.1)},
    }


def clips(seed: int = 3) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(CLIP).astype(np.float32)


class LinenGated(nn.Module):
    @nn.compact
    def __call__(self, x):
        h = nn.swish(nn.Conv(WIDTH, (3, 3, 3), padding=1, name="conv")(x))
        s = nn.relu(nn.Dense(SQUEEZE, name="squeeze")(jnp.mean(h, axis=(1, 2, 3))))
        gate = nn.sigmoid(nn.Dense(WIDTH, name="excite")(s))
        h = h * gate[:, None, None, None, :]
        return nn.Dense(CLASSES, name="head")(jnp.mean(h, axis=(1, 2, 3)))


def jax_apply(p: dict, x: jax.Array) -> jax.Array:
    h = jax.lax.conv_general_dilated(x, p["conv"]["kernel"], (1, 1, 1), [(1, 1)] * 3,
                                     dimension_numbers=("NDHWC", "DHWIO", "NDHWC"))  # fmt: skip
    h = jax.nn.silu(h + p["conv"]["bias"])
    s = jax.nn.relu(jnp.mean(h, axis=(1, 2, 3)) @ p["squeeze"]["kernel"] + p["squeeze"]["bias"])
    gate = jax.nn.sigmoid(s @ p["excite"]["kernel"] + p["excite"]["bias"])
    h = jnp.einsum("nthwc,nc->nthwc", h, gate)  # the gate as a dot_general
    return jnp.mean(h, axis=(1, 2, 3)) @ p["head"]["kernel"] + p["head"]["bias"]


def forms(w: dict) -> dict:
    params = jax.tree.map(jnp.asarray, w)
    return {"linen": (LinenGated(), {"params": params}), "jax": (jax_apply, params)}


def lxt_relevance(w: dict, x: np.ndarray, gate_constant: bool = False) -> np.ndarray:
    """lxt's relevance (NTHWC) on the torch twin: the conv under Flat, Swish and the
    sigmoid under lxt's identity rule, dense layers epsilon, means lxt's mean,
    the gate ``mul2`` (uniform; ``gate_constant``: the gate detached)."""
    import torch
    import torch.nn.functional as F
    from lxt.explicit import functional as lf
    from lxt.explicit.rules import identity

    t = jax.tree.map(lambda v: torch.tensor(v, dtype=torch.float64), w)
    clip = torch.tensor(np.moveaxis(x, -1, 1), dtype=torch.float64, requires_grad=True)

    def dense(h, name):
        return lf.linear_epsilon(h, t[name]["kernel"].T, t[name]["bias"], 1e-6)

    kernel = t["conv"]["kernel"].permute(4, 3, 0, 1, 2)
    h = identity(F.silu, flat_conv(1, 1)(clip, kernel, t["conv"]["bias"]))
    s = F.relu(dense(lf.mean(h.flatten(2), -1, False, 1e-6), "squeeze"))
    gate = identity(torch.sigmoid, dense(s, "excite"))[:, :, None, None, None]
    h = lf.mul2(h, gate.detach() if gate_constant else gate)
    logits = dense(lf.mean(h.flatten(2), -1, False, 1e-6), "head")
    logits.backward(torch.eye(CLASSES, dtype=torch.float64)[[TARGET]])
    return np.moveaxis(clip.grad.numpy(), 1, -1)
