"""Relevance rules: how one layer hands the relevance at its output to its inputs.

Every rule is "modified gradient times input", with Zennit's definitions:
run one or more modified forward passes ``o_i = f(in_i; theta_i)`` of the layer,
divide the incoming relevance by a stabilised denominator, pull it back with the
vector-Jacobian product of ``o_i`` (``jax.vjp``) and multiply by the matching
input. A rule is a small frozen dataclass holding its parameters; its
``relevance(call, relevance)`` method is that recipe, written in terms of the
:class:`~selrel_jax.attribution.types.LayerCall` the engine hands it (the layer
as a pure function ``call.fn(inputs, params)``, its inputs, parameters and
output).

Rules for linear layers (one input): :class:`Epsilon`, :class:`ZPlus`,
:class:`AlphaBeta`, :class:`Gamma`, :class:`ZBox`, :class:`Flat`,
:class:`WSquare`. Rules for parameter-free layers: :class:`Norm` (sums and
average pooling: proportional split), :class:`Pass` (relevance unchanged) and
:class:`Gradient` (plain gradient, used for max pooling).

A stabiliser of 0 (``Epsilon(0)`` is LRP-0) is allowed: where a denominator is
exactly 0 the ratio is 0 (no relevance flows through that unit), never NaN.

Examples:
    >>> from selrel_jax.attribution import rules
    >>> rules.Gamma(gamma=0.5)
    Gamma(gamma=0.5, stabilizer=1e-06)
    >>> rules.Gamma(gamma=-1.0)
    Traceback (most recent call last):
    ...
    selrel_jax.errors.OptionError: Gamma gamma must be ...
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from selrel_jax._checks import one_of, real
from selrel_jax.attribution._inputs import check_option_array, traced
from selrel_jax.attribution.types import LayerCall, Params
from selrel_jax.errors import OptionError, ShapeError

__all__ = [
    "AlphaBeta",
    "AttnSoftmax",
    "Epsilon",
    "Flat",
    "Gamma",
    "Gradient",
    "LayerCall",
    "Norm",
    "Pass",
    "Rule",
    "Uniform",
    "WSquare",
    "ZBox",
    "ZPlus",
    "safe_divide",
    "stabilize",
]

ParamMap = Callable[[jax.Array], jax.Array]


def stabilize(z: jax.Array, eps: float) -> jax.Array:
    """S(z) = z + eps * s(z) with s(z) = +1 where z >= 0, -1 where z < 0."""
    return z + eps * jnp.where(z >= 0, 1.0, -1.0).astype(z.dtype)


def safe_divide(numerator: jax.Array, denominator: jax.Array) -> jax.Array:
    """numerator / denominator, and 0 where the denominator is exactly 0.

    The inner ``where`` keeps the untaken branch finite, so gradients through
    this division have no NaN either (a bare ``where(d == 0, 0, n / d)`` has)."""
    zero = denominator == 0
    ratio = numerator / jnp.where(zero, jnp.ones_like(denominator), denominator)
    return jnp.where(zero, jnp.zeros_like(ratio), ratio)


def _ratio(relevance: jax.Array, denominator: jax.Array, eps: float) -> jax.Array:
    """relevance / S(denominator), 0 where S(denominator) = 0 (only when eps = 0)."""
    return safe_divide(relevance, stabilize(denominator, eps))


def _map_params(params: Params, *, weight: ParamMap | None, bias: ParamMap | None) -> dict:
    """Apply ``weight`` to every weight leaf and ``bias`` to the bias (None: set to 0)."""
    out = {}
    for name, value in params.items():
        fn = bias if name == "bias" else weight
        out[name] = jnp.zeros_like(value) if fn is None else fn(value)
    return out


def _pos(v: jax.Array) -> jax.Array:
    return jnp.maximum(v, 0)


def _neg(v: jax.Array) -> jax.Array:
    return jnp.minimum(v, 0)


def _identity(v: jax.Array) -> jax.Array:
    return v


def _pull(fn: Callable, primals: tuple, cotangent: jax.Array) -> tuple:
    """VJP of ``fn`` at ``primals`` applied to ``cotangent`` (the forward is DCE'd under jit)."""
    _, pull = jax.vjp(fn, *primals)
    return pull(cotangent)


def _single(call: LayerCall, rule: Rule) -> jax.Array:
    if len(call.inputs) != 1:
        raise OptionError(
            f"{type(rule).__name__} applies to one-input layers; this layer has "
            f"{len(call.inputs)} inputs"
        )
    return call.inputs[0]


class Rule:
    """Base class of the relevance rules.

    ``relevance(call, relevance)`` returns one relevance array per input in
    ``call.inputs`` (see :class:`~selrel_jax.attribution.types.LayerCall`).
    :meth:`arrays` names the rule's array-valued parameters (e.g. ZBox's
    bounds); the engine hands them back as ``call.arrays``. Every rule's
    denominator stabiliser (a field named ``epsilon`` or ``stabilizer``) is
    checked to be a number >= 0 here, whatever the subclass.
    """

    def __post_init__(self) -> None:
        for name in ("epsilon", "stabilizer"):
            if hasattr(self, name):
                real(f"{type(self).__name__} {name}", getattr(self, name), minimum=0.0)

    def arrays(self) -> dict[str, jax.Array]:
        return {}

    def invalid(self, arrays: Mapping[str, jax.Array]) -> jax.Array | None:
        """Elementwise True where the (traced) ``arrays`` hold invalid values; the
        engine makes the relevance of the affected clips NaN. Concrete values
        are checked when the rule is made. None: nothing to check."""
        return None

    def relevance(self, call: LayerCall, relevance: jax.Array) -> tuple[jax.Array, ...]:
        raise NotImplementedError  # pragma: no cover


@dataclasses.dataclass(frozen=True)
class Epsilon(Rule):
    """R_j = a_j sum_k w_jk R_k / S(z_k), z including the bias. ``epsilon=0`` is LRP-0."""

    epsilon: float = 1e-6

    def relevance(self, call: LayerCall, relevance: jax.Array) -> tuple[jax.Array, ...]:
        x = _single(call, self)
        ratio = _ratio(relevance, call.output, self.epsilon)
        (grad,) = _pull(lambda v: call.fn((v,), call.params), (x,), ratio)
        return (x * grad,)


def _split_passes(
    call: LayerCall,
    *,
    positive_input_weight: ParamMap,
    bias: ParamMap,
    negative_input_weight: ParamMap,
    ratio: Callable[[jax.Array], jax.Array],
) -> jax.Array:
    """Shared core of ZPlus/AlphaBeta/Gamma. The denominator is
    ``fn(x+; positive_input_weight(W), bias(b)) + fn(x-; negative_input_weight(W), 0)``;
    returns ``x+ * VJP+(c) + x- * VJP-(c)`` with ``c = ratio(denominator)``.
    Known non-negative inputs skip the x- pass (it would be all zeros)."""
    x = call.inputs[0]
    fn = call.fn
    positive = _map_params(call.params, weight=positive_input_weight, bias=bias)
    if call.nonnegative:
        denominator = fn((x,), positive)
        (grad,) = _pull(lambda v: fn((v,), positive), (x,), ratio(denominator))
        return x * grad
    negative = _map_params(call.params, weight=negative_input_weight, bias=None)
    x_pos, x_neg = _pos(x), _neg(x)

    def both(u, v):
        return fn((u,), positive) + fn((v,), negative)

    denominator = both(x_pos, x_neg)
    grad_pos, grad_neg = _pull(both, (x_pos, x_neg), ratio(denominator))
    return x_pos * grad_pos + x_neg * grad_neg


@dataclasses.dataclass(frozen=True)
class AlphaBeta(Rule):
    """alpha * (positive contributions) - beta * (negative contributions); alpha - beta = 1."""

    alpha: float = 2.0
    beta: float = 1.0
    stabilizer: float = 1e-6

    def __post_init__(self) -> None:
        super().__post_init__()
        alpha = real("AlphaBeta alpha", self.alpha)
        beta = real("AlphaBeta beta", self.beta)
        if not (beta >= 0 and abs(alpha - beta - 1.0) < 1e-9):
            raise OptionError(
                f"AlphaBeta needs alpha - beta = 1 and beta >= 0; got alpha={self.alpha!r}, "
                f"beta={self.beta!r}"
            )

    def relevance(self, call: LayerCall, relevance: jax.Array) -> tuple[jax.Array, ...]:
        _single(call, self)

        def ratio(z):
            return _ratio(relevance, z, self.stabilizer)

        out = self.alpha * _split_passes(
            call, positive_input_weight=_pos, bias=_pos, negative_input_weight=_neg, ratio=ratio
        )
        if self.beta:
            out = out - self.beta * _split_passes(
                call, positive_input_weight=_neg, bias=_neg, negative_input_weight=_pos, ratio=ratio
            )
        return (out,)


@dataclasses.dataclass(frozen=True)
class ZPlus(Rule):
    """Positive contributions only (the same as AlphaBeta(1, 0))."""

    stabilizer: float = 1e-6

    def relevance(self, call: LayerCall, relevance: jax.Array) -> tuple[jax.Array, ...]:
        _single(call, self)

        def ratio(z):
            return _ratio(relevance, z, self.stabilizer)

        out = _split_passes(
            call, positive_input_weight=_pos, bias=_pos, negative_input_weight=_neg, ratio=ratio
        )
        return (out,)


@dataclasses.dataclass(frozen=True)
class Gamma(Rule):
    """Favour positive contributions by gamma: W + gamma W+ for units with z > 0,
    W + gamma W- for units with z < 0 (the spec's four modified passes)."""

    gamma: float = 0.25
    stabilizer: float = 1e-6

    def __post_init__(self) -> None:
        super().__post_init__()
        real("Gamma gamma", self.gamma, minimum=0.0)

    def relevance(self, call: LayerCall, relevance: jax.Array) -> tuple[jax.Array, ...]:
        _single(call, self)
        g = self.gamma

        def up(v):
            return v + g * _pos(v)

        def down(v):
            return v + g * _neg(v)

        def ratio_where(mask):
            return lambda z: jnp.where(mask, _ratio(relevance, z, self.stabilizer), 0.0)

        # o1 + o2 with c+ on units z > 0, then o3 + o4 with c- on units z < 0.
        plus = _split_passes(
            call,
            positive_input_weight=up,
            bias=up,
            negative_input_weight=down,
            ratio=ratio_where(call.output > 0),
        )
        minus = _split_passes(
            call,
            positive_input_weight=down,
            bias=down,
            negative_input_weight=up,
            ratio=ratio_where(call.output < 0),
        )
        return (plus + minus,)


@dataclasses.dataclass(frozen=True)
class ZBox(Rule):
    """Bounded-input rule for the first layer: inputs lie in [low, high] (model's
    normalised input space; scalar, per channel or per element, broadcast to the
    layer input and zero-padded with it)."""

    low: Any
    high: Any
    stabilizer: float = 1e-6

    def __post_init__(self) -> None:
        super().__post_init__()
        low = check_option_array("ZBox low", self.low)
        high = check_option_array("ZBox high", self.high)
        try:
            np.broadcast_shapes(low.shape, high.shape)
        except ValueError:
            raise ShapeError(
                f"ZBox low of shape {low.shape} and high of shape {high.shape} do not "
                f"broadcast together"
            ) from None
        if not (traced(low) or traced(high)):
            above = int(np.sum(~(np.asarray(low) <= np.asarray(high))))
            if above:
                raise OptionError(
                    f"ZBox needs low <= high everywhere; {above} value(s) of low are above "
                    f"high (low {_brief(low)}, high {_brief(high)})"
                )

    def arrays(self) -> dict[str, jax.Array]:
        return {"low": jnp.asarray(self.low), "high": jnp.asarray(self.high)}

    def invalid(self, arrays: Mapping[str, jax.Array]) -> jax.Array:
        return ~(arrays["low"] <= arrays["high"])  # NaN too

    def relevance(self, call: LayerCall, relevance: jax.Array) -> tuple[jax.Array, ...]:
        x = _single(call, self)
        low, high = call.arrays["low"], call.arrays["high"]
        try:
            low = jnp.broadcast_to(low, x.shape).astype(x.dtype)
            high = jnp.broadcast_to(high, x.shape).astype(x.dtype)
        except ValueError:
            raise ShapeError(
                f"ZBox low of shape {jnp.shape(call.arrays['low'])} and high of shape "
                f"{jnp.shape(call.arrays['high'])} must broadcast to the first layer's input "
                f"{x.shape} (scalar, per channel (C,) or clip-shaped)"
            ) from None
        fn = call.fn
        weights = _map_params(call.params, weight=_identity, bias=None)
        positive = _map_params(call.params, weight=_pos, bias=None)
        negative = _map_params(call.params, weight=_neg, bias=None)

        def denominator(a, lo, hi):
            return fn((a,), weights) - fn((lo,), positive) - fn((hi,), negative)

        ratio = _ratio(relevance, denominator(x, low, high), self.stabilizer)
        grad_x, grad_low, grad_high = _pull(denominator, (x, low, high), ratio)
        return (x * grad_x + low * grad_low + high * grad_high,)


def _brief(x: jax.Array) -> str:
    return str(np.asarray(x).tolist()) if np.size(x) <= 4 else f"of shape {x.shape}"


def _ones_rule(
    call: LayerCall,
    relevance: jax.Array,
    *,
    weight: ParamMap,
    bias: ParamMap | None,
    stabilizer: float,
) -> tuple[jax.Array]:
    """Input replaced by ones, parameters mapped (zero padding still contributes nothing)."""
    params = _map_params(call.params, weight=weight, bias=bias)
    return _ones_pass(call, relevance, params, stabilizer)


def _ones_pass(
    call: LayerCall, relevance: jax.Array, params: Params, stabilizer: float
) -> tuple[jax.Array]:
    """The layer with parameters ``params`` on an all-ones input: ``relevance`` divided
    by its stabilised output, pulled back through it."""
    ones = jnp.ones_like(call.inputs[0])
    ratio = _ratio(relevance, call.fn((ones,), params), stabilizer)
    (grad,) = _pull(lambda v: call.fn((v,), params), (ones,), ratio)
    return (grad,)


@dataclasses.dataclass(frozen=True)
class WSquare(Rule):
    """R_j = sum_k w_jk^2 R_k / S(sum_j' w_j'k^2 + b_k^2)."""

    stabilizer: float = 1e-6

    def relevance(self, call: LayerCall, relevance: jax.Array) -> tuple[jax.Array, ...]:
        _single(call, self)
        return _ones_rule(
            call, relevance, weight=jnp.square, bias=jnp.square, stabilizer=self.stabilizer
        )


@dataclasses.dataclass(frozen=True)
class Flat(Rule):
    """R_j = sum_k R_k / S(n_k): uniform over each unit's in-bounds receptive field."""

    stabilizer: float = 1e-6

    def relevance(self, call: LayerCall, relevance: jax.Array) -> tuple[jax.Array, ...]:
        _single(call, self)
        if call.kernel_axes and set(call.params) <= {"kernel", "bias"}:
            return _flat_one_unit(call, relevance, self.stabilizer)
        return _ones_rule(
            call, relevance, weight=jnp.ones_like, bias=None, stabilizer=self.stabilizer
        )


def _flat_one_unit(call: LayerCall, relevance: jax.Array, stabilizer: float) -> tuple[jax.Array]:
    """Flat through one output unit. Every unit has the same all-ones weights, so the
    same denominator n and the same backward map: sum_k R_k / S(n_k) = (sum_k R_k) / S(n)
    taken through one unit's pass is the full rule's result, at 1/units of its cost (the
    first layer of a video model: 64 units over the largest input)."""
    kernel = call.params["kernel"]
    shape = [1 if axis in call.kernel_axes else size for axis, size in enumerate(kernel.shape)]
    params = {"kernel": jnp.ones(shape, kernel.dtype)}
    total = jnp.sum(relevance, axis=call.out_axes, keepdims=True)
    return _ones_pass(call, total, params, stabilizer)


@dataclasses.dataclass(frozen=True)
class Norm(Rule):
    """Proportional split for sums and average pooling: R_i = x_i * VJP_i(R / S(y))."""

    stabilizer: float = 1e-6

    def relevance(self, call: LayerCall, relevance: jax.Array) -> tuple[jax.Array, ...]:
        ratio = _ratio(relevance, call.output, self.stabilizer)
        grads = _pull(lambda *v: call.fn(v, call.params), tuple(call.inputs), ratio)
        return tuple(x * g for x, g in zip(call.inputs, grads, strict=True))


@dataclasses.dataclass(frozen=True)
class Pass(Rule):
    """Relevance passes unchanged (activations; shape-preserving one-input layers)."""

    def relevance(self, call: LayerCall, relevance: jax.Array) -> tuple[jax.Array, ...]:
        x = _single(call, self)
        if x.shape != relevance.shape:
            raise OptionError(
                f"Pass needs equal input and output shapes; got {x.shape} -> {relevance.shape}"
            )
        return (relevance,)


@dataclasses.dataclass(frozen=True)
class Gradient(Rule):
    """Plain gradient: the layer is left to autodiff (max pooling, dropout)."""

    def relevance(self, call: LayerCall, relevance: jax.Array) -> tuple[jax.Array, ...]:
        return _pull(lambda *v: call.fn(v, call.params), tuple(call.inputs), relevance)


@dataclasses.dataclass(frozen=True)
class AttnSoftmax(Rule):
    """AttnLRP's softmax rule (Achtibat et al. 2024, Prop. 3.1; lxt's ``softmax``):
    Taylor decomposition at the logits with the bias term,
    ``R_x = x * (R - s * sum R)``, the sum over the axes the softmax normalises
    over (``call.out_axes``); logits of -inf (masked) count as 0. A layer
    whose axes are not known gets ``x * VJP(R / (s + epsilon))``, the same
    where no output is 0."""

    epsilon: float = 1e-12

    def relevance(self, call: LayerCall, relevance: jax.Array) -> tuple[jax.Array, ...]:
        x = _single(call, self)
        s = call.output
        if call.out_axes:
            grad = relevance - s * jnp.sum(relevance, axis=call.out_axes, keepdims=True)
        else:
            ratio = safe_divide(relevance, s + self.epsilon)
            (grad,) = _pull(lambda v: call.fn((v,), call.params), (x,), ratio)
        return (jnp.where(jnp.isneginf(x), 0.0, x) * grad,)


@dataclasses.dataclass(frozen=True)
class Uniform(Rule):
    """AttnLRP's uniform rule for a product of activations (Prop. 3.2/3.3; lxt's
    ``mul2`` and ``matmul``): each of the n factors gets 1/n of the relevance,
    each by the epsilon rule, ``R_i = x_i * VJP_i(R / S(n * y))``.
    ``gate_constant``: a factor that is a gate (a sigmoid or softmax output,
    ``call.gates``) is held constant, so the other factors get all the
    relevance (CP-LRP's rule for attention and gates)."""

    epsilon: float = 1e-8
    gate_constant: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        one_of("Uniform gate_constant", self.gate_constant, (True, False))

    def relevance(self, call: LayerCall, relevance: jax.Array) -> tuple[jax.Array, ...]:
        xs = tuple(call.inputs)
        gates = call.gates or (False,) * len(xs)
        held = gates if self.gate_constant and not all(gates) else (False,) * len(xs)
        n = len(xs) - sum(held)
        ratio = _ratio(relevance, n * call.output, self.epsilon)
        grads = _pull(lambda *v: call.fn(v, call.params), xs, ratio)
        return tuple(jnp.zeros_like(x) if h else x * g
                     for x, g, h in zip(xs, grads, held, strict=True))  # fmt: skip
