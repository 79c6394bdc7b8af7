"""Every architecture of the zoo (thin variants) x every relevance method: finite
relevance of the clips' shape, and for every named composite the relevance of
the module-interception engine this one replaced (``engine_reference.py``: its
maps, made once by that engine, equal to 1e-5 of the largest |R|)."""

from __future__ import annotations

import jax
import numpy as np
import pytest

import selrel_jax as sr
from selrel_jax.attribution import METHODS as ENGINE_METHODS
from tests.attribution.engine_reference import (
    ARCHS,
    COMPOSITES,
    TARGET,
    key,
    load_reference,
    zoo_case,
)

METHODS = {
    "gradient": {},
    "gradient_x_input": {},
    "integrated_gradients": {"steps": 2},
    "smoothgrad": {"samples": 2},
    "grad_cam": {},
    "occlusion": {"window": (2, 4, 4)},
    **COMPOSITES,
    "lrp.dtd": {"low": -1.0, "high": 1.0},
    "baseline.random": {},
    "baseline.frame_difference": {},
    "baseline.input_sobel": {},
}


# The transformer composites give a CNN epsilon_plus_flat's rules (the zoo has no
# attention, gates or LayerNorm): checked once on the conformance CNN
# (test_lrp_frameworks.py), their own layers on the ViT (test_lxt_twin.py).
TRANSFORMER = {"lrp.attn", "lrp.cp"}


def test_method_list_is_the_engines():
    assert set(METHODS) | TRANSFORMER == set(ENGINE_METHODS)


@pytest.fixture(scope="module")
def reference():
    return load_reference()


@pytest.fixture(scope="module", params=sorted(ARCHS))
def zoo_model(request):
    return request.param, *zoo_case(request.param)


@pytest.mark.parametrize("method", sorted(METHODS))
def test_relevance_is_finite_and_lrp_equals_the_previous_engine(zoo_model, reference, method):
    arch, model, variables, clips = zoo_model
    relevance = sr.explain(model, variables, clips, TARGET, method, **METHODS[method])
    relevance = np.asarray(jax.device_get(relevance))
    assert relevance.shape == clips.shape and relevance.dtype == np.float32, arch
    assert np.isfinite(relevance).all(), (arch, method)
    if method != "grad_cam":  # Grad-CAM's ReLU may zero a random net's map
        assert np.abs(relevance).sum() > 0, (arch, method)
    if method in COMPOSITES:
        want = reference[key(arch, method)]
        error = np.abs(relevance - want).max() / np.abs(want).max()
        assert error <= 1e-5, (arch, method, error)
