"""Every architecture of the zoo (thin variants) x every relevance method: finite relevance."""

from __future__ import annotations

import warnings

import jax
import numpy as np
import pytest

import selrel_jax as sr
from selrel_jax import models
from selrel_jax.attribution import METHODS as ENGINE_METHODS
from selrel_jax.attribution import UnseenNonlinearityWarning

# arch: (create kwargs, clip (T, H, W)): thin variants on the smallest clips each
# accepts. The ResNets keep one BasicBlock per stage, which still has every kind
# of layer (stem, conv builder, identity and downsampled residual Sum, BatchNorm)
# at half the compile time of the engine's LRP graph.
SHALLOW = {"width": 1 / 16, "blocks": (1, 1, 1, 1)}
ARCHS = {
    "c3d": ({"width": 1 / 16}, (16, 32, 32)),
    "c3d_small": ({"width": 0.25}, (4, 16, 16)),
    "r3d_18": (SHALLOW, (4, 16, 16)),
    "mc3_18": (SHALLOW, (4, 16, 16)),
    "r2plus1d_18": (SHALLOW, (4, 16, 16)),
}
METHODS = {
    "gradient": {},
    "gradient_x_input": {},
    "integrated_gradients": {"steps": 2},
    "smoothgrad": {"samples": 2},
    "grad_cam": {},
    "lrp.epsilon": {},
    "lrp.zplus": {},
    "lrp.epsilon_plus": {},
    "lrp.epsilon_plus_flat": {},
    "lrp.epsilon_gamma_box": {"low": -1.0, "high": 1.0},
    "lrp.epsilon_alpha2_beta1": {},
    "lrp.epsilon_alpha2_beta1_flat": {},
}


@pytest.fixture(scope="module", autouse=True)
def quick_compiles():
    """XLA's optimisation passes dominate these one-shot runs; this check needs none."""
    before = jax.config.values["jax_disable_most_optimizations"]
    jax.config.update("jax_disable_most_optimizations", True)
    yield
    jax.config.update("jax_disable_most_optimizations", before)


def test_method_list_is_the_engines():
    assert set(METHODS) == set(ENGINE_METHODS)


@pytest.fixture(scope="module", params=sorted(ARCHS))
def zoo_model(numpy_variables, request):
    arch = request.param
    kwargs, clip = ARCHS[arch]
    model = models.create(arch, 5, clip_size=clip, **kwargs)
    clips = np.random.default_rng(0).uniform(-1, 1, (1, *clip, 3)).astype(np.float32)
    return arch, model, numpy_variables(model, clips.shape), clips


@pytest.mark.parametrize("method", sorted(METHODS))
def test_relevance_is_finite_with_input_shape(zoo_model, method):
    arch, model, variables, clips = zoo_model
    relevance = sr.explain(model, variables, clips, np.array([3]), method, **METHODS[method])
    relevance = np.asarray(jax.device_get(relevance))
    assert relevance.shape == clips.shape and relevance.dtype == np.float32, arch
    assert np.isfinite(relevance).all(), (arch, method)
    if method != "grad_cam":  # Grad-CAM's ReLU may zero a random net's map
        assert np.abs(relevance).sum() > 0, (arch, method)


def test_zoo_models_trigger_no_unseen_nonlinearity_warning(zoo_model):
    """Every zoo model calls its activations through nn.* and its pooling and sums
    through selrel_jax.layers, so LRP sees every nonlinearity (abstract trace only)."""
    _, model, variables, clips = zoo_model
    fn = sr.make_explainer(model, "lrp.epsilon_plus_flat")
    with warnings.catch_warnings():
        warnings.simplefilter("error", UnseenNonlinearityWarning)
        jax.eval_shape(fn, variables, clips, np.array([3]))
