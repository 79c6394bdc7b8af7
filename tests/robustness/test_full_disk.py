"""A full disk, simulated with ``RLIMIT_FSIZE`` in a subprocess (CI runs as root, so
permissions can't make a path unwritable): explain, sweep and a checkpoint save each end
in one library error naming what they could not write, and leave no partial file."""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
import textwrap

import pytest

LIMIT = 1500  # bytes: a summary.json, a manifest and a checkpoint are all larger
FULL_DISK = textwrap.dedent(
    """
    import json, resource, signal, sys
    from selrel_jax import data, models
    from selrel_jax import video_explanation as ve
    from selrel_jax.errors import SelrelError
    from selrel_jax.sweep import run_sweep

    out, model, limit = sys.argv[1], sys.argv[2], int(sys.argv[3])
    net, variables, info = models.load(model)
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    errors = {}
    [(_, record)] = ve.explain_files([data.sample_clip_path()], out=f"{out}/explain",
                                     model=model, method="gradient")
    errors["explain"] = f"{type(record).__name__}: {record}"
    for name, call in [
        ("sweep", lambda: run_sweep(f"{out}/sweep", model=model, methods=["gradient"],
                                    dataset="synthetic_motion/tiny_distractors", data_seed=1,
                                    limit=2, sigmas=[1.0])),
        ("save", lambda: models.save(f"{out}/checkpoint", info, variables)),
    ]:
        try:
            call()
        except SelrelError as e:
            errors[name] = f"{type(e).__name__}: {e}"
    print(json.dumps(errors))
    """
)


def _everything(directory) -> list[str]:
    return sorted(
        os.path.relpath(os.path.join(folder, name), directory)
        for folder, subfolders, names in os.walk(directory)
        for name in (*subfolders, *names)
    )


@pytest.mark.slow
def test_a_full_disk_is_one_error_naming_the_output_and_leaves_nothing_partial(
    tiny_model, tmp_path
):
    assert resource.RLIMIT_FSIZE and signal.SIGXFSZ
    proc = subprocess.run([sys.executable, "-c", FULL_DISK, str(tmp_path), str(tiny_model),
                           str(LIMIT)], capture_output=True, text=True, timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    errors = json.loads(proc.stdout.splitlines()[-1])
    assert errors["explain"] == (
        f"DataError: cannot write output {tmp_path}/explain/sample_clip: File too large"
    )
    assert errors["sweep"] == (
        f"DataError: cannot write {tmp_path}/sweep/manifest.json: File too large"
    )
    assert errors["save"].startswith(
        f"CheckpointError: cannot write checkpoint {tmp_path}/checkpoint: "
    )
    assert all("\n" not in message for message in errors.values())
    # no half-written output, temporary file or folder anywhere: not even the output
    # folders, created for the runs' locks and empty once they failed
    assert _everything(tmp_path) == []
