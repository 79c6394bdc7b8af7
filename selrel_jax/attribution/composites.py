"""Composites: which rule each layer of a model gets.

A :class:`Composite` maps layers to rules by module path (glob patterns over
``"block1/conv2"``-style paths, first match wins), then for the first linear
layer (the first ``nn.Conv`` / ``nn.Dense`` the input reaches), then by layer
type (first match wins), then by the base map every composite shares:
``Sum``, ``AvgPool``, ``GlobalAvgPool`` -> :class:`~selrel_jax.attribution.rules.Norm`,
``MaxPool`` and ``nn.Dropout`` -> plain gradient. BatchNorm after a conv/dense
layer is merged into it by the engine (canonizer) for every composite, and
activations always get Pass.

The named composites follow Zennit: :func:`epsilon_plus`,
:func:`epsilon_plus_flat`, :func:`epsilon_gamma_box`,
:func:`epsilon_alpha2_beta1`, :func:`epsilon_alpha2_beta1_flat`.

Example::

    import flax.linen as nn
    from selrel_jax.attribution import Composite, rules
    comp = Composite(
        layer_map=((nn.Conv, rules.ZPlus()), (nn.Dense, rules.Epsilon(0.25))),
        path_map=(("head/*", rules.Epsilon(1e-3)),),
        first=rules.Flat(),
    )
"""

from __future__ import annotations

import dataclasses
import fnmatch

import flax.linen as nn

from selrel_jax.attribution.rules import (
    AlphaBeta,
    Epsilon,
    Flat,
    Gamma,
    Gradient,
    Norm,
    Rule,
    ZBox,
    ZPlus,
)
from selrel_jax.errors import OptionError
from selrel_jax.layers import AvgPool, GlobalAvgPool, MaxPool, Sum

__all__ = [
    "CONV_TYPES",
    "DENSE_TYPES",
    "LINEAR_TYPES",
    "PRIMITIVE_TYPES",
    "Composite",
    "epsilon_alpha2_beta1",
    "epsilon_alpha2_beta1_flat",
    "epsilon_gamma_box",
    "epsilon_plus",
    "epsilon_plus_flat",
    "uniform",
]

CONV_TYPES: tuple[type, ...] = (nn.Conv,)
DENSE_TYPES: tuple[type, ...] = (nn.Dense,)
LINEAR_TYPES = CONV_TYPES + DENSE_TYPES
PRIMITIVE_TYPES = (*LINEAR_TYPES, Sum, AvgPool, GlobalAvgPool, MaxPool, nn.Dropout)


@dataclasses.dataclass(frozen=True)
class Composite:
    """Layer -> rule mapping. ``layer_map``: ((type or tuple of types, rule), ...);
    ``path_map``: ((glob pattern, rule), ...); ``first``: rule of the first
    conv/dense layer (None: no special first rule). ``stabilizer`` is used by
    the base map's Norm rule."""

    layer_map: tuple = ()
    path_map: tuple = ()
    first: Rule | None = None
    stabilizer: float = 1e-6

    def __post_init__(self) -> None:
        for types, rule in tuple(self.layer_map):
            if not isinstance(rule, Rule):
                raise OptionError(f"layer_map entry for {types!r} is not a Rule: {rule!r}")
        for pattern, rule in tuple(self.path_map):
            if not isinstance(rule, Rule):
                raise OptionError(f"path_map entry for {pattern!r} is not a Rule: {rule!r}")
        if self.first is not None and not isinstance(self.first, Rule):
            raise OptionError(f"first must be a Rule or None; got {self.first!r}")

    def rule_for(self, module: nn.Module, path: str, first: bool, leaf: bool = True) -> Rule | None:
        """The rule for ``module`` at ``path`` (None: no rule covers it). Path
        patterns only select ``leaf`` modules (ones that own variables or are
        primitives), never the containers around them."""
        for pattern, rule in self.path_map if leaf else ():
            if fnmatch.fnmatchcase(path, pattern):
                return rule
        if first and self.first is not None:
            return self.first
        for types, rule in self.layer_map:
            if isinstance(module, types):
                return rule
        if isinstance(module, Sum | AvgPool | GlobalAvgPool):
            return Norm(self.stabilizer)
        if isinstance(module, MaxPool | nn.Dropout):
            return Gradient()
        return None


def uniform(conv: Rule, dense: Rule, *, stabilizer: float = 1e-6, first: Rule | None = None):
    """One rule for every conv layer, one for every dense layer."""
    return Composite(((CONV_TYPES, conv), (DENSE_TYPES, dense)), (), first, stabilizer)


def epsilon_plus(*, epsilon: float = 1e-6, stabilizer: float = 1e-6) -> Composite:
    """conv -> ZPlus, dense -> Epsilon."""
    return uniform(ZPlus(stabilizer), Epsilon(epsilon), stabilizer=stabilizer)


def epsilon_plus_flat(*, epsilon: float = 1e-6, stabilizer: float = 1e-6) -> Composite:
    """As epsilon_plus, first conv/dense layer -> Flat."""
    return uniform(
        ZPlus(stabilizer), Epsilon(epsilon), stabilizer=stabilizer, first=Flat(stabilizer)
    )


def epsilon_gamma_box(
    *, low, high, gamma: float = 0.25, epsilon: float = 1e-6, stabilizer: float = 1e-6
) -> Composite:
    """first conv -> ZBox(low, high), other conv -> Gamma(gamma), dense -> Epsilon."""
    return uniform(
        Gamma(gamma, stabilizer),
        Epsilon(epsilon),
        stabilizer=stabilizer,
        first=ZBox(low, high, stabilizer),
    )


def epsilon_alpha2_beta1(
    *, alpha: float = 2.0, beta: float = 1.0, epsilon: float = 1e-6, stabilizer: float = 1e-6
) -> Composite:
    """conv -> AlphaBeta(alpha, beta), dense -> Epsilon."""
    return uniform(AlphaBeta(alpha, beta, stabilizer), Epsilon(epsilon), stabilizer=stabilizer)


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
