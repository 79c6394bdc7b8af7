"""The CPU benchmark suite of issue 12: selrel_jax against its peers, side by side.

Every comparison runs in one process, its sides alternating on every repeat
after a warm-up (compilation), and reports medians with min-max; peak memory
is measured in fresh subprocesses. The library is measured as a user gets it:
``jax.jit(selrel_jax.make_explainer(model, method))`` with its defaults.

* ``lrp``: LRP epsilon_plus_flat and the plain input gradient against Zennit
  0.5.1's EpsilonPlusFlat on the same weights: the torch model is
  ``tests/torch_reference_models.py``'s (built in ``torch.nn``; R3D-18 with
  Zennit's ``Sum`` on the residual additions and its BatchNorm canonizer),
  converted with ``selrel_jax.models.from_torch_state_dict``. C3D at 16x112x112
  (full size in quick mode too) and R3D-18; the cosine of the two relevance
  maps is reported. Zennit imports torchvision, which cannot be imported beside
  the CPU torch wheel here: ``import_zennit()`` of the same file provides a
  minimal stand-in for ``torchvision.models.resnet``.
* ``selective``: ``selective_relevance`` (jit+vmap) against the authors'
  formulation, pinned as: per clip, a torch ``conv3d`` with one output channel
  whose 3x3x3 temporal Sobel kernel is replicated over the 3 input channels
  (padding 1), ``abs``, unbiased std over the clip, mask ``> sigma * std``,
  multiply; torch with 2 threads; and against one jit-compiled elementwise
  pass (``x * 2``); batch 32 x 16x112x112x3 float32. In a fresh process of
  its own (the reference's time is mostly page faults, so it depended on what
  ran before it), and again with glibc keeping its heap (``KEPT_HEAP``): the
  key ``selective_speedup_over_reference_kept_heap``.
* ``sweep``: a sweep's per-batch computation (explain + select at 4 sigmas +
  metrics, faithfulness off: ``selrel_jax.sweep``'s own function) against
  explain alone, c3d_small at 16x64x64, batch 8.
* ``rss``: peak RSS growth of one LRP pass (C3D, batch 1, compile included)
  over the RSS after loading models and clips and handing the heap that loading
  freed back to the OS (``malloc_trim``, glibc; the peak is reset there through
  ``/proc/self/clear_refs``, Linux), selrel_jax vs Zennit, each side in 3
  (quick) or 5 fresh subprocesses, alternating; the ratio of the medians.

Writes one flat JSON object (a contract; keys below are ratios, null with a
``<key>_why`` string where not measured) plus the medians and details under
other keys. ``--quick`` (under 10 minutes on 2 cores): C3D at batch 1 and 4,
R3D-18 at batch 1, fewer repeats; the full run adds C3D at batch 8.

* ``vit``: ``lrp.attn`` on the tiny video ViT at batch 1 against its input gradient
  and against lxt 2.1's AttnLRP on the PyTorch twin (``bench/lrp_vit.py``).

Usage: ``python bench/run_all.py [--quick] [--json OUT.json] [--only lrp selective sweep rss vit]``
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # tests.torch_reference_models: one file for tests and bench
CLASSES = {"c3d": 487, "r3d_18": 400}
CLIP = (16, 112, 112)
METHOD = "lrp.epsilon_plus_flat"
KEYS = (
    "lrp_over_zennit_c3d_b1",
    "lrp_over_zennit_c3d_b4",
    "lrp_over_zennit_c3d_b8",
    "lrp_over_zennit_r3d18_b1",
    "lrp_over_gradient_c3d_b1",
    "selective_speedup_over_reference",
    "selective_over_one_pass",
    "sweep_over_explain",
    "rss_over_zennit",
    "lrp_over_gradient_vit_b1",
    "lrp_over_lxt_vit_b1",
)


# --------------------------------------------------------------------------
# Timing.


def alternate(calls: dict[str, Callable[[], object]], repeats: int) -> dict[str, dict]:
    """Warm every call up once, then time ``repeats`` rounds, the calls alternating
    within each round (load changes hit every side alike) in an order shuffled per
    round (seeded): a call that always ran after the same one would carry that one's
    after-effects, such as torch's freed memory faulting back in. Median, min, max (s)."""
    for call in calls.values():
        call()
    times: dict[str, list[float]] = {name: [] for name in calls}
    order, shuffle = list(calls), random.Random(0).shuffle
    for _ in range(repeats):
        shuffle(order)
        for name in order:
            call = calls[name]
            start = time.perf_counter()
            call()
            times[name].append(time.perf_counter() - start)
    return {name: {"median": statistics.median(t), "min": min(t), "max": max(t)}
            for name, t in times.items()}  # fmt: skip


def _cosine(a, b) -> float:
    import numpy as np

    a, b = np.ravel(a).astype(np.float64), np.ravel(b).astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


# --------------------------------------------------------------------------
# LRP and gradient vs Zennit.


def peers(arch: str, batch: int, seed: int = 0):
    """The torch model, its conversion, clips (NTHWC numpy) and targets."""
    import numpy as np

    from selrel_jax import models
    from tests.torch_reference_models import build, import_zennit

    zennit = import_zennit()
    residual = zennit.Sum if arch != "c3d" else None
    net = build(arch, CLASSES[arch], 1.0, CLIP, seed=seed, residual_sum=residual)
    options = {"clip_size": CLIP} if arch == "c3d" else {}
    model, variables = models.from_torch_state_dict(arch, net.state_dict(), **options)
    rng = np.random.default_rng(seed)
    clips = rng.standard_normal((batch, *CLIP, 3)).astype(np.float32)
    target = rng.integers(0, CLASSES[arch], batch)
    return zennit, net, model, variables, clips, target


def zennit_call(zennit, net, arch: str, clips, target) -> Callable[[], object]:
    """Zennit's EpsilonPlusFlat relevance (NTHWC numpy) of ``net``."""
    import torch

    canonizers = [zennit.SequentialMergeBatchNorm()] if arch != "c3d" else []
    composite = zennit.composites.EpsilonPlusFlat(canonizers=canonizers)
    x = torch.from_numpy(clips.transpose(0, 4, 1, 2, 3).copy())
    seed = torch.eye(CLASSES[arch])[torch.from_numpy(target)]

    def run():
        with zennit.Gradient(model=net, composite=composite) as attributor:
            _, relevance = attributor(x.clone().requires_grad_(True), seed)
        return relevance.detach().numpy().transpose(0, 2, 3, 4, 1)

    return run


def jax_call(model, method: str, variables, clips, target) -> Callable[[], object]:
    import jax
    import jax.numpy as jnp
    import numpy as np

    import selrel_jax as sr

    fn = jax.jit(sr.make_explainer(model, method))
    x, t = jnp.asarray(clips), jnp.asarray(target, jnp.int32)
    return lambda: np.asarray(fn(variables, x, t))


def lrp_vs_zennit(arch: str, batch: int, repeats: int, gradient: bool = False) -> dict:
    """Timings of selrel_jax's LRP (and input gradient) and Zennit's, and the
    cosine of the two LRP maps."""
    zennit, net, model, variables, clips, target = peers(arch, batch)
    calls = {"lrp": jax_call(model, METHOD, variables, clips, target),
             "zennit": zennit_call(zennit, net, arch, clips, target)}  # fmt: skip
    if gradient:
        calls["gradient"] = jax_call(model, "gradient", variables, clips, target)
    cosine = _cosine(calls["lrp"](), calls["zennit"]())
    times = alternate(calls, repeats)
    return {"times": times, "cosine": cosine}


# --------------------------------------------------------------------------
# Selective relevance vs the authors' formulation.


def reference_selective(batch, sigma: float) -> list:
    """The pinned authors' formulation, per clip (torch, NCTHW clips)."""
    import torch

    plane = torch.tensor([[1.0, 2, 1], [2, 4, 2], [1, 2, 1]])
    sobel = torch.stack([plane, torch.zeros(3, 3), -plane])
    kernel = sobel.expand(1, 3, 3, 3, 3).contiguous()
    out = []
    for clip in batch:  # (1, 3, T, H, W)
        gradient = torch.nn.functional.conv3d(clip, kernel, padding=1).abs()
        mask = gradient > sigma * gradient.std(correction=1)
        out.append(clip * mask)
    return out


def selective(repeats: int, batch: int = 32, sigma: float = 1.0) -> dict:
    import jax
    import numpy as np
    import torch

    import selrel_jax as sr

    torch.set_num_threads(2)
    host = np.random.default_rng(0).standard_normal((batch, *CLIP, 3), np.float32)
    x = jax.device_put(host)
    clips = [torch.from_numpy(c.transpose(3, 0, 1, 2)[None].copy()) for c in host]
    ours = jax.jit(lambda v: sr.selective_relevance(v, sigma))
    one_pass = jax.jit(lambda v: v * 2)
    theirs = reference_selective(clips[:2], sigma)
    mine = np.asarray(ours(x))[:2]
    agree = float(np.mean([np.mean((m != 0) == (t[0].numpy().transpose(1, 2, 3, 0) != 0))
                           for m, t in zip(mine, theirs, strict=True)]))  # fmt: skip
    calls = {
        "selective": lambda: ours(x).block_until_ready(),
        "one_pass": lambda: one_pass(x).block_until_ready(),
        "reference": lambda: reference_selective(clips, sigma),
    }
    times = alternate(calls, repeats)
    return {"times": times, "mask_agreement": agree}


def _worker(*args: str, env: dict[str, str] | None = None) -> dict:
    """Run this script with ``args`` in a fresh process (``env`` added to this one's)
    and return the JSON object its last line prints."""
    done = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True,
                          check=True, env={**os.environ, **(env or {})})  # fmt: skip
    return json.loads(done.stdout.strip().splitlines()[-1])


#: glibc settings under which the reference's per-clip temporaries stay in the heap
#: between calls instead of being mapped and unmapped (page faults) every time.
KEPT_HEAP = {"MALLOC_MMAP_THRESHOLD_": "67108864", "MALLOC_TRIM_THRESHOLD_": "134217728"}


def selective_in_fresh_processes(repeats: int) -> dict:
    """:func:`selective` in a fresh process with glibc's defaults, then in one with
    :data:`KEPT_HEAP`. The reference's time is mostly page faults (about 510,000 per
    call of 32 clips from a fresh process, none once glibc keeps its memory): in the
    suite's own process it depended on which benchmarks had run before."""
    runs = {name: _worker("--selective-worker", str(repeats), env=env)
            for name, env in (("default", {}), ("kept_heap", KEPT_HEAP))}  # fmt: skip
    result = runs["default"]
    result["times"]["reference_kept_heap"] = runs["kept_heap"]["times"]["reference"]
    result["times"]["selective_kept_heap"] = runs["kept_heap"]["times"]["selective"]
    return result


# --------------------------------------------------------------------------
# Sweep computation vs explain alone.


def sweep(repeats: int, batch: int = 8) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np

    import selrel_jax as sr
    from selrel_jax import models
    from selrel_jax.sweep import SweepSettings
    from selrel_jax.sweep._compute import method_function

    clip = (16, 64, 64)
    model = models.create("c3d_small", 10, clip_size=clip)
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((batch, *clip, 3)), jnp.float32)
    variables = model.init(jax.random.key(0), x)
    target = jnp.asarray(rng.integers(0, 10, batch), jnp.int32)
    truth = {"mask": jnp.asarray(rng.random((batch, *clip)) < 0.1),
             "static_mask": jnp.asarray(rng.random((batch, *clip)) < 0.1),
             "boxes": jnp.asarray(rng.random((batch, clip[0], 4)), jnp.float32)}  # fmt: skip
    settings = SweepSettings(dataset="synthetic_motion", batch_size=batch)
    sigmas = jnp.asarray(settings.sigmas, jnp.float32)
    full = jax.jit(method_function(model, METHOD, {}, settings))
    alone = jax.jit(sr.make_explainer(model, METHOD))
    times = alternate(
        {"sweep": lambda: jax.block_until_ready(full(variables, x, target, truth, sigmas)),
         "explain": lambda: alone(variables, x, target).block_until_ready()}, repeats
    )  # fmt: skip
    return {"times": times}


# --------------------------------------------------------------------------
# Peak memory in fresh subprocesses.


def _status_mib(field: str) -> float:
    """``VmRSS`` (now) or ``VmHWM`` (peak since the last reset) of this process."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def rss_worker(side: str) -> None:
    """Subprocess: load both peers' C3D and the clips, reset the peak RSS to the
    RSS now (so loading's own transient peak does not count), run ``side`` once
    (compilation included), print the peak's growth in MiB."""
    zennit, net, model, variables, clips, target = peers("c3d", 1)
    call = (jax_call(model, METHOD, variables, clips, target) if side == "jax"
            else zennit_call(zennit, net, "c3d", clips, target))  # fmt: skip
    # Hand the heap that loading freed back to the OS first: each side's call would
    # otherwise reuse a different, arbitrary amount of it without growing the RSS
    # (Zennit's growth moved between 252 and 476 MiB across runs without this).
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    loaded = _status_mib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # Linux: VmHWM := VmRSS
    call()
    print(json.dumps({"peak_mib": _status_mib("VmHWM") - loaded}))


def rss(repeats: int) -> dict:
    """Peak RSS growth (MiB) of each side, ``repeats`` fresh subprocesses each, the
    sides alternating: median, min, max (one process's figure moves by up to 140 MiB)."""
    peaks: dict[str, list[float]] = {"jax": [], "zennit": []}
    for _ in range(repeats):
        for side, found in peaks.items():
            found.append(_worker("--rss-worker", side)["peak_mib"])
    return {side: {"median": statistics.median(p), "min": min(p), "max": max(p)}
            for side, p in peaks.items()}  # fmt: skip


# --------------------------------------------------------------------------
# The suite.


def _ratio(result: dict, key: str, mine: str, theirs: str, invert: bool = False) -> None:
    times = result["times"]
    ratio = times[mine]["median"] / times[theirs]["median"]
    result.setdefault("ratios", {})[key] = 1 / ratio if invert else ratio


def run_lrp(quick: bool, table: dict) -> None:
    """The LRP rows (C3D b1 with the gradient, b4, b8 in the full run, R3D-18 b1)."""
    cases = [("c3d", 1, 3 if quick else 5), ("c3d", 4, 2 if quick else 3)]
    if not quick:
        cases.append(("c3d", 8, 3))
    cases.append(("r3d_18", 1, 3 if quick else 5))
    for arch, batch, repeats in cases:
        name = f"{arch.replace('_', '')}_b{batch}"
        result = lrp_vs_zennit(arch, batch, repeats, gradient=(name == "c3d_b1"))
        _ratio(result, f"lrp_over_zennit_{name}", "lrp", "zennit")
        if "gradient" in result["times"]:
            _ratio(result, "lrp_over_gradient_c3d_b1", "lrp", "gradient")
        table[f"lrp_{name}"] = result
        report(f"lrp_{name}", result)


def report(name: str, result: dict) -> None:
    parts = [f"{k} {v['median']:.3f}s [{v['min']:.3f}-{v['max']:.3f}]"
             for k, v in result.get("times", {}).items()]  # fmt: skip
    parts += [f"{k} {v:.3f}" for k, v in result.get("ratios", {}).items()]
    parts += [f"{k} {v:.5f}" for k, v in result.items() if isinstance(v, float)]
    print(f"{name}: " + "; ".join(parts), flush=True)


def flat(table: dict, quick: bool) -> dict:
    """The flat JSON object: every key of :data:`KEYS`, details after."""
    out: dict = {}
    for result in table.values():
        out.update(result.get("ratios", {}))
    for key in KEYS:
        if out.get(key) is None:
            out[key] = None
            out[f"{key}_why"] = table.get("why", {}).get(
                key, "quick mode measures C3D at batch 1 and 4 only" if quick and "b8" in key
                else "not run (--only)"
            )  # fmt: skip
    for name, result in table.items():
        if name == "why":
            continue
        for side, t in result.get("times", {}).items():
            out.update({f"{name}_{side}_{stat}_s": v for stat, v in t.items()})
        out.update({f"{name}_{k}": v for k, v in result.items() if isinstance(v, float)})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--only", nargs="+", default=["lrp", "selective", "sweep", "rss", "vit"],
                        choices=["lrp", "selective", "sweep", "rss", "vit"])  # fmt: skip
    parser.add_argument("--rss-worker", choices=["jax", "zennit"])
    parser.add_argument("--selective-worker", type=int, metavar="REPEATS")
    args = parser.parse_args()
    if args.rss_worker:
        rss_worker(args.rss_worker)
        return
    if args.selective_worker:
        print(json.dumps(selective(args.selective_worker)))
        return
    import jax
    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    start = time.time()
    table: dict = {"why": {}}
    machine = (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, jax "
        f"{jax.__version__} on {jax.devices()[0].platform}, torch {torch.__version__}"
    )
    print(f"# {machine}; load average {os.getloadavg()}", flush=True)
    if "lrp" in args.only:
        run_lrp(args.quick, table)
    if "selective" in args.only:
        result = selective_in_fresh_processes(5 if args.quick else 9)
        _ratio(result, "selective_speedup_over_reference", "selective", "reference", invert=True)
        _ratio(result, "selective_speedup_over_reference_kept_heap", "selective_kept_heap",
               "reference_kept_heap", invert=True)  # fmt: skip
        _ratio(result, "selective_over_one_pass", "selective", "one_pass")
        table["selective"] = result
        report("selective", result)
    if "sweep" in args.only:
        result = sweep(3 if args.quick else 5)
        _ratio(result, "sweep_over_explain", "sweep", "explain")
        table["sweep"] = result
        report("sweep", result)
    if "rss" in args.only:
        peak = rss(3 if args.quick else 5)
        table["rss"] = {
            "ratios": {"rss_over_zennit": peak["jax"]["median"] / peak["zennit"]["median"]}
        }
        for side, stats in peak.items():
            table["rss"] |= {f"{side}_peak_mib" + ("" if k == "median" else f"_{k}"): v
                             for k, v in stats.items()}  # fmt: skip
        report("rss", table["rss"])
    if "vit" in args.only:  # AttnLRP on the tiny video ViT (bench/lrp_vit.py; needs lxt)
        from lrp_vit import measure

        table["vit"] = measure(10 if args.quick else 20)
        report("vit", table["vit"])
    out = flat(table, args.quick)
    out.update(machine=machine, quick=args.quick, seconds=time.time() - start,
               load_average_end=list(os.getloadavg()))  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps({k: out[k] for k in KEYS}, indent=1))


if __name__ == "__main__":
    main()
