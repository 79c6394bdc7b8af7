"""AttnLRP on the tiny video ViT: selrel_jax's ``lrp.attn`` against the model's own
input gradient and against lxt 2.1's explicit AttnLRP on the PyTorch twin.

The ViT and its twin are the conformance suite's (``tests/attribution/conformance/
vit.py``: tubelet Conv3d embedding, two pre-norm blocks with two-head attention and a
GELU MLP, mean pool, LayerNorm, dense head; clips 1x4x16x16x3), imported with the
repo root on ``sys.path``. selrel_jax's sides are ``jax.jit(make_explainer(...))``
with their defaults; lxt's is its forward plus backward in float32, torch with the
same number of threads as XLA's CPU client here. The sides alternate on every
repeat after a warm-up (``bench/run_all.py``'s ``alternate``); medians are printed,
with the two ratios as one JSON object:

* ``lrp_over_gradient_vit_b1``: lrp.attn time / input gradient time, batch 1;
* ``lrp_over_lxt_vit_b1``: lrp.attn time / lxt time, batch 1;
* ``cosine_vit_b1``: how close the two relevance maps are.

Needs ``pip install --no-deps lxt==2.1``. Seconds on a CPU.

Usage: ``python bench/lrp_vit.py [--repeats 20] [--threads 2] [--json OUT.json]``
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

from run_all import _cosine, alternate  # noqa: E402

import selrel_jax as sr  # noqa: E402
from tests.attribution.conformance import vit  # noqa: E402


def measure(repeats: int = 20, threads: int = 2) -> dict:
    """The medians of lrp.attn, the input gradient and lxt on the tiny ViT at batch 1,
    and the ratios (``bench/run_all.py --only vit`` reports them too)."""
    import torch

    torch.set_num_threads(threads)
    w, clips = vit.weights(), vit.clips()
    params, x = jax.tree.map(jnp.asarray, w), jnp.asarray(clips)
    target = jnp.asarray([vit.TARGET])
    lrp = jax.jit(sr.make_explainer(vit.jax_apply, "lrp.attn"))
    gradient = jax.jit(sr.make_explainer(vit.jax_apply, "gradient"))
    calls = {
        "lrp.attn": lambda: lrp(params, x, target).block_until_ready(),
        "gradient": lambda: gradient(params, x, target).block_until_ready(),
        "lxt": lambda: vit.lxt_relevance(w, clips, dtype="float32"),
    }
    times = alternate(calls, repeats)
    ours = times["lrp.attn"]["median"]
    return {
        "ratios": {
            "lrp_over_gradient_vit_b1": ours / times["gradient"]["median"],
            "lrp_over_lxt_vit_b1": ours / times["lxt"]["median"],
        },
        "cosine_vit_b1": _cosine(np.asarray(lrp(params, x, target)), calls["lxt"]()[0]),
        "times": {name.replace(".", "_"): t for name, t in times.items()},
        "device": jax.devices()[0].device_kind,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    result = measure(args.repeats, args.threads)
    for name, t in result["times"].items():
        print(f"{name:9s} median {t['median'] * 1e3:7.2f} ms  (min {t['min'] * 1e3:.2f}, "
              f"max {t['max'] * 1e3:.2f})")  # fmt: skip
    print(json.dumps(result, indent=1))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
