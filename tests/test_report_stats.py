"""The report's study statistics: replicate models recognised from their training
records, comparisons with adjusted p-values, the randomisation check read back.
Fake sweeps (tables in memory, info.json files only): no model runs."""

from __future__ import annotations

import json
import pathlib
import re

import numpy as np
import pytest

from selrel_jax import report, report_stats, stats
from selrel_jax.errors import DataError
from selrel_jax.models.info import ModelInfo

RECIPE = {"epochs": 2, "batch_size": 8, "learning_rate": 0.002}
SETTINGS = {"dataset": "synthetic_motion", "split": "test", "data_seed": 1,
            "target": "predicted", "temporal_padding": "edge", "methods": ["a", "b"],
            "sigmas": [1.0], "limit": 4}  # fmt: skip


def _model(root: pathlib.Path, name: str, seed: int | None, dataset="synthetic_motion", **config):
    directory = root / name
    directory.mkdir(parents=True)
    train_config = {**RECIPE, **config} | ({} if seed is None else {"seed": seed})
    extra = {"dataset": dataset, "train_config": train_config, "command": f"train {name}",
             "val_accuracy": 0.5 + (seed or 0) / 10}  # fmt: skip
    info = ModelInfo(arch="c3d_small", num_classes=2, crop_size=(8, 8), extra=extra)
    (directory / "info.json").write_text(json.dumps(info.to_dict()))
    return directory


def _sweep(name, model, values, *, methods=("a", "b"), **settings):
    """A sweep of len(values) clips: measure ``m_raw`` 0, ``m_selective`` and
    ``spatial_bias`` the values, for every method at sigma 1."""
    values = np.asarray(values, np.float64)
    n = len(values)
    columns = {
        "clip_id": np.tile(np.arange(n), len(methods)),
        "method": np.repeat(np.array(methods, object), n),
        "sigma": np.ones(n * len(methods)),
        "m_raw": np.zeros(n * len(methods)),
        "m_selective": np.tile(values, len(methods)),
        "spatial_bias": np.tile(values, len(methods)),
    }
    merged = {**SETTINGS, "model": str(model), "methods": list(methods), **settings}
    return report.Sweep(name, pathlib.Path(name), merged, columns)


def test_replicates_are_models_differing_only_by_seed(tmp_path):
    seeds = [_model(tmp_path, f"motion_s{k}", k) for k in (2, 0, 1)]
    other_recipe = _model(tmp_path, "motion_lr", 3, learning_rate=0.1)
    other_data = _model(tmp_path, "biased", 4, dataset="synthetic_motion/biased")
    no_record = _model(tmp_path, "no_seed", None)
    sweeps = [_sweep(p.name, p, [0.1, 0.2]) for p in [*seeds, other_recipe, other_data, no_record]]
    # Same seeds-0 model on another split: not a replicate of the others.
    sweeps.append(_sweep("other_split", seeds[1], [0.3], dataset="synthetic_motion/distractors"))
    groups = report_stats.replicate_groups(sweeps)
    assert [g.name for g in groups] == ["motion_s0 (3 seeds)", "motion_lr", "biased", "no_seed",
                                        "other_split"]  # fmt: skip
    assert groups[0].seeds == [0, 1, 2] and [s.name for s in groups[0].sweeps] == [
        "motion_s0", "motion_s1", "motion_s2"
    ]  # fmt: skip
    assert groups[3].seeds == [None]


def test_a_key_only_one_record_has_and_row_settings_are_not_compared(tmp_path):
    old = _model(tmp_path, "old", 0)
    new = _model(tmp_path, "new", 1, freeze_backbone=False)
    same_seed = _model(tmp_path, "again", 0)
    sweeps = [_sweep("old", old, [0.1]), _sweep("new", new, [0.2], methods=("a",), limit=1),
              _sweep("again", same_seed, [0.3])]  # fmt: skip
    groups = report_stats.replicate_groups(sweeps)
    assert [g.seeds for g in groups] == [[0, 1], [0]]  # a second seed-0 model is no replicate


def test_comparisons_are_hierarchical_with_adjusted_p_values(tmp_path):
    models = [_model(tmp_path, f"m{k}", k) for k in range(3)]
    rng = np.random.default_rng(0)
    per_model = [0.3 + rng.normal(0, 0.05, 12) for _ in models]
    groups = report_stats.replicate_groups(
        [_sweep(m.name, m, v) for m, v in zip(models, per_model, strict=True)]
        + [_sweep("lone", _model(tmp_path, "lone", 0, epochs=9), rng.normal(0, 0.05, 12))]
    )
    rows = report_stats.comparisons(groups, measures=["m"], resamples=300, seed=5)
    # Per group and method one selective - raw, per method one between-groups difference.
    assert len(rows) == 2 * 2 + 2
    first = rows[0]
    expected = stats.hierarchical_bootstrap(per_model, resamples=300, seed=5)
    assert (first["models"], first["clips"]) == (3, 36)
    assert first["estimate"].value == pytest.approx(expected.value)
    assert first["estimate"].draws == pytest.approx(expected.draws)
    p = np.array([r["p"] for r in rows])
    assert [r["adjusted_holm"] for r in rows] == pytest.approx(stats.holm(p))
    assert [r["adjusted_bh"] for r in rows] == pytest.approx(stats.benjamini_hochberg(p))
    between = [r for r in rows if r["kind"] == "spatial_bias: between models"]
    assert between[0]["what"] == "lone - m0 (3 seeds)"
    assert between[0]["estimate"].value == pytest.approx(
        np.mean(rows[2]["estimate"].value) - expected.value
    )


def _sanity_record(**change):
    record = {"model": "m", "dataset": "d", "split": "test", "n": 2, "sigma": 1.0, "seed": 0,
              "threshold": 0.5, "layers": ["head", "conv1"],
              "methods": {"gradient": {"spearman": [0.4, 0.1], "ssim": [0.5, None],
                                       "spearman_selective": [0.3, 0.0],
                                       "ssim_selective": [0.2, 0.1], "insensitive": False},
                          "baseline.frame_difference": {k: [1.0, 1.0] for k in
                                                        ("spearman", "ssim", "spearman_selective",
                                                         "ssim_selective")}},
              "insensitive": ["baseline.frame_difference"], "figure": "x.png"}  # fmt: skip
    return {**record, **change}


def test_read_sanity_verifies_the_file(tmp_path):
    path = tmp_path / "sanity.json"
    path.write_text(json.dumps(_sanity_record()) + "\n")
    result = report_stats.read_sanity(path)
    assert result["insensitive"] == ["baseline.frame_difference"]
    assert np.isnan(result["methods"]["gradient"]["ssim"][1])
    assert result["layers"] == ["head", "conv1"] and result["threshold"] == 0.5


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("not json", "it is not JSON"),
        ("[1, 2]", "it is not one JSON object"),
        (json.dumps(_sanity_record(layers=[])), "no list of layer names"),
        (json.dumps(_sanity_record(threshold="high")), "no numeric threshold"),
        (json.dumps(_sanity_record(insensitive=[])), "do not match its scores"),
        (json.dumps(_sanity_record(methods={"g": {"spearman": [0.1]}})), "no spearman list of 2"),
        (json.dumps(_sanity_record(methods={"g": {k: [0.1, 2.0] for k in (
            "spearman", "ssim", "spearman_selective", "ssim_selective")}})), "outside \\[-1, 1\\]"),
    ],
)  # fmt: skip
def test_read_sanity_refuses_a_wrong_file(tmp_path, content, message):
    path = tmp_path / "sanity.json"
    path.write_text(content)
    with pytest.raises(DataError, match=f"--sanity {re.escape(str(path))}: .*{message}"):
        report_stats.read_sanity(path)
    with pytest.raises(DataError, match="cannot read it"):
        report_stats.read_sanity(tmp_path / "missing.json")
