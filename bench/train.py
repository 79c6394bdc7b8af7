"""Training-step throughput of c3d_small on synthetic_motion clips: plain, with a strided conv1,
thinner, and fine-tuning only the head of a frozen backbone.

One full jit-compiled ``selrel_jax.train.train_step`` (normalise, forward, backward,
clipping, AdamW) on a batch of uint8 clips, for each variant, measured side by
side in one process with alternating repeats (medians reported), so a shared or
busy CPU slows every variant alike. The shipped checkpoints use
``stem_stride=(1, 2, 2)``; the head-only variant is ``selrel train --init-from
... --freeze-backbone`` (the backbone in inference mode, no gradient for it).

Usage: ``python bench/train.py [--batch 8] [--repeats 5] [--clip 16 48 48]``
"""

from __future__ import annotations

import argparse
import functools
import os
import platform
import statistics
import time

import jax
import numpy as np

from selrel_jax import models
from selrel_jax.train import TrainConfig, create_train_state, normalizer, train_step

# name -> (models.create keywords, head only)
VARIANTS = {
    "c3d_small": ({}, False),
    "c3d_small stem_stride=(1,2,2)": ({"stem_stride": (1, 2, 2)}, False),
    "c3d_small channels=(8,16,32,64)": ({"channels": (8, 16, 32, 64)}, False),
    "c3d_small stem_stride=(1,2,2), head only": ({"stem_stride": (1, 2, 2)}, True),
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
    step_fn = jax.jit(functools.partial(train_step, prepare=normalizer(info)))

    states, times = {}, {}
    for name, (kw, head_only) in VARIANTS.items():
        model = models.create("c3d_small", 6, clip_size=(t, h, w), **kw)
        # a head-only fine-tune starts from given variables: here the model's own init
        config = TrainConfig(epochs=1)
        init = create_train_state(model, info, config, 100).variables if head_only else None
        config = TrainConfig(epochs=1, freeze_backbone=head_only)
        state = create_train_state(model, info, config, 100, init_variables=init)
        states[name] = jax.block_until_ready(step_fn(state, video, label))  # compiled, warm
        times[name] = []
    for _ in range(args.repeats):
        for name in VARIANTS:
            start = time.perf_counter()
            states[name] = jax.block_until_ready(step_fn(states[name], video, label))
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
