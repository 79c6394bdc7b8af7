"""Checks of the model against the clips on its abstract trace (private module
``_model_checks``): clips too small for the model, variables of another model."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest

import selrel_jax as sr
from selrel_jax import models
from selrel_jax.errors import CheckpointError, ShapeError


@pytest.fixture(scope="module")
def c3d_small(numpy_variables):
    model = models.create("c3d_small", 5, width=0.25, clip_size=(4, 16, 16))
    return model, numpy_variables(model, (1, 4, 16, 16, 3))


# ---------------------------------------------------------------- case 2: clips too small


TOO_SMALL = [((1, 16, 16), "pool2"), ((3, 16, 16), "pool3"), ((4, 2, 2), "pool2")]


@pytest.mark.parametrize("method", ["lrp.epsilon_plus_flat", "gradient", "smoothgrad"])
@pytest.mark.parametrize(("clip", "layer"), TOO_SMALL)
def test_clips_too_small_for_the_model_raise_shape_error_naming_the_layer(
    c3d_small, method, clip, layer
):
    model, v = c3d_small
    x = jnp.ones((1, *clip, 3))
    size = ", ".join(map(str, clip))
    message = rf"clips of shape \(1, {size}, 3\) are too small for the model: layer '{layer}'"
    with pytest.raises(ShapeError, match=message):
        sr.explain(model, v, x, None, method)
    with pytest.raises(ShapeError, match=message):  # shapes are static: raised under jit too
        jax.jit(sr.make_explainer(model, method))(v, x, jnp.array([1]))


@pytest.mark.parametrize("method", ["gradient", "lrp.epsilon"])
def test_clips_too_small_for_a_plain_callable_raise_shape_error(method):
    """No linen module to name: the jaxpr shows a reduction over an empty axis."""
    weights = jnp.ones((2, 3))

    def apply_fn(clips):
        pooled = jax.lax.reduce_window(clips, -jnp.inf, jax.lax.max, (1, 4, 1, 1, 1),
                                       (1, 4, 1, 1, 1), "VALID")  # fmt: skip
        return jnp.mean(pooled, axis=(1, 2, 3)) @ weights

    assert apply_fn(jnp.ones((1, 4, 2, 2, 2))).shape == (1, 3)
    message = r"\(1, 3, 2, 2, 2\) are too small.* reads an empty array of shape \(1, 0, 2, 2, 2\)"
    with pytest.raises(ShapeError, match=message):
        sr.explain(apply_fn, None, jnp.ones((1, 3, 2, 2, 2)), None, method)
    with pytest.raises(ShapeError, match=message):  # the transform's own check
        sr.make_explainer(apply_fn, method)(None, jnp.ones((1, 3, 2, 2, 2)))


# ---------------------------------------------------------------- case 5: variables


@pytest.mark.parametrize("method", ["lrp.epsilon_plus_flat", "gradient", "grad_cam"])
def test_variables_of_another_model_raise_shape_error_naming_the_parameter(
    c3d_small, numpy_variables, method
):
    model, _ = c3d_small
    wider = models.create("c3d_small", 5, width=0.5, clip_size=(4, 16, 16))
    v = numpy_variables(wider, (1, 4, 16, 16, 3))
    x = jnp.ones((1, 4, 16, 16, 3))
    message = (
        r"variables do not fit the model: parameter 'conv1/kernel' has shape "
        r"\(3, 3, 3, 3, 8\), the model needs \(3, 3, 3, 3, 4\) for clips of shape "
        r"\(1, 4, 16, 16, 3\)"
    )
    with pytest.raises(ShapeError, match=message) as info:
        sr.explain(model, v, x, None, method)
    assert "\n" not in str(info.value) and "https://" not in str(info.value)
    with pytest.raises(ShapeError, match=message):
        jax.jit(sr.make_explainer(model, method))(v, x, jnp.array([0]))


@pytest.mark.parametrize("method", ["lrp.epsilon", "integrated_gradients"])
def test_variables_missing_a_layer_raise_checkpoint_error(c3d_small, method):
    model, v = c3d_small
    missing = {"params": {k: p for k, p in v["params"].items() if k != "conv3"}}
    with pytest.raises(CheckpointError, match=r'parameter named "kernel" in scope "/conv3"'):
        sr.explain(model, missing, jnp.ones((1, 4, 16, 16, 3)), None, method)
