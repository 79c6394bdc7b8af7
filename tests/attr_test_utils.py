"""Helpers of the attribution tests: NumPy-drawn variables and clips (no eager
JAX sampling, which compiles a sampler per shape and costs seconds)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def random_variables(model, x, seed, scale=0.5):
    """Signed normal weights and biases (times ``scale``) for every variable."""
    rng = np.random.default_rng(seed)
    shapes = jax.eval_shape(model.init, jax.random.key(0), x)
    return jax.tree.map(lambda s: rng.normal(size=s.shape).astype(np.float32) * scale, shapes)


def clips(shape, seed=0):
    return jnp.asarray(np.random.default_rng(seed).normal(size=shape), jnp.float32)
