"""LRP does not depend on the framework: the twin's net in Flax linen, Flax NNX,
Haiku, Equinox, Penzai, plain JAX (batched) and plain JAX (per clip, vmapped),
each as a closure and with its params pytree, has the torch twin's logits, and
every named LRP composite gives it the relevance of the linen version. No Zennit
here (``test_zennit_twin.py`` checks linen against Zennit)."""

from __future__ import annotations

import numpy as np
import pytest

from selrel_jax.attribution.explain import LRP_METHODS
from tests.attribution.conformance.frameworks import CASES, case_id, explain
from tests.attribution.conformance.twin import assert_matches

# The reference itself (linen with its variables) is left out of the comparisons.
COMPARED = [case for case in CASES if case != ("linen", "params")]
# The transformer composites give this CNN epsilon_plus_flat's rules (checked once
# below); their own layers are compared across frameworks in test_lxt_twin.py.
TRANSFORMER = ("lrp.attn", "lrp.cp")
CNN_METHODS = [method for method in LRP_METHODS if method not in TRANSFORMER]


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_logits_equal_the_torch_twin(models, torch_twin, clips, case):
    net, x = torch_twin
    want = net(x).detach().numpy()
    np.testing.assert_allclose(np.asarray(models(*case).logits(clips)), want, atol=1e-5)


@pytest.mark.parametrize("method", CNN_METHODS)
@pytest.mark.parametrize("case", COMPARED, ids=case_id)
def test_composites_equal_linen(models, linen_relevance, clips, case, method):
    assert_matches(explain(models(*case), clips, method), linen_relevance(method))


@pytest.mark.parametrize("method", TRANSFORMER)
def test_transformer_composites_are_epsilon_plus_flat_on_a_cnn(linen_relevance, method):
    np.testing.assert_array_equal(linen_relevance(method), linen_relevance("lrp.epsilon_plus_flat"))
