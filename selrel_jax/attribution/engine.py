"""Layer-wise relevance propagation as a ``jax.vjp`` transform of a Flax linen model.

How it works
------------
:func:`lrp` returns a pure function ``(variables, clips, target) -> relevance``.
It runs ``model.apply`` under ``flax.linen.intercept_methods``; every module
call that a composite maps to a rule is replaced by a ``jax.custom_vjp``
function whose forward pass is the real layer and whose backward pass is the
rule (:mod:`selrel_jax.attribution.rules`, told about the call by a
:class:`~selrel_jax.attribution.types.LayerCall`). ``jax.vjp`` of the whole
model, seeded with the one-hot target, then carries relevance (not gradient)
from rule layer to rule layer. Model code stays plain Flax, and the result is
an ordinary JAX function: it jit-compiles, vmaps and accepts sharded inputs.

Before that, an abstract trace (``jax.eval_shape``, no FLOPs) plans the pass:
it finds the composite's first layer (the first module of its ``first_types``
called), pairs every ``nn.BatchNorm`` with the conv/dense layer whose output it
receives (:mod:`~selrel_jax.attribution.canonizers`: the pair runs as one layer
with merged weights under the layer's rule, the BatchNorm passes its input
through) and raises :class:`UnsupportedLayerError` for any module that owns
variables but has no rule (e.g. ``nn.LayerNorm``), naming its path.

While the forward pass is traced, activation functions have an identity
backward (the Pass rule; :mod:`~selrel_jax.attribution._activations`), and
outputs of ReLU-like activations are tagged non-negative: max/avg pooling,
``Sum`` and dropout keep the tag, and a rule layer whose inputs are all tagged
skips the passes over the negative part of its input (ZPlus, AlphaBeta, Gamma).

Limits: functional sums and pooling inside a model are invisible (use
:mod:`selrel_jax.layers`); a conv/dense output feeding a merged BatchNorm must
not be read by another module (detected) nor reused functionally (invisible).
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from selrel_jax.attribution._activations import activations_as_pass
from selrel_jax.attribution.canonizers import BatchNormInfo, BatchNormPairing, merge_batchnorm
from selrel_jax.attribution.composites import Composite
from selrel_jax.attribution.rules import Gradient, Rule
from selrel_jax.attribution.types import (
    GRADIENT_TYPES,
    LINEAR_TYPES,
    NORM_TYPES,
    PRIMITIVE_TYPES,
    LayerCall,
    LayerFn,
    UnsupportedLayerError,
    one_hot_seed,
    path_str,
)
from selrel_jax.errors import OptionError, ShapeError

__all__ = ["UnsupportedLayerError", "lrp", "one_hot_seed", "path_str", "relevance_vjp"]

Path = tuple[str, ...]

# Layers whose output is >= 0 when every input is (pooling, sums, dropout).
_SIGN_KEEPING_TYPES = (*NORM_TYPES, *GRADIENT_TYPES)

# Re-entrancy guard: rule passes run cloned modules, which must not be
# intercepted again (nor see activations swapped).
_LOCAL = threading.local()


@contextlib.contextmanager
def _bypass() -> Iterator[None]:
    depth = getattr(_LOCAL, "bypass", 0)
    _LOCAL.bypass = depth + 1
    try:
        yield
    finally:
        _LOCAL.bypass = depth


def _bypassed() -> bool:
    return getattr(_LOCAL, "bypass", 0) > 0


def _own_variables(module: nn.Module) -> dict[str, dict[str, Any]]:
    """The module's own variable leaves per collection (not its submodules')."""
    out = {}
    for col, tree in module.variables.items():
        leaves = {k: v for k, v in tree.items() if not isinstance(v, Mapping)}
        if leaves:
            out[col] = leaves
    return out


def _is_leaf(module: nn.Module) -> bool:
    """Owns variables or is a primitive: path patterns may select it."""
    return isinstance(module, PRIMITIVE_TYPES) or bool(_own_variables(module))


def _apply_clone(clone: nn.Module, kwargs: dict, xs: tuple, params: Mapping) -> jax.Array:
    with _bypass():
        return clone.apply({"params": dict(params)} if params else {}, *xs, **kwargs)


# --------------------------------------------------------------------------
# Plan: abstract trace for the first layer, BatchNorm merges, unsupported layers.


@dataclasses.dataclass(frozen=True)
class _Plan:
    first: Path | None
    merges: Mapping[Path, BatchNormInfo]
    merged_batchnorms: frozenset[Path]


def _check_covered(composite: Composite, module: nn.Module, path: Path, first: bool) -> None:
    own = bool(_own_variables(module))
    rule = composite.rule_for(module, path_str(path), first=first, leaf=_is_leaf(module))
    if rule is None and own:
        raise UnsupportedLayerError(
            f"no relevance rule for module '{path_str(path)}' of type "
            f"{type(module).__name__} (it has parameters); add one to the composite's "
            f"layer_map or path_map"
        )


def _plan(model, composite: Composite, variables, clips, apply_kwargs) -> _Plan:
    pairing = BatchNormPairing()
    first: list[Path] = []

    def intercept(next_fun, args, kwargs, context):
        module = context.module
        if context.method_name != "__call__" or _bypassed():
            return next_fun(*args, **kwargs)
        path = tuple(module.path)
        if isinstance(module, nn.BatchNorm):
            pairing.batchnorm(module, args, kwargs)
            return next_fun(*args, **kwargs)
        pairing.module_inputs(path, args, kwargs)
        out = next_fun(*args, **kwargs)
        if isinstance(module, LINEAR_TYPES):
            pairing.linear_output(path, out)
        if not first and isinstance(module, composite.first_types):
            first.append(path)
        _check_covered(composite, module, path, first=first[:1] == [path])
        return out

    def forward(v, x):
        with nn.intercept_methods(intercept):
            return model.apply(v, x, **apply_kwargs)

    structs = jax.tree.map(lambda a: jax.ShapeDtypeStruct(jnp.shape(a), jnp.result_type(a)),
                           (variables, clips))  # fmt: skip
    jax.eval_shape(forward, *structs)
    pairing.check_reuse()
    return _Plan(first[0] if first else None, dict(pairing.merges), pairing.merged_batchnorms)


# --------------------------------------------------------------------------
# The relevance pass.


def _rule_layer(rule: Rule, fn: LayerFn, nonnegative: bool) -> Callable:
    """custom_vjp function: forward = the layer, backward = the rule's relevance."""

    @jax.custom_vjp
    def layer(xs, params, arrays):
        return fn(xs, params)

    def fwd(xs, params, arrays):
        y = fn(xs, params)
        return y, (xs, params, arrays, y)

    def bwd(res, relevance):
        xs, params, arrays, y = res
        call = LayerCall(fn, xs, params, y, nonnegative, arrays)
        out = rule.relevance(call, relevance)
        out = tuple(r.astype(x.dtype) for r, x in zip(out, xs, strict=True))
        zeros = jax.tree.map(jnp.zeros_like, (params, arrays))
        return (out, *zeros)

    layer.defvjp(fwd, bwd)
    return layer


class _RelevanceTrace:
    """State of one traced relevance pass: the interceptor that swaps rule
    layers in, and the non-negativity tags of arrays seen so far."""

    def __init__(self, composite: Composite, plan: _Plan, variables: Mapping) -> None:
        self.composite = composite
        self.plan = plan
        self.variables = variables
        self._nonneg: dict[int, Any] = {}

    def tag(self, x: Any) -> None:
        self._nonneg[id(x)] = x  # the reference keeps id(x) from being reused

    def nonneg(self, x: Any) -> bool:
        return self._nonneg.get(id(x)) is x

    def intercept(self, next_fun, args, kwargs, context):
        module = context.module
        if context.method_name != "__call__" or _bypassed():
            return next_fun(*args, **kwargs)
        path = tuple(module.path)
        if path in self.plan.merged_batchnorms:
            return args[0]
        first = path == self.plan.first
        rule = self.composite.rule_for(module, path_str(path), first=first, leaf=_is_leaf(module))
        if rule is None:
            return next_fun(*args, **kwargs)
        nonneg = bool(args) and all(self.nonneg(x) for x in args)
        if isinstance(rule, Gradient) and path not in self.plan.merges:
            out = next_fun(*args, **kwargs)  # autodiff as is; a merged layer needs its weights
        elif not args:
            raise OptionError(
                f"module '{path_str(path)}' was called without positional inputs; the engine "
                f"propagates relevance to positional arguments only"
            )
        else:
            out = self._rule_call(module, path, rule, args, kwargs, nonneg)
        if nonneg and isinstance(module, _SIGN_KEEPING_TYPES):
            self.tag(out)
        return out

    def _rule_call(self, module, path, rule, args, kwargs, nonneg):
        params = _own_variables(module).get("params", {})
        overrides = {}
        if path in self.plan.merges:
            params = merge_batchnorm(params, self.plan.merges[path], self.variables)
            if getattr(module, "use_bias", True) is False:
                overrides["use_bias"] = True
        clone = module.clone(parent=None, **overrides)

        def fn(xs, p):
            return _apply_clone(clone, kwargs, xs, p)

        return _rule_layer(rule, fn, nonneg)(tuple(args), params, rule.arrays())


def lrp(model: nn.Module, composite: Composite, **apply_kwargs: Any) -> Callable:
    """Relevance propagation transform of a Flax linen ``model`` under ``composite``.

    Returns ``relevance(variables, clips, target=None) -> array`` (float32, the
    shape of ``clips``): the one-hot target (predicted class when None) is
    propagated back to the input. ``apply_kwargs`` go to ``model.apply``.

    Example::

        from selrel_jax.attribution import composites, lrp
        fn = jax.jit(lrp(model, composites.epsilon_plus_flat()))
        relevance = fn(variables, clips, jnp.array([3, 1]))
    """
    if not isinstance(composite, Composite):
        raise OptionError(f"composite must be a Composite; got {type(composite).__name__}")
    if not hasattr(model, "apply"):
        raise OptionError(f"LRP needs a Flax linen model with .apply; got {type(model).__name__}")

    def relevance(variables, clips, target=None):
        logits, pull = relevance_vjp(model, composite, variables, clips, **apply_kwargs)
        if logits.ndim != 2:
            raise ShapeError(f"model must return logits of shape (N, classes); got {logits.shape}")
        return pull(one_hot_seed(logits, target)).astype(jnp.float32)

    return relevance


def relevance_vjp(
    model: nn.Module, composite: Composite, variables, clips, **apply_kwargs: Any
) -> tuple[jax.Array, Callable[[jax.Array], jax.Array]]:
    """``(outputs, pull)``: the model's outputs under the composite (BatchNorm
    merged) and ``pull(output_relevance) -> input relevance`` for any output
    relevance, not only a one-hot one."""
    plan = _plan(model, composite, variables, clips, apply_kwargs)
    trace = _RelevanceTrace(composite, plan, variables)

    def forward(x):
        def active() -> bool:
            return not _bypassed()

        with activations_as_pass(trace.tag, active), nn.intercept_methods(trace.intercept):
            return model.apply(variables, x, **apply_kwargs)

    outputs, pull = jax.vjp(forward, clips)
    return outputs, lambda relevance: pull(relevance)[0]
