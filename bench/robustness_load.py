"""Robustness under load: a long sweep's memory and throughput, and a folder of videos
with corrupt ones through ``selrel sweep`` and ``selrel explain``.

Prints one line per measurement:

* ``sweep N clips``: ``selrel sweep --dataset synthetic_motion --data-seed 0 --limit N
  --methods gradient --sigmas 1 --model c3d_small_motion``, each N in a fresh process:
  its peak RSS (MiB), and clips/s over the first and the last quarter of its shards
  (steady throughput: the two agree);
* ``folder sweep``: a folder of ``--videos`` small videos of which 5 % are corrupt (cut
  short, random bytes, empty, text), swept: how many good videos are in the table,
  whether the manifest lists exactly the bad ones;
* ``folder explain``: ``selrel explain`` on the same videos: how many outputs, whether
  it exits with code 2 naming exactly the bad ones.

Usage: ``python bench/robustness_load.py [--clips 100 1000] [--videos 200]``
(the issue's sizes; the whole run takes tens of minutes on 2 CPU cores).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import subprocess
import sys
import tempfile
import time

import numpy as np

SELREL = [sys.executable, "-c", "from selrel_jax.cli import main; main()"]
SWEEP_CHILD = """
import json, resource, sys, time
from selrel_jax.sweep import run_sweep

out, limit = sys.argv[1], int(sys.argv[2])
ends = []
summary = run_sweep(out, dataset="synthetic_motion", data_seed=0, limit=limit,
                    methods=["gradient"], sigmas=[1.0], model="c3d_small_motion",
                    on_shard=lambda shard, record: ends.append(time.perf_counter()))
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
print(json.dumps({"ends": ends, "peak_mib": peak, "clips": summary["clips"]}))
"""


def _sweep_line(limit: int, batch: int = 8) -> str:
    with tempfile.TemporaryDirectory() as tmp:
        proc = subprocess.run([sys.executable, "-c", SWEEP_CHILD, f"{tmp}/sweep", str(limit)],
                              capture_output=True, text=True, check=True)  # fmt: skip
    result = json.loads(proc.stdout.splitlines()[-1])
    gaps = np.diff(result["ends"])  # seconds per shard, the first (compiling) left out
    quarter = max(1, len(gaps) // 4)
    first, last = (batch / np.mean(gaps[:quarter]), batch / np.mean(gaps[-quarter:]))
    return (f"sweep {result['clips']:>5} clips   peak RSS {result['peak_mib']:7.0f} MiB   "
            f"clips/s first quarter {first:6.2f}, last quarter {last:6.2f}")  # fmt: skip


def _video_folder(root: pathlib.Path, count: int) -> list[str]:
    """``count`` small videos in the model's class folders; every 20th is corrupt.
    Returns the corrupt ones' paths relative to ``root``."""
    from selrel_jax import data
    from selrel_jax.data import synthetic_motion

    classes = synthetic_motion.CLASS_NAMES
    rng = np.random.default_rng(0)
    corrupt = []
    for i in range(count):
        folder = root / classes[i % len(classes)]
        folder.mkdir(parents=True, exist_ok=True)
        frames = rng.integers(0, 255, (20, 64, 64, 3), dtype=np.uint8)
        path = data.write_video(folder / f"v{i:04d}.mp4", frames, fps=15)
        if i % 20 == 19:
            kind = (i // 20) % 4
            whole = path.read_bytes()
            path.write_bytes([whole[: len(whole) // 2], rng.bytes(4096), b"",
                              b"not a video\n" * 50][kind])  # fmt: skip
            corrupt.append(path.relative_to(root).as_posix())
    return corrupt


def _folder_sweep(root: pathlib.Path, out: pathlib.Path) -> tuple[int, set[str], set[str]]:
    """Sweep every split of the folder: (clips, videos in the tables, videos listed
    as failed in the manifests)."""
    from selrel_jax.sweep import read_manifest, read_table

    clips, swept, listed = 0, set(), set()
    for split in ("train", "validation", "test"):
        subprocess.run([*SELREL, "sweep", "--no-progress", "--dataset", f"folder:{root}",
                        "--split", split, "--methods", "gradient", "--sigmas", "1",
                        "--target", "predicted", "--out", str(out / split)],
                       capture_output=True, text=True, check=True)  # fmt: skip
        manifest = read_manifest(out / split)
        clips += manifest["clips"]
        listed |= {f["clip_id"].split("#")[0] for f in manifest["failed"]}
        ids = read_table(out / split).column("clip_id").to_pylist()
        swept |= {str(i).split("#")[0] for i in ids}
    return clips, swept, listed


def _folder_lines(count: int) -> list[str]:
    lines = []
    with tempfile.TemporaryDirectory() as tmp:
        root = pathlib.Path(tmp) / "videos"
        corrupt = set(_video_folder(root, count))
        start = time.perf_counter()
        clips, swept, listed = _folder_sweep(root, pathlib.Path(tmp) / "sweep")
        lines.append(f"folder sweep: {clips} videos, {len(swept)} swept, {len(listed)} listed "
                     f"as failed; the listed are exactly the corrupt ones: {listed == corrupt}; "
                     f"no corrupt one swept: {not swept & corrupt}; "
                     f"{time.perf_counter() - start:.0f} s")  # fmt: skip
        videos = sorted(str(p) for p in root.rglob("*.mp4"))
        start = time.perf_counter()
        proc = subprocess.run([*SELREL, "explain", "--no-progress", "--method", "gradient",
                               "--out", f"{tmp}/explain", *videos],
                              capture_output=True, text=True)  # fmt: skip
        named = {line.split(": ")[2] for line in proc.stderr.splitlines()
                 if line.startswith("selrel: error: ")}  # fmt: skip
        wanted = {str(root / c) for c in corrupt}
        outputs = len([n for n in os.listdir(f"{tmp}/explain") if not n.startswith(".")])
        lines.append(f"folder explain: {len(videos)} videos, {outputs} outputs, exit code "
                     f"{proc.returncode}, named exactly the {len(wanted)} corrupt ones: "
                     f"{named == wanted}; {time.perf_counter() - start:.0f} s")  # fmt: skip
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--videos", type=int, default=200)
    args = parser.parse_args()
    print(f"# {platform.machine()}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}")
    for limit in args.clips:
        print(_sweep_line(limit), flush=True)
    for line in _folder_lines(args.videos):
        print(line, flush=True)


if __name__ == "__main__":
    main()
