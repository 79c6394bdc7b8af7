"""SIGKILL for every long-running command (train, sweep, explain with several videos): each
is killed at three seeded points of a chain of reruns (one of them while it writes its
output), then run to the end with the same arguments; the final outputs equal those of
an uninterrupted run, and nothing partial is left where a user would read it.

A kill point is ``(kind, n)``: the ``n``-th event of that kind in the killed process,
drawn by ``np.random.default_rng(SEED)`` among the points that still lie ahead."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

from selrel_jax import data
from selrel_jax import video_explanation as ve
from selrel_jax.sweep import _store, read_manifest, read_table, run_sweep
from selrel_jax.train import Clips, TrainConfig, fit

SEED = 14
pytestmark = pytest.mark.slow


def _killed(code: str, *args) -> list[str]:
    """Run ``code`` with ``args`` in a fresh interpreter that must die by SIGKILL; its
    stdout lines."""
    proc = subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True,
                          text=True, timeout=600, cwd=os.getcwd())  # fmt: skip
    assert proc.returncode == -signal.SIGKILL, (args, proc.stderr[-3000:])
    return proc.stdout.splitlines()


def _files(directory, hidden: bool = True) -> dict[str, bytes]:
    """relative path -> bytes of every file below ``directory`` (``hidden=False``: none
    inside or named like a hidden temporary)."""
    out = {}
    for folder, subfolders, names in os.walk(directory):
        if not hidden:
            subfolders[:] = [s for s in subfolders if not s.startswith(".")]
        for name in names:
            if hidden or not name.startswith("."):
                path = os.path.join(folder, name)
                out[os.path.relpath(path, directory)] = open(path, "rb").read()
    return out


def _hidden(directory) -> list[str]:
    return sorted(
        os.path.relpath(os.path.join(folder, name), directory)
        for folder, subfolders, names in os.walk(directory)
        for name in (*subfolders, *names)
        if (name.startswith(".") and name != ".selrel-output.json")  # not an output's marker
        or "orbax-checkpoint-tmp" in name
    )


# ---------------------------------------------------------------------------- explain

EXPLAIN = textwrap.dedent(
    """
    import os, signal, sys
    from selrel_jax import explanation_files as files, video_explanation as ve

    kind, n, out, videos = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4:]
    # kind -> (module, function, killed after it returns): an output renamed into place,
    # the overlay about to be written into the temporary folder, a video being explained
    module, name, after = {"after_output": (files, "write_folder", True),
                           "writing_output": (files, "_write_overlay", False),
                           "computing": (ve, "_explain_frames", False)}[kind]
    original, calls = getattr(module, name), []

    def killing(*args, **kwargs):
        calls.append(1)
        if len(calls) == n and not after:
            os.kill(os.getpid(), signal.SIGKILL)
        result = original(*args, **kwargs)
        if len(calls) == n:
            os.kill(os.getpid(), signal.SIGKILL)
        return result

    setattr(module, name, killing)
    for video, record in ve.explain_files(videos, out=out, method="gradient"):
        print(video, flush=True)
    """
)


def _complete_outputs(out) -> list[str]:
    """The outputs a user sees; each must be complete."""
    names = sorted(n for n in os.listdir(out) if not n.startswith(".")) if out.exists() else []
    for name in names:
        files = set(os.listdir(out / name))
        assert {"summary.json", "overlay.mp4", "filmstrip.png", "timeline.png"} <= files, name
        json.loads((out / name / "summary.json").read_text())
    return names


def test_explain_killed_three_times_resumes_to_the_outputs_of_one_run(tmp_path):
    frames = data.read_video(data.sample_clip_path())
    videos = [data.write_video(tmp_path / f"clip{i}.mp4", frames[: 16 + 4 * i], fps=8)
              for i in range(4)]  # fmt: skip
    reference, out = tmp_path / "reference", tmp_path / "killed"
    assert all(isinstance(r, dict) for _, r in ve.explain_files(videos, out=reference,
                                                                 method="gradient"))  # fmt: skip
    rng = np.random.default_rng(SEED)
    kinds = list(rng.permutation(["after_output", "writing_output", "computing"]))
    for k, kind in enumerate(kinds):
        done = len(_complete_outputs(out))
        most = len(videos) - done - (len(kinds) - 1 - k) - (kind == "after_output")
        n = int(rng.integers(1, most + 1))  # later kills need work left
        _killed(EXPLAIN, kind, n, out, *videos)
        # the videos before the n-th were finished, the n-th too if killed after its rename
        assert len(_complete_outputs(out)) == done + n - 1 + (kind == "after_output")
    if kinds[-1] != "after_output":
        assert _hidden(out) or kinds[-1] == "computing"  # a killed write leaves its folder
    records = [r for _, r in ve.explain_files(videos, out=out, method="gradient")]
    assert all(isinstance(r, dict) for r in records), records
    assert any(r.get("kept") for r in records) and not all(r.get("kept") for r in records)
    assert _hidden(out) == []

    def results(directory):
        return {k: v for k, v in _files(directory).items() if not k.endswith("timings.json")}

    assert results(out) == results(reference)  # summaries, pictures and overlays, byte for byte


# ---------------------------------------------------------------------------- sweep

SWEEP = {"dataset": "synthetic_motion/tiny_distractors", "data_seed": 1, "limit": 6,
         "batch_size": 1, "methods": ["gradient"], "sigmas": [1.0, 2.0]}  # fmt: skip
SWEEP_KILLED = textwrap.dedent(
    """
    import json, os, signal, sys
    import pyarrow.parquet as pq
    from selrel_jax._jobs import temporary_path
    from selrel_jax.sweep import _store, run_sweep

    kind, n, out, model, settings = sys.argv[1], int(sys.argv[2]), *sys.argv[3:5], sys.argv[5]
    calls = []

    def counted():
        calls.append(1)
        return len(calls) == n

    def die():
        os.kill(os.getpid(), signal.SIGKILL)

    write_table, write_json = pq.write_table, _store._write_json

    def half_a_shard(table, where, **kwargs):  # the shard's temporary file, cut short
        write_table(table, where, **kwargs)
        if counted():
            os.truncate(where, os.path.getsize(where) // 2)
            die()

    def half_a_manifest(path, value):
        if counted():
            tmp = temporary_path(path)
            tmp.write_text(json.dumps(value)[:100])
            die()
        write_json(path, value)

    if kind == "writing_shard":
        pq.write_table = half_a_shard
    if kind == "writing_manifest":
        _store._write_json = half_a_manifest
    hook = (lambda shard, record: counted() and die()) if kind == "after_shard" else None
    run_sweep(out, model=model, on_shard=hook, **json.loads(settings))
    """
)


def _table_differences(out, reference) -> str:
    """Where two sweeps' tables and manifests differ, for a failure's message."""
    a, b = read_table(out), read_table(reference)
    if a.shape != b.shape:
        return f"tables of shapes {a.shape} and {b.shape}"
    columns = [c for c in a.column_names if not a.column(c).equals(b.column(c))]
    manifests = [k for k, v in read_manifest(out).items() if read_manifest(reference)[k] != v]
    return f"columns {columns} differ; manifest keys {manifests} differ"


def test_sweep_killed_three_times_resumes_to_the_table_of_one_run(tiny_model, tmp_path):
    reference, out = tmp_path / "reference", tmp_path / "killed"
    run_sweep(reference, model=tiny_model, **SWEEP)
    shards = SWEEP["limit"] // SWEEP["batch_size"]
    rng = np.random.default_rng(SEED)
    kinds = list(rng.permutation(["after_shard", "writing_shard", "writing_manifest"]))
    for k, kind in enumerate(kinds):
        left = shards - len(_store.done_shards(out))
        most = left - (len(kinds) - 1 - k) - (kind == "after_shard")
        _killed(SWEEP_KILLED, kind, int(rng.integers(1, most + 1)), out, tiny_model,
                json.dumps(SWEEP))  # fmt: skip
        # what a user reads is whole: the manifest parses, every shard file reads (one
        # renamed into place just before a kill in the manifest's write is not listed yet)
        manifest, written = read_manifest(out), _store.done_shards(out)
        assert not manifest["complete"] and set(manifest["shards"]["done"]) <= written
        assert read_table(out).num_rows == 2 * len(manifest["shards"]["done"])  # only listed
    summary = run_sweep(out, model=tiny_model, **SWEEP)
    assert summary["complete"] and 0 < summary["shards_written"] < shards
    assert _hidden(out) == []
    resumed, straight = _files(out), _files(reference)
    assert sorted(resumed) == sorted(straight)
    differing = [name for name in straight if resumed[name] != straight[name]]
    assert differing == [], _table_differences(out, reference)  # byte for byte


# ---------------------------------------------------------------------------- train

TRAIN_SETUP = textwrap.dedent(
    """
    from selrel_jax import models
    from selrel_jax.data import synthetic_motion
    from selrel_jax.train import Clips, TrainConfig

    CONFIG = TrainConfig(epochs=3, batch_size=8, learning_rate=1e-2, warmup_epochs=0.5,
                         checkpoint_every=3, seed=3)

    def setup():
        model = models.create("c3d_small", 6, width=0.25, clip_size=(8, 32, 32),
                              stem_stride=(1, 2, 2))
        info = models.ModelInfo.for_arch(
            "c3d_small", 6, class_names=synthetic_motion.CLASS_NAMES, width=0.25,
            clip_length=8, crop_size=(32, 32),
        )
        tr = synthetic_motion.generate_split("tiny_biased", "train", 0, 32)
        va = synthetic_motion.generate_split("tiny_biased", "validation", 0, 12)
        return model, info, Clips(tr["video"], tr["label"]), Clips(va["video"], va["label"])
    """
)
TRAIN_KILLED = TRAIN_SETUP + textwrap.dedent(
    """
    import os, signal, sys
    from orbax.checkpoint._src.path import async_path
    from selrel_jax.train import fit

    kind, n, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    rename, calls = async_path.rename, []

    async def commit(source, target):  # orbax's last step of a save: tmp folder -> step
        calls.append(1)
        if len(calls) == n:
            os.kill(os.getpid(), signal.SIGKILL)
        return await rename(source, target)

    if kind == "writing_checkpoint":
        async_path.rename = commit

    def on_step(step):
        if kind == "after_step" and step == n:
            os.kill(os.getpid(), signal.SIGKILL)

    model, info, train, val = setup()
    fit(model, info, train, val, config=CONFIG, out_dir=out, progress=False, on_step=on_step)
    """
)
STEPS = 12  # 3 epochs of 4 steps


def _latest_step(out) -> int:
    latest = out / "checkpoints" / "latest"
    steps = [int(n) for n in os.listdir(latest) if n.isdigit()] if latest.is_dir() else []
    return max(steps, default=0)


def _leaves(variables) -> list[bytes]:
    return [np.asarray(x).tobytes() for x in jax.tree.leaves(variables)]


def test_training_killed_three_times_resumes_to_bitwise_the_same_model(tmp_path):
    namespace: dict = {}
    exec(TRAIN_SETUP, namespace)
    model, info, train, val = namespace["setup"]()
    config = namespace["CONFIG"]
    assert isinstance(config, TrainConfig) and isinstance(train, Clips)
    straight = fit(model, info, train, val, config=config, out_dir=tmp_path / "straight",
                   progress=False)  # fmt: skip
    out = tmp_path / "killed"
    rng = np.random.default_rng(SEED)
    # a save killed as it commits comes first (every later save is ahead of it), then steps
    points = [("writing_checkpoint", int(rng.integers(1, 4)))]
    for _ in range(2):
        points.append(("after_step", 0))
    for k, (kind, n) in enumerate(points):
        before = _latest_step(out)
        if kind == "after_step":  # a step ahead of the last checkpoint, leaving work after it
            n = int(rng.integers(before + 1, STEPS - (len(points) - k) + 1))
        _killed(TRAIN_KILLED, kind, n, out)
        assert _latest_step(out) >= before
    resumed = fit(model, info, train, val, config=config, out_dir=out, progress=False)
    assert _leaves(resumed.final_variables) == _leaves(straight.final_variables)
    assert _leaves(resumed.best_variables) == _leaves(straight.best_variables)
    strip = lambda h: [{k: v for k, v in e.items() if k != "seconds"} for e in h]  # noqa: E731
    assert strip(resumed.history) == strip(straight.history)
    assert _hidden(out) == []  # orbax's temporary folders are gone
    assert sorted(os.listdir(out / "checkpoints" / "latest")) == [str(STEPS)]
    shutil.rmtree(tmp_path / "straight")
