"""Architecture facts: published parameter counts, shapes, train/eval behaviour, options."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from selrel_jax import models
from selrel_jax.errors import SelrelError
from selrel_jax.models.c3d import c3d_fc6_features
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
    assert c3d_fc6_features((16, 112, 112)) == 8192
    assert c3d_fc6_features((16, 112, 112), width=0.5) == 4096
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
