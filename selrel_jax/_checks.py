"""Small argument checks shared by the whole library.

Each check takes the argument's name (as the caller spells it: ``"steps"``,
``"--limit"``, ``"ModelInfo width"``), the value, and the error class to raise;
it returns the value in canonical form so a call site reads as one line::

    steps = positive_int("steps", steps)
    sigma = real("sigma", sigma, minimum=0.0)
    mode = one_of("threshold", threshold, ("clip", "frame"))

Array checks name the array the same way (:func:`describe`), :func:`safe_divide`
is the one division whose denominator may be 0, and :func:`scaled_to_unit` the one
way a score that must not depend on a map's scale brings the map into float range.
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
    "as_class_index",
    "check_finite",
    "describe",
    "integer",
    "key_json_pairs",
    "listed",
    "near_subnormal",
    "one_of",
    "positive_int",
    "real",
    "safe_divide",
    "scaled_to_unit",
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


def listed(names: Iterable[Any], limit: int = 20) -> str:
    """``a, b, c`` of ``names``; beyond ``limit`` the first ``limit`` and how many there
    are in all (``..., (400 in all)``: Kinetics' classes in one readable line)."""
    names = [str(n) for n in names]
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names)} in all)" if len(names) > limit else "")


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


def as_class_index(target: jax.Array, classes: int) -> jax.Array:
    """A traced integer target as int32, a class out of [0, classes) as -1: the cast
    alone wraps a wider type (int64 2**32 + 1 -> 1, a valid class, under
    jax_enable_x64), and the range checks that follow it would pass."""
    return jnp.where((target < 0) | (target >= classes), -1, target).astype(jnp.int32)


def safe_divide(numerator: Any, denominator: Any) -> jax.Array:
    """``numerator / denominator``, 0 where the denominator is not positive; no division
    by 0 is evaluated, so the gradients stay finite too."""
    positive = denominator > 0
    return jnp.where(positive, numerator / jnp.where(positive, denominator, 1), 0)


#: :func:`scaled_to_unit` reads subnormal values within this many binary orders of
#: magnitude of the largest value; smaller ones can't change a float32 score.
SUBNORMAL_RANGE = 60


def _float_bits(dtype: Any) -> tuple[Any, int, int]:
    """``(integer dtype of the same width, mantissa bits, exponent bias)`` of a float dtype."""
    info = jnp.finfo(dtype)
    return jnp.dtype(f"int{info.bits}"), int(info.nmant), int(info.maxexp) - 1


def _exponent_of_max(x: jax.Array) -> jax.Array:
    """``floor(log2(max |x|))`` as an int32 scalar (0 for an all-zero ``x``), read from
    the bits: XLA:CPU reads subnormal values as 0 in arithmetic, even in a max."""
    ints, nmant, bias = _float_bits(x.dtype)
    largest = jnp.max(jax.lax.bitcast_convert_type(x, ints) & jnp.iinfo(ints).max)  # |x|
    field = largest >> nmant
    # A subnormal maximum is m * 2**(1 - bias - nmant) with the integer m < 2**nmant,
    # which converts to a normal float exactly.
    as_float = jax.lax.bitcast_convert_type(largest.astype(x.dtype), ints) >> nmant
    subnormal = as_float - bias + 1 - bias - nmant
    exponent = jnp.where(field > 0, field - bias, jnp.where(largest > 0, subnormal, 0))
    return exponent.astype(jnp.int32)


def _times_power_of_two(x: jax.Array, power: jax.Array, subnormal: jax.Array) -> jax.Array:
    """``x * 2**power`` exactly where the result is a normal float, 0 where it would be
    smaller, NaN and infinities unchanged; subnormal ``x`` are read where ``subnormal``
    holds, else 0 (as XLA:CPU's arithmetic reads them). For a ``power`` that keeps the
    result at most ~1, as :func:`scaled_to_unit` chooses it."""
    ints, nmant, bias = _float_bits(x.dtype)
    bits = jax.lax.bitcast_convert_type(x, ints)
    field = (bits >> nmant) & (2 * bias + 1)
    mantissa = bits & ((1 << nmant) - 1)
    # x = +-q * 2**(max(field, 1) - bias - nmant) with the integer q < 2**(nmant + 1).
    q = jnp.where(field > 0, mantissa | (1 << nmant), jnp.where(subnormal, mantissa, 0))
    new_field = jnp.maximum(field, 1) - nmant + power.astype(ints)
    factor = jax.lax.bitcast_convert_type(jnp.where(new_field > 0, new_field, 0) << nmant, x.dtype)
    scaled = q.astype(x.dtype) * factor
    scaled = jnp.where(bits < 0, -scaled, scaled)
    return jnp.where(field == 2 * bias + 1, x, scaled)


def scaled_to_unit(x: Any, by: Any = None) -> jax.Array:
    """``x * 2**-e`` with ``e = floor(log2(max |x|))``: the largest magnitude in [1, 2)
    (``by``: scaled as ``by`` is, e.g. a selection of ``by`` as ``by`` itself).

    Scores that do not depend on a map's scale (a threshold relative to a std, a share,
    a Gini index) compute on this: no sum or square then overflows or underflows,
    whatever the scale of ``x`` in its float range. A power of two scales exactly, so
    ``x`` and ``x * 2**k`` give identical bits. Values below ``2**-126`` times the
    largest (float32) become 0. Subnormal values are read where they reach
    ``2**-SUBNORMAL_RANGE`` of the largest (a map of 1e-42 read as all zero); below
    that they are 0, as XLA:CPU's arithmetic reads them, so a clip gets the same
    result scaled or not. All zero stays all zero; NaN and infinities stay (and make
    the scale meaningless, as they make the score). Traceable; per clip under
    ``vmap``."""
    x = jnp.asarray(x)
    exponent = _exponent_of_max(x if by is None else jnp.asarray(by, x.dtype))
    return _times_power_of_two(x, -exponent, _near_subnormal(exponent, x.dtype))


def _near_subnormal(exponent: jax.Array, dtype: Any) -> jax.Array:
    return exponent < jnp.finfo(dtype).minexp + SUBNORMAL_RANGE


def near_subnormal(x: jax.Array) -> jax.Array:
    """Whether ``x``'s largest magnitude lies within ``SUBNORMAL_RANGE`` binary orders
    of magnitude of the subnormal range: there XLA:CPU's arithmetic, which flushes
    subnormal values to 0, would lose values that count. A bool scalar."""
    return _near_subnormal(_exponent_of_max(x), x.dtype)
