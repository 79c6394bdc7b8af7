"""Small argument checks shared by the whole library.

Each check takes the argument's name (as the caller spells it: ``"steps"``,
``"--limit"``, ``"ModelInfo width"``), the value, and the error class to raise;
it returns the value in canonical form so a call site reads as one line::

    steps = positive_int("steps", steps)
    sigma = real("sigma", sigma, minimum=0.0)
    mode = one_of("threshold", threshold, ("clip", "frame"))

Array checks name the array the same way (:func:`describe`), and :func:`safe_divide`
is the one division whose denominator may be 0.
"""

from __future__ import annotations

import functools
import math
import numbers
from collections.abc import Iterable, Mapping
from typing import Any, TypeVar

import jax
import jax.numpy as jnp
import numpy as np

from selrel_jax.errors import NonFiniteError, OptionError, SelrelError, ShapeError

__all__ = [
    "as_array",
    "check_finite",
    "describe",
    "integer",
    "key_json_pairs",
    "one_of",
    "positive_int",
    "real",
    "safe_divide",
]

T = TypeVar("T")


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool | np.bool_)


def integer(
    name: str, value: Any, *, minimum: int | None = None, error: type[SelrelError] = OptionError
) -> int:
    """``value`` as an int (bools are not ints), at least ``minimum`` when given."""
    if not _is_int(value) or (minimum is not None and value < minimum):
        bound = f" >= {minimum}" if minimum is not None else ""
        raise error(f"{name} must be an int{bound}; got {value!r}")
    return int(value)


def positive_int(name: str, value: Any, error: type[SelrelError] = OptionError) -> int:
    """``value`` as an int >= 1."""
    if not _is_int(value) or value < 1:
        raise error(f"{name} must be a positive int; got {value!r}")
    return int(value)


def real(
    name: str,
    value: Any,
    *,
    minimum: float | None = None,
    above: float | None = None,
    error: type[SelrelError] = OptionError,
) -> float:
    """``value`` as a finite float (bools are not numbers), ``>= minimum`` /
    ``> above`` when given."""
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool | np.bool_)
    ok = ok and math.isfinite(value)
    ok = ok and (minimum is None or value >= minimum) and (above is None or value > above)
    if not ok:
        bound = (
            f" >= {minimum}" if minimum is not None else f" > {above}" if above is not None else ""
        )
        raise error(f"{name} must be a finite number{bound}; got {value!r}")
    return float(value)


def one_of(name: str, value: T, choices: Iterable[T], error: type[SelrelError] = OptionError) -> T:
    """``value`` unchanged if it is one of ``choices``."""
    choices = tuple(choices)
    try:
        known = value in choices
    except (TypeError, ValueError):  # incomparable (e.g. an array): certainly not a choice
        known = False
    if not known:
        raise error(f"{name} must be one of {', '.join(map(str, choices))}; got {value!r}")
    return value


def key_json_pairs(flag: str, pairs: Iterable[str]) -> dict[str, Any]:
    """``["KEY=JSON", ...]`` (a repeatable command-line option) -> ``{KEY: value}``;
    JSON lists become tuples (hashable, as module fields want them)."""
    import json

    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep or not key:
            raise OptionError(f"{flag} must be KEY=JSON; got {pair!r}")
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            raise OptionError(
                f'{flag} {key}: the value must be JSON (e.g. 0.25, [8,16], "name"); got {text!r}'
            ) from None
        out[key] = tuple(value) if isinstance(value, list) else value
    return out


def as_array(name: str, value: Any) -> Any:
    """Arrays (NumPy, JAX, tracers) unchanged; anything else through ``np.asarray``,
    a ragged nesting being a ShapeError naming ``name``."""
    if hasattr(value, "shape") and hasattr(value, "dtype"):
        return value
    try:
        return np.asarray(value)
    except ValueError:  # ragged nesting
        raise ShapeError(f"{name} must be an array; got a ragged nested list") from None


def hashable(value: Any) -> Any:
    """``value`` as a key of a cache of compiled functions: mappings as sorted
    ``(key, value)`` tuples, sequences and arrays (JAX's too) as nested tuples."""
    if isinstance(value, Mapping):
        return tuple(sorted((k, hashable(v)) for k, v in value.items()))
    if isinstance(value, list | tuple | np.ndarray | jax.Array):
        return tuple(hashable(v) for v in np.asarray(value).tolist())
    return value


def describe(x: Any) -> str:
    """``shape (2, 16, 8, 8, 3) float32``: how an error names an array it refuses (a
    value without a dtype shows its type)."""
    return f"shape {tuple(np.shape(x))} {getattr(x, 'dtype', type(x).__name__)}"


@functools.partial(jax.jit, static_argnames=("batched",))
def _nonfinite_counts(x, batched):
    """(clips, 2) counts of NaN and infinite values per clip (one row if not batched)."""
    x = x if batched else x[None]
    axes = tuple(range(1, x.ndim))
    return jnp.stack([jnp.sum(jnp.isnan(x), axes), jnp.sum(jnp.isinf(x), axes)], -1)


def check_finite(
    name: str, x: Any, *, batched: bool, error: type[SelrelError] = NonFiniteError
) -> None:
    """``error`` naming the count of NaN and infinite values in ``x`` and, if ``batched``
    (axis 0 counts clips), the clips that hold them. Concrete ``x`` only, also inside a
    function being traced (a NumPy array a jitted function closes over is concrete); a
    traced ``x`` passes, its NaN showing in the result instead."""
    if isinstance(x, jax.core.Tracer):
        return
    with jax.ensure_compile_time_eval():
        counts = np.asarray(_nonfinite_counts(x, batched))
    bad_clips = np.flatnonzero(counts.sum(-1))
    if bad_clips.size:
        nan, inf = (int(v) for v in counts.sum(0))
        where = f" in clip(s) {bad_clips.tolist()}" if batched else ""
        raise error(
            f"{name} holds {nan + inf} non-finite values ({nan} NaN, {inf} infinite)"
            f"{where} of {describe(x)}"
        )


def safe_divide(numerator: Any, denominator: Any) -> jax.Array:
    """``numerator / denominator``, 0 where the denominator is not positive; no division
    by 0 is evaluated, so the gradients stay finite too."""
    positive = denominator > 0
    return jnp.where(positive, numerator / jnp.where(positive, denominator, 1), 0)
