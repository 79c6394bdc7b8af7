"""Selective relevance throughput: jit+vmap vs a NumPy/SciPy loop vs one memory pass.

A batch of N clips of T x H x W x C float32 relevance. Three timings, measured
side by side in one process with alternating repeats (medians reported):

* ``selective``: ``selrel_jax.selective_relevance`` (jit-compiled, vmapped);
* ``one pass``: a jit-compiled ``x * 2`` over the same array, the memory-bound
  limit of any elementwise transform that reads and writes the batch once;
* ``numpy loop``: the same formulation clip by clip with NumPy and SciPy
  (``scipy.ndimage.correlate`` with the 3x3x3 kernel, float32).

Usage: ``python bench/selective.py [--batch 32] [--repeats 7]``
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import jax
import numpy as np
from scipy import ndimage

import selrel_jax as sr

_PLANE = np.array([[1, 2, 1], [2, 4, 2], [1, 2, 1]], np.float32)
_KERNEL = np.stack([_PLANE, np.zeros((3, 3), np.float32), -_PLANE])


def numpy_selective(batch: np.ndarray, sigma: float) -> np.ndarray:
    out = np.empty_like(batch)
    for i, clip in enumerate(batch):
        g = np.abs(ndimage.correlate(clip.sum(-1), _KERNEL, mode="constant"))
        mask = g > sigma * g.std(ddof=1)
        out[i] = clip * mask[..., None]
    return out


def timed(fn, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--size", type=int, default=112)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--sigma", type=float, default=1.0)
    args = parser.parse_args()

    shape = (args.batch, args.frames, args.size, args.size, 3)
    host = np.random.default_rng(0).standard_normal(shape, dtype=np.float32)
    x = jax.device_put(host)
    gigabytes = host.nbytes / 1e9

    selective = jax.jit(lambda x: sr.selective_relevance(x, args.sigma))
    one_pass = jax.jit(lambda x: x * 2)
    jax.block_until_ready(selective(x))
    jax.block_until_ready(one_pass(x))

    agree = np.mean(np.asarray(selective(x))[:2] == numpy_selective(host[:2], args.sigma))
    assert agree > 0.999, f"JAX and NumPy selections disagree on {1 - agree:.2%} of voxels"

    runs = {"selective (jit+vmap)": [], "one pass x*2 (jit)": []}
    for _ in range(args.repeats):  # alternate so load changes hit both alike
        runs["selective (jit+vmap)"] += timed(lambda: selective(x), 1)
        runs["one pass x*2 (jit)"] += timed(lambda: one_pass(x), 1)
    runs["numpy/scipy loop"] = timed(lambda: numpy_selective(host, args.sigma), 2)

    base = statistics.median(runs["one pass x*2 (jit)"])
    print(
        f"batch {shape} float32 ({gigabytes:.2f} GB), sigma={args.sigma}, "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"jax {jax.__version__} on {jax.devices()[0].platform}"
    )
    print(f"| {'method':<22} | {'median s':>9} | {'clips/s':>8} | {'x one pass':>10} |")
    print(f"|{'-' * 24}|{'-' * 11}|{'-' * 10}|{'-' * 12}|")
    for name, times in runs.items():
        t = statistics.median(times)
        print(f"| {name:<22} | {t:9.3f} | {args.batch / t:8.1f} | {t / base:10.2f} |")
    ratio = statistics.median(runs["selective (jit+vmap)"]) / base
    print(f"target: selective <= 3x one pass -> {ratio:.2f}x ({'met' if ratio <= 3 else 'MISSED'})")


if __name__ == "__main__":
    main()
