"""Model-free baselines: each equal to a NumPy oracle of its formula (loops over
frames and kernel taps), independent of the model, the batch and jit; the
channel sum is the map; a static clip has no frame difference."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import selrel_jax as sr
from selrel_jax import models
from selrel_jax.attribution import baselines
from selrel_jax.errors import OptionError

BASELINES = ("baseline.random", "baseline.frame_difference", "baseline.input_sobel")
CLIP = (4, 8, 8)


@pytest.fixture(scope="module")
def tiny():
    model = models.create("c3d_small", 3, width=0.25, clip_size=CLIP)
    variables = model.init(jax.random.key(0), jnp.zeros((1, *CLIP, 3)), train=False)
    x = np.random.default_rng(2).normal(size=(3, *CLIP, 3)).astype(np.float32)
    return model, variables, x


def _frame_difference_oracle(x: np.ndarray) -> np.ndarray:
    n, t, h, w, c = x.shape
    maps = np.zeros((n, t, h, w))
    for f in range(1, t):
        for ch in range(c):
            maps[:, f] += np.abs(x[:, f, ..., ch].astype(np.float64) - x[:, f - 1, ..., ch])
    return maps


def _sobel_oracle(x: np.ndarray, padding: str) -> np.ndarray:
    """|D|, D(t) = S*X(t-1) - S*X(t+1): a 3x3x3 cross-correlation, taps written out."""
    s = np.array([1.0, 2.0, 1.0])
    kernel = np.array([1.0, 0.0, -1.0])[:, None, None] * s[None, :, None] * s[None, None, :]
    summed = x.astype(np.float64).sum(axis=-1)
    padded = np.pad(summed, ((0, 0), (0, 0), (1, 1), (1, 1)))
    padded = np.pad(padded, ((0, 0), (1, 1), (0, 0), (0, 0)),
                    mode="constant" if padding == "zero" else "edge")  # fmt: skip
    n, t, h, w = summed.shape
    d = np.zeros((n, t, h, w))
    for dt, dh, dw in np.ndindex(3, 3, 3):
        d += kernel[dt, dh, dw] * padded[:, dt : dt + t, dh : dh + h, dw : dw + w]
    return np.abs(d)


def _per_channel(maps: np.ndarray, channels: int) -> np.ndarray:
    return np.repeat(maps[..., None] / channels, channels, axis=-1)


def test_frame_difference_equals_the_numpy_oracle(tiny):
    model, variables, x = tiny
    got = sr.explain(model, variables, x, None, "baseline.frame_difference")
    want = _per_channel(_frame_difference_oracle(x), 3)
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-6)
    assert not np.asarray(got)[:, 0].any()  # frame 0 has no previous frame


@pytest.mark.parametrize("padding", ["zero", "edge"])
def test_input_sobel_equals_the_numpy_oracle_and_selectives_kernel(tiny, padding):
    model, variables, x = tiny
    got = sr.explain(model, variables, x, None, "baseline.input_sobel", temporal_padding=padding)
    want = _sobel_oracle(x, padding)
    np.testing.assert_allclose(np.asarray(got), _per_channel(want, 3), rtol=1e-5, atol=1e-5)
    selective_kernel = sr.temporal_gradient(x, temporal_padding=padding)  # the same |D|
    np.testing.assert_allclose(np.asarray(got).sum(-1), np.asarray(selective_kernel), rtol=1e-5,
                               atol=1e-5)  # fmt: skip


def test_random_is_a_seeded_uniform_draw_shared_by_the_clips(tiny):
    model, variables, x = tiny
    got = np.asarray(sr.explain(model, variables, x, None, "baseline.random", key=7)).sum(-1)
    want = np.asarray(jax.random.uniform(jax.random.key(7), CLIP))
    np.testing.assert_allclose(got, np.broadcast_to(want, got.shape), rtol=1e-6)
    assert 0.0 <= got.min() and got.max() < 1.0 and abs(got.mean() - 0.5) < 0.05
    by_key = sr.explain(model, variables, x, None, "baseline.random", key=jax.random.key(7))
    np.testing.assert_array_equal(np.asarray(by_key).sum(-1), got)
    other = np.asarray(sr.explain(model, variables, x, None, "baseline.random", key=8)).sum(-1)
    assert np.abs(other - got).max() > 0.1


@pytest.mark.parametrize("method", BASELINES)
def test_maps_ignore_the_model_and_the_batch_and_jit(tiny, method, random_variables):
    model, variables, x = tiny
    eager = np.asarray(sr.explain(model, variables, x, None, method))
    other_weights = random_variables(model, jnp.asarray(x), 5)
    np.testing.assert_array_equal(np.asarray(sr.explain(model, other_weights, x, None, method)),
                                  eager)  # fmt: skip
    fn = jax.jit(sr.make_explainer(model, method))
    np.testing.assert_allclose(np.asarray(fn(variables, x, None)), eager, rtol=1e-6, atol=1e-7)
    alone = sr.explain(model, variables, x[2:], None, method)
    np.testing.assert_allclose(np.asarray(alone), eager[2:], rtol=1e-6, atol=1e-7)
    assert eager.min() >= 0 and eager.shape == x.shape and eager.dtype == np.float32


@pytest.mark.parametrize("method", BASELINES)
def test_a_traced_nan_clip_gets_nan_and_the_others_do_not(tiny, method):
    model, variables, x = tiny
    fn = jax.jit(sr.make_explainer(model, method))
    bad = x.copy()
    bad[1, 2, 3, 4, 0] = np.nan
    got, clean = np.asarray(fn(variables, bad, None)), np.asarray(fn(variables, x, None))
    assert np.isnan(got[1]).all()
    np.testing.assert_array_equal(got[[0, 2]], clean[[0, 2]])


def _apply(clips):
    return jnp.zeros((clips.shape[0], 2), clips.dtype) + jnp.sum(clips)


# Jitted, as explain calls them: op by op, every drawn shape compiles each operation.
_frame_difference = jax.jit(baselines.frame_difference, static_argnums=0)
_input_sobel = jax.jit(baselines.input_sobel, static_argnums=0,
                       static_argnames="temporal_padding")  # fmt: skip


@settings(max_examples=25, deadline=None)
@given(
    frame=hnp.arrays(np.float32, st.tuples(st.integers(1, 5), st.integers(1, 5), st.integers(1, 3)),
                     elements=st.floats(-4, 4, width=32)),
    frames=st.integers(1, 4),
)  # fmt: skip
def test_a_static_clip_has_no_frame_difference_and_no_edge_padded_sobel(frame, frames):
    clips = jnp.broadcast_to(jnp.asarray(frame), (1, frames, *frame.shape))
    assert not np.asarray(_frame_difference(_apply, clips)).any()
    edge = _input_sobel(_apply, clips, temporal_padding="edge")
    np.testing.assert_array_equal(np.asarray(edge), 0.0)


@settings(max_examples=25, deadline=None)
@given(
    clips=hnp.arrays(np.float32, st.tuples(st.integers(1, 2), st.integers(1, 4),
                                           st.integers(1, 4), st.integers(1, 4),
                                           st.integers(1, 3)),
                     elements=st.floats(-4, 4, width=32)),
)  # fmt: skip
def test_every_shape_equals_the_oracles_and_the_channel_sum_is_the_map(clips):
    diff = np.asarray(_frame_difference(_apply, clips))
    np.testing.assert_allclose(diff.sum(-1), _frame_difference_oracle(clips), rtol=1e-5,
                               atol=1e-5)  # fmt: skip
    sobel = np.asarray(_input_sobel(_apply, clips))
    np.testing.assert_allclose(sobel.sum(-1), _sobel_oracle(clips, "zero"), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize(
    ("method", "options", "message"),
    [("baseline.input_sobel", {"temporal_padding": "reflect"},
      r"baseline.input_sobel temporal_padding must be one of"),
     ("baseline.random", {"key": 0.5}, r"baseline.random key must be a JAX PRNG key"),
     ("baseline.frame_difference", {"key": 0}, r"unknown option\(s\) \['key'\]")],
)  # fmt: skip
def test_bad_options_raise_one_clear_line(tiny, method, options, message):
    model, variables, x = tiny
    with pytest.raises(OptionError, match=message):
        sr.explain(model, variables, x, None, method, **options)
