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

The planning trace also checks the model against the clips (variables that do
not fit, clips too small for a layer: :mod:`~selrel_jax.attribution._model_checks`)
and warns (:class:`UnseenNonlinearityWarning`) when the model applies elementwise
nonlinear functions that neither a rule nor the activation swap covers.
:func:`lrp`'s function checks its arguments and treats invalid values as
:mod:`~selrel_jax.attribution._inputs` says: eager calls raise, traced invalid
values give an all-NaN relevance for their clip.

Limits: functional sums and pooling inside a model are invisible (use
:mod:`selrel_jax.layers`); a conv/dense output feeding a merged BatchNorm must
not be read by another module (detected) nor reused functionally (invisible).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import sys
import threading
import warnings
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from selrel_jax.attribution._activations import activations_as_pass
from selrel_jax.attribution._inputs import (
    check_clips,
    check_logits,
    check_target,
    finish,
    input_problems,
    per_clip,
    traced,
)
from selrel_jax.attribution._model_checks import (
    ENGINE_SCOPE,
    check_module_output,
    check_no_empty_reduction,
    unseen_nonlinearities,
    variable_errors,
)
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
    UnseenNonlinearityWarning,
    UnsupportedLayerError,
    one_hot_seed,
    path_str,
)
from selrel_jax.errors import OptionError

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
    outputs: Any  # the model's outputs as ShapeDtypeStructs


def _check_covered(composite: Composite, module: nn.Module, path: Path, first: bool) -> None:
    own = bool(_own_variables(module))
    rule = composite.rule_for(module, path_str(path), first=first, leaf=_is_leaf(module))
    if rule is None and own:
        raise UnsupportedLayerError(
            f"no relevance rule for module '{path_str(path)}' of type "
            f"{type(module).__name__} (it has parameters); add one to the composite's "
            f"layer_map or path_map"
        )


class _Planner:
    """Interceptor of the planning trace: finds the first layer, pairs BatchNorms
    with their layers, checks that every module with parameters has a rule and
    that no module output is empty (clips too small), and runs what the engine
    handles itself (rule layers, BatchNorms) in ``ENGINE_SCOPE``, so the
    nonlinearity scan of the trace skips it."""

    def __init__(self, composite: Composite, clips_shape: tuple[int, ...]) -> None:
        self.composite = composite
        self.clips_shape = clips_shape
        self.pairing = BatchNormPairing()
        self.first: list[Path] = []

    def intercept(self, next_fun, args, kwargs, context):
        module = context.module
        if context.method_name != "__call__" or _bypassed():
            return next_fun(*args, **kwargs)
        path = tuple(module.path)
        if isinstance(module, nn.BatchNorm):
            self.pairing.batchnorm(module, args, kwargs)
            with jax.named_scope(ENGINE_SCOPE):
                return next_fun(*args, **kwargs)
        self.pairing.module_inputs(path, args, kwargs)
        with self._scope(module, path):
            out = next_fun(*args, **kwargs)
        if isinstance(module, LINEAR_TYPES):
            self.pairing.linear_output(path, out)
        if not self.first and isinstance(module, self.composite.first_types):
            self.first.append(path)
        _check_covered(self.composite, module, path, first=self.first[:1] == [path])
        check_module_output(path, module, out, self.clips_shape)
        return out

    def _scope(self, module: nn.Module, path: Path) -> contextlib.AbstractContextManager:
        may_be_first = isinstance(module, self.composite.first_types) and self.first[:1] in (
            [], [path]
        )  # fmt: skip
        rule = self.composite.rule_for(
            module, path_str(path), first=may_be_first, leaf=_is_leaf(module)
        )
        return jax.named_scope(ENGINE_SCOPE) if rule is not None else contextlib.nullcontext()


# selrel_jax/, jax/ and flax/: frames a warning should not blame (nor the standard library's).
_LIBRARY_DIRS = tuple(
    os.path.dirname(path) + os.sep
    for path in (
        os.path.dirname(os.path.abspath(__file__)),
        jax.__file__,
        os.path.dirname(nn.__file__),
    )
)
_STDLIB_DIR = os.path.dirname(contextlib.__file__) + os.sep


def _is_library(filename: str) -> bool:
    if filename.startswith(_LIBRARY_DIRS):
        return True
    return filename.startswith(_STDLIB_DIR) and "site-packages" not in filename


def _caller_stacklevel() -> int:
    """``stacklevel`` of the first frame outside selrel_jax, JAX, Flax and the
    standard library: the user's call, however deep the trace started it."""
    frame, level = sys._getframe(1), 1
    while frame is not None and _is_library(frame.f_code.co_filename):
        frame, level = frame.f_back, level + 1
    return level


def _warn_unseen(found: list[str]) -> None:
    if not found:
        return
    shown = "; ".join(found[:8]) + (f"; and {len(found) - 8} more" if len(found) > 8 else "")
    warnings.warn(
        f"LRP cannot see {len(found)} elementwise nonlinear operation(s) of the model, which "
        f"get their plain gradient instead of a relevance rule: {shown}. Call activations "
        f"as nn.<name> / jax.nn.<name> inside the model (they get the Pass rule), or move "
        f"the operation into a module a rule covers",
        UnseenNonlinearityWarning,
        stacklevel=_caller_stacklevel(),
    )


def _plan(model, composite: Composite, variables, clips, apply_kwargs) -> _Plan:
    clips_shape = tuple(jnp.shape(clips))
    planner = _Planner(composite, clips_shape)

    def forward(v, x):
        # Activations swapped as in the relevance pass, so the scan sees what LRP sees.
        with activations_as_pass(lambda _: None, lambda: not _bypassed()):
            with nn.intercept_methods(planner.intercept):
                return model.apply(v, x, **apply_kwargs)

    structs = jax.tree.map(lambda a: jax.ShapeDtypeStruct(jnp.shape(a), jnp.result_type(a)),
                           (variables, clips))  # fmt: skip
    with variable_errors(clips_shape):
        closed, outputs = jax.make_jaxpr(forward, return_shape=True)(*structs)
    planner.pairing.check_reuse()
    check_no_empty_reduction(closed.jaxpr, clips_shape)
    _warn_unseen(unseen_nonlinearities(closed.jaxpr))
    pairing = planner.pairing
    first = planner.first[0] if planner.first else None
    return _Plan(first, dict(pairing.merges), pairing.merged_batchnorms, outputs)


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


def lrp(
    model: nn.Module, composite: Composite, *, checked: bool = False, **apply_kwargs: Any
) -> Callable:
    """Relevance propagation transform of a Flax linen ``model`` under ``composite``.

    Returns ``relevance(variables, clips, target=None) -> array`` (float32, the
    shape of ``clips``): the one-hot target (predicted class when None) is
    propagated back to the input. ``apply_kwargs`` go to ``model.apply``.

    Called with concrete arrays it checks them (rank, dtype, NaN/Inf, target
    range; variables and clip size against the model) and raises a
    ``SelrelError``. Traced (under ``jit``/``vmap``), a clip with NaN/Inf, an
    out-of-range target or invalid traced rule bounds gets an all-NaN
    relevance, the other clips are untouched; ``checked=True`` adds
    ``jax.experimental.checkify`` checks for these (run it under
    ``checkify.checkify``).

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
        clips = check_clips(clips, video=False)
        plan = _plan(model, composite, variables, clips, apply_kwargs)
        classes = check_logits(plan.outputs, clips.shape)
        target = check_target(target, clips.shape[0], classes)
        logits, pull = _relevance_pass(model, composite, plan, variables, clips, apply_kwargs)
        result = pull(one_hot_seed(logits, target)).astype(jnp.float32)
        problems = {**input_problems(clips, target, classes),
                    **_rule_problems(composite, clips)}  # fmt: skip
        return finish(result, problems, checked)

    return relevance


def _rule_problems(composite: Composite, clips: jax.Array) -> dict[str, jax.Array]:
    """Per-clip flags of the composite's traced rule arrays (e.g. ZBox bounds)."""
    rules = (composite.first, *(r for _, r in (*composite.layer_map, *composite.path_map)))
    problems = {}
    for rule in rules:
        arrays = rule.arrays() if rule is not None else {}
        if any(traced(a) for a in arrays.values()):
            bad = rule.invalid(arrays)
            if bad is not None:
                what = f"{type(rule).__name__} {'/'.join(arrays)} invalid (NaN, or out of order)"
                problems[what] = per_clip(bad, len(clips), clips.ndim)
    return problems


def relevance_vjp(
    model: nn.Module, composite: Composite, variables, clips, **apply_kwargs: Any
) -> tuple[jax.Array, Callable[[jax.Array], jax.Array]]:
    """``(outputs, pull)``: the model's outputs under the composite (BatchNorm
    merged) and ``pull(output_relevance) -> input relevance`` for any output
    relevance, not only a one-hot one."""
    plan = _plan(model, composite, variables, clips, apply_kwargs)
    return _relevance_pass(model, composite, plan, variables, clips, apply_kwargs)


def _relevance_pass(model, composite: Composite, plan: _Plan, variables, clips, apply_kwargs):
    trace = _RelevanceTrace(composite, plan, variables)

    def forward(x):
        def active() -> bool:
            return not _bypassed()

        with activations_as_pass(trace.tag, active), nn.intercept_methods(trace.intercept):
            return model.apply(variables, x, **apply_kwargs)

    outputs, pull = jax.vjp(forward, clips)
    return outputs, lambda relevance: pull(relevance)[0]
