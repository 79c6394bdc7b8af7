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

``--zennit`` adds Zennit's EpsilonPlusFlat (PyTorch, same process, same
threads) on the same C3D: the torch model of ``tests/torch_reference_models.py``
(imported with the repo root on ``sys.path``), its weights imported into the
Flax C3D, so both explain the same network; it reports both times and how far
the two relevance maps are apart. It needs ``pip install --no-deps
zennit==0.5.1``.

``--baseline REV`` times this engine against the LRP engine of another git
revision (e.g. ``784fe69``, the module-interception engine the engine on the
traced computation replaced), side by side in one process: ``git archive
REV selrel_jax`` is unpacked into a temporary folder as package
``selrel_jax_<REV>`` (its imports renamed), both explain the same C3D with
the same weights and clips, alternating on every repeat; it prints both
medians, their ratio and how far the two maps are apart.

``--width`` and ``--clip`` thin the model and shrink the clips for a quick
smoke run: ``python bench/lrp.py --width 0.0625 --clip 16 32 32 --batches 1
--repeats 1 --no-memory`` (seconds, not a measurement).

Usage: ``python bench/lrp.py [--batches 1 8] [--repeats 3] [--no-memory]
[--memory-only] [--zennit] [--baseline REV] [--width 1.0] [--clip 16 112 112]``
"""

from __future__ import annotations

import argparse
import importlib
import io
import json
import platform
import resource
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
METHODS = ("gradient", "lrp.epsilon_plus_flat")
CLASSES = 487


def setup(batch: int, width: float = 1.0, clip: tuple[int, int, int] = (16, 112, 112)):
    import jax
    import jax.numpy as jnp
    import numpy as np

    from selrel_jax import models

    model = models.create("c3d", CLASSES, width=width, clip_size=clip)
    clip_shape = (batch, *clip, 3)
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
    target = jnp.asarray(rng.integers(0, CLASSES, batch), jnp.int32)
    return model, variables, clips, target


def compiled(model, method: str):
    import jax

    import selrel_jax as sr

    return jax.jit(sr.make_explainer(model, method))


def _max_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def worker(method: str, batch: int, width: float, clip: tuple[int, int, int]) -> None:
    """Subprocess: compile and run one method once; print the peak RSS in MiB
    above the RSS after loading the model and clips."""
    model, variables, clips, target = setup(batch, width, clip)
    loaded = _max_rss_mib()
    fn = compiled(model, method)
    fn(variables, clips, target).block_until_ready()
    print(json.dumps({"peak_mib": _max_rss_mib() - loaded}))


def peak_memory(method: str, batch: int, width: float, clip: tuple[int, int, int]) -> float:
    setting = ["--width", str(width), "--clip", *map(str, clip)]
    out = subprocess.run(
        [sys.executable, __file__, "--worker", method, "--batches", str(batch), *setting],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])["peak_mib"]


def time_batch(
    batch: int, repeats: int, width: float, clip: tuple[int, int, int]
) -> tuple[dict[str, list[float]], dict[str, float]]:
    import jax

    model, variables, clips, target = setup(batch, width, clip)
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


def zennit_batch(batch: int, repeats: int, width: float, clip: tuple[int, int, int]) -> dict:
    """Zennit's EpsilonPlusFlat on the torch reference C3D against this library's
    LRP on the same weights: median seconds of each and their disagreement."""
    import jax.numpy as jnp
    import numpy as np
    import torch

    from selrel_jax import models

    sys.path.insert(0, str(ROOT))  # the torch reference models live with the tests
    from tests.torch_reference_models import build, import_zennit

    zennit = import_zennit()
    net = build("c3d", CLASSES, width, clip)
    model, variables = models.from_torch_state_dict("c3d", net.state_dict(), clip_size=clip)
    rng = np.random.default_rng(0)
    clips = rng.standard_normal((batch, *clip, 3), np.float32)
    target = rng.integers(0, CLASSES, batch)
    ours = compiled(model, "lrp.epsilon_plus_flat")
    x = torch.from_numpy(clips.transpose(0, 4, 1, 2, 3).copy())
    seed = torch.eye(CLASSES)[torch.from_numpy(target)]

    def run_ours():
        return np.asarray(ours(variables, jnp.asarray(clips), jnp.asarray(target)))

    def run_zennit():
        with zennit.Gradient(model=net, composite=zennit.composites.EpsilonPlusFlat()) as attr:
            _, rel = attr(x.clone().requires_grad_(True), seed)
        return rel.detach().numpy().transpose(0, 2, 3, 4, 1)

    runs = {"jax": run_ours, "zennit": run_zennit}
    results = {name: fn() for name, fn in runs.items()}  # compile + warm up
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, fn in runs.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    ours_rel, theirs = results["jax"], results["zennit"]
    return {
        "jax": statistics.median(times["jax"]),
        "zennit": statistics.median(times["zennit"]),
        "diff": float(np.abs(ours_rel - theirs).max() / np.abs(theirs).max()),
    }


def print_zennit(batches: list[int], repeats: int, width: float, clip) -> None:
    print("| batch | LRP epsilon_plus_flat, selrel_jax (s) | Zennit EpsilonPlusFlat (s) "
          "| Zennit / selrel_jax | max abs diff / max abs R |")  # fmt: skip
    print("|---|---|---|---|---|")
    for batch in batches:
        r = zennit_batch(batch, repeats, width, clip)
        print(f"| {batch} | {r['jax']:.2f} | {r['zennit']:.2f} | {r['zennit'] / r['jax']:.2f}x "
              f"| {r['diff']:.1e} |", flush=True)  # fmt: skip


def print_table(args: argparse.Namespace, clip: tuple[int, int, int]) -> None:
    print("| batch | forward (s) | gradient (s) | LRP epsilon_plus_flat (s) | LRP / gradient "
          "| peak RSS gradient (MiB) | peak RSS LRP (MiB) | XLA temp gradient (MiB) "
          "| XLA temp LRP (MiB) |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|")
    for batch in args.batches:
        if args.memory_only:
            mem = {m: peak_memory(m, batch, args.width, clip) for m in METHODS}
            print(f"| {batch} | peak RSS gradient {mem['gradient']:.0f} MiB "
                  f"| LRP {mem['lrp.epsilon_plus_flat']:.0f} MiB |", flush=True)  # fmt: skip
            continue
        times, temp = time_batch(batch, args.repeats, args.width, clip)
        med = {k: statistics.median(v) for k, v in times.items()}
        if args.no_memory:
            mem = {m: float("nan") for m in METHODS}
        else:
            mem = {m: peak_memory(m, batch, args.width, clip) for m in METHODS}
        lrp, grad = med["lrp.epsilon_plus_flat"], med["gradient"]
        mem_grad, mem_lrp = mem["gradient"], mem["lrp.epsilon_plus_flat"]
        print(f"| {batch} | {med['forward']:.2f} | {grad:.2f} | {lrp:.2f} | {lrp / grad:.2f}x "
              f"| {mem_grad:.0f} | {mem_lrp:.0f} | {temp['gradient']:.0f} "
              f"| {temp['lrp.epsilon_plus_flat']:.0f} |", flush=True)  # fmt: skip
        print(f"#   raw: {json.dumps({k: [round(t, 3) for t in v] for k, v in times.items()})}",
              flush=True)  # fmt: skip


def baseline_package(rev: str):
    """``selrel_jax`` as of git revision ``rev``, imported as ``selrel_jax_<rev>``."""
    name = f"selrel_jax_{rev}"
    if name in sys.modules:
        return sys.modules[name]
    archive = subprocess.run(["git", "archive", rev, "selrel_jax"], cwd=ROOT,
                             capture_output=True, check=True).stdout  # fmt: skip
    folder = Path(tempfile.mkdtemp(prefix="selrel_baseline_"))
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(folder, filter="data")
    (folder / "selrel_jax").rename(folder / name)
    for path in (folder / name).rglob("*.py"):
        path.write_text(path.read_text().replace("selrel_jax", name))
    sys.path.insert(0, str(folder))
    importlib.import_module(f"{name}.models")
    return importlib.import_module(name)


def baseline_batch(batch: int, repeats: int, width: float, clip, rev: str) -> dict:
    """Median seconds of LRP epsilon_plus_flat by this engine and by ``rev``'s on
    the same C3D, weights and clips, and the largest difference of their maps."""
    import jax
    import numpy as np

    import selrel_jax as sr

    old = baseline_package(rev)
    model, variables, clips, target = setup(batch, width, clip)
    old_model = old.models.create("c3d", CLASSES, width=width, clip_size=clip)
    method = "lrp.epsilon_plus_flat"
    fns = {"baseline": jax.jit(old.make_explainer(old_model, method)),
           "engine": jax.jit(sr.make_explainer(model, method))}  # fmt: skip
    maps = {name: np.asarray(fn(variables, clips, target)) for name, fn in fns.items()}
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn(variables, clips, target).block_until_ready()
            times[name].append(time.perf_counter() - start)
    scale = np.abs(maps["baseline"]).max()
    return {**{k: statistics.median(v) for k, v in times.items()},
            "diff": float(np.abs(maps["engine"] - maps["baseline"]).max() / scale),
            "raw": {k: [round(t, 3) for t in v] for k, v in times.items()}}  # fmt: skip


def print_baseline(batches: list[int], repeats: int, width: float, clip, rev: str) -> None:
    print(f"| batch | LRP epsilon_plus_flat, engine of {rev} (s) | this engine (s) "
          f"| this / {rev} | max abs diff / max abs R |")  # fmt: skip
    print("|---|---|---|---|---|")
    for batch in batches:
        r = baseline_batch(batch, repeats, width, clip, rev)
        print(f"| {batch} | {r['baseline']:.3f} | {r['engine']:.3f} "
              f"| {r['engine'] / r['baseline']:.3f}x | {r['diff']:.1e} |", flush=True)  # fmt: skip
        print(f"#   raw: {json.dumps(r['raw'])}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-memory", action="store_true")
    parser.add_argument("--memory-only", action="store_true")
    parser.add_argument("--zennit", action="store_true",
                        help="also time Zennit's EpsilonPlusFlat on the same C3D")  # fmt: skip
    parser.add_argument("--baseline", metavar="REV",
                        help="time against the LRP engine of git revision REV instead")  # fmt: skip
    parser.add_argument("--width", type=float, default=1.0, help="channel multiplier")
    parser.add_argument("--clip", type=int, nargs=3, default=[16, 112, 112],
                        metavar=("T", "H", "W"))  # fmt: skip
    parser.add_argument("--worker", choices=METHODS)
    args = parser.parse_args()
    clip = tuple(args.clip)
    if args.worker:
        worker(args.worker, args.batches[0], args.width, clip)
        return

    import jax

    print(f"# C3D ({CLASSES} classes, width {args.width}), clips (N, {', '.join(map(str, clip))}"
          f", 3), jax {jax.__version__}, {platform.processor() or platform.machine()}, "
          f"devices: {jax.devices()}")  # fmt: skip
    if args.baseline:
        print(f"# medians of {args.repeats} alternating repeats after warm-up")
        print_baseline(args.batches, args.repeats, args.width, clip, args.baseline)
        return
    print(f"# medians of {args.repeats} alternating repeats after warm-up; peak RSS = growth "
          "of max RSS over model + clips loaded (compile + one run)")  # fmt: skip
    print_table(args, clip)
    if args.zennit:
        print_zennit(args.batches, args.repeats, args.width, clip)


if __name__ == "__main__":
    main()
