"""Method registry: every attribution method under its name, with its options
read from its signature.

A method is registered where it is defined: a composite factory with
``@register_composite("epsilon_plus")`` (method ``"lrp.epsilon_plus"``), a
gradient-family function with ``@register_gradient("smoothgrad")``. Its
keyword-only parameters are its options and their defaults are the method's
defaults; a keyword-only parameter without a default is a required option. So
the signature is the one place each method's options are written down.

Examples:
    >>> import flax.linen as nn
    >>> from selrel_jax.attribution import Composite, explain, registry, rules
    >>> from selrel_jax.attribution.registry import register_composite
    >>> @register_composite("all_gamma")
    ... def all_gamma(*, gamma: float = 0.25, stabilizer: float = 1e-6) -> Composite:
    ...     return Composite(layer_map=((nn.Conv, rules.Gamma(gamma, stabilizer)),
    ...                                 (nn.Dense, rules.Epsilon())))
    >>> registry.get("lrp.all_gamma").options
    {'gamma': 0.25, 'stabilizer': 1e-06}
    >>> import jax
    >>> import jax.numpy as jnp
    >>> from selrel_jax import models
    >>> model = models.create("c3d_small", 4, width=0.25, clip_size=(8, 32, 32))
    >>> variables = model.init(jax.random.key(0), jnp.zeros((1, 8, 32, 32, 3)), train=False)
    >>> clips = jax.random.normal(jax.random.key(1), (1, 8, 32, 32, 3))
    >>> explain(model, variables, clips, method="lrp.all_gamma", gamma=0.5).shape
    (1, 8, 32, 32, 3)
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from selrel_jax.errors import OptionError
from selrel_jax.models.vit import VIT_ARCHS
from selrel_jax.models.x3d import X3D_ARCHS

__all__ = [
    "ATTN_METHOD",
    "CNN_METHOD",
    "FAMILIES",
    "REQUIRED",
    "Method",
    "default_method",
    "get",
    "method_names",
    "register_baseline",
    "register_composite",
    "register_gradient",
    "resolve",
]

F = TypeVar("F", bound=Callable[..., Any])

#: The method families: gradient methods, LRP composites (named ``"lrp.<name>"``), and
#: model-free baseline maps (named ``"baseline.<name>"``).
FAMILIES = ("gradient", "lrp", "baseline")


class _Required:
    """Default of an option the caller must give (a keyword-only parameter without default)."""

    def __repr__(self) -> str:
        return "REQUIRED"


#: The default recorded for an option the caller must give (no default in the signature).
REQUIRED: Any = _Required()


@dataclasses.dataclass(frozen=True)
class Method:
    """A registered method: ``build`` is the composite factory (family "lrp")
    or the function computing the map (families "gradient" and "baseline");
    ``options`` maps each
    option to its default (:data:`REQUIRED` when it has none)."""

    name: str
    family: str
    build: Callable[..., Any]
    options: Mapping[str, Any]

    @property
    def required(self) -> tuple[str, ...]:
        return tuple(k for k, v in self.options.items() if v is REQUIRED)

    def describe_options(self) -> str:
        """``"low, high, gamma=0.25, ..."``: required options bare, others ``name=default``."""
        parts = [k if v is REQUIRED else f"{k}={v!r}" for k, v in self.options.items()]
        return ", ".join(parts) or "none"


_METHODS: dict[str, Method] = {}


def keyword_options(fn: Callable[..., Any]) -> dict[str, Any]:
    """The keyword-only parameters of ``fn`` with their defaults (REQUIRED: none)."""
    params = inspect.signature(fn).parameters.values()
    return {
        p.name: REQUIRED if p.default is p.empty else p.default
        for p in params
        if p.kind is p.KEYWORD_ONLY
    }


def _register(name: str, family: str) -> Callable[[F], F]:
    def decorator(fn: F) -> F:
        if name in _METHODS and _METHODS[name].build is not fn:
            raise OptionError(f"method {name!r} is already registered")
        _METHODS[name] = Method(name, family, fn, keyword_options(fn))
        return fn

    return decorator


def register_composite(name: str) -> Callable[[F], F]:
    """Register a composite factory (keyword-only options, returns a
    :class:`~selrel_jax.attribution.composites.Composite`) as method ``"lrp.<name>"``."""
    return _register(f"lrp.{name}", "lrp")


def register_gradient(name: str) -> Callable[[F], F]:
    """Register ``fn(apply_fn, clips, target=None, *, <options>) -> relevance``
    as gradient-family method ``name``."""
    return _register(name, "gradient")


def register_baseline(name: str) -> Callable[[F], F]:
    """Register ``fn(apply_fn, clips, target=None, *, <options>) -> map``, a map that
    does not depend on the model, as method ``"baseline.<name>"``."""
    return _register(f"baseline.{name}", "baseline")


def method_names(family: str | None = None) -> tuple[str, ...]:
    """Registered method names (of one family), in the order of :data:`FAMILIES`,
    each family in registration order."""
    families = FAMILIES if family is None else (family,)
    return tuple(n for f in families for n, m in _METHODS.items() if m.family == f)


def get(name: Any) -> Method:
    """The method registered as ``name``; OptionError naming the known methods if none."""
    if not isinstance(name, str) or name not in _METHODS:
        raise OptionError(f"unknown method {name!r}; choose one of {', '.join(method_names())}")
    return _METHODS[name]


#: The method of ``selrel explain``/``selrel sweep`` for a model whose arch is neither
#: a ViT nor an X3D (:func:`default_method`): the paper's LRP composite for 3D CNNs.
CNN_METHOD = "lrp.epsilon_plus_flat"
#: The method for the archs with layers the CNN composites refuse (a ViT's LayerNorm,
#: softmax and attention products; X3D's squeeze-excitation gates and Swish):
#: AttnLRP, which has rules for all of them on top of the CNN composite's.
ATTN_METHOD = "lrp.attn"


def default_method(arch: str) -> str:
    """The LRP composite that explains a zoo model of ``arch`` (``ModelInfo.arch``):
    :data:`ATTN_METHOD` for the video transformers and X3D, :data:`CNN_METHOD`
    otherwise (C3D, the video ResNets, an arch this library does not know).

    Examples:
        >>> from selrel_jax.attribution import registry
        >>> registry.default_method("c3d_small"), registry.default_method("vit_small")
        ('lrp.epsilon_plus_flat', 'lrp.attn')
    """
    return ATTN_METHOD if arch in (*VIT_ARCHS, *X3D_ARCHS) else CNN_METHOD


def with_input_bounds(name: Any, options: Mapping[str, Any], bounds: tuple) -> dict[str, Any]:
    """``options`` with ``low``/``high`` defaulting to ``bounds`` (a model's normalised
    input range, ``ModelInfo.input_bounds()``) for a method that takes both (the box
    rule, ``lrp.epsilon_gamma_box``, ``lrp.dtd``); other methods' options unchanged."""
    options = dict(options)
    if {"low", "high"} <= set(get(name).options):
        options.setdefault("low", bounds[0])
        options.setdefault("high", bounds[1])
    return options


def resolve(name: Any, options: Mapping[str, Any]) -> tuple[Method, dict[str, Any]]:
    """``(method, options with defaults filled in)``; OptionError for unknown or
    missing options, naming the method and its valid options."""
    method = get(name)
    unknown = sorted(set(options) - set(method.options))
    if unknown:
        raise OptionError(
            f"unknown option(s) {unknown} for method {name!r}; valid: {method.describe_options()}"
        )
    merged = {**method.options, **options}
    missing = [k for k in method.required if merged[k] is REQUIRED]
    if missing:
        needed = " and ".join(f"{k}=" for k in missing)
        raise OptionError(f"method {name!r} needs {needed}; options: {method.describe_options()}")
    return method, merged
