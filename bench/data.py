"""Data throughput: synthetic_motion generation, TFDS build, and the grain loader.

Prints one table row per measurement (median of ``--repeats`` runs where cheap):

* ``generate <config>``: ``synthetic_motion.generate_split`` in this process, clips/s;
* ``build tiny``: ``download_and_prepare`` of the tiny config into a temporary dir;
* ``read tfds``: random access to the built array_record source, clips/s;
* ``loader workers=k``: ``make_loader`` over generated default clips (batch 32,
  normalised float32), clips/s, including worker start-up for k > 0.

Usage: ``python bench/data.py [--clips 300] [--repeats 3]``
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time

import numpy as np

from selrel_jax import data
from selrel_jax.data import synthetic_motion as sm


def _median_rate(fn, count: int, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return count / statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    n, r = args.clips, args.repeats
    print(
        f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"load {os.getloadavg()[0]:.1f}"
    )
    print(f"{'measurement':<24}{'value':>12}  unit")
    for config in ("tiny", "default"):
        rate = _median_rate(lambda c=config: sm.generate_split(c, "train", 0, n), n, r)
        print(f"{'generate ' + config:<24}{rate:>12.1f}  clips/s")
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        data.synthetic_motion_builder("tiny", tmp).download_and_prepare()
        print(f"{'build tiny (84 clips)':<24}{time.perf_counter() - start:>12.2f}  s")
        source = data.load_source("synthetic_motion/tiny", "train", data_dir=tmp)
        rate = _median_rate(lambda: [source[i] for i in range(len(source))], len(source), r)
        print(f"{'read tfds (tiny)':<24}{rate:>12.1f}  clips/s")
    arrays = sm.generate_split("default", "train", 0, n)
    for workers in (0, 2):

        def run(w=workers):
            for batch in data.make_loader(
                arrays, batch_size=32, seed=0, mean=0.45, std=0.225, worker_count=w
            ):
                np.asarray(batch["video"])

        rate = _median_rate(run, n, r)
        print(f"{f'loader workers={workers}':<24}{rate:>12.1f}  clips/s")


if __name__ == "__main__":
    main()
