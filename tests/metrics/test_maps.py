"""Scores of relevance maps against independent float64 NumPy oracles written from their
definitions, their invariants, and their behaviour under jit and vmap."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats
from hypothesis import given, settings
from hypothesis import strategies as st

import selrel_jax as sr
from selrel_jax import metrics
from selrel_jax.metrics import _inputs
from tests.examples import examples

# --- oracles ---


def oracle_gini(clip: np.ndarray) -> float:
    """Mean absolute difference over twice the mean, over all pairs of voxels: the Gini
    index's definition, not the sorted formula the library uses."""
    x = np.abs(np.asarray(clip, np.float64))
    x = (x.sum(-1) if x.ndim == 4 else x).ravel()
    if x.sum() == 0:
        return 0.0
    return float(np.abs(x[:, None] - x[None, :]).sum() / (2 * x.size * x.sum()))


def oracle_frame_mass(clip: np.ndarray) -> np.ndarray:
    x = np.abs(np.asarray(clip, np.float64))
    return x.reshape(x.shape[0], -1).sum(-1)


def oracle_entropy(clip: np.ndarray, base: float | None = None) -> float:
    """SciPy's Shannon entropy of the channel-summed magnitudes (it normalises them)."""
    x = np.abs(np.asarray(clip, np.float64))
    x = (x.sum(-1) if x.ndim == 4 else x).ravel()
    return float(scipy.stats.entropy(x, base=base)) if x.sum() > 0 else 0.0


def random_relevance(seed: int, shape, dtype=np.float32) -> np.ndarray:
    rng = np.random.default_rng(seed)
    # Sparse, heavy-tailed, signed: like real relevance maps.
    x = rng.standard_normal(shape) * (rng.random(shape) < 0.3) * rng.exponential(1.0, shape)
    return x.astype(dtype)


CLIP_SHAPES = [(3, 4, 5), (6, 5, 4, 3), (2, 3, 3, 1), (1, 1, 1), (4, 2, 7, 2)]


@pytest.mark.parametrize("shape", CLIP_SHAPES)
def test_gini_and_frame_mass_match_oracles_for_one_clip(shape):
    rel = random_relevance(sum(shape), shape)
    g = np.asarray(metrics.gini(rel))
    assert g.shape == () and g.dtype == np.float32
    np.testing.assert_allclose(g, oracle_gini(rel), rtol=1e-5, atol=1e-6)
    m = np.asarray(metrics.frame_mass(rel))
    assert m.shape == (shape[0],) and m.dtype == np.float32
    np.testing.assert_allclose(m, oracle_frame_mass(rel), rtol=1e-5)
    h = np.asarray(metrics.entropy(rel))
    assert h.shape == () and h.dtype == np.float32
    np.testing.assert_allclose(h, oracle_entropy(rel), rtol=1e-5, atol=1e-6)
    bits = float(metrics.entropy(rel, unit="bits"))
    assert bits == pytest.approx(oracle_entropy(rel, base=2), rel=1e-5, abs=1e-6)


@pytest.mark.parametrize("layout, shape", [("NTHWC", (3, 5, 4, 4, 2)), ("NTHW", (3, 5, 4, 4))])
def test_batches_are_scored_per_clip(layout, shape):
    rel = random_relevance(3, shape)
    kw = {"layout": layout} if layout == "NTHW" else {}
    np.testing.assert_allclose(
        np.asarray(metrics.gini(rel, **kw)), [oracle_gini(c) for c in rel], rtol=1e-5
    )
    np.testing.assert_allclose(
        np.asarray(metrics.frame_mass(rel, **kw)),
        np.stack([oracle_frame_mass(c) for c in rel]),
        rtol=1e-5,
    )
    np.testing.assert_allclose(
        np.asarray(metrics.entropy(rel, **kw)), [oracle_entropy(c) for c in rel], rtol=1e-5
    )


def test_gini_special_values():
    n = 4 * 5 * 6
    assert float(metrics.gini(np.zeros((4, 5, 6), np.float32))) == 0.0
    assert float(metrics.gini(np.full((4, 5, 6, 3), -2.5, np.float32))) == pytest.approx(
        0, abs=1e-6
    )
    one = np.zeros((4, 5, 6), np.float32)
    one[2, 3, 1] = 7.0
    assert float(metrics.gini(one)) == pytest.approx((n - 1) / n, rel=1e-6)
    # Channels are summed as magnitudes: opposite signs in one voxel don't cancel.
    pair = np.zeros((3, 2, 2, 2), np.float32)
    pair[0, 0, 0] = [1.0, -1.0]
    assert float(metrics.gini(pair)) == pytest.approx(11 / 12, rel=1e-6)


def _gini_by_float_sort(clip: np.ndarray) -> np.ndarray:
    """The sorted formula with a float sort (jnp.sort): gini sorts the magnitudes as
    their integer bit patterns instead, which must give the very same values."""
    v = jnp.sort(_inputs.magnitudes(jnp.asarray(clip)).ravel())
    n = v.size
    g = jnp.sum((2 * jnp.arange(1, n + 1, dtype=v.dtype) - n - 1) * v) / (n * jnp.sum(v))
    return np.asarray(jnp.where(jnp.sum(v) > 0, g, 0))


@pytest.mark.parametrize(
    "clip",
    [
        random_relevance(41, (4, 5, 6, 3)),
        (np.random.default_rng(42).integers(-2, 3, (4, 5, 6, 2)) / 2).astype(np.float32),
        np.zeros((3, 4, 5), np.float32),
        np.array([[[1e-45, 0.0, -0.0, 3e37, 1.0]]], np.float32),  # subnormal, -0, huge
    ],
)
def test_gini_equals_the_float_sort_formula_exactly(clip):
    assert np.asarray(metrics.gini(clip)) == _gini_by_float_sort(clip)
    v = _inputs.magnitudes(jnp.asarray(clip))
    np.testing.assert_array_equal(np.asarray(_inputs.ascending(v)), np.sort(np.asarray(v).ravel()))


def test_gini_of_a_map_with_nan_or_inf_is_nan_under_jit():
    clip = random_relevance(43, (3, 4, 5, 2))
    for value in (np.nan, np.inf, -np.inf):
        bad = clip.copy()
        bad[1, 2, 3, 1] = value
        assert np.isnan(np.asarray(jax.jit(metrics.gini)(bad)))


def test_entropy_special_values():
    n = 4 * 5 * 6
    assert float(metrics.entropy(np.zeros((4, 5, 6), np.float32))) == 0.0
    uniform = np.full((4, 5, 6, 3), -2.5, np.float32)
    assert float(metrics.entropy(uniform)) == pytest.approx(np.log(n), rel=1e-6)
    assert float(metrics.entropy(uniform, unit="bits")) == pytest.approx(np.log2(n), rel=1e-6)
    one = np.zeros((4, 5, 6), np.float32)
    one[2, 3, 1] = 7.0
    assert float(metrics.entropy(one)) == 0.0
    two = one.copy()
    two[0, 0, 0] = -7.0
    assert float(metrics.entropy(two, unit="bits")) == pytest.approx(1.0, rel=1e-6)
    with pytest.raises(sr.OptionError, match="entropy: unit must be one of nats, bits"):
        metrics.entropy(one, unit="bans")


def test_gini_of_low_precision_is_computed_in_float32():
    rel = random_relevance(4, (5, 8, 8, 3))
    half = rel.astype(jnp.bfloat16)
    got = metrics.gini(jnp.asarray(half))
    assert got.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(got), oracle_gini(half.astype(np.float32)), rtol=1e-5)


def test_kept_voxels_is_the_share_of_true():
    rel = random_relevance(5, (3, 6, 7, 7, 3))
    mask = sr.motion_mask(rel, 1.0)  # (N, T, H, W): a batch without layout=
    got = np.asarray(metrics.kept_voxels(mask))
    assert got.shape == (3,) and got.dtype == np.float32
    np.testing.assert_allclose(got, np.asarray(mask).mean(axis=(1, 2, 3)), rtol=1e-6)
    assert float(metrics.kept_voxels(np.asarray(mask)[1])) == pytest.approx(got[1])
    assert float(metrics.kept_voxels(np.zeros((3, 2, 2), bool))) == 0.0
    assert float(metrics.kept_voxels(np.ones((3, 2, 2), bool))) == 1.0


def test_spatial_bias_is_selectives_and_of_a_video_is_mass_weighted():
    assert metrics.spatial_bias is sr.spatial_bias
    rel = random_relevance(6, (4, 5, 6, 6, 3))
    sel = np.asarray(sr.selective_relevance(rel, 1.0))
    per_clip = np.asarray(metrics.spatial_bias(rel, sel))
    video = float(metrics.spatial_bias(rel.reshape(-1, 6, 6, 3), sel.reshape(-1, 6, 6, 3)))
    weights = np.abs(rel).sum(axis=(1, 2, 3, 4))
    assert video == pytest.approx(np.average(per_clip, weights=weights), rel=1e-5)


# --- invariants ---

clip_dims = st.tuples(
    st.integers(1, 5), st.integers(1, 5), st.integers(1, 5), st.sampled_from([0, 1, 3])
)


def _clip(dims, seed):
    t, h, w, c = dims
    return random_relevance(seed, (t, h, w) if c == 0 else (t, h, w, c))


@jax.jit
def _jitted_ginis_of_selections(rel, selections):
    """As the sweep computes them: magnitudes, their sort and the Ginis in one program."""
    from selrel_jax.metrics import _maps

    v = _inputs.magnitudes(rel)
    return _maps._ginis_of_selections(v, _inputs.ascending(v), selections)


@settings(max_examples=examples(40), deadline=None)
@given(clip_dims, st.integers(0, 2**31 - 1), st.integers(1, 6), st.booleans())
def test_ginis_of_selections_equal_the_gini_of_each_selected_map(dims, seed, count, coarse):
    # The sweep's one-sort Gini of S selections of a map (the selective maps of S sigmas)
    # against the pairwise oracle of each; coarse values make many ties.
    rel = _clip(dims, seed)
    if coarse:
        rel = np.round(rel * 2) / 2
    rng = np.random.default_rng(seed)
    selections = rng.random((count, *rel.shape[:3])) < rng.random((count, 1, 1, 1))
    got = _jitted_ginis_of_selections(jnp.asarray(rel), jnp.asarray(selections))
    chosen = [rel * (s if rel.ndim == 3 else s[..., None]) for s in selections]
    np.testing.assert_allclose(got, [oracle_gini(c) for c in chosen], rtol=1e-5, atol=1e-6)


@settings(max_examples=examples(40), deadline=None)
@given(clip_dims, st.integers(0, 2**31 - 1), st.integers(-8, 8), st.booleans())
def test_gini_is_scale_and_sign_invariant(dims, seed, k, negate):
    rel = _clip(dims, seed)
    factor = np.float32(2.0**k) * (-1 if negate else 1)
    np.testing.assert_allclose(metrics.gini(rel * factor), metrics.gini(rel), rtol=1e-5, atol=1e-6)


@settings(max_examples=examples(40), deadline=None)
@given(clip_dims, st.integers(0, 2**31 - 1))
def test_gini_is_permutation_invariant_and_bounded(dims, seed):
    rel = _clip(dims, seed)
    voxels = rel.reshape(-1, *rel.shape[3:])
    shuffled = np.random.default_rng(seed).permutation(voxels).reshape(rel.shape)
    g = float(metrics.gini(rel))
    assert float(metrics.gini(shuffled)) == pytest.approx(g, abs=1e-6)
    n = np.prod(rel.shape[:3])
    assert -1e-6 <= g <= (n - 1) / n + 1e-6


#: c = 10**u: log-uniform over [1e-38, 1e38]; maps are scaled to max |r| = 1 first,
#: so every c keeps c * r finite (at 1e-38 all subnormal).
scales = st.floats(-38.0, 38.0).map(lambda u: 10.0**u)


def _times(r: np.ndarray, c: float) -> np.ndarray:
    """c * r rounded once to float32, r first scaled to max |r| = 1."""
    r = r.astype(np.float64)
    return (r / max(np.abs(r).max(), 1e-300) * c).astype(np.float32)


@settings(max_examples=examples(40), deadline=None)
@given(clip_dims, st.integers(0, 2**31 - 1), scales)
def test_gini_and_entropy_do_not_depend_on_the_scale(dims, seed, c):
    # Against the float64 oracles of the map at scale 1: at any scale the float32 scores
    # were NaN above ~1e37 (their sums overflowed) and 0 for subnormal maps.
    rel = _clip(dims, seed)
    x = _times(rel, c)
    unit = _times(rel, 1.0)
    np.testing.assert_allclose(metrics.gini(x), oracle_gini(unit), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(metrics.entropy(x), oracle_entropy(unit), rtol=1e-4, atol=1e-5)
    inside = np.random.default_rng(seed).random(rel.shape[:3]) < 0.5
    v = np.abs(unit.astype(np.float64))
    v = v.sum(-1) if v.ndim == 4 else v
    share = v[inside].sum() / v.sum() if v.sum() > 0 else 0.0
    np.testing.assert_allclose(metrics.mass_in_mask(x, inside), share, rtol=1e-4, atol=1e-5)


def test_gini_and_entropy_of_the_probed_scales():
    r = random_relevance(0, (8, 16, 16, 3))
    gini, entropy = float(metrics.gini(r)), float(metrics.entropy(r))
    for c in (1e37, 1e-42, 2.0**-140, 2.0**120):
        x = (r.astype(np.float64) * c).astype(np.float32)
        assert np.isfinite(x).all()
        assert float(metrics.gini(x)) == pytest.approx(gini, rel=1e-3), c
        assert float(metrics.entropy(x)) == pytest.approx(entropy, rel=1e-3), c


@settings(max_examples=examples(30), deadline=None)
@given(clip_dims, st.integers(0, 2**31 - 1), st.integers(-8, 8))
def test_entropy_is_bounded_by_log_n_and_invariant(dims, seed, k):
    rel = _clip(dims, seed)
    h = float(metrics.entropy(rel))
    n = np.prod(rel.shape[:3])
    assert -1e-6 <= h <= np.log(n) + 1e-5
    assert float(metrics.entropy(rel * np.float32(-(2.0**k)))) == pytest.approx(h, abs=1e-5)
    shuffled = np.random.default_rng(seed).permutation(rel.reshape(-1, *rel.shape[3:]))
    assert float(metrics.entropy(shuffled.reshape(rel.shape))) == pytest.approx(h, abs=1e-5)


@settings(max_examples=examples(40), deadline=None)
@given(clip_dims, st.integers(0, 2**31 - 1))
def test_frame_mass_sums_to_the_clips_mass_and_follows_the_frames(dims, seed):
    rel = _clip(dims, seed)
    m = np.asarray(metrics.frame_mass(rel))
    assert m.sum() == pytest.approx(float(np.abs(rel.astype(np.float64)).sum()), rel=1e-5, abs=1e-6)
    order = np.random.default_rng(seed).permutation(rel.shape[0])
    np.testing.assert_allclose(np.asarray(metrics.frame_mass(rel[order])), m[order], rtol=1e-6)


# --- transformations ---


def test_jit_equals_eager_and_vmap_equals_loop():
    rel = random_relevance(7, (4, 5, 8, 8, 3))
    mask = np.asarray(sr.motion_mask(rel, 1.0))
    fns = [(metrics.gini, rel), (metrics.entropy, rel), (metrics.frame_mass, rel)]
    for fn, x in [*fns, (metrics.kept_voxels, mask)]:
        eager = np.asarray(fn(x))
        np.testing.assert_array_equal(np.asarray(jax.jit(fn)(x)), eager)
        np.testing.assert_allclose(np.asarray(jax.vmap(fn)(x)), eager, rtol=1e-6)
        np.testing.assert_allclose(np.stack([np.asarray(fn(c)) for c in x]), eager, rtol=1e-6)
    nthw = rel.sum(-1)
    gini_nthw = jax.jit(lambda x: metrics.gini(x, layout="NTHW"))(nthw)
    np.testing.assert_allclose(np.asarray(gini_nthw), [oracle_gini(c) for c in nthw], rtol=1e-5)


# --- invalid values and bad input ---


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_nonfinite_relevance_raises_eagerly_and_is_nan_for_its_clip_under_jit(value):
    bad = random_relevance(8, (3, 4, 5, 5, 2))
    bad[1, 2, 3, 4, 1] = value
    for fn in (metrics.gini, metrics.entropy, metrics.frame_mass):
        with pytest.raises(sr.NonFiniteError, match=r"clip\(s\) \[1\]"):
            fn(bad)
        got = np.asarray(jax.jit(fn)(bad))
        assert np.isnan(got[1]).all()
        want = np.asarray(fn(np.delete(bad, 1, axis=0)))
        np.testing.assert_array_equal(np.delete(got, 1, axis=0), want)


@pytest.mark.parametrize("fn", [metrics.gini, metrics.entropy, metrics.frame_mass])
@pytest.mark.parametrize(
    "bad, kwargs, error, message",
    [
        (np.ones((3, 4, 5), np.int32), {}, sr.DTypeError, "real floating"),
        (np.ones((3, 4, 5), bool), {}, sr.DTypeError, "real floating"),
        (np.ones((4, 5), np.float32), {}, sr.ShapeError, r"rank 3 \(T,H,W\), 4"),
        (np.ones((1, 2, 3, 4, 5, 6), np.float32), {}, sr.ShapeError, "rank"),
        (np.ones((3, 4, 5), np.float32), {"layout": "NTHW"}, sr.ShapeError, "needs rank 4"),
        (np.ones((3, 4, 5), np.float32), {"layout": "TWH"}, sr.OptionError, "layout"),
        (np.ones((0, 4, 5), np.float32), {}, sr.ShapeError, "empty axis"),
        (np.ones((2, 3, 4, 5, 0), np.float32), {}, sr.ShapeError, "empty axis"),
        ([[[1.0, 2.0], [3.0]]], {}, sr.ShapeError, "ragged"),
    ],
)
def test_bad_relevance_raises_one_clear_line(fn, bad, kwargs, error, message):
    with pytest.raises(error, match=message) as info:
        fn(bad, **kwargs)
    assert "\n" not in str(info.value)
    assert fn.__name__ in str(info.value)


@pytest.mark.parametrize(
    "bad, kwargs, error, message",
    [
        (np.ones((3, 4, 5), np.float32), {}, sr.DTypeError, "bool"),
        (np.ones((3, 4), bool), {}, sr.ShapeError, r"rank 3 \(T,H,W\) or 4 \(N,T,H,W\)"),
        (np.ones((3, 4, 5, 6, 7), bool), {}, sr.ShapeError, "rank"),
        (np.ones((3, 4, 5), bool), {"layout": "THWC"}, sr.OptionError, "layout"),
        (np.ones((3, 4, 5, 6), bool), {"layout": "THW"}, sr.ShapeError, "needs rank 3"),
    ],
)
def test_bad_mask_raises_one_clear_line(bad, kwargs, error, message):
    with pytest.raises(error, match=message):
        metrics.kept_voxels(bad, **kwargs)


def test_layouts_with_and_without_channels_agree():
    magnitudes = np.abs(random_relevance(9, (2, 3, 4, 5, 2)))  # summing them keeps the mass
    summed = magnitudes.sum(-1)
    for fn in (metrics.gini, metrics.entropy, metrics.frame_mass):
        np.testing.assert_allclose(
            np.asarray(fn(magnitudes, layout="NTHWC")),
            np.asarray(fn(summed, layout="NTHW")),
            rtol=1e-6,
        )
        np.testing.assert_allclose(
            np.asarray(fn(magnitudes[0], layout="THWC")),
            np.asarray(fn(summed[0], layout="THW")),
            rtol=1e-6,
        )


@pytest.mark.parametrize("fn", [metrics.gini, metrics.entropy, metrics.frame_mass])
def test_scores_of_a_concrete_map_inside_a_traced_function(fn):
    """A NumPy map closed over by a jitted function is concrete: it is checked (and
    scored), not passed to NumPy as a tracer (TracerArrayConversionError before)."""
    rel = random_relevance(10, (2, 4, 5, 5, 3))
    np.testing.assert_allclose(np.asarray(jax.jit(lambda: fn(rel))()), fn(rel), rtol=1e-6)
    bad = rel.copy()
    bad[1, 0, 0, 0, 0] = np.nan
    with pytest.raises(sr.NonFiniteError, match=r"clip\(s\) \[1\]"):
        jax.jit(lambda: fn(bad))()
