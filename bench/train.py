"""Training-step throughput of c3d_small on synthetic_motion clips, plain and with a strided conv1.

One full jit-compiled step of ``selrel_jax.train`` (normalise, forward, backward,
clipping, AdamW) on a batch of uint8 clips, for each model variant, measured
side by side in one process with alternating repeats (medians reported), so a
shared or busy CPU slows every variant alike. The shipped checkpoints use
``stem_stride=(1, 2, 2)``.

Usage: ``python bench/train.py [--batch 8] [--repeats 5] [--clip 16 48 48]``
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import jax
import numpy as np

from selrel_jax import models
from selrel_jax.train import TrainConfig, _init_state, _train_step_fn, make_optimizer

VARIANTS = {
    "c3d_small": {},
    "c3d_small stem_stride=(1,2,2)": {"stem_stride": (1, 2, 2)},
    "c3d_small channels=(8,16,32,64)": {"channels": (8, 16, 32, 64)},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--clip", type=int, nargs=3, default=(16, 48, 48), metavar=("T", "H", "W"))
    args = parser.parse_args()
    t, h, w = args.clip
    info = models.ModelInfo.for_arch("c3d_small", 6, clip_length=t, crop_size=(h, w))
    rng = np.random.default_rng(0)
    video = rng.integers(0, 256, (args.batch, t, h, w, 3), dtype=np.uint8)
    label = rng.integers(0, 6, args.batch).astype(np.int32)
    tx = make_optimizer(TrainConfig(epochs=1), 100)

    steps, states, times = {}, {}, {}
    for name, kw in VARIANTS.items():
        model = models.create("c3d_small", 6, clip_size=(t, h, w), **kw)
        steps[name] = _train_step_fn(model, tx, info)
        states[name] = jax.block_until_ready(
            steps[name](_init_state(model, tx, (t, h, w, 3), 0), video, label)
        )  # compiled and warmed up
        times[name] = []
    for _ in range(args.repeats):
        for name in VARIANTS:
            start = time.perf_counter()
            states[name] = jax.block_until_ready(steps[name](states[name], video, label))
            times[name].append(time.perf_counter() - start)

    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.1f}, batch {args.batch} of {t}x{h}x{w}")  # fmt: skip
    print(f"| variant | s/step (median of {args.repeats}) | clips/s | vs c3d_small |")
    print("|---|---|---|---|")
    base = statistics.median(times["c3d_small"])
    for name, ts in times.items():
        m = statistics.median(ts)
        print(f"| {name} | {m:.3f} | {args.batch / m:.1f} | {base / m:.2f}x |")


if __name__ == "__main__":
    main()
