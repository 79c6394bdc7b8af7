"""LRP (epsilon_plus_flat) vs the model's own input gradient on a full-size C3D.

Both are jit-compiled pure functions of (variables, clips, target) from
``selrel_jax.make_explainer``; timings are taken in one process, side by side,
alternating the two methods on every repeat, and reported as medians. Peak
memory is the growth of the maximum resident set size (``ru_maxrss``) of a
fresh subprocess from after loading the model (random weights, 78M
parameters) and clips to after compiling and running one method once. "XLA
temp" is the compiled function's own buffer plan
(``memory_analysis().temp_size_in_bytes``: intermediates beyond arguments and
outputs). Takes 10-15 minutes on a busy 2-core CPU.

Usage: ``python bench/lrp.py [--batches 1 8] [--repeats 3] [--no-memory]``
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import time

METHODS = ("gradient", "lrp.epsilon_plus_flat")


def setup(batch: int):
    import jax
    import jax.numpy as jnp
    import numpy as np

    from selrel_jax import models

    model = models.create("c3d", 487)
    clip_shape = (batch, 16, 112, 112, 3)
    abstract = jax.eval_shape(
        lambda c: model.init(jax.random.key(0), c), jax.ShapeDtypeStruct(clip_shape, jnp.float32)
    )
    rng = np.random.default_rng(0)

    def fill(path, leaf):  # He-scaled random weights, small biases
        if path[-1].key == "kernel":
            fan_in = np.prod(leaf.shape[:-1])
            return jnp.asarray(rng.standard_normal(leaf.shape, np.float32) * np.sqrt(2 / fan_in))
        return jnp.asarray(0.01 * rng.standard_normal(leaf.shape, np.float32))

    variables = jax.tree_util.tree_map_with_path(fill, abstract)
    clips = jnp.asarray(rng.standard_normal(clip_shape, np.float32))
    target = jnp.asarray(rng.integers(0, 487, batch), jnp.int32)
    return model, variables, clips, target


def compiled(model, method: str):
    import jax

    import selrel_jax as sr

    return jax.jit(sr.make_explainer(model, method))


def _max_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def worker(method: str, batch: int) -> None:
    """Subprocess: compile and run one method once; print the peak RSS in MiB
    above the RSS after loading the model and clips."""
    model, variables, clips, target = setup(batch)
    loaded = _max_rss_mib()
    fn = compiled(model, method)
    fn(variables, clips, target).block_until_ready()
    print(json.dumps({"peak_mib": _max_rss_mib() - loaded}))


def peak_memory(method: str, batch: int) -> float:
    out = subprocess.run(
        [sys.executable, __file__, "--worker", method, "--batches", str(batch)],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])["peak_mib"]


def time_batch(batch: int, repeats: int) -> tuple[dict[str, list[float]], dict[str, float]]:
    import jax

    model, variables, clips, target = setup(batch)
    forward = jax.jit(lambda v, c: model.apply(v, c))
    fns = {"forward": forward, **{m: compiled(model, m) for m in METHODS}}

    def run(name):
        if name == "forward":
            return fns[name](variables, clips).block_until_ready()
        return fns[name](variables, clips, target).block_until_ready()

    temp = {}
    for name in METHODS:  # XLA's buffer plan: temporaries beyond arguments and outputs
        analysis = fns[name].lower(variables, clips, target).compile().memory_analysis()
        temp[name] = getattr(analysis, "temp_size_in_bytes", float("nan")) / 2**20
    for name in fns:  # compile + warm up
        run(name)
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name in fns:
            start = time.perf_counter()
            run(name)
            times[name].append(time.perf_counter() - start)
    return times, temp


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-memory", action="store_true")
    parser.add_argument("--memory-only", action="store_true")
    parser.add_argument("--worker", choices=METHODS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.batches[0])
        return

    import jax

    print(f"# C3D (487 classes), clips (N, 16, 112, 112, 3), jax {jax.__version__}, "
          f"{platform.processor() or platform.machine()}, devices: {jax.devices()}")  # fmt: skip
    print(f"# medians of {args.repeats} alternating repeats after warm-up; peak RSS = growth "
          "of max RSS over model + clips loaded (compile + one run)")  # fmt: skip
    print("| batch | forward (s) | gradient (s) | LRP epsilon_plus_flat (s) | LRP / gradient "
          "| peak RSS gradient (MiB) | peak RSS LRP (MiB) | XLA temp gradient (MiB) "
          "| XLA temp LRP (MiB) |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|")
    for batch in args.batches:
        if args.memory_only:
            mem = {m: peak_memory(m, batch) for m in METHODS}
            print(f"| {batch} | peak RSS gradient {mem['gradient']:.0f} MiB "
                  f"| LRP {mem['lrp.epsilon_plus_flat']:.0f} MiB |", flush=True)  # fmt: skip
            continue
        times, temp = time_batch(batch, args.repeats)
        med = {k: statistics.median(v) for k, v in times.items()}
        if args.no_memory:
            mem = {m: float("nan") for m in METHODS}
        else:
            mem = {m: peak_memory(m, batch) for m in METHODS}
        lrp, grad = med["lrp.epsilon_plus_flat"], med["gradient"]
        mem_grad, mem_lrp = mem["gradient"], mem["lrp.epsilon_plus_flat"]
        print(f"| {batch} | {med['forward']:.2f} | {grad:.2f} | {lrp:.2f} | {lrp / grad:.2f}x "
              f"| {mem_grad:.0f} | {mem_lrp:.0f} | {temp['gradient']:.0f} "
              f"| {temp['lrp.epsilon_plus_flat']:.0f} |", flush=True)  # fmt: skip
        print(f"#   raw: {json.dumps({k: [round(t, 3) for t in v] for k, v in times.items()})}",
              flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
