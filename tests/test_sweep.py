"""Dataset sweeps: every column against the metrics on one clip, 1 vs 4 devices, a killed
and resumed sweep, refused reruns, and a folder dataset with a corrupt video."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import jax
import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import selrel_jax as sr
from selrel_jax import data, metrics, models
from selrel_jax.data import synthetic_motion
from selrel_jax.errors import OptionError
from selrel_jax.sweep import (
    FAITHFULNESS_COLUMNS,
    SCORE_COLUMNS,
    _compute,
    read_manifest,
    read_table,
    run_sweep,
    table_columns,
)

CLIP = (8, 32, 32)
CONFIG = "tiny_distractors"
SETTINGS = dict(
    dataset=f"synthetic_motion/{CONFIG}", data_seed=1, limit=3, batch_size=2,
    methods=["lrp.epsilon_plus_flat"], sigmas=[0.5, 1.0, 2.0],
)  # fmt: skip
SHARDS = 2  # 3 clips in batches of 2: the last one padded
# Faithfulness runs the model 11 times per curve: a smaller sweep checks its columns (and a
# gradient method's).
FAITHFUL = {**SETTINGS, "methods": ["gradient_x_input"], "sigmas": [2.0],
            "faithfulness": True}  # fmt: skip


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """An untrained tiny c3d_small (its relevance is arbitrary but deterministic)."""
    model = models.create("c3d_small", 6, width=0.25, clip_size=CLIP, stem_stride=(1, 2, 2))
    init = jax.jit(lambda key: model.init(key, np.zeros((1, *CLIP, 3), np.float32)))
    info = models.ModelInfo.for_arch(
        "c3d_small", 6, class_names=synthetic_motion.CLASS_NAMES, width=0.25,
        clip_length=CLIP[0], crop_size=CLIP[1:], mean=(0.4, 0.5, 0.6), std=(0.2, 0.3, 0.25),
        extra={"model_kwargs": {"stem_stride": [1, 2, 2]}},
    )  # fmt: skip
    return models.save(tmp_path_factory.mktemp("model") / "tiny", info, init(jax.random.key(1)))


@pytest.fixture(scope="module")
def reference(model_dir, tmp_path_factory):
    """An uninterrupted sweep on this process's one device: (directory, summary)."""
    out = tmp_path_factory.mktemp("sweeps") / "reference"
    summary = run_sweep(out, model=model_dir, **SETTINGS)
    return out, summary


def _run_in_subprocess(out, model_dir, *, devices=1, kill_after_first_shard=False):
    hook = "lambda k, r: os.kill(os.getpid(), signal.SIGKILL)" if kill_after_first_shard else None
    code = (
        "import json, os, signal, sys\n"
        "from selrel_jax.sweep import run_sweep\n"
        f"run_sweep(sys.argv[1], model=sys.argv[2], on_shard={hook}, **json.loads(sys.argv[3]))\n"
    )
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
    return subprocess.run(
        [sys.executable, "-c", code, str(out), str(model_dir), json.dumps(SETTINGS)],
        capture_output=True, text=True, timeout=300, env=env,
    )  # fmt: skip


def assert_same_table(a, b, atol=0.0):
    a, b = table_columns(read_table(a)), table_columns(read_table(b))
    assert list(a) == list(b)
    for name in a:
        if a[name].dtype.kind == "f":
            np.testing.assert_allclose(a[name], b[name], rtol=0, atol=atol, err_msg=name)
        else:
            assert a[name].tolist() == b[name].tolist(), name


def test_the_table_has_one_sorted_row_per_clip_method_and_sigma(reference):
    out, summary = reference
    table = table_columns(read_table(out))
    rows = 3 * 1 * 3
    assert summary["rows"] == len(table["clip_id"]) == rows and summary["complete"]
    assert summary["shards"] == summary["shards_written"] == SHARDS and summary["failed"] == 0
    keys = list(zip(table["clip_id"], table["method"], table["sigma"], strict=True))
    assert keys == sorted(keys) and len(set(keys)) == rows
    assert list(table) == ["clip_id", "label", "target", "predicted", "method", "sigma",
                           *SCORE_COLUMNS]  # fmt: skip
    manifest = read_manifest(out)
    assert manifest["complete"] and manifest["shards"] == {"total": SHARDS, "done": [0, 1]}
    assert manifest["settings"]["sigmas"] == [0.5, 1.0, 2.0] and manifest["failed"] == []
    assert {"selrel_jax", "jax", "pyarrow"} <= set(manifest["versions"])
    assert sorted(os.listdir(out / "tables")) == [f"shard-{k:06d}.parquet" for k in range(2)]


def _expected(model_dir, index: int, method: str, sigma: float, faithful: bool) -> dict:
    """Every column of clip ``index``, from the library's functions called on that clip."""
    model, variables, info = models.load(model_dir)
    example = synthetic_motion.generate_example(CONFIG, "test", 1, index)
    x = data.normalize(example["video"][None], mean=info.mean, std=info.std)
    target = np.array([example["label"]])
    rel = sr.explain(model, variables, x, target, method)
    mask = sr.motion_mask(rel, sigma, temporal_padding="edge")
    sel = sr.selective_relevance(rel, sigma, temporal_padding="edge")
    truth, static = example["mask"][None], example["static_mask"][None]
    boxes = metrics.box_mask(example["boxes"][None], *CLIP[1:])
    kept = np.asarray(mask).sum()
    out = {"spatial_bias": metrics.spatial_bias(rel, sel), "kept_voxels": metrics.kept_voxels(mask),
           "motion_precision_raw": metrics.overlap_at_k(rel, truth, [kept]).precision,
           "motion_precision_selective": (np.asarray(mask) & truth).sum() / kept}  # fmt: skip
    for name, m in (("raw", rel), ("selective", sel)):
        out |= {
            f"gini_{name}": metrics.gini(m), f"entropy_{name}": metrics.entropy(m),
            f"motion_precision_at_threshold_{name}": metrics.overlap_at_threshold(
                m, truth, fraction=0.1).precision,
            f"static_mass_{name}": metrics.mass_in_mask(m, static),
            f"box_mass_{name}": metrics.mass_in_mask(m, boxes),
        }  # fmt: skip
    if faithful:
        apply_fn = lambda clips: model.apply(variables, clips)  # noqa: E731
        frozen = metrics.frame_freezing(apply_fn, x, target)
        out |= {"target_probability": frozen.original, "frozen_probability": frozen.frozen,
                "motion_reliance": frozen.drop}  # fmt: skip
        for name, m in (("raw", rel), ("selective", sel)):
            out[f"deletion_auc_{name}"] = metrics.deletion_curve(apply_fn, x, m, target).auc
            out[f"insertion_auc_{name}"] = metrics.insertion_curve(apply_fn, x, m, target).auc
    return {k: float(np.ravel(v)[0]) for k, v in out.items()}


def _check_columns(out, model_dir, index, method, sigmas, faithful):
    table = table_columns(read_table(out))
    example = synthetic_motion.generate_example(CONFIG, "test", 1, index)
    assert example["static_mask"].any()  # static_mass is defined
    for sigma in sigmas:
        row = np.flatnonzero((table["clip_id"] == index) & (table["method"] == method)
                             & (table["sigma"] == sigma))  # fmt: skip
        assert len(row) == 1
        assert table["label"][row[0]] == table["target"][row[0]] == example["label"]
        expected = _expected(model_dir, index, method, sigma, faithful)
        assert set(expected) == set(SCORE_COLUMNS) | (
            set(FAITHFULNESS_COLUMNS) if faithful else set()
        )
        for name, value in expected.items():
            assert table[name][row[0]] == pytest.approx(value, rel=1e-4, abs=1e-5), name


@pytest.mark.parametrize("method", SETTINGS["methods"])
def test_each_column_equals_the_metrics_called_on_one_clip(reference, model_dir, method):
    # clip 2 is alone in the last shard, padded
    _check_columns(reference[0], model_dir, 2, method, SETTINGS["sigmas"], faithful=False)


def test_faithfulness_columns_equal_the_metrics_called_on_one_clip(model_dir, tmp_path):
    summary = run_sweep(tmp_path / "faithful", model=model_dir, **FAITHFUL)
    assert summary["complete"] and summary["rows"] == 3
    table = read_table(tmp_path / "faithful")
    assert table.column_names[-len(FAITHFULNESS_COLUMNS) :] == list(FAITHFULNESS_COLUMNS)
    _check_columns(tmp_path / "faithful", model_dir, 2, "gradient_x_input", [2.0], faithful=True)


def test_static_mass_is_nan_for_a_clip_without_static_objects(model_dir, tmp_path):
    run_sweep(tmp_path / "s", model=model_dir, dataset="synthetic_motion/tiny", data_seed=1,
              limit=2, methods=["gradient"], sigmas=[1.0])  # fmt: skip
    table = table_columns(read_table(tmp_path / "s"))
    assert (
        np.isnan(table["static_mass_raw"]).all() and np.isnan(table["static_mass_selective"]).all()
    )
    assert np.isfinite(table["motion_precision_raw"]).all()
    assert "deletion_auc_raw" not in table  # no faithfulness columns unless asked


def test_four_devices_give_the_same_table_as_one(reference, model_dir, tmp_path):
    proc = _run_in_subprocess(tmp_path / "four", model_dir, devices=4)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert_same_table(reference[0], tmp_path / "four", atol=1e-5)


def test_a_killed_sweep_resumes_to_the_same_table(reference, model_dir, tmp_path):
    out = tmp_path / "killed"
    proc = _run_in_subprocess(out, model_dir, kill_after_first_shard=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    assert os.listdir(out / "tables") == ["shard-000000.parquet"]
    assert not read_manifest(out)["complete"]
    assert read_table(out).num_rows == 2 * 1 * 3  # the first shard's rows, readable
    dead = 2**22 + 12345  # above the default pid_max: no such process
    (out / "tables" / f".shard-000001.parquet.{dead}.0a1b2c3d.tmp").write_bytes(b"half a shard")
    summary = run_sweep(out, model=model_dir, **SETTINGS)  # the same command again
    assert summary["shards_written"] == SHARDS - 1 and summary["complete"]
    assert sorted(os.listdir(out / "tables")) == [f"shard-{k:06d}.parquet" for k in range(2)]
    assert_same_table(reference[0], out)
    again = run_sweep(out, model=model_dir, **SETTINGS)  # finished: nothing left to do
    assert again["shards_written"] == 0 and again["rows"] == summary["rows"]
    assert_same_table(reference[0], out)


@pytest.mark.parametrize(
    "change, named",
    [
        ({"sigmas": [0.5, 1.0]}, "sigmas: [0.5, 1.0, 2.0] -> [0.5, 1.0]"),
        ({"methods": ["lrp.epsilon_plus_flat", "gradient"]}, "methods"),
        ({"batch_size": 3}, "batch_size: 2 -> 3"),
        ({"faithfulness": True}, "faithfulness: false -> true"),
        ({"target": "predicted"}, "target"),
        ({"method_options": {"epsilon": 0.5}}, "method_options.lrp.epsilon_plus_flat.epsilon"),
    ],
)
def test_a_rerun_with_other_settings_is_refused_naming_them(reference, model_dir, change, named):
    out = reference[0]
    before = {p: p.read_bytes() for p in [out / "manifest.json", *(out / "tables").iterdir()]}
    with pytest.raises(OptionError, match=r"^sweep at .* was made with other settings \(") as error:
        run_sweep(out, model=model_dir, **{**SETTINGS, **change})
    assert named in str(error.value) and "\n" not in str(error.value)
    assert {p: p.read_bytes() for p in before} == before


def _folder_with_a_corrupt_video(root):
    rng = np.random.default_rng(0)
    for cls in synthetic_motion.CLASS_NAMES[:2]:
        (root / cls).mkdir(parents=True)
        for i in range(3):
            frames = rng.integers(0, 255, (10, 40, 40, 3), dtype=np.uint8)
            data.write_video(root / cls / f"v{i}.mp4", frames, fps=8)
    # the test split takes each class's last video (see folder_splits)
    (root / synthetic_motion.CLASS_NAMES[1] / "v2.mp4").write_bytes(b"not a video at all")


def test_a_folder_video_that_cannot_be_decoded_is_listed_and_skipped(model_dir, tmp_path):
    _folder_with_a_corrupt_video(tmp_path / "videos")
    out = tmp_path / "sweep"
    summary = run_sweep(out, model=model_dir, dataset=f"folder:{tmp_path / 'videos'}",
                        methods=["gradient"], sigmas=[1.0, 2.0], batch_size=4)  # fmt: skip
    assert summary["complete"] and summary["failed"] == 1 and summary["clips"] == 2
    manifest = read_manifest(out)
    [failure] = manifest["failed"]
    assert failure["clip_id"] == "translate_right/v2.mp4#0"
    assert "v2.mp4" in failure["reason"] and "\n" not in failure["reason"]
    table = table_columns(read_table(out))
    assert table["clip_id"].tolist() == ["translate_left/v2.mp4#0"] * 2
    assert table["label"].tolist() == [0, 0] and table["sigma"].tolist() == [1.0, 2.0]
    assert np.isnan(table["motion_precision_raw"]).all()  # no ground truth in a folder
    assert np.isfinite(table["spatial_bias"]).all()


def test_the_sweeps_spatial_bias_and_gini_equal_the_metrics_on_every_kind_of_clip():
    rng = np.random.default_rng(5)
    rel = (rng.standard_normal((4, 6, 8, 8, 3)) * (rng.random((4, 6, 8, 8, 3)) < 0.4)).astype(
        np.float32
    )
    rel[0, 1:3] = rel[0, 3]  # equal values: ties in the ranking
    rel[1] = 0  # no mass at all: bias 0
    rel[2, :, :4] = 0  # motion only in part of the frame
    rel[3, 2, 3, 4, 1] = np.nan  # a broken clip: NaN
    sigmas = np.array([0.0, 0.5, 2.0, -1.0], np.float32)  # a negative sigma: every clip NaN

    @jax.jit
    def sweep_scores(rel):
        ranked = _compute._ranked(rel)
        masks = jax.vmap(lambda s: sr.motion_mask(rel, s))(sigmas)
        ginis = _compute._selection_ginis(ranked, masks)
        scores = jax.vmap(lambda s, m, g: _compute._sigma_scores(rel, ranked, s, m, g, {}, {}))
        return scores(sigmas, masks, ginis)

    got = sweep_scores(rel)
    for k, sigma in enumerate(sigmas):
        sel = jax.jit(sr.selective_relevance)(rel, sigma)
        bias = np.asarray(got["spatial_bias"][k])
        np.testing.assert_allclose(bias, jax.jit(metrics.spatial_bias)(rel, sel), 1e-5, 1e-6)
        assert np.isnan(bias[3]) and (sigma < 0 or bias[1] == 0)
        gini = np.asarray(got["gini_selective"][k])
        np.testing.assert_allclose(gini, jax.jit(metrics.gini)(sel), rtol=1e-5, atol=1e-6)
        assert np.isnan(gini[3]) and (sigma < 0 or gini[1] == 0)


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2**31 - 1), st.floats(-38.0, 38.0).map(lambda u: 10.0**u))
def test_the_sweeps_scores_do_not_depend_on_the_relevances_scale(seed, c):
    """Every per-clip score of c * r equals r's, for c log-uniform in [1e-38, 1e38]: the
    sums of a map of 1e36 overflowed to NaN, a map of 1e-20 kept every voxel."""
    rng = np.random.default_rng(seed)
    shape = (2, 5, 8, 8, 1)  # one channel: rounding c * r keeps the voxels' order and ties
    # Values on a grid of 2**-8 below 1: c * r stays finite and distinct values distinct.
    rel = np.round(rng.standard_normal(shape) * (rng.random(shape) < 0.4) * 64) / 256
    rel = np.clip(rel, -1, 1).astype(np.float32)
    x = (rel.astype(np.float64) * c).astype(np.float32)
    truth = {
        "mask": rng.random(shape[:4]) < 0.3,
        "static_mask": rng.random(shape[:4]) < 0.2,
        "boxes": np.tile(np.array([1.0, 2.0, 4.5, 6.0], np.float32), (2, 5, 1)),
    }
    sigmas = np.array([0.5, 1.0, 2.0], np.float32)
    select = {"temporal_padding": "zero", "threshold": "clip"}
    scores = jax.jit(lambda r: _compute._relevance_scores(r, truth, sigmas, select))
    # Voxels within rounding of a threshold (of the motion masks, of 0.1 * max |r| for
    # the precision at threshold) may go either way in float32: such draws are skipped.
    for sigma in [None, *sigmas]:
        mask = np.asarray(sr.motion_mask(rel, sigma)) if sigma is not None else True
        if sigma is not None:
            assume((np.asarray(sr.motion_mask(x, sigma)) == mask).all())
        v = np.abs(np.where(mask if mask is True else mask[..., None], rel, 0)).astype(float)
        largest = v.max(axis=(1, 2, 3, 4), keepdims=True)
        assume(not np.any(np.abs(v - 0.1 * largest) <= 1e-5 * largest))
    want, got = scores(rel), scores(x)
    assert set(got) == set(want)
    for name in want:
        assert np.isfinite(np.asarray(got[name])).all(), name
        np.testing.assert_allclose(got[name], want[name], rtol=1e-4, atol=1e-5, err_msg=name)
