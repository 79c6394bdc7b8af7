"""Softmaxes and normalisations found on the traced computation, before the
planner's sweep. Private: :mod:`~selrel_jax.attribution._planner` is its user.

Both span several primitives the sweep would otherwise assign one by one:

* a *softmax* is ``div(e, sum(e))`` with ``e = exp(u)`` and ``u`` the logits,
  or ``u = x - stop_gradient(max x)`` (``jax.nn.softmax``) with ``x`` the
  logits: one layer (kind ``Softmax``) from the logits to the quotient, whose
  intermediate values nothing else reads;
* a *normaliser* is a product ``mul(c, f)`` or quotient ``div(c, f)`` of an
  activation ``c`` by a *statistic* ``f``: a value computed, by elementwise
  and shape operations, from reductions (``reduce_sum``, ``reduce_max``) with
  at least one non-linear step on the way (a square, a square root, a product
  of two such values), while ``c`` is not one (LayerNorm's
  ``(x - mean) * rsqrt(var + eps)``, RMSNorm's ``x * rsqrt(mean(x^2) + eps)``,
  GroupNorm's). AttnLRP and CP-LRP hold ``f`` constant: the edge from ``f`` to
  the product is cut, so relevance never enters the statistics.

Examples:
    >>> import jax
    >>> import jax.numpy as jnp
    >>> from selrel_jax.attribution._graph import analyse, flatten
    >>> from selrel_jax.attribution._structures import find_structures
    >>> def apply(params, x):
    ...     h = jax.nn.softmax(x @ params["w"], axis=-1)
    ...     c = h - jnp.mean(h, axis=-1, keepdims=True)
    ...     return c * jax.lax.rsqrt(jnp.mean(c * c, axis=-1, keepdims=True) + 1e-5)
    >>> params = {"w": jnp.ones((3, 4))}
    >>> graph = flatten(jax.make_jaxpr(apply)(params, jnp.ones((2, 3))), n_params=1)
    >>> found = find_structures(graph, analyse(graph))
    >>> len(found.softmaxes), len(found.normalisers)
    (1, 1)
"""

from __future__ import annotations

import dataclasses

from jax.extend import core as jax_core

from selrel_jax.attribution._graph import Analysis, Graph, Node

__all__ = ["Structures", "find_structures"]

_REDUCTIONS = frozenset({"reduce_sum", "reduce_max", "reduce_min"})
_PLUMBING = frozenset({
    "broadcast_in_dim", "reshape", "squeeze", "expand_dims", "transpose", "convert_element_type",
    "copy", "copy_p", "reduce_precision", "stop_gradient",
})  # fmt: skip
# Steps a statistic is computed by from its reductions, and those among them that
# are not linear (a mean alone is linear: x - mean(x) is centring, not normalising).
_STAT_STEPS = _PLUMBING | frozenset({
    "add", "add_any", "sub", "mul", "div", "neg", "square", "integer_pow", "sqrt", "rsqrt",
    "pow", "abs", "max", "min", "select_n", "clamp",
})  # fmt: skip
_NONLINEAR = frozenset({"square", "integer_pow", "sqrt", "rsqrt", "pow", "abs"})
_LIMIT = 256  # nodes a statistic may span (a walk that long is not one)


@dataclasses.dataclass
class Structures:
    """``softmaxes``: ``(logits, node indices, axes)`` per softmax, the quotient
    last, ``axes`` those it normalises over;
    ``normalisers``: indices of the products by a statistic; ``cut``: their
    ``(node index, input position)`` edges from the statistic."""

    softmaxes: list[tuple[int, list[int], tuple[int, ...]]] = dataclasses.field(
        default_factory=list
    )
    normalisers: set[int] = dataclasses.field(default_factory=set)
    cut: frozenset[tuple[int, int]] = frozenset()


def find_structures(graph: Graph, info: Analysis) -> Structures:
    found, cut = Structures(), set()
    for node in graph.nodes:
        if node.name not in ("mul", "div") or not any(o in info.relevant for o in node.outputs):
            continue
        active = [a for a in node.inputs if _active(info, a)]
        if len(active) != 2 or active[0] == active[1]:
            continue
        softmax = _softmax(graph, info, node) if node.name == "div" else None
        if softmax is not None:
            found.softmaxes.append(softmax)
            continue
        stats = [_statistic(graph, info, a) for a in node.inputs]
        positions = [1] if node.name == "div" else [0, 1]
        held = [i for i in positions if stats[i] and not stats[1 - i]]
        if held:
            found.normalisers.add(node.index)
            cut.add((node.index, held[0]))
    found.cut = frozenset(cut)
    return found


def _active(info: Analysis, atom: object) -> bool:
    return not isinstance(atom, jax_core.Literal) and atom in info.relevant


def _producer(graph: Graph, atom: object) -> Node | None:
    if isinstance(atom, jax_core.Literal) or atom not in graph.producer:
        return None
    return graph.nodes[graph.producer[atom]]


def _through(graph: Graph, atom: object, names: frozenset[str], nodes: list[int]) -> object:
    """``atom`` followed back through operations in ``names`` (collected in ``nodes``)."""
    node = _producer(graph, atom)
    while node is not None and node.name in names:
        nodes.append(node.index)
        atom = node.inputs[0]
        node = _producer(graph, atom)
    return atom


def _softmax(graph: Graph, info: Analysis, div: Node) -> tuple[int, list[int], tuple] | None:
    numerator, denominator = div.inputs
    nodes: list[int] = [div.index]
    exp = _producer(graph, _through(graph, numerator, _PLUMBING, nodes))
    total = _producer(graph, _through(graph, denominator, _PLUMBING, nodes))
    if exp is None or exp.name != "exp" or total is None or total.name != "reduce_sum":
        return None
    summed = _through(graph, total.inputs[0], _PLUMBING, nodes)
    twin = _producer(graph, summed)  # exp(x) written twice: numerator and sum
    if twin is not None and twin.name == "exp" and twin.inputs == exp.inputs:
        nodes.append(twin.index)
    elif summed not in (numerator, exp.outputs[0]):
        return None
    if graph.shape(summed) != graph.shape(div.outputs[0]):
        return None
    nodes += [exp.index, total.index]
    logits = exp.inputs[0]
    shift = _producer(graph, logits)
    if shift is not None and shift.name == "sub":
        found = _max_shift(graph, shift)
        if found is not None:
            logits, more = found
            nodes += [shift.index, *more]
    nodes = sorted(set(nodes))
    if not _active(info, logits) or not _closed(graph, info, nodes, div):
        return None
    return logits, nodes, tuple(total.params["axes"])


def _max_shift(graph: Graph, sub: Node) -> tuple[int, list[int]] | None:
    """``(x, nodes)`` when ``sub`` is ``x - max(x)`` (through broadcasts, a stop
    gradient and jax.nn.softmax's ``max(-inf, .)``)."""
    x, shifted = sub.inputs
    nodes: list[int] = []
    atom = shifted
    while True:
        atom = _through(graph, atom, _PLUMBING, nodes)
        node = _producer(graph, atom)
        if node is None or node.name != "max":
            break
        constant = [a for a in node.inputs if isinstance(a, jax_core.Literal)]
        if len(constant) != 1:
            return None
        nodes.append(node.index)
        atom = next(a for a in node.inputs if not isinstance(a, jax_core.Literal))
    node = _producer(graph, atom)
    if node is None or node.name != "reduce_max" or node.inputs[0] != x:
        return None
    return x, [*nodes, node.index]


def _closed(graph: Graph, info: Analysis, nodes: list[int], last: Node) -> bool:
    """Whether nothing outside ``nodes`` reads the values they compute before ``last``."""
    inside = set(nodes)
    for index in nodes:
        if index == last.index:
            continue
        for value in graph.nodes[index].outputs:
            readers = info.consumers.get(value, [])
            if value in info.outputs or any(r not in inside for r in readers):
                return False
    return True


def _statistic(graph: Graph, info: Analysis, atom: object) -> bool:
    """Whether ``atom`` is computed from reductions of activations by elementwise
    and shape steps, one of them non-linear (see the module docstring)."""
    if not _active(info, atom):
        return False
    stack, seen, reductions, nonlinear = [atom], set(), 0, False
    while stack:
        value = stack.pop()
        if value in seen:
            continue
        seen.add(value)
        node = _producer(graph, value)
        if node is None or len(seen) > _LIMIT:
            return False  # the clips themselves
        if node.name in _REDUCTIONS:
            reductions += 1
            continue
        if node.name not in _STAT_STEPS:
            return False
        inputs = [a for a in node.inputs if _active(info, a)]
        nonlinear |= node.name in _NONLINEAR or (node.name in ("mul", "div") and len(inputs) == 2)
        stack += inputs
    return reductions > 0 and nonlinear
