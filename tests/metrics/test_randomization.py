"""Cascading randomisation: Spearman and SSIM against scipy and scikit-image, and the
cascade on a tiny model (a model-free map stays put, the gradient does not)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import spearmanr
from skimage.metrics import structural_similarity

from selrel_jax import metrics, models
from selrel_jax.errors import DTypeError, NonFiniteError, OptionError, ShapeError

CLIP = (8, 32, 32)


def _maps(seed: int, shape=(2, 3, 12, 10, 2), ties: bool = False) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    a, b = rng.normal(size=shape), rng.normal(size=shape)
    if ties:  # few distinct values: many tied ranks
        a, b = np.round(a), np.round(b)
    return a.astype(np.float32), b.astype(np.float32)


@settings(max_examples=8, deadline=None)
@given(seed=st.integers(0, 2**16), ties=st.booleans())
def test_spearman_equals_scipy(seed, ties):
    a, b = _maps(seed, ties=ties)
    got = np.asarray(metrics.spearman(a, b))
    va, vb = np.abs(a).sum(-1), np.abs(b).sum(-1)
    want = [spearmanr(va[i].ravel(), vb[i].ravel()).statistic for i in range(len(a))]
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_spearman_of_a_constant_map_is_zero_not_nan():
    a, b = _maps(0)
    got = metrics.spearman(np.zeros_like(a), b)
    np.testing.assert_array_equal(np.asarray(got), 0.0)


def _ssim_oracle(a: np.ndarray, b: np.ndarray) -> list[float]:
    va, vb = np.abs(a).sum(-1), np.abs(b).sum(-1)
    scores = []
    for clip_a, clip_b in zip(va, vb, strict=True):
        frames = [
            structural_similarity(fa / fa.max(), fb / fb.max(), data_range=1.0, win_size=7)
            for fa, fb in zip(clip_a, clip_b, strict=True)
        ]
        scores.append(np.mean(frames))
    return scores


@settings(max_examples=6, deadline=None)
@given(seed=st.integers(0, 2**16))
def test_ssim_equals_skimage(seed):
    a, b = _maps(seed)
    b = a + 0.5 * b  # partly similar maps: an SSIM well inside (-1, 1)
    np.testing.assert_allclose(np.asarray(metrics.ssim(a, b)), _ssim_oracle(a, b), atol=2e-6)


def test_ssim_of_a_map_with_itself_is_one():
    a, _ = _maps(3)
    np.testing.assert_allclose(np.asarray(metrics.ssim(a, a)), 1.0, atol=1e-5)


@pytest.fixture(scope="module")
def tiny():
    model = models.create("c3d_small", 6, width=0.25, clip_size=CLIP)
    variables = model.init(jax.random.key(0), jnp.zeros((1, *CLIP, 3)), train=False)
    clips = jax.random.normal(jax.random.key(1), (1, *CLIP, 3))
    return model, variables, clips


def _cascade(tiny, methods, key=7, layers=("fc",)):
    model, variables, clips = tiny
    return metrics.cascading_randomization(
        model, variables, clips, None, methods, key=jax.random.key(key), layers=layers
    )


def test_input_map_stays_correlated_and_is_flagged_while_gradient_decorrelates(tiny):
    result = _cascade(tiny, ["baseline.frame_difference", "gradient"])
    assert result.layers == ("fc",)
    assert result.spearman.shape == (2, 1, 1)
    for scores in (result.spearman, result.ssim, result.spearman_selective, result.ssim_selective):
        np.testing.assert_allclose(np.asarray(scores[0]), 1.0, atol=1e-5)
    assert float(result.spearman[1, -1].mean()) < metrics.INSENSITIVE_THRESHOLD
    assert float(result.ssim[1, -1].mean()) < 0.9
    assert result.insensitive() == ("baseline.frame_difference",)


def test_cascade_is_deterministic_given_the_key(tiny):
    first, again = _cascade(tiny, "gradient"), _cascade(tiny, "gradient")
    other = _cascade(tiny, "gradient", key=8)
    np.testing.assert_array_equal(np.asarray(first.spearman), np.asarray(again.spearman))
    np.testing.assert_array_equal(
        np.asarray(first.ssim_selective), np.asarray(again.ssim_selective)
    )
    assert not np.array_equal(np.asarray(first.spearman), np.asarray(other.spearman))


@pytest.mark.slow
def test_full_cascade_randomises_every_layer_head_first(tiny):
    result = _cascade(tiny, "gradient", layers=None)
    assert result.layers == ("fc", "conv4", "conv3", "conv2", "conv1")
    assert np.all(np.asarray(result.spearman[0, -1]) < metrics.INSENSITIVE_THRESHOLD)


@pytest.mark.parametrize(
    ("change", "error", "words"),
    [
        ({"layers": ["fc", "nope"]}, OptionError, "not among the params"),
        ({"methods": []}, OptionError, "methods is empty"),
        ({"clips": jnp.zeros((1, 8, 4, 4, 3))}, ShapeError, "H, W >= 7"),
        ({"variables": {"batch_stats": {}}}, OptionError, "'params'"),
    ],
)
def test_bad_input_is_one_clear_error(tiny, change, error, words):
    model, variables, clips = tiny
    kwargs = {"variables": variables, "clips": clips, "methods": "gradient", **change}
    with pytest.raises(error, match=words):
        metrics.cascading_randomization(model, key=jax.random.key(0), target=None, **kwargs)


@pytest.mark.parametrize(
    ("change", "error", "words"),
    [
        ({"clips": jnp.full((1, *CLIP, 3), jnp.nan)}, NonFiniteError, "non-finite"),
        ({"clips": jnp.zeros((1, *CLIP, 3), jnp.int32)}, DTypeError, "floating"),
        ({"target": jnp.array([6])}, OptionError, r"target must lie in \[0, 6\)"),
    ],
)
def test_bad_clips_or_target_are_refused_before_any_map(tiny, change, error, words):
    model, variables, clips = tiny
    kwargs = {"clips": clips, "target": None, **change}
    with pytest.raises(error, match=words):
        metrics.cascading_randomization(
            model, variables, methods="gradient", key=jax.random.key(0), **kwargs
        )
