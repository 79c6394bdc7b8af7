"""Layer-wise relevance propagation as a ``jax.vjp`` transform of a Flax linen model.

How it works
------------
:func:`lrp` returns a pure function ``(variables, clips, target) -> relevance``.
It runs ``model.apply`` under ``flax.linen.intercept_methods``; every module
call that a composite maps to a rule is replaced by a ``jax.custom_vjp``
function whose forward pass is the real layer and whose backward pass is the
rule (:mod:`selrel_jax.attribution.rules`). ``jax.vjp`` of the whole model,
seeded with the one-hot target, then carries relevance (not gradient) from
rule layer to rule layer. Model code stays plain Flax, and the result is an
ordinary JAX function: it jit-compiles, vmaps and accepts sharded inputs.

Before that, an abstract trace (``jax.eval_shape``, no FLOPs) plans the pass:
it finds the first conv/dense layer (for composites' ``first`` rule), pairs
every ``nn.BatchNorm`` with the conv/dense layer whose output it receives
(canonizer: the pair is replaced by one layer with merged weights
``W * gamma / sqrt(var + eps)`` and bias ``(b - mean) * gamma / sqrt(var + eps)
+ beta``; the BatchNorm then passes its input through), and raises
:class:`UnsupportedLayerError` for any module that owns variables but has no
rule (e.g. ``nn.LayerNorm``), naming its path.

Activations
-----------
Models call activations functionally (``nn.relu(x)``). Plain autodiff would
multiply the backward quantity by ``relu'(z) = 1[z > 0]`` (or ``tanh'(z)`` ...),
while LRP's Pass rule hands relevance through unchanged. They differ for
relevance arriving at units whose activation input was <= 0 (rules that do not
multiply by the input: Flat, WSquare, ZBox on a hidden layer) and for every
non-ReLU activation. So while the forward pass is traced, the activation
functions of ``jax.nn`` and ``flax.linen`` (``relu``, ``gelu``, ``tanh``, ...)
are swapped for wrappers with the same forward and an identity backward (Pass).
Activations reached under other names (``jnp.tanh``, ``jnp.maximum(x, 0)``,
``from jax.nn import relu`` bound before the trace) are invisible: they get
their plain gradient. The same wrappers tag outputs of ReLU-like activations
(relu, relu6, softplus, sigmoid, hard_sigmoid) as non-negative; max/avg pooling,
``Sum`` and dropout keep the tag, and a rule layer whose inputs are all tagged
skips the passes over the negative part of its input (ZPlus, AlphaBeta, Gamma).

Limits: functional sums and pooling inside a model are invisible (use
:mod:`selrel_jax.layers`); a conv/dense output feeding a merged BatchNorm must
not be used anywhere else.
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from selrel_jax.attribution.composites import LINEAR_TYPES, PRIMITIVE_TYPES, Composite
from selrel_jax.attribution.rules import Gradient, Rule
from selrel_jax.errors import OptionError, SelrelError, ShapeError
from selrel_jax.layers import AvgPool, GlobalAvgPool, MaxPool, Sum

__all__ = ["UnsupportedLayerError", "lrp", "one_hot_seed", "path_str", "relevance_vjp"]


class UnsupportedLayerError(SelrelError):
    """A module owns variables but no rule of the composite covers it."""


def path_str(path: tuple[str, ...]) -> str:
    """Module path as written in composites' path patterns: ``"block1/conv2"``."""
    return "/".join(path) if path else "<root>"


def one_hot_seed(logits: jax.Array, target: jax.Array | None) -> jax.Array:
    """One-hot output relevance (value 1 at the target; predicted class if None)."""
    if target is None:
        target = jnp.argmax(logits, axis=-1)
    return jax.nn.one_hot(target, logits.shape[-1], dtype=logits.dtype)


# --------------------------------------------------------------------------
# Re-entrancy guard: rule backward passes run cloned modules, which must not be
# intercepted again. Activation state: the engine pass being traced, if any.

_LOCAL = threading.local()


@contextlib.contextmanager
def _bypass():
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


def _apply_clone(clone: nn.Module, kwargs: dict, xs: tuple, params: Mapping) -> jax.Array:
    with _bypass():
        return clone.apply({"params": dict(params)} if params else {}, *xs, **kwargs)


# --------------------------------------------------------------------------
# Activations: Pass rule by swapping the functions while the forward is traced.

_ACTIVATIONS = (
    "relu", "relu6", "leaky_relu", "elu", "celu", "selu", "gelu", "silu", "swish",
    "softplus", "sigmoid", "hard_sigmoid", "hard_silu", "hard_swish", "hard_tanh",
    "tanh", "log_sigmoid", "soft_sign", "mish",
)  # fmt: skip
_NONNEG_ACTIVATIONS = frozenset({"relu", "relu6", "softplus", "sigmoid", "hard_sigmoid"})
_PATCH_LOCK = threading.RLock()
_PATCH_DEPTH = [0]
_ORIGINALS: list[tuple[Any, str, Any]] = []


def _pass_wrapper(name: str, original: Callable) -> Callable:
    def activation(x, *args, **kwargs):
        state = getattr(_LOCAL, "state", None)
        if state is None or _bypassed():
            return original(x, *args, **kwargs)

        @jax.custom_vjp
        def act(v):
            return original(v, *args, **kwargs)

        act.defvjp(lambda v: (original(v, *args, **kwargs), None), lambda _, g: (g,))
        out = act(x)
        if name in _NONNEG_ACTIVATIONS:
            state.tag(out)
        return out

    activation.__wrapped__ = original
    activation.__doc__ = original.__doc__
    return activation


def _namespaces() -> tuple[Any, ...]:
    import flax.linen.activation as flax_activation

    return (jax.nn, nn, flax_activation)


@contextlib.contextmanager
def _pass_activations():
    with _PATCH_LOCK:
        if _PATCH_DEPTH[0] == 0:
            wrappers: dict[int, Callable] = {}
            for ns in _namespaces():
                for name in _ACTIVATIONS:
                    original = getattr(ns, name, None)
                    if original is None:
                        continue
                    wrapper = wrappers.setdefault(id(original), _pass_wrapper(name, original))
                    _ORIGINALS.append((ns, name, original))
                    setattr(ns, name, wrapper)
        _PATCH_DEPTH[0] += 1
    try:
        yield
    finally:
        with _PATCH_LOCK:
            _PATCH_DEPTH[0] -= 1
            if _PATCH_DEPTH[0] == 0:
                while _ORIGINALS:
                    ns, name, original = _ORIGINALS.pop()
                    setattr(ns, name, original)


# --------------------------------------------------------------------------
# Plan: abstract trace for first layer, BatchNorm merges, unsupported layers.


@dataclasses.dataclass(frozen=True)
class _BatchNormInfo:
    path: tuple[str, ...]
    epsilon: float
    use_scale: bool
    use_bias: bool


@dataclasses.dataclass
class _Plan:
    first: tuple[str, ...] | None = None
    merges: dict[tuple[str, ...], _BatchNormInfo] = dataclasses.field(default_factory=dict)
    merged_bns: set[tuple[str, ...]] = dataclasses.field(default_factory=set)


def _check_batchnorm(module: nn.BatchNorm, args: tuple, kwargs: dict) -> None:
    where = path_str(module.path)
    use_avg = kwargs.get("use_running_average", args[1] if len(args) > 1 else None)
    use_avg = module.use_running_average if use_avg is None else use_avg
    if not use_avg:
        raise OptionError(
            f"BatchNorm at '{where}' uses batch statistics (train mode); relevance needs "
            f"use_running_average=True"
        )
    axis = module.axis if isinstance(module.axis, int) else tuple(module.axis)
    if axis not in (-1, args[0].ndim - 1):
        raise UnsupportedLayerError(
            f"BatchNorm at '{where}' normalises axis {axis!r}; only the channel axis (-1) "
            f"can be merged into the preceding layer"
        )


def _plan(model, composite: Composite, variables, clips, apply_kwargs) -> _Plan:
    plan = _Plan()
    linear_outputs: dict[int, tuple[Any, tuple[str, ...]]] = {}

    def intercept(next_fun, args, kwargs, context):
        module = context.module
        if context.method_name != "__call__" or _bypassed():
            return next_fun(*args, **kwargs)
        path = tuple(module.path)
        if isinstance(module, nn.BatchNorm):
            _check_batchnorm(module, args, kwargs)
            source = linear_outputs.get(id(args[0]))
            if source is None or source[0] is not args[0]:
                raise UnsupportedLayerError(
                    f"BatchNorm at '{path_str(path)}' does not directly follow a conv/dense "
                    f"layer, so it cannot be merged (canonizer); no rule covers it"
                )
            plan.merges[source[1]] = _BatchNormInfo(
                path, float(module.epsilon), bool(module.use_scale), bool(module.use_bias)
            )
            plan.merged_bns.add(path)
            return next_fun(*args, **kwargs)
        out = next_fun(*args, **kwargs)
        if isinstance(module, LINEAR_TYPES):
            if plan.first is None:
                plan.first = path
            linear_outputs[id(out)] = (out, path)
        own = bool(_own_variables(module))
        leaf = own or isinstance(module, PRIMITIVE_TYPES)
        rule = composite.rule_for(module, path_str(path), path == plan.first, leaf)
        if rule is None and own:
            raise UnsupportedLayerError(
                f"no relevance rule for module '{path_str(path)}' of type "
                f"{type(module).__name__} (it has parameters); add one to the composite's "
                f"layer_map or path_map"
            )
        return out

    def forward(v, x):
        with nn.intercept_methods(intercept):
            return model.apply(v, x, **apply_kwargs)

    structs = jax.tree.map(lambda a: jax.ShapeDtypeStruct(jnp.shape(a), jnp.result_type(a)),
                           (variables, clips))  # fmt: skip
    jax.eval_shape(forward, *structs)
    return plan


# --------------------------------------------------------------------------
# The relevance pass.


def _subtree(tree: Mapping, path: tuple[str, ...]) -> Mapping:
    for name in path:
        tree = tree[name]
    return tree


def _merge_batchnorm(params: Mapping, info: _BatchNormInfo, variables: Mapping) -> dict:
    stats = _subtree(variables["batch_stats"], info.path)
    bn = _subtree(variables["params"], info.path) if (info.use_scale or info.use_bias) else {}
    scale = jax.lax.rsqrt(stats["var"] + info.epsilon)
    if info.use_scale:
        scale = scale * bn["scale"]
    kernel = params["kernel"]
    bias = params.get("bias", jnp.zeros(kernel.shape[-1], kernel.dtype))
    new_bias = (bias - stats["mean"]) * scale
    if info.use_bias:
        new_bias = new_bias + bn["bias"]
    return {"kernel": kernel * scale.astype(kernel.dtype), "bias": new_bias.astype(kernel.dtype)}


def _rule_layer(rule: Rule, fn: Callable, nonneg: bool) -> Callable:
    """custom_vjp function: forward = the layer, backward = the rule's relevance."""

    @jax.custom_vjp
    def layer(xs, params, arrays):
        return fn(xs, params)

    def fwd(xs, params, arrays):
        y = fn(xs, params)
        return y, (xs, params, arrays, y)

    def bwd(res, relevance):
        xs, params, arrays, y = res
        out = rule.relevance(fn, xs, params, y, relevance, nonneg, arrays)
        out = tuple(r.astype(x.dtype) for r, x in zip(out, xs, strict=True))
        zeros = jax.tree.map(jnp.zeros_like, (params, arrays))
        return (out, *zeros)

    layer.defvjp(fwd, bwd)
    return layer


_TAG_KEEPERS = (MaxPool, AvgPool, GlobalAvgPool, Sum, nn.Dropout)


class _Pass:
    """State of one traced relevance pass (interceptor + non-negativity tags)."""

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
        if path in self.plan.merged_bns:
            return args[0]
        leaf = isinstance(module, PRIMITIVE_TYPES) or bool(_own_variables(module))
        rule = self.composite.rule_for(module, path_str(path), path == self.plan.first, leaf)
        if rule is None:
            return next_fun(*args, **kwargs)
        nonneg = bool(args) and all(self.nonneg(x) for x in args)
        if not args and not isinstance(rule, Gradient):
            raise OptionError(
                f"module '{path_str(path)}' was called without positional inputs; the engine "
                f"propagates relevance to positional arguments only"
            )
        if isinstance(rule, Gradient):
            out = next_fun(*args, **kwargs)
        else:
            out = self._rule_call(module, path, rule, args, kwargs, nonneg)
        if nonneg and isinstance(module, _TAG_KEEPERS):
            self.tag(out)
        return out

    def _rule_call(self, module, path, rule, args, kwargs, nonneg):
        params = _own_variables(module).get("params", {})
        overrides = {}
        if path in self.plan.merges:
            params = _merge_batchnorm(params, self.plan.merges[path], self.variables)
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
    state = _Pass(composite, plan, variables)

    def forward(x):
        previous = getattr(_LOCAL, "state", None)
        _LOCAL.state = state
        try:
            with _pass_activations(), nn.intercept_methods(state.intercept):
                return model.apply(variables, x, **apply_kwargs)
        finally:
            _LOCAL.state = previous

    outputs, pull = jax.vjp(forward, clips)
    return outputs, lambda relevance: pull(relevance)[0]
