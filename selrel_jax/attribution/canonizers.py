"""Canonizer: per-channel affine maps merged into the conv/dense layer before them.

The LRP rules are defined for ``z = W a + b``. A BatchNorm in inference after a
conv or dense layer is an affine map of each output channel, so the pair is
one linear layer: ``W' = W * gamma / sqrt(var + eps)``, ``b' = (b - mean) *
gamma / sqrt(var + eps) + beta`` (spec: lrp-rules.md, "Canonization"). The
engine sees the traced computation, not modules, so it merges any chain of
elementwise ``add``/``sub``/``mul``/``div``/``neg`` whose other operand
depends only on parameters and varies only along the layer's output channels,
however it is written (a bias add, Flax's BatchNorm, ``(h - mean) /
jnp.sqrt(var + eps) * g + b`` inline): the chain ``z -> s * z + t`` folds into
``W * s`` and ``t``. The merged layer runs under the layer's rule, whatever
the rule (the plain gradient too).

A chain is only merged while each step is the only reader of the value before
it (else that reader would see the merged, normalised value): the engine
checks that and names both layers when it is not so.

Examples:
    A dense layer followed by BatchNorm's ``(z - mean) * g + beta`` (operands given
    by value id, as :func:`affine_step` finds them in the graph), merged into one
    dense layer:

    >>> import jax.numpy as jnp
    >>> from selrel_jax.attribution.canonizers import AffineStep, fold, merged_params
    >>> kernel, bias = jnp.array([[1.0, 2.0], [3.0, 4.0]]), jnp.array([0.5, -0.5])
    >>> mean, g, beta = jnp.array([1.0, 0.0]), jnp.array([2.0, 0.5]), jnp.array([0.0, 1.0])
    >>> steps = [AffineStep("add", 0), AffineStep("sub", 1), AffineStep("mul", 2),
    ...          AffineStep("add", 3)]
    >>> operands = {0: bias, 1: mean, 2: g, 3: beta}
    >>> operands = {k: v.reshape(1, 2) for k, v in operands.items()}  # the output's rank
    >>> scale, shift = fold(steps, operands, out_shape=(1, 2), feature_axes=(1,))
    >>> params = merged_params(kernel, scale, shift, kernel_axes=(1,))
    >>> a = jnp.array([[1.0, -1.0]])
    >>> chained = ((a @ kernel + bias) - mean) * g + beta
    >>> bool(jnp.allclose(a @ params["kernel"] + params["bias"], chained))
    True
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from selrel_jax.attribution._graph import Atom, Graph, Node, varying_axes

__all__ = ["AffineStep", "affine_step", "fold", "linear_axes", "merged_params", "per_feature"]

AFFINE_PRIMITIVES = frozenset({"add", "add_any", "sub", "mul", "div", "neg"})


@dataclasses.dataclass(frozen=True)
class AffineStep:
    """One step ``z -> op(z, operand)`` of an affine chain: ``op`` is one of add,
    sub, rsub (``operand - z``), mul, div, neg (no operand). ``frame`` is
    ``(shape, feature axes)`` of ``z`` where shape-only operations (a reshape,
    a transpose, vmap's broadcasts) stand between the layer and this step:
    the feature axes in the layer's order, None for a size-1 axis no longer
    there; None: the layer's own output frame."""

    op: str
    operand: Atom | None
    frame: tuple[tuple[int, ...], tuple[int | None, ...]] | None = None


def affine_step(
    graph: Graph, node: Node, active: Atom, feature_axes: frozenset[int], memo: dict
) -> AffineStep | None:
    """The step ``node`` applies to ``active`` when its other operand is
    clip-independent and varies along ``feature_axes`` only; else None. (The
    caller has checked that the other operand does not depend on the clips.)"""
    name = node.name
    if name not in AFFINE_PRIMITIVES or graph.shape(node.outputs[0]) != graph.shape(active):
        return None
    if name == "neg":
        return AffineStep("neg", None)
    position = node.inputs.index(active)
    operand = node.inputs[1 - position]
    if isinstance(operand, int) and operand == active:
        return None
    if len(graph.shape(operand)) not in (0, len(graph.shape(active))):
        return None
    if not varying_axes(graph, operand, memo) <= feature_axes:
        return None
    op = {"add": "add", "add_any": "add", "mul": "mul"}.get(name)
    if name == "sub":
        op = "sub" if position == 0 else "rsub"
    elif name == "div":
        op = "div" if position == 0 else None  # operand / z is not affine
    return AffineStep(op, operand) if op else None


def per_feature(
    value: Any, out_shape: tuple[int, ...], feature_axes: tuple[int | None, ...]
) -> Any:
    """A value that varies along ``feature_axes`` only, as an array of the shape
    of those axes in their given order (e.g. ``(C,)`` from ``(1, 1, 1, 1, C)``;
    None in ``feature_axes``: a size-1 feature axis the value does not have)."""
    value = jnp.asarray(value)
    target = tuple(1 if a is None else out_shape[a] for a in feature_axes)
    if value.ndim == 0:
        return jnp.broadcast_to(value, target)
    known = [a for a in feature_axes if a is not None]
    index = tuple(slice(None) if a in known else slice(0, 1) for a in range(value.ndim))
    value = value[index]
    full = tuple(out_shape[a] if a in known else 1 for a in range(value.ndim))
    ordered = sorted(known)
    value = jnp.broadcast_to(value, full).reshape(tuple(out_shape[a] for a in ordered))
    return value.transpose([ordered.index(a) for a in known]).reshape(target)


def fold(
    steps: list[AffineStep],
    operands: dict[int, Any],
    out_shape: tuple[int, ...],
    feature_axes: tuple[int, ...],
) -> tuple[Any, Any]:
    """``(scale, shift)`` per feature with ``chain(z) = scale * z + shift``; None
    for a scale of 1 or a shift of 0 (so a plain bias add changes no weight).
    ``out_shape`` and ``feature_axes`` are the layer's output frame, which a
    step's own ``frame`` replaces."""
    scale = shift = None
    for step in steps:
        if step.op == "neg":
            scale = -1.0 if scale is None else -scale
            shift = None if shift is None else -shift
            continue
        operand = step.operand
        p = operand.val if not isinstance(operand, int) else operands[operand]
        p = per_feature(p, *(step.frame or (out_shape, feature_axes)))
        if step.op == "add":
            shift = p if shift is None else shift + p
        elif step.op == "sub":
            shift = -p if shift is None else shift - p
        elif step.op == "rsub":
            scale = -1.0 if scale is None else -scale
            shift = p if shift is None else p - shift
        elif step.op == "mul":
            scale = p if scale is None else scale * p
            shift = None if shift is None else shift * p
        else:  # div
            scale = 1.0 / p if scale is None else scale / p
            shift = None if shift is None else shift / p
    return scale, shift


def linear_axes(
    graph: Graph, node: Node, kernel_position: int
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """``(output axes, kernel axes)`` of a conv/dense node's output channels: the
    axes of its output that come from the kernel, and the kernel's matching
    axes, in the same order."""
    if node.name == "conv_general_dilated":
        numbers = node.params["dimension_numbers"]
        return (numbers.out_spec[1],), (numbers.rhs_spec[0],)
    (contract_l, contract_r), (batch_l, batch_r) = node.params["dimension_numbers"]
    shapes = [graph.shape(a) for a in node.inputs]
    pairs = zip(shapes, (contract_l, contract_r), (batch_l, batch_r), strict=True)
    free = [[i for i in range(len(s)) if i not in c and i not in b] for s, c, b in pairs]
    start = len(batch_l) + (0 if kernel_position == 0 else len(free[0]))
    out_axes = tuple(range(start, start + len(free[kernel_position])))
    return out_axes, tuple(free[kernel_position])


def merged_params(kernel: Any, scale: Any, shift: Any, kernel_axes: tuple[int, ...]) -> dict:
    """The layer's parameters with the chain folded in: ``{"kernel": W * scale}``
    plus ``"bias": shift`` when the chain adds anything."""
    if scale is not None:
        scale = jnp.asarray(scale, kernel.dtype)
        scale = jnp.broadcast_to(scale, _feature_shape(kernel, kernel_axes))
        shape = [1] * kernel.ndim
        for axis, size in zip(kernel_axes, scale.shape, strict=True):
            shape[axis] = size
        kernel = kernel * scale.reshape(shape)
    if shift is None:
        return {"kernel": kernel}
    bias = jnp.broadcast_to(jnp.asarray(shift), _feature_shape(kernel, kernel_axes))
    return {"kernel": kernel, "bias": bias.astype(kernel.dtype)}


def _feature_shape(kernel: Any, kernel_axes: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(kernel.shape[a] for a in kernel_axes)


def add_bias(y: jax.Array, bias: jax.Array, out_axes: tuple[int, ...]) -> jax.Array:
    """``y + bias`` with ``bias`` (the shape of ``out_axes``) along those axes."""
    shape = [1] * y.ndim
    for axis, size in zip(out_axes, bias.shape, strict=True):
        shape[axis] = size
    return y + bias.reshape(shape)
