"""The attribution package's vocabulary: the kinds of layer (convolutions, dense
layers and parameter-free primitives, named by the Flax modules that compute
them; the LRP engine gives every operation of the traced model one of these
kinds), how a layer path is written, the one-hot output relevance, and
:class:`LayerCall`, what a rule is told about one layer call (like Zennit's
``types.py``).

Everything here is plain data: the gradient family and the LRP engine both
build on it, and it imports neither.

Examples:
    >>> import flax.linen as nn
    >>> from selrel_jax.attribution.types import CONV_TYPES, path_str
    >>> isinstance(nn.Conv(8, (3, 3, 3)), CONV_TYPES), isinstance(nn.Dense(8), CONV_TYPES)
    (True, False)
    >>> path_str(("layer1_0", "conv1"))
    'layer1_0/conv1'
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from selrel_jax.errors import SelrelError
from selrel_jax.layers import AvgPool, GlobalAvgPool, MaxPool, Sum

__all__ = [
    "CONV_TYPES",
    "DENSE_TYPES",
    "GRADIENT_TYPES",
    "LINEAR_TYPES",
    "NORMALIZATION_TYPES",
    "NORM_TYPES",
    "PRIMITIVE_TYPES",
    "LayerCall",
    "LayerFn",
    "Normalization",
    "Params",
    "Product",
    "Softmax",
    "UnsupportedLayerError",
    "one_hot_seed",
    "path_str",
]

#: The layer kind of every convolution, however the model writes it.
CONV_TYPES: tuple[type, ...] = (nn.Conv,)
#: The layer kind of every dense product, however the model writes it.
DENSE_TYPES: tuple[type, ...] = (nn.Dense,)
#: Layers with weights, which a composite's rules apply to: convolutions and dense products.
LINEAR_TYPES: tuple[type, ...] = CONV_TYPES + DENSE_TYPES
#: Parameter-free layers that split relevance proportionally (the Norm rule).
NORM_TYPES: tuple[type, ...] = (Sum, AvgPool, GlobalAvgPool)
#: Parameter-free layers explained by their plain gradient (winner takes all, identity).
GRADIENT_TYPES: tuple[type, ...] = (MaxPool, nn.Dropout)


class Softmax:
    """The layer kind of a softmax, ``exp(x - max x) / sum exp(x - max x)`` however
    written (``jax.nn.softmax``, inside any framework's attention): from its
    logits to its output."""


class Product:
    """The layer kind of a product of two activations: attention's ``q k^T`` and
    ``attn v`` (any ``dot_general`` / einsum of two activations) and elementwise
    gates (``x * sigmoid(...)`` of another activation, a squeeze-excitation)."""


class Normalization:
    """The layer kind of the division of an activation by statistics of itself
    (LayerNorm, RMSNorm, GroupNorm however written): from the centred
    activation to the output of the affine map after it, the statistics held
    constant."""


#: Normalisations by the activation's own statistics. Not by module class: the
#: centring sum inside a linen ``nn.LayerNorm`` is a ``Sum`` computed by that module.
NORMALIZATION_TYPES: tuple[type, ...] = (Normalization,)
#: Every layer kind the engine knows.
PRIMITIVE_TYPES: tuple[type, ...] = (
    *LINEAR_TYPES, *NORM_TYPES, *GRADIENT_TYPES, Softmax, Product, Normalization
)  # fmt: skip

#: A layer's parameters by name (``{"kernel", "bias"}`` for conv and dense layers).
Params = Mapping[str, jax.Array]
#: A layer as a pure function: ``fn(inputs, params) -> output``.
LayerFn = Callable[[tuple[jax.Array, ...], Params], jax.Array]


class UnsupportedLayerError(SelrelError):
    """LRP cannot assign an operation of the model a rule: a layer with
    parameters that no rule of the composite covers, a BatchNorm that cannot be
    merged into the layer before it, or a primitive the engine has no rule for
    (the message names it and its source line)."""


class LayerCall(NamedTuple):
    """One call of a layer, as a rule sees it.

    ``fn(inputs, params) -> output`` is the layer as a pure function (for
    Conv/Dense ``params`` is ``{"kernel": ..., "bias": ...}``, BatchNorm
    already merged; every leaf not named ``bias`` counts as a weight), so a
    rule can run it with modified inputs or parameters. ``output`` is the
    layer's real output ``fn(inputs, params)``. ``nonnegative`` is True when
    every input is known to be >= 0 (e.g. a ReLU output). ``arrays`` holds
    the rule's array parameters (:meth:`Rule.arrays`), handed through the
    engine's custom VJP as explicit arguments so they may be traced values.
    For a linear layer, ``out_axes`` are the axes of ``output`` and
    ``kernel_axes`` those of ``params["kernel"]`` that index its output units
    (empty when not known, e.g. for a custom layer): ``fn`` then also takes a
    kernel with fewer units along ``kernel_axes`` (and no bias), which lets a
    rule whose modified weights are equal for every unit compute one unit.
    For a softmax, ``out_axes`` are the axes it normalises over. ``gates``
    (products of activations): per input, whether it is a gate (a sigmoid or
    softmax output), which a rule may hold constant.
    """

    fn: LayerFn
    inputs: tuple[jax.Array, ...]
    params: Params
    output: jax.Array
    nonnegative: bool
    arrays: Mapping[str, jax.Array]
    out_axes: tuple[int, ...] = ()
    kernel_axes: tuple[int, ...] = ()
    gates: tuple[bool, ...] = ()


def path_str(path: tuple[str, ...]) -> str:
    """Module path as written in composites' path patterns: ``"block1/conv2"``."""
    return "/".join(path) if path else "<root>"


def one_hot_seed(logits: jax.Array, target: jax.Array | None) -> jax.Array:
    """One-hot output relevance (value 1 at the target; predicted class if None).

    A target out of range (negative, or >= the number of classes; only possible
    when it is traced) gives a row of NaN, not the all-zero row of
    ``jax.nn.one_hot``, so its relevance can't pass for a result."""
    if target is None:
        return jax.nn.one_hot(jnp.argmax(logits, axis=-1), logits.shape[-1], dtype=logits.dtype)
    seed = jax.nn.one_hot(target, logits.shape[-1], dtype=logits.dtype)
    valid = (target >= 0) & (target < logits.shape[-1])
    return jnp.where(valid[..., None], seed, jnp.asarray(jnp.nan, seed.dtype))
