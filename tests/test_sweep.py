"""Dataset sweeps: every column against the metrics on one clip, 1 vs 4 devices, a killed
and resumed sweep, refused reruns, and a folder dataset with a corrupt video."""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys

import jax
import numpy as np
import pyarrow.parquet as pq
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import selrel_jax as sr
from selrel_jax import _jobs, data, metrics, models
from selrel_jax.data import synthetic_motion
from selrel_jax.errors import DataError, OptionError
from selrel_jax.sweep import (
    FAITHFULNESS_COLUMNS,
    SCORE_COLUMNS,
    SweepSettings,
    _compute,
    open_source,
    read_manifest,
    read_table,
    run_sweep,
    table_columns,
)
from selrel_jax.sweep._run import checked_shares
from selrel_jax.sweep._settings import identity

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
    assert manifest["complete"] and manifest["shards"]["total"] == SHARDS
    assert manifest["shards"]["done"] == [0, 1]
    files = manifest["shards"]["files"]
    assert list(files) == ["shard-000000.parquet", "shard-000001.parquet"]
    for name, listed in files.items():  # each shard's sha256 and rows, as written
        path = out / "tables" / name
        assert listed["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
        assert listed["rows"] == pq.read_metadata(path).num_rows
    assert manifest["settings"]["sigmas"] == [0.5, 1.0, 2.0] and manifest["failed"] == []
    assert {"selrel_jax", "jax", "pyarrow"} <= set(manifest["versions"])
    assert sorted(os.listdir(out / "tables")) == [f"shard-{k:06d}.parquet" for k in range(2)]


def _expected(
    model_dir, index: int, method: str, sigma: float, faithful: bool, flow: bool = False
) -> dict:
    """Every column of clip ``index``, from the library's functions called on that clip
    (``flow``: against the clip's optical-flow mask instead of its exact one)."""
    model, variables, info = models.load(model_dir)
    example = synthetic_motion.generate_example(CONFIG, "test", 1, index)
    x = data.normalize(example["video"][None], mean=info.mean, std=info.std)
    target = np.array([example["label"]])
    bounds = dict(zip(("low", "high"), info.input_bounds(), strict=True))
    options = bounds if "low" in sr.attribution.registry.get(method).options else {}
    rel = sr.explain(model, variables, x, target, method, **options)
    mask = sr.motion_mask(rel, sigma, temporal_padding="edge")
    sel = sr.selective_relevance(rel, sigma, temporal_padding="edge")
    truth, static = example["mask"][None], example["static_mask"][None]
    if flow:
        truth = metrics.flow_motion_mask(example["video"])[None]
    boxes = metrics.box_mask(example["boxes"][None], *CLIP[1:])
    kept = np.asarray(mask).sum()
    wide = metrics.dilate_mask(truth, 1)  # the default tolerance
    out = {"spatial_bias": metrics.spatial_bias(rel, sel), "kept_voxels": metrics.kept_voxels(mask)}
    for tolerant, t in (("", truth), ("_tolerant", wide)):
        out |= {
            f"motion_precision{tolerant}_raw": metrics.overlap_at_k(rel, t, [kept]).precision,
            f"motion_precision{tolerant}_selective": (np.asarray(mask) & t).sum() / kept,
        }
        for name, m in (("raw", rel), ("selective", sel)):
            out |= {
                f"motion_precision_at_threshold{tolerant}_{name}": metrics.overlap_at_threshold(
                    m, t, fraction=0.1).precision,
                f"motion_mass{tolerant}_{name}": metrics.mass_in_mask(m, t),
            }  # fmt: skip
    for name, m in (("raw", rel), ("selective", sel)):
        out |= {
            f"gini_{name}": metrics.gini(m), f"entropy_{name}": metrics.entropy(m),
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


def _check_columns(out, model_dir, index, method, sigmas, faithful, flow=False):
    table = table_columns(read_table(out))
    example = synthetic_motion.generate_example(CONFIG, "test", 1, index)
    assert example["static_mask"].any()  # static_mass is defined
    for sigma in sigmas:
        row = np.flatnonzero((table["clip_id"] == index) & (table["method"] == method)
                             & (table["sigma"] == sigma))  # fmt: skip
        assert len(row) == 1
        assert table["label"][row[0]] == table["target"][row[0]] == example["label"]
        expected = _expected(model_dir, index, method, sigma, faithful, flow)
        assert set(expected) == set(SCORE_COLUMNS) | (
            set(FAITHFULNESS_COLUMNS) if faithful else set()
        )
        for name, value in expected.items():
            assert table[name][row[0]] == pytest.approx(value, rel=1e-4, abs=1e-5), name


@pytest.mark.parametrize("method", SETTINGS["methods"])
def test_each_column_equals_the_metrics_called_on_one_clip(reference, model_dir, method):
    # clip 2 is alone in the last shard, padded
    _check_columns(reference[0], model_dir, 2, method, SETTINGS["sigmas"], faithful=False)


@pytest.mark.slow  # four methods swept end to end (15 s)
def test_dtd_occlusion_and_the_model_free_baselines_are_sweep_methods(model_dir, tmp_path):
    methods = ["lrp.dtd", "occlusion", "baseline.random", "baseline.frame_difference",
               "baseline.input_sobel"]  # fmt: skip
    settings = {**SETTINGS, "methods": methods, "sigmas": [1.0], "limit": 1}
    summary = run_sweep(tmp_path / "new_methods", model=model_dir, **settings)
    assert summary["complete"] and summary["rows"] == len(methods)
    for method in methods:  # dtd's low/high: the model's input range, as epsilon_gamma_box's
        _check_columns(tmp_path / "new_methods", model_dir, 0, method, [1.0], faithful=False)


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


@pytest.mark.slow
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
        ({"mask_tolerance": 2}, "mask_tolerance: 1 -> 2"),
        ({"motion_mask": "flow"}, "motion_mask"),
    ],
)
def test_a_rerun_with_other_settings_is_refused_naming_them(reference, model_dir, change, named):
    out = reference[0]
    before = {p: p.read_bytes() for p in [out / "manifest.json", *(out / "tables").iterdir()]}
    with pytest.raises(OptionError, match=r"^sweep at .* was made with other settings \(") as error:
        run_sweep(out, model=model_dir, **{**SETTINGS, **change})
    assert named in str(error.value) and "\n" not in str(error.value)
    assert {p: p.read_bytes() for p in before} == before


@pytest.mark.slow  # a whole sweep (~7 s on 2 cores)
def test_flow_masked_columns_equal_the_metrics_against_the_clips_flow_mask(model_dir, tmp_path):
    out = tmp_path / "flow"
    settings = {**SETTINGS, "sigmas": [1.0], "limit": 1, "motion_mask": "flow"}
    assert run_sweep(out, model=model_dir, **settings)["complete"]
    _check_columns(out, model_dir, 0, SETTINGS["methods"][0], [1.0], faithful=False, flow=True)
    record = read_manifest(out)["settings"]["motion_mask"]["flow"]
    assert record == {"min_flow": 0.0, "farneback": metrics.FARNEBACK}
    before = {p: p.read_bytes() for p in [out / "manifest.json", *(out / "tables").iterdir()]}
    for change, named in (({"flow_min_flow": 0.5}, "motion_mask.flow.min_flow: 0.0 -> 0.5"),
                          ({"motion_mask": "exact"}, "motion_mask")):  # fmt: skip
        with pytest.raises(OptionError, match="was made with other settings") as error:
            run_sweep(out, model=model_dir, **{**settings, **change})
        assert named in str(error.value)
    assert {p: p.read_bytes() for p in before} == before


def test_an_exact_mask_sweeps_settings_record_is_unchanged_by_the_flow_option():
    # a sweep written before --motion-mask existed must still resume
    settings = SweepSettings(**SETTINGS)
    record = identity(settings, {m: {} for m in settings.methods})
    assert "motion_mask" not in record and "flow_min_flow" not in record


@pytest.mark.parametrize(
    "change, message",
    [
        ({"motion_mask": "optical"}, "motion_mask must be one of exact, flow; got 'optical'"),
        ({"flow_min_flow": -0.1}, "flow_min_flow must be a finite number >= 0.0"),
        ({"flow_min_flow": float("nan")}, "flow_min_flow must be a finite number >= 0.0"),
    ],
)
def test_the_motion_mask_settings_are_checked(change, message):
    with pytest.raises(OptionError, match=re.escape(message)):
        SweepSettings(**{**SETTINGS, **change})


def test_a_flow_sweep_without_opencv_names_the_flow_extra_and_writes_nothing(
    model_dir, tmp_path, monkeypatch
):
    monkeypatch.setitem(sys.modules, "cv2", None)  # import cv2 raises ImportError
    with pytest.raises(OptionError, match=r'the flow extra: pip install -e "\.\[flow\]"'):
        run_sweep(tmp_path / "s", model=model_dir, **{**SETTINGS, "motion_mask": "flow"})
    assert not (tmp_path / "s").exists()


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


@pytest.mark.slow  # a whole sweep (~7 s on 2 cores)
def test_a_folder_sweep_with_flow_masks_scores_motion_and_still_skips_a_broken_video(
    model_dir, tmp_path
):
    _folder_with_a_corrupt_video(tmp_path / "videos")
    settings = dict(dataset=f"folder:{tmp_path / 'videos'}", methods=["gradient"], sigmas=[1.0],
                    batch_size=4, motion_mask="flow")  # fmt: skip
    summary = run_sweep(tmp_path / "sweep", model=model_dir, **settings)
    assert summary["complete"] and summary["failed"] == 1 and summary["rows"] == 1
    table = table_columns(read_table(tmp_path / "sweep"))
    motion = [c for c in SCORE_COLUMNS if c.startswith("motion_")]
    assert all(0.0 <= table[c][0] <= 1.0 for c in motion), {c: table[c][0] for c in motion}
    _, _, info = models.load(model_dir)
    source = open_source(SweepSettings(**settings, model=str(model_dir)), info)
    batch = source.read([0, 1])
    assert set(batch.failed) == {1} and not batch.truth["mask"][1].any()
    np.testing.assert_array_equal(batch.truth["mask"][0],
                                  metrics.flow_motion_mask(batch.video[0]))  # fmt: skip


@pytest.mark.parametrize("frames", [1, 10])
def test_a_folder_video_without_motion_is_listed_as_failed_not_scored(model_dir, tmp_path, frames):
    # A 1-frame video (loop-padded to a clip), or one image repeated, used to get motion
    # scores (kept_voxels 0.09, spatial_bias 0.386) for a still image.
    root = tmp_path / "videos"
    _folder_with_a_corrupt_video(root)
    still = np.random.default_rng(3).integers(0, 255, (1, 40, 40, 3), dtype=np.uint8)
    data.write_video(root / synthetic_motion.CLASS_NAMES[1] / "v2.mp4",
                     np.repeat(still, frames, 0), fps=8)  # fmt: skip
    out = tmp_path / "sweep"
    summary = run_sweep(out, model=model_dir, dataset=f"folder:{root}", methods=["gradient"],
                        sigmas=[1.0], batch_size=4)  # fmt: skip
    assert summary["complete"] and summary["failed"] == 1
    [failure] = read_manifest(out)["failed"]
    assert failure["clip_id"] == "translate_right/v2.mp4#0"
    assert "v2.mp4 has no motion" in failure["reason"], failure
    table = table_columns(read_table(out))
    assert table["clip_id"].tolist() == ["translate_left/v2.mp4#0"]


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
        scores = jax.vmap(lambda s, m, g: _compute._sigma_scores(ranked, s, m, g, {}))
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


# ---------------------------------------------------------------------------- integrity


@pytest.fixture
def finished(reference, tmp_path):
    """A copy of the reference sweep to damage: its directory."""
    shutil.copytree(reference[0], tmp_path / "sweep")
    return tmp_path / "sweep"


def _flip_a_bit(path, offset=200):
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x10
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    "damage",
    [
        lambda t: _flip_a_bit(t / "shard-000001.parquet"),
        lambda t: shutil.copy(t / "shard-000000.parquet", t / "shard-000001.parquet"),
        lambda t: (t / "shard-000001.parquet").write_bytes(
            (t / "shard-000001.parquet").read_bytes()[:300]
        ),
        lambda t: (t / "shard-000001.parquet").write_bytes(b""),
        lambda t: (t / "shard-000001.parquet").unlink(),
    ],
    ids=["bit-flipped", "a-copy-of-another", "truncated", "empty", "missing"],
)
def test_a_damaged_shard_is_refused_by_read_table_and_recomputed_by_a_rerun(
    reference, model_dir, finished, damage
):
    damage(finished / "tables")
    with pytest.raises(
        DataError,
        match=r"^shard .*shard-000001\.parquet (does not match the "
        r"sha256 the manifest records \(changed or damaged\)|is missing); rerun the "
        r"same selrel sweep",
    ):
        read_table(finished)  # fmt: skip
    with pytest.warns(UserWarning, match=r"shard-000001\.parquet .*; it is computed again"):
        summary = run_sweep(finished, model=model_dir, **SETTINGS)
    assert summary["shards_written"] == 1 and summary["complete"]
    assert_same_table(reference[0], finished)
    assert (finished / "manifest.json").read_bytes() == (
        reference[0] / "manifest.json"
    ).read_bytes()


def test_a_stray_shard_file_is_neither_read_nor_in_the_way(reference, model_dir, finished):
    stray = finished / "tables" / "shard-000099.parquet"
    shutil.copy(finished / "tables" / "shard-000000.parquet", stray)
    assert_same_table(reference[0], finished)  # not read: no clip twice
    summary = run_sweep(finished, model=model_dir, **SETTINGS)
    assert summary["shards_written"] == 0 and summary["complete"] and stray.exists()
    assert_same_table(reference[0], finished)


def test_an_unlisted_shard_that_is_not_its_own_is_refused_and_kept(model_dir, finished):
    (finished / "tables" / "shard-000001.parquet").unlink()
    manifest = json.loads((finished / "manifest.json").read_text())
    del manifest["shards"]["files"]["shard-000001.parquet"]
    (finished / "manifest.json").write_text(json.dumps(manifest))
    foreign = finished / "tables" / "shard-000001.parquet"
    shutil.copy(finished / "tables" / "shard-000000.parquet", foreign)  # says it is shard 0
    before = foreign.read_bytes()
    with pytest.raises(DataError, match=r"shard-000001\.parquet was not written by this sweep"):
        run_sweep(finished, model=model_dir, **SETTINGS)
    assert foreign.read_bytes() == before


@pytest.mark.parametrize("key", ["settings.methods", "shards", "shards.files", "clips"])
def test_a_manifest_missing_a_key_is_one_data_error_naming_it(model_dir, finished, key):
    manifest = json.loads((finished / "manifest.json").read_text())
    *parents, last = key.split(".")
    holder = manifest
    for parent in parents:
        holder = holder[parent]
    del holder[last]
    (finished / "manifest.json").write_text(json.dumps(manifest))
    message = rf"manifest\.json is not a whole sweep manifest: it has no {re.escape(key)}$"
    with pytest.raises(DataError, match=message):
        read_table(finished)
    with pytest.raises((DataError, OptionError)) as error:  # a rerun: one line naming it
        run_sweep(finished, model=model_dir, **SETTINGS)
    assert key.split(".")[-1] in str(error.value) and "\n" not in str(error.value)


def test_shares_outside_0_1_are_nan_with_a_reason_and_rounding_is_clipped():
    columns = {
        "clip_id": np.array([0, 0, 1, 1]),
        "method": np.array(["m"] * 4, dtype=object),
        "sigma": np.array([1.0, 2.0, 1.0, 2.0]),
        "spatial_bias": np.array([0.5, 1.391, 1 + 1e-7, np.nan], np.float32),
        "kept_voxels": np.array([0.0, -1e-7, -0.2, 1.0], np.float32),
        "entropy_raw": np.array([3.0, 3.0, 3.0, 3.0], np.float32),  # not a share
    }
    bad = checked_shares(columns)
    np.testing.assert_array_equal(columns["spatial_bias"], [0.5, np.nan, 1.0, np.nan])
    np.testing.assert_array_equal(columns["kept_voxels"], [0.0, 0.0, np.nan, 1.0])
    assert columns["entropy_raw"].tolist() == [3.0] * 4
    assert [(b["clip_id"], b["sigma"], b["column"]) for b in bad] == [
        (0, 2.0, "spatial_bias"), (1, 1.0, "kept_voxels")]  # fmt: skip
    assert bad[0]["value"] == pytest.approx(1.391)


def test_a_second_sweep_into_the_same_directory_is_refused(model_dir, finished):
    holder = {"pid": os.getppid(), "host": socket.gethostname(), "command": "sweep", "token": "0"}
    (finished / ".selrel.lock").write_text(json.dumps(holder))
    with pytest.raises(OptionError, match=r"is being written by selrel sweep \(pid "):
        run_sweep(finished, model=model_dir, **SETTINGS)
    (finished / ".selrel.lock").write_text(json.dumps(holder | {"pid": 2**22 + 12345}))
    assert run_sweep(finished, model=model_dir, **SETTINGS)["complete"]  # a dead one's: taken
    assert not (finished / ".selrel.lock").exists()


def test_a_batch_size_beyond_the_clips_is_capped_and_one_that_cannot_fit_is_refused(
    model_dir, tmp_path, monkeypatch
):
    settings = {**SETTINGS, "limit": 2, "batch_size": 100_000}
    summary = run_sweep(tmp_path / "capped", model=model_dir, **settings)
    assert summary["complete"] and summary["shards"] == 1 and summary["rows"] == 2 * 3
    monkeypatch.setattr(_jobs, "available_memory", lambda: 1000)  # 1000 bytes left
    with pytest.raises(
        OptionError,
        match=r"^a batch of 2 clips \(batch_size 100000\) needs at "
        r"least .* GiB of memory; 0\.0 GiB are available; use a smaller ",
    ):
        run_sweep(tmp_path / "refused", model=model_dir, **settings)  # fmt: skip
    assert not (tmp_path / "refused").exists()


def test_an_out_of_memory_first_batch_leaves_no_manifest_to_refuse_the_rerun(
    model_dir, tmp_path, monkeypatch
):
    def exhausted(self, batch, note=None):
        raise RuntimeError("RESOURCE_EXHAUSTED: Out of memory allocating 103 GiB")

    monkeypatch.setattr(_compute.BatchScorer, "score", exhausted)
    with pytest.raises(OptionError, match=r"^out of memory computing a batch of 2 clips; use a "):
        run_sweep(tmp_path / "out", model=model_dir, **SETTINGS)
    assert not (tmp_path / "out").exists() or not os.listdir(tmp_path / "out")
    monkeypatch.undo()
    assert run_sweep(tmp_path / "out", model=model_dir, **{**SETTINGS, "batch_size": 3})["complete"]


@jax.jit
def _scale_scores(rel, truth):
    """The sweep's scores of one draw; compiled once for every draw (same shapes)."""
    sigmas = np.array([0.5, 1.0, 2.0], np.float32)
    select = {"temporal_padding": "zero", "threshold": "clip"}
    return _compute._relevance_scores(rel, truth, sigmas, select, 1)


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

    def scores(r):
        return _scale_scores(r, truth)

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


# ---------------------------------------------------------------------------- measures


def _oracle_measures(rel, sel, kept_mask, truth, tolerance):
    """The motion measures of one clip in float64, from their formulas: v = sum_c |R|;
    mass = sum_M v / sum v (NaN for an empty M); threshold precision = |S & M| / |S|
    with S = {v > 0, v >= 0.1 max v}; matched sparsity: the raw map's k = |kept| largest
    v (ties by index) and the kept voxels, each |. & M| / k. M widened: a pixel is in
    when one within ``tolerance`` rows and columns of the same frame is."""
    wide = np.zeros_like(truth)
    for t, h, w in zip(*np.nonzero(truth), strict=True):
        wide[t, max(h - tolerance, 0) : h + tolerance + 1,
             max(w - tolerance, 0) : w + tolerance + 1] = True  # fmt: skip
    k = int(kept_mask.sum())
    out = {}
    for tolerant, m in (("", truth), ("_tolerant", wide)):
        for name, x in (("raw", rel), ("selective", sel)):
            v = np.abs(x.astype(np.float64)).sum(-1)
            out[f"motion_mass{tolerant}_{name}"] = v[m].sum() / v.sum() if m.any() else np.nan
            s = (v > 0) & (v >= 0.1 * v.max())
            out[f"motion_precision_at_threshold{tolerant}_{name}"] = (s & m).sum() / max(s.sum(), 1)
        order = sorted(range(rel[..., 0].size), key=lambda i: (-np.abs(rel).sum(-1).ravel()[i], i))
        top = np.zeros(truth.size, bool)
        top[order[:k]] = True
        out[f"motion_precision{tolerant}_raw"] = (top & m.ravel()).sum() / max(k, 1)
        out[f"motion_precision{tolerant}_selective"] = (kept_mask & m).sum() / max(k, 1)
    return out


@pytest.mark.parametrize(
    "tolerance",
    [0, 1, pytest.param(2, marks=pytest.mark.slow)],  # the property test covers 2
)
def test_the_motion_measures_equal_numpy_oracles_of_their_formulas(tolerance):
    rng = np.random.default_rng(11 + tolerance)
    shape = (3, 5, 9, 8, 2)
    rel = (rng.standard_normal(shape) * (rng.random(shape) < 0.5)).astype(np.float32)
    truth = rng.random(shape[:4]) < 0.15
    truth[2] = False  # a clip without motion: no share of mass to read
    sigmas = np.array([0.5, 2.0], np.float32)
    select = {"temporal_padding": "edge", "threshold": "clip"}
    scores = jax.jit(lambda r: _compute._relevance_scores(r, {"mask": truth}, sigmas, select,
                                                          tolerance))  # fmt: skip
    got = scores(rel)
    for k, sigma in enumerate(sigmas):
        sel = np.asarray(sr.selective_relevance(rel, float(sigma), **select))
        kept = np.asarray(sr.motion_mask(rel, float(sigma), **select))
        for clip in range(shape[0]):
            want = _oracle_measures(rel[clip], sel[clip], kept[clip], truth[clip], tolerance)
            for name, value in want.items():
                column = np.asarray(got[name])
                have = column[clip, k] if column.ndim == 2 else column[clip]
                np.testing.assert_allclose(have, value, rtol=1e-5, atol=1e-6, err_msg=name)


# Op by op, every primitive compiled on its own: ~10 s, so in the slow step.
@pytest.mark.slow
def test_the_motion_measures_jitted_equal_eager():
    rng = np.random.default_rng(11)
    shape = (3, 5, 9, 8, 2)
    rel = (rng.standard_normal(shape) * (rng.random(shape) < 0.5)).astype(np.float32)
    truth = {"mask": rng.random(shape[:4]) < 0.15}
    sigmas = np.array([0.5, 2.0], np.float32)
    select = {"temporal_padding": "edge", "threshold": "clip"}
    got = jax.jit(lambda r: _compute._relevance_scores(r, truth, sigmas, select, 1))(rel)
    with jax.disable_jit():
        eager = _compute._relevance_scores(rel, truth, sigmas, select, 1)
    assert set(eager) == set(got)
    for name in got:
        np.testing.assert_allclose(eager[name], got[name], rtol=1e-5, atol=1e-6, err_msg=name)


def test_the_tolerance_is_a_checked_setting():
    with pytest.raises(OptionError, match=r"^mask_tolerance must be an int >= 0; got -1$"):
        run_sweep("unused", **{**SETTINGS, "mask_tolerance": -1})
    with pytest.raises(OptionError, match=r"^mask_tolerance must be an int >= 0; got 1.5$"):
        run_sweep("unused", **{**SETTINGS, "mask_tolerance": 1.5})


def test_the_motion_measures_are_nan_only_for_a_broken_clip_or_sigma():
    rng = np.random.default_rng(3)
    rel = rng.standard_normal((3, 4, 6, 6, 2)).astype(np.float32)
    rel[1, 2, 3, 3, 0] = np.nan
    truth = {"mask": rng.random((3, 4, 6, 6)) < 0.3}
    sigmas = np.array([1.0, -1.0], np.float32)  # a negative sigma: no selection
    select = {"temporal_padding": "edge", "threshold": "clip"}
    got = jax.jit(lambda r: _compute._relevance_scores(r, truth, sigmas, select, 1))(rel)
    names = [n for n in got if n.startswith("motion_")]
    assert len(names) == 12
    for name in names:
        column = np.asarray(got[name])
        column = column if column.ndim == 2 else column[:, None]
        assert np.isnan(column[1]).all(), name
        assert np.isfinite(column[[0, 2], 0]).all(), name
        if name.endswith("_selective"):
            assert np.isnan(column[:, 1]).all(), name


@functools.partial(jax.jit, static_argnums=2)
def _edge_scores(rel, truth, tolerance):
    """The sweep's scores at sigmas 0.5 and 2, edge padding: compiled once per tolerance
    for every draw (the mask an argument, not a constant of a new function per draw)."""
    sigmas = np.array([0.5, 2.0], np.float32)
    select = {"temporal_padding": "edge", "threshold": "clip"}
    return _compute._relevance_scores(rel, truth, sigmas, select, tolerance)


@settings(max_examples=15, deadline=None)
@given(st.integers(0, 2**31 - 1), st.integers(0, 2), st.sampled_from([0.0, 0.05, 0.3]))
def test_the_motion_measures_are_shares_and_a_tolerance_never_lowers_them(seed, tolerance, p):
    rng = np.random.default_rng(seed)
    shape = (2, 4, 6, 7, 2)
    rel = (rng.standard_normal(shape) * (rng.random(shape) < 0.5)).astype(np.float32)
    truth = {"mask": rng.random(shape[:4]) < p}
    got = _edge_scores(rel, truth, tolerance)
    moving = truth["mask"].any(axis=(1, 2, 3))
    for name in [n for n in got if n.startswith("motion_")]:
        column = np.asarray(got[name])
        column = column if column.ndim == 2 else column[:, None]
        if name.startswith("motion_mass"):  # NaN exactly for a clip without motion
            assert (np.isnan(column).all(axis=1) == ~moving).all(), name
            column = column[moving]
        assert ((column >= 0) & (column <= 1 + 1e-6)).all(), name
        if "_tolerant" in name:
            exact = np.asarray(got[name.replace("_tolerant", "")])
            exact = exact if exact.ndim == 2 else exact[:, None]
            exact = exact[moving] if name.startswith("motion_mass") else exact
            assert (column >= exact - 1e-6).all(), name


def test_a_limit_on_an_unbuilt_cache_sweeps_the_caches_clips_and_writes_nothing(
    model_dir, tmp_path
):
    # It used to build every split of the dataset into the data dir first.
    (tmp_path / "cache").mkdir()
    info = models.load(model_dir)[2]
    settings = SweepSettings(dataset="synthetic_motion/tiny", limit=3, methods=["gradient"])
    source = open_source(settings, info, data_dir=tmp_path / "cache")
    batch = source.read([0, 1, 2])
    assert source.count == 3 and list((tmp_path / "cache").iterdir()) == []
    cached = synthetic_motion.generate_split(
        "tiny", "test", synthetic_motion.CONFIGS["tiny"].seed, 3
    )
    np.testing.assert_array_equal(batch.video, cached["video"])
    np.testing.assert_array_equal(batch.label, cached["label"])
    for key in ("mask", "static_mask", "boxes"):
        np.testing.assert_array_equal(batch.truth[key], cached[key])
