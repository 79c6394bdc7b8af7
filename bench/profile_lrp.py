"""Where one LRP epsilon_plus_flat pass on C3D spends its time, layer by layer.

For every layer of the full C3D (16x112x112, batch 1, random weights) this
times, jit-compiled and in isolation on inputs of that layer's shape, what the
relevance pass runs for it: the layer's forward pass and its rule's backward
(Flat for conv1, ZPlus after ReLUs for the other convs, Epsilon for the dense
layers, the plain gradient of the max pools), each as the engine runs it
(``fast``: :func:`selrel_jax._conv.fast_conv`, Flat through one output unit,
:func:`selrel_jax._pool.max_pool`'s elementwise derivative) and with the plain
forms (``lax``: the one lax convolution primitive, Flat over every unit,
XLA's max-pool derivative), side by side with alternating repeats. The last
row is the whole pass (``make_explainer``, jit) for scale: the layers' sum
differs from it by what XLA fuses across layers and by the glue.

Usage: ``python bench/profile_lrp.py [--repeats 3]``
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

CLIP = (16, 112, 112)
# name, input channels, output channels, pool after (window = strides, padding)
CONVS = (
    ("conv1", 3, 64, ((1, 2, 2), "VALID")),
    ("conv2", 64, 128, ((2, 2, 2), "VALID")),
    ("conv3a", 128, 256, None),
    ("conv3b", 256, 256, ((2, 2, 2), "VALID")),
    ("conv4a", 256, 512, None),
    ("conv4b", 512, 512, ((2, 2, 2), "VALID")),
    ("conv5a", 512, 512, None),
    ("conv5b", 512, 512, ((2, 2, 2), ((0, 0), (0, 0), (1, 1), (1, 1), (0, 0)))),
)
DN = ("NDHWC", "DHWIO", "NDHWC")


def _conv_fn(fast: bool) -> Callable:
    from jax import lax

    from selrel_jax import _conv

    conv = _conv.fast_conv if fast else lax.conv_general_dilated

    def fn(xs, params):
        pad = ((1, 1),) * 3
        y = conv(xs[0], params["kernel"], (1, 1, 1), pad, dimension_numbers=DN)
        return y + params["bias"] if "bias" in params else y

    return fn


def _layer_step(rule, fn: Callable, nonneg: bool, unit_axes: tuple) -> Callable:
    """jit(x, params, relevance) -> the rule's input relevance (forward included);
    ``unit_axes``: the output-unit axes the engine tells the rule, or ``((), ())``."""
    import jax

    from selrel_jax.attribution.types import LayerCall

    def step(x, params, relevance):
        y = fn((x,), params)
        call = LayerCall(fn, (x,), params, y, nonneg, {}, *unit_axes)
        return rule.relevance(call, relevance)[0]

    return jax.jit(step)


def _pool_step(window, padding, fast: bool) -> Callable:
    import flax.linen as nn
    import jax

    from selrel_jax import _pool

    pool = _pool.max_pool if fast else nn.max_pool

    def step(x, relevance):
        pad = padding if padding == "VALID" else tuple(padding[1:4])
        return jax.vjp(lambda v: pool(v, window, window, pad), x)[1](relevance)[0]

    return jax.jit(step)


def _time(calls: dict[str, Callable], repeats: int) -> dict[str, float]:
    for call in calls.values():
        call()
    times: dict[str, list[float]] = {k: [] for k in calls}
    for _ in range(repeats):
        for key, call in calls.items():
            start = time.perf_counter()
            call()
            times[key].append(time.perf_counter() - start)
    return {k: statistics.median(v) for k, v in times.items()}


def _conv_rows(repeats: int) -> tuple[list, tuple]:
    import jax
    import jax.numpy as jnp
    import numpy as np

    from selrel_jax.attribution import rules

    rng = np.random.default_rng(0)
    shape, rows = (1, *CLIP), []
    for i, (name, cin, cout, pool) in enumerate(CONVS):
        x = jnp.asarray(rng.standard_normal((*shape, cin)), jnp.float32)
        x = x if i == 0 else jnp.maximum(x, 0)
        k = rng.standard_normal((3, 3, 3, cin, cout)) * np.sqrt(2 / (27 * cin))
        params = {"kernel": jnp.asarray(k, jnp.float32), "bias": jnp.zeros((cout,))}
        rule = rules.Flat() if i == 0 else rules.ZPlus()
        relevance = jnp.asarray(rng.random((*shape, cout)), jnp.float32)
        calls = {}
        for impl in ("fast", "lax"):
            axes = ((4,), (4,)) if impl == "fast" else ((), ())
            step = _layer_step(rule, _conv_fn(impl == "fast"), i > 0, axes)
            calls[impl] = lambda s=step, p=params, r=relevance, v=x: s(v, p, r).block_until_ready()
        rows.append((name, f"{type(rule).__name__}, {shape[1:]}x{cin}->{cout}",
                     _time(calls, repeats)))  # fmt: skip
        if pool is not None:
            y = jnp.maximum(jax.random.normal(jax.random.key(i), (*shape, cout)), 0)
            r = jnp.ones(jax.eval_shape(lambda v, p=pool: _max_pool(v, *p), y).shape)
            steps = {impl: _pool_step(*pool, impl == "fast") for impl in ("fast", "lax")}
            calls = {impl: lambda s=s, v=y, rr=r: s(v, rr).block_until_ready()
                     for impl, s in steps.items()}  # fmt: skip
            rows.append((f"pool after {name}", "Gradient (max pool)", _time(calls, repeats)))
            shape = r.shape[:-1]
    return rows, shape


def _max_pool(v, window, padding):
    import flax.linen as nn

    pad = padding if padding == "VALID" else tuple(padding[1:4])
    return nn.max_pool(v, window, window, pad)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    rows, _ = _conv_rows(args.repeats)
    total_fast = sum(r[2]["fast"] for r in rows)
    total_lax = sum(r[2]["lax"] for r in rows)
    print("| layer | rule, input -> output | fast (s) | lax (s) | share of fast sum |")
    print("|---|---|---|---|---|")
    for name, what, t in rows:
        print(f"| {name} | {what} | {t['fast']:.3f} | {t['lax']:.3f} "
              f"| {100 * t['fast'] / total_fast:.0f}% |")  # fmt: skip
    print(f"| sum of layers | | {total_fast:.3f} | {total_lax:.3f} | 100% |")
    print(f"whole pass: {whole_pass(args.repeats):.3f} s (fc6-fc8 and glue included)")


def whole_pass(repeats: int) -> float:
    import jax
    import jax.numpy as jnp
    import numpy as np

    import selrel_jax as sr
    from selrel_jax import models

    model = models.create("c3d", 487, clip_size=CLIP)
    x = jnp.asarray(np.random.default_rng(0).standard_normal((1, *CLIP, 3)), jnp.float32)
    variables = jax.jit(model.init)(jax.random.key(0), x)
    fn = jax.jit(sr.make_explainer(model, "lrp.epsilon_plus_flat"))
    return _time({"pass": lambda: fn(variables, x, jnp.array([0])).block_until_ready()},
                 repeats)["pass"]  # fmt: skip


if __name__ == "__main__":
    main()
