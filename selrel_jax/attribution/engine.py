"""Layer-wise relevance propagation as a ``jax.vjp`` transform of the traced model.

How it works
------------
:func:`lrp` returns a pure function ``(variables, clips, target) -> relevance``
for a Flax linen model, a Flax NNX module or a plain ``apply_fn(params,
clips)`` (:mod:`~selrel_jax.attribution._frontends`). It traces the model
abstractly (``jax.make_jaxpr``, no FLOPs) and flattens the jaxpr, looking
through ``jit``, ``custom_jvp``/``custom_vjp`` and ``checkpoint`` calls and
writing ``scan`` loops out (:mod:`~selrel_jax.attribution._graph`). The planner
(:mod:`~selrel_jax.attribution._planner`) then assigns every operation on the
relevance path: conv/dense layers with the per-channel affine maps after them
merged (BatchNorm; :mod:`~selrel_jax.attribution.canonizers`), sums of
activations and sum/average pooling (Norm), max pooling (plain gradient),
elementwise functions of one activation (Pass), shape operations (exact
gradient), and a transformer's softmaxes, products of activations and
normalisations (:mod:`~selrel_jax.attribution._structures`; rules by
composite); anything else raises :class:`UnsupportedLayerError` naming the
primitive and its source line.

The relevance pass evaluates the graph again, node by node: each rule layer is
a ``jax.custom_vjp`` function whose forward is the layer and whose backward is
the rule (:mod:`~selrel_jax.attribution.rules`, told about the call by a
:class:`~selrel_jax.attribution.types.LayerCall`), each Pass region one whose
backward hands the relevance to the region's input unchanged. ``jax.vjp`` of
the whole, seeded with the one-hot target, then carries relevance from layer
to layer. Rules above values known to be >= 0 (a ReLU output, a max pooling of
one) skip their passes over negative inputs. The result is an ordinary JAX
function: it jit-compiles, vmaps and accepts sharded inputs. Nothing global
is changed while tracing.

:func:`lrp`'s function checks its arguments and treats invalid values as
:mod:`~selrel_jax.attribution._inputs` says: eager calls raise, traced invalid
values give an all-NaN relevance for their clip.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
from jax.extend import core as jax_core

from selrel_jax._conv import conv_config, fast_conv
from selrel_jax._pool import reduce_window_max
from selrel_jax.attribution._frontends import as_pure, check_params, is_linen, trace
from selrel_jax.attribution._graph import Graph, analyse, bind, flatten
from selrel_jax.attribution._inputs import (
    check_clips,
    check_logits,
    check_target,
    finish,
    input_problems,
    per_clip,
    traced,
)
from selrel_jax.attribution._planner import Layer, Plan, Region, make_plan
from selrel_jax.attribution.canonizers import add_bias, fold, merged_params
from selrel_jax.attribution.composites import Composite
from selrel_jax.attribution.rules import Rule
from selrel_jax.attribution.types import (
    LayerCall,
    Softmax,
    UnsupportedLayerError,
    one_hot_seed,
    path_str,
)
from selrel_jax.errors import OptionError

__all__ = ["UnsupportedLayerError", "lrp", "one_hot_seed", "path_str"]


def _plan(model: Any, composite: Composite, params: Any, clips: jax.Array, apply_kwargs) -> Plan:
    traced_model = trace(model, params, clips, apply_kwargs)
    graph = flatten(traced_model.closed, len(traced_model.leaf_paths))
    return make_plan(graph, analyse(graph), traced_model, composite)


# --------------------------------------------------------------------------
# Custom VJPs: rule layers and Pass regions.


def _rule_layer(
    rule: Rule, fn: Callable, nonneg: bool, unit_axes: tuple = ((), ()), gates: tuple = ()
) -> Callable:
    """custom_vjp function: forward = the layer, backward = the rule's relevance.
    ``unit_axes``: a linear layer's ``(out_axes, kernel_axes)``, ``gates`` a
    product's gate inputs (see LayerCall)."""

    @jax.custom_vjp
    def layer(xs, params, operands, arrays):
        return fn(xs, params, operands)

    def fwd(xs, params, operands, arrays):
        y = fn(xs, params, operands)
        return y, (xs, params, operands, arrays, y)

    def bwd(res, relevance):
        xs, params, operands, arrays, y = res
        call = LayerCall(lambda v, p: fn(v, p, operands), xs, params, y, nonneg, arrays,
                         *unit_axes, gates)  # fmt: skip
        out = rule.relevance(call, relevance)
        out = tuple(r.astype(x.dtype) for r, x in zip(out, xs, strict=True))
        return out, None, None, None

    layer.defvjp(fwd, bwd)
    return layer


def _passed(fn: Callable, dtype: Any) -> Callable:
    """custom_vjp function: forward = ``fn(root, operands)``, backward = identity
    to the root (the Pass rule)."""

    @jax.custom_vjp
    def passed(root, operands):
        return fn(root, operands)

    def fwd(root, operands):
        return fn(root, operands), None

    def bwd(_, relevance):
        return relevance.astype(dtype), None

    passed.defvjp(fwd, bwd)
    return passed


def _read(env: dict, atom: Any) -> Any:
    return atom.val if isinstance(atom, jax_core.Literal) else env[atom]


def _bind(node: Any, *args: Any) -> list:
    """``bind(node, *args)``; a max pool whose windows tile its input gets the
    elementwise derivative of :mod:`selrel_jax._pool` (the plain gradient of
    every max pool is what its rule runs; XLA:CPU's takes index arrays the size
    of the pool's input and as long as the relevance rule of the layer before)."""
    if node.name == "reduce_window_max":
        with node.context.manager:
            return [reduce_window_max(*args, **node.params)]
    return bind(node, *args)


def _run_nodes(graph: Graph, nodes: list[int], env: dict) -> None:
    for index in nodes:
        node = graph.nodes[index]
        env.update(zip(node.outputs, _bind(node, *(_read(env, a) for a in node.inputs)),
                       strict=True))  # fmt: skip


def _operands(graph: Graph, nodes: list[int], known: set) -> list[int]:
    """Values the ``nodes`` read that they do not compute and ``known`` does not hold."""
    made = {o for i in nodes for o in graph.nodes[i].outputs}
    found: dict[int, None] = {}
    for index in nodes:
        for atom in graph.nodes[index].inputs:
            if isinstance(atom, int) and atom not in made and atom not in known:
                found[atom] = None
    return list(found)


def _subgraph_fn(graph: Graph, layer: Layer) -> Callable:
    """The layer as ``fn(inputs, params, operands)`` (sums, pooling, custom layers)."""
    by_name = {atom: name for name, atom in layer.params.items()}

    def fn(xs, params, operands):
        env = dict(operands)
        env.update(zip(layer.inputs, xs, strict=True))
        env.update((atom, params[name]) for atom, name in by_name.items())
        _run_nodes(graph, layer.nodes, env)
        return env[layer.output]

    return fn


def _product_fn(graph: Graph, layer: Layer) -> Callable:
    """A product of activations as ``fn(inputs, params, operands)``: its inputs by
    position (``x @ x.T`` reads one value twice), then any scaling merged into it."""
    first = graph.nodes[layer.nodes[0]]
    relevant = set(layer.inputs)

    def fn(xs, params, operands):
        taken = iter(xs)
        args = [next(taken) if isinstance(a, int) and a in relevant else _read(operands, a)
                for a in first.inputs]  # fmt: skip
        env = dict(operands)
        env.update(zip(first.outputs, _bind(first, *args), strict=True))
        _run_nodes(graph, layer.nodes[1:], env)
        return env[layer.output]

    return fn


def _linear_fn(graph: Graph, layer: Layer) -> Callable:
    """The linear layer as ``fn(inputs, params, operands)`` with its merged params.
    A channels-last convolution runs as :func:`~selrel_jax._conv.fast_conv` (the
    same sums as stride-1 2D convolutions, forward and VJP): the rules' modified
    passes are its forward passes and input gradients, which XLA:CPU computes
    2-80x slower as the one 3D (or strided) primitive."""
    anchor = graph.nodes[layer.nodes[0]]
    fast = anchor.name == "conv_general_dilated" and layer.kernel_position == 1

    def fn(xs, params, operands):
        kernel = params["kernel"]
        args = (xs[0], kernel) if layer.kernel_position == 1 else (kernel, xs[0])
        if fast and conv_config(xs[0].shape, kernel.shape, **anchor.params) is not None:
            y = fast_conv(*args, **anchor.params)
        else:
            (y,) = bind(anchor, *args)
        return add_bias(y, params["bias"], layer.out_axes) if "bias" in params else y

    return fn


def _ungrouped(graph: Graph, layer: Layer) -> bool:
    """Whether the linear layer takes a kernel with fewer output units (a grouped
    convolution needs a multiple of its groups)."""
    params = graph.nodes[layer.nodes[0]].params
    return params.get("feature_group_count", 1) == 1 and params.get("batch_group_count", 1) == 1


def _run_layer(graph: Graph, layer: Layer, env: dict) -> jax.Array:
    xs = tuple(env[a] for a in layer.inputs)
    if layer.linear:
        out_shape = graph.shape(graph.nodes[layer.nodes[0]].outputs[0])
        scale, shift = fold(layer.steps, env, out_shape, layer.out_axes)
        params = merged_params(_read(env, layer.kernel), scale, shift, layer.kernel_axes)
        fn, operands = _linear_fn(graph, layer), {}
        unit_axes = (layer.out_axes, layer.kernel_axes) if _ungrouped(graph, layer) else ((), ())
    else:
        params = {name: _read(env, atom) for name, atom in layer.params.items()}
        known = set(layer.inputs) | {a for a in layer.params.values() if isinstance(a, int)}
        operands = {v: env[v] for v in _operands(graph, layer.nodes, known)}
        make = _product_fn if layer.gates else _subgraph_fn
        fn, unit_axes = make(graph, layer), ((), ())
        if layer.kind is Softmax:  # the axes it normalises over
            unit_axes = (layer.channels, ())
    arrays = layer.rule.arrays()
    rule_fn = _rule_layer(layer.rule, fn, layer.nonneg, unit_axes, layer.gates)
    y = rule_fn(xs, params, operands, arrays)
    # Shape-only operations between the conv/dense op and its merged bias: the
    # rule runs in the op's own frame, their exact gradient carries relevance to it.
    for index in layer.relabels:
        node = graph.nodes[index]
        (y,) = bind(node, y, *(_read(env, a) for a in node.inputs[1:]))
    return y


def _run_exits(graph: Graph, region: Region, node_index: int, env: dict) -> None:
    for value in graph.nodes[node_index].outputs:
        nodes = region.exits.get(value)
        if nodes is None:
            continue
        operand_ids = _operands(graph, nodes, {region.root})

        def fn(root, operands, nodes=nodes, value=value):
            inner = {**operands, region.root: root}
            _run_nodes(graph, nodes, inner)
            return inner[value]

        root = env[region.root]
        env[value] = _passed(fn, root.dtype)(root, {v: env[v] for v in operand_ids})


def _interpret(plan: Plan, leaves: list, clips: jax.Array) -> Any:
    """The model's forward pass with every rule layer and Pass region swapped in."""
    graph = plan.graph
    env: dict[int, Any] = dict(graph.consts)
    env.update(zip(graph.params, leaves, strict=True))
    env[graph.clips] = clips
    for node in graph.nodes:
        action = plan.actions[node.index]
        if action is None:
            _run_nodes(graph, [node.index], env)
        elif isinstance(action, Layer):
            env[action.output] = _run_layer(graph, action, env)
        elif isinstance(action, Region):
            _run_exits(graph, action, node.index, env)
    return jax.tree.unflatten(plan.treedef, [_read(env, a) for a in graph.outputs])


def _relevance_pass(plan: Plan, params: Any, clips: jax.Array):
    leaves = jax.tree.leaves(params)
    outputs, pull = jax.vjp(lambda x: _interpret(plan, leaves, x), clips)
    return outputs, lambda relevance: pull(relevance)[0]


# --------------------------------------------------------------------------
# Public transforms.


def _front(model: Any, composite: Any) -> tuple[Any, Any]:
    if not isinstance(composite, Composite):
        raise OptionError(f"composite must be a Composite; got {type(composite).__name__}")
    model, default = as_pure(model)
    if not (is_linen(model) or callable(model)):
        raise OptionError(
            f"LRP needs a Flax linen model, an NNX module or a callable apply_fn(params, "
            f"clips); got {type(model).__name__}"
        )
    return model, default


def _params(model: Any, variables: Any, default: Any) -> Any:
    if variables is None and is_linen(model):
        raise OptionError("LRP of a Flax linen model needs its variables; got None")
    check_params(variables)
    return default if variables is None else variables


def lrp(
    model: Any, composite: Composite, *, checked: bool = False, **apply_kwargs: Any
) -> Callable:
    """Relevance propagation transform of ``model`` under ``composite``.

    ``model`` is a Flax linen model (called as ``model.apply(variables, clips,
    **apply_kwargs)``), a Flax NNX module (``variables``: None for the state it
    has now, or an ``nnx.State`` of it) or a plain ``apply_fn(params, clips)``
    (``variables``: its parameter pytree; None for ``apply_fn(clips)``).

    Returns ``relevance(variables, clips, target=None) -> array`` (the shape and
    floating dtype of ``clips``): the one-hot target (predicted class when None) is
    propagated back to the input.

    Called with concrete arrays it checks them (rank, dtype, NaN/Inf, target
    range; variables and clip size against the model) and raises a
    ``SelrelError``. Traced (under ``jit``/``vmap``), a clip with NaN/Inf, an
    out-of-range target or invalid traced rule bounds gets an all-NaN
    relevance, the other clips are untouched; ``checked=True`` adds
    ``jax.experimental.checkify`` checks for these (run it under
    ``checkify.checkify``).

    Examples:
        >>> import jax
        >>> import jax.numpy as jnp
        >>> from selrel_jax import models
        >>> model = models.create("c3d_small", 4, width=0.25, clip_size=(8, 32, 32))
        >>> variables = model.init(jax.random.key(0), jnp.zeros((1, 8, 32, 32, 3)), train=False)
        >>> clips = jax.random.normal(jax.random.key(1), (1, 8, 32, 32, 3))
        >>> from selrel_jax.attribution import composites, lrp
        >>> fn = jax.jit(lrp(model, composites.epsilon_plus_flat()))
        >>> two_clips = jnp.concatenate([clips, -clips])
        >>> fn(variables, two_clips, jnp.array([3, 1])).shape
        (2, 8, 32, 32, 3)
    """
    model, default = _front(model, composite)

    def relevance(variables, clips, target=None):
        params = _params(model, variables, default)
        clips = check_clips(clips, video=False)
        plan = _plan(model, composite, params, clips, apply_kwargs)
        classes = check_logits(plan.outputs, clips.shape)
        target = check_target(target, clips.shape[0], classes)
        logits, pull = _relevance_pass(plan, params, clips)
        result = pull(one_hot_seed(logits, target)).astype(clips.dtype)
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
