"""The study's numbers that ``selrel report`` does not compute (docs/results/README.md).

Reads the sweep tables that ``run_study.sh`` writes (``selrel_jax.sweep.read_table``)
and writes ``analysis.md``: every claim-1 measure raw against selective per method
(baselines included), per-clip differences between models (spatial bias), the share of
static-object relevance that selection removes, motion reliance joined to every
method's spatial bias by clip, the sparsity of raw against selective maps, the seed
replicates (hierarchical bootstrap: models, then clips) and the paper's zero temporal
padding against the edge default. Every number is ``mean [low, high]`` with a 95%
percentile-bootstrap interval over clips (1000 resamples, seed 0), as in the reports;
the output is deterministic.

    python docs/results/analysis.py /tmp/study_runs --out docs/results/analysis.md
"""

from __future__ import annotations

import argparse
import pathlib
from collections.abc import Sequence

import numpy as np

from selrel_jax import stats
from selrel_jax.report import Estimate, bootstrap_correlation, bootstrap_mean
from selrel_jax.sweep import read_manifest, read_table, table_columns

RESAMPLES = 1000
SEED = 0
REFERENCE_SIGMA = 1.0
#: Sweep directory -> (model, split) as run_study.sh names them.
SWEEPS = {
    "distractors-motion": ("c3d_small_motion", "distractors"),
    "distractors-distractors": ("c3d_small_distractors", "distractors"),
    "default-motion": ("c3d_small_motion", "default"),
    "default-biased": ("c3d_small_biased", "default"),
    "biased_still-biased_still": ("c3d_small_biased_still", "biased_still"),
}
#: Seed-0 sweep -> its condition's seed replicates (``<sweep>-seed<k>``, where present).
REPLICATED = ("default-motion", "default-biased", "distractors-distractors",
              "biased_still-biased_still")  # fmt: skip
SEEDS = (1, 2)
#: The paper's zero padding: ``zero-<sweep>`` beside the edge-padded ``<sweep>``.
ZERO_PADDED = ("default-motion", "default-biased", "biased_still-biased_still")
#: Claim 1's measures, each a ``<key>_raw`` / ``<key>_selective`` pair of columns.
MEASURES = {
    "motion_mass": "share of |relevance| in the motion mask (the paper's reading)",
    "motion_precision_at_threshold": "motion precision at a fixed threshold (10% of max)",
    "motion_precision": "motion precision at matched sparsity",
    "motion_precision_tolerant": "motion precision at matched sparsity, mask widened 1 px",
    "motion_precision_at_threshold_tolerant": "fixed threshold, mask widened 1 px",
    "static_mass": "share of |relevance| on static objects (lower is better)",
}
#: Spatial-bias comparisons (claim 2): (higher expected, lower expected, same clips?).
BIAS_PAIRS = (
    ("default-biased", "default-motion", True),
    ("biased_still-biased_still", "default-motion", False),
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
        if name not in reliance:
            continue
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
    header = ("method", "pooled r", *(f"r, {label(RELIANCE[n])}" for n in reliance))
    return (
        "## Claim 2b: spatial bias against motion reliance\n\n"
        "Motion reliance: the drop of the explained (predicted) class's probability when "
        "the clip is frozen to its middle frame (`selrel sweep --faithfulness`, reliance "
        "sweeps), joined by clip to each method's spatial bias at sigma "
        f"{REFERENCE_SIGMA:g}. A model that relies on motion should lose less of its "
        "relevance to selection, so the expected r is negative.\n\n"
        + markdown_table(("sweep", "motion reliance"), means)
        + "\n\nPearson r over clips (pooled: the models' clips together):\n\n"
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


def measures_section(tables: dict[str, Table], sigma: float = REFERENCE_SIGMA) -> str:
    """Claim 1, every measure: raw -> selective and the per-clip difference, per method
    (the baselines included), at ``sigma``."""
    parts = []
    for key, what in MEASURES.items():
        have = {n: t for n, t in tables.items() if np.isfinite(t.columns[f"{key}_raw"]).any()}
        rows = []
        for name, table in have.items():
            for method in table.methods:
                raw, sel = paired(table.by_clip(f"{key}_raw", method, sigma),
                                  table.by_clip(f"{key}_selective", method, sigma))  # fmt: skip
                difference = mean(sel - raw)
                rows.append((label(name), f"`{method}`", mean(raw), mean(sel),
                             f"{difference} {sign(difference)}"))  # fmt: skip
        parts.append(f"### `{key}`: {what}\n\n" + markdown_table(
            ("sweep", "method", "raw", "selective", "selective - raw"), rows))  # fmt: skip
    return (
        f"## Claim 1, every measure, sigma {sigma:g}\n\n"
        "Means over clips of each measure for the raw and the selective map, and the "
        "mean per-clip difference. The `baseline.*` rows are model-free maps run through "
        "the same selection: `random` (uniform noise), `frame_difference` (|x_t - x_t-1| "
        "summed over colour) and `input_sobel` (the temporal kernel on the input).\n\n"
        + "\n\n".join(parts)
    )


def _replicates(runs: pathlib.Path, name: str) -> list[Table]:
    """The seed-0 sweep and whichever seed replicates exist."""
    found = [runs / name] + [runs / f"{name}-seed{k}" for k in SEEDS]
    return [Table(d) for d in found if _finished(d)]


def _finished(directory: pathlib.Path) -> bool:
    """Whether ``directory`` holds a finished sweep (a seed may still be running)."""
    return (directory / "manifest.json").is_file() and read_manifest(directory)["complete"]


def _hierarchical(per_model: list[np.ndarray], seed: int = SEED) -> str:
    b = stats.hierarchical_bootstrap(per_model, resamples=RESAMPLES, seed=seed)
    return (
        f"{Estimate(b.value, b.low, b.high, b.clips)} ({b.models} x {b.clips // max(1, b.models)})"
    )


def _per_model(tables: list[Table], key: str, method: str, sigma: float) -> list[np.ndarray]:
    """Per model ``key``'s per-clip values, or selective - raw for a claim-1 measure."""
    if key == "spatial_bias":
        return [t.values(key, method, sigma) for t in tables]
    return [t.values(f"{key}_selective", method, sigma) - t.values(f"{key}_raw", method, sigma)
            for t in tables]  # fmt: skip


def _correct(table: Table) -> np.ndarray:
    """1 where the model predicted the clip's label, per clip."""
    c = table.columns
    first = (c["method"] == table.methods[0]) & (c["sigma"] == table.sigmas[0])
    return (c["predicted"][first] == c["label"][first]).astype(float)


def _bias_differences(bias: dict[tuple[str, str], list[np.ndarray]]) -> list[tuple]:
    rows = []
    for high, low in (("default-biased", "default-motion"),
                      ("biased_still-biased_still", "default-motion")):  # fmt: skip
        for method in [m for (n, m) in bias if n == high and (low, m) in bias]:
            a, b = (stats.hierarchical_bootstrap(bias[(n, method)], resamples=RESAMPLES, seed=i)
                    for i, n in enumerate((high, low)))  # fmt: skip
            d = stats.bootstrap_difference(a, b)
            e = Estimate(d.value, d.low, d.high, d.clips)
            rows.append((f"{label(high)} - {label(low)}", f"`{method}`",
                         f"{a.models} and {b.models}", f"{e} {sign(e)}"))  # fmt: skip
    return rows


def seeds_section(runs: pathlib.Path, sigma: float = REFERENCE_SIGMA) -> str:
    """The seed replicates: claim 1's differences and claim 2's spatial bias per model
    (each seed's mean) and over the models (hierarchical bootstrap)."""
    rows, bias = [], {}
    for name in REPLICATED:
        tables = _replicates(runs, name)
        methods = [m for m in tables[0].methods if all(m in t.methods for t in tables)]
        correct = [_correct(t) for t in tables]
        rows.append((label(name), "-", "accuracy", ", ".join(f"{v.mean():.3f}" for v in correct),
                     _hierarchical(correct)))  # fmt: skip
        for method in methods:
            for key in ("motion_mass", "motion_precision", "static_mass", "spatial_bias"):
                per_model = _per_model(tables, key, method, sigma)
                if not any(np.isfinite(v).any() for v in per_model):
                    continue  # no static objects on this split
                bias |= {(name, method): per_model} if key == "spatial_bias" else {}
                seeds = ", ".join(f"{np.nanmean(v):.3f}" for v in per_model)
                what = key if key == "spatial_bias" else f"{key}: selective - raw"
                rows.append((label(name), f"`{method}`", what, seeds, _hierarchical(per_model)))
    return (
        f"## Seeds: the claims over training seeds, sigma {sigma:g}\n\n"
        "Per condition the seed-0 model (shipped) and the seed-1/2 models trained by "
        "`run_study.sh`, on the same clips. `per seed`: each model's mean over clips "
        "(seed 0 first); `over models`: the mean of the models' means with a hierarchical "
        f"bootstrap interval (models with replacement, then clips; {RESAMPLES} resamples), "
        "and `(models x clips per model)`.\n\n"
        + markdown_table(("condition", "method", "measure", "per seed", "over models"), rows)
        + "\n\nSpatial bias between conditions over their models (each condition "
        "resampled on its own):\n\n"
        + markdown_table(("comparison", "method", "models", "difference"), _bias_differences(bias))
    )


def padding_section(runs: pathlib.Path, tables: dict[str, Table]) -> str:
    """The paper's zero temporal padding against the edge default: per clip zero - edge."""
    rows = []
    columns = ("spatial_bias", "motion_mass_selective", "motion_precision_selective",
               "kept_voxels")  # fmt: skip
    for name in ZERO_PADDED:
        directory = runs / f"zero-{name}"
        if not _finished(directory):
            continue
        zero = Table(directory)
        for method in zero.methods:
            for sigma in zero.sigmas:
                cells = []
                for column in columns:
                    z, e = paired(zero.by_clip(column, method, sigma),
                                  tables[name].by_clip(column, method, sigma))  # fmt: skip
                    difference = mean(z - e)
                    cells.append(f"{difference} {sign(difference)}")
                rows.append((label(name), f"`{method}`", f"{sigma:g}", *cells))
    return (
        "## Temporal padding: the paper's zero padding - the edge default\n\n"
        "Same model, clips and raw maps; only the selection's padding of the first and "
        "last frames differs (zero padding sees a jump from black at both ends, edge "
        "padding none). Per clip, zero - edge.\n\n"
        + markdown_table(("sweep", "method", "sigma", *(f"{c}" for c in columns)), rows)
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("runs", type=pathlib.Path, help="the sweeps' parent directory")
    parser.add_argument("--out", type=pathlib.Path, default=pathlib.Path("analysis.md"))
    args = parser.parse_args()
    tables = {name: Table(args.runs / name) for name in SWEEPS}
    reliance = {n: Table(args.runs / n) for n in RELIANCE if _finished(args.runs / n)}
    parts = [
        "# Study analysis\n\nComputed by `docs/results/analysis.py` from the sweeps of "
        "`run_study.sh`; `mean [low, high]`: mean over clips and 95% percentile-bootstrap "
        f"interval ({RESAMPLES} resamples, seed {SEED}); `> 0` / `< 0`: the interval "
        "excludes 0, `~ 0`: it holds 0.",
        accuracy_section(tables),
        measures_section(tables),
        motion_precision_section(tables),
        static_removed_section(tables),
        bias_difference_section(tables),
        reliance_section(tables, reliance),
        sparsity_section(tables),
        seeds_section(args.runs),
        padding_section(args.runs, tables),
    ]
    args.out.write_text("\n\n".join(parts) + "\n")
    print(args.out)


if __name__ == "__main__":
    main()
