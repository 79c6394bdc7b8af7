"""Module-scoped fixtures of the conformance suite: the torch twin and its clips,
each framework's model (built once per module, when first asked for) and the
linen relevance every framework is compared with."""

from __future__ import annotations

import functools

import jax.numpy as jnp
import pytest

from tests.attribution.conformance import frameworks, twin


@pytest.fixture(scope="module")
def torch_twin():
    """``(net, clips)``: the twin and its clips (torch, NCTHW)."""
    return twin.make_twin(), twin.torch_clips()


@pytest.fixture(scope="module")
def clips(torch_twin):
    return jnp.asarray(twin.to_nthwc(torch_twin[1]))


@pytest.fixture(scope="module")
def models(torch_twin):
    """``models(framework, form) -> Form``; each framework built once, on first use."""
    w = twin.weights(torch_twin[0])
    build = functools.cache(lambda framework: frameworks.BUILDERS[framework](w))
    return lambda framework, form: build(framework)[form]


@pytest.fixture(scope="module")
def linen_relevance(models, clips):
    """``linen_relevance(method)``: the relevance of ``explain(LinenNet(), variables)``."""
    reference = models("linen", "params")
    return functools.cache(lambda method: frameworks.explain(reference, clips, method))
