"""The study's numbers that ``selrel report`` does not compute (docs/results/README.md).

Reads the sweep tables that ``run_study.sh`` writes (``selrel_jax.sweep.read_table``)
and writes ``analysis.md``: per-clip differences between models (spatial bias), the
share of static-object relevance that selection removes, motion reliance joined to
every method's spatial bias by clip, and the sparsity of raw against selective maps.
Every number is ``mean [low, high]`` with a 95% percentile-bootstrap interval over
clips (1000 resamples, seed 0), as in the reports; the output is deterministic.

    python docs/results/analysis.py /tmp/study_runs --out docs/results/analysis.md
"""

from __future__ import annotations

import argparse
import pathlib
from collections.abc import Sequence

import numpy as np

from selrel_jax.report import Estimate, bootstrap_correlation, bootstrap_mean
from selrel_jax.sweep import read_manifest, read_table, table_columns

RESAMPLES = 1000
SEED = 0
REFERENCE_SIGMA = 1.0
#: Sweep directory -> (model, split) as run_study.sh names them.
SWEEPS = {
    "distractors-motion": ("c3d_small_motion", "distractors"),
    "distractors-biased": ("c3d_small_biased", "distractors"),
    "distractors-distractors": ("c3d_small_distractors", "distractors"),
    "default-motion": ("c3d_small_motion", "default"),
    "default-biased": ("c3d_small_biased", "default"),
    "biased_still-biased_still": ("c3d_small_biased_still", "biased_still"),
}
#: Spatial-bias comparisons (claim 2): (higher expected, lower expected, same clips?).
BIAS_PAIRS = (
    ("default-biased", "default-motion", True),
    ("biased_still-biased_still", "default-motion", False),
    ("distractors-biased", "distractors-motion", True),
    ("distractors-biased", "distractors-distractors", True),
)
#: Reliance sweep -> the sweep of the same clips and model whose spatial bias it explains.
RELIANCE = {
    "reliance-default-motion": "default-motion",
    "reliance-default-biased": "default-biased",
    "reliance-biased_still-biased_still": "biased_still-biased_still",
}


class Table:
    """One sweep's columns, looked up by (method, sigma) and aligned by clip_id."""

    def __init__(self, directory: pathlib.Path):
        self.settings = read_manifest(directory)["settings"]
        self.columns = table_columns(read_table(directory))
        self.methods = list(self.settings["methods"])
        self.sigmas = [float(s) for s in self.settings["sigmas"]]

    def by_clip(self, column: str, method: str, sigma: float) -> dict[int, float]:
        c = self.columns
        rows = (c["method"] == method) & (c["sigma"] == sigma)
        return dict(
            zip(c["clip_id"][rows].tolist(), c[column][rows].astype(float).tolist(), strict=True)
        )

    def values(self, column: str, method: str, sigma: float) -> np.ndarray:
        return np.array(list(self.by_clip(column, method, sigma).values()))


def mean(values: np.ndarray) -> Estimate:
    return bootstrap_mean(values, resamples=RESAMPLES, seed=SEED)


def two_sample_difference(a: np.ndarray, b: np.ndarray) -> Estimate:
    """mean(a) - mean(b) of two independent samples, each resampled on its own."""
    a, b = a[np.isfinite(a)], b[np.isfinite(b)]
    rng = np.random.default_rng(SEED)
    picks_a = rng.integers(0, a.size, size=(RESAMPLES, a.size))
    picks_b = rng.integers(0, b.size, size=(RESAMPLES, b.size))
    stats = a[picks_a].mean(axis=1) - b[picks_b].mean(axis=1)
    low, high = np.percentile(stats, [2.5, 97.5])
    return Estimate(float(a.mean() - b.mean()), float(low), float(high), min(a.size, b.size))


def paired(first: dict[int, float], second: dict[int, float]) -> tuple[np.ndarray, np.ndarray]:
    """The values of the clips both have, in clip order."""
    clips = sorted(set(first) & set(second))
    return np.array([first[c] for c in clips]), np.array([second[c] for c in clips])


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows])


def sign(estimate: Estimate) -> str:
    """Whether the interval lies above 0, below 0, or holds it."""
    if estimate.n == 0 or not np.isfinite(estimate.value):
        return "n/a"
    return "> 0" if estimate.low > 0 else "< 0" if estimate.high < 0 else "~ 0"


def label(name: str) -> str:
    model, split = SWEEPS[name]
    return f"`{model}` on `{split}`"


def accuracy_section(tables: dict[str, Table]) -> str:
    rows = []
    for name, table in tables.items():
        c = table.columns
        first = (c["method"] == table.methods[0]) & (c["sigma"] == table.sigmas[0])
        correct = (c["predicted"][first] == c["label"][first]).astype(float)
        rows.append((label(name), int(first.sum()), mean(correct)))
    return "## Accuracy on the clips explained\n\n" + markdown_table(
        ("sweep", "clips", "accuracy (predicted == label)"), rows
    )


def motion_precision_section(tables: dict[str, Table]) -> str:
    """Claim 1: selective - raw motion precision at matched sparsity, per sigma."""
    rows, counts = [], {"> 0": 0, "< 0": 0, "~ 0": 0, "n/a": 0}
    for name, table in tables.items():
        for method in table.methods:
            cells = []
            for sigma in table.sigmas:
                raw, sel = paired(
                    table.by_clip("motion_precision_raw", method, sigma),
                    table.by_clip("motion_precision_selective", method, sigma),
                )
                difference = mean(sel - raw)
                counts[sign(difference)] += 1
                cells.append(f"{difference} {sign(difference)}")
            rows.append((label(name), f"`{method}`", *cells))
    sigmas = next(iter(tables.values())).sigmas
    summary = ", ".join(f"{k}: {v}" for k, v in counts.items() if k != "n/a" or v)
    return (
        "## Claim 1a: motion precision at matched sparsity, selective - raw\n\n"
        "Per clip, the share of selective relevance's kept voxels inside the exact motion "
        "mask minus that of the raw map's top k voxels (k the same), averaged over clips. "
        f"Cells by interval: {summary}.\n\n"
        + markdown_table(("sweep", "method", *(f"sigma {g:g}" for g in sigmas)), rows)
    )


def static_removed_section(tables: dict[str, Table]) -> str:
    """Claim 1: the share of the raw relevance on static objects that selection removes,
    against the share of all relevance it removes (the spatial bias)."""
    rows = []
    for name, table in tables.items():
        if not np.isfinite(table.columns["static_mass_raw"]).any():
            continue
        for method in table.methods:
            for sigma in table.sigmas:
                on_raw = table.values("static_mass_raw", method, sigma)
                on_sel = table.values("static_mass_selective", method, sigma)
                bias = table.values("spatial_bias", method, sigma)
                kept = np.divide(on_sel * (1 - bias), on_raw, where=on_raw > 0,
                                 out=np.full_like(on_raw, np.nan))  # fmt: skip
                removed = 1 - kept
                rows.append((label(name), f"`{method}`", f"{sigma:g}", mean(removed),
                             mean(bias), mean(removed - bias)))  # fmt: skip
    return (
        "## Claim 1b: relevance on static objects removed by selection\n\n"
        "`static removed` = 1 - sum|selective| / sum|raw| over the static objects' pixels "
        "(from `static_mass_*` and `spatial_bias`: static_mass_selective x (1 - "
        "spatial_bias) / static_mass_raw); `all removed` = the spatial bias. A positive "
        "difference means selection removes relevance on static objects more than "
        "relevance elsewhere.\n\n"
        + markdown_table(
            ("sweep", "method", "sigma", "static removed", "all removed", "static - all"), rows
        )
    )


def bias_difference_section(tables: dict[str, Table]) -> str:
    """Claim 2: spatial bias of the biased models minus that of the motion models."""
    rows = []
    for high, low, same_clips in BIAS_PAIRS:
        for method in tables[high].methods:
            cells = []
            for sigma in tables[high].sigmas:
                a = tables[high].by_clip("spatial_bias", method, sigma)
                b = tables[low].by_clip("spatial_bias", method, sigma)
                if same_clips:
                    x, y = paired(a, b)
                    difference = mean(x - y)
                else:
                    difference = two_sample_difference(
                        np.array(list(a.values())), np.array(list(b.values()))
                    )
                cells.append(f"{difference} {sign(difference)}")
            rows.append((f"{label(high)} - {label(low)}", f"`{method}`", *cells))
    sigmas = tables[BIAS_PAIRS[0][0]].sigmas
    return (
        "## Claim 2a: spatial bias, biased model - motion model\n\n"
        "Same split and clips: the mean of the per-clip difference; `biased_still` "
        "against `default` (different clips): the difference of the means, each sample "
        "resampled on its own.\n\n"
        + markdown_table(("comparison", "method", *(f"sigma {g:g}" for g in sigmas)), rows)
    )


def reliance_section(tables: dict[str, Table], reliance: dict[str, Table]) -> str:
    """Claim 2: does spatial bias track motion reliance (frame freezing's drop)?"""
    joined: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]] = {}
    means = []
    for name, own in RELIANCE.items():
        drop = reliance[name].by_clip("motion_reliance", "grad_cam", REFERENCE_SIGMA)
        same = paired(
            reliance[name].by_clip("predicted", "grad_cam", REFERENCE_SIGMA),
            tables[own].by_clip("predicted", tables[own].methods[0], REFERENCE_SIGMA),
        )
        if not np.array_equal(*same) or len(same[0]) != len(drop):
            raise SystemExit(f"{name} and {own} do not hold the same clips and predictions")
        means.append((label(own), mean(np.array(list(drop.values())))))
        for method in tables[own].methods:
            bias = tables[own].by_clip("spatial_bias", method, REFERENCE_SIGMA)
            joined.setdefault(method, {})[own] = paired(bias, drop)
    rows = []
    for method, per_model in joined.items():
        pooled = [np.concatenate(v) for v in zip(*per_model.values(), strict=True)]
        cells = [bootstrap_correlation(*pooled, resamples=RESAMPLES, seed=SEED)]
        cells += [bootstrap_correlation(x, y, resamples=RESAMPLES, seed=SEED)
                  for x, y in per_model.values()]  # fmt: skip
        rows.append((f"`{method}`", *cells))
    header = ("method", "pooled r", *(f"r, {label(n)}" for n in RELIANCE.values()))
    return (
        "## Claim 2b: spatial bias against motion reliance\n\n"
        "Motion reliance: the drop of the explained (predicted) class's probability when "
        "the clip is frozen to its middle frame (`selrel sweep --faithfulness`, reliance "
        "sweeps), joined by clip to each method's spatial bias at sigma "
        f"{REFERENCE_SIGMA:g}. A model that relies on motion should lose less of its "
        "relevance to selection, so the expected r is negative.\n\n"
        + markdown_table(("sweep", "motion reliance"), means)
        + "\n\nPearson r over clips (pooled: the three models' clips together):\n\n"
        + markdown_table(header, rows)
    )


def sparsity_section(tables: dict[str, Table]) -> str:
    """Claim 3: Gini index (higher: sparser) and entropy (lower: sparser), selective - raw."""
    rows, counts = [], {}
    for name, table in tables.items():
        for method in table.methods:
            for score in ("gini", "entropy"):
                cells = []
                for sigma in table.sigmas:
                    raw, sel = paired(
                        table.by_clip(f"{score}_raw", method, sigma),
                        table.by_clip(f"{score}_selective", method, sigma),
                    )
                    difference = mean(sel - raw)
                    key = (score, sign(difference))
                    counts[key] = counts.get(key, 0) + 1
                    cells.append(f"{difference} {sign(difference)}")
                rows.append((label(name), f"`{method}`", score, *cells))
    sigmas = next(iter(tables.values())).sigmas
    summary = "; ".join(f"{s} {k}: {v}" for (s, k), v in sorted(counts.items()))
    return (
        "## Claim 3: sparsity, selective - raw\n\n"
        "Gini index (higher is sparser) and entropy in nats (lower is sparser) of the "
        f"selective map minus the raw map's, per clip. Cells by interval: {summary}.\n\n"
        + markdown_table(("sweep", "method", "score", *(f"sigma {g:g}" for g in sigmas)), rows)
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("runs", type=pathlib.Path, help="the sweeps' parent directory")
    parser.add_argument("--out", type=pathlib.Path, default=pathlib.Path("analysis.md"))
    args = parser.parse_args()
    tables = {name: Table(args.runs / name) for name in SWEEPS}
    reliance = {name: Table(args.runs / name) for name in RELIANCE}
    parts = [
        "# Study analysis\n\nComputed by `docs/results/analysis.py` from the sweeps of "
        "`run_study.sh`; `mean [low, high]`: mean over clips and 95% percentile-bootstrap "
        f"interval ({RESAMPLES} resamples, seed {SEED}); `> 0` / `< 0`: the interval "
        "excludes 0, `~ 0`: it holds 0.",
        accuracy_section(tables),
        motion_precision_section(tables),
        static_removed_section(tables),
        bias_difference_section(tables),
        reliance_section(tables, reliance),
        sparsity_section(tables),
    ]
    args.out.write_text("\n\n".join(parts) + "\n")
    print(args.out)


if __name__ == "__main__":
    main()
