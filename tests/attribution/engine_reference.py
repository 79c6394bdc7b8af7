"""Reference relevance maps of every zoo model (thin variants, one small clip)
under every named composite, made by the module-interception LRP engine of
commit 784fe69, which the engine on the traced computation replaced.
``tests/attribution/test_zoo.py`` checks today's engine against them (equal to
1e-5 of the largest |R|), on the same models, variables and clips
(:func:`zoo_case`).

The values in ``data/engine_reference.npz`` came from the old engine, so only
regenerate them to change the cases, and with that engine::

    git archive 784fe69 selrel_jax tests | tar -x -C /tmp/old_engine
    cp tests/attribution/engine_reference.py /tmp/old_engine/tests/attribution/
    cd /tmp/old_engine && PYTHONPATH=. python tests/attribution/engine_reference.py \\
        /work/main/tests/attribution/data/engine_reference.npz

(this module uses only ``selrel_jax.models`` and ``selrel_jax.explain``, which
both engines have.)
"""

from __future__ import annotations

import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

DATA = Path(__file__).resolve().parent / "data" / "engine_reference.npz"
COMMIT = "784fe69"

# arch: (create kwargs, clip (T, H, W)): thin variants on the smallest clips each
# accepts. The ResNets keep one BasicBlock per stage, which still has every kind
# of layer (stem, conv builder, identity and downsampled residual Sum, BatchNorm).
SHALLOW = {"width": 1 / 16, "blocks": (1, 1, 1, 1)}
ARCHS = {
    "c3d": ({"width": 1 / 16}, (16, 16, 16)),
    "c3d_small": ({"width": 0.25}, (4, 8, 8)),
    "r3d_18": (SHALLOW, (4, 8, 8)),
    "mc3_18": (SHALLOW, (4, 8, 8)),
    "r2plus1d_18": (SHALLOW, (4, 8, 8)),
}
COMPOSITES = {
    "lrp.epsilon": {},
    "lrp.zplus": {},
    "lrp.epsilon_plus": {},
    "lrp.epsilon_plus_flat": {},
    "lrp.epsilon_gamma_box": {"low": -1.0, "high": 1.0},
    "lrp.epsilon_alpha2_beta1": {},
    "lrp.epsilon_alpha2_beta1_flat": {},
}
TARGET = np.array([3])


def zoo_variables(model, clip_shape, seed: int = 0):
    """He-scaled kernels, small biases, BatchNorm scale and variance in [0.5, 1.5]
    (drawn with NumPy, so the same on every machine and JAX version)."""
    clips = jax.ShapeDtypeStruct(tuple(clip_shape), jnp.float32)
    abstract = jax.eval_shape(lambda c: model.init(jax.random.key(0), c, train=False), clips)
    rng = np.random.default_rng(seed)

    def fill(path, leaf):
        name = path[-1].key
        if name in ("var", "scale"):
            value = rng.uniform(0.5, 1.5, leaf.shape)
        elif name == "kernel":
            value = rng.standard_normal(leaf.shape) * np.sqrt(2.0 / np.prod(leaf.shape[:-1]))
        else:
            value = 0.1 * rng.standard_normal(leaf.shape)
        return jnp.asarray(value, leaf.dtype)

    return jax.tree_util.tree_map_with_path(fill, abstract)


def zoo_case(arch: str):
    """``(model, variables, clips)`` of ``arch``: 5 classes, one clip in [-1, 1]."""
    from selrel_jax import models

    kwargs, clip = ARCHS[arch]
    model = models.create(arch, 5, clip_size=clip, **kwargs)
    clips = np.random.default_rng(0).uniform(-1, 1, (1, *clip, 3)).astype(np.float32)
    return model, zoo_variables(model, clips.shape), clips


def key(arch: str, method: str) -> str:
    return f"{arch}/{method}"


def load_reference() -> dict[str, np.ndarray]:
    with np.load(DATA) as data:
        return {k: data[k] for k in data.files}


def main(out: str) -> None:
    import selrel_jax as sr

    jax.config.update("jax_disable_most_optimizations", True)  # as test_zoo runs
    maps = {}
    for arch in ARCHS:
        model, variables, clips = zoo_case(arch)
        for method, options in COMPOSITES.items():
            relevance = sr.explain(model, variables, clips, TARGET, method, **options)
            maps[key(arch, method)] = np.asarray(relevance, np.float32)
            print(arch, method, float(np.abs(maps[key(arch, method)]).max()), flush=True)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out, **maps)


if __name__ == "__main__":
    main(sys.argv[1])
