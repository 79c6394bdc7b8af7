"""``run_sanity``: the cascading randomisation check of a trained model on a dataset
split, as ``selrel sanity`` runs it (a summary and a figure).

In the data path this sits beside :mod:`selrel_jax.viz`, :mod:`selrel_jax.sweep`
and :mod:`selrel_jax.train`: it reads models and data, scores with
:mod:`selrel_jax.metrics` and draws with :mod:`selrel_jax.viz`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np

from selrel_jax import data, metrics, models, viz
from selrel_jax._checks import integer, positive_int, real
from selrel_jax._jobs import write_file
from selrel_jax.attribution import METHODS, registry
from selrel_jax.errors import OptionError
from selrel_jax.models.checkpoint import writable_directory
from selrel_jax.models.registry import HEADS


def _checked_options(methods: Sequence[str], figure: Any, threshold: Any) -> Path:
    """The figure's path, once every option is known good (before any work)."""
    if not methods:
        raise OptionError("methods is empty; name at least one method")
    for method in methods:
        if method not in METHODS:
            raise OptionError(f"unknown method {method!r}; expected one of {list(METHODS)}")
    real("threshold", threshold, minimum=-1)
    path = Path(figure)
    if path.suffix.lower() != ".png" or path.is_dir():
        raise OptionError(f"figure must be a .png file path; got {str(figure)!r}")
    writable_directory(path.parent if str(path.parent) else ".", "figure's folder", OptionError)
    return path


def _summary(result: metrics.Randomization, threshold: float) -> dict[str, Any]:
    """Per method the mean over clips of each score at each step, and its flag."""
    flagged = result.insensitive(threshold)
    per_method = {}
    for m, method in enumerate(result.methods):
        scores = {
            name: np.nanmean(np.asarray(getattr(result, name)[m]), -1).tolist()
            for name in ("spearman", "ssim", "spearman_selective", "ssim_selective")
        }
        per_method[method] = {**scores, "insensitive": method in flagged}
    return {"layers": list(result.layers), "methods": per_method, "insensitive": list(flagged)}


def run_sanity(
    model: str | os.PathLike,
    dataset: str,
    split: str = "test",
    *,
    methods: Sequence[str] = ("gradient",),
    limit: int = 8,
    data_seed: int | None = None,
    data_dir: str | os.PathLike | None = None,
    sigma: float = 1.0,
    seed: int = 0,
    threshold: float = metrics.INSENSITIVE_THRESHOLD,
    figure: str | os.PathLike = "sanity.png",
) -> dict[str, Any]:
    """Cascading randomisation (:func:`selrel_jax.metrics.cascading_randomization`)
    of ``model`` (a shipped name or checkpoint directory) on the first ``limit``
    clips of ``dataset``'s ``split``, explaining the trained model's predicted
    class. Writes :func:`selrel_jax.viz.randomization_curves` to ``figure`` (a
    .png, atomically) and returns the per-layer means and the methods flagged
    (mean rank correlation above ``threshold`` with every layer randomised).
    ``seed`` draws the random weights. Every option is checked before any work.
    """
    methods = list(methods)
    path = _checked_options(methods, figure, threshold)
    limit = positive_int("limit", limit)
    seed = integer("seed", seed, minimum=0)
    sigma = real("sigma", sigma, minimum=0)
    module, variables, info = models.load(model)
    clips, _ = data.load_clips(
        dataset, split, data_dir=data_dir, limit=limit, data_seed=data_seed,
        clip_size=info.clip_size,
    )  # fmt: skip
    head = HEADS.get(info.arch)
    layers = list(variables["params"])
    if head is not None and layers[-1] != head:
        raise OptionError(f"{model}: the last params key is {layers[-1]!r}, not the head {head!r}")
    bounds = info.input_bounds()  # as a sweep gives lrp.epsilon_gamma_box its bounds
    result = metrics.cascading_randomization(
        module, variables, info.normalize(np.asarray(clips.video)), None, methods,
        key=jax.random.key(seed), sigma=sigma,
        method_options={m: registry.with_input_bounds(m, {}, bounds) for m in methods},
    )  # fmt: skip
    fig = viz.randomization_curves(result, threshold=threshold)
    path.parent.mkdir(parents=True, exist_ok=True)  # as viz.save_figure does
    write_file(path, lambda temporary: fig.savefig(temporary, format="png", dpi=100,
                                                   metadata={"Software": None}))  # fmt: skip
    summary = _summary(result, threshold)
    return {"model": str(model), "dataset": dataset, "split": split, "n": len(clips.video),
            "sigma": sigma, "seed": seed, "threshold": threshold, **summary,
            "figure": str(path)}  # fmt: skip
