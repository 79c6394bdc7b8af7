"""Test helpers that reach into the LRP engine: the relevance pass for any output
relevance (the tests seed more than the one-hot target :func:`lrp` seeds)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from selrel_jax.attribution import engine
from selrel_jax.attribution.composites import Composite


def relevance_vjp(
    model: Any, composite: Composite, variables: Any, clips: Any, **apply_kwargs: Any
) -> tuple[Any, Callable[[jax.Array], jax.Array]]:
    """``(outputs, pull)``: the model's outputs under the composite (BatchNorm
    merged) and ``pull(output_relevance) -> input relevance``."""
    model, default = engine._front(model, composite)
    params = engine._params(model, variables, default)
    clips = jnp.asarray(clips)
    plan = engine._plan(model, composite, params, clips, apply_kwargs)
    return engine._relevance_pass(plan, params, clips)
