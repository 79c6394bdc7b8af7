"""Relevance rules: how one layer hands the relevance at its output to its inputs.

Every rule is "modified gradient times input" (see ``shared/spec/lrp-rules.md``):
run one or more modified forward passes ``o_i = f(in_i; theta_i)`` of the layer,
divide the incoming relevance by a stabilised denominator, pull it back with the
vector-Jacobian product of ``o_i`` (``jax.vjp``) and multiply by the matching
input. A rule is a small frozen dataclass holding its parameters; its
``relevance`` method is that recipe, written in terms of a pure layer function
``fn(xs, params) -> output`` that the engine builds from the Flax module (for
Conv/Dense ``params`` is ``{"kernel": ..., "bias": ...}``; every leaf not named
``bias`` counts as a weight).

Rules for linear layers (one input): :class:`Epsilon`, :class:`ZPlus`,
:class:`AlphaBeta`, :class:`Gamma`, :class:`ZBox`, :class:`Flat`,
:class:`WSquare`. Rules for parameter-free layers: :class:`Norm` (sums and
average pooling: proportional split), :class:`Pass` (relevance unchanged) and
:class:`Gradient` (plain gradient, used for max pooling).

Example::

    from selrel_jax.attribution import rules
    rule = rules.Gamma(gamma=0.5)
"""

from __future__ import annotations

import dataclasses
import numbers
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp

from selrel_jax.errors import OptionError

__all__ = [
    "AlphaBeta",
    "Epsilon",
    "Flat",
    "Gamma",
    "Gradient",
    "Norm",
    "Pass",
    "Rule",
    "WSquare",
    "ZBox",
    "ZPlus",
    "stabilize",
]

Params = Mapping[str, jax.Array]
LayerFn = Callable[[tuple[jax.Array, ...], Params], jax.Array]


def stabilize(z: jax.Array, eps: float) -> jax.Array:
    """S(z) = z + eps * s(z) with s(z) = +1 where z >= 0, -1 where z < 0."""
    return z + eps * jnp.where(z >= 0, 1.0, -1.0).astype(z.dtype)


def _map_params(params: Params, weight: Callable | None, bias: Callable | None) -> dict:
    """Apply ``weight`` to every weight leaf and ``bias`` to the bias (None drops it to 0)."""
    out = {}
    for name, value in params.items():
        fn = bias if name == "bias" else weight
        out[name] = jnp.zeros_like(value) if fn is None else fn(value)
    return out


def _pos(v: jax.Array) -> jax.Array:
    return jnp.maximum(v, 0)


def _neg(v: jax.Array) -> jax.Array:
    return jnp.minimum(v, 0)


def _pull(fn: Callable, primals: tuple, cotangent: jax.Array) -> tuple:
    """VJP of ``fn`` at ``primals`` applied to ``cotangent`` (the forward is DCE'd under jit)."""
    _, pull = jax.vjp(fn, *primals)
    return pull(cotangent)


def _single(xs: tuple, rule: Rule) -> jax.Array:
    if len(xs) != 1:
        raise OptionError(
            f"{type(rule).__name__} applies to one-input layers; this layer has {len(xs)} inputs"
        )
    return xs[0]


class Rule:
    """Base class. ``relevance(fn, xs, params, y, R, nonneg, arrays)`` returns one
    relevance array per input in ``xs``. ``y`` is the layer's real output,
    ``nonneg`` is True when every input is known to be >= 0 (e.g. a ReLU output),
    so passes over the negative part of the input can be skipped. ``arrays``
    holds the rule's array parameters (:meth:`arrays`), passed through the
    engine's custom VJP as explicit arguments so they may be traced values."""

    def __post_init__(self) -> None:
        # Every rule's denominator stabiliser is checked here, whatever its name.
        for name in ("epsilon", "stabilizer"):
            if hasattr(self, name):
                _check_stabilizer(name, getattr(self, name))

    def arrays(self) -> dict[str, jax.Array]:
        return {}

    def relevance(self, fn, xs, params, y, R, nonneg, arrays):  # pragma: no cover
        raise NotImplementedError


def _check_stabilizer(name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not value >= 0:
        raise OptionError(f"{name} must be a number >= 0; got {value!r}")


@dataclasses.dataclass(frozen=True)
class Epsilon(Rule):
    """R_j = a_j sum_k w_jk R_k / S(z_k), z including the bias."""

    epsilon: float = 1e-6

    def relevance(self, fn, xs, params, y, R, nonneg, arrays):
        x = _single(xs, self)
        c = R / stabilize(y, self.epsilon)
        (g,) = _pull(lambda v: fn((v,), params), (x,), c)
        return (x * g,)


def _split_passes(fn, params, x, nonneg, w_pos, b_pos, w_neg, c_fn):
    """Shared core of ZPlus/AlphaBeta/Gamma: the output of
    ``fn(x+; w_pos, b_pos) + fn(x-; w_neg, 0)`` is the denominator; returns
    (x+ * VJP_pos(c) + x- * VJP_neg(c)) with c = c_fn(denominator)."""
    p_pos = _map_params(params, w_pos, b_pos)
    if nonneg:
        z = fn((x,), p_pos)
        (g,) = _pull(lambda v: fn((v,), p_pos), (x,), c_fn(z))
        return x * g
    p_neg = _map_params(params, w_neg, None)
    xp, xn = _pos(x), _neg(x)

    def two(u, v):
        return fn((u,), p_pos) + fn((v,), p_neg)

    z = two(xp, xn)
    gp, gn = _pull(two, (xp, xn), c_fn(z))
    return xp * gp + xn * gn


@dataclasses.dataclass(frozen=True)
class AlphaBeta(Rule):
    """alpha * (positive contributions) - beta * (negative contributions); alpha - beta = 1."""

    alpha: float = 2.0
    beta: float = 1.0
    stabilizer: float = 1e-6

    def __post_init__(self) -> None:
        super().__post_init__()
        ok = all(isinstance(v, numbers.Real) and not isinstance(v, bool)
                 for v in (self.alpha, self.beta))  # fmt: skip
        if not (ok and self.beta >= 0 and abs(self.alpha - self.beta - 1.0) < 1e-9):
            raise OptionError(
                f"AlphaBeta needs alpha - beta = 1 and beta >= 0; got alpha={self.alpha!r}, "
                f"beta={self.beta!r}"
            )

    def relevance(self, fn, xs, params, y, R, nonneg, arrays):
        x = _single(xs, self)

        def c_fn(z):
            return R / stabilize(z, self.stabilizer)

        out = self.alpha * _split_passes(fn, params, x, nonneg, _pos, _pos, _neg, c_fn)
        if self.beta:
            out = out - self.beta * _split_passes(fn, params, x, nonneg, _neg, _neg, _pos, c_fn)
        return (out,)


@dataclasses.dataclass(frozen=True)
class ZPlus(Rule):
    """Positive contributions only (the same as AlphaBeta(1, 0))."""

    stabilizer: float = 1e-6

    def relevance(self, fn, xs, params, y, R, nonneg, arrays):
        x = _single(xs, self)

        def c_fn(z):
            return R / stabilize(z, self.stabilizer)

        return (_split_passes(fn, params, x, nonneg, _pos, _pos, _neg, c_fn),)


@dataclasses.dataclass(frozen=True)
class Gamma(Rule):
    """Favour positive contributions by gamma: W + gamma W+ for units with z > 0,
    W + gamma W- for units with z < 0 (the spec's four modified passes)."""

    gamma: float = 0.25
    stabilizer: float = 1e-6

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.gamma, bool) or not (
            isinstance(self.gamma, numbers.Real) and self.gamma >= 0
        ):
            raise OptionError(f"gamma must be a number >= 0; got {self.gamma!r}")

    def relevance(self, fn, xs, params, y, R, nonneg, arrays):
        x = _single(xs, self)
        g = self.gamma

        def up(v):
            return v + g * _pos(v)

        def down(v):
            return v + g * _neg(v)

        def c_for(mask):
            return lambda z: jnp.where(mask, R / stabilize(z, self.stabilizer), 0.0)

        # o1 + o2 with c+ on units z > 0, then o3 + o4 with c- on units z < 0.
        plus = _split_passes(fn, params, x, nonneg, up, up, down, c_for(y > 0))
        minus = _split_passes(fn, params, x, nonneg, down, down, up, c_for(y < 0))
        return (plus + minus,)


@dataclasses.dataclass(frozen=True)
class ZBox(Rule):
    """Bounded-input rule for the first layer: inputs lie in [low, high] (model's
    normalised input space; scalar, per channel or per element, broadcast to the
    layer input and zero-padded with it)."""

    low: Any
    high: Any
    stabilizer: float = 1e-6

    def arrays(self):
        return {"low": jnp.asarray(self.low), "high": jnp.asarray(self.high)}

    def relevance(self, fn, xs, params, y, R, nonneg, arrays):
        x = _single(xs, self)
        low = jnp.broadcast_to(arrays["low"], x.shape).astype(x.dtype)
        high = jnp.broadcast_to(arrays["high"], x.shape).astype(x.dtype)
        p_w = _map_params(params, lambda w: w, None)
        p_pos = _map_params(params, _pos, None)
        p_neg = _map_params(params, _neg, None)

        def den(a, lo, hi):
            return fn((a,), p_w) - fn((lo,), p_pos) - fn((hi,), p_neg)

        c = R / stabilize(den(x, low, high), self.stabilizer)
        gx, glow, ghigh = _pull(den, (x, low, high), c)
        return (x * gx + low * glow + high * ghigh,)


def _ones_rule(fn, x, params, R, eps, weight, bias):
    """Input replaced by ones (zero padding still contributes nothing)."""
    p = _map_params(params, weight, bias)
    ones = jnp.ones_like(x)
    c = R / stabilize(fn((ones,), p), eps)
    (g,) = _pull(lambda v: fn((v,), p), (ones,), c)
    return (g,)


@dataclasses.dataclass(frozen=True)
class WSquare(Rule):
    """R_j = sum_k w_jk^2 R_k / S(sum_j' w_j'k^2 + b_k^2)."""

    stabilizer: float = 1e-6

    def relevance(self, fn, xs, params, y, R, nonneg, arrays):
        x = _single(xs, self)
        return _ones_rule(fn, x, params, R, self.stabilizer, jnp.square, jnp.square)


@dataclasses.dataclass(frozen=True)
class Flat(Rule):
    """R_j = sum_k R_k / S(n_k): uniform over each unit's in-bounds receptive field."""

    stabilizer: float = 1e-6

    def relevance(self, fn, xs, params, y, R, nonneg, arrays):
        x = _single(xs, self)
        return _ones_rule(fn, x, params, R, self.stabilizer, jnp.ones_like, None)


@dataclasses.dataclass(frozen=True)
class Norm(Rule):
    """Proportional split for sums and average pooling: R_i = x_i * VJP_i(R / S(y))."""

    stabilizer: float = 1e-6

    def relevance(self, fn, xs, params, y, R, nonneg, arrays):
        c = R / stabilize(y, self.stabilizer)
        grads = _pull(lambda *v: fn(v, params), tuple(xs), c)
        return tuple(x * g for x, g in zip(xs, grads, strict=True))


@dataclasses.dataclass(frozen=True)
class Pass(Rule):
    """Relevance passes unchanged (activations; shape-preserving one-input layers)."""

    def relevance(self, fn, xs, params, y, R, nonneg, arrays):
        x = _single(xs, self)
        if x.shape != R.shape:
            raise OptionError(
                f"Pass needs equal input and output shapes; got {x.shape} -> {R.shape}"
            )
        return (R,)


@dataclasses.dataclass(frozen=True)
class Gradient(Rule):
    """Plain gradient: the layer is left to autodiff (max pooling, dropout)."""

    def relevance(self, fn, xs, params, y, R, nonneg, arrays):
        return _pull(lambda *v: fn(v, params), tuple(xs), R)
