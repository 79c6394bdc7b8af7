"""The conformance net against its torch twin under Zennit 0.5.1: each Zennit
composite (with ``SequentialMergeBatchNorm``, the residual through Zennit's
``Sum``) gives the relevance selrel_jax gives the linen version and every other
framework and form (``frameworks.py``).

Skips, or fails, as ``tests/attribution/test_lrp_zennit.py`` does: skipped
without torch or zennit, an error without zennit when ``SELREL_REQUIRE_ZENNIT=1``.
"""

from __future__ import annotations

import functools
import importlib.util
import os

import numpy as np
import pytest

if os.environ.get("SELREL_REQUIRE_ZENNIT") == "1":  # CI: a skip would hide the check
    import torch

    if importlib.util.find_spec("zennit") is None:
        raise ImportError("SELREL_REQUIRE_ZENNIT=1 but zennit is not installed")
else:
    torch = pytest.importorskip("torch")
    if importlib.util.find_spec("zennit") is None:
        pytest.skip("zennit is not installed (optional cross-check)", allow_module_level=True)

from tests.attribution.conformance import twin
from tests.attribution.conformance.frameworks import CASES, case_id, explain
from tests.torch_reference_models import import_zennit

_zennit = import_zennit()  # with its stand-in for torchvision's two ResNet block classes
zc, Gradient = _zennit.composites, _zennit.Gradient
SequentialMergeBatchNorm, ZSum = _zennit.SequentialMergeBatchNorm, _zennit.Sum

ZENNIT = {
    "lrp.epsilon_plus": zc.EpsilonPlus,
    "lrp.epsilon_plus_flat": zc.EpsilonPlusFlat,
    "lrp.epsilon_alpha2_beta1": zc.EpsilonAlpha2Beta1,
    "lrp.epsilon_alpha2_beta1_flat": zc.EpsilonAlpha2Beta1Flat,
    "lrp.epsilon_gamma_box": zc.EpsilonGammaBox,
}


@pytest.fixture(scope="module")
def zennit_relevance(torch_twin):
    """``zennit_relevance(method)``: Zennit's relevance (NTHWC) on the twin with
    Zennit's ``Sum`` (the same weights: the same seed, a parameter-free Sum)."""
    net, x = twin.make_twin(ZSum), torch_twin[1]
    np.testing.assert_array_equal(net(x).detach().numpy(), torch_twin[0](x).detach().numpy())

    @functools.cache
    def relevance(method):
        options = twin.OPTIONS.get(method, {})
        composite = ZENNIT[method](canonizers=[SequentialMergeBatchNorm()], **options)
        with Gradient(model=net, composite=composite) as attributor:
            target = torch.eye(twin.CLASSES)[torch.as_tensor(twin.TARGET)]
            _, rel = attributor(x.clone().requires_grad_(True), target)
        return twin.to_nthwc(rel)

    return relevance


@pytest.mark.parametrize("method", list(ZENNIT))
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_relevance_equals_zennit(models, zennit_relevance, clips, case, method):
    twin.assert_matches(explain(models(*case), clips, method), zennit_relevance(method))
