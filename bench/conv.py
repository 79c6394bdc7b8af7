"""Per-layer convolution timings: lax vs this package's fast forms vs PyTorch.

For the convolutions that dominate the zoo (R3D-18's stem, a 3x3x3 stride-2
downsampling conv, C3D's stride-1 3x3x3 convs) it times, side by side in one
process with the repeats alternating after a warm-up, the forward pass and the
input gradient (VJP with respect to the input, what LRP and plain gradients
need) of:

* ``lax``: ``jax.lax.conv_general_dilated`` as XLA:CPU compiles it;
* ``fast``: :mod:`selrel_jax._conv` (forward: ``fast_conv``; input gradient:
  the ``custom_vjp`` of ``conv_general_dilated`` the zoo's ``nn.Conv`` uses);
* ``torch``: ``torch.nn.functional.conv3d`` (NCDHW) and its autograd input
  gradient, with as many threads as JAX has cores.

Prints medians (seconds) and returns rows for ``bench/run_all.py``.

Usage: ``python bench/conv.py [--repeats 5] [--batch 1] [--layers stem s2 s1]``
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

# (name, input NTHWC, kernel DHWIO, strides, padding)
LAYERS = {
    "stem": ((16, 112, 112, 3), (3, 7, 7, 3, 64), (1, 2, 2), ((1, 1), (3, 3), (3, 3))),
    "s2": ((16, 56, 56, 64), (3, 3, 3, 64, 128), (2, 2, 2), ((1, 1), (1, 1), (1, 1))),
    "s1": ((16, 56, 56, 64), (3, 3, 3, 64, 128), (1, 1, 1), ((1, 1), (1, 1), (1, 1))),
    "c3d_conv1": ((16, 112, 112, 3), (3, 3, 3, 3, 64), (1, 1, 1), ((1, 1), (1, 1), (1, 1))),
}
DESCRIPTIONS = {
    "stem": "R3D-18 stem 3->64, 3x7x7, stride (1,2,2), 16x112x112",
    "s2": "3x3x3 stride 2, 64->128, 16x56x56 (R3D-18 layer2.0.conv1)",
    "s1": "3x3x3 stride 1, 64->128, 16x56x56 (C3D conv2)",
    "c3d_conv1": "3x3x3 stride 1, 3->64, 16x112x112 (C3D conv1)",
}


def _jax_fns(shape, kernel, strides, padding):
    import jax
    from jax import lax

    from selrel_jax import _conv

    dn = ("NDHWC", "DHWIO", "NDHWC")

    def lax_fwd(x, w):
        return lax.conv_general_dilated(x, w, strides, padding, dimension_numbers=dn)

    def fast_fwd(x, w):
        return _conv.fast_conv(x, w, strides, padding, dimension_numbers=dn)

    def zoo_fwd(x, w):
        return _conv.conv_general_dilated(x, w, strides, padding, dimension_numbers=dn)

    def input_grad(fwd):
        def fn(x, w, g):
            return jax.vjp(lambda v: fwd(v, w), x)[1](g)[0]

        return jax.jit(fn)

    return {
        ("forward", "lax"): jax.jit(lax_fwd),
        ("forward", "fast"): jax.jit(fast_fwd),
        ("input grad", "lax"): input_grad(lax_fwd),
        ("input grad", "fast"): input_grad(zoo_fwd),
    }


def _torch_fns(strides, padding):
    import torch

    pad = tuple(lo for lo, _ in padding)

    def fwd(x, w, g):
        with torch.no_grad():
            return torch.nn.functional.conv3d(x, w, stride=strides, padding=pad)

    def grad(x, w, g):
        x = x.detach().requires_grad_(True)
        y = torch.nn.functional.conv3d(x, w, stride=strides, padding=pad)
        (dx,) = torch.autograd.grad(y, x, g)
        return dx

    return {("forward", "torch"): fwd, ("input grad", "torch"): grad}


def measure(name: str, batch: int = 1, repeats: int = 5) -> list[dict]:
    """Median seconds of every (pass, implementation) of layer ``name``."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    import torch

    shape, kernel, strides, padding = LAYERS[name]
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, *shape), np.float32)
    w = (rng.standard_normal(kernel) / np.sqrt(np.prod(kernel[:-1]))).astype(np.float32)
    jax_fns = _jax_fns(shape, kernel, strides, padding)
    out_shape = jax.eval_shape(jax_fns[("forward", "lax")], x, w).shape
    g = rng.standard_normal(out_shape, np.float32)
    jx, jw, jg = jnp.asarray(x), jnp.asarray(w), jnp.asarray(g)
    tx = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 4, 1, 2, 3)))
    tw = torch.from_numpy(np.ascontiguousarray(w.transpose(4, 3, 0, 1, 2)))
    tg = torch.from_numpy(np.ascontiguousarray(g.transpose(0, 4, 1, 2, 3)))
    calls = {}
    for key, fn in jax_fns.items():
        args = (jx, jw) if key[0] == "forward" else (jx, jw, jg)
        calls[key] = lambda fn=fn, args=args: jax.block_until_ready(fn(*args))
    for key, fn in _torch_fns(strides, padding).items():
        calls[key] = lambda fn=fn: fn(tx, tw, tg)
    for call in calls.values():  # warm-up (compilation)
        call()
    times: dict = {key: [] for key in calls}
    for _ in range(repeats):  # alternating
        for key, call in calls.items():
            start = time.perf_counter()
            call()
            times[key].append(time.perf_counter() - start)
    return [
        {"layer": name, "pass": p, "impl": impl, "median_s": statistics.median(t),
         "min_s": min(t), "max_s": max(t)}
        for (p, impl), t in times.items()
    ]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--layers", nargs="+", default=list(LAYERS), choices=list(LAYERS))
    args = parser.parse_args()
    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    print(f"batch {args.batch}, {args.repeats} repeats, medians in seconds")
    print(f"{'layer':<10} {'pass':<11} {'lax':>8} {'fast':>8} {'torch':>8} {'lax/fast':>9} "
          f"{'fast/torch':>10}")  # fmt: skip
    for name in args.layers:
        rows = measure(name, args.batch, args.repeats)
        by = {(r["pass"], r["impl"]): r["median_s"] for r in rows}
        for p in ("forward", "input grad"):
            lax_s, fast_s, torch_s = by[p, "lax"], by[p, "fast"], by[p, "torch"]
            print(f"{name:<10} {p:<11} {lax_s:8.3f} {fast_s:8.3f} {torch_s:8.3f} "
                  f"{lax_s / fast_s:9.2f} {fast_s / torch_s:10.2f}")  # fmt: skip
        print(f"  {DESCRIPTIONS[name]}")


if __name__ == "__main__":
    main()
