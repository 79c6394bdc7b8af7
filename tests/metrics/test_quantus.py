"""The scores that Quantus also defines equal Quantus's on the same arrays: Gini index =
``quantus.Sparseness``, share of mass in a mask = ``quantus.RelevanceMassAccuracy``
(absolute values, channels summed), both as functions and as the sweep's columns."""

from __future__ import annotations

import sys
import warnings

import jax
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import selrel_jax as sr
from selrel_jax import metrics
from selrel_jax.sweep import _compute


@pytest.fixture(scope="module")
def quantus():
    # Quantus imports zennit whenever it is installed, and zennit's import needs
    # torchvision, which nothing here installs; these two measures use neither.
    with pytest.MonkeyPatch.context() as patch:
        if "zennit" not in sys.modules:
            patch.setitem(sys.modules, "zennit", None)  # find_spec("zennit") is then None
        module = pytest.importorskip("quantus")
    return module


def _as_images(v: np.ndarray) -> np.ndarray:
    """(N, T, H, W) -> (N, 1, T*H, W): Quantus takes images, not videos; both scores read
    the values as a flat list, so stacking the frames changes neither."""
    n, t, h, w = v.shape
    return v.reshape(n, 1, t * h, w)


def quantus_scores(quantus, metric, v: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """``metric`` of each clip, one call per clip: Quantus divides a whole batch by its
    largest value, so with its ``+ 1e-7`` a clip's Sparseness depended on the others'."""
    images = _as_images(v)
    masks = [None] * len(v) if mask is None else _as_images(mask)
    out = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for image, m in zip(images, masks, strict=True):
            batch = image[None]
            s_batch = None if m is None else m[None]
            out += metric(model=None, x_batch=np.zeros_like(batch), y_batch=np.zeros(1, int),
                          a_batch=batch, s_batch=s_batch)  # fmt: skip
    return np.asarray(out, np.float64)


def sparseness_tolerance(v: np.ndarray) -> float:
    """Quantus's Sparseness adds 1e-7 to each of the n max-normalised values: the Gini
    index times ``S / (S + n 1e-7)`` (the weights ``2i - n - 1`` sum to 0), S >= 1."""
    return v[0].size * 1e-7 + 1e-6


def relevance(seed: int, shape, sparsity: float) -> np.ndarray:
    rng = np.random.default_rng(seed)
    values = rng.standard_normal(shape) * (rng.random(shape) < sparsity)
    return (values * np.exp(rng.uniform(-20, 20))).astype(np.float32)


def _magnitudes(rel: np.ndarray) -> np.ndarray:
    return np.abs(rel.astype(np.float64)).sum(-1)  # channels summed, absolute values


@settings(max_examples=20, deadline=None)
@given(st.integers(0, 2**31 - 1), st.sampled_from([0.05, 0.4, 1.0]), st.sampled_from([1, 3]))
def test_gini_and_mass_in_mask_equal_quantus(quantus, seed, sparsity, channels):
    rel = relevance(seed, (3, 4, 6, 5, channels), sparsity)
    rel[0, 0, 0, 0] = 1.0  # every clip has mass
    mask = np.random.default_rng(seed + 1).random(rel.shape[:4]) < 0.3
    mask[:, 0, 0, 0] = True  # and a nonempty mask (Quantus: NaN for an empty one)
    v = _magnitudes(rel)
    sparseness = quantus.Sparseness(abs=True, normalise=True, disable_warnings=True,
                                    display_progressbar=False)  # fmt: skip
    want = quantus_scores(quantus, sparseness, v)
    np.testing.assert_allclose(metrics.gini(rel), want, rtol=sparseness_tolerance(v))
    mass = quantus.RelevanceMassAccuracy(abs=True, normalise=True, disable_warnings=True)
    np.testing.assert_allclose(
        metrics.mass_in_mask(rel, mask), quantus_scores(quantus, mass, v, mask), rtol=1e-5
    )


def test_the_sweeps_gini_and_motion_mass_columns_equal_quantus(quantus):
    rel = relevance(7, (4, 5, 8, 8, 3), 0.5)
    mask = np.random.default_rng(8).random(rel.shape[:4]) < 0.2
    mask[3] = False  # a clip that shows no motion
    truth = {"mask": mask}
    select = {"temporal_padding": "edge", "threshold": "clip"}
    sigmas = np.array([1.0, 2.0], np.float32)
    got = jax.jit(lambda r: _compute._relevance_scores(r, truth, sigmas, select, 1))(rel)
    v = _magnitudes(rel)
    sparseness = quantus.Sparseness(abs=True, normalise=True, disable_warnings=True,
                                    display_progressbar=False)  # fmt: skip
    want = quantus_scores(quantus, sparseness, v)
    np.testing.assert_allclose(got["gini_raw"], want, rtol=sparseness_tolerance(v))
    mass = quantus.RelevanceMassAccuracy(abs=True, normalise=True, disable_warnings=True)
    want = quantus_scores(quantus, mass, v, mask)
    assert np.isnan(want[3]) and np.isnan(got["motion_mass_raw"][3])  # both: NaN, no motion
    np.testing.assert_allclose(got["motion_mass_raw"], want, rtol=1e-5)
    wide = np.asarray(metrics.dilate_mask(mask, 1))
    np.testing.assert_allclose(
        got["motion_mass_tolerant_raw"], quantus_scores(quantus, mass, v, wide), rtol=1e-5
    )
    # The selective map's, per sigma: RelevanceMassAccuracy of that map.
    for k, sigma in enumerate(sigmas):
        sel = np.asarray(sr.selective_relevance(rel, float(sigma), **select))
        want = quantus_scores(quantus, mass, _magnitudes(sel), mask)
        np.testing.assert_allclose(got["motion_mass_selective"][:, k], want, rtol=1e-5)
