"""Reports of dataset sweeps: summaries with bootstrap intervals, figures, markdown.

``selrel report DIR [DIR ...] --out report.md`` (:func:`write_report`) reads one or
several sweeps (typically one per model, see :mod:`selrel_jax.sweep`) and writes a
markdown report with PNG figures beside it: each score against sigma per method;
raw against selective relevance on the share of relevance in the motion mask, motion
precision at a fixed threshold and at matched sparsity (exact, and with the sweep's
mask tolerance) and relevance on static objects; the spatial-bias distribution of each model; and,
when the sweeps have faithfulness columns, motion reliance against spatial bias with
their correlation.

Every number comes with a 95% percentile-bootstrap interval over clips, drawn from
``np.random.default_rng(seed)``: the same sweeps and seed give the same report, and
:func:`write_report`'s PNGs are byte-identical (:func:`selrel_jax.viz.save_figure`).

Examples:
    Two small sweeps, one per shipped model, then their report:

    >>> from selrel_jax import report
    >>> from selrel_jax.sweep import run_sweep
    >>> for name in ("motion", "biased"):
    ...     _ = run_sweep(f"sweeps/{name}", model=f"c3d_small_{name}", dataset="synthetic_motion",
    ...                   data_seed=7, limit=2, methods=["gradient"], sigmas=[1, 2])
    >>> sweeps = report.load_sweeps(["sweeps/motion", "sweeps/biased"])
    >>> row = report.summarize(sweeps, ["spatial_bias"])[0]
    >>> row["model"], row["method"], row["sigma"]
    ('c3d_small_motion', 'gradient', 1.0)
    >>> fig = report.plot_metric_vs_sigma(sweeps, "spatial_bias")
    >>> report.write_report(["sweeps/motion", "sweeps/biased"], "report/report.md")
    PosixPath('report/report.md')
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import warnings
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from selrel_jax._checks import integer, positive_int, real
from selrel_jax._jobs import file_sha256, remove_stale_temporaries, write_text
from selrel_jax.errors import DataError, OptionError
from selrel_jax.sweep import read_manifest, read_table, table_columns

__all__ = [
    "CONFIDENCE",
    "RESAMPLES",
    "SIGMA_METRICS",
    "Estimate",
    "Sweep",
    "bootstrap_correlation",
    "bootstrap_mean",
    "correlations",
    "load_sweeps",
    "paired_summary",
    "plot_metric_vs_sigma",
    "plot_raw_vs_selective",
    "plot_reliance_vs_bias",
    "plot_spatial_bias_distributions",
    "summarize",
    "write_report",
]

#: Scores drawn against sigma (each one a sweep has finite values of).
SIGMA_METRICS = (
    "spatial_bias",
    "kept_voxels",
    "gini_selective",
    "entropy_selective",
    "motion_precision_selective",
    "static_mass_selective",
    "box_mass_selective",
)
#: Bootstrap resamples per interval (``--resamples``).
RESAMPLES = 1000
#: Coverage of the percentile-bootstrap intervals.
CONFIDENCE = 0.95
#: The most resamples an interval takes (each resample is a pass over the clips).
MAX_RESAMPLES = 1_000_000
#: Values drawn at a time by the bootstrap: its memory stays bounded whatever the size.
_DRAWN_AT_ONCE = 1 << 22


class Estimate(NamedTuple):
    """A statistic of ``n`` finite values with its bootstrap interval [low, high]."""

    value: float
    low: float
    high: float
    n: int

    def __str__(self) -> str:
        if self.n == 0 or not np.isfinite(self.value):
            return "n/a"
        return f"{_fixed(self.value)} [{_fixed(self.low)}, {_fixed(self.high)}]"


def _fixed(value: float) -> str:
    """Three decimals, without a minus sign on a value that rounds to zero."""
    return f"{round(float(value), 3) + 0.0:.3f}"


@dataclasses.dataclass(frozen=True)
class Sweep:
    """One sweep's table as NumPy ``columns``, its ``settings`` (the manifest's) and
    the ``name`` it goes by in a report (its model's, unique among the sweeps)."""

    name: str
    directory: pathlib.Path
    settings: dict[str, Any]
    columns: dict[str, np.ndarray]
    #: Whether every shard is written; else the table holds ``clips`` of ``total_clips``.
    complete: bool = True
    total_clips: int | None = None

    @property
    def methods(self) -> list[str]:
        return list(self.settings["methods"])

    @property
    def clips(self) -> int:
        """How many clips the table has rows of."""
        return len(np.unique(self.columns["clip_id"]))

    @property
    def sigmas(self) -> list[float]:
        return [float(s) for s in self.settings["sigmas"]]

    def has(self, column: str) -> bool:
        """Whether the table has ``column`` with at least one finite value."""
        values = self.columns.get(column)
        return values is not None and bool(np.isfinite(values).any())

    def values(self, column: str, method: str, sigma: float) -> np.ndarray:
        """``column`` of the rows of ``method`` and ``sigma``, one per clip, in clip order."""
        rows = (self.columns["method"] == method) & (self.columns["sigma"] == sigma)
        return np.asarray(self.columns[column][rows], np.float64)


def _no_rows(directory: pathlib.Path, manifest: Mapping[str, Any]) -> str:
    """Why a sweep has no rows: not finished yet, or finished with every clip failed."""
    failed = manifest.get("failed") or []
    if not manifest.get("complete"):
        return f"sweep {directory} has no rows yet (it is not finished: rerun the sweep)"
    first = failed[0] if failed else {}
    example = f"; e.g. {first.get('clip_id')}: {first.get('reason')}" if first else ""
    return (
        f"sweep {directory} finished: every one of its {manifest.get('clips')} clips failed "
        f'(see "failed" in {directory / "manifest.json"}{example})'
    )


def load_sweeps(directories: Iterable[str | os.PathLike]) -> list[Sweep]:
    """Each directory's sweep; names are the models' (a checkpoint path's last part),
    made unique with the directory's name where two sweeps share a model."""
    directories = [pathlib.Path(d) for d in directories]
    if not directories:
        raise OptionError("a report needs at least one sweep directory")
    sweeps = []
    for directory in directories:
        manifest = read_manifest(directory)
        columns = table_columns(read_table(directory))
        if not len(columns.get("clip_id", ())):
            raise DataError(_no_rows(directory, manifest))
        sweeps.append((directory, manifest, columns))
    names = [pathlib.PurePath(str(m["settings"]["model"])).name for _, m, _ in sweeps]
    if len(set(names)) < len(names):
        names = [f"{n} ({d.name})" for n, (d, _, _) in zip(names, sweeps, strict=True)]
    if len(set(names)) < len(names):
        names = [f"{n} #{i + 1}" for i, n in enumerate(names)]
    return [Sweep(n, d, m["settings"], c, m["complete"], m["clips"])
            for n, (d, m, c) in zip(names, sweeps, strict=True)]  # fmt: skip


def _interval(stats: np.ndarray, confidence: float) -> tuple[float, float]:
    stats = stats[np.isfinite(stats)]
    if not stats.size:
        return float("nan"), float("nan")
    tail = 100 * (1 - confidence) / 2
    low, high = np.percentile(stats, [tail, 100 - tail])
    return float(low), float(high)


def _checked_bootstrap(resamples: int, seed: int, confidence: float) -> None:
    positive_int("resamples", resamples)
    if resamples > MAX_RESAMPLES:
        raise OptionError(
            f"resamples must be at most {MAX_RESAMPLES:,} (the intervals' percentiles are "
            f"steady long before); got {resamples:,}"
        )
    integer("seed", seed, minimum=0)
    if not 0 < real("confidence", confidence) < 1:
        raise OptionError(f"confidence must lie in (0, 1); got {confidence!r}")


def bootstrap_mean(
    values: Any, *, resamples: int = RESAMPLES, seed: int = 0, confidence: float = CONFIDENCE
) -> Estimate:
    """The mean of the finite ``values`` and its percentile-bootstrap interval:
    ``resamples`` means of ``n`` values drawn with replacement by
    ``np.random.default_rng(seed)``. NaN and ``n = 0`` without finite values."""
    _checked_bootstrap(resamples, seed, confidence)
    x = np.asarray(values, np.float64).ravel()
    x = x[np.isfinite(x)]
    if not x.size:
        return Estimate(float("nan"), float("nan"), float("nan"), 0)
    means = _resampled(x.size, resamples, seed, lambda picks: x[picks].mean(axis=1))
    return Estimate(float(x.mean()), *_interval(means, confidence), int(x.size))


def _resampled(n: int, resamples: int, seed: int, statistic) -> np.ndarray:
    """``statistic(picks)`` of ``resamples`` draws of ``n`` indices with replacement from
    ``np.random.default_rng(seed)``, drawn a block of rows at a time: the same numbers
    as one ``(resamples, n)`` draw, in bounded memory."""
    rng = np.random.default_rng(seed)
    rows = max(1, _DRAWN_AT_ONCE // n)
    return np.concatenate([
        statistic(rng.integers(0, n, size=(min(rows, resamples - first), n)))
        for first in range(0, resamples, rows)
    ])  # fmt: skip


def _pearson(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Pearson r along the last axis; NaN where either side is constant."""
    dx = x - x.mean(axis=-1, keepdims=True)
    dy = y - y.mean(axis=-1, keepdims=True)
    denominator = np.sqrt((dx * dx).sum(-1) * (dy * dy).sum(-1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denominator > 0, (dx * dy).sum(-1) / denominator, np.nan)


def bootstrap_correlation(
    x: Any, y: Any, *, resamples: int = RESAMPLES, seed: int = 0, confidence: float = CONFIDENCE
) -> Estimate:
    """Pearson's r of the pairs where both values are finite, with a percentile-bootstrap
    interval over pairs (seeded as :func:`bootstrap_mean`)."""
    _checked_bootstrap(resamples, seed, confidence)
    x, y = np.asarray(x, np.float64).ravel(), np.asarray(y, np.float64).ravel()
    if x.shape != y.shape:
        raise OptionError(f"x and y must pair up; got {x.size} and {y.size} values")
    keep = np.isfinite(x) & np.isfinite(y)
    x, y = x[keep], y[keep]
    if x.size < 2:
        return Estimate(float("nan"), float("nan"), float("nan"), int(x.size))
    rs = _resampled(x.size, resamples, seed, lambda picks: _pearson(x[picks], y[picks]))
    return Estimate(float(_pearson(x, y)), *_interval(rs, confidence), int(x.size))


def _groups(sweeps: Sequence[Sweep]) -> Iterable[tuple[Sweep, str, float]]:
    for sweep in sweeps:
        for method in sweep.methods:
            for sigma in sweep.sigmas:
                yield sweep, method, sigma


def summarize(
    sweeps: Sequence[Sweep], metrics: Sequence[str] = SIGMA_METRICS, *, resamples: int = RESAMPLES,
    seed: int = 0,
) -> list[dict[str, Any]]:  # fmt: skip
    """One record per (model, method, sigma, metric) a sweep has: ``{"model", "method",
    "sigma", "metric", "mean", "low", "high", "n"}`` (the mean over clips and its
    bootstrap interval)."""
    out = []
    for sweep, method, sigma in _groups(sweeps):
        for metric in metrics:
            if sweep.has(metric):
                e = bootstrap_mean(sweep.values(metric, method, sigma), resamples=resamples,
                                   seed=seed)  # fmt: skip
                out.append({"model": sweep.name, "method": method, "sigma": sigma,
                            "metric": metric, **e._asdict(), "mean": e.value})  # fmt: skip
    for record in out:
        del record["value"]
    return out


def paired_summary(
    sweeps: Sequence[Sweep], raw: str, selective: str, *, resamples: int = RESAMPLES,
    seed: int = 0,
) -> list[dict[str, Any]]:  # fmt: skip
    """Per (model, method, sigma): the means of ``raw`` and ``selective`` (e.g.
    ``motion_precision_raw`` and ``motion_precision_selective``) and of their per-clip
    difference ``selective - raw``, each an :class:`Estimate`."""
    out = []
    for sweep, method, sigma in _groups(sweeps):
        if not (sweep.has(raw) and sweep.has(selective)):
            continue
        a, b = sweep.values(raw, method, sigma), sweep.values(selective, method, sigma)
        estimates = {
            name: bootstrap_mean(v, resamples=resamples, seed=seed)
            for name, v in (("raw", a), ("selective", b), ("difference", b - a))
        }
        out.append({"model": sweep.name, "method": method, "sigma": sigma, **estimates})
    return out


def correlations(
    sweeps: Sequence[Sweep], sigma: float, x: str = "spatial_bias", y: str = "motion_reliance",
    *, resamples: int = RESAMPLES, seed: int = 0,
) -> list[dict[str, Any]]:  # fmt: skip
    """Pearson r of ``x`` and ``y`` over clips at ``sigma``, per method: pooled over every
    sweep that has both (``model`` ``"all"``) and per sweep."""
    out = []
    methods = sorted({m for s in sweeps for m in s.methods})
    for method in methods:
        have = [s for s in sweeps if method in s.methods and s.has(x) and s.has(y)
                and sigma in s.sigmas]  # fmt: skip
        parts = [("all", have)] if len(have) > 1 else []
        for model, group in parts + [(s.name, [s]) for s in have]:
            xs = np.concatenate([s.values(x, method, sigma) for s in group])
            ys = np.concatenate([s.values(y, method, sigma) for s in group])
            r = bootstrap_correlation(xs, ys, resamples=resamples, seed=seed)
            out.append({"model": model, "method": method, "sigma": sigma, "r": r})
    return out


# ---------------------------------------------------------------------------- figures


def _figure(panels: int, *, width: float = 4.0, height: float = 3.2) -> tuple[Figure, list]:
    fig = Figure(figsize=(width * panels + 0.4, height), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, panels, squeeze=False)[0]
    return fig, list(axes)


def _color(index: int) -> Any:
    import matplotlib

    return matplotlib.colormaps["tab10"](index % 10)


def _error_line(ax, sigmas, estimates, *, label, color, linestyle="-") -> None:
    means = np.array([e.value for e in estimates])
    below = means - np.array([e.low for e in estimates])
    above = np.array([e.high for e in estimates]) - means
    ax.errorbar(sigmas, means, yerr=np.nan_to_num(np.stack([below, above])), marker="o",
                capsize=3, label=label, color=color, linestyle=linestyle)  # fmt: skip


def plot_metric_vs_sigma(
    sweeps: Sequence[Sweep], metric: str, *, resamples: int = RESAMPLES, seed: int = 0
) -> Figure:
    """``metric``'s mean over clips (bootstrap 95% bars) against sigma: one panel per
    sweep, one line per method."""
    fig, axes = _figure(len(sweeps))
    for ax, sweep in zip(axes, sweeps, strict=True):
        for i, method in enumerate(sweep.methods):
            estimates = [bootstrap_mean(sweep.values(metric, method, s), resamples=resamples,
                                        seed=seed) for s in sweep.sigmas]  # fmt: skip
            _error_line(ax, sweep.sigmas, estimates, label=method, color=_color(i))
        ax.set(title=sweep.name, xlabel="sigma", ylabel=metric)
        ax.legend(fontsize=8)
    return fig


def plot_raw_vs_selective(
    sweeps: Sequence[Sweep], raw: str, selective: str, *, ylabel: str,
    resamples: int = RESAMPLES, seed: int = 0,
) -> Figure:  # fmt: skip
    """Means of ``raw`` (dashed) and ``selective`` (solid) against sigma with bootstrap
    bars: one panel per sweep, one colour per method."""
    fig, axes = _figure(len(sweeps))
    for ax, sweep in zip(axes, sweeps, strict=True):
        for i, method in enumerate(sweep.methods):
            for column, style in ((raw, "--"), (selective, "-")):
                estimates = [bootstrap_mean(sweep.values(column, method, s),
                                            resamples=resamples, seed=seed)
                             for s in sweep.sigmas]  # fmt: skip
                _error_line(ax, sweep.sigmas, estimates, label=None, color=_color(i),
                            linestyle=style)  # fmt: skip
        ax.set(title=sweep.name, xlabel="sigma", ylabel=ylabel)
        _style_legend(ax, sweep.methods, {"raw": "--", "selective": "-"})
    return fig


def _style_legend(ax, methods: Sequence[str], styles: dict[str, str]) -> None:
    """One legend below the panel, off the data: a colour per method, then a grey
    line per style, long enough that dashed and solid read apart."""
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color=_color(i), label=m) for i, m in enumerate(methods)]
    handles += [Line2D([], [], color="0.4", linestyle=st, label=k) for k, st in styles.items()]
    ax.legend(handles=handles, fontsize=7, handlelength=3, loc="upper center",
              bbox_to_anchor=(0.5, -0.2), ncol=2, frameon=False)  # fmt: skip


def plot_spatial_bias_distributions(sweeps: Sequence[Sweep]) -> Figure:
    """Each model's spatial bias over clips: one panel per method, a box per (sigma,
    model), models side by side in their colours."""
    methods = sorted({m for s in sweeps for m in s.methods})
    sigmas = sorted({g for s in sweeps for g in s.sigmas})
    fig, axes = _figure(len(methods), width=max(4.0, 1.2 * len(sigmas) * len(sweeps) ** 0.5))
    width = 0.8 / len(sweeps)
    for ax, method in zip(axes, methods, strict=True):
        for i, sweep in enumerate(sweeps):
            picked = [(j, sweep.values("spatial_bias", method, g)) for j, g in enumerate(sigmas)
                      if method in sweep.methods and g in sweep.sigmas]  # fmt: skip
            if not picked:
                continue
            positions = [j - 0.4 + width * (i + 0.5) for j, _ in picked]
            data = [v[np.isfinite(v)] for _, v in picked]
            boxes = ax.boxplot(data, positions=positions, widths=width * 0.9, patch_artist=True,
                               manage_ticks=False, medianprops={"color": "black"})  # fmt: skip
            for box in boxes["boxes"]:
                box.set(facecolor=_color(i), alpha=0.6)
            ax.plot([], [], color=_color(i), linewidth=6, alpha=0.6, label=sweep.name)
        ax.set_xticks(range(len(sigmas)), [f"{g:g}" for g in sigmas])
        ax.set(title=method, xlabel="sigma", ylabel="spatial_bias", xlim=(-0.6, len(sigmas) - 0.4))
        ax.legend(fontsize=8)
    return fig


def plot_reliance_vs_bias(
    sweeps: Sequence[Sweep], sigma: float, *, resamples: int = RESAMPLES, seed: int = 0
) -> Figure:
    """Motion reliance (frame freezing's drop of the target probability) against spatial
    bias at ``sigma``, one point per clip and a colour per model; one panel per method,
    titled with the pooled Pearson r and its bootstrap interval."""
    records = correlations(sweeps, sigma, resamples=resamples, seed=seed)
    methods = sorted({r["method"] for r in records})
    fig, axes = _figure(max(1, len(methods)))
    for ax, method in zip(axes, methods, strict=False):
        for i, sweep in enumerate(sweeps):
            if method in sweep.methods and sweep.has("motion_reliance"):
                ax.scatter(sweep.values("spatial_bias", method, sigma),
                           sweep.values("motion_reliance", method, sigma), s=10,
                           color=_color(i), alpha=0.7, label=sweep.name)  # fmt: skip
        pooled = next(r["r"] for r in records if r["method"] == method)
        ax.set(title=f"{method}, sigma {sigma:g}: r = {pooled}", xlabel="spatial_bias",
               ylabel="motion_reliance")  # fmt: skip
        ax.title.set_fontsize(8)
        ax.legend(fontsize=8)
    return fig


# ---------------------------------------------------------------------------- markdown


def _table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _overview(sweeps: Sequence[Sweep], sigma: float, resamples: int, seed: int) -> str:
    rows = [
        (s.name, f"`{s.settings['dataset']}`", s.settings["split"], s.clips,
         s.settings["target"], ", ".join(f"`{m}`" for m in s.methods),
         ", ".join(f"{g:g}" for g in s.sigmas), "yes" if s.has("motion_reliance") else "no",
         f"`{s.directory}`")
        for s in sweeps
    ]  # fmt: skip
    header = ("model", "dataset", "split", "clips", "target", "methods", "sigmas",
              "faithfulness", "sweep")  # fmt: skip
    return (
        "# Sweep report\n\n"
        f"Numbers are means over clips with percentile-bootstrap {CONFIDENCE:.0%} intervals "
        f"`mean [low, high]` ({resamples} resamples of the clips, seed {seed}); figures show "
        f"the same intervals as bars. Where one sigma is needed it is {sigma:g}.\n\n"
        + _table(header, rows)
        + "".join(_incomplete_note(s) + _flow_mask_note(s) for s in sweeps)
    )


def _flow_mask_note(sweep: Sweep) -> str:
    # A flow mask is ~5x wider than the motion on the synthetic data: its precisions
    # are not comparable with an exact mask's, and the report's texts say "exact".
    flow = (sweep.settings.get("motion_mask") or {}).get("flow")
    if flow is None:
        return ""
    return (
        f"\n\n**Flow motion masks:** `{sweep.directory}` ({sweep.name}) scores its motion "
        "measures against each clip's optical-flow mask (Farneback, `min_flow` "
        f'{flow["min_flow"]:g}), not an exact motion mask; read "exact motion mask" below '
        "as that mask. On synthetic clips it holds ~96% of the motion in a mask ~5 times "
        "as wide (docs/metrics.md), so its precisions compare only with other flow-mask ones."
    )


def _incomplete_note(sweep: Sweep) -> str:
    if sweep.complete:
        return ""
    return (
        f"\n\n**Incomplete sweep:** `{sweep.directory}` ({sweep.name}) is not finished: its "
        f"table has rows of {sweep.clips} of {sweep.total_clips} clips, and every number of "
        "it here covers only those. Rerun its `selrel sweep` command to finish it."
    )


def _estimate(record: dict[str, Any]) -> Estimate:
    return Estimate(record["mean"], record["low"], record["high"], record["n"])


def _metric_sections(sweeps, stem: str, resamples: int, seed: int) -> tuple[str, dict]:
    figures, parts = {}, ["## Scores against sigma"]
    sigmas = sorted({g for s in sweeps for g in s.sigmas})
    for metric in SIGMA_METRICS:
        have = [s for s in sweeps if s.has(metric)]
        if not have:
            continue
        name = f"{stem}-{metric}.png"
        figures[name] = plot_metric_vs_sigma(have, metric, resamples=resamples, seed=seed)
        records = summarize(have, [metric], resamples=resamples, seed=seed)
        found = {(r["model"], r["method"], r["sigma"]): _estimate(r) for r in records}
        rows = [(s.name, f"`{m}`", *(found.get((s.name, m, g), "") for g in sigmas))
                for s in have for m in s.methods]  # fmt: skip
        header = ("model", "method", *(f"sigma {g:g}" for g in sigmas))
        parts.append(f"### {metric}\n\n![{metric}]({name})\n\n" + _table(header, rows))
    return "\n\n".join(parts), figures


_PAIRED = {
    "motion_mass": (
        "Share of relevance in the motion mask",
        "The paper's reading: share of |relevance| inside the exact motion mask, raw and "
        "selective map (clips without motion are left out). Difference: selective - raw "
        "per clip.",
    ),
    "motion_precision_at_threshold": (
        "Motion precision at a fixed threshold",
        "Share of the voxels above 10% of the map's maximum that lie inside the exact "
        "motion mask, raw and selective map (each map its own voxels: not at equal "
        "sparsity). Difference: selective - raw per clip.",
    ),
    "motion_precision": (
        "Motion precision at matched sparsity",
        "Share of the selected voxels inside the exact motion mask. Selective: the voxels "
        "selective relevance keeps; raw: the raw map's top k voxels with k the number "
        "selective relevance keeps (same sparsity). Difference: selective - raw per clip.",
    ),
    "motion_precision_tolerant": (
        "Motion precision at matched sparsity, with a tolerance",
        "As above, against the motion mask widened by the sweep's mask tolerance "
        "(pixels, in each frame: `mask_tolerance` in its settings).",
    ),
    "static_mass": (
        "Relevance on static objects",
        "Share of relevance mass on the static objects (synthetic_motion's distractors), "
        "raw and selective; clips without static objects are left out.",
    ),
}


def _paired_section(sweeps, key: str, stem: str, resamples: int, seed: int) -> tuple[str, dict]:
    raw, selective = f"{key}_raw", f"{key}_selective"
    have = [s for s in sweeps if s.has(raw) and s.has(selective)]
    if not have:
        return "", {}
    title, text = _PAIRED[key]
    name = f"{stem}-{key}.png"
    figure = plot_raw_vs_selective(have, raw, selective, ylabel=key, resamples=resamples,
                                   seed=seed)  # fmt: skip
    records = paired_summary(have, raw, selective, resamples=resamples, seed=seed)
    rows = [(r["model"], f"`{r['method']}`", f"{r['sigma']:g}", r["raw"], r["selective"],
             r["difference"], r["selective"].n) for r in records]  # fmt: skip
    table = _table(("model", "method", "sigma", "raw", "selective", "selective - raw", "n"), rows)
    return f"## {title}\n\n{text}\n\n![{key}]({name})\n\n{table}", {name: figure}


def _bias_section(sweeps, stem: str, sigma: float) -> tuple[str, dict]:
    name = f"{stem}-spatial_bias_distribution.png"
    rows = []
    for s in sweeps:
        for m in s.methods:
            if sigma in s.sigmas:
                v = s.values("spatial_bias", m, sigma)
                v = v[np.isfinite(v)]
                q = np.percentile(v, [25, 50, 75]) if v.size else [np.nan] * 3
                rows.append((s.name, f"`{m}`", *(_fixed(x) for x in q), v.size))
    table = _table(("model", "method", "25%", "median", "75%", "n"), rows)
    return (
        "## Spatial bias per model\n\nThe distribution over clips of the share of relevance "
        f"that selection removes; quartiles at sigma {sigma:g}.\n\n![spatial bias]({name})\n\n"
        + table
    ), {name: plot_spatial_bias_distributions(sweeps)}


def _reliance_section(sweeps, stem: str, sigma: float, resamples: int, seed: int):
    have = [s for s in sweeps if s.has("motion_reliance") and sigma in s.sigmas]
    if not have:
        return "", {}
    name = f"{stem}-reliance_vs_bias.png"
    records = correlations(have, sigma, resamples=resamples, seed=seed)
    rows = [(r["model"], f"`{r['method']}`", r["r"], r["r"].n) for r in records]
    columns = ("motion_reliance", "deletion_auc_raw", "deletion_auc_selective",
               "insertion_auc_raw", "insertion_auc_selective")  # fmt: skip
    means = [(s.name, f"`{m}`", *(bootstrap_mean(s.values(c, m, sigma), resamples=resamples,
                                                  seed=seed) for c in columns))
             for s in have for m in s.methods]  # fmt: skip
    return (
        "## Motion reliance and spatial bias\n\nMotion reliance: the drop of the target "
        "probability when the clip is frozen to its middle frame. Pearson r over clips "
        f"against spatial bias at sigma {sigma:g} (`all`: the sweeps pooled).\n\n"
        f"![motion reliance against spatial bias]({name})\n\n"
        + _table(("model", "method", "r", "n"), rows)
        + f"\n\nFaithfulness at sigma {sigma:g} (AUCs of the target probability; deletion: "
        "lower is better, insertion: higher is better):\n\n"
        + _table(("model", "method", *columns), means)
    ), {name: plot_reliance_vs_bias(have, sigma, resamples=resamples, seed=seed)}


def _p(value: float) -> str:
    return f"{value:.2g}" if value >= 1e-4 else "<1e-4"


def _replicates_section(groups) -> str:
    if all(len(g.sweeps) == 1 for g in groups):
        return ""
    rows = [(g.name, len(g.sweeps), ", ".join(f"{s.name} (seed {seed}, {s.clips} clips)"
                                               for s, seed in zip(g.sweeps, g.seeds, strict=True)))
            for g in groups]  # fmt: skip
    return (
        "## Replicates\n\nSweeps of models that differ only by their training seed (same "
        "sweep settings and data, same training record but the seed: see "
        "`selrel_jax.report_stats`) are one condition. The comparisons below resample such "
        "a condition hierarchically: its models with replacement, then the clips within "
        "each drawn model; an estimate is the mean over models of each model's mean over "
        "clips, and says how many models and clips it rests on.\n\n"
        + _table(("condition", "models", "sweeps"), rows)
    )


def _comparisons_section(groups, resamples: int, seed: int) -> str:
    from selrel_jax.report_stats import LEVEL, comparisons

    rows = comparisons(groups, resamples=resamples, seed=seed)
    if not rows:
        return ""
    holding = sum(r["adjusted_holm"] < LEVEL for r in rows)
    table = _table(
        ("comparison", "of", "method", "sigma", "estimate [95%]", "models", "clips", "p",
         "Holm", "BH", f"Holm < {LEVEL:g}"),
        [(r["kind"], r["what"], f"`{r['method']}`", f"{r['sigma']:g}",
          Estimate(*r["estimate"][:3], r["clips"]), r["models"], r["clips"], _p(r["p"]),
          _p(r["adjusted_holm"]), _p(r["adjusted_bh"]),
          "yes" if r["adjusted_holm"] < LEVEL else "no") for r in rows],
    )  # fmt: skip
    return (
        "## Comparisons and their p-values\n\n"
        f"Every comparison this report draws a conclusion from: m = {len(rows)}. "
        "Selective - raw per clip of each paired measure (per condition, method and "
        "sigma), and the spatial bias of each later condition minus each earlier one "
        "(the two resampled independently). Estimates and 95% intervals: hierarchical "
        f'bootstrap ({resamples} resamples, seed {seed}). p: two-sided, of "the mean '
        "is 0\", from the bootstrap's standard error (normal approximation); Holm "
        f"(family-wise) and Benjamini-Hochberg (false discovery rate) adjust it over all "
        f"m = {len(rows)}. {holding} of {len(rows)} hold at {LEVEL:g} after Holm.\n\n" + table
    )


_SANITY_HEADER = ("method", "Spearman raw", "SSIM raw", "Spearman selective",
                  "SSIM selective", "flag")  # fmt: skip


def _sanity_section(results, stem: str) -> tuple[str, dict]:
    from selrel_jax import metrics, viz

    parts, figures = ["## Randomisation check (cascading, head first)"], {}
    for i, result in enumerate(results):
        methods = list(result["methods"])
        keys = ("spearman", "ssim", "spearman_selective", "ssim_selective")
        scores = [np.stack([result["methods"][m][k] for m in methods])[..., None] for k in keys]
        name = f"{stem}-sanity-{i + 1}.png"
        with warnings.catch_warnings():  # a layer's null score (NaN) is drawn as a gap
            warnings.filterwarnings("ignore", "Mean of empty slice", RuntimeWarning)
            figures[name] = viz.randomization_curves(
                metrics.Randomization(tuple(result["layers"]), tuple(methods), *scores),
                threshold=result["threshold"],
            )
        rows = [(f"`{m}`", *(_fixed(result["methods"][m][k][-1]) for k in keys),
                 "**flagged**" if m in result["insensitive"] else "no")
                for m in methods]  # fmt: skip
        flagged = ", ".join(f"`{m}`" for m in result["insensitive"])
        parts.append(
            f"### {result['model']} on `{result['dataset']}` ({result['n']} clips, sigma "
            f"{result['sigma']})\n\nMean over clips of the Spearman rank correlation and "
            "SSIM of each map with the trained model's, as the model's layers are "
            "randomised one after another from the head; the last column is with every "
            f"layer random. A method is flagged when its last raw or selective Spearman is "
            f"above {result['threshold']:g}: its maps do not depend on what the model "
            "learned. "
            + (f"**Flagged: {flagged}.**" if flagged else "No method is flagged.")
            + f"\n\n![randomisation curves]({name})\n\n"
            + _table(_SANITY_HEADER, rows)
        )
    return "\n\n".join(parts), figures


def _reference_sigma(sweeps: Sequence[Sweep], sigma: float | None) -> float:
    common = sorted(set.intersection(*(set(s.sigmas) for s in sweeps)))
    if sigma is None:
        if not common:
            raise OptionError("the sweeps share no sigma; pass one (--sigma) that some sweep has")
        return common[(len(common) - 1) // 2]
    sigma = real("sigma", sigma, minimum=0.0)
    if sigma not in {g for s in sweeps for g in s.sigmas}:
        raise OptionError(f"sigma {sigma:g} is in none of the sweeps; common: {common}")
    return sigma


def write_report(
    directories: Iterable[str | os.PathLike],
    out: str | os.PathLike,
    *,
    sigma: float | None = None,
    resamples: int = RESAMPLES,
    seed: int = 0,
    sanity: Sequence[str | os.PathLike] = (),
) -> pathlib.Path:
    """Write a markdown report of the sweeps in ``directories`` to ``out`` (a ``.md``
    file) and its PNGs beside it (``<stem>-<figure>.png``). ``sigma``: the one used by
    the distribution and correlation sections (default: the middle sigma every sweep
    has). Returns ``out``. Deterministic: the same sweeps, ``resamples`` and ``seed``
    give the same bytes. Sweeps of replicate models (:func:`selrel_jax.report_stats.
    replicate_groups`) are summarised together in the comparisons section, which gives
    every comparison's p-value and its Holm and Benjamini-Hochberg adjustments.
    ``sanity``: files each holding a ``selrel sanity`` JSON line, drawn as the per-layer
    curves with the flagged methods named (:func:`selrel_jax.report_stats.read_sanity`
    verifies them first). An existing ``out`` or figure is replaced only if an earlier
    report wrote it (its last line records each figure's sha256); anything else is an
    OptionError naming it, before anything is written."""
    from selrel_jax.models.checkpoint import writable_directory
    from selrel_jax.viz import save_figure

    out = pathlib.Path(out)
    if out.suffix.lower() != ".md" or out.is_dir():
        raise OptionError(f"--out must be a markdown file ending in .md; got {str(out)!r}")
    writable_directory(out.parent, "--out's folder", OptionError)
    _checked_bootstrap(resamples, seed, CONFIDENCE)
    from selrel_jax.report_stats import read_sanity, replicate_groups

    sanity_results = [read_sanity(path) for path in sanity]
    sweeps = load_sweeps(directories)
    sigma = _reference_sigma(sweeps, sigma)
    groups = replicate_groups(sweeps)
    stem = out.stem
    parts = [_overview(sweeps, sigma, resamples, seed)]
    figures: dict[str, Figure] = {}
    for text, figs in (
        _metric_sections(sweeps, stem, resamples, seed),
        *(_paired_section(sweeps, key, stem, resamples, seed) for key in _PAIRED),
        _bias_section(sweeps, stem, sigma),
        _reliance_section(sweeps, stem, sigma, resamples, seed),
        (_replicates_section(groups), {}),
        (_comparisons_section(groups, resamples, seed), {}),
        _sanity_section(sanity_results, stem) if sanity_results else ("", {}),
    ):
        parts += [text] if text else []
        figures |= figs
    _check_replaceable(out, list(figures))
    for name, figure in figures.items():
        save_figure(figure, out.parent / name)
    remove_stale_temporaries(out)
    written = {name: file_sha256(out.parent / name) for name in sorted(figures)}
    trailer = _TRAILER + json.dumps({"figures": written}, sort_keys=True) + " -->"
    return write_text(out, "\n\n".join(parts) + "\n\n" + trailer + "\n")


#: The last line of a report: what wrote it and the sha256 of each figure it wrote, so
#: a rerun replaces only a report and figures it can prove it wrote.
_TRAILER = "<!-- written by selrel report: "


def _written_figures(report: pathlib.Path) -> dict[str, str] | None:
    """The figures (name -> sha256) an existing report says it wrote; None if it is no
    report this library wrote."""
    try:
        last = report.read_text(errors="replace").rstrip("\n").rsplit("\n", 1)[-1]
        record = json.loads(last.removeprefix(_TRAILER).removesuffix(" -->"))
    except (OSError, ValueError):
        return None
    ok = last.startswith(_TRAILER) and isinstance(record, dict)
    return record.get("figures") if ok and isinstance(record.get("figures"), dict) else None


def _check_replaceable(out: pathlib.Path, figures: list[str]) -> None:
    """OptionError naming the first of ``out`` and its ``figures`` that is there but
    was not written by an earlier report into ``out`` (or was changed since)."""
    written = _written_figures(out) if os.path.lexists(out) else {}
    if written is None:
        _refuse_replacing(out, "it is not a report selrel wrote")
    for name in figures:
        path = out.parent / name
        if os.path.lexists(path) and (
            name not in written or not path.is_file() or file_sha256(path) != written[name]
        ):
            _refuse_replacing(path, f"it is not a figure selrel wrote for {out.name}, or changed")


def _refuse_replacing(path: pathlib.Path, why: str) -> None:
    raise OptionError(
        f"--out: {path} exists and {why}; selrel replaces only what it wrote: move it away "
        "or choose another --out"
    )
