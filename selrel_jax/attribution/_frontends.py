"""Front ends of the LRP engine: any model as a pure ``apply(params, clips)``.
Private: :mod:`~selrel_jax.attribution.engine` and
:mod:`~selrel_jax.attribution.explain` use it.

* A Flax linen model: ``model.apply(variables, clips, **apply_kwargs)``. While
  it is traced, every module call runs in a ``selrel_module_<n>`` name scope
  (so parameter-free layers get the path of the module that computes them,
  e.g. ``layer1_0/sum``), its output is checked for empty axes, and Flax's
  errors for variables that do not fit become one-line SelrelErrors.
* A Flax NNX module: split into its graph and state (:func:`as_pure`); the
  state is the parameter pytree, the graph a hashable :class:`NnxApply`.
* A plain ``apply_fn(params, clips)`` with its parameter pytree, or
  ``apply_fn(clips)`` with ``None`` (then closed-over parameters have no path).

:func:`trace` returns the model's jaxpr and how each parameter leaf is named:
``conv1/kernel`` (a linen ``{"params": ...}`` collection level and an NNX
variable's ``.value`` are left out) belongs to the layer ``conv1``.

Examples:
    >>> import jax
    >>> import jax.numpy as jnp
    >>> from selrel_jax import models
    >>> model = models.create("c3d_small", 4, width=0.25, clip_size=(8, 32, 32))
    >>> variables = model.init(jax.random.key(0), jnp.zeros((1, 8, 32, 32, 3)), train=False)
    >>> clips = jax.random.normal(jax.random.key(1), (1, 8, 32, 32, 3))
    >>> from selrel_jax.attribution._frontends import as_pure, trace
    >>> pure, default_params = as_pure(model)   # a linen model stays as it is
    >>> pure is model, default_params
    (True, None)
    >>> traced = trace(pure, variables, clips, apply_kwargs={"train": False})
    >>> traced.outputs.shape
    (1, 4)
    >>> traced.leaf_paths[:2], traced.leaf_names[:2]
    ((('conv1',), ('conv1',)), ('bias', 'kernel'))
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import flax.errors
import flax.linen as nn
import jax
import numpy as np
from flax import nnx

from selrel_jax.attribution._graph import MODULE_SCOPE
from selrel_jax.attribution._model_checks import (
    check_module_output,
    check_no_empty_reduction,
    variable_errors,
)
from selrel_jax.errors import OptionError

__all__ = ["NnxApply", "Traced", "as_pure", "check_params", "is_linen", "trace"]

Path = tuple[str, ...]


class NnxApply(NamedTuple):
    """A Flax NNX module as the pure function ``(state, clips) -> logits`` (its
    ``nnx.split`` graph; hashable, so jitted explainers can be cached by it).
    ``classes`` holds the module class at each module path, for composites
    that give rules by type."""

    graphdef: Any
    classes: tuple[tuple[Path, type], ...]

    def __call__(self, state: Any, clips: jax.Array, **kwargs: Any) -> Any:
        return nnx.merge(self.graphdef, state)(clips, **kwargs)


def is_linen(model: Any) -> bool:
    return isinstance(model, nn.Module) or (hasattr(model, "apply") and not callable(model))


def as_pure(model: Any) -> tuple[Any, Any]:
    """``(model, default params)``: an NNX module becomes ``(NnxApply, its
    state)``; linen models and plain callables are returned as they are,
    with no default parameters."""
    if not isinstance(model, nnx.Module):
        return model, None
    graphdef, state = nnx.split(model)
    classes = tuple((tuple(str(k) for k in path), type(node))
                    for path, node in nnx.iter_graph(model)
                    if isinstance(node, nnx.Module))  # fmt: skip
    return NnxApply(graphdef, classes), state


def apply_fn(model: Any, apply_kwargs: Mapping[str, Any]) -> Callable:
    """The model as ``apply(params, clips)``; ``params`` None for a plain
    ``apply_fn(clips)``."""
    if is_linen(model):
        return lambda variables, clips: model.apply(variables, clips, **apply_kwargs)
    if not callable(model):
        raise OptionError(
            f"model must be a Flax linen model, an NNX module or a callable "
            f"apply_fn(params, clips); got {type(model).__name__}"
        )

    def apply(params, clips):
        if params is None:
            return model(clips, **apply_kwargs)
        return model(params, clips, **apply_kwargs)

    return apply


def check_params(params: Any) -> None:
    """One clear error for a parameter pytree whose leaves are not all arrays (a
    whole Equinox module holds its settings and activation functions as leaves;
    traced as arrays they end in a raw JAX TypeError)."""
    for keypath, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        array = isinstance(leaf, jax.Array | np.ndarray | np.generic)
        if array or (isinstance(leaf, int | float | complex) and not isinstance(leaf, bool)):
            continue
        where = jax.tree_util.keystr(keypath) or "<root>"
        hint = (" (a whole Equinox module?): split it with `params, static = "
                "eqx.partition(model, eqx.is_array)` and explain `lambda p, x: jax.vmap("
                "eqx.combine(p, static))(x)` with params, or use the closure form "
                "explain(lambda x: jax.vmap(model)(x), None, clips)"
                if _from_equinox(params) else
                "; pass the arrays only, or close over the model and use the closure form "
                "explain(lambda clips: ..., None, clips)")  # fmt: skip
        raise OptionError(
            f"variables must be a pytree of arrays, but the leaf at {where} is a "
            f"{type(leaf).__name__}{hint}"
        )


def _from_equinox(value: Any) -> bool:
    return any(c.__module__.split(".")[0] == "equinox" for c in type(value).__mro__)


@dataclasses.dataclass(frozen=True)
class Traced:
    """The traced model: its ClosedJaxpr over ``(*param leaves, clips)``, its
    output (ShapeDtypeStructs), each leaf's layer path and name, each linen
    module marker's ``(path, class)``, and the module class at each path."""

    closed: Any
    outputs: Any
    leaf_paths: tuple[Path, ...]
    leaf_names: tuple[str, ...]
    scopes: Mapping[int, tuple[Path, type]]
    classes: Mapping[Path, type]


def _first_sentence(error: Exception) -> str:
    return str(error).split(" (https://", 1)[0].strip()


def _key_name(key: Any) -> str:
    for attr in ("key", "idx", "name"):
        if hasattr(key, attr):
            return str(getattr(key, attr))
    return str(key)  # pragma: no cover - a key type JAX may add


def _labelled(node: Any) -> bool:
    """A Penzai parameter value: its ``label`` (``"fc/Linear.weights"``) names it."""
    return isinstance(getattr(node, "label", None), str) and hasattr(node, "value")


def _leaf_paths(params: Any) -> tuple[tuple[Path, ...], tuple[str, ...]]:
    """Each leaf's ``(layer path, leaf name)``: the collection level of a linen
    variables dict and an NNX variable's ``.value`` are dropped; a Penzai
    parameter is named by its label (``"fc/Linear.weights"`` or ``"fc.weights"``
    -> layer ``fc``)."""
    collections = isinstance(params, Mapping) and "params" in params
    paths, names = [], []
    found = jax.tree_util.tree_flatten_with_path(params, is_leaf=_labelled)[0]
    for keypath, node in found:
        if _labelled(node):
            parts = node.label.split("/") if "/" in node.label else node.label.rsplit(".", 1)
            for _ in jax.tree.leaves(node):
                paths.append(tuple(parts[:-1]))
                names.append(parts[-1])
            continue
        parts = [_key_name(k) for k in keypath]
        if keypath and isinstance(keypath[-1], jax.tree_util.GetAttrKey) and parts[-1] == "value":
            parts = parts[:-1]
        if collections:
            parts = parts[1:]
        paths.append(tuple(parts[:-1]))
        names.append(parts[-1] if parts else "")
    return tuple(paths), tuple(names)


def trace(model: Any, params: Any, clips: jax.Array, apply_kwargs: Mapping[str, Any]) -> Traced:
    """Abstract trace of ``model`` on ``params`` and ``clips`` (no FLOPs), after
    the checks of the model against the clips (variables, empty axes)."""
    scopes: dict[int, tuple[Path, type]] = {}
    classes: dict[Path, type] = dict(getattr(model, "classes", ()))
    apply = apply_fn(model, apply_kwargs)
    leaves, treedef = jax.tree.flatten(params)

    def mark(next_fun, args, kwargs, context):
        if context.method_name != "__call__":
            return next_fun(*args, **kwargs)
        path, number = tuple(context.module.path), len(scopes)
        scopes[number] = (path, type(context.module))
        classes.setdefault(path, type(context.module))
        with jax.named_scope(f"{MODULE_SCOPE}{number}"):
            out = next_fun(*args, **kwargs)
        check_module_output(path, context.module, out, tuple(clips.shape))
        return out

    def forward(*args):
        p = jax.tree.unflatten(treedef, args[:-1])
        if not is_linen(model):
            return apply(p, args[-1])
        with nn.intercept_methods(mark):
            return apply(p, args[-1])

    structs = [jax.ShapeDtypeStruct(jax.numpy.shape(a), jax.numpy.result_type(a))
               for a in (*leaves, clips)]  # fmt: skip
    try:
        with variable_errors(tuple(clips.shape)):
            closed, outputs = jax.make_jaxpr(forward, return_shape=True)(*structs)
    except flax.errors.ModifyScopeVariableError as error:
        raise OptionError(
            f"the model changes its variables while it is explained ({_first_sentence(error)}); "
            f"relevance needs it in inference mode (a BatchNorm with use_running_average=True)"
        ) from None
    check_no_empty_reduction(closed.jaxpr, tuple(clips.shape))
    paths, names = _leaf_paths(params)
    return Traced(closed, outputs, paths, names, scopes, classes)
