"""Architecture facts: published parameter counts, shapes, train/eval behaviour, options."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from selrel_jax import models
from selrel_jax.errors import OptionError, SelrelError, ShapeError
from selrel_jax.models.c3d import c3d_pool5_size, scaled
from selrel_jax.models.resnet3d import midplanes


def _abstract(model, clip):
    clips = jax.ShapeDtypeStruct((1, *clip, 3), jnp.float32)
    return jax.eval_shape(lambda c: model.init(jax.random.key(0), c, train=False), clips)


@pytest.mark.parametrize(
    ("arch", "classes", "count"),
    # torchvision's documented parameter counts.
    [("r3d_18", 400, 33_371_472), ("mc3_18", 400, 11_695_440), ("r2plus1d_18", 400, 31_505_325)],
)
def test_resnet_parameter_counts_match_torchvision(arch, classes, count):
    params = _abstract(models.create(arch, classes), (8, 32, 32))["params"]
    assert sum(x.size for x in jax.tree_util.tree_leaves(params)) == count


def test_c3d_sizes():
    """fc6's input: pool5's (T, H, W) times its channels (8192 at 16x112x112)."""
    assert np.prod(c3d_pool5_size((16, 112, 112))) * scaled(512, 1.0) == 8192
    assert np.prod(c3d_pool5_size((16, 112, 112))) * scaled(512, 0.5) == 4096
    params = _abstract(models.create("c3d", 487), (16, 112, 112))["params"]
    convs = [(3, 64), (64, 128), (128, 256), (256, 256), (256, 512)] + [(512, 512)] * 3
    expected = sum(27 * i * o + o for i, o in convs)
    expected += 8192 * 4096 + 4096 + 4096 * 4096 + 4096 + 4096 * 487 + 487
    assert sum(x.size for x in jax.tree_util.tree_leaves(params)) == expected
    assert params["fc6"]["kernel"].shape == (8192, 4096)


def test_r2plus1d_midplanes():
    assert midplanes(64, 64) == 144
    assert midplanes(64, 128) == 230
    assert midplanes(128, 128) == 288
    assert midplanes(512, 512) == 1152


def test_mc3_keeps_time_after_stem_and_r3d_halves_it():
    for arch, frames in (("mc3_18", 8), ("r3d_18", 1)):
        model = models.create(arch, 4, width=1 / 16)
        clips = jax.ShapeDtypeStruct((1, 8, 32, 32, 3), jnp.float32)
        variables = _abstract(model, (8, 32, 32))
        _, state = jax.eval_shape(
            lambda v, c, m=model: m.apply(v, c, train=False, capture_intermediates=True),
            variables,
            clips,
        )
        layer4 = state["intermediates"]["layer4_1"]["__call__"][0]
        assert layer4.shape[1] == frames, arch


def test_train_mode_updates_batch_stats(numpy_variables):
    model = models.create("r3d_18", 3, width=1 / 16, blocks=(1, 1, 1, 1))
    clips = jax.random.normal(jax.random.key(0), (2, 4, 16, 16, 3))
    variables = numpy_variables(model, clips.shape)
    step = jax.jit(lambda v, c: model.apply(v, c, train=True, mutable=["batch_stats"]))
    logits, updates = step(variables, clips)
    assert logits.shape == (2, 3)
    old, new = (
        variables["batch_stats"]["stem_bn"]["mean"],
        updates["batch_stats"]["stem_bn"]["mean"],
    )
    assert not np.allclose(old, new)


def test_bad_options():
    with pytest.raises(SelrelError, match="blocks must be 4"):
        _abstract(models.create("mc3_18", 3, blocks=(1, 1)), (4, 16, 16))
    with pytest.raises(SelrelError, match="width"):
        models.create("c3d", 3, width=0)
    with pytest.raises(SelrelError, match="num_classes"):
        models.create("c3d", 0)
    with pytest.raises(SelrelError, match="clip_size"):
        models.create("c3d", 3, clip_size=(16, 112))


def test_create_refuses_an_unknown_model_option_listing_the_valid_ones():
    with pytest.raises(OptionError, match=r"c3d_small has no model option 'foo'; its options are "
                       r"channels, dropout_rate, stem_stride"):  # fmt: skip
        models.create("c3d_small", 3, foo=1)
    with pytest.raises(
        OptionError, match=r"r3d_18 has no model option 'num_blocks'; its options are blocks \("
    ):
        models.create("r3d_18", 3, num_blocks=(1, 1, 1, 1))
    assert models.registry.model_options("c3d") == ("dropout_rate", "hidden")


@pytest.mark.parametrize(
    ("arch", "option", "needle"),
    [
        ("c3d_small", {"stem_stride": "x"}, "stem_stride must be 3 positive ints; got 'x'"),
        ("c3d_small", {"stem_stride": (1, 2)}, "stem_stride must be 3 positive ints"),
        ("c3d_small", {"channels": (16, 0)}, "channels must be positive ints"),
        ("c3d_small", {"dropout_rate": 1.5}, "dropout_rate must be below 1"),
        ("c3d", {"hidden": "many"}, "hidden must be a positive int"),
        ("r3d_18", {"blocks": (1, 1)}, "blocks must be 4 positive ints"),
    ],
)
def test_create_refuses_a_model_option_value_naming_it(arch, option, needle):
    with pytest.raises(OptionError, match=needle):
        models.create(arch, 3, width=0.25, clip_size=(8, 32, 32), **option)


def test_create_names_the_option_that_fails_inside_jax(monkeypatch):
    """A module option without a check of its own fails somewhere inside JAX; create
    finds which option it was by tracing init with each alone."""

    class Plain(nn.Module):
        num_classes: int
        width: float = 1.0
        clip_size: tuple = (4, 8, 8)
        kernel: tuple = (1, 1, 1)
        features: int = 2

        @nn.compact
        def __call__(self, x, train=False):
            x = nn.Conv(self.features, self.kernel)(x)
            return nn.Dense(self.num_classes)(x.mean((1, 2, 3)))

    monkeypatch.setitem(models.registry._MODULES, "c3d_small", Plain)
    models.create("c3d_small", 3, kernel=(1, 2, 2), features=4)  # fine
    with pytest.raises(OptionError, match=r"model option kernel='x' does not work for c3d_small: "):
        models.create("c3d_small", 3, features=4, kernel="x")


@pytest.mark.parametrize(
    ("arch", "clip", "needle"),
    [
        (
            "c3d_small",
            (1, 16, 16),
            r"clips of \(1, 16, 16\) \(T, H, W\) are too small for c3d_small",
        ),
        ("c3d", (4, 16, 16), r"too small for c3d: pool4 leaves \(0, 1, 1\)"),
    ],
)
def test_clips_too_small_for_the_model_are_a_shape_error(arch, clip, needle):
    model = models.create(arch, 3, width=0.125, clip_size=clip)
    with pytest.raises(ShapeError, match=needle):
        _abstract(model, clip)
