"""Statistics of a study over several models: the hierarchical bootstrap, p-values and
their adjustment for many comparisons (Holm, Benjamini-Hochberg).

Pure NumPy, used by :mod:`selrel_jax.report` for sweeps that are replicates of one
condition (models that differ only by their training seed).

- :func:`hierarchical_bootstrap`: the mean over models of each model's mean over its
  clips, with a percentile interval from resampling the models with replacement and
  then the clips within each drawn model. With one model it is exactly
  :func:`selrel_jax.report.bootstrap_mean` (same draws from ``default_rng(seed)``).
- :func:`bootstrap_p_value`: a two-sided p-value of "the mean is 0" from the
  bootstrap's standard error (normal approximation, ``z = estimate / SE``): unlike a
  count of resamples beyond 0 it is not floored at ``1 / resamples``, which matters
  once a Holm threshold is ``0.05 / m``.
- :func:`holm` and :func:`benjamini_hochberg`: adjusted p-values over ``m``
  comparisons; compare them with the level (e.g. 0.05) directly.

Examples:
    >>> import numpy as np
    >>> from selrel_jax import stats
    >>> stats.holm([0.01, 0.04, 0.03]).tolist()
    [0.03, 0.06, 0.06]
    >>> stats.benjamini_hochberg([0.01, 0.04, 0.03]).tolist()
    [0.03, 0.04, 0.04]
    >>> models = [np.array([0.1, 0.2, 0.3]), np.array([0.2, 0.4])]
    >>> round(stats.hierarchical_bootstrap(models).value, 3)
    0.25
    >>> a = stats.hierarchical_bootstrap([[0.1, 0.3, 0.2]], seed=0)
    >>> b = stats.hierarchical_bootstrap([[0.0, 0.1]], seed=1)  # another seed: independent
    >>> d = stats.bootstrap_difference(a, b)
    >>> round(d.value, 2), d.models, d.clips
    (0.15, 2, 5)
    >>> stats.bootstrap_p_value(d.value, d.draws) < 0.05
    True
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np

from selrel_jax._checks import integer, positive_int, real
from selrel_jax.errors import OptionError

__all__ = ["Bootstrap", "benjamini_hochberg", "bootstrap_difference", "bootstrap_p_value",
           "hierarchical_bootstrap", "holm"]  # fmt: skip


class Bootstrap(NamedTuple):
    """A mean with its percentile interval [low, high], the resampled means it came
    from (``draws``), and how many ``models`` and ``clips`` (in all) it rests on."""

    value: float
    low: float
    high: float
    models: int
    clips: int
    draws: np.ndarray


def _p_values(p: Any) -> np.ndarray:
    p = np.asarray(p, np.float64)
    if p.ndim != 1:
        raise OptionError(f"p-values must be one vector; got shape {p.shape}")
    if not np.all((p >= 0) & (p <= 1)):  # NaN fails this too
        raise OptionError("p-values must lie in [0, 1] (no NaN)")
    return p


def holm(p: Any) -> np.ndarray:
    """Holm's step-down adjusted p-values of the vector ``p`` (``m = len(p)``
    comparisons), in ``p``'s order: sorted ascending, the i-th (from 1) is the running
    maximum of ``(m - i + 1) * p_(i)``, capped at 1. Controls the family-wise error."""
    p = _p_values(p)
    m = p.size
    order = np.argsort(p, kind="stable")
    scaled = np.minimum(1.0, (m - np.arange(m)) * p[order])
    adjusted = np.empty(m)
    adjusted[order] = np.maximum.accumulate(scaled) if m else scaled
    return adjusted


def benjamini_hochberg(p: Any) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values (q-values) of ``p``, in its order: sorted
    ascending, the i-th is the minimum over j >= i of ``m / j * p_(j)``, capped at 1.
    Controls the false discovery rate (independent or positively dependent tests)."""
    p = _p_values(p)
    m = p.size
    order = np.argsort(p, kind="stable")
    scaled = np.minimum(1.0, m / np.arange(1, m + 1) * p[order])
    adjusted = np.empty(m)
    adjusted[order] = np.minimum.accumulate(scaled[::-1])[::-1] if m else scaled
    return adjusted


def _finite_groups(groups: Sequence[Any]) -> list[np.ndarray]:
    if isinstance(groups, np.ndarray) or not isinstance(groups, Sequence):
        raise OptionError("groups must be a sequence of per-model value arrays")
    kept = [np.asarray(g, np.float64).ravel() for g in groups]
    return [g[np.isfinite(g)] for g in kept if np.isfinite(g).any()]


def _resampled_means(x: np.ndarray, resamples: int, rng: np.random.Generator) -> np.ndarray:
    """``resamples`` means of ``x.size`` values drawn with replacement, a block of rows
    at a time (the same numbers as one draw, bounded memory; as report's bootstrap)."""
    rows = max(1, (1 << 22) // x.size)
    return np.concatenate([
        x[rng.integers(0, x.size, size=(min(rows, resamples - first), x.size))].mean(axis=1)
        for first in range(0, resamples, rows)
    ])  # fmt: skip


def hierarchical_bootstrap(
    groups: Sequence[Any], *, resamples: int = 1000, seed: int = 0, confidence: float = 0.95
) -> Bootstrap:
    """The mean over models of each model's mean of its finite values (``groups``: one
    array per model, e.g. per-clip differences selective - raw), with a percentile
    interval: each resample draws as many models as there are with replacement (from
    ``default_rng([seed, 1])``) and, for each drawn model, its clips with replacement
    (from ``default_rng(seed)``). Models without a finite value are left out; none at
    all gives NaN with 0 models."""
    resamples = positive_int("resamples", resamples)
    seed = integer("seed", seed, minimum=0)
    if not 0 < real("confidence", confidence) < 1:
        raise OptionError(f"confidence must lie in (0, 1); got {confidence!r}")
    kept = _finite_groups(groups)
    if not kept:
        return Bootstrap(math.nan, math.nan, math.nan, 0, 0, np.empty(0))
    clip_rng, model_rng = np.random.default_rng(seed), np.random.default_rng([seed, 1])
    # For every slot of a resample, each model's own clip resample; the slot then takes
    # the one of the model it drew, so a model drawn twice gets two independent draws.
    slots = len(kept)
    drawn = model_rng.integers(0, slots, size=(resamples, slots)) if slots > 1 else None
    total = np.zeros(resamples)
    for slot in range(slots):
        means = np.stack([_resampled_means(g, resamples, clip_rng) for g in kept])
        total += means[0] if drawn is None else means[drawn[:, slot], np.arange(resamples)]
    draws = total / slots
    tail = 100 * (1 - confidence) / 2
    low, high = np.percentile(draws, [tail, 100 - tail])
    value = float(np.mean([g.mean() for g in kept]))
    return Bootstrap(value, float(low), float(high), slots, sum(g.size for g in kept), draws)


def bootstrap_p_value(value: float, draws: Any) -> float:
    """Two-sided p-value of "the true mean is 0" for an estimate ``value`` whose
    bootstrap resamples are ``draws``: ``erfc(|z| / sqrt 2)`` with ``z = value / SE``,
    SE the standard deviation of the draws. 1 for a zero estimate, 0 for a nonzero one
    whose draws do not vary, NaN without draws."""
    draws = np.asarray(draws, np.float64)
    if not draws.size or not np.isfinite(value):
        return math.nan
    se = float(np.std(draws, ddof=1)) if draws.size > 1 else 0.0
    if value == 0:
        return 1.0
    if se == 0:
        return 0.0
    return math.erfc(abs(value) / se / math.sqrt(2))


def bootstrap_difference(
    first: Bootstrap, second: Bootstrap, *, confidence: float = 0.95
) -> Bootstrap:
    """``first - second`` of two independent bootstraps (drawn with different seeds,
    as many resamples each): the difference of the values, the interval of the
    differences of the draws, and the models and clips of both."""
    if first.draws.shape != second.draws.shape:
        raise OptionError(
            f"the bootstraps must have as many resamples; got {first.draws.size} and "
            f"{second.draws.size}"
        )
    if not first.draws.size:
        return Bootstrap(math.nan, math.nan, math.nan, 0, 0, np.empty(0))
    draws = first.draws - second.draws
    tail = 100 * (1 - real("confidence", confidence)) / 2
    low, high = np.percentile(draws, [tail, 100 - tail])
    return Bootstrap(first.value - second.value, float(low), float(high),
                     first.models + second.models, first.clips + second.clips, draws)  # fmt: skip
