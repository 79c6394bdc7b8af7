"""VideoMAE's video ViT (Tong et al. 2022) in Flax: videomae_vit_s, videomae_vit_b, vit_small.

The classifier of HuggingFace transformers' ``VideoMAEForVideoClassification``:
a tubelet embedding (a Conv3d of kernel and stride 2x16x16), VideoMAE's fixed
sinusoidal position table (not a parameter), pre-norm blocks of joint
space-time self-attention and a GELU MLP, the mean over tokens, LayerNorm
(``fc_norm``) and the head (``classifier``). With ``use_mean_pooling=False`` the
head reads the first token after a final ``layernorm`` instead, as transformers does.

Attention, LayerNorm and GELU are written as plain ``jnp`` operations (einsum
of queries and keys, softmax, einsum of weights and values), so the
gradient methods, and the relevance engine's rules for them, see every step.
Module names mirror transformers' state_dict (``layer_0/query`` for
``videomae.encoder.layer.0.attention.attention.query``), which keeps the weight
import a table (:mod:`selrel_jax.models.torch_import`).

``width`` scales the per-head size and the MLP (1.0 = the published size). The
position table belongs to one token grid, so clips must have the model's
``clip_size``, with T a multiple of the tubelet length and H, W of the patch.

Examples:
    >>> import jax
    >>> import jax.numpy as jnp
    >>> from selrel_jax import models
    >>> model = models.create("vit_small", 4, clip_size=(16, 48, 48))
    >>> clips = jnp.zeros((1, 16, 48, 48, 3))
    >>> variables = model.init(jax.random.key(0), clips, train=False)
    >>> model.apply(variables, clips, train=False).shape
    (1, 4)
    >>> sinusoid_table(3, 4).round(3)
    array([[ 0.   ,  1.   ,  0.   ,  1.   ],
           [ 0.841,  0.54 ,  0.01 ,  1.   ],
           [ 0.909, -0.416,  0.02 ,  1.   ]], dtype=float32)
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from selrel_jax._conv import conv_general_dilated
from selrel_jax.errors import OptionError, ShapeError
from selrel_jax.layers import GlobalAvgPool, Sum
from selrel_jax.models.c3d import scaled

__all__ = ["VIT_ARCHS", "VIT_CONFIGS", "ViTConfig", "VideoViT", "sinusoid_table"]


@dataclasses.dataclass(frozen=True)
class ViTConfig:
    """One ViT size: tubelet (frames, pixels, pixels), hidden size, depth, heads, MLP size,
    and how fresh kernels are drawn (``"videomae"``: truncated normal, std 0.02, as
    transformers initialises them; ``"lecun"``: LeCun normal)."""

    tubelet: tuple[int, int, int]
    dim: int
    depth: int
    heads: int
    mlp: int
    init: str = "videomae"


#: VideoMAE's ViT-S and ViT-B (transformers' VideoMAEConfig for them), and a small
#: ViT for tests and models trained here.
VIT_CONFIGS: dict[str, ViTConfig] = {
    "videomae_vit_s": ViTConfig((2, 16, 16), 384, 12, 6, 1536),
    "videomae_vit_b": ViTConfig((2, 16, 16), 768, 12, 12, 3072),
    # LeCun normal: with VideoMAE's std of 0.02 the tubelet embedding of 48x48 clips is
    # a tenth of the position table after the LayerNorms and training from scratch on
    # synthetic_motion stayed at chance (loss ln 6 for 600 steps); drawn by fan-in it
    # reached loss 0.5 in 400 steps.
    "vit_small": ViTConfig((2, 8, 8), 64, 2, 2, 256, init="lecun"),
}
#: The ViT archs ``create`` takes.
VIT_ARCHS = tuple(VIT_CONFIGS)
HF_LAYER_NORM_EPS = 1e-12  # VideoMAEConfig's default, what its checkpoints use
TORCH_LAYER_NORM_EPS = 1e-5  # torch.nn.LayerNorm's default: transformers' fc_norm

dense_init = nn.initializers.truncated_normal(0.02)
KERNEL_INITS = {"videomae": dense_init, "lecun": nn.initializers.lecun_normal()}


def sinusoid_table(positions: int, dim: int) -> np.ndarray:
    """VideoMAE's fixed position table (``get_sinusoid_encoding_table``): row p,
    column j is sin (even j) or cos (odd j) of p / 10000^(2 (j // 2) / dim)."""
    exponent = 2 * (np.arange(dim) // 2) / dim
    angles = np.arange(positions, dtype=np.float64)[:, None] / np.power(10000.0, exponent)
    table = np.where(np.arange(dim) % 2 == 0, np.sin(angles), np.cos(angles))
    return table.astype(np.float32)


class LayerNorm(nn.Module):
    """LayerNorm over the last axis as plain operations (mean, centred variance):
    torch's two-pass form, parameters ``scale`` and ``bias``."""

    epsilon: float

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        scale = self.param("scale", nn.initializers.ones, (x.shape[-1],))
        bias = self.param("bias", nn.initializers.zeros, (x.shape[-1],))
        centred = x - jnp.mean(x, axis=-1, keepdims=True)
        variance = jnp.mean(centred * centred, axis=-1, keepdims=True)
        return centred / jnp.sqrt(variance + self.epsilon) * scale + bias


def _dense(features: int, name: str, use_bias: bool = True, init: str = "videomae") -> nn.Dense:
    return nn.Dense(features, use_bias=use_bias, kernel_init=KERNEL_INITS[init], name=name)


class Block(nn.Module):
    """Pre-norm transformer block: x + attention(LN(x)), then h + MLP(LN(h))."""

    heads: int
    head_dim: int
    mlp: int
    epsilon: float
    qv_bias: bool
    init: str = "videomae"

    def _attention(self, x: jax.Array) -> jax.Array:
        n, tokens, _ = x.shape
        dim = self.heads * self.head_dim

        def project(name: str, bias: bool) -> jax.Array:
            out = _dense(dim, name, bias, self.init)(x)
            return out.reshape(n, tokens, self.heads, self.head_dim)

        q, k = project("query", self.qv_bias), project("key", False)
        v = project("value", self.qv_bias)
        scores = jnp.einsum("nqhd,nkhd->nhqk", q, k) * self.head_dim**-0.5
        weights = jax.nn.softmax(scores, axis=-1)
        context = jnp.einsum("nhqk,nkhd->nqhd", weights, v).reshape(n, tokens, dim)
        return _dense(x.shape[-1], "attention_output", init=self.init)(context)

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        attended = self._attention(LayerNorm(self.epsilon, name="layernorm_before")(x))
        h = Sum(name="attention_sum")(attended, x)
        normed = LayerNorm(self.epsilon, name="layernorm_after")(h)
        y = _dense(self.mlp, "intermediate", init=self.init)(normed)
        y = _dense(h.shape[-1], "output", init=self.init)(jax.nn.gelu(y, approximate=False))
        return Sum(name="mlp_sum")(y, h)


def _token_grid(clip: tuple[int, ...], tubelet: tuple[int, int, int], arch: str) -> tuple:
    """Tokens along T, H, W: each side must be a positive multiple of the tubelet's."""
    sides = tuple(zip(clip, tubelet, strict=True))
    if any(size < step or size % step for size, step in sides):
        raise ShapeError(
            f"{arch} cuts clips into {'x'.join(map(str, tubelet))} tubelets: clip (T, H, W) "
            f"must be positive multiples of them; got {tuple(clip)}"
        )
    return tuple(size // step for size, step in sides)


class VideoViT(nn.Module):
    """videomae_vit_s / videomae_vit_b / vit_small (:data:`VIT_CONFIGS`), per-head size
    and MLP scaled by ``width``. Options: ``use_mean_pooling`` (True: mean of the
    tokens, ``fc_norm``; False: final ``layernorm``, the first token),
    ``qv_bias`` (query and value biases), ``layer_norm_eps`` (the blocks')."""

    arch: str = "videomae_vit_b"
    num_classes: int = 400
    width: float = 1.0
    clip_size: tuple[int, int, int] = (16, 224, 224)
    use_mean_pooling: bool = True
    qv_bias: bool = True
    layer_norm_eps: float = HF_LAYER_NORM_EPS

    def _embed(self, x: jax.Array, dim: int) -> jax.Array:
        config = VIT_CONFIGS[self.arch]
        if tuple(x.shape[1:4]) != tuple(self.clip_size) or x.shape[-1] != 3:
            raise ShapeError(
                f"{self.arch} built for clips {tuple(self.clip_size)} x 3 channels (its position "
                f"table fixes the token grid); got clips of shape {tuple(x.shape)}"
            )
        grid = _token_grid(self.clip_size, config.tubelet, self.arch)
        patches = nn.Conv(dim, config.tubelet, config.tubelet, padding="VALID",
                          kernel_init=KERNEL_INITS[config.init],
                          conv_general_dilated=conv_general_dilated,
                          name="patch_embed")(x)  # fmt: skip
        tokens = patches.reshape(x.shape[0], int(np.prod(grid)), dim)
        return tokens + jnp.asarray(sinusoid_table(tokens.shape[1], dim), tokens.dtype)

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        if self.arch not in VIT_CONFIGS:
            raise OptionError(f"unknown ViT arch {self.arch!r}; expected one of {list(VIT_ARCHS)}")
        config = VIT_CONFIGS[self.arch]
        head_dim = scaled(config.dim // config.heads, self.width)
        dim = config.heads * head_dim
        x = self._embed(x, dim)
        for index in range(config.depth):
            x = Block(config.heads, head_dim, scaled(config.mlp, self.width),
                      self.layer_norm_eps, self.qv_bias, config.init,
                      name=f"layer_{index}")(x)  # fmt: skip
        if self.use_mean_pooling:
            x = LayerNorm(TORCH_LAYER_NORM_EPS, name="fc_norm")(GlobalAvgPool(name="pool")(x))
        else:
            x = LayerNorm(self.layer_norm_eps, name="layernorm")(x)[:, 0]
        init = KERNEL_INITS[VIT_CONFIGS[self.arch].init]
        return nn.Dense(self.num_classes, kernel_init=init, name="classifier")(x)
