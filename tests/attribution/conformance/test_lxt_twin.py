"""AttnLRP and CP-LRP against lxt 2.1 (Achtibat et al.'s own implementation):
the tiny video ViT (``vit.py``) in Flax linen, NNX, Equinox and plain JAX under
``lrp.attn`` / ``lrp.cp`` gives the input relevance of its torch twin built from
lxt's explicit functions (cosine >= 0.9999, max |diff| <= 1e-3 of max |R|), and
so does the gated 3D CNN (``gated.py``) with its gate split or held constant.

About a minute on two cores, so ``slow``: .ci/run runs it in its lxt step.
Skipped without torch or lxt; an error without lxt when ``SELREL_REQUIRE_LXT=1``
(.ci/run installs ``lxt==2.1 --no-deps``: its declared dependencies pull in
torchvision and more, which these checks do not need).
"""

from __future__ import annotations

import functools
import importlib.util
import os

import jax.numpy as jnp
import numpy as np
import pytest

if os.environ.get("SELREL_REQUIRE_LXT") == "1":  # CI: a skip would hide the check
    import torch  # noqa: F401

    if importlib.util.find_spec("lxt") is None:
        raise ImportError("SELREL_REQUIRE_LXT=1 but lxt is not installed")
else:
    pytest.importorskip("torch")
    if importlib.util.find_spec("lxt") is None:
        pytest.skip("lxt is not installed (optional cross-check)", allow_module_level=True)

import selrel_jax as sr
from selrel_jax.attribution import composites
from tests.attribution.conformance import gated, vit
from tests.attribution.conformance.twin import cosine

pytestmark = pytest.mark.slow


def assert_close(got, want):
    """cosine >= 0.9999 and max |diff| <= 1e-3 * max |want| (lxt runs in float64)."""
    cos, err = cosine(got, want), np.abs(got - want).max() / np.abs(want).max()
    print(f"cosine = {cos:.8f}, max |diff| / max |R| = {err:.1e}")
    assert cos >= 0.9999 and err <= 1e-3, f"cosine {cos:.8f}, max |diff| / max |R| {err:.1e}"


@functools.cache
def _vit():
    w = vit.weights()
    return w, vit.clips(), vit.forms(w)


@functools.cache
def _lxt_vit(cp):
    w, x, _ = _vit()
    return vit.lxt_relevance(w, x, cp=cp)


def _explain(model, variables, x, target, method):
    return np.asarray(sr.explain(model, variables, jnp.asarray(x), jnp.asarray([target]), method))


@pytest.mark.parametrize("framework", ["linen", "nnx", "equinox", "jax"])
def test_vit_logits_equal_the_torch_twin(framework):
    _, x, forms = _vit()
    model, variables = forms[framework]
    got = model(jnp.asarray(x)) if variables is None else _logits(model, variables, x)
    np.testing.assert_allclose(np.asarray(got), _lxt_vit(False)[1], atol=2e-5)


def _logits(model, variables, x):
    if hasattr(model, "apply"):
        return model.apply(variables, jnp.asarray(x))
    return model(variables, jnp.asarray(x))


@pytest.mark.parametrize("framework", ["linen", "nnx", "equinox", "jax"])
def test_vit_attnlrp_equals_lxt(framework):
    _, x, forms = _vit()
    assert_close(_explain(*forms[framework], x, vit.TARGET, "lrp.attn"), _lxt_vit(False)[0])


@pytest.mark.parametrize("framework", ["linen", "jax"])
def test_vit_cp_lrp_equals_lxt_cp_mode(framework):
    _, x, forms = _vit()
    assert_close(_explain(*forms[framework], x, vit.TARGET, "lrp.cp"), _lxt_vit(True)[0])


@pytest.mark.parametrize("gate_constant", [False, True], ids=["uniform", "gate_constant"])
@pytest.mark.parametrize("framework", ["linen", "jax"])
def test_gated_cnn_equals_lxt(framework, gate_constant):
    w, x = gated.weights(), gated.clips()
    model, variables = gated.forms(w)[framework]
    method = composites.attn(gate_constant=gate_constant)
    got = _explain(model, variables, x, gated.TARGET, method)
    assert_close(got, gated.lxt_relevance(w, x, gate_constant))
