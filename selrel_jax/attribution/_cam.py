"""Grad-CAM's layer, found on the traced computation of any model. Private:
:func:`~selrel_jax.attribution.gradients.grad_cam` is its user.

The model (:func:`pure_model`) is traced and flattened as the LRP engine does
(:mod:`~selrel_jax.attribution._frontends`, :mod:`~selrel_jax.attribution._graph`).
A *conv layer* is a ``conv_general_dilated`` with a clip-dependent input and a
clip-independent kernel, followed by the shape-only operations that keep its
output axes whole and by its bias add (the first add of a clip-independent value
that varies along the channel axis only). Its *activation* is the value after
the bias: what a linen ``nn.Conv`` or a PyTorch ``Conv3d`` module returns,
whatever the framework's layout (an Equinox model runs channels-first per clip
under ``jax.vmap``).

A layer is named by the path of the parameter its convolution consumes
(``conv1/kernel`` -> ``"conv1"``), as LRP's path patterns are; a convolution
on a closed-over kernel inside a linen module takes the module's path, and one
in a plain ``apply_fn(clips)`` has no name.

Examples:
    >>> import jax
    >>> import jax.numpy as jnp
    >>> from selrel_jax import models
    >>> model = models.create("c3d_small", 4, width=0.25, clip_size=(8, 32, 32))
    >>> variables = model.init(jax.random.key(0), jnp.zeros((1, 8, 32, 32, 3)), train=False)
    >>> clips = jax.random.normal(jax.random.key(1), (1, 8, 32, 32, 3))
    >>> import functools
    >>> from selrel_jax.attribution._cam import choose, layer_cam, trace_cam
    >>> apply_fn = functools.partial(model.apply, variables, train=False)
    >>> traced = trace_cam(apply_fn, clips)
    >>> [layer.name for layer in traced.layers]
    ['conv1', 'conv2', 'conv3', 'conv4']
    >>> layer = choose(traced, "conv4")
    >>> layer_cam(traced, layer, clips, jnp.array([2])).shape   # (N, T', H', W')
    (1, 2, 4, 4)
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.extend import core as jax_core

from selrel_jax.attribution._frontends import Traced, trace
from selrel_jax.attribution._graph import (
    MODULE_SCOPE,
    Analysis,
    Graph,
    Node,
    analyse,
    bind,
    flatten,
    follow_axes,
    varying_axes,
)
from selrel_jax.attribution._model_checks import check_module_output
from selrel_jax.attribution.types import one_hot_seed, path_str
from selrel_jax.errors import OptionError

__all__ = ["CamLayer", "CamModel", "choose", "layer_cam", "pure_model", "trace_cam"]


class CamLayer(NamedTuple):
    """One conv layer: its name (None: no parameter path), its conv node, its
    activation ``value`` with the (batch, T, H, W, channel) ``axes`` of it (None
    for a size-1 axis a shape operation dropped), the activation's (N, T, H, W,
    C) ``shape``, a ``key`` shared by the convolutions of one layer, why its
    output is no (N, T, H, W, C) map (None: it is one), and whether a value
    before its bias add is read elsewhere too (``split``: no one activation)."""

    name: str | None
    conv: int
    value: int
    axes: tuple[int | None, ...]
    shape: tuple[int, ...]
    key: Any
    problem: str | None
    split: bool


class CamModel(NamedTuple):
    """The flat graph of the model, its parameter leaves, its output (a
    ShapeDtypeStruct), its conv layers in trace order, and whether its
    parameters have paths (the params form)."""

    graph: Graph
    leaves: list
    outputs: Any
    layers: list[CamLayer]
    has_paths: bool


def _is_array(leaf: Any) -> bool:
    return isinstance(leaf, jax.Array | np.ndarray | np.generic)


def pure_model(apply_fn: Callable) -> tuple[Callable, Any]:
    """``(apply(params, clips), params)`` of ``apply_fn(clips)``: a
    ``functools.partial`` of a function over an array pytree (what ``explain``
    and ``make_explainer`` hand the gradient family: ``partial(model.apply,
    variables)``, ``partial(apply_fn, params)``, an NNX module's graph with its
    state) is split into the two; anything else is ``(apply_fn, None)``, its
    parameters closed-over constants without a path."""
    if isinstance(apply_fn, functools.partial) and len(apply_fn.args) == 1:
        params = apply_fn.args[0]
        leaves = jax.tree.leaves(params)
        if params is not None and all(_is_array(leaf) for leaf in leaves):
            fn = apply_fn.func
            if apply_fn.keywords:
                fn = functools.partial(fn, **apply_fn.keywords)
            return fn, params
    return apply_fn, None


def trace_cam(apply_fn: Callable, clips: jax.Array) -> CamModel:
    """The model of ``apply_fn(clips)`` traced abstractly (no FLOPs), after the
    checks of the LRP front end (variables, empty axes); linen module calls are
    marked, so a closure over a linen model still names its layers."""
    fn, params = pure_model(apply_fn)
    scopes: dict[int, tuple[str, ...]] = {}

    def mark(next_fun, args, kwargs, context):
        if context.method_name != "__call__":
            return next_fun(*args, **kwargs)
        path, number = tuple(context.module.path), len(scopes)
        scopes[number] = path
        with jax.named_scope(f"{MODULE_SCOPE}{number}"):
            out = next_fun(*args, **kwargs)
        check_module_output(path, context.module, out, tuple(clips.shape))
        return out

    with nn.intercept_methods(mark):
        traced = trace(fn, params, clips, {})
    graph = flatten(traced.closed, len(traced.leaf_paths))
    info = analyse(graph)
    layers = [_layer(graph, info, traced, scopes, node, clips.shape[0])
              for node in graph.nodes if _is_conv(info, node)]  # fmt: skip
    leaves = jax.tree.leaves(params)
    return CamModel(graph, leaves, traced.outputs, layers, params is not None)


def _is_conv(info: Analysis, node: Node) -> bool:
    """A convolution of activations with a clip-independent kernel, on the path
    to the logits (one whose output is never read is no layer of the model)."""
    if node.name != "conv_general_dilated" or node.outputs[0] not in info.relevant:
        return False
    lhs, rhs = node.inputs[:2]
    return lhs in info.active and not (isinstance(rhs, int) and rhs in info.active)


def _layer(
    graph: Graph, info: Analysis, traced: Traced, scopes: dict, node: Node, n: int
) -> CamLayer:
    """The conv layer of ``node``, named by its kernel's first parameter leaf
    (else by the linen module it ran in); ``n``: the clips' batch size."""
    kernel = node.inputs[1]
    leaves = info.sources.get(kernel, frozenset()) if isinstance(kernel, int) else ()
    if leaves:
        name = path_str(traced.leaf_paths[min(leaves)])
    elif node.scope is not None:
        name = path_str(scopes[node.scope])
    else:
        name = None
    spec = node.params["dimension_numbers"].out_spec
    conv_shape = graph.shape(node.outputs[0])
    axes = (spec[0], *spec[2:], spec[1])
    shape = tuple(conv_shape[a] for a in axes)
    key = name if name is not None else ("kernel", kernel)
    value, axes, split = _activation(graph, info, node.outputs[0], axes)
    if len(spec) != 5:
        problem = f"it is a {len(spec) - 2}D convolution; Grad-CAM 3D needs (N, T, H, W, C)"
    elif shape[0] != n:
        problem = f"its output {conv_shape} has batch size {shape[0]}, not N={n} as the clips"
    else:
        problem = None
    return CamLayer(name, node.index, value, axes, shape, key, problem, split)


def _activation(graph: Graph, info: Analysis, value: int, axes: tuple) -> tuple:
    """``(value, axes, split)``: the conv output followed through the shape
    operations that keep its axes whole and its bias add, while each value has
    one reader; ``split`` when a value before the bias is read elsewhere too."""
    memo: dict[int, frozenset[int]] = {}
    while value not in info.outputs:
        readers = [graph.nodes[i] for i in info.consumers.get(value, [])
                   if any(o in info.relevant for o in graph.nodes[i].outputs)]  # fmt: skip
        bias = [r for r in readers if _is_bias(graph, info, r, value, axes[-1], memo)]
        if len(readers) != 1:
            return value, axes, bool(bias)
        reader = readers[0]
        if bias:
            return reader.outputs[0], axes, False
        moved = follow_axes(graph, reader, axes) if reader.inputs[0] == value else None
        if moved is None:
            return value, axes, False
        value, axes = reader.outputs[0], moved
    return value, axes, False


def _is_bias(graph: Graph, info: Analysis, node: Node, value: int, channel, memo: dict) -> bool:
    """``node`` adds to ``value`` a clip-independent array varying along the
    ``channel`` axis only (a bias, in any layout)."""
    if node.name != "add" or len(node.inputs) != 2 or value not in node.inputs:
        return False
    other = node.inputs[1] if node.inputs[0] == value else node.inputs[0]
    if isinstance(other, jax_core.Literal) or other in info.active:
        return False
    if len(graph.shape(other)) != len(graph.shape(value)):
        return False
    if graph.shape(node.outputs[0]) != graph.shape(value):
        return False
    allowed = frozenset() if channel is None else frozenset({channel})
    return varying_axes(graph, other, memo) <= allowed


def _available(model: CamModel) -> str:
    names = sorted({x.name for x in model.layers if x.problem is None and x.name is not None})
    return ", ".join(names) if names else "none"


def choose(model: CamModel, layer: str | None) -> CamLayer:
    """Grad-CAM's layer: the one named ``layer``, or the last conv layer on the
    path to the logits with an (N, T, H, W, C) output (None); OptionError for a
    name that is no conv layer, a layer without such an output, one read more
    than once before its bias add, or one that runs more than once."""
    if layer is None:
        usable = [x for x in model.layers if x.problem is None]
        if not usable:
            raise OptionError(
                "grad_cam found no conv layer in the model (a 3D convolution of the clips' "
                "activations with a parameter kernel, output (N, T, H, W, C)) on the path to "
                "the logits"
            )
        found = usable[-1]
    else:
        found = _named(model, layer)
    runs = sum(x.key == found.key for x in model.layers)
    where = f"grad_cam layer {layer!r}" if layer is not None else "grad_cam's default layer"
    if layer is None and found.name is not None:
        where += f" {found.name!r}"
    if runs > 1:
        raise OptionError(
            f"{where} runs {runs} convolutions (a layer called more than once, or several "
            f"kernels under one path); Grad-CAM needs one activation: pick another layer "
            f"(conv layers: {_available(model)})"
        )
    if found.problem is not None:
        raise OptionError(f"{where} cannot be used: {found.problem}")
    if found.split:
        raise OptionError(
            f"{where} cannot be used: its convolution's output is read more than once before "
            f"its bias add, so no one activation carries it; pick another layer (conv layers: "
            f"{_available(model)})"
        )
    return found


def _named(model: CamModel, layer: str) -> CamLayer:
    matches = [x for x in model.layers if x.name == layer]
    if matches:
        return matches[0]
    if not model.has_paths and all(x.name is None for x in model.layers):
        raise OptionError(
            f"grad_cam layer {layer!r}: layers are named by the path of their parameters, "
            f"and a model given as apply_fn(clips) has none (its parameters are closed-over "
            f"constants); pass explain(apply_fn, params, clips) with apply_fn(params, clips), "
            f"or leave layer=None (the last conv layer)"
        )
    raise OptionError(
        f"grad_cam layer {layer!r} not found among the conv layers on the path to the "
        f"logits, whose output Grad-CAM reads as (N, T, H, W, C); conv layers: "
        f"{_available(model)}"
    )


def _nthwc(x: jax.Array, layer: CamLayer) -> jax.Array:
    """The activation (or its gradient) in its own layout as (N, T, H, W, C)."""
    present = [a for a in layer.axes if a is not None]
    rest = [i for i in range(x.ndim) if i not in present]  # all of size 1
    return jnp.transpose(x, present + rest).reshape(layer.shape)


def layer_cam(
    model: CamModel, layer: CamLayer, clips: jax.Array, target: jax.Array | None
) -> jax.Array:
    """ReLU(sum_c w_c A_c) (N, T', H', W') at the layer's resolution: A the
    layer's activation, w_c the target logit's gradient by A_c averaged over
    (T', H', W'). The flat graph is run with a zero added to A, whose VJP is
    the gradient by A."""
    graph = model.graph

    def read(env: dict, atom: Any) -> Any:
        return atom.val if isinstance(atom, jax_core.Literal) else env[atom]

    def forward(delta):
        env = dict(graph.consts)
        env.update(zip(graph.params, model.leaves, strict=True))
        env[graph.clips] = clips
        for node in graph.nodes:
            outs = bind(node, *(read(env, a) for a in node.inputs))
            env.update(zip(node.outputs, outs, strict=True))
            if layer.value in node.outputs:
                env[layer.value] = env[layer.value] + delta
        return read(env, graph.outputs[0]), env[layer.value]

    delta = jnp.zeros(graph.shape(layer.value), graph.dtype(layer.value))
    logits, pull, acts = jax.vjp(forward, delta, has_aux=True)
    (grads,) = pull(one_hot_seed(logits, target))
    acts, grads = _nthwc(acts, layer), _nthwc(grads, layer)
    weights = jnp.mean(grads, axis=(1, 2, 3), keepdims=True)
    return jax.nn.relu(jnp.sum(weights * acts, axis=-1))
