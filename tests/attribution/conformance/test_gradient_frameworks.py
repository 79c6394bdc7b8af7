"""The gradient family does not depend on the framework: every method gives each
framework and form (see ``frameworks.py``) the result of the linen version, and
"gradient" is ``jax.grad`` of the target logit summed over clips, taken through
the framework's own forward pass. Grad-CAM finds its layer on the traced
computation, so it runs on every framework too (it used to hook linen modules
only: a strict xfail here before)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from selrel_jax.attribution.explain import GRADIENT_METHODS
from tests.attribution.conformance.frameworks import CASES, case_id, explain
from tests.attribution.conformance.twin import TARGET, assert_matches


def _params():
    for case in CASES:
        if case == ("linen", "params"):  # the reference
            continue
        for method in GRADIENT_METHODS:
            yield pytest.param(case, method, id=f"{case_id(case)}-{method}")


@pytest.mark.parametrize(("case", "method"), list(_params()))
def test_gradient_methods_equal_linen(models, linen_relevance, clips, case, method):
    assert_matches(explain(models(*case), clips, method), linen_relevance(method))


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_gradient_is_jax_grad_of_the_target_logit(models, clips, case):
    form = models(*case)
    rows = jnp.arange(len(TARGET))
    want = jax.grad(lambda x: jnp.sum(form.logits(x)[rows, TARGET]))(clips)
    assert_matches(explain(form, clips, "gradient"), np.asarray(want))
