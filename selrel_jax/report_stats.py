"""The study-level parts of ``selrel report``: replicate models grouped, hierarchical
bootstrap comparisons with adjusted p-values, and the randomisation check read back.

- :func:`replicate_groups`: sweeps are **replicates of one condition** when their
  settings agree except for the model and what only picks rows (``methods``,
  ``sigmas``, ``limit``, ``batch_size``, ``method_options``, ``faithfulness``) and
  their models' training records (``info.json``) agree except for the training seed:
  the architecture fields, and in ``extra`` the dataset, model options and training
  options other than ``seed`` and the run's own outcomes (command, accuracies,
  history, times). A key only one record has (added by a later version, such as
  ``freeze_backbone``) is not compared. Models without a training record (no
  ``extra.train_config.seed``, or no longer found) are groups of their own.
- :func:`comparisons`: every comparison the report draws a conclusion from, as
  estimates over a group's models and clips (:func:`selrel_jax.stats.
  hierarchical_bootstrap`), two-sided p-values and Holm and Benjamini-Hochberg
  adjusted p-values over all of them.
- :func:`read_sanity`: a ``selrel sanity`` JSON line from a file, verified.

Examples:
    A ``selrel sanity`` result read back (its flags are recomputed from its scores):

    >>> import json
    >>> from selrel_jax import report_stats
    >>> scores = {k: [0.9, 0.1] for k in ("spearman", "ssim", "spearman_selective",
    ...                                   "ssim_selective")}
    >>> record = {"layers": ["fc", "conv1"], "methods": {"gradient": scores},
    ...           "threshold": 0.5, "insensitive": []}
    >>> _ = open("sanity.json", "w").write(json.dumps(record))
    >>> report_stats.read_sanity("sanity.json")["insensitive"]
    []

    Sweeps grouped into conditions, and their comparisons with adjusted p-values
    (``sweeps`` from :func:`selrel_jax.report.load_sweeps`)::

        groups = report_stats.replicate_groups(sweeps)
        rows = report_stats.comparisons(groups)  # estimate, p, adjusted_holm, adjusted_bh
"""

from __future__ import annotations

import itertools
import json
import os
import pathlib
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np

from selrel_jax import stats
from selrel_jax.errors import DataError, SelrelError

__all__ = ["PAIRED_MEASURES", "Group", "comparisons", "read_sanity", "replicate_groups"]

#: Sweep settings that pick rows or columns, not values: replicates may differ in them.
ROW_SETTINGS = ("model", "methods", "sigmas", "limit", "batch_size", "method_options",
                "faithfulness")  # fmt: skip
#: Parts of a training record that are the run's outcome, not its recipe.
_OUTCOMES = ("command", "best_epoch", "val_accuracy", "test_accuracy", "test_n",
             "train_seconds", "history", "train_config")  # fmt: skip
#: The raw/selective column pairs compared per clip (``<key>_raw``, ``<key>_selective``).
PAIRED_MEASURES = ("motion_mass", "motion_precision_at_threshold", "motion_precision",
                   "motion_precision_tolerant", "static_mass")  # fmt: skip
#: The level the report's verdicts use on the adjusted p-values.
LEVEL = 0.05


class Group(NamedTuple):
    """Sweeps of one condition: ``sweeps[i]`` from a model trained with ``seeds[i]``
    (None: unknown). ``name``: the first sweep's, with the count of seeds if several."""

    name: str
    sweeps: list
    seeds: list


def _training_record(model: str) -> tuple[dict[str, Any], dict[str, Any], int] | None:
    """(architecture, recipe, seed) of a model's info.json; None without a seed."""
    from selrel_jax.models import load_info

    try:
        info = load_info(model).to_dict()
    except SelrelError:
        return None
    extra = dict(info.pop("extra", {}) or {})
    config = dict(extra.get("train_config") or {})
    seed = config.pop("seed", None)
    if not isinstance(seed, int):
        return None
    recipe = {k: v for k, v in extra.items() if k not in _OUTCOMES}
    return info, {**recipe, **{f"train_config.{k}": v for k, v in config.items()}}, seed


def _agree(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return all(a[k] == b[k] for k in a.keys() & b.keys())


def _replicates(a, b) -> bool:
    """Whether sweeps ``a`` and ``b`` (with their records) are replicates."""
    (sweep_a, record_a), (sweep_b, record_b) = a, b
    if record_a is None or record_b is None or record_a[2] == record_b[2]:
        return False
    settings = [{k: v for k, v in s.settings.items() if k not in ROW_SETTINGS}
                for s in (sweep_a, sweep_b)]  # fmt: skip
    return (
        settings[0] == settings[1]
        and record_a[0] == record_b[0]
        and _agree(record_a[1], record_b[1])
    )


def replicate_groups(sweeps: Sequence[Any]) -> list[Group]:
    """The sweeps (:class:`selrel_jax.report.Sweep`) in groups of replicates (see the
    module's docstring), in the order of their first sweeps; within a group by seed."""
    records = [(s, _training_record(str(s.settings["model"]))) for s in sweeps]
    members: list[list] = []
    for item in records:
        for group in members:
            if all(_replicates(item, other) for other in group):
                group.append(item)
                break
        else:
            members.append([item])
    groups = []
    for group in members:
        group.sort(key=lambda item: -1 if item[1] is None else item[1][2])
        name = group[0][0].name + (f" ({len(group)} seeds)" if len(group) > 1 else "")
        groups.append(Group(name, [s for s, _ in group],
                            [None if r is None else r[2] for _, r in group]))  # fmt: skip
    return groups


def _per_model(group: Group, column: str, method: str, sigma: float, minus: str | None = None):
    """Per model of ``group`` having ``method`` and ``sigma``: its per-clip ``column``
    (minus ``minus``, clip by clip)."""
    out = []
    for sweep in group.sweeps:
        if method in sweep.methods and sigma in sweep.sigmas and sweep.has(column):
            values = sweep.values(column, method, sigma)
            out.append(values - sweep.values(minus, method, sigma) if minus else values)
    return out


def _cells(groups: Sequence[Group]):
    for group in groups:
        methods = dict.fromkeys(m for s in group.sweeps for m in s.methods)
        sigmas = sorted({g for s in group.sweeps for g in s.sigmas})
        yield from ((group, m, g) for m in methods for g in sigmas)


def _row(kind: str, what: str, method: str, sigma: float, estimate: stats.Bootstrap):
    return {"kind": kind, "what": what, "method": method, "sigma": sigma,
            "estimate": estimate, "models": estimate.models, "clips": estimate.clips,
            "p": stats.bootstrap_p_value(estimate.value, estimate.draws)}  # fmt: skip


def comparisons(
    groups: Sequence[Group], *, measures: Sequence[str] = PAIRED_MEASURES,
    between: str = "spatial_bias", resamples: int = 1000, seed: int = 0,
) -> list[dict[str, Any]]:  # fmt: skip
    """Every comparison the report concludes from, one record each: ``selective -
    raw`` of each paired measure per group, method and sigma (per-clip differences,
    hierarchical bootstrap), and ``between`` of each later group minus each earlier
    one per method and sigma (independent bootstraps, seeds ``seed`` and ``seed +
    1``). Each record: ``kind``, ``what``, ``method``, ``sigma``, ``estimate`` (a
    :class:`selrel_jax.stats.Bootstrap`), ``models``, ``clips``, ``p`` and its
    ``adjusted_holm`` and ``adjusted_bh`` over all the records (``m`` = their number);
    cells without finite values are left out."""
    rows = []
    for group, method, sigma in _cells(groups):
        for key in measures:
            values = _per_model(group, f"{key}_selective", method, sigma, f"{key}_raw")
            estimate = stats.hierarchical_bootstrap(values, resamples=resamples, seed=seed)
            if estimate.models:
                rows.append(_row(f"{key}: selective - raw", group.name, method, sigma, estimate))
    for first, second in itertools.combinations(groups, 2):
        for _, method, sigma in _cells([first]):
            a, b = (stats.hierarchical_bootstrap(_per_model(g, between, method, sigma),
                                                 resamples=resamples, seed=seed + i)
                    for i, g in enumerate((second, first)))  # fmt: skip
            if a.models and b.models:
                rows.append(_row(f"{between}: between models", f"{second.name} - {first.name}",
                                 method, sigma, stats.bootstrap_difference(a, b)))  # fmt: skip
    keep = [r for r in rows if np.isfinite(r["p"])]
    p = np.array([r["p"] for r in keep])
    for r, holm, bh in zip(keep, stats.holm(p), stats.benjamini_hochberg(p), strict=True):
        r["adjusted_holm"], r["adjusted_bh"] = float(holm), float(bh)
    return keep


_SCORES = ("spearman", "ssim", "spearman_selective", "ssim_selective")


def _bad(path: pathlib.Path, why: str) -> DataError:
    return DataError(f"--sanity {path}: {why}; expected the JSON line selrel sanity prints")


def _scores(path, method: str, entry: Any, steps: int) -> dict[str, np.ndarray]:
    if not isinstance(entry, dict):
        raise _bad(path, f"method {method!r} is not an object")
    out = {}
    for name in _SCORES:
        values = entry.get(name)
        if not isinstance(values, list) or len(values) != steps:
            raise _bad(path, f"method {method!r} has no {name} list of {steps} values")
        if any(v is not None and (isinstance(v, bool) or not isinstance(v, int | float))
               for v in values):  # fmt: skip
            raise _bad(path, f"method {method!r}: {name} holds a value that is no number")
        array = np.array([np.nan if v is None else v for v in values], np.float64)
        if np.any(np.abs(array[np.isfinite(array)]) > 1 + 1e-6):
            raise _bad(path, f"method {method!r}: {name} holds a value outside [-1, 1]")
        out[name] = array
    return out


def read_sanity(path: str | os.PathLike) -> dict[str, Any]:
    """The result ``selrel sanity`` printed, from the file ``path`` holding its JSON
    line: ``{"model", "dataset", "n", "sigma", "threshold", "layers", "methods":
    {method: {score: array per layer}}, "insensitive"}``. Verified before use: every
    score a number in [-1, 1] (or null) per layer, and the flags recomputed from the
    scores (mean raw or selective Spearman above ``threshold`` with every layer
    randomised) must match the file's; anything else is a DataError naming the file."""
    path = pathlib.Path(path)
    try:
        record = json.loads(path.read_text())
    except OSError as e:
        raise DataError(f"--sanity {path}: cannot read it ({e.strerror or e})") from None
    except (ValueError, UnicodeDecodeError):
        raise _bad(path, "it is not JSON") from None
    if not isinstance(record, dict):
        raise _bad(path, "it is not one JSON object")
    layers, methods, threshold = (record.get(k) for k in ("layers", "methods", "threshold"))
    if not (isinstance(layers, list) and layers and all(isinstance(x, str) for x in layers)):
        raise _bad(path, "it has no list of layer names")
    if not (isinstance(methods, dict) and methods):
        raise _bad(path, "it has no methods")
    if isinstance(threshold, bool) or not isinstance(threshold, int | float):
        raise _bad(path, "it has no numeric threshold")
    scores = {m: _scores(path, m, e, len(layers)) for m, e in methods.items()}
    # As metrics.Randomization.insensitive: a NaN side makes the maximum NaN, unflagged.
    flagged = [
        m
        for m, s in scores.items()
        if np.maximum(s["spearman"][-1], s["spearman_selective"][-1]) > threshold
    ]
    if flagged != list(record.get("insensitive") or []):
        raise _bad(path, f"its flags {record.get('insensitive')} do not match its scores "
                         f"({flagged})")  # fmt: skip
    return {**{k: record.get(k) for k in ("model", "dataset", "n", "sigma")},
            "threshold": float(threshold), "layers": layers, "methods": scores,
            "insensitive": flagged}  # fmt: skip
