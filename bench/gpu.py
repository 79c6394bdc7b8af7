"""The GPU suite of issue 12 (run by ``bench/gpu.sh`` on one NVIDIA H100/H200).

On the first GPU JAX sees, with random weights shared by both libraries:

* clips/s of LRP epsilon_plus_flat on C3D and R3D-18 (16x112x112) at batch 32,
  in float32 (JAX's default precision, and "highest") and bfloat16 (weights
  and clips cast; relevance returned as float32);
* Zennit 0.5.1's EpsilonPlusFlat on the same GPU and weights (torch, CUDA),
  when zennit imports;
* selective relevance throughput (batch 32 x 16x112x112x3 float32), and one
  elementwise pass for scale;
* agreement of the GPU relevance with the CPU float32 result (two clips, JAX
  on the host CPU) at JAX's default matmul/conv precision (TF32 on these
  chips) and at "highest": cosine and relative error of the sum.

Writes one JSON object (``--json``) and prints a table. ``--allow-cpu`` with a
thin model (``--width``, ``--clip``, ``--batch``) runs the same code on the
CPU for a smoke test (its numbers mean nothing).

Usage: ``python bench/gpu.py [--json OUT.json] [--batch 32] [--repeats 5]``
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
CLASSES = {"c3d": 487, "r3d_18": 400}


def timed(fn, repeats: int) -> dict:
    fn()  # compile + warm up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return {"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times)}


def setup(arch: str, args) -> tuple:
    import numpy as np

    from selrel_jax import models
    from tests.torch_reference_models import build

    clip = tuple(args.clip)
    net = build(arch, CLASSES[arch], args.width, clip, seed=0, residual_sum=_zennit_sum())
    options = {"clip_size": clip} if arch == "c3d" else {}
    model, variables = models.from_torch_state_dict(arch, net.state_dict(), **options)
    rng = np.random.default_rng(0)
    clips = rng.standard_normal((args.batch, *clip, 3)).astype(np.float32)
    target = rng.integers(0, CLASSES[arch], args.batch).astype(np.int32)
    return net, model, variables, clips, target


def _zennit():
    try:
        from tests.torch_reference_models import import_zennit

        return import_zennit()
    except ImportError:
        return None


def _zennit_sum():
    zennit = _zennit()
    return zennit.Sum if zennit is not None else None


def jax_rows(arch: str, model, variables, clips, target, repeats: int) -> dict:
    import jax
    import jax.numpy as jnp

    import selrel_jax as sr

    device = jax.devices()[0]
    x, t = jax.device_put(clips, device), jax.device_put(target, device)
    v32 = jax.device_put(variables, device)
    v16 = jax.tree.map(lambda a: a.astype(jnp.bfloat16), v32)
    rows = {}
    for name, variables_, x_, precision in (
        ("float32_default", v32, x, "default"),
        ("float32_highest", v32, x, "highest"),
        ("bfloat16", v16, x.astype(jnp.bfloat16), "default"),
    ):
        fn = jax.jit(sr.make_explainer(model, "lrp.epsilon_plus_flat", precision=precision))
        row = timed(lambda fn=fn, v=variables_, c=x_: fn(v, c, t).block_until_ready(), repeats)
        row["clips_per_s"] = len(clips) / row["median_s"]
        rows[f"{arch}_lrp_{name}"] = row
    return rows


def zennit_row(arch: str, net, clips, target, repeats: int) -> dict:
    zennit = _zennit()
    if zennit is None:
        return {f"{arch}_zennit": None, f"{arch}_zennit_why": "zennit does not import"}
    import torch

    net = net.cuda() if torch.cuda.is_available() else net
    device = next(net.parameters()).device
    canonizers = [zennit.SequentialMergeBatchNorm()] if arch != "c3d" else []
    composite = zennit.composites.EpsilonPlusFlat(canonizers=canonizers)
    x = torch.from_numpy(clips.transpose(0, 4, 1, 2, 3).copy()).to(device)
    seed = torch.eye(CLASSES[arch], device=device)[torch.from_numpy(target).long().to(device)]

    def run():
        with zennit.Gradient(model=net, composite=composite) as attributor:
            attributor(x.clone().requires_grad_(True), seed)
        if device.type == "cuda":
            torch.cuda.synchronize()

    row = timed(run, repeats)
    row["clips_per_s"] = len(clips) / row["median_s"]
    return {f"{arch}_zennit": row}


def agreement(arch: str, model, variables, clips, target) -> dict:
    """Cosine and relative sum error of the accelerator's relevance (two clips)
    against JAX's float32 result on the host CPU, at two precisions."""
    import jax
    import numpy as np

    import selrel_jax as sr

    x, t = clips[:2], target[:2]
    cpu = jax.devices("cpu")[0]
    on_cpu = jax.jit(sr.make_explainer(model, "lrp.epsilon_plus_flat"))
    want = np.asarray(on_cpu(jax.device_put(variables, cpu), jax.device_put(x, cpu), t))
    out = {}
    for precision in ("default", "highest"):
        fn = jax.jit(sr.make_explainer(model, "lrp.epsilon_plus_flat", precision=precision))
        got = np.asarray(fn(variables, x, t)).astype(np.float64)
        cosine = got.ravel() @ want.ravel() / (np.linalg.norm(got) * np.linalg.norm(want))
        out[f"{arch}_cosine_vs_cpu_{precision}"] = float(cosine)
        out[f"{arch}_sum_error_vs_cpu_{precision}"] = float(
            abs(got.sum() - want.sum()) / abs(want.sum())
        )
    return out


def selective_row(batch: int, clip, repeats: int) -> dict:
    import jax
    import numpy as np

    import selrel_jax as sr

    x = jax.device_put(np.random.default_rng(0).standard_normal((batch, *clip, 3), np.float32))
    select = jax.jit(lambda v: sr.selective_relevance(v, 1.0))
    one_pass = jax.jit(lambda v: v * 2)
    rows = {"selective": timed(lambda: select(x).block_until_ready(), repeats),
            "one_pass": timed(lambda: one_pass(x).block_until_ready(), repeats)}  # fmt: skip
    for row in rows.values():
        row["clips_per_s"] = batch / row["median_s"]
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--width", type=float, default=1.0)
    parser.add_argument("--clip", type=int, nargs=3, default=[16, 112, 112])
    parser.add_argument("--allow-cpu", action="store_true")
    args = parser.parse_args()
    import jax

    device = jax.devices()[0]
    if device.platform != "gpu" and not args.allow_cpu:
        print(f"not measured: no GPU (JAX's first device is {device})")
        return
    out = {"device": str(device), "device_kind": device.device_kind, "batch": args.batch}
    for arch in ("c3d", "r3d_18"):
        net, model, variables, clips, target = setup(arch, args)
        out |= jax_rows(arch, model, variables, clips, target, args.repeats)
        out |= zennit_row(arch, net, clips, target, args.repeats)
        out |= agreement(arch, model, variables, clips, target)
        print(json.dumps({k: v for k, v in out.items() if k.startswith(arch)}), flush=True)
    out |= selective_row(args.batch, tuple(args.clip), args.repeats)
    if args.json:
        args.json.write_text(json.dumps(out, indent=1) + "\n")
    print("| measurement | clips/s | median s |\n|---|---|---|")
    for key, row in out.items():
        if isinstance(row, dict):
            print(f"| {key} | {row['clips_per_s']:.1f} | {row['median_s']:.4f} |")
    for key, value in out.items():
        if "cosine" in key or "sum_error" in key:
            print(f"{key}: {value:.6g}")


if __name__ == "__main__":
    main()
