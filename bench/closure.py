"""The closure form compiles once: ``explain(apply_fn, None, clips)`` against the
caller's own ``jax.jit`` of ``make_explainer`` (issue 21, item 6).

A small Equinox 3D CNN (two convs with bias, BatchNorm in inference, ReLU,
global mean, a dense head), applied per clip under ``jax.vmap`` and closed
over as ``apply_fn(clips)``, explained with LRP and with the gradient; clips
2 x 8 x 32 x 32 x 3. The sides alternate after a warm-up (``run_all.alternate``):

* ``explain``: ``selrel_jax.explain(closure, None, clips, target, method)``,
  every call (it traces the closure abstractly and reuses the compiled
  explainer of the same computation);
* ``own_jit``: ``jax.jit(lambda x, t: make_explainer(closure, method)(None, x, t))``.

Prints one JSON object: the medians and ``explain_over_own_jit_<method>``
(target <= 1.5).

Usage: ``python bench/closure.py [--repeats 20]``
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import warnings
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run_all import alternate

import selrel_jax as sr

METHODS = ("lrp.epsilon_plus_flat", "gradient")


def equinox_net(key: jax.Array):
    """Per-clip channels-first net, as Equinox users write it, and its state."""
    k1, k2, k3 = jax.random.split(key, 3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Equinox's note on BatchNorm's default mode
        bn, state = eqx.nn.make_with_state(eqx.nn.BatchNorm)(8, "batch", inference=True)
    convs = (eqx.nn.Conv3d(3, 8, 3, padding=1, key=k1), eqx.nn.Conv3d(8, 8, 3, padding=1, key=k2))
    head = eqx.nn.Linear(8, 5, key=k3)

    def per_clip(clip):
        h, _ = bn(convs[0](jnp.transpose(clip, (3, 0, 1, 2))), state)
        h = jax.nn.relu(convs[1](jax.nn.relu(h)))
        return head(jnp.mean(h, axis=(1, 2, 3)))

    return lambda clips: jax.vmap(per_clip)(clips)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    closure = equinox_net(jax.random.key(0))
    clips = jnp.asarray(np.random.default_rng(0).normal(size=(2, 8, 32, 32, 3)), jnp.float32)
    target = jnp.array([1, 3])
    out: dict = {"machine": f"{platform.machine()}, {jax.devices()[0].device_kind}",
                 "jax": jax.__version__}  # fmt: skip
    for method in METHODS:
        own = jax.jit(lambda x, t, m=method: sr.make_explainer(closure, m)(None, x, t))
        times = alternate({
            "explain": lambda m=method: sr.explain(closure, None, clips, target, m)
            .block_until_ready(),
            "own_jit": lambda own=own: own(clips, target).block_until_ready(),
        }, args.repeats)  # fmt: skip
        ratio = times["explain"]["median"] / times["own_jit"]["median"]
        out[method] = times
        out[f"explain_over_own_jit_{method}"] = round(ratio, 3)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
