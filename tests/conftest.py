"""Fixtures shared by the whole suite: model variables and clips drawn with NumPy.

``model.init`` compiles JAX's threefry sampler for every parameter shape, which
costs seconds per model on a busy CPU; tests only need non-trivial values of
the right shapes, so these fill ``jax.eval_shape(model.init)`` from NumPy.
Each fixture is a session-scoped factory (stateless, so hypothesis tests may
use it too).
"""

from __future__ import annotations

import os

# Tests check values, not speed: XLA's optimisation passes cost more compile time than
# they save on the suite's tiny models (2-3x on the conformance suite). The variable is
# read by every `selrel` or Python subprocess a test starts; the update covers this one,
# where a plugin may have imported JAX before this file. A benchmark sets it to 0.
os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")

import jax
import jax.numpy as jnp
import numpy as np
import pytest

jax.config.update(
    "jax_disable_most_optimizations", os.environ["JAX_DISABLE_MOST_OPTIMIZATIONS"] == "1"
)

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


# Linux's default vm.max_map_count; XLA:CPU maps about a dozen regions per executable.
_MAP_LIMIT = 65530


def _mapped_regions() -> int:
    try:
        with open("/proc/self/maps", "rb") as maps:
            return sum(1 for _ in maps)
    except OSError:  # not Linux: no such limit to watch
        return 0


@pytest.fixture(scope="module", autouse=True)
def _release_compiled_code():
    """Free every compiled executable after a test module once this process holds more
    than half of the memory regions Linux allows: a process compiling thousands of
    executables (every shape a property test draws) reaches vm.max_map_count and the
    next compilation crashes the interpreter. Below that, the next module reuses what
    the session's fixtures compiled."""
    yield
    if _mapped_regions() > _MAP_LIMIT // 2:
        jax.clear_caches()
