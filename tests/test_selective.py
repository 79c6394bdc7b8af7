"""Selective relevance against an independent float64 SciPy oracle written from the spec."""

from __future__ import annotations

import contextlib
import functools
import io
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from scipy import ndimage

import selrel_jax as sr
from tests.examples import examples

# --- the oracle: the spec's 3x3x3 temporal Sobel operator, cross-correlation, padding 1 ---

_PLANE = np.array([[1, 2, 1], [2, 4, 2], [1, 2, 1]], dtype=np.float64)
_KERNEL = np.stack([_PLANE, np.zeros((3, 3)), -_PLANE])  # planes at t-1, t, t+1


def oracle_abs_d(rel: np.ndarray, temporal_padding: str = "zero") -> np.ndarray:
    r = np.asarray(rel, np.float64)
    if r.ndim == 4:
        r = r.sum(axis=-1)
    if temporal_padding == "edge":
        r = np.pad(r, ((1, 1), (0, 0), (0, 0)), mode="edge")
        return np.abs(ndimage.correlate(r, _KERNEL, mode="constant", cval=0.0)[1:-1])
    return np.abs(ndimage.correlate(r, _KERNEL, mode="constant", cval=0.0))


def oracle_threshold(g: np.ndarray, sigma: float, threshold: str = "clip", ddof: int = 1):
    if threshold == "frame":
        return sigma * g.std(axis=(1, 2), ddof=ddof, keepdims=True)
    return sigma * g.std(ddof=ddof)


def random_relevance(seed: int, shape, dtype=np.float32) -> np.ndarray:
    rng = np.random.default_rng(seed)
    # Sparse, heavy-tailed, signed: like real relevance maps.
    x = rng.standard_normal(shape) * (rng.random(shape) < 0.3) * rng.exponential(1.0, shape)
    return x.astype(dtype)


SHAPES = [(3, 4, 5), (8, 16, 16, 3), (5, 9, 7, 1), (16, 12, 20, 3), (6, 1, 1), (4, 6, 6, 20)]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("temporal_padding", ["zero", "edge"])
def test_temporal_gradient_matches_oracle(shape, temporal_padding):
    rel = random_relevance(hash(shape) % 2**32, shape)
    got = np.asarray(sr.temporal_gradient(rel, temporal_padding=temporal_padding))
    want = oracle_abs_d(rel, temporal_padding)
    assert got.shape == shape[:3]
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * np.abs(want).max())


@pytest.mark.parametrize("shape", SHAPES[:4])
@pytest.mark.parametrize("sigma", [0.0, 0.5, 1.0, 2.5])
@pytest.mark.parametrize("threshold", ["clip", "frame"])
@pytest.mark.parametrize("temporal_padding", ["zero", "edge"])
def test_mask_and_selection_match_oracle(shape, sigma, threshold, temporal_padding):
    rel = random_relevance(7 + len(shape), shape)
    g = oracle_abs_d(rel, temporal_padding)
    thr = oracle_threshold(g, sigma, threshold)
    want = g > thr
    # Voxels within rounding of the threshold may go either way in float32.
    decided = np.abs(g - thr) > 1e-5 * max(g.max(), 1e-30)
    opts = dict(threshold=threshold, temporal_padding=temporal_padding)
    mask = np.asarray(sr.motion_mask(rel, sigma, **opts))
    assert mask.dtype == np.bool_ and mask.shape == shape[:3]
    np.testing.assert_array_equal(mask[decided], want[decided])

    sel = np.asarray(sr.selective_relevance(rel, sigma, **opts))
    static = np.asarray(sr.static_relevance(rel, sigma, **opts))
    assert sel.shape == rel.shape and sel.dtype == rel.dtype
    m = mask if rel.ndim == 3 else mask[..., None]
    np.testing.assert_array_equal(sel, np.where(m, rel, 0))
    np.testing.assert_array_equal(static, rel - sel)


def test_ddof_is_used():
    # 12 voxels, so std(ddof=0), std(ddof=1) and std(ddof=2) differ by up to 10%; seed 86
    # puts values of |D| between those thresholds, so each ddof gives another mask.
    rel = random_relevance(86, (3, 2, 2))
    g = oracle_abs_d(rel)
    want = [g > g.std(ddof=ddof) for ddof in (0, 1, 2)]
    assert [int(m.sum()) for m in want] == [10, 6, 5]
    for ddof, mask in enumerate(want):
        np.testing.assert_array_equal(np.asarray(sr.motion_mask(rel, 1.0, ddof=ddof)), mask)


def test_spatial_bias_matches_definition():
    rel = random_relevance(11, (3, 6, 8, 8, 3))
    sel = np.asarray(sr.selective_relevance(rel, 1.0))
    got = np.asarray(sr.spatial_bias(rel, sel))
    want = 1 - np.abs(sel).sum(axis=(1, 2, 3, 4)) / np.abs(rel).sum(axis=(1, 2, 3, 4))
    assert got.shape == (3,)
    np.testing.assert_allclose(got, want, rtol=1e-5)
    single = sr.spatial_bias(rel[0], sel[0])
    assert single.shape == ()
    np.testing.assert_allclose(single, want[0], rtol=1e-5)
    assert float(sr.spatial_bias(rel[0], rel[0])) == 0.0
    assert float(sr.spatial_bias(rel[0], np.zeros_like(rel[0]))) == 1.0


def test_all_zero_and_constant_relevance_never_nan():
    zeros = np.zeros((2, 5, 6, 6, 3), np.float32)
    sel = np.asarray(sr.selective_relevance(zeros, 1.0))
    np.testing.assert_array_equal(sel, 0)
    np.testing.assert_array_equal(np.asarray(sr.spatial_bias(zeros, sel)), 0)
    for padding in ("zero", "edge"):
        for threshold in ("clip", "frame"):
            const = np.full((5, 6, 6), 3.0, np.float32)
            opts = dict(temporal_padding=padding, threshold=threshold)
            out = np.asarray(sr.selective_relevance(const, 1.0, **opts))
            assert np.isfinite(out).all()
            assert np.isfinite(np.asarray(sr.spatial_bias(const, out))).all()
    edge = np.asarray(sr.motion_mask(np.full((5, 6, 6), 3.0, np.float32), temporal_padding="edge"))
    assert not edge.any()


# --- invariants ---

clip_shapes = st.tuples(
    st.integers(3, 8), st.integers(1, 9), st.integers(1, 9), st.sampled_from([0, 1, 3])
)


def _shape(t, h, w, c):
    return (t, h, w) if c == 0 else (t, h, w, c)


@settings(max_examples=examples(30), deadline=None)
@given(clip_shapes, st.integers(0, 2**31 - 1), st.floats(0.0, 3.0))
def test_static_clip_selects_only_end_frames_with_zero_padding(dims, seed, sigma):
    frame = random_relevance(seed, _shape(1, *dims[1:]))
    clip = np.repeat(frame, dims[0], axis=0)
    mask = np.asarray(sr.motion_mask(clip, sigma))
    assert not mask[1:-1].any()
    # Zero padding makes the content "appear" at t=0 and "vanish" at t=T-1: |D| there is the
    # smoothed frame itself, and its largest value exceeds the clip's std, so for sigma <= 1
    # both end frames select something whenever the frame is not all zero.
    np.testing.assert_array_equal(mask[0], mask[-1])
    if sigma <= 1 and oracle_abs_d(clip)[0].max() > 0:
        assert mask[0].any()
    assert not np.asarray(sr.motion_mask(clip, sigma, temporal_padding="edge")).any()
    assert not np.asarray(sr.temporal_gradient(clip, temporal_padding="edge")).any()


@settings(max_examples=examples(30), deadline=None)
@given(clip_shapes, st.integers(0, 2**31 - 1), st.integers(-6, 6), st.floats(0.0, 3.0))
def test_power_of_two_scaling_leaves_mask_unchanged(dims, seed, k, sigma):
    rel = random_relevance(seed, _shape(*dims))
    for threshold in ("clip", "frame"):
        if threshold == "frame" and dims[1] * dims[2] < 2:
            continue
        a = np.asarray(sr.motion_mask(rel, sigma, threshold=threshold))
        b = np.asarray(sr.motion_mask(rel * np.float32(2.0**k), sigma, threshold=threshold))
        np.testing.assert_array_equal(a, b)


# --- scale: the same result for r and c * r over float32's whole finite range ---

#: c = 10**u: log-uniform over [1e-38, 1e38]; r is scaled to max |r| = 1 first, so
#: every c keeps c * r finite (at 1e-38 it is all subnormal).
scales = st.floats(-38.0, 38.0).map(lambda u: 10.0**u)


def unit_relevance(seed: int, shape) -> np.ndarray:
    r = random_relevance(seed, shape).astype(np.float64)
    return (r / max(np.abs(r).max(), 1e-300)).astype(np.float32)


def times(r: np.ndarray, c: float) -> np.ndarray:
    """c * r rounded once to float32 (as a user's map at that scale would be)."""
    return (r.astype(np.float64) * c).astype(np.float32)


def undecided(r: np.ndarray, sigma: float, threshold: str = "clip") -> np.ndarray:
    """Voxels whose |D| lies within rounding of the threshold (float64 oracle): rounding
    c * r to float32 may move them to either side."""
    g = oracle_abs_d(r)
    return np.abs(g - oracle_threshold(g, sigma, threshold)) <= 1e-4 * max(g.max(), 1e-300)


@settings(max_examples=examples(30), deadline=None)
@given(clip_shapes, st.integers(0, 2**31 - 1), scales, st.floats(0.0, 3.0))
def test_motion_mask_does_not_depend_on_the_scale(dims, seed, c, sigma):
    r = unit_relevance(seed, _shape(*dims))
    for threshold in ("clip", "frame"):
        if threshold == "frame" and dims[1] * dims[2] < 2:
            continue
        want = np.asarray(sr.motion_mask(r, sigma, threshold=threshold))
        got = np.asarray(sr.motion_mask(times(r, c), sigma, threshold=threshold))
        differ = got != want
        assert not differ[~undecided(r, sigma, threshold)].any(), (c, threshold)


@settings(max_examples=examples(30), deadline=None)
@given(clip_shapes, st.integers(0, 2**31 - 1), scales, st.floats(0.0, 3.0))
@example((5, 6, 7, 3), 1, 1e-38, 1.0)  # all subnormal: x * mask flushed them to 0
@example((5, 6, 7, 0), 2, 1e-36, 0.5)  # partly subnormal
def test_selective_relevance_and_spatial_bias_do_not_depend_on_the_scale(dims, seed, c, sigma):
    r = unit_relevance(seed, _shape(*dims))
    x = times(r, c)
    sel = np.asarray(sr.selective_relevance(x, sigma))
    assert np.isfinite(sel).all()
    mask = np.asarray(sr.motion_mask(x, sigma))
    np.testing.assert_array_equal(sel, np.where(mask if x.ndim == 3 else mask[..., None], x, 0))
    kept = np.asarray(sr.motion_mask(r, sigma))
    kept = kept if r.ndim == 3 else kept[..., None]
    want = float(sr.spatial_bias(r, np.where(kept, r, 0)))
    got = float(sr.spatial_bias(x, np.where(kept, x, 0)))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert float(sr.spatial_bias(x, x)) == 0.0


def test_the_probes_of_a_rescaled_map():
    """A map scaled by 1e-20 kept every voxel (the std underflowed to 0), by 1e17 came
    back all NaN with no error (|D|**2 overflowed), spatial_bias(x, x) of 1e36 was NaN."""
    r = random_relevance(3, (8, 16, 16, 3))
    mask = np.asarray(sr.motion_mask(r, 1.0))
    assert 0.3 < mask.mean() < 0.7
    for c in (1e-20, 1e-30, 1e17, 1e30, 2.0**-100, 2.0**100):
        x = times(r, c)
        np.testing.assert_array_equal(np.asarray(sr.motion_mask(x, 1.0)), mask)
        sel = np.asarray(sr.selective_relevance(x, 1.0))
        np.testing.assert_array_equal(sel, np.where(mask[..., None], x, 0))
    x = times(r, 1e36)
    assert float(sr.spatial_bias(x, x)) == 0.0
    np.testing.assert_allclose(
        float(sr.spatial_bias(x, sr.selective_relevance(x, 1.0))),
        float(sr.spatial_bias(r, sr.selective_relevance(r, 1.0))),
        rtol=1e-6,
    )


def test_a_batch_with_one_extreme_clip_leaves_the_other_clips_bitwise_unchanged():
    """Only a batch with a clip out of the safe range is computed again, scaled; every
    clip's result is its own, alone, batched, vmapped, jitted or eager."""
    batch = random_relevance(21, (3, 5, 8, 8, 2))
    batch[1] *= np.float32(1e30)
    batch[2] *= np.float32(1e-30)
    loop = np.stack([np.asarray(sr.selective_relevance(c, 1.5)) for c in batch])
    np.testing.assert_array_equal(np.asarray(sr.selective_relevance(batch, 1.5)), loop)
    vmapped = jax.vmap(lambda c: sr.selective_relevance(c, 1.5))(batch)
    np.testing.assert_array_equal(np.asarray(vmapped), loop)
    jitted = jax.jit(lambda b, s: sr.motion_mask(b, s))(batch, 1.5)
    np.testing.assert_array_equal(np.asarray(jitted), np.asarray(sr.motion_mask(batch, 1.5)))
    alone = np.asarray(sr.selective_relevance(batch[0], 1.5))
    np.testing.assert_array_equal(loop[0], alone)
    plain = random_relevance(21, (3, 5, 8, 8, 2))
    np.testing.assert_array_equal(loop[0], np.asarray(sr.selective_relevance(plain, 1.5))[0])


@settings(max_examples=examples(30), deadline=None)
@given(clip_shapes, st.integers(0, 2**31 - 1), st.sampled_from(["zero", "edge"]))
def test_time_reversal_reverses_abs_d(dims, seed, padding):
    rel = random_relevance(seed, _shape(*dims))
    fwd = np.asarray(sr.temporal_gradient(rel, temporal_padding=padding))
    rev = np.asarray(sr.temporal_gradient(rel[::-1], temporal_padding=padding))
    np.testing.assert_array_equal(rev, fwd[::-1])


# --- transformations ---


def test_jit_equals_eager_with_traced_sigma():
    rel = random_relevance(5, (2, 6, 10, 10, 3))
    for fn in (sr.selective_relevance, sr.static_relevance, sr.motion_mask):
        eager = np.asarray(fn(rel, 1.5, threshold="frame"))
        jitted = np.asarray(jax.jit(lambda x, s, fn=fn: fn(x, s, threshold="frame"))(rel, 1.5))
        np.testing.assert_array_equal(eager, jitted)
    g = jax.jit(sr.temporal_gradient, static_argnames="temporal_padding")
    np.testing.assert_array_equal(np.asarray(g(rel)), np.asarray(sr.temporal_gradient(rel)))
    bias = jax.jit(sr.spatial_bias)(rel, sr.selective_relevance(rel))
    np.testing.assert_array_equal(
        np.asarray(bias), np.asarray(sr.spatial_bias(rel, sr.selective_relevance(rel)))
    )


def test_vmap_and_batch_equal_loop():
    batch = random_relevance(9, (4, 5, 8, 8, 2))
    loop = np.stack([np.asarray(sr.selective_relevance(c, 1.0)) for c in batch])
    np.testing.assert_array_equal(np.asarray(sr.selective_relevance(batch, 1.0)), loop)
    vm = jax.vmap(lambda c: sr.selective_relevance(c, 1.0))(batch)
    np.testing.assert_array_equal(np.asarray(vm), loop)
    sigmas = jnp.array([0.5, 1.0, 1.5, 2.0])
    per_sigma = jax.vmap(lambda c, s: sr.motion_mask(c, s))(batch, sigmas)
    want = np.stack(
        [np.asarray(sr.motion_mask(c, float(s))) for c, s in zip(batch, sigmas, strict=True)]
    )
    np.testing.assert_array_equal(np.asarray(per_sigma), want)
    g = np.stack([np.asarray(sr.temporal_gradient(c)) for c in batch])
    np.testing.assert_array_equal(np.asarray(sr.temporal_gradient(batch)), g)


def test_batch_in_loop_steps_equals_clip_by_clip(monkeypatch):
    # On one CPU device a large batch runs a few clips per loop step. Shrink the step
    # so a small batch takes that path (a shape no other test compiles).
    from jax.experimental import checkify

    from selrel_jax import selective

    rel = random_relevance(21, (6, 5, 7, 9, 2))
    rel[4, 2, 3, 3, 1] = np.nan
    monkeypatch.setattr(selective, "CPU_STEP_ELEMENTS", 3 * 5 * 7 * 9 * 2)
    assert selective._clips_per_step(jnp.asarray(rel)) == 3
    for name, fn in FUNCTIONS.items():
        got = np.asarray(jax.jit(fn)(rel, 1.5))
        want = np.stack([np.asarray(fn(clip, 1.5)) for clip in np.delete(rel, 4, 0)])
        np.testing.assert_array_equal(np.delete(got, 4, 0), want, err_msg=name)
        assert (not got[4].any()) if name == "motion_mask" else np.isnan(got[4]).all(), name
    assert np.isnan(np.asarray(jax.jit(sr.selective_relevance)(rel, -1.0))).all()
    rel[4, 2, 3, 3, 1] = 0.0
    fn = jax.jit(checkify.checkify(functools.partial(sr.selective_relevance, checked=True)))
    err, out = fn(rel, 1.5)
    err.throw()
    np.testing.assert_array_equal(out, sr.selective_relevance(rel, 1.5))


def test_bfloat16_agrees_with_float32():
    rel = random_relevance(13, (2, 8, 24, 24, 3))
    for threshold in ("clip", "frame"):
        m32 = np.asarray(sr.motion_mask(rel, 1.0, threshold=threshold))
        m16 = np.asarray(sr.motion_mask(jnp.asarray(rel, jnp.bfloat16), 1.0, threshold=threshold))
        assert (m32 == m16).mean() >= 0.99
    sel = sr.selective_relevance(jnp.asarray(rel, jnp.bfloat16), 1.0)
    assert sel.dtype == jnp.bfloat16 and sel.shape == rel.shape
    assert sr.temporal_gradient(jnp.asarray(rel, jnp.bfloat16)).dtype == jnp.bfloat16


REPRODUCE = textwrap.dedent(
    """
    import hashlib, sys
    import numpy as np
    import selrel_jax as sr
    rel = np.random.default_rng(17).standard_normal((2, 6, 12, 12, 3)).astype(np.float32)
    out = [sr.selective_relevance(rel, 1.0), sr.temporal_gradient(rel), sr.spatial_bias(
        rel, sr.selective_relevance(rel, 1.0))]
    print(hashlib.sha256(b"".join(np.asarray(o).tobytes() for o in out)).hexdigest())
    """
)


@pytest.mark.slow
def test_results_are_bitwise_reproducible_across_processes():
    # A fresh process (new compilation, new thread pool) gives the same bytes as this one.
    runs = [
        subprocess.run(
            [sys.executable, "-c", REPRODUCE],
            capture_output=True,
            text=True,
            timeout=300,
            env={**os.environ, "XLA_FLAGS": flags},
        )
        for flags in ("", "--xla_cpu_multi_thread_eigen=false")
    ]
    assert all(r.returncode == 0 for r in runs), [r.stderr[-2000:] for r in runs]
    namespace: dict = {}
    with contextlib.redirect_stdout(io.StringIO()) as here:
        exec(REPRODUCE, namespace)
    assert runs[0].stdout == runs[1].stdout == here.getvalue()


def test_sharded_equals_single_device():
    code = textwrap.dedent(
        """
        import numpy as np, jax
        from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
        import selrel_jax as sr
        assert jax.device_count() == 2, jax.devices()
        rel = np.random.default_rng(0).standard_normal((4, 6, 10, 10, 3)).astype(np.float32)
        mesh = Mesh(np.array(jax.devices()), ("batch",))
        x = jax.device_put(rel, NamedSharding(mesh, P("batch")))
        sel = jax.jit(lambda x: sr.selective_relevance(x, 1.0))(x)
        assert len(sel.sharding.device_set) == 2
        want = sr.selective_relevance(rel, 1.0)
        np.testing.assert_array_equal(np.asarray(sel), np.asarray(want))
        # Partitioned reductions may sum in another order: equal to rounding.
        np.testing.assert_allclose(np.asarray(sr.spatial_bias(x, sel)),
                                   np.asarray(sr.spatial_bias(rel, want)), rtol=1e-5)
        print("ok")
        """
    )
    env = dict(
        os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().endswith("ok")


# --- bad input ---


@pytest.mark.parametrize(
    "x, match",
    [
        (np.zeros((4, 4), np.float32), r"rank 3 .*got shape \(4, 4\) float32"),
        (np.zeros((2, 3, 4, 4, 3, 1), np.float32), r"rank 3 .*got shape \(2, 3, 4, 4, 3, 1\)"),
        (np.zeros((2, 4, 4), np.float32), r"T >= 3.*got T=2"),
        (np.zeros((1, 2, 4, 4, 3), np.float32), r"T >= 3.*got T=2"),
        (np.zeros((4, 4, 4), np.int32), r"floating.*int32"),
        (np.zeros((4, 4, 4), bool), r"floating.*bool"),
        (np.zeros((4, 4, 4), np.complex64), r"floating.*complex64"),
    ],
)
def test_bad_relevance_raises(x, match):
    for fn in (sr.temporal_gradient, sr.motion_mask, sr.selective_relevance, sr.static_relevance):
        with pytest.raises(sr.SelrelError, match=match):
            fn(x)
    with pytest.raises(sr.SelrelError, match=match):
        sr.spatial_bias(x, x)


def test_bad_options_raise():
    x = np.zeros((4, 5, 5), np.float32)
    with pytest.raises(sr.SelrelError, match=r"sigma must be a finite number >= 0.0; got -1.0"):
        sr.selective_relevance(x, -1.0)
    with pytest.raises(sr.SelrelError, match=r"sigma must be a finite number >= 0.0; got nan"):
        sr.motion_mask(x, float("nan"))
    with pytest.raises(sr.SelrelError, match=r"sigma must be a finite number"):
        sr.motion_mask(x, np.ones(3))
    with pytest.raises(
        sr.SelrelError,
        match=r"selective_relevance: temporal_padding must be one of zero, edge; got 'reflect'",
    ):
        sr.selective_relevance(x, temporal_padding="reflect")
    with pytest.raises(sr.SelrelError, match=r"temporal_padding"):
        sr.temporal_gradient(x, temporal_padding="wrap")
    with pytest.raises(
        sr.SelrelError, match=r"static_relevance: threshold must be one of clip, frame; got 'pixel'"
    ):
        sr.static_relevance(x, threshold="pixel")
    with pytest.raises(sr.SelrelError, match=r"motion_mask: ddof must be an int >= 0; got -1"):
        sr.motion_mask(x, ddof=-1)
    with pytest.raises(sr.SelrelError, match=r"frame std needs more than ddof=1 values; got 1"):
        sr.motion_mask(np.zeros((4, 1, 1), np.float32), threshold="frame")
    with pytest.raises(sr.SelrelError, match=r"same shape"):
        sr.spatial_bias(x, x[:3])
    assert issubclass(sr.SelrelError, ValueError)


def test_validate_relevance_counts_bad_values():
    x = np.zeros((4, 5, 5, 3), np.float32)
    assert sr.validate_relevance(x).shape == x.shape
    x[0, 0, 0, 0] = np.nan
    x[1, 1, 1, 1] = np.inf
    x[2, 2, 2, 2] = -np.inf
    with pytest.raises(sr.NonFiniteError, match=r"3 non-finite values \(1 NaN, 2 infinite\)"):
        sr.validate_relevance(x)
    with pytest.raises(sr.SelrelError, match="rank"):
        sr.validate_relevance(np.zeros(3, np.float32))


# --- invalid values: eager calls raise, traced ones give NaN for the affected clip only ---

FUNCTIONS = {
    "temporal_gradient": lambda x, s: sr.temporal_gradient(x),
    "motion_mask": sr.motion_mask,
    "selective_relevance": sr.selective_relevance,
    "static_relevance": sr.static_relevance,
}


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("name", sorted(FUNCTIONS))
def test_nonfinite_relevance_raises_naming_count_and_clips(name, value):
    rel = random_relevance(3, (3, 5, 6, 6, 2))
    rel[1, 2, 3, 3, 0] = value
    rel[1, 0, 0, 0, 1] = value
    with pytest.raises(
        sr.NonFiniteError,
        match=rf"{name}: relevance holds 2 non-finite values .*in clip\(s\) \[1\]",
    ):
        FUNCTIONS[name](rel, 1.0)


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_nonfinite_clip_is_all_nan_under_jit_and_other_clips_untouched(value):
    rel = random_relevance(4, (3, 5, 6, 6, 2))
    bad = rel.copy()
    bad[1, 2, 3, 3, 0] = value
    for name, fn in FUNCTIONS.items():
        got = np.asarray(jax.jit(fn)(bad, 1.0))
        want = np.asarray(fn(rel, 1.0))
        np.testing.assert_array_equal(got[[0, 2]], want[[0, 2]], err_msg=name)
        if name == "motion_mask":  # a bool can't be NaN: the invalid clip selects nothing
            assert not got[1].any()
        else:
            assert np.isnan(got[1]).all(), name
    sel = jax.jit(sr.selective_relevance)(bad, 1.0)
    bias = np.asarray(jax.jit(sr.spatial_bias)(bad, sel))
    assert np.isnan(bias[1]) and np.isfinite(bias[[0, 2]]).all()


def test_traced_negative_or_nan_sigma_gives_nan_not_every_voxel():
    rel = random_relevance(5, (2, 5, 6, 6, 3))
    for sigma in (-1.0, np.nan):
        for fn in (sr.selective_relevance, sr.static_relevance):
            assert np.isnan(np.asarray(jax.jit(fn)(rel, sigma))).all()
        assert not np.asarray(jax.jit(sr.motion_mask)(rel, sigma)).any()
        sel = jax.jit(sr.selective_relevance)(rel, sigma)
        assert np.isnan(np.asarray(jax.jit(sr.spatial_bias)(rel, sel))).all()
    per_clip = jax.vmap(sr.selective_relevance)(rel, jnp.array([1.0, -1.0]))
    np.testing.assert_array_equal(per_clip[0], sr.selective_relevance(rel[0], 1.0))
    assert np.isnan(np.asarray(per_clip[1])).all()


def test_spatial_bias_with_swapped_arguments_raises():
    rel = random_relevance(6, (2, 6, 8, 8, 3))
    sel = sr.selective_relevance(rel, 1.0)
    with pytest.raises(
        sr.OptionError,
        match=r"not a selection of relevance: \d+ voxels of clip\(s\) \[0, 1\].*swapped",
    ):
        sr.spatial_bias(sel, rel)
    altered = np.array(sel)
    altered[1, 0, 0, 0, 0] = rel[1, 0, 0, 0, 0] + 1.0  # neither the relevance nor 0
    with pytest.raises(sr.OptionError, match=r"1 voxels of clip\(s\) \[1\]"):
        sr.spatial_bias(rel, altered)
    bias = np.asarray(jax.jit(sr.spatial_bias)(sel, rel))  # under jit: NaN, never negative
    assert np.isnan(bias).all()


def test_spatial_bias_with_nonfinite_relevance_raises():
    rel = random_relevance(7, (2, 5, 6, 6, 3))
    sel = np.asarray(sr.selective_relevance(rel, 1.0)).copy()
    rel[0, 0, 0, 0, 0] = np.nan
    with pytest.raises(sr.NonFiniteError, match=r"spatial_bias: relevance holds 1 non-finite"):
        sr.spatial_bias(rel, sel)


@pytest.mark.parametrize("sigma", [None, "2", [1.0], True, 1j])
def test_sigma_of_the_wrong_type_raises_clearly(sigma):
    with pytest.raises(sr.OptionError, match=r"motion_mask: sigma must be a finite number"):
        sr.motion_mask(np.zeros((4, 5, 5), np.float32), sigma)


def test_nested_list_relevance_is_read_or_refused_clearly():
    clip = random_relevance(8, (4, 3, 3)).astype(np.float64)
    np.testing.assert_array_equal(sr.temporal_gradient(clip.tolist()), sr.temporal_gradient(clip))
    with pytest.raises(
        sr.ShapeError, match=r"relevance must be an array; got a ragged nested list"
    ):
        sr.selective_relevance([[[0.0, 1.0]], [[0.0]], [[1.0]]])
    with pytest.raises(sr.DTypeError, match=r"floating"):
        sr.selective_relevance([[[1, 2]]] * 4)


def test_channel_less_batches_need_layout_nthw():
    rel = random_relevance(9, (3, 6, 7, 7))  # (N, T, H, W)
    loop = np.stack([np.asarray(sr.selective_relevance(r, 1.0)) for r in rel])
    np.testing.assert_array_equal(sr.selective_relevance(rel, 1.0, layout="NTHW"), loop)
    masks = np.stack([np.asarray(sr.motion_mask(r, 1.0)) for r in rel])
    np.testing.assert_array_equal(sr.motion_mask(rel, 1.0, layout="NTHW"), masks)
    g = sr.temporal_gradient(random_relevance(9, (3, 6, 7, 7, 3)))  # (N, T, H, W) output
    np.testing.assert_array_equal(
        sr.temporal_gradient(g, layout="NTHW"),
        np.stack([np.asarray(sr.temporal_gradient(c)) for c in np.asarray(g)]),
    )
    sel = sr.selective_relevance(rel, 1.0, layout="NTHW")
    assert sr.spatial_bias(rel, sel, layout="NTHW").shape == (3,)


@pytest.mark.parametrize(
    "shape, layout, match",
    [
        ((3, 6, 7, 7), "NTHWC", r"layout 'NTHWC' needs rank 5; relevance has shape \(3, 6, 7, 7\)"),
        ((6, 7, 7), "NTHW", r"layout 'NTHW' needs rank 4"),
        ((2, 6, 7, 7), "TNHW", r"layout must be one of THW, THWC, NTHW, NTHWC; got 'TNHW'"),
        ((4, 2, 7, 7), "NTHW", r"T >= 3.*got T=2"),
    ],
)
def test_layout_that_cannot_be_meant_raises(shape, layout, match):
    with pytest.raises(sr.SelrelError, match=match):
        sr.selective_relevance(np.zeros(shape, np.float32), layout=layout)


def test_checked_path_raises_under_checkify_with_a_clear_message():
    from jax.experimental import checkify

    rel = random_relevance(10, (3, 5, 6, 6, 3))
    fn = jax.jit(checkify.checkify(functools.partial(sr.selective_relevance, checked=True)))
    err, out = fn(rel, 1.0)
    err.throw()  # valid input: no error
    np.testing.assert_array_equal(out, sr.selective_relevance(rel, 1.0))
    err, _ = fn(rel, -2.0)
    with pytest.raises(
        checkify.JaxRuntimeError, match=r"selective_relevance: sigma must be >= 0; got -2"
    ):
        err.throw()
    rel[2, 1, 1, 1, 1] = np.nan
    err, _ = fn(rel, 1.0)
    with pytest.raises(checkify.JaxRuntimeError, match=r"NaN or infinite.*\[False False  True\]"):
        err.throw()
    mask_fn = checkify.checkify(functools.partial(sr.motion_mask, checked=True))
    err, _ = jax.jit(mask_fn)(rel, 1.0)
    with pytest.raises(checkify.JaxRuntimeError, match=r"motion_mask: relevance holds NaN"):
        err.throw()
    with pytest.raises(sr.OptionError, match=r"checked=True .*checkify.checkify"):
        sr.selective_relevance(rel[:2], 1.0, checked=True)


def test_concrete_maps_closed_over_by_a_traced_function_are_checked_not_crashing():
    rel = random_relevance(11, (2, 5, 6, 6, 3))
    sel = np.asarray(sr.selective_relevance(rel, 2.0))
    np.testing.assert_array_equal(jax.jit(lambda s: sr.selective_relevance(rel, s))(2.0), sel)
    np.testing.assert_array_equal(
        jax.jit(lambda s: sr.motion_mask(rel, s))(2.0), sr.motion_mask(rel, 2.0)
    )
    np.testing.assert_allclose(
        jax.jit(lambda: sr.spatial_bias(rel, sel))(), sr.spatial_bias(rel, sel), rtol=1e-6
    )
    bad = rel.copy()
    bad[1, 0, 0, 0, 0] = np.nan
    with pytest.raises(sr.NonFiniteError, match=r"clip\(s\) \[1\]"):
        jax.jit(lambda s: sr.selective_relevance(bad, s))(2.0)
    with pytest.raises(sr.OptionError, match=r"not a selection"):
        jax.jit(lambda: sr.spatial_bias(sel, rel))()


@pytest.mark.parametrize("axes", [(0, 1, 2), (1, 2)])
@pytest.mark.parametrize("ddof", [0, 1])
def test_one_pass_std_equals_jnp_std(axes, ddof):
    """The threshold's std (from the sums of |D| and |D|**2) is jnp.std's, and a
    constant |D| gives 0, never NaN."""
    from selrel_jax.selective import _std

    g = jnp.abs(jax.random.normal(jax.random.key(3), (6, 9, 11))) * 5 + 2
    np.testing.assert_allclose(
        _std(g, axes, ddof), jnp.std(g, axis=axes, ddof=ddof, keepdims=True), rtol=2e-5
    )
    constant = jnp.full((4, 5, 6), 0.3, jnp.float32)
    assert np.all(np.isfinite(_std(constant, axes, ddof)))
    assert np.all(np.asarray(_std(constant, axes, ddof)) < 1e-3)
