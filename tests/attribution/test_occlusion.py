"""Occlusion for video: equal to Captum's ``Occlusion`` on the PyTorch twin of
c3d_small, to a brute-force NumPy oracle on a linear model (whose patch drops
are known in closed form), independent of jit, vmap, batching and chunking;
bad geometry refused with one clear line."""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import selrel_jax as sr
from selrel_jax import models
from selrel_jax.attribution import occlusion as occ
from selrel_jax.errors import OptionError, ShapeError

CLIP = (4, 16, 16)
TARGET = np.array([1, 3])


@pytest.fixture(scope="module")
def c3d():
    """The thin c3d_small as a PyTorch twin and as the Flax model with its weights."""
    torch = pytest.importorskip("torch")
    from tests.torch_reference_models import build

    net = build("c3d_small", 5, 0.25, seed=7)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.Conv3d | torch.nn.Linear):
                m.bias.normal_(0, 0.1, generator=torch.Generator().manual_seed(8))
    model, variables = models.from_torch_state_dict("c3d_small", net.state_dict(), width=0.25,
                                                    clip_size=CLIP)  # fmt: skip
    x = np.random.default_rng(9).normal(size=(2, *CLIP, 3)).astype(np.float32)
    return net, model, variables, x


@pytest.mark.parametrize(
    ("window", "strides", "baseline"),
    [((2, 8, 8), None, 0.0),  # patches tiling the clip
     ((2, 6, 6), (1, 4, 4), 0.0),  # overlapping; the last patch cut off at the edge
     ((1, 16, 16), None, 0.5),  # whole frames, another baseline
     ((3, 5, 7), (2, 3, 4), -0.25)],
)  # fmt: skip
def test_equals_captum_occlusion_on_the_pytorch_twin(c3d, window, strides, baseline):
    torch = pytest.importorskip("torch")
    captum_attr = pytest.importorskip("captum.attr")
    net, model, variables, x = c3d
    xt = torch.from_numpy(np.ascontiguousarray(np.moveaxis(x, -1, 1)))
    np.testing.assert_allclose(np.asarray(model.apply(variables, jnp.asarray(x))),
                               net(xt).detach().numpy(), atol=1e-5)  # fmt: skip
    with torch.no_grad():
        want = captum_attr.Occlusion(net).attribute(
            xt, sliding_window_shapes=(3, *window), strides=(3, *(strides or window)),
            baselines=baseline, target=TARGET.tolist(), perturbations_per_eval=8,
        )  # fmt: skip
    want = np.moveaxis(want.numpy(), 1, -1)
    got = sr.explain(model, variables, jnp.asarray(x), jnp.asarray(TARGET), "occlusion",
                     window=window, strides=strides, baseline=baseline)  # fmt: skip
    np.testing.assert_allclose(np.asarray(got), want, atol=2e-5 * np.abs(want).max())


def test_whole_frame_mode_is_a_frame_sized_window(c3d):
    _, model, variables, x = c3d
    frames = sr.explain(model, variables, x, TARGET, "occlusion", window="frame")
    boxed = sr.explain(model, variables, x, TARGET, "occlusion", window=(1, 16, 16))
    np.testing.assert_array_equal(np.asarray(frames), np.asarray(boxed))
    per_frame = np.asarray(frames)[:, :, :1, :1, :1]
    np.testing.assert_array_equal(np.asarray(frames), np.broadcast_to(per_frame, x.shape))


def _oracle(weights, x, window, strides, baseline):
    """Brute force: for f(x) = sum(w * x), occluding patch P drops the logit by
    sum_P w (x - b); each voxel averages the drops of the patches covering it."""
    n, t, h, w, _ = x.shape
    total, count = np.zeros((n, t, h, w)), np.zeros((t, h, w))
    starts = [
        range(0, max(d - k, 0) + s, s) for d, k, s in zip((t, h, w), window, strides, strict=True)
    ]
    for a, b, c in itertools.product(*starts):
        box = np.s_[a : a + window[0], b : b + window[1], c : c + window[2]]
        drop = (weights[box] * (x[(slice(None), *box)] - baseline)).sum(axis=(1, 2, 3, 4))
        total[(slice(None), *box)] += drop[:, None, None, None]
        count[box] += 1
    return np.repeat((total / count)[..., None], x.shape[-1], axis=-1)


@pytest.mark.parametrize(
    ("window", "strides"),
    [((2, 2, 2), None), ((2, 3, 2), (1, 2, 1)), ((3, 5, 4), (3, 4, 3)), ((1, 5, 6), None)],
)
def test_linear_model_equals_a_numpy_oracle(window, strides):
    rng = np.random.default_rng(3)
    weights = rng.normal(size=(5, 5, 6, 2)).astype(np.float32)
    x = rng.normal(size=(3, 5, 5, 6, 2)).astype(np.float32)

    def apply_fn(clips):
        score = jnp.sum(clips * weights, axis=(1, 2, 3, 4))
        return jnp.stack([score, -score], axis=1)

    got = sr.explain(apply_fn, None, x, jnp.zeros(3, jnp.int32), "occlusion",
                     window=window, strides=strides, baseline=0.3)  # fmt: skip
    want = _oracle(weights, x, window, strides or window, 0.3)
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-4, atol=1e-4)


def test_jit_vmap_batch_and_chunks_agree(c3d):
    _, model, variables, x = c3d
    options = {"window": (2, 6, 6), "strides": (1, 4, 4)}
    # A drop is a difference of two logits: compare to the logits' float32 rounding.
    atol = 1e-6 * np.abs(np.asarray(model.apply(variables, jnp.asarray(x)))).max()
    eager = np.asarray(sr.explain(model, variables, x, TARGET, "occlusion", **options))
    fn = sr.make_explainer(model, "occlusion", **options)
    np.testing.assert_allclose(np.asarray(jax.jit(fn)(variables, x, TARGET)), eager, atol=atol)
    one_by_one = jax.vmap(lambda c, t: fn(variables, c[None], t[None])[0])(x, TARGET)
    np.testing.assert_allclose(np.asarray(one_by_one), eager, atol=atol)
    alone = sr.explain(model, variables, x[1:], TARGET[1:], "occlusion", **options)
    np.testing.assert_allclose(np.asarray(alone), eager[1:], atol=atol)
    for chunk in (1, 5, 100):
        chunked = sr.explain(model, variables, x, TARGET, "occlusion", chunk_size=chunk, **options)
        np.testing.assert_allclose(np.asarray(chunked), eager, atol=atol)
    assert np.abs(eager).max() > 1e3 * atol


def test_a_traced_nan_clip_gets_nan_and_the_others_do_not(c3d):
    _, model, variables, x = c3d
    fn = jax.jit(sr.make_explainer(model, "occlusion", window=(2, 8, 8)))
    bad = x.copy()
    bad[0, 1, 2, 3, 0] = np.nan
    got, clean = np.asarray(fn(variables, bad, TARGET)), np.asarray(fn(variables, x, TARGET))
    assert np.isnan(got[0]).all()
    np.testing.assert_allclose(got[1], clean[1], rtol=1e-6)


@pytest.mark.parametrize(
    ("options", "error", "message"),
    [({"window": (8, 8, 8)}, ShapeError,
      r"occlusion window \(8, 8, 8\) is larger than the clips' \(T, H, W\) \(4, 16, 16\)"),
     ({"window": (2, 4, 4), "strides": (2, 5, 4)}, OptionError,
      r"the H stride 5 is larger than the window's 4, so some voxels are in no patch"),
     ({"window": "frames"}, OptionError, r"window must be \(t, h, w\) or 'frame'; got 'frames'"),
     ({"window": (2, 4)}, OptionError, r"window must be 3 positive ints \(t, h, w\); got \(2, 4\)"),
     ({"window": (2, 0, 4)}, OptionError, r"occlusion window H must be a positive int; got 0"),
     ({"strides": (1, 1.5, 1)}, OptionError, r"strides H must be a positive int; got 1.5"),
     ({"chunk_size": 0}, OptionError, r"chunk_size must be a positive int; got 0"),
     ({"baseline": np.nan}, OptionError, r"baseline holds 1 non-finite"),
     ({"baseline": np.zeros(5)}, ShapeError, r"baseline of shape \(5,\) does not broadcast")],
)  # fmt: skip
def test_bad_options_raise_one_clear_line(c3d, options, error, message):
    _, model, variables, x = c3d
    with pytest.raises(error, match=message):
        sr.explain(model, variables, x, TARGET, "occlusion", **options)


def test_patch_grid_counts_patches_as_captum_does():
    assert occ.patch_grid((2, 6, 6), (1, 4, 4), (4, 16, 16)) == ((2, 6, 6), (1, 4, 4), (3, 4, 4))
    assert occ.patch_grid("frame", None, (4, 16, 12)) == ((1, 16, 12), (1, 16, 12), (4, 1, 1))
    # A stride beyond the window is fine where the window spans the axis.
    assert occ.patch_grid((1, 16, 16), (1, 20, 20), (4, 16, 16))[2] == (4, 1, 1)
