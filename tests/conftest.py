"""Fixtures shared by the whole suite: model variables and clips drawn with NumPy.

``model.init`` compiles JAX's threefry sampler for every parameter shape, which
costs seconds per model on a busy CPU; tests only need non-trivial values of
the right shapes, so these fill ``jax.eval_shape(model.init)`` from NumPy.
Each fixture is a session-scoped factory (stateless, so hypothesis tests may
use it too).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

TINY_CLIP = (8, 32, 32)  # synthetic_motion's tiny configs


def _he_variables(model, clip_shape, seed: int = 0):
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


def _signed_variables(model, x, seed, scale=0.5):
    rng = np.random.default_rng(seed)
    shapes = jax.eval_shape(model.init, jax.random.key(0), x)
    return jax.tree.map(lambda s: rng.normal(size=s.shape).astype(np.float32) * scale, shapes)


def _save_tiny_model(directory, seed):
    from selrel_jax import models
    from selrel_jax.data import synthetic_motion

    clip = TINY_CLIP
    model = models.create("c3d_small", 6, width=0.25, clip_size=clip, stem_stride=(1, 2, 2))
    init = jax.jit(lambda key: model.init(key, np.zeros((1, *clip, 3), np.float32)))
    info = models.ModelInfo.for_arch(
        "c3d_small", 6, class_names=synthetic_motion.CLASS_NAMES, width=0.25,
        clip_length=clip[0], crop_size=clip[1:], extra={"model_kwargs": {"stem_stride": [1, 2, 2]}},
    )  # fmt: skip
    return models.save(directory, info, init(jax.random.key(seed)))


def _normal_clips(shape, seed=0):
    return jnp.asarray(np.random.default_rng(seed).normal(size=shape), jnp.float32)


@pytest.fixture(scope="session")
def numpy_variables():
    """``(model, clip_shape, seed=0) -> variables`` of a model called with ``train=``:
    He-scaled kernels, small biases, BatchNorm scale and variance in [0.5, 1.5]."""
    return _he_variables


@pytest.fixture(scope="session")
def random_variables():
    """``(model, x, seed, scale=0.5) -> variables``: every leaf signed normal x scale."""
    return _signed_variables


@pytest.fixture(scope="session")
def normal_clips():
    """``(shape, seed=0) -> float32 clips`` of standard normal values."""
    return _normal_clips


@pytest.fixture(scope="session")
def save_tiny_model():
    """``(directory, seed) -> directory`` of a saved, untrained thin c3d_small for
    synthetic_motion's tiny clips (8x32x32): its relevance is arbitrary but
    deterministic, which is all a sweep, report or kill test needs."""
    return _save_tiny_model


@pytest.fixture(scope="module", autouse=True)
def _release_compiled_code():
    """Free every compiled executable after each test module. XLA:CPU maps about a
    dozen memory regions per executable; one pytest process compiling thousands of
    them (every shape a property test draws) reaches Linux's vm.max_map_count (65530)
    and the next compilation crashes the interpreter."""
    yield
    jax.clear_caches()
