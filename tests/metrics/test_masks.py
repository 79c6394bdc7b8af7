"""Scores against a ground-truth mask (top-k selection, precision/recall/IoU at a threshold
and at matched sparsity, mass inside a mask, box masks) against float64 oracles written
from the definitions with Python sets and sorts."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import selrel_jax as sr
from selrel_jax import metrics
from selrel_jax.data import synthetic_motion as sm
from selrel_jax.metrics import _inputs, _masks
from tests.examples import examples

# --- oracles ---


def oracle_magnitudes(clip: np.ndarray) -> np.ndarray:
    x = np.abs(np.asarray(clip, np.float64))
    return (x.sum(-1) if x.ndim == 4 else x).ravel()


def oracle_top_k(clip: np.ndarray, k: int) -> set[int]:
    v = oracle_magnitudes(clip)
    return set(sorted(range(v.size), key=lambda i: (-v[i], i))[:k])


def oracle_threshold(clip: np.ndarray, fraction: float) -> set[int]:
    v = oracle_magnitudes(clip)
    return {i for i in range(v.size) if v[i] > 0 and v[i] >= fraction * v.max()}


def oracle_overlap(selected: set[int], mask: np.ndarray) -> tuple[float, float, float]:
    relevant = set(np.flatnonzero(mask).tolist())
    hits = len(selected & relevant)
    union = selected | relevant
    return (
        hits / len(selected) if selected else 0.0,
        hits / len(relevant) if relevant else 0.0,
        hits / len(union) if union else 0.0,
    )


def oracle_mass(clip: np.ndarray, mask: np.ndarray) -> float:
    v = oracle_magnitudes(clip)
    return float(v[mask.ravel()].sum() / v.sum()) if v.sum() > 0 else 0.0


def oracle_box_mask(box, height: int, width: int) -> np.ndarray:
    """Centre (i + 0.5) inside [lo, hi] shifted by any whole number of frame sizes."""
    y0, x0, y1, x1 = (float(b) for b in box)

    def inside(lo, hi, size):
        return np.array(
            [any(lo <= i + 0.5 + s * size <= hi for s in range(-3, 4)) for i in range(size)]
        )

    return inside(y0, y1, height)[:, None] & inside(x0, x1, width)[None, :]


def tied_relevance(seed: int, shape) -> np.ndarray:
    """Quarter multiples in [-1, 1], many zeros: channel sums are exact in float32 and
    many voxels tie, so the tie-break decides most selections."""
    rng = np.random.default_rng(seed)
    return (rng.integers(-4, 5, shape) * (rng.random(shape) < 0.5) / 4).astype(np.float32)


def random_mask(seed: int, shape, p: float = 0.3) -> np.ndarray:
    return np.random.default_rng(seed).random(shape) < p


def scores(overlap) -> np.ndarray:
    return np.stack([np.asarray(s) for s in overlap], axis=-1)


# --- top-k and overlap at matched sparsity ---


@pytest.mark.parametrize("shape", [(3, 4, 5), (4, 3, 3, 2), (2, 2, 2, 3)])
def test_top_k_voxels_matches_the_oracle_with_ties_by_index(shape):
    rel = tied_relevance(sum(shape), shape)
    n = int(np.prod(shape[:3]))
    for k in (0, 1, 5, n // 2, n - 1, n):
        got = np.asarray(metrics.top_k_voxels(rel, k))
        assert got.shape == shape[:3] and got.dtype == bool and got.sum() == k
        assert set(np.flatnonzero(got).tolist()) == oracle_top_k(rel, k)


def test_all_zero_relevance_selects_the_first_voxels():
    rel = np.zeros((2, 3, 4, 3), np.float32)
    got = np.asarray(metrics.top_k_voxels(rel, 7)).ravel()
    np.testing.assert_array_equal(got, np.arange(24) < 7)


def _first_k_of_the_ranking(v: np.ndarray, k: int) -> np.ndarray:
    """The ranking top-k scores define (largest first, ties by index) as a pair sort."""
    return np.asarray(_inputs.rank_of(jnp.asarray(v))) < k


@pytest.mark.parametrize(
    "v",
    [
        np.abs(tied_relevance(31, (3, 4, 5))),  # many ties, zeros among them
        np.zeros((2, 3, 4), np.float32),
        np.full((2, 3, 4), 0.5, np.float32),
        np.random.default_rng(32).random((3, 4, 5)).astype(np.float32),
        np.array([[[0.0, 1e-45, 3e38, np.inf, 1e-45, 0.0]]], np.float32),  # subnormal, inf
    ],
)
def test_top_k_selection_is_the_first_k_of_the_ranking_for_every_k(v):
    ks = jnp.arange(v.size + 1)
    got = np.asarray(jax.vmap(lambda k: _inputs.top_k_selection(jnp.asarray(v), k))(ks))
    want = np.stack([_first_k_of_the_ranking(v, k) for k in range(v.size + 1)])
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(np.asarray(_inputs.ascending(jnp.asarray(v))), np.sort(v.ravel()))


@pytest.mark.parametrize("mask_kind", ["random", "empty", "full"])
def test_overlap_at_k_from_a_shared_sort_equals_overlap_at_k(mask_kind):
    rel = tied_relevance(33, (3, 4, 5, 2))
    mask = {"random": random_mask(34, (3, 4, 5)), "empty": np.zeros((3, 4, 5), bool),
            "full": np.ones((3, 4, 5), bool)}[mask_kind]  # fmt: skip
    v = _inputs.magnitudes(jnp.asarray(rel))
    shared = _inputs.ascending(v)
    for k in range(61):
        got = _masks._overlap_at_k_of_magnitudes(v, jnp.asarray(mask), jnp.int32(k), shared)
        np.testing.assert_array_equal(scores(got), scores(metrics.overlap_at_k(rel, mask, k)))


@settings(max_examples=25, deadline=None)
@given(
    st.tuples(st.integers(1, 4), st.integers(1, 5), st.integers(1, 5)),
    st.integers(0, 2**31 - 1),
    st.integers(1, 4),
)
def test_top_k_selection_matches_the_oracle_on_quantised_maps(dims, seed, levels):
    rng = np.random.default_rng(seed)
    v = (rng.integers(0, levels + 1, dims) / levels).astype(np.float32)  # ties and zeros
    k = int(rng.integers(0, v.size + 1))
    # jitted, as the metrics call it (op by op, each draw's shape compiled every operation)
    got = np.asarray(jax.jit(_inputs.top_k_selection)(jnp.asarray(v), jnp.int32(k)))
    assert set(np.flatnonzero(got).tolist()) == oracle_top_k(v, k)


@pytest.mark.parametrize("shape", [(3, 4, 5), (4, 3, 3, 2)])
def test_overlap_at_k_matches_the_oracle(shape):
    rel = tied_relevance(1 + sum(shape), shape)
    mask = random_mask(2, shape[:3])
    n = int(np.prod(shape[:3]))
    for k in (0, 1, 3, 10, n - 1, n):
        got = scores(metrics.overlap_at_k(rel, mask, k))
        assert got.dtype == np.float32
        np.testing.assert_allclose(got, oracle_overlap(oracle_top_k(rel, k), mask), rtol=1e-6)


def test_overlap_at_k_per_clip_k_in_a_batch():
    rel = tied_relevance(3, (4, 3, 5, 5, 3))
    mask = random_mask(4, (4, 3, 5, 5))
    k = np.array([0, 7, 30, 75])
    got = scores(metrics.overlap_at_k(rel, mask, k))
    assert got.shape == (4, 3)
    want = [oracle_overlap(oracle_top_k(r, kk), m) for r, m, kk in zip(rel, mask, k, strict=True)]
    np.testing.assert_allclose(got, want, rtol=1e-6)
    shared = scores(metrics.overlap_at_k(rel, mask[2], 12))  # one mask for every clip
    want = [oracle_overlap(oracle_top_k(r, 12), mask[2]) for r in rel]
    np.testing.assert_allclose(shared, want, rtol=1e-6)


def test_overlap_at_k_edge_values():
    rel = tied_relevance(5, (3, 4, 4, 2))
    mask = random_mask(6, (3, 4, 4))
    n, m = 48, int(mask.sum())
    np.testing.assert_array_equal(scores(metrics.overlap_at_k(rel, mask, 0)), [0, 0, 0])
    np.testing.assert_allclose(scores(metrics.overlap_at_k(rel, mask, n)), [m / n, 1, m / n])
    empty = np.zeros_like(mask)
    np.testing.assert_array_equal(scores(metrics.overlap_at_k(rel, empty, 0)), [0, 0, 0])
    np.testing.assert_array_equal(scores(metrics.overlap_at_k(rel, empty, 9)), [0, 0, 0])
    zeros = np.zeros_like(rel)
    first = mask.ravel()[:5].sum()  # an all-zero map's top 5 are voxels 0..4
    got = scores(metrics.overlap_at_k(zeros, mask, 5))
    np.testing.assert_allclose(got, [first / 5, first / m, first / (5 + m - first)])
    assert not np.isnan(got).any()


# --- overlap at a threshold ---


@pytest.mark.parametrize("fraction", [0.0, 0.1, 0.25, 0.5, 1.0])
def test_overlap_at_threshold_matches_the_oracle(fraction):
    rel = tied_relevance(7, (3, 5, 4, 5, 2))
    mask = random_mask(8, (3, 5, 4, 5))
    got = scores(metrics.overlap_at_threshold(rel, mask, fraction=fraction))
    want = [
        oracle_overlap(oracle_threshold(r, fraction), m) for r, m in zip(rel, mask, strict=True)
    ]
    np.testing.assert_allclose(got, want, rtol=1e-6)


def test_overlap_at_threshold_of_continuous_maps_matches_the_oracle():
    rng = np.random.default_rng(9)
    rel = (rng.standard_normal((4, 6, 5, 3)) * rng.exponential(1, (4, 6, 5, 3))).astype(np.float32)
    mask = random_mask(10, (4, 6, 5))
    got = scores(metrics.overlap_at_threshold(rel, mask))  # default fraction 0.1
    np.testing.assert_allclose(got, oracle_overlap(oracle_threshold(rel, 0.1), mask), rtol=1e-6)


def test_overlap_at_threshold_edge_values():
    mask = random_mask(11, (3, 4, 4))
    zeros = np.zeros((3, 4, 4), np.float32)
    np.testing.assert_array_equal(scores(metrics.overlap_at_threshold(zeros, mask)), [0, 0, 0])
    rel = tied_relevance(12, (3, 4, 4))
    empty = np.zeros_like(mask)
    got = scores(metrics.overlap_at_threshold(rel, empty))
    np.testing.assert_array_equal(got, [0, 0, 0])
    one = np.zeros((3, 4, 4), np.float32)
    one[1, 2, 3] = -2.0
    only = np.zeros_like(mask)
    only[1, 2, 3] = True
    np.testing.assert_array_equal(scores(metrics.overlap_at_threshold(one, only)), [1, 1, 1])


# --- mass in a mask, box masks ---


def test_mass_in_mask_matches_the_oracle_and_edge_values():
    rel = tied_relevance(13, (3, 4, 5, 6, 3))
    mask = random_mask(14, (3, 4, 5, 6))
    got = np.asarray(metrics.mass_in_mask(rel, mask))
    assert got.shape == (3,) and got.dtype == np.float32
    np.testing.assert_allclose(got, [oracle_mass(r, m) for r, m in zip(rel, mask, strict=True)])
    np.testing.assert_array_equal(metrics.mass_in_mask(rel, np.ones_like(mask)), [1, 1, 1])
    np.testing.assert_array_equal(metrics.mass_in_mask(rel, np.zeros_like(mask)), [0, 0, 0])
    assert float(metrics.mass_in_mask(np.zeros((4, 5, 6)), mask[0])) == 0.0


BOXES = [
    (1.0, 2.0, 4.0, 5.0),  # inside
    (-2.0, 1.0, 3.0, 2.5),  # past the top edge
    (5.5, 6.2, 9.25, 10.5),  # past the bottom and right edges
    (-11.0, -0.5, 0.4, 0.5),  # taller than the frame
    (2.5, 3.5, 2.5, 3.5),  # one centre exactly
    (2.6, 3.0, 3.4, 3.2),  # no centre inside
]


def test_box_mask_wraps_around_like_the_oracle():
    h, w = 7, 8
    boxes = np.array(BOXES, np.float32)
    got = np.asarray(metrics.box_mask(boxes, h, w))
    assert got.shape == (len(BOXES), h, w) and got.dtype == bool
    for t, box in enumerate(BOXES):
        np.testing.assert_array_equal(got[t], oracle_box_mask(box, h, w), err_msg=str(box))
    batch = np.asarray(metrics.box_mask(np.stack([boxes, boxes[::-1]]), h, w))
    np.testing.assert_array_equal(batch, np.stack([got, got[::-1]]))
    assert np.asarray(metrics.box_mask(boxes.astype(int), h, w)).shape == got.shape


#: The largest whole number of frames a box is moved by, per dtype: its coordinates
#: (quarters of a pixel for floats) stay exact in it.
MOVES = {"int64": 2**58, "uint64": 2**58, "float64": 2**40, "float32": 2**17}


@settings(max_examples=80, deadline=None)
@given(
    st.lists(st.integers(0, 20), min_size=2, max_size=2),  # the oracle looks 3 frames away
    st.lists(st.integers(0, 40), min_size=2, max_size=2),
    st.sampled_from(sorted(MOVES)),
    st.floats(0, 1),
    st.floats(0, 1),
)
def test_box_mask_of_a_box_moved_by_whole_frames_is_the_same(corner, extent, dtype, ky, kx):
    """A box moved by any whole number of frames covers the same pixels: an int64 box
    beyond int32 wrapped and covered none (the same box as floats: every pixel), and
    large float coordinates rounded in float32."""
    h, w = 7, 8
    unit = 1 if dtype in ("int64", "uint64") else 0.25
    box = [corner[0] * unit, corner[1] * unit, (corner[0] + extent[0]) * unit,
           (corner[1] + extent[1]) * unit]  # fmt: skip
    sign = 1 if dtype == "uint64" else -1 if ky > 0.5 else 1
    dy, dx = (sign * int(k * MOVES[dtype]) for k in (ky, kx))
    moved = [box[0] + dy * h, box[1] + dx * w, box[2] + dy * h, box[3] + dx * w]
    got = np.asarray(metrics.box_mask(np.array([moved], dtype), h, w))
    np.testing.assert_array_equal(got[0], oracle_box_mask(box, h, w), err_msg=str(moved))


def test_box_mask_covers_the_synthetic_object():
    cfg = sm.get_config("tiny")
    for index in range(6):
        example = sm.generate_example(cfg, "test", 0, index)
        scene = sm.example_scene(cfg, "test", 0, index)
        coverage, _ = sm.render_object_layer(
            cfg.height, cfg.width, scene["centers"], scene["angles"], scene["half_size"],
            scene["shape"], scene["cell"], scene["colors"],
        )  # fmt: skip
        inside = np.asarray(metrics.box_mask(example["boxes"], cfg.height, cfg.width))
        assert coverage.any() and not (coverage & ~inside).any()
        assert float(metrics.mass_in_mask(coverage.astype(np.float32), inside)) == 1.0


# --- properties ---

dims = st.tuples(st.integers(1, 4), st.integers(1, 4), st.integers(1, 4), st.sampled_from([0, 2]))


def _clip(d, seed):
    t, h, w, c = d
    return tied_relevance(seed, (t, h, w) if c == 0 else (t, h, w, c))


@settings(max_examples=examples(20), deadline=None)
@given(dims, st.integers(0, 2**31 - 1))
def test_recall_at_matched_sparsity_is_non_decreasing_in_k(d, seed):
    rel = _clip(d, seed)
    mask = random_mask(seed, rel.shape[:3], 0.4)
    n = int(np.prod(rel.shape[:3]))
    ks = np.arange(n + 1)
    recall = np.asarray(jax.vmap(lambda k: metrics.overlap_at_k(rel, mask, k).recall)(ks))
    assert (np.diff(recall) >= 0).all()
    hits = np.array([len(oracle_top_k(rel, int(k)) & set(np.flatnonzero(mask))) for k in ks])
    np.testing.assert_allclose(recall, hits / max(mask.sum(), 1), rtol=1e-6)


@settings(max_examples=examples(20), deadline=None)
@given(dims, st.integers(0, 2**31 - 1), st.sampled_from([0.0, 0.125, 0.25, 0.5, 0.75, 1.0]))
def test_mass_and_overlap_are_bounded_and_consistent(d, seed, fraction):
    rel = _clip(d, seed)
    mask = random_mask(seed + 1, rel.shape[:3], 0.4)
    assert float(metrics.mass_in_mask(rel, np.ones(rel.shape[:3], bool))) in (0.0, 1.0)
    share = float(metrics.mass_in_mask(rel, mask)) + float(metrics.mass_in_mask(rel, ~mask))
    assert share == pytest.approx(1.0 if np.abs(rel).sum() else 0.0, abs=1e-6)
    s = scores(metrics.overlap_at_threshold(rel, mask, fraction=fraction))
    assert ((s >= 0) & (s <= 1)).all()
    # The threshold selection, ranked: it is the top |S| voxels.
    chosen = oracle_threshold(rel, fraction)
    np.testing.assert_allclose(s, scores(metrics.overlap_at_k(rel, mask, len(chosen))), rtol=1e-6)


# --- batching, transformations, invalid values ---


def test_selection_does_not_depend_on_the_batch():
    rel = tied_relevance(15, (3, 4, 6, 6, 3))
    mask = random_mask(16, (3, 4, 6, 6))
    k = np.array([5, 40, 100])
    top = np.asarray(metrics.top_k_voxels(rel, k))
    over = scores(metrics.overlap_at_k(rel, mask, k))
    for i in range(3):
        one = np.asarray(metrics.top_k_voxels(rel[i : i + 1], k[i : i + 1]))[0]
        np.testing.assert_array_equal(one, top[i])
        np.testing.assert_array_equal(np.asarray(metrics.top_k_voxels(rel[i], k[i])), top[i])
        np.testing.assert_array_equal(scores(metrics.overlap_at_k(rel[i], mask[i], k[i])), over[i])
    np.testing.assert_array_equal(np.asarray(jax.vmap(metrics.top_k_voxels)(rel, k)), top)
    vmapped = jax.vmap(metrics.overlap_at_k)(rel, mask, k)
    np.testing.assert_array_equal(scores(vmapped), over)
    np.testing.assert_array_equal(scores(jax.jit(metrics.overlap_at_k)(rel, mask, k)), over)


def test_jit_equals_eager_and_vmap_equals_loop():
    rel = tied_relevance(17, (3, 5, 6, 6, 2))
    mask = random_mask(18, (3, 5, 6, 6))
    for fn in (metrics.overlap_at_threshold, metrics.mass_in_mask):
        eager = fn(rel, mask)
        jitted = jax.jit(fn)(rel, mask)
        for e, j in zip(jax.tree.leaves(eager), jax.tree.leaves(jitted), strict=True):
            np.testing.assert_array_equal(np.asarray(j), np.asarray(e))
        vmapped = jax.vmap(fn)(rel, mask)
        loop = [fn(r, m) for r, m in zip(rel, mask, strict=True)]
        for i, one in enumerate(loop):
            for v, o in zip(jax.tree.leaves(vmapped), jax.tree.leaves(one), strict=True):
                np.testing.assert_array_equal(np.asarray(v)[i], np.asarray(o))
    traced = jax.jit(lambda r, f: metrics.overlap_at_threshold(r, mask, fraction=f))(rel, 0.25)
    np.testing.assert_array_equal(
        scores(traced), scores(metrics.overlap_at_threshold(rel, mask, fraction=0.25))
    )
    boxes = np.array(BOXES, np.float32)
    np.testing.assert_array_equal(
        np.asarray(jax.jit(lambda b: metrics.box_mask(b, 7, 8))(boxes)),
        np.asarray(metrics.box_mask(boxes, 7, 8)),
    )


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_nonfinite_relevance_raises_eagerly_and_is_nan_for_its_clip_under_jit(value):
    bad = tied_relevance(19, (3, 4, 5, 5, 2))
    bad[2, 1, 1, 1, 0] = value
    mask = random_mask(20, (3, 4, 5, 5))
    calls = {
        "overlap_at_threshold": metrics.overlap_at_threshold,
        "overlap_at_k": lambda r, m: metrics.overlap_at_k(r, m, 9),
        "mass_in_mask": metrics.mass_in_mask,
    }
    for name, call in calls.items():
        with pytest.raises(sr.NonFiniteError, match=rf"{name}.*clip\(s\) \[2\]"):
            call(bad, mask)
        got = np.stack([np.asarray(s) for s in jax.tree.leaves(jax.jit(call)(bad, mask))], -1)
        assert np.isnan(got[2]).all()
        want = np.stack([np.asarray(s) for s in jax.tree.leaves(call(bad[:2], mask[:2]))], -1)
        np.testing.assert_array_equal(got[:2], want)
    top = np.asarray(jax.jit(lambda r: metrics.top_k_voxels(r, 9))(bad))
    assert not top[2].any() and (top[:2].sum(axis=(1, 2, 3)) == 9).all()


def test_traced_k_or_fraction_out_of_range_is_nan():
    rel = tied_relevance(21, (2, 3, 4, 4, 1))
    mask = random_mask(22, (2, 3, 4, 4))
    got = jax.jit(metrics.overlap_at_k)(rel, mask, jnp.array([49, 4]))
    assert np.isnan(scores(got)[0]).all() and not np.isnan(scores(got)[1]).any()
    assert not np.asarray(jax.jit(metrics.top_k_voxels)(rel, jnp.array([-1, 4])))[0].any()
    f = jax.jit(lambda f: metrics.overlap_at_threshold(rel, mask, fraction=f))
    assert np.isnan(scores(f(1.5))).all() and np.isnan(scores(f(jnp.nan))).all()


@pytest.mark.parametrize(
    "call, error, message",
    [
        (lambda r, m: metrics.overlap_at_k(r, m, 49), sr.OptionError, r"k must lie in \[0, 48\]"),
        (lambda r, m: metrics.overlap_at_k(r, m, -1), sr.OptionError, "k must lie"),
        (lambda r, m: metrics.overlap_at_k(r, m, 2.0), sr.DTypeError, "k must be integer"),
        (lambda r, m: metrics.overlap_at_k(r, m, True), sr.DTypeError, "k must be integer"),
        (lambda r, m: metrics.overlap_at_k(r, m, [1, 2]), sr.ShapeError, "k must be a scalar"),
        (lambda r, m: metrics.top_k_voxels(r, 49), sr.OptionError, "top_k_voxels: k"),
        (lambda r, m: metrics.overlap_at_k(r, m.astype(int), 1), sr.DTypeError, "bool"),
        (lambda r, m: metrics.mass_in_mask(r, m[:2]), sr.ShapeError, r"\(3, 4, 4\)"),
        (lambda r, m: metrics.mass_in_mask(r, m[None]), sr.ShapeError, "mask must have shape"),
        (lambda r, m: metrics.mass_in_mask(r.astype(int), m), sr.DTypeError, "real floating"),
        (lambda r, m: metrics.overlap_at_threshold(r, m, fraction=1.5), sr.OptionError, "fraction"),
        (lambda r, m: metrics.overlap_at_threshold(r, m, fraction=-0.1), sr.OptionError, ">= 0"),
        (lambda r, m: metrics.overlap_at_threshold(r, m, fraction="a"), sr.OptionError, "fraction"),
        (lambda r, m: metrics.dilate_mask(m, -1), sr.OptionError, r"voxels must be an int >= 0"),
        (lambda r, m: metrics.dilate_mask(m, 1.0), sr.OptionError, r"voxels must be an int"),
        (lambda r, m: metrics.dilate_mask(m, True), sr.OptionError, r"voxels must be an int"),
        (lambda r, m: metrics.dilate_mask(m.astype(int), 1), sr.DTypeError, "bool"),
        (lambda r, m: metrics.dilate_mask(m[0], 1), sr.ShapeError, "mask"),
    ],
)
def test_bad_arguments_raise_one_clear_line(call, error, message):
    rel = tied_relevance(23, (3, 4, 4))
    mask = random_mask(24, (3, 4, 4))
    with pytest.raises(error, match=message) as info:
        call(rel, mask)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    "boxes, size, error, message",
    [
        (np.ones((3, 3), np.float32), (4, 4), sr.ShapeError, r"\(T, 4\)"),
        (np.ones((3,), np.float32), (4, 4), sr.ShapeError, r"\(T, 4\)"),
        (np.ones((3, 4), bool), (4, 4), sr.DTypeError, "real numbers"),
        (np.array([[0, 0, np.nan, 1.0]]), (4, 4), sr.OptionError, "1 boxes are not finite"),
        (np.array([[2, 0, 1, 1.0]]), (4, 4), sr.OptionError, "y0 <= y1"),
        (np.array([[0, 0, 1, 1.0]]), (0, 4), sr.OptionError, "height"),
    ],
)
def test_bad_boxes_raise_one_clear_line(boxes, size, error, message):
    with pytest.raises(error, match=message):
        metrics.box_mask(boxes, *size)


# --- tolerance: the motion mask widened by N pixels in each frame ---


def oracle_dilation(mask: np.ndarray, n: int) -> np.ndarray:
    """Pixel (.., t, h, w) is in when a pixel of frame t with |dh| <= n and |dw| <= n is."""
    out = np.zeros_like(mask)
    for index in np.ndindex(mask.shape):
        *lead, h, w = index
        rows = slice(max(h - n, 0), h + n + 1)
        cols = slice(max(w - n, 0), w + n + 1)
        out[index] = mask[(*lead, rows, cols)].any()
    return out


@settings(max_examples=examples(30), deadline=None)
@given(
    st.tuples(st.integers(1, 2), st.integers(1, 3), st.integers(1, 7), st.integers(1, 7)),
    st.integers(0, 3),
    st.integers(0, 2**31 - 1),
    st.sampled_from([0.05, 0.3, 0.9]),
)
def test_dilate_mask_matches_the_oracle_and_jit_equals_eager(dims, n, seed, p):
    mask = random_mask(seed, dims, p)
    want = oracle_dilation(mask, n)
    got = np.asarray(metrics.dilate_mask(mask, n))
    np.testing.assert_array_equal(got, want)
    assert got.dtype == bool and (got | ~mask).all()  # the mask itself stays in
    jitted = jax.jit(lambda m: metrics.dilate_mask(m, n))
    np.testing.assert_array_equal(jitted(mask), want)
    np.testing.assert_array_equal(metrics.dilate_mask(mask[0], n), want[0])  # one clip
    # Widening twice is widening once by the sum (squares add up, within the frame).
    np.testing.assert_array_equal(metrics.dilate_mask(metrics.dilate_mask(mask, n), 1),
                                  oracle_dilation(mask, n + 1))  # fmt: skip


def test_dilate_mask_stays_in_its_frame():
    mask = np.zeros((2, 3, 5, 5), bool)
    mask[0, 1, 0, 4] = True  # a corner pixel: the band stops at the frame's edges
    got = np.asarray(metrics.dilate_mask(mask, 1))
    assert got[0, 1].sum() == 4 and got[0, [0, 2]].sum() == 0 and not got[1].any()
    assert got[0, 1, :2, 3:].all()
    np.testing.assert_array_equal(metrics.dilate_mask(mask, 0), mask)
    assert metrics.dilate_mask(mask, 9)[0, 1].all()  # wider than the frame: all of it


@settings(max_examples=examples(20), deadline=None)
@given(dims, st.integers(0, 2**31 - 1), st.integers(0, 2))
def test_tolerance_never_lowers_a_score_and_keeps_it_a_share(d, seed, n):
    """Against a widened mask, precision (threshold, top k) and mass can only grow."""
    rel = _clip(d, seed)
    mask = random_mask(seed + 1, rel.shape[:3], 0.3)
    wide = metrics.dilate_mask(mask, n)
    k = int(np.asarray(mask).sum())
    for score in (
        lambda m: metrics.overlap_at_threshold(rel, m).precision,
        lambda m: metrics.overlap_at_k(rel, m, k).precision,
        lambda m: metrics.mass_in_mask(rel, m),
    ):
        exact, tolerant = float(score(mask)), float(score(wide))
        assert 0 <= exact <= tolerant + 1e-6 and tolerant <= 1 + 1e-6
