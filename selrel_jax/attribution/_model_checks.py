"""Checks of a model against the clips, made on its abstract trace (shapes only,
so they hold under ``jit`` as well as in eager calls). Private: the LRP front
ends, the gradient family and ``explain`` use them.

* Variables that do not fit the model (another width, a missing layer) raise a
  one-line :class:`ShapeError` (wrong shape) or :class:`CheckpointError`
  (missing variable) naming the parameter, instead of Flax's scope errors.
* Clips too small for the model (a pooling layer left with an empty axis; a
  mean over it is NaN and the relevance silently 0) raise a
  :class:`ShapeError` naming the layer and the clip shape.

Examples:
    >>> import flax.linen as nn
    >>> import jax
    >>> import jax.numpy as jnp
    >>> from selrel_jax.attribution._model_checks import (
    ...     check_no_empty_reduction, variable_errors,
    ... )
    >>> x = jnp.ones((1, 4))
    >>> variables = nn.Dense(3).init(jax.random.key(0), x)
    >>> with variable_errors(x.shape):
    ...     jax.make_jaxpr(lambda x: nn.Dense(3).apply(variables, x))(jnp.ones((1, 5)))
    Traceback (most recent call last):
    ...
    selrel_jax.errors.ShapeError: variables do not fit the model: parameter 'kernel' ...
    >>> empty = jnp.ones((1, 0, 4))   # a clip with no frames left
    >>> jaxpr = jax.make_jaxpr(lambda x: x.mean(axis=1))(empty)
    >>> check_no_empty_reduction(jaxpr.jaxpr, empty.shape)
    Traceback (most recent call last):
    ...
    selrel_jax.errors.ShapeError: clips of shape (1, 0, 4) are too small for the model: ...
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Iterator
from typing import Any

import flax.errors
import flax.linen as nn
import jax
from jax._src import source_info_util
from jax.extend import core as jax_core

from selrel_jax.attribution.types import path_str
from selrel_jax.errors import CheckpointError, ShapeError

__all__ = [
    "check_module_output",
    "check_no_empty_reduction",
    "inspect_forward",
    "variable_errors",
]

_SHAPE_ERROR = re.compile(
    r'parameter "(?P<name>[^"]+)" in "(?P<scope>[^"]*)".*?shape (?P<want>\([^)]*\)).*?'
    r"has shape (?P<got>\([^)]*\))",
    re.DOTALL,
)
_MISSING_ERRORS = (
    flax.errors.ScopeParamNotFoundError,
    flax.errors.ScopeCollectionNotFound,
    flax.errors.ScopeVariableNotFoundError,
)


def _first_sentence(error: Exception) -> str:
    return str(error).split(" (https://", 1)[0].strip()


@contextlib.contextmanager
def variable_errors(clips_shape: tuple[int, ...]) -> Iterator[None]:
    """Flax's errors for variables that do not fit the model, as one-line SelrelErrors."""
    try:
        yield
    except flax.errors.ScopeParamShapeError as error:
        found = _SHAPE_ERROR.search(str(error))
        if found is None:  # pragma: no cover - Flax changed its message
            raise ShapeError(f"variables do not fit the model: {_first_sentence(error)}") from None
        where = "/".join(p for p in (found["scope"].strip("/"), found["name"]) if p)
        raise ShapeError(
            f"variables do not fit the model: parameter '{where}' has shape {found['got']}, "
            f"the model needs {found['want']} for clips of shape {tuple(clips_shape)} "
            f"(variables of another model or width, or clips of another size?)"
        ) from None
    except _MISSING_ERRORS as error:
        raise CheckpointError(
            f"variables do not fit the model: {_first_sentence(error)} (variables of "
            f"another model, or not the full variables dict?)"
        ) from None


def check_module_output(
    path: tuple[str, ...], module: Any, output: Any, clips_shape: tuple[int, ...]
) -> None:
    """ShapeError when the module call at ``path`` returned an array with an empty axis."""
    for leaf in jax.tree.leaves(output):
        shape = tuple(getattr(leaf, "shape", ()))
        if 0 in shape:
            raise ShapeError(
                f"clips of shape {tuple(clips_shape)} are too small for the model: layer "
                f"'{path_str(path)}' ({type(module).__name__}) outputs shape {shape}, "
                f"with an empty axis; give longer or larger clips"
            )


def _sub_jaxprs(eqn: Any) -> Iterator[Any]:
    for value in eqn.params.values():
        for item in value if isinstance(value, tuple | list) else (value,):
            if isinstance(item, jax_core.ClosedJaxpr):
                yield item.jaxpr
            elif isinstance(item, jax_core.Jaxpr):
                yield item


def _source(eqn: Any, enclosing: str) -> str:
    """``file:line:col (function)`` of the user code that made ``eqn``; the
    enclosing equation's for one inside a cached jaxpr (e.g. ``jax.nn.relu``'s),
    whose own trace points elsewhere or nowhere."""
    try:
        own = source_info_util.summarize(eqn.source_info)
    except Exception:  # pragma: no cover - source info is best effort
        own = ""
    return enclosing if enclosing or not own.strip() else own


def _walk(jaxpr: Any, skip: Callable[[Any], bool], within: str = "", source: str = "") -> Iterator:
    """``(eqn, within, source)`` for every equation not skipped, inner equations
    first; ``within`` names the innermost enclosing named jit (e.g. ``relu``),
    ``source`` is :func:`_source`."""
    for eqn in jaxpr.eqns:
        if skip(eqn):
            continue
        name = eqn.params.get("name")
        inner = name if isinstance(name, str) else within
        where = _source(eqn, source)
        for sub in _sub_jaxprs(eqn):
            yield from _walk(sub, skip, inner, where)
        yield eqn, within, where


def _where(eqn: Any, within: str, source: str) -> str:
    place = eqn.primitive.name + (f" in {within}" if within else "")
    return f"{place} at {source}" if source else place


def _shape(var: Any) -> tuple[int, ...] | None:
    return getattr(getattr(var, "aval", None), "shape", None)


def _is_empty(var: Any) -> bool:
    shape = _shape(var)
    return shape is not None and 0 in shape


def check_no_empty_reduction(jaxpr: Any, clips_shape: tuple[int, ...]) -> None:
    """ShapeError when an operation turns an empty array into a non-empty one
    (a mean, max or convolution over nothing) anywhere in ``jaxpr``: the
    functional counterpart of :func:`check_module_output` (plain callables,
    Flax NNX models)."""
    for eqn, within, source in _walk(jaxpr, lambda eqn: False):
        if eqn.primitive.name == "concatenate":  # an empty piece adds nothing
            continue
        empty = [_shape(v) for v in eqn.invars if _is_empty(v)]
        if empty and not all(_is_empty(v) for v in eqn.outvars):
            raise ShapeError(
                f"clips of shape {tuple(clips_shape)} are too small for the model: "
                f"{_where(eqn, within, source)} reads an empty array of shape {empty[0]}; give "
                f"longer or larger clips"
            )


def inspect_forward(apply_fn: Callable, clips: jax.Array) -> tuple[Any, list[tuple]]:
    """``(output, calls)`` of ``apply_fn(clips)`` traced abstractly (no FLOPs):
    the output as ShapeDtypeStructs and every linen module call as ``(path,
    module, output shape)``, after the checks above (variables, empty axes)."""
    calls: list[tuple] = []

    def record(next_fun, args, kwargs, context):
        out = next_fun(*args, **kwargs)
        if context.method_name == "__call__":
            path = tuple(context.module.path)
            check_module_output(path, context.module, out, clips.shape)
            if hasattr(out, "shape"):
                calls.append((path_str(path), context.module, out.shape))
        return out

    def run(x):
        with nn.intercept_methods(record):
            return apply_fn(x)

    struct = jax.ShapeDtypeStruct(clips.shape, clips.dtype)
    with variable_errors(clips.shape):
        closed, output = jax.make_jaxpr(run, return_shape=True)(struct)
    check_no_empty_reduction(closed.jaxpr, clips.shape)
    return output, calls
