"""Determinism on CPU: the same sweep twice writes byte-identical files (manifest and
every Parquet shard), and the same explain command writes byte-identical outputs (all
but timings.json), in this process and in a fresh one."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from selrel_jax import data
from selrel_jax import video_explanation as ve
from selrel_jax.sweep import read_manifest, run_sweep

SWEEP = {"dataset": "synthetic_motion/tiny_distractors", "data_seed": 2, "limit": 3,
         "batch_size": 2, "methods": ["gradient_x_input", "lrp.epsilon_plus_flat"],
         "sigmas": [0.5, 2.0], "faithfulness": True}  # fmt: skip
EXPLAIN = {"method": "lrp.epsilon_plus_flat", "sigma": 1.0, "save_arrays": True}
FRESH = """
import json, sys
from selrel_jax import data
from selrel_jax import video_explanation as ve
from selrel_jax.sweep import run_sweep

out, model, sweep, explain = sys.argv[1], sys.argv[2], *map(json.loads, sys.argv[3:])
run_sweep(f"{out}/sweep", model=model, **sweep)
list(ve.explain_files([data.sample_clip_path()], out=f"{out}/explain", model=model, **explain))
"""


def _files(directory) -> dict[str, bytes]:
    """relative path -> bytes of every file below ``directory`` but the wall times."""
    out = {}
    for folder, _, names in os.walk(directory):
        for name in names:
            if name != "timings.json":
                path = os.path.join(folder, name)
                with open(path, "rb") as f:
                    out[os.path.relpath(path, directory)] = f.read()
    return out


@pytest.mark.slow
def test_the_same_sweep_and_explain_twice_write_byte_identical_files(tiny_model, tmp_path):
    for name in ("a", "b"):
        assert run_sweep(tmp_path / name / "sweep", model=tiny_model, **SWEEP)["complete"]
        [(_, record)] = ve.explain_files([data.sample_clip_path()], out=tmp_path / name /
                                         "explain", model=tiny_model, **EXPLAIN)  # fmt: skip
        assert isinstance(record, dict), record
    proc = subprocess.run(
        [sys.executable, "-c", FRESH, str(tmp_path / "c"), str(tiny_model), json.dumps(SWEEP),
         json.dumps(EXPLAIN)], capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    a = _files(tmp_path / "a")
    assert sorted(a) == [
        "explain/sample_clip/.selrel-output.json",  # its marker, the same bytes too
        "explain/sample_clip/filmstrip.png", "explain/sample_clip/overlay.mp4",
        "explain/sample_clip/relevance.npz", "explain/sample_clip/summary.json",
        "explain/sample_clip/timeline.png", "sweep/manifest.json",
        "sweep/tables/shard-000000.parquet", "sweep/tables/shard-000001.parquet",
    ]  # fmt: skip
    assert a == _files(tmp_path / "b") == _files(tmp_path / "c")
    assert read_manifest(tmp_path / "a" / "sweep")["rows"] == 3 * 2 * 2
