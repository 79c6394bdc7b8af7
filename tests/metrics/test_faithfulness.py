"""Deletion and insertion curves, their baselines and frame freezing: a linear model whose
curve is computed by hand, float64 NumPy/SciPy oracles written from the definitions,
chunking and batching that change nothing, and the invalid-value policy."""

from __future__ import annotations

import functools
from fractions import Fraction

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.ndimage

import selrel_jax as sr
from selrel_jax import metrics, models


def sigmoid(x):
    return 1 / (1 + np.exp(-np.asarray(x, np.float64)))


# --- a linear model, by hand ---

# One clip of T=2 frames of 1x2 pixels, one channel: frames [1, 2] and [3, 6].
CLIP = np.array([[[[1.0], [2.0]]], [[[3.0], [6.0]]]], np.float32)  # (2, 1, 2, 1)
WEIGHTS = np.array([[[[1.0], [-1.0]]], [[[2.0], [0.5]]]], np.float32)


def linear_apply(clips):
    """Logits (w . x, 0): the probability of class 0 is sigmoid(w . x)."""
    score = jnp.sum(clips * WEIGHTS, axis=(1, 2, 3, 4))
    return jnp.stack([score, jnp.zeros_like(score)], axis=-1)


def test_deletion_and_insertion_of_a_linear_model_by_hand():
    # Relevance w * x = [1, -2 | 6, 3]: the order is (t1,p0), (t1,p1), (t0,p1), (t0,p0).
    # Temporal means per pixel: 2 and 4. w . x = 1 - 2 + 6 + 3 = 8. Deleting in order:
    # 3 -> 2 at weight 2 (-2), 6 -> 4 at 0.5 (-1), 2 -> 4 at -1 (-2), 1 -> 2 at 1 (+1).
    deletion_logits = [8, 6, 5, 3, 4]
    # Inserting into the all-mean clip (w . mean = 2 - 4 + 4 + 2 = 4), in the same order.
    insertion_logits = [4, 6, 7, 9, 8]
    rel = CLIP * WEIGHTS
    for fn, logits in (
        (metrics.deletion_curve, deletion_logits),
        (metrics.insertion_curve, insertion_logits),
    ):
        curve = fn(linear_apply, CLIP, rel, 0, steps=4)
        p = sigmoid(logits)
        np.testing.assert_allclose(curve.fractions, [0, 0.25, 0.5, 0.75, 1])
        np.testing.assert_allclose(curve.probability, p, rtol=1e-6)
        auc = 0.25 * (p[0] / 2 + p[1] + p[2] + p[3] + p[4] / 2)
        assert float(curve.auc) == pytest.approx(auc, rel=1e-6)
        assert curve.probability.shape == (5,) and curve.auc.shape == ()


def test_frame_freezing_of_a_linear_model_by_hand():
    # T=2: the middle frame is frame 1 ([3, 6]); frozen, w . x = 3 - 6 + 6 + 3 = 6.
    got = metrics.frame_freezing(linear_apply, CLIP, 0)
    assert float(got.original) == pytest.approx(sigmoid(8), rel=1e-6)
    assert float(got.frozen) == pytest.approx(sigmoid(6), rel=1e-6)
    assert float(got.drop) == pytest.approx(sigmoid(8) - sigmoid(6), abs=1e-7)
    # Frame 0 ([1, 2]) repeated: 1 - 2 + 2 + 1 = 2.
    first = metrics.frame_freezing(linear_apply, CLIP, 0, frame=0)
    assert float(first.frozen) == pytest.approx(sigmoid(2), rel=1e-6)
    still = np.repeat(CLIP[:1], 2, axis=0)
    assert float(metrics.frame_freezing(linear_apply, still).drop) == 0.0


# --- oracles for a random softmax-linear model ---


def make_linear(seed: int, shape, classes: int = 3):
    w = np.random.default_rng(seed).standard_normal((classes, *shape)).astype(np.float32)

    def apply_fn(clips):
        return jnp.einsum("nthwc,kthwc->nk", clips, w)

    def oracle_probabilities(clip):
        logits = np.einsum("thwc,kthwc->k", clip.astype(np.float64), w.astype(np.float64))
        e = np.exp(logits - logits.max())
        return e / e.sum()

    return apply_fn, oracle_probabilities


def oracle_curve(oracle_p, clip, rel, target, steps, baseline, insertion):
    v = np.abs(rel.astype(np.float64))
    v = (v.sum(-1) if v.ndim == 4 else v).ravel()
    order = sorted(range(v.size), key=lambda i: (-v[i], i))
    fractions, probs = [], []
    for i in range(steps + 1):
        k = int(Fraction(i * v.size, steps) + Fraction(1, 2))  # round half up
        chosen = np.zeros(v.size, bool)
        chosen[order[:k]] = True
        chosen = chosen.reshape(clip.shape[:3])[..., None]
        x = np.where(chosen, clip, baseline) if insertion else np.where(chosen, baseline, clip)
        fractions.append(k / v.size)
        probs.append(oracle_p(x)[target])
    f, p = np.array(fractions), np.array(probs)
    return f, p, float(np.sum((f[1:] - f[:-1]) * (p[1:] + p[:-1]) / 2))


def oracle_blur(clips, sigma):
    x = clips.astype(np.float64)
    for axis in (-3, -2):
        x = scipy.ndimage.gaussian_filter1d(x, sigma, axis=axis, mode="nearest", truncate=3.0)
    return x


def test_baselines_match_numpy_and_scipy():
    clips = np.random.default_rng(1).standard_normal((2, 4, 9, 7, 3)).astype(np.float32)
    mean = np.asarray(metrics.faithfulness_baseline(clips))
    want = np.broadcast_to(clips.astype(np.float64).mean(1, keepdims=True), clips.shape)
    np.testing.assert_allclose(mean, want, rtol=1e-5, atol=1e-6)
    for sigma in (0.7, 1.0, 2.0):
        blur = np.asarray(metrics.faithfulness_baseline(clips, "blur", blur_sigma=sigma))
        np.testing.assert_allclose(blur, oracle_blur(clips, sigma), rtol=1e-5, atol=1e-5)
    one = np.asarray(metrics.faithfulness_baseline(clips[1], "blur"))
    np.testing.assert_allclose(one, oracle_blur(clips[1], 2.0), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("insertion", [False, True])
@pytest.mark.parametrize("replacement", ["temporal_mean", "blur"])
@pytest.mark.parametrize("steps", [1, 4, 7])
def test_curves_match_the_oracle(insertion, replacement, steps):
    shape = (3, 4, 5, 2)  # n = 60 voxels: 7 steps round 60 i / 7 half up
    apply_fn, oracle_p = make_linear(2, shape)
    rng = np.random.default_rng(3)
    clips = rng.standard_normal((2, *shape)).astype(np.float32)
    rel = (rng.integers(-3, 4, (2, *shape)) / 2).astype(np.float32)  # ties on purpose
    target = np.array([0, 2])
    fn = metrics.insertion_curve if insertion else metrics.deletion_curve
    got = fn(apply_fn, clips, rel, target, steps=steps, replacement=replacement, blur_sigma=1.0)
    assert got.probability.shape == (2, steps + 1) and got.auc.shape == (2,)
    for i in range(2):
        base = (
            np.broadcast_to(clips[i].mean(0), clips[i].shape)
            if replacement == "temporal_mean"
            else oracle_blur(clips[i], 1.0)
        )
        f, p, auc = oracle_curve(oracle_p, clips[i], rel[i], target[i], steps, base, insertion)
        np.testing.assert_allclose(got.fractions, f, rtol=1e-6)
        np.testing.assert_allclose(got.probability[i], p, rtol=2e-4, atol=1e-6)
        assert float(got.auc[i]) == pytest.approx(auc, rel=2e-4, abs=1e-6)


def test_chunks_batches_targets_and_jit_change_nothing():
    shape = (4, 3, 3, 3)
    apply_fn, _ = make_linear(4, shape, classes=4)
    rng = np.random.default_rng(5)
    clips = rng.standard_normal((3, *shape)).astype(np.float32)
    rel = (rng.integers(-2, 3, (3, *shape[:3])) * 1.0).astype(np.float32)  # NTHW
    curve = functools.partial(metrics.deletion_curve, apply_fn, steps=5, layout="NTHW")
    # The model's own float32 sums differ in the last bits between batch sizes.
    want = curve(clips, rel)
    for chunk in (2, 6, 50):  # uneven, steps + 1, more than the steps
        got = curve(clips, rel, chunk_size=chunk)
        np.testing.assert_allclose(got.probability, want.probability, rtol=1e-5, atol=1e-9)
    predicted = np.asarray(apply_fn(clips)).argmax(-1)
    np.testing.assert_array_equal(curve(clips, rel, predicted).probability, want.probability)
    for i in range(3):
        one = metrics.deletion_curve(apply_fn, clips[i], rel[i], steps=5)
        np.testing.assert_allclose(one.probability, want.probability[i], rtol=1e-5, atol=1e-9)
        single = curve(clips[i : i + 1], rel[i : i + 1])
        np.testing.assert_allclose(single.auc, want.auc[i : i + 1], rtol=1e-5, atol=1e-9)
    jitted = jax.jit(lambda c, r: curve(c, r, chunk_size=2))(clips, rel)
    np.testing.assert_allclose(jitted.probability, want.probability, rtol=1e-5, atol=1e-9)
    vmapped = jax.vmap(lambda c, r: metrics.deletion_curve(apply_fn, c, r, steps=5))(clips, rel)
    np.testing.assert_allclose(vmapped.auc, want.auc, rtol=1e-5, atol=1e-9)
    frozen = metrics.frame_freezing(apply_fn, clips, frame=3)
    jit_frozen = jax.jit(lambda c: metrics.frame_freezing(apply_fn, c, frame=3))(clips)
    np.testing.assert_allclose(jit_frozen.drop, frozen.drop, rtol=1e-5, atol=1e-9)


def test_a_flax_model_through_partial_apply(numpy_variables):
    model = models.create("c3d_small", 3, clip_size=(4, 8, 8))
    variables = numpy_variables(model, (1, 4, 8, 8, 3))
    apply_fn = functools.partial(model.apply, variables, train=False)
    clips = np.random.default_rng(6).standard_normal((2, 4, 8, 8, 3)).astype(np.float32)
    rel = np.random.default_rng(7).standard_normal(clips.shape).astype(np.float32)
    curve = metrics.insertion_curve(apply_fn, clips, rel, steps=2, chunk_size=3)
    p = jax.nn.softmax(apply_fn(clips), axis=-1)
    np.testing.assert_allclose(curve.probability[:, -1], p.max(-1), rtol=1e-5)
    freeze = metrics.frame_freezing(apply_fn, clips)
    np.testing.assert_allclose(freeze.original, p.max(-1), rtol=1e-5)


def test_an_unhashable_apply_fn_is_used_by_identity():
    class Model:
        __hash__ = None

        def __call__(self, clips):
            return linear_apply(clips)

    got = metrics.deletion_curve(Model(), CLIP, CLIP * WEIGHTS, 0, steps=4)
    np.testing.assert_allclose(got.probability[0], sigmoid(8), rtol=1e-6)


# --- invalid values and bad arguments ---


def test_nonfinite_input_raises_eagerly_and_is_nan_for_its_clip_under_jit():
    shape = (3, 3, 3, 2)
    apply_fn, _ = make_linear(8, shape)
    rng = np.random.default_rng(9)
    clips = rng.standard_normal((3, *shape)).astype(np.float32)
    rel = rng.standard_normal((3, *shape)).astype(np.float32)
    bad_rel, bad_clips = rel.copy(), clips.copy()
    bad_rel[1, 0, 0, 0, 0] = np.nan
    bad_clips[2, 0, 1, 0, 1] = np.inf
    curve = functools.partial(metrics.deletion_curve, apply_fn, steps=3)
    with pytest.raises(sr.NonFiniteError, match=r"relevance .* clip\(s\) \[1\]"):
        curve(clips, bad_rel)
    with pytest.raises(sr.NonFiniteError, match=r"clips .* clip\(s\) \[2\]"):
        curve(bad_clips, rel, 0)
    with pytest.raises(sr.NonFiniteError, match=r"frame_freezing: clips .* clip\(s\) \[2\]"):
        metrics.frame_freezing(apply_fn, bad_clips)
    got = jax.jit(lambda c, r: curve(c, r, 0))(bad_clips, bad_rel)
    assert np.isnan(got.probability[1:]).all() and np.isnan(got.auc[1:]).all()
    np.testing.assert_allclose(got.probability[0], curve(clips[:1], rel[:1], 0).probability[0])
    frozen = jax.jit(lambda c: metrics.frame_freezing(apply_fn, c, 1))(bad_clips)
    assert np.isnan(frozen.drop[2]) and not np.isnan(frozen.drop[:2]).any()
    out_of_range = jax.jit(lambda t: curve(clips, rel, t))(jnp.array([0, 3, 1]))
    auc = np.asarray(out_of_range.auc)
    assert np.isnan(auc[1]) and not np.isnan(auc[[0, 2]]).any()


def _bad(**overrides):
    args = {
        "apply_fn": linear_apply,
        "clips": CLIP,
        "relevance": CLIP * WEIGHTS,
        "target": None,
        "steps": 4,
    }
    args.update(overrides)
    return args


@pytest.mark.parametrize(
    "args, error, message",
    [
        (_bad(apply_fn="model"), sr.OptionError, "apply_fn must be a callable"),
        (_bad(apply_fn=lambda x: x), sr.ShapeError, r"apply_fn must map clips .* logits"),
        (_bad(clips=CLIP.astype(int)), sr.DTypeError, "clips must be a real floating"),
        (_bad(clips=CLIP[0]), sr.ShapeError, r"clips must be one clip \(T, H, W, C\)"),
        (_bad(clips=CLIP[:0]), sr.ShapeError, "empty axis"),
        (_bad(relevance=CLIP[None]), sr.ShapeError, r"relevance must have the clips' \(T, H, W\)"),
        (_bad(relevance=CLIP[:, :, :1]), sr.ShapeError, "relevance must have"),
        (_bad(target=2), sr.OptionError, r"target must lie in \[0, 2\)"),
        (_bad(target=0.0), sr.DTypeError, "target must be an integer"),
        (_bad(target=np.array([0, 1])), sr.ShapeError, "target must be a scalar"),
        (_bad(steps=0), sr.OptionError, "deletion_curve: steps"),
        (_bad(replacement="zeros"), sr.OptionError, "replacement must be one of"),
        (_bad(blur_sigma=0.0), sr.OptionError, "blur_sigma must be a finite number > 0"),
        (_bad(chunk_size=0), sr.OptionError, "chunk_size"),
    ],
)
def test_bad_arguments_raise_one_clear_line(args, error, message):
    with pytest.raises(error, match=message) as info:
        metrics.deletion_curve(**args)
    assert "\n" not in str(info.value)


def test_bad_frame_raises():
    with pytest.raises(sr.OptionError, match=r"frame must lie in \[0, 2\)"):
        metrics.frame_freezing(linear_apply, CLIP, frame=2)
    with pytest.raises(sr.OptionError, match="frame must be an int >= 0"):
        metrics.frame_freezing(linear_apply, CLIP, frame=-1)
