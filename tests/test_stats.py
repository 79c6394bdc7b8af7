"""Study statistics: Holm and Benjamini-Hochberg against hand computations and a loop
oracle, the hierarchical bootstrap's properties, the bootstrap p-value."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from selrel_jax import report, stats
from selrel_jax.errors import OptionError

P_VECTORS = st.lists(st.floats(0, 1), min_size=1, max_size=12)


def _holm_oracle(p):
    """Holm by its definition: reject in ascending order while p_(i) <= alpha/(m-i+1);
    the adjusted p of a test is the smallest alpha that rejects it."""
    m = len(p)
    order = sorted(range(m), key=lambda i: (p[i], i))
    out, running = [0.0] * m, 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        out[i] = running
    return out


def _bh_oracle(p):
    """BH by its definition: q_(i) = min over j >= i of m p_(j) / j."""
    m = len(p)
    order = sorted(range(m), key=lambda i: (p[i], i))
    out = [0.0] * m
    for rank, i in enumerate(order):
        out[i] = min(min(1.0, m * p[j] / (k + 1)) for k, j in enumerate(order) if k >= rank)
    return out


def test_holm_and_bh_by_hand():
    p = [0.01, 0.04, 0.03, 0.005]
    # Sorted 0.005, 0.01, 0.03, 0.04: Holm 4*0.005, 3*0.01, max(.03, 2*.03), max(.06, .04).
    assert stats.holm(p) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    # BH: 4/1*.005=.02, 4/2*.01=.02, 4/3*.03=.04, 4/4*.04=.04.
    assert stats.benjamini_hochberg(p) == pytest.approx([0.02, 0.04, 0.04, 0.02])
    assert stats.holm([0.6, 0.5]) == pytest.approx([1.0, 1.0])  # capped at 1
    assert stats.holm([]).size == 0 and stats.benjamini_hochberg([]).size == 0


@settings(max_examples=60, deadline=None)
@given(P_VECTORS)
def test_adjustments_match_their_definitions(p):
    holm, bh = stats.holm(p), stats.benjamini_hochberg(p)
    assert holm == pytest.approx(_holm_oracle(p))
    assert bh == pytest.approx(_bh_oracle(p))
    assert np.all(bh <= holm + 1e-12) and np.all(bh >= np.asarray(p) - 1e-12)


@pytest.mark.parametrize("bad", [[0.1, np.nan], [1.5], [-0.1], [[0.1]]])
def test_adjustments_refuse_what_is_no_p_value(bad):
    with pytest.raises(OptionError, match="p-values"):
        stats.holm(bad)
    with pytest.raises(OptionError, match="p-values"):
        stats.benjamini_hochberg(bad)


@settings(max_examples=25, deadline=None)
@given(st.lists(st.floats(-5, 5), min_size=1, max_size=20), st.integers(0, 50))
def test_one_model_is_the_clip_bootstrap(values, seed):
    h = stats.hierarchical_bootstrap([np.array(values)], resamples=200, seed=seed)
    e = report.bootstrap_mean(values, resamples=200, seed=seed)
    assert (h.value, h.low, h.high) == pytest.approx((e.value, e.low, e.high), abs=1e-12)
    assert (h.models, h.clips) == (1, len(values))


def test_hierarchical_value_is_the_mean_of_model_means_and_counts():
    groups = [np.array([0.1, 0.2, 0.3, np.nan]), np.array([0.2, 0.4]), np.array([np.nan])]
    h = stats.hierarchical_bootstrap(groups, resamples=300, seed=1)
    assert h.value == pytest.approx((0.2 + 0.3) / 2)
    assert (h.models, h.clips) == (2, 5) and h.draws.shape == (300,)
    assert stats.hierarchical_bootstrap(groups, resamples=300, seed=1).draws == pytest.approx(
        h.draws
    )
    assert stats.hierarchical_bootstrap([[np.nan]]).models == 0


def test_interval_widens_when_models_disagree():
    noise = np.random.default_rng(0).normal(0, 0.1, size=(3, 30))
    offsets = np.array([[-1.0], [0.0], [1.0]])
    agree = stats.hierarchical_bootstrap(list(noise), seed=2)
    disagree = stats.hierarchical_bootstrap(list(noise + offsets), seed=2)
    assert disagree.high - disagree.low > 5 * (agree.high - agree.low)
    # Pooling the clips as if from one model hides the disagreement.
    pooled = stats.hierarchical_bootstrap([np.ravel(noise + offsets)], seed=2)
    assert disagree.high - disagree.low > 2 * (pooled.high - pooled.low)


def test_hierarchical_draws_resample_models():
    # Two constant models, 0 and 1: every draw is 0, 0.5 or 1 (models drawn with
    # replacement), and all three occur.
    h = stats.hierarchical_bootstrap([np.zeros(4), np.ones(4)], resamples=400, seed=0)
    assert set(np.unique(h.draws)) == {0.0, 0.5, 1.0}


def test_bootstrap_p_value_and_difference():
    draws = np.random.default_rng(0).normal(0.3, 0.1, size=4000)
    se = np.std(draws, ddof=1)
    assert stats.bootstrap_p_value(0.3, draws) == pytest.approx(math.erfc(0.3 / se / 2**0.5))
    assert stats.bootstrap_p_value(0.3, draws) < 0.01
    assert stats.bootstrap_p_value(0.0, draws) == 1.0
    assert stats.bootstrap_p_value(0.2, np.full(5, 0.2)) == 0.0
    assert math.isnan(stats.bootstrap_p_value(0.2, []))
    a = stats.hierarchical_bootstrap([np.array([1.0, 2.0, 3.0])], resamples=100, seed=0)
    b = stats.hierarchical_bootstrap([np.array([0.0, 1.0])], resamples=100, seed=1)
    d = stats.bootstrap_difference(a, b)
    assert d.value == pytest.approx(1.5) and d.draws == pytest.approx(a.draws - b.draws)
    assert (d.models, d.clips) == (2, 5)
    with pytest.raises(OptionError, match="as many resamples"):
        stats.bootstrap_difference(a, stats.hierarchical_bootstrap([[1.0]], resamples=50))
