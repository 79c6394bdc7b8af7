"""Reports of sweeps: numbers equal to the table's, seeded bootstrap intervals, every
section rendered, deterministic bytes."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from selrel_jax import report
from selrel_jax.errors import DataError, OptionError
from selrel_jax.sweep import read_table, run_sweep, table_columns

CLIP = (8, 32, 32)
SIGMAS = [1.0, 2.0]


@pytest.fixture(scope="module")
def sweeps(tmp_path_factory, save_tiny_model):
    """Two small sweeps of two tiny models on clips with static objects, with faithfulness."""
    root = tmp_path_factory.mktemp("report")
    directories = []
    for name, seed in (("motion_net", 3), ("still_net", 4)):
        model_dir = save_tiny_model(root / "models" / name, seed)
        run_sweep(root / name, model=model_dir, dataset="synthetic_motion/tiny_distractors",
                  data_seed=2, limit=4, batch_size=4, methods=["gradient_x_input"],
                  sigmas=SIGMAS, faithfulness=True)  # fmt: skip
        directories.append(root / name)
    return directories


def test_bootstrap_mean_is_seeded_and_drops_nan():
    values = np.array([0.1, 0.4, np.nan, 0.3, 0.9, 0.2])
    e = report.bootstrap_mean(values, resamples=500, seed=3)
    assert e.n == 5 and e.value == pytest.approx(np.nanmean(values))
    finite = values[np.isfinite(values)]
    picks = np.random.default_rng(3).integers(0, 5, size=(500, 5))
    assert (e.low, e.high) == tuple(np.percentile(finite[picks].mean(1), [2.5, 97.5]))
    assert report.bootstrap_mean(values, resamples=500, seed=3) == e
    assert report.bootstrap_mean(values, resamples=500, seed=4) != e
    assert report.bootstrap_mean([2.0, 2.0, 2.0]) == (2.0, 2.0, 2.0, 3)
    empty = report.bootstrap_mean([np.nan])
    assert empty.n == 0 and np.isnan(empty.value) and str(empty) == "n/a"
    with pytest.raises(OptionError, match="resamples must be a positive int"):
        report.bootstrap_mean(values, resamples=0)


def test_bootstrap_correlation():
    x = np.arange(10.0)
    assert report.bootstrap_correlation(x, 3 * x + 1)[:3] == pytest.approx((1.0, 1.0, 1.0))
    assert report.bootstrap_correlation(x, -x).value == pytest.approx(-1.0)
    y = np.random.default_rng(0).normal(size=10)
    r = report.bootstrap_correlation(x, y, seed=1)
    assert r.value == pytest.approx(np.corrcoef(x, y)[0, 1]) and r.low <= r.value <= r.high
    assert report.bootstrap_correlation([1.0, np.nan], [2.0, 3.0]).n == 1


def test_summaries_are_the_tables_means(sweeps):
    loaded = report.load_sweeps(sweeps)
    assert [s.name for s in loaded] == ["motion_net", "still_net"]
    table = table_columns(read_table(sweeps[0]))
    records = report.summarize(loaded, ["spatial_bias", "motion_precision_selective"])
    assert len(records) == 2 * 2 * 2  # models x sigmas x metrics
    for r in records:
        if r["model"] == "motion_net":
            rows = (table["method"] == r["method"]) & (table["sigma"] == r["sigma"])
            assert r["mean"] == pytest.approx(np.mean(table[r["metric"]][rows], dtype=np.float64))
            assert r["n"] == 4 and r["low"] <= r["mean"] <= r["high"]
    paired = report.paired_summary(loaded, "static_mass_raw", "static_mass_selective")
    rows = (table["sigma"] == 2.0) & np.isfinite(table["static_mass_raw"])
    difference = table["static_mass_selective"][rows] - table["static_mass_raw"][rows]
    first = next(p for p in paired if p["model"] == "motion_net" and p["sigma"] == 2.0)
    assert first["difference"].value == pytest.approx(np.mean(difference, dtype=np.float64))
    [pooled] = [c for c in report.correlations(loaded, 1.0) if c["model"] == "all"]
    assert pooled["r"].n == 8


def _cell(markdown: str, section: str, model: str, column: int) -> str:
    """A cell of the first table after ``section``'s heading, in ``model``'s row."""
    text = markdown.split(section, 1)[1]
    for line in text.splitlines():
        if line.startswith(f"| {model} |"):
            return line.strip("|").split("|")[column].strip()
    raise AssertionError(f"no row of {model} after {section}")


def test_the_report_renders_every_section_with_the_tables_numbers(sweeps, tmp_path):
    out = report.write_report(sweeps, tmp_path / "r" / "report.md")
    markdown = out.read_text()
    for heading in ("## Scores against sigma", "## Motion precision at matched sparsity",
                    "## Share of relevance in the motion mask",
                    "## Motion precision at a fixed threshold",
                    "## Motion precision at matched sparsity, with a tolerance",
                    "## Relevance on static objects", "## Spatial bias per model",
                    "## Motion reliance and spatial bias"):  # fmt: skip
        assert heading in markdown
    pngs = re.findall(r"\]\((report-[a-z_]+\.png)\)", markdown)
    assert len(pngs) >= 10 and all((tmp_path / "r" / p).is_file() for p in pngs)
    table = table_columns(read_table(sweeps[1]))
    rows = table["sigma"] == 2.0
    mean = np.mean(table["spatial_bias"][rows], dtype=np.float64)
    estimate = report.bootstrap_mean(table["spatial_bias"][rows])
    assert _cell(markdown, "### spatial_bias", "still_net", 3) == str(estimate)
    assert str(estimate).startswith(f"{mean:.3f} [")
    reliance = np.mean(table["motion_reliance"][rows], dtype=np.float64)
    assert _cell(markdown, "Faithfulness at sigma", "still_net", 2).startswith(f"{reliance:.3f} [")
    quartiles = np.percentile(table["spatial_bias"][table["sigma"] == 1.0], [25, 50, 75])
    assert _cell(markdown, "## Spatial bias per model", "still_net", 3) == f"{quartiles[1]:.3f}"


def test_the_report_is_deterministic(sweeps, tmp_path):
    a = report.write_report(sweeps, tmp_path / "a" / "report.md")
    b = report.write_report(sweeps, tmp_path / "b" / "report.md", resamples=1000, seed=0)
    files = sorted(p.name for p in a.parent.iterdir())
    assert files == sorted(p.name for p in b.parent.iterdir())
    for name in files:
        assert (a.parent / name).read_bytes() == (b.parent / name).read_bytes(), name
    c = report.write_report(sweeps, tmp_path / "c" / "report.md", seed=1)
    assert c.read_text() != a.read_text()


def test_figures_have_one_panel_per_sweep_or_method(sweeps):
    loaded = report.load_sweeps(sweeps)
    assert len(report.plot_metric_vs_sigma(loaded, "spatial_bias").axes) == 2
    raw, selective = "motion_precision_raw", "motion_precision_selective"
    fig = report.plot_raw_vs_selective(loaded, raw, selective, ylabel="precision")
    assert len(fig.axes) == 2
    legend = fig.axes[0].get_legend()
    texts, handles = legend.get_texts(), legend.legend_handles
    styles = {t.get_text(): h.get_linestyle() for t, h in zip(texts, handles, strict=True)}
    assert styles["raw"] != styles["selective"]  # a reader can tell the lines apart
    assert len(report.plot_spatial_bias_distributions(loaded).axes) == 1
    fig = report.plot_reliance_vs_bias(loaded, 2.0)
    assert len(fig.axes) == 1 and "r = " in fig.axes[0].get_title()


def test_bad_arguments(sweeps, tmp_path):
    with pytest.raises(OptionError, match=r"must be a markdown file ending in \.md"):
        report.write_report(sweeps, tmp_path / "report.txt")
    with pytest.raises(OptionError, match=r"sigma 0\.5 is in none of the sweeps"):
        report.write_report(sweeps, tmp_path / "report.md", sigma=0.5)
    with pytest.raises(DataError, match="is not a sweep directory"):
        report.write_report([tmp_path], tmp_path / "report.md")
    with pytest.raises(OptionError, match="at least one sweep"):
        report.write_report([], tmp_path / "report.md")
    assert not (tmp_path / "report.md").exists()


# ---------------------------------------------------------------------------- outputs, sizes


def test_a_rerun_replaces_its_own_report_and_refuses_anything_else(sweeps, tmp_path):
    out = report.write_report(sweeps, tmp_path / "report.md", resamples=50)
    assert report.write_report(sweeps, out, resamples=50) == out  # its own: replaced
    figure = next(tmp_path.glob("report-*.png"))
    figure.write_bytes(b"my own picture")
    with pytest.raises(OptionError, match=rf"--out: {re.escape(str(figure))} exists and it is "
                       r"not a figure selrel wrote for report\.md"):  # fmt: skip
        report.write_report(sweeps, out, resamples=50)
    assert figure.read_bytes() == b"my own picture"
    notes = tmp_path / "notes.md"
    notes.write_text("# my notes\n")
    with pytest.raises(OptionError, match=r"notes\.md exists and it is not a report selrel"):
        report.write_report(sweeps, notes, resamples=50)
    assert notes.read_text() == "# my notes\n" and not list(tmp_path.glob("notes-*.png"))


def test_an_incomplete_sweep_is_named_in_the_report(sweeps, tmp_path):
    import json
    import shutil

    copy = tmp_path / "still_net"
    shutil.copytree(sweeps[1], copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["complete"], manifest["clips"] = False, 8  # as a killed sweep of 8 clips
    (copy / "manifest.json").write_text(json.dumps(manifest))
    markdown = report.write_report([sweeps[0], copy], tmp_path / "r.md", resamples=50).read_text()
    assert f"**Incomplete sweep:** `{copy}` (still_net) is not finished: its table has rows " \
        "of 4 of 8 clips" in markdown  # fmt: skip
    assert markdown.count("Incomplete sweep") == 1


def test_a_flow_mask_sweep_is_named_in_the_report(sweeps, tmp_path):
    import json
    import shutil

    copy = tmp_path / "still_net"
    shutil.copytree(sweeps[1], copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["settings"]["motion_mask"] = {"flow": {"min_flow": 0.1, "farneback": {}}}
    (copy / "manifest.json").write_text(json.dumps(manifest))
    markdown = report.write_report([copy], tmp_path / "r.md", resamples=50).read_text()
    assert f"**Flow motion masks:** `{copy}` (still_net) scores its motion measures against " \
        "each clip's optical-flow mask (Farneback, `min_flow` 0.1)" in markdown  # fmt: skip
    assert markdown.count("Flow motion masks") == 1


def test_resamples_are_drawn_in_bounded_memory_and_an_absurd_count_is_refused(monkeypatch):
    values = np.random.default_rng(0).random(7)
    whole = report.bootstrap_mean(values, resamples=300, seed=2)
    pairs = report.bootstrap_correlation(values, values**2, resamples=300, seed=2)
    monkeypatch.setattr(report, "_DRAWN_AT_ONCE", 20)  # blocks of 2 resamples
    assert report.bootstrap_mean(values, resamples=300, seed=2) == whole
    assert report.bootstrap_correlation(values, values**2, resamples=300, seed=2) == pairs
    with pytest.raises(OptionError, match=r"^resamples must be at most 1,000,000 .*got 300,000"):
        report.bootstrap_mean(values, resamples=300_000_000)


def test_comparisons_and_the_randomisation_check_in_the_report(sweeps, tmp_path):
    from tests.test_report_stats import _sanity_record

    sanity = tmp_path / "sanity.json"
    sanity.write_text(json.dumps(_sanity_record()) + "\n")
    out = report.write_report(sweeps, tmp_path / "r.md", resamples=50, sanity=[sanity])
    markdown = out.read_text()
    m = int(re.search(r"every comparison this report draws a conclusion from: m = (\d+)",
                      markdown, re.IGNORECASE).group(1))  # fmt: skip
    # The two tiny models have no training record (no seed): each is its own condition.
    assert m == markdown.count("| spatial_bias: between models |") + markdown.count(
        ": selective - raw |"
    )
    assert "Holm" in markdown and "Benjamini-Hochberg" in markdown
    assert "**Flagged: `baseline.frame_difference`.**" in markdown
    assert (tmp_path / "r-sanity-1.png").is_file() and "](r-sanity-1.png)" in markdown
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(_sanity_record(insensitive=[])))
    with pytest.raises(DataError, match="do not match its scores"):
        report.write_report(sweeps, tmp_path / "s.md", resamples=50, sanity=[bad])
    assert not (tmp_path / "s.md").exists()
