"""Composites: which rule each layer of a model gets.

A :class:`Composite` maps layers to rules by path (glob patterns over
``"block1/conv2"``-style paths, first match wins), then for the first layer
(the first layer of ``first_types``, by default ``nn.Conv`` / ``nn.Dense``,
that the model computes), then by layer type (first match wins), then by the
base map every composite shares, :func:`layer_map_base`: ``Sum``, ``AvgPool``,
``GlobalAvgPool`` -> :class:`~selrel_jax.attribution.rules.Norm`, ``MaxPool``
and ``nn.Dropout`` -> plain gradient.

The engine works on the traced computation, so these types name kinds of
operation, however a model writes them: every convolution is an ``nn.Conv``
(``lax.conv_general_dilated``, an NNX ``Conv``), every dense product an
``nn.Dense``, an inline ``x + y`` a ``Sum``, ``nn.avg_pool`` an ``AvgPool``,
``jnp.mean`` over axes a ``GlobalAvgPool``, ``nn.max_pool`` a ``MaxPool``;
a type also matches the class of the module computing the layer (a linen
module, or an NNX module owning its parameters), so ``nnx.Linear`` or your
own module class work too. A layer's path is that of the parameter it
consumes (``conv1/kernel`` -> ``conv1``), for parameter-free layers of a
linen model that of the module computing them. BatchNorm after a conv/dense
layer is merged into it by the engine (canonizer) for every composite, and
elementwise functions always get Pass.

The named composites follow Zennit and are registered as methods of
:func:`~selrel_jax.attribution.explain` (``@register_composite("epsilon_plus")``
-> ``"lrp.epsilon_plus"``); their keyword-only parameters are the method's
options: :func:`epsilon`, :func:`zplus`, :func:`epsilon_plus`,
:func:`epsilon_plus_flat`, :func:`epsilon_gamma_box`,
:func:`epsilon_alpha2_beta1`, :func:`epsilon_alpha2_beta1_flat`, :func:`dtd`,
and for transformers (softmax, products of activations, LayerNorm) :func:`attn`
(AttnLRP) and :func:`cp` (CP-LRP); the other composites refuse those layers.

Examples:
    >>> import flax.linen as nn
    >>> from selrel_jax.attribution import Composite, explain, rules
    >>> comp = Composite(
    ...     layer_map=((nn.Conv, rules.ZPlus()), (nn.Dense, rules.Epsilon(0.25))),
    ...     path_map=(("conv4", rules.Epsilon(1e-3)),),
    ...     first=rules.Flat(),
    ... )
    >>> import jax
    >>> import jax.numpy as jnp
    >>> from selrel_jax import models
    >>> model = models.create("c3d_small", 4, width=0.25, clip_size=(8, 32, 32))
    >>> variables = model.init(jax.random.key(0), jnp.zeros((1, 8, 32, 32, 3)), train=False)
    >>> clips = jax.random.normal(jax.random.key(1), (1, 8, 32, 32, 3))
    >>> explain(model, variables, clips, method=comp).shape
    (1, 8, 32, 32, 3)
"""

from __future__ import annotations

import dataclasses
import fnmatch
import functools
from typing import Any

from selrel_jax.attribution.registry import register_composite
from selrel_jax.attribution.rules import (
    AlphaBeta,
    AttnSoftmax,
    Epsilon,
    Flat,
    Gamma,
    Gradient,
    Norm,
    Rule,
    Uniform,
    ZBox,
    ZPlus,
)
from selrel_jax.attribution.types import (
    CONV_TYPES,
    DENSE_TYPES,
    GRADIENT_TYPES,
    LINEAR_TYPES,
    NORM_TYPES,
    NORMALIZATION_TYPES,
    PRIMITIVE_TYPES,
    Product,
    Softmax,
)
from selrel_jax.errors import OptionError

__all__ = [
    "CONV_TYPES",
    "DENSE_TYPES",
    "LINEAR_TYPES",
    "PRIMITIVE_TYPES",
    "Composite",
    "attn",
    "attn_layer_map",
    "cp",
    "dtd",
    "epsilon",
    "epsilon_alpha2_beta1",
    "epsilon_alpha2_beta1_flat",
    "epsilon_gamma_box",
    "epsilon_plus",
    "epsilon_plus_flat",
    "layer_map_base",
    "uniform",
    "zplus",
]

LayerMap = tuple[tuple[type | tuple[type, ...], Rule], ...]


@functools.lru_cache(maxsize=16)
def layer_map_base(stabilizer: float = 1e-6) -> LayerMap:
    """The layer map every composite ends with (as Zennit's ``layer_map_base``):
    sums and average pooling split relevance (Norm), max pooling and dropout
    keep their plain gradient."""
    return ((NORM_TYPES, Norm(stabilizer)), (GRADIENT_TYPES, Gradient()))


def _check_types(name: str, types: object) -> None:
    try:  # whatever isinstance accepts: a type, a tuple of types, a union
        isinstance(None, types)  # type: ignore[arg-type]
    except TypeError:
        raise OptionError(f"{name} must be a type or a tuple of types; got {types!r}") from None


@dataclasses.dataclass(frozen=True)
class Composite:
    """Layer -> rule mapping. ``layer_map``: ((type or tuple of types, rule), ...);
    ``path_map``: ((glob pattern, rule), ...); ``first``: rule of the first
    layer of ``first_types`` the model calls (None: no special first rule;
    ``first_types`` defaults to conv and dense layers). ``stabilizer`` is used
    by the base map's Norm rule."""

    layer_map: LayerMap = ()
    path_map: tuple[tuple[str, Rule], ...] = ()
    first: Rule | None = None
    stabilizer: float = 1e-6
    first_types: tuple[type, ...] = LINEAR_TYPES

    def __post_init__(self) -> None:
        for types, rule in tuple(self.layer_map):
            _check_types("layer_map key", types)
            if not isinstance(rule, Rule):
                raise OptionError(f"layer_map entry for {types!r} is not a Rule: {rule!r}")
        for pattern, rule in tuple(self.path_map):
            if not isinstance(rule, Rule):
                raise OptionError(f"path_map entry for {pattern!r} is not a Rule: {rule!r}")
        if self.first is not None and not isinstance(self.first, Rule):
            raise OptionError(f"first must be a Rule or None; got {self.first!r}")
        _check_types("first_types", self.first_types)
        Norm(self.stabilizer)  # checks the stabiliser like every rule's

    def rule_for(self, module: Any, path: str | None, *, first: bool, leaf: bool) -> Rule | None:
        """The rule for the layer ``module`` at ``path`` (None: no rule covers it).

        ``module`` is a module instance, a class, or a tuple of classes (the
        engine passes a layer's kind, e.g. ``nn.Conv`` for a convolution,
        and the class of the module that computes it, when known); it matches
        a type if any of them does. ``path`` is None for a layer without one
        (no pattern matches it). ``first``: this is the first layer of
        ``first_types`` the model computes (the engine knows the order). Path
        patterns only select ``leaf`` layers, never containers."""
        for pattern, rule in self.path_map if leaf and path is not None else ():
            if fnmatch.fnmatchcase(path, pattern):
                return rule
        if first and self.first is not None and _is_a(module, self.first_types):
            return self.first
        for types, rule in (*self.layer_map, *layer_map_base(self.stabilizer)):
            if _is_a(module, types):
                return rule
        return None


def _is_a(layer: Any, types: Any) -> bool:
    """isinstance for a module, issubclass for a class, any of a tuple of classes."""
    if isinstance(layer, tuple):
        return any(_is_a(item, types) for item in layer)
    if isinstance(layer, type):
        return issubclass(layer, types)
    return isinstance(layer, types)


def uniform(
    conv: Rule,
    dense: Rule,
    *,
    stabilizer: float = 1e-6,
    first: Rule | None = None,
    first_types: tuple[type, ...] = LINEAR_TYPES,
) -> Composite:
    """One rule for every conv layer, one for every dense layer."""
    layer_map = ((CONV_TYPES, conv), (DENSE_TYPES, dense))
    return Composite(layer_map, (), first, stabilizer, first_types)


@register_composite("epsilon")
def epsilon(*, epsilon: float = 1e-6, stabilizer: float = 1e-6) -> Composite:
    """Epsilon on every conv and dense layer."""
    return uniform(Epsilon(epsilon), Epsilon(epsilon), stabilizer=stabilizer)


@register_composite("zplus")
def zplus(*, stabilizer: float = 1e-6) -> Composite:
    """ZPlus on every conv and dense layer."""
    return uniform(ZPlus(stabilizer), ZPlus(stabilizer), stabilizer=stabilizer)


@register_composite("epsilon_plus")
def epsilon_plus(*, epsilon: float = 1e-6, stabilizer: float = 1e-6) -> Composite:
    """conv -> ZPlus, dense -> Epsilon."""
    return uniform(ZPlus(stabilizer), Epsilon(epsilon), stabilizer=stabilizer)


@register_composite("epsilon_plus_flat")
def epsilon_plus_flat(*, epsilon: float = 1e-6, stabilizer: float = 1e-6) -> Composite:
    """As epsilon_plus, first conv/dense layer -> Flat."""
    return uniform(
        ZPlus(stabilizer), Epsilon(epsilon), stabilizer=stabilizer, first=Flat(stabilizer)
    )


@register_composite("epsilon_gamma_box")
def epsilon_gamma_box(
    *, low, high, gamma: float = 0.25, epsilon: float = 1e-6, stabilizer: float = 1e-6
) -> Composite:
    """First conv -> ZBox(low, high), other conv -> Gamma(gamma), dense -> Epsilon.

    ``low``/``high``: the input bounds in the model's normalised input space
    (scalar, per channel (C,) or clip-shaped). Only a convolution counts as
    the first layer, as in Zennit's EpsilonGammaBox."""
    return uniform(
        Gamma(gamma, stabilizer),
        Epsilon(epsilon),
        stabilizer=stabilizer,
        first=ZBox(low, high, stabilizer),
        first_types=CONV_TYPES,
    )


@register_composite("epsilon_alpha2_beta1")
def epsilon_alpha2_beta1(
    *, alpha: float = 2.0, beta: float = 1.0, epsilon: float = 1e-6, stabilizer: float = 1e-6
) -> Composite:
    """conv -> AlphaBeta(alpha, beta), dense -> Epsilon."""
    return uniform(AlphaBeta(alpha, beta, stabilizer), Epsilon(epsilon), stabilizer=stabilizer)


@register_composite("epsilon_alpha2_beta1_flat")
def epsilon_alpha2_beta1_flat(
    *, alpha: float = 2.0, beta: float = 1.0, epsilon: float = 1e-6, stabilizer: float = 1e-6
) -> Composite:
    """As epsilon_alpha2_beta1, first conv/dense layer -> Flat."""
    return uniform(
        AlphaBeta(alpha, beta, stabilizer),
        Epsilon(epsilon),
        stabilizer=stabilizer,
        first=Flat(stabilizer),
    )


@register_composite("dtd")
def dtd(*, low, high, stabilizer: float = 1e-6) -> Composite:
    """Deep Taylor decomposition as the selective-relevance authors' torchexplain
    runs it: first conv/dense layer -> ZBox(low, high), every other conv and
    dense layer -> ZPlus.

    ``low``/``high``: the input bounds in the model's normalised input space
    (scalar, per channel (C,) or clip-shaped), as for :func:`epsilon_gamma_box`;
    the video and sweep paths default them to the model's input range. Unlike
    epsilon_gamma_box, a dense first layer also gets ZBox: DTD's box rule is
    the rule of the input layer, whatever its kind."""
    return uniform(
        ZPlus(stabilizer),
        ZPlus(stabilizer),
        stabilizer=stabilizer,
        first=ZBox(low, high, stabilizer),
    )


def attn_layer_map(epsilon: float = 1e-6, *, gate_constant: bool = False) -> LayerMap:
    """AttnLRP's rules for a transformer's own layers (Achtibat et al. 2024, as lxt
    2.1 runs them): softmax -> AttnSoftmax, products of activations -> Uniform
    (``gate_constant``: a sigmoid/softmax factor held constant),
    normalisations -> Epsilon on the layer with its statistics held constant."""
    return (
        (Softmax, AttnSoftmax()),
        (Product, Uniform(1e-8, gate_constant)),
        (NORMALIZATION_TYPES, Epsilon(epsilon)),
    )


@register_composite("attn")
def attn(
    *, epsilon: float = 1e-6, stabilizer: float = 1e-6, gate_constant: bool = False
) -> Composite:
    """AttnLRP on top of epsilon_plus_flat: conv -> ZPlus, dense -> Epsilon, first
    conv/dense layer -> Flat, plus :func:`attn_layer_map`. ``gate_constant``
    holds every sigmoid/softmax gate of a product constant; to name products
    one by one, put ``(path, rules.Uniform(gate_constant=True))`` in a
    composite's path_map."""
    base = epsilon_plus_flat(epsilon=epsilon, stabilizer=stabilizer)
    layer_map = (*attn_layer_map(epsilon, gate_constant=gate_constant), *base.layer_map)
    return dataclasses.replace(base, layer_map=layer_map)


@register_composite("cp")
def cp(*, epsilon: float = 1e-6, stabilizer: float = 1e-6) -> Composite:
    """CP-LRP (Ali et al. 2022, lxt's CP mode): as :func:`attn` with every softmax
    and sigmoid gate held constant, so attention passes relevance along its
    value path only; normalisations hold their statistics constant as in AttnLRP."""
    return attn(epsilon=epsilon, stabilizer=stabilizer, gate_constant=True)
