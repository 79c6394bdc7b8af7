"""PyTorch weight import: parity with plain torch.nn models of the checkpoint key layout."""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from selrel_jax import models  # noqa: E402
from selrel_jax.errors import CheckpointError, SelrelError  # noqa: E402
from tests.torch_reference_models import build  # noqa: E402

RESNETS = ("r3d_18", "mc3_18", "r2plus1d_18")


def _torch_logits(module, clips_nthwc: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return module(torch.from_numpy(clips_nthwc).permute(0, 4, 1, 2, 3)).numpy()


def _assert_close_relative(actual, expected, rtol=1e-4):
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.shape == expected.shape
    scale = np.abs(expected).max()
    assert scale > 0
    err = np.abs(actual - expected).max() / scale
    assert err <= rtol, f"max relative error {err:.2e} > {rtol}"


def _logits(model, variables, clips):
    return jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, clips)


def _clips(shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


@pytest.mark.parametrize(
    ("arch", "width"),
    [("mc3_18", 0.25), ("r2plus1d_18", 1.0)],
)
def test_resnet_parity(arch, width):
    module = build(arch, num_classes=10, width=width, seed=1)
    state = module.state_dict()
    assert any(k.endswith("num_batches_tracked") for k in state)
    model, variables = models.from_torch_state_dict(arch, state)
    clips = _clips((2, 8, 32, 32, 3), seed=2)
    logits = _logits(model, variables, clips)
    assert logits.shape == (2, 10)
    _assert_close_relative(logits, _torch_logits(module, clips))


def test_r3d_full_width_key_shapes_and_parity():
    module = build("r3d_18", num_classes=400, width=1.0, seed=3)
    model, variables = models.from_torch_state_dict("r3d_18", module.state_dict())
    n_torch = sum(p.numel() for p in module.parameters())
    assert sum(x.size for x in jax.tree_util.tree_leaves(variables["params"])) == n_torch
    clips = _clips((1, 8, 32, 32, 3), seed=4)
    _assert_close_relative(_logits(model, variables, clips), _torch_logits(module, clips))


def test_c3d_full_size_parity():
    module = build("c3d", num_classes=487, width=1.0)
    state = module.state_dict()
    assert state["fc6.weight"].shape == (4096, 8192)
    model, variables = models.from_torch_state_dict("c3d", state)
    clips = _clips((1, 16, 112, 112, 3), seed=5)
    _assert_close_relative(_logits(model, variables, clips), _torch_logits(module, clips))


def test_c3d_thin_small_clip_parity_with_numpy_values():
    clip = (16, 32, 32)
    module = build("c3d", num_classes=6, width=0.125, clip_size=clip)
    state = {k: v.numpy() for k, v in module.state_dict().items()}
    model, variables = models.from_torch_state_dict("c3d", state, clip_size=clip)
    clips = _clips((2, *clip, 3), seed=6)
    _assert_close_relative(_logits(model, variables, clips), _torch_logits(module, clips))


def test_c3d_small_parity():
    module = build("c3d_small", num_classes=4, width=0.5)
    model, variables = models.from_torch_state_dict("c3d_small", module.state_dict())
    clips = _clips((2, 8, 24, 24, 3), seed=7)
    _assert_close_relative(_logits(model, variables, clips), _torch_logits(module, clips))


@pytest.fixture(scope="module")
def thin_state():
    return build("mc3_18", num_classes=5, width=0.125).state_dict()


def test_module_prefix_is_stripped(thin_state):
    prefixed = {f"module.{k}": v for k, v in thin_state.items()}
    _, a = models.from_torch_state_dict("mc3_18", prefixed)
    _, b = models.from_torch_state_dict("mc3_18", thin_state)
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True):
        np.testing.assert_array_equal(x, y)


def test_missing_unexpected_and_wrong_shape_are_all_listed(thin_state):
    state = dict(thin_state)
    del state["layer2.0.downsample.1.running_var"]
    state["layer9.0.conv1.0.weight"] = torch.zeros(3)
    state["layer3.1.conv2.0.weight"] = torch.zeros(32, 32, 3, 3, 3)
    with pytest.raises(CheckpointError) as info:
        models.from_torch_state_dict("mc3_18", state)
    message = str(info.value)
    assert "\n" not in message
    assert re.search(r"missing keys: layer2\.0\.downsample\.1\.running_var", message)
    assert re.search(r"unexpected keys: layer9\.0\.conv1\.0\.weight", message)
    assert "layer3.1.conv2.0.weight (32, 32, 3, 3, 3) (expected (32, 32, 1, 3, 3))" in message


def test_num_classes_mismatch_needs_drop_head(thin_state):
    with pytest.raises(SelrelError, match="has 5 classes but num_classes=7"):
        models.from_torch_state_dict("mc3_18", thin_state, num_classes=7)


def test_drop_head_gives_fresh_seeded_head(thin_state):
    model, variables = models.from_torch_state_dict(
        "mc3_18", thin_state, num_classes=7, drop_head=True, seed=3
    )
    _, again = models.from_torch_state_dict(
        "mc3_18", thin_state, num_classes=7, drop_head=True, seed=3
    )
    _, same_size = models.from_torch_state_dict("mc3_18", thin_state)
    assert variables["params"]["fc"]["kernel"].shape == (64, 7)
    np.testing.assert_array_equal(
        variables["params"]["fc"]["kernel"], again["params"]["fc"]["kernel"]
    )
    np.testing.assert_array_equal(
        variables["params"]["layer4_1"]["conv2"]["kernel"],
        same_size["params"]["layer4_1"]["conv2"]["kernel"],
    )
    clips = jax.ShapeDtypeStruct((1, 4, 16, 16, 3), jnp.float32)
    assert jax.eval_shape(lambda c: model.apply(variables, c, train=False), clips).shape == (1, 7)
    headless = {k: v for k, v in thin_state.items() if not k.startswith("fc.")}
    _, variables = models.from_torch_state_dict("mc3_18", headless, num_classes=3, drop_head=True)
    assert variables["params"]["fc"]["bias"].shape == (3,)


def test_bad_inputs():
    with pytest.raises(SelrelError, match="unknown model arch"):
        models.from_torch_state_dict("resnet50", {})
    with pytest.raises(CheckpointError, match="must be a mapping"):
        models.from_torch_state_dict("r3d_18", [1, 2])
    with pytest.raises(CheckpointError, match="infer its width"):
        models.from_torch_state_dict("r3d_18", {"fc.weight": np.zeros((4, 8))})
    with pytest.raises(CheckpointError, match="floating point"):
        models.from_torch_state_dict("r3d_18", {"stem.0.weight": np.zeros((4, 3), np.int64)})


def _layout_keys(arch):
    from selrel_jax.models.torch_import import _leaves, torch_layout

    return [f"{e.torch}.{leaf}" for e in torch_layout(arch) for leaf in _leaves(e.kind)]


def test_one_key_state_dict_lists_every_missing_key():
    state = {"conv1.weight": np.zeros((8, 3, 3, 3, 3), np.float32)}
    with pytest.raises(CheckpointError) as info:
        models.from_torch_state_dict("c3d_small", state)
    message = str(info.value)
    missing = [k for k in _layout_keys("c3d_small") if k != "conv1.weight"]
    assert f"missing keys: {', '.join(missing)}" in message  # all nine, the head among them
    assert "pass num_classes with drop_head=True" in message and "\n" not in message

    # a long list is cut after 20 keys, with a count of the rest
    resnet = {"stem.0.weight": np.zeros((16, 3, 3, 7, 7), np.float32)}
    with pytest.raises(CheckpointError) as info:
        models.from_torch_state_dict("r3d_18", resnet)
    missing = [k for k in _layout_keys("r3d_18") if k != "stem.0.weight"]
    assert len(missing) > 20
    assert f"missing keys: {', '.join(missing[:20])}, ... ({len(missing) - 20} more)" in str(
        info.value
    )


def test_class_count_mismatch_and_key_problems_come_in_one_error(thin_state):
    state = dict(thin_state)
    del state["layer1.0.conv1.1.weight"]
    with pytest.raises(CheckpointError) as info:
        models.from_torch_state_dict("mc3_18", state, num_classes=7)
    message = str(info.value)
    assert "has 5 classes but num_classes=7" in message
    assert "missing keys: layer1.0.conv1.1.weight" in message
    assert "wrong shapes" not in message  # the head is checked at its own class count


def test_a_safetensors_file_is_read_and_a_corrupt_one_is_one_checkpoint_error(tmp_path):
    from safetensors.torch import save_file

    from selrel_jax.models.torch_import import read_torch_state_dict

    save_file({"fc.weight": torch.ones(2, 3)}, tmp_path / "model.safetensors")
    state = read_torch_state_dict(tmp_path / "model.safetensors")
    assert list(state) == ["fc.weight"] and tuple(state["fc.weight"].shape) == (2, 3)
    (tmp_path / "bad.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match=r"cannot read safetensors weights .*bad"):
        read_torch_state_dict(tmp_path / "bad.safetensors")
