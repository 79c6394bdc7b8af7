"""Test helper: random model variables drawn with NumPy.

``model.init`` compiles JAX's threefry sampler for every parameter shape,
which costs seconds per model on a busy CPU; tests only need some non-trivial
values of the right shapes, so they fill ``jax.eval_shape(model.init)``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def numpy_variables(model, clip_shape, seed: int = 0):
    """He-scaled kernels, small biases, non-trivial BatchNorm scale/statistics."""
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
