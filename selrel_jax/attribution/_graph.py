"""The traced computation as one flat graph, and what the LRP engine reads off it.
Private: the engine's planner (:mod:`~selrel_jax.attribution.engine`) is its user.

:func:`flatten` turns the jaxpr of ``apply(params, clips)`` into a flat list of
:class:`Node` s: calls of ``jit`` functions, ``custom_jvp`` / ``custom_vjp``
functions and ``checkpoint`` are inlined (their own forward computation, which
is what relevance is defined on), so an activation function compiled by
``jax.nn`` looks like the same activation written inline; a ``scan`` of up to
:data:`MAX_UNROLL` steps (``nn.scan`` over blocks) is written out step by step. Each node keeps the
user's source line and the innermost Flax linen module it ran in (when the
linen front end marked module calls with :data:`MODULE_SCOPE` name scopes).

:func:`analyse` then marks, for every value:

* ``active``: it depends on the clips;
* ``relevant``: a floating value on a floating path from the clips to the
  output (relevance flows through it);
* ``sources``: the parameter leaves a clip-independent value is computed from;
* ``nonneg``: known to be >= 0 (a ReLU output, a max pooling of one, ...), so
  rules above it can skip the passes over negative inputs.

:func:`varying_axes` tells along which axes a clip-independent value can vary
(a bias reshaped to ``(1, 1, 1, 1, C)`` varies along the last axis only), which
is what the canonizer needs to know to merge a per-channel affine map.

Examples:
    >>> import jax
    >>> import jax.numpy as jnp
    >>> from selrel_jax.attribution._graph import analyse, flatten
    >>> def apply(params, clips):
    ...     return jax.nn.relu(clips @ params["w"] + params["b"])
    >>> params = {"b": jnp.zeros(3), "w": jnp.ones((2, 3))}
    >>> closed = jax.make_jaxpr(apply)(params, jnp.ones((4, 2)))
    >>> graph = flatten(closed, n_params=len(jax.tree.leaves(params)))
    >>> [node.name for node in graph.nodes]   # relu's jit call inlined
    [...'dot_general', ..., 'max']
    >>> info = analyse(graph)
    >>> graph.outputs[0] in info.relevant, graph.outputs[0] in info.nonneg
    (True, True)
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Iterator
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.extend import core as jax_core
from jax.extend import source_info_util

__all__ = [
    "MAX_UNROLL",
    "MODULE_SCOPE",
    "Analysis",
    "Atom",
    "Graph",
    "Node",
    "analyse",
    "bind",
    "flatten",
    "follow_axes",
    "is_float",
    "varying_axes",
]

# Name scope prefix the linen front end puts around each module call
# (``selrel_module_<n>``): the innermost one names the module a node ran in.
MODULE_SCOPE = "selrel_module_"
_SCOPE = re.compile(re.escape(MODULE_SCOPE) + r"(\d+)")

# Primitives looked through (inlined), with the parameter holding their jaxpr.
_INLINED = {
    "jit": "jaxpr",
    "pjit": "jaxpr",
    "closed_call": "call_jaxpr",
    "core_call": "call_jaxpr",
    "custom_jvp_call": "call_jaxpr",
    "custom_vjp_call": "call_jaxpr",
    "custom_vjp_call_jaxpr": "fun_jaxpr",
    "remat2": "jaxpr",
    "checkpoint": "jaxpr",
}

Atom = Any  # a value id (int) or a jax Literal (a scalar constant)
# Longest ``scan`` written out step by step; a longer one stays a loop (refused).
MAX_UNROLL = 64


@dataclasses.dataclass(frozen=True)
class Node:
    """One primitive application: ``outputs = primitive(*inputs, **params)``."""

    index: int
    primitive: Any
    inputs: tuple[Atom, ...]
    outputs: tuple[int, ...]
    params: dict[str, Any]
    source: str  # "file:line:col (function)" of the user code, or ""
    scope: int | None  # innermost linen module marker, if any
    context: Any  # the equation's context (compute type, ...)

    @property
    def name(self) -> str:
        return self.primitive.name


@dataclasses.dataclass
class Graph:
    """The flat graph. Values are ids into ``avals``; ``params`` are the ids of
    the parameter leaves (in ``jax.tree.leaves`` order), ``clips`` the id of the
    clips, ``consts`` the ids and values of the jaxpr's constants."""

    nodes: list[Node] = dataclasses.field(default_factory=list)
    avals: list[Any] = dataclasses.field(default_factory=list)
    params: list[int] = dataclasses.field(default_factory=list)
    clips: int = -1
    consts: dict[int, Any] = dataclasses.field(default_factory=dict)
    outputs: list[Atom] = dataclasses.field(default_factory=list)
    producer: dict[int, int] = dataclasses.field(default_factory=dict)  # value -> node index

    def new_value(self, aval: Any) -> int:
        self.avals.append(aval)
        return len(self.avals) - 1

    def shape(self, atom: Atom) -> tuple[int, ...]:
        aval = atom.aval if isinstance(atom, jax_core.Literal) else self.avals[atom]
        return tuple(aval.shape)

    def dtype(self, atom: Atom) -> Any:
        aval = atom.aval if isinstance(atom, jax_core.Literal) else self.avals[atom]
        return aval.dtype


def is_float(dtype: Any) -> bool:
    return jnp.issubdtype(dtype, jnp.inexact)


# Frames a source line should not point at: JAX's, Flax's and this package's own.
_LIBRARY_DIRS = tuple(
    os.path.dirname(os.path.abspath(path)) + os.sep
    for path in (jax.__file__, os.path.dirname(nn.__file__), __file__)
)


def _summary(source_info: Any) -> str:
    """``file:line:col (function)`` of the innermost frame outside JAX, Flax and
    this package (the user's model code), else JAX's own summary."""
    try:
        codes, offsets = source_info.traceback.raw_frames()
        for code, offset in zip(codes, offsets, strict=True):
            if not code.co_filename.startswith(_LIBRARY_DIRS):
                line, _, column, _ = _position(code, offset)
                name = getattr(code, "co_qualname", code.co_name)  # Python 3.10: no qualname
                return f"{code.co_filename}:{line}:{column} ({name})"
        return source_info_util.summarize(source_info).strip()
    except Exception:  # pragma: no cover - source info is best effort
        return ""


def _position(code: Any, offset: int) -> tuple:
    """``(line, end line, column, end column)`` of the bytecode at ``offset``."""
    if not hasattr(code, "co_positions"):  # Python 3.10: the line only
        line = next((ln for start, end, ln in code.co_lines() if start <= offset < end), None)
        return (line or code.co_firstlineno, None, 0, None)
    for index, position in enumerate(code.co_positions()):
        if index == offset // 2:
            return position
    return (code.co_firstlineno, None, 0, None)  # pragma: no cover


def _scope(eqn: Any) -> int | None:
    found = _SCOPE.findall(str(eqn.source_info.name_stack))
    return int(found[-1]) if found else None


def _inner(eqn: Any) -> tuple[Any, tuple] | None:
    """``(jaxpr, consts)`` of a call to look through, or None."""
    key = _INLINED.get(eqn.primitive.name)
    inner = eqn.params.get(key) if key else None
    if isinstance(inner, jax_core.ClosedJaxpr):
        inner, consts = inner.jaxpr, tuple(inner.consts)
    elif isinstance(inner, jax_core.Jaxpr):
        consts = ()
    else:
        return None
    if len(inner.invars) != len(eqn.invars) or len(inner.outvars) != len(eqn.outvars):
        return None  # pragma: no cover - a call convention we do not know
    return inner, consts


def _flatten_into(graph: Graph, jaxpr: Any, args: list, consts: list, context: tuple) -> list:
    """Append ``jaxpr``'s equations to ``graph`` with its inputs bound to ``args``;
    ``context`` is the enclosing call's ``(source, scope)`` (None at the top)."""
    env: dict[Any, Atom] = {}

    def read(var: Any) -> Atom:
        return var if isinstance(var, jax_core.Literal) else env[var]

    for var, value in zip(jaxpr.constvars, consts, strict=True):
        env[var] = graph.new_value(var.aval)
        graph.consts[env[var]] = value
    env.update(zip(jaxpr.invars, args, strict=True))
    for eqn in jaxpr.eqns:
        inputs = [read(v) for v in eqn.invars]
        own_scope = _scope(eqn)
        source = context[0] if context[0] else _summary(eqn.source_info)
        scope = own_scope if own_scope is not None else context[1]
        if eqn.primitive.name == "scan" and eqn.params["length"] <= MAX_UNROLL:
            outs = _unroll_scan(graph, eqn, inputs, (source, scope))
            env.update(zip(eqn.outvars, outs, strict=True))
            continue
        inner = _inner(eqn)
        if inner is not None:
            outs = _flatten_into(graph, inner[0], inputs, list(inner[1]), (source, scope))
            env.update(zip(eqn.outvars, outs, strict=True))
            continue
        outputs = tuple(graph.new_value(v.aval) for v in eqn.outvars)
        node = Node(len(graph.nodes), eqn.primitive, tuple(inputs), outputs,
                    dict(eqn.params), source, scope, eqn.ctx)  # fmt: skip
        graph.nodes.append(node)
        graph.producer.update((o, node.index) for o in outputs)
        env.update(zip(eqn.outvars, outputs, strict=True))
    return [read(v) for v in jaxpr.outvars]


def _unroll_scan(graph: Graph, eqn: Any, inputs: list, context: tuple) -> list:
    """``lax.scan`` (``nn.scan``, a ``fori_loop`` with fixed bounds) written out: its
    body once per step, each step's slice of the scanned inputs taken and the
    steps' outputs stacked by equations traced from ``lax`` for the purpose."""
    params = eqn.params
    n_consts, n_carry, length = params["num_consts"], params["num_carry"], params["length"]
    body = params["jaxpr"]
    consts, carry = inputs[:n_consts], inputs[n_consts : n_consts + n_carry]
    xs = inputs[n_consts + n_carry :]
    steps: dict[int, list] = {}
    for i in reversed(range(length)) if params["reverse"] else range(length):
        sliced = [_traced(graph, lambda a, i=i: lax.index_in_dim(a, i, keepdims=False), [x],
                          context)[0] for x in xs]  # fmt: skip
        outs = _flatten_into(graph, body.jaxpr, [*consts, *carry, *sliced],
                             list(body.consts), context)  # fmt: skip
        carry, steps[i] = outs[:n_carry], outs[n_carry:]
    n_ys = len(eqn.outvars) - n_carry
    stacked = [_traced(graph, _stack, [steps[i][k] for i in range(length)], context)[0]
               for k in range(n_ys)]  # fmt: skip
    return [*carry, *stacked]


def _stack(*parts: Any) -> Any:
    return lax.concatenate([lax.expand_dims(p, (0,)) for p in parts], 0)


def _traced(graph: Graph, fn: Any, args: list, context: tuple) -> list:
    """``fn(*args)``'s equations appended to ``graph`` (a literal argument stays one)."""
    specs = [jax.ShapeDtypeStruct(graph.shape(a), graph.dtype(a)) for a in args]
    closed = jax.make_jaxpr(fn)(*specs)
    return _flatten_into(graph, closed.jaxpr, list(args), list(closed.consts), context)


def flatten(closed: Any, n_params: int) -> Graph:
    """The flat graph of ``closed`` (the ClosedJaxpr of ``apply(params, clips)``,
    whose first ``n_params`` inputs are the parameter leaves, then the clips)."""
    graph = Graph()
    invars = closed.jaxpr.invars
    args = [graph.new_value(v.aval) for v in invars]
    graph.params, graph.clips = args[:n_params], args[n_params]
    graph.outputs = _flatten_into(graph, closed.jaxpr, args, list(closed.consts), ("", None))
    return graph


def bind(node: Node, *args: Any) -> list:
    """Evaluate ``node`` on ``args`` (JAX's own ``eval_jaxpr`` step)."""
    params = node.primitive.get_bind_params(node.params)
    with node.context.manager:
        out = node.primitive.bind(*args, **params)
    return list(out) if node.primitive.multiple_results else [out]


# --------------------------------------------------------------------------
# Analyses.


@dataclasses.dataclass
class Analysis:
    active: set[int]
    relevant: set[int]
    consumers: dict[int, list[int]]  # value -> indices of the nodes reading it
    outputs: set[int]  # values that are graph outputs
    sources: dict[int, frozenset[int]]  # clip-independent value -> parameter leaf positions
    nonneg: set[int]


def _ids(atoms: Any) -> Iterator[int]:
    return (a for a in atoms if not isinstance(a, jax_core.Literal))


def analyse(graph: Graph, cut: frozenset[tuple[int, int]] = frozenset()) -> Analysis:
    """The analyses of ``graph``; ``cut`` holds ``(node index, input position)``
    edges relevance does not flow along (a normaliser held constant), so values
    only read through them are not ``relevant``."""
    active = {graph.clips}
    consumers: dict[int, list[int]] = {}
    sources = {v: frozenset({i}) for i, v in enumerate(graph.params)}
    sources.update((v, frozenset()) for v in graph.consts)
    for node in graph.nodes:
        ids = list(_ids(node.inputs))
        for v in ids:
            consumers.setdefault(v, []).append(node.index)
        if any(v in active for v in ids):
            active.update(node.outputs)
        else:
            found = frozenset().union(*(sources.get(v, frozenset()) for v in ids))
            sources.update((o, found) for o in node.outputs)
    outputs = set(_ids(graph.outputs))
    relevant = {v for v in outputs if v in active and is_float(graph.dtype(v))}
    for node in reversed(graph.nodes):
        if any(o in relevant for o in node.outputs):
            relevant.update(v for i, v in enumerate(node.inputs)
                            if (node.index, i) not in cut and isinstance(v, int)
                            and v in active and is_float(graph.dtype(v)))  # fmt: skip
    return Analysis(active, relevant, consumers, outputs, sources, _nonneg(graph))


# Sign analysis: primitives whose output is >= 0 whatever their inputs, those
# that keep the sign when every (value) input is >= 0, and those needing one.
_ALWAYS_NONNEG = frozenset({"exp", "exp2", "logistic", "abs", "square", "sqrt", "rsqrt", "cosh"})
_ALL_NONNEG = frozenset({
    "add", "mul", "div", "min", "convert_element_type", "copy", "copy_p", "reduce_precision",
    "reshape", "transpose", "broadcast_in_dim", "squeeze", "expand_dims", "slice", "rev",
    "concatenate", "pad", "reduce_sum", "reduce_window_sum", "reduce_max", "reduce_window_max",
    "reduce_min", "reduce_window_min", "log1p", "sinh", "tanh", "erf", "atan",
})  # fmt: skip
_ANY_NONNEG = frozenset({"max"})
_OPERAND_NONNEG = frozenset({"dynamic_slice", "gather", "select_and_gather_add"})


def _atom_nonneg(graph: Graph, atom: Atom, known: set[int]) -> bool:
    if isinstance(atom, jax_core.Literal):
        return bool(np.all(np.asarray(atom.val) >= 0))
    if atom in graph.consts and not isinstance(graph.consts[atom], jax.core.Tracer):
        return bool(np.all(np.asarray(graph.consts[atom]) >= 0))
    return atom in known


def _nonneg(graph: Graph) -> set[int]:
    known: set[int] = set()
    for node in graph.nodes:
        flags = [_atom_nonneg(graph, a, known) for a in node.inputs]
        name = node.name
        if name == "integer_pow":
            yes = node.params["y"] % 2 == 0 or flags[0]
        elif name == "select_n":
            yes = all(flags[1:])
        elif name == "clamp":
            yes = flags[0] or (flags[1] and flags[2])
        else:
            yes = (
                name in _ALWAYS_NONNEG
                or (name in _ALL_NONNEG and all(flags))
                or (name in _ANY_NONNEG and any(flags))
                or (name in _OPERAND_NONNEG and flags[0])
            )
        if yes:
            known.update(node.outputs)
    return known


def varying_axes(graph: Graph, atom: Atom, memo: dict[int, frozenset[int]]) -> frozenset[int]:
    """Axes along which the clip-independent value ``atom`` may take different
    values (a scalar varies along none; a size-1 axis never varies)."""
    if isinstance(atom, jax_core.Literal):
        return frozenset()
    if atom not in memo:
        memo[atom] = _varying(graph, atom, memo)
    return memo[atom]


def _varying(graph: Graph, value: int, memo: dict) -> frozenset[int]:
    shape = graph.shape(value)
    every = frozenset(i for i, s in enumerate(shape) if s != 1)
    node_index = graph.producer.get(value)
    if node_index is None:
        return every
    node = graph.nodes[node_index]
    operand = node.inputs[0] if node.inputs else None
    if node.name == "broadcast_in_dim":  # copies along new axes do not vary
        inner = varying_axes(graph, operand, memo)
        return frozenset(node.params["broadcast_dimensions"][i] for i in inner) & every
    if node.name in RELABEL and node.name not in _SAME_AXES:
        inner = varying_axes(graph, operand, memo)
        moved = _moved_axes(graph, node, tuple(sorted(inner)))
        return every if moved is None else frozenset(a for a in moved if a is not None) & every
    if len(node.outputs) == 1 and _is_elementwise(node.name):
        found: set[int] = set()
        for atom in node.inputs:
            if len(graph.shape(atom)) == len(shape):
                found |= varying_axes(graph, atom, memo)
        return frozenset(found) & every
    return every


# Shape-only operations that move each value of their input to one place of their
# output (a relabelling of axes, no copies): an axis can be followed through them
# while it is not merged with or split into others. ``_SAME_AXES`` keep every axis.
RELABEL = frozenset({
    "reshape", "squeeze", "expand_dims", "transpose", "broadcast_in_dim", "copy", "copy_p",
    "convert_element_type", "reduce_precision", "sharding_constraint",
})  # fmt: skip
_SAME_AXES = frozenset({
    "copy", "copy_p", "convert_element_type", "reduce_precision", "sharding_constraint",
})  # fmt: skip


def follow_axes(
    graph: Graph, node: Node, axes: tuple[int | None, ...]
) -> tuple[int | None, ...] | None:
    """Where the axes ``axes`` of ``node``'s first input lie in its output, for a
    :data:`RELABEL` operation that keeps each of them whole; None where it does
    not (an axis merged with another, values copied by a broadcast, another
    primitive). None in ``axes`` (and in the result) stands for a size-1 axis
    that is no longer there."""
    if node.name not in RELABEL or len(node.outputs) != 1:
        return None
    if any(isinstance(a, int) for a in node.inputs[1:]):
        return None  # dynamic shapes
    return _moved_axes(graph, node, axes)


def _moved_axes(
    graph: Graph, node: Node, axes: tuple[int | None, ...]
) -> tuple[int | None, ...] | None:
    name, params = node.name, node.params
    if name in _SAME_AXES:
        return axes
    src, dst = graph.shape(node.inputs[0]), graph.shape(node.outputs[0])
    if name == "transpose":
        permutation = list(params["permutation"])
        return tuple(None if a is None else permutation.index(a) for a in axes)
    if name == "squeeze":
        dropped = set(params["dimensions"])
        return tuple(None if a is None or a in dropped else a - sum(d < a for d in dropped)
                     for a in axes)  # fmt: skip
    if name == "broadcast_in_dim":
        targets = list(params["broadcast_dimensions"])
        kept = all(src[k] == dst[t] for k, t in enumerate(targets))
        if not kept or any(dst[i] != 1 for i in range(len(dst)) if i not in targets):
            return None  # values copied along an axis
        return tuple(None if a is None else targets[a] for a in axes)
    if name == "reshape" and params.get("dimensions") is None:
        whole = _whole_axes(src, dst)
        moved = [None if a is None or src[a] == 1 else whole.get(a, -1) for a in axes]
        return None if -1 in moved else tuple(moved)
    return None


def _whole_axes(src: tuple[int, ...], dst: tuple[int, ...]) -> dict[int, int]:
    """Input axis -> output axis of a reshape, for each axis of size > 1 it keeps
    whole (only size-1 axes added or removed around it)."""
    a = [i for i, s in enumerate(src) if s != 1]
    b = [j for j, s in enumerate(dst) if s != 1]
    if 0 in src or 0 in dst:
        return {}
    whole, i, j = {}, 0, 0
    while i < len(a) and j < len(b):
        group_a, group_b = [a[i]], [b[j]]
        size_a, size_b = src[a[i]], dst[b[j]]
        i, j = i + 1, j + 1
        while size_a != size_b and i <= len(a) and j <= len(b):
            if size_a < size_b and i < len(a):
                group_a.append(a[i])
                size_a, i = size_a * src[a[i]], i + 1
            elif size_b < size_a and j < len(b):
                group_b.append(b[j])
                size_b, j = size_b * dst[b[j]], j + 1
            else:
                return whole  # pragma: no cover - sizes that do not match
        if len(group_a) == 1 and len(group_b) == 1:
            whole[group_a[0]] = group_b[0]
    return whole


ELEMENTWISE = frozenset({
    "neg", "sign", "floor", "ceil", "round", "is_finite", "exp", "exp2", "log", "log1p",
    "expm1", "tanh", "logistic", "sin", "cos", "tan", "asin", "acos", "atan", "sinh", "cosh",
    "asinh", "acosh", "atanh", "lgamma", "digamma", "erf", "erfc", "erf_inv", "sqrt", "rsqrt",
    "cbrt", "abs", "square", "integer_pow", "pow", "add", "add_any", "sub", "mul", "div", "rem",
    "max", "min", "atan2", "nextafter", "select_n", "clamp", "convert_element_type", "copy",
    "copy_p", "reduce_precision", "eq", "ne", "lt", "le", "gt", "ge", "and", "or", "not",
    "xor", "stop_gradient",
})  # fmt: skip


def _is_elementwise(name: str) -> bool:
    return name in ELEMENTWISE
