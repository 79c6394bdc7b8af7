"""X3D-XS/S: logits equal to a hand-written PyTorch twin in pytorchvideo's module
layout and state_dict names (pytorchvideo itself needs torchvision and fvcore,
which are not installed here), after ``from_torch_state_dict``; the published
channel counts and parameter count."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from selrel_jax import models
from selrel_jax.errors import ShapeError

torch = pytest.importorskip("torch")
tnn = torch.nn


def _round_width(width, multiplier, min_width=8, divisor=8):
    """pytorchvideo.layers.utils.round_width (ceil=False)."""
    width *= multiplier
    out = max(min_width, int(width + divisor / 2) // divisor * divisor)
    if out < 0.9 * width:
        out += divisor
    return int(out)


class _SE(tnn.Module):
    """fvcore.nn.squeeze_excitation.SqueezeExcitation(is_3d=True)."""

    def __init__(self, channels, reduced):
        super().__init__()
        self.avg_pool = tnn.AdaptiveAvgPool3d(1)
        self.block = tnn.Sequential(tnn.Conv3d(channels, reduced, 1), tnn.ReLU(),
                                    tnn.Conv3d(reduced, channels, 1), tnn.Sigmoid())  # fmt: skip

    def forward(self, x):
        return x * self.block(self.avg_pool(x))


class _Bottleneck(tnn.Module):
    def __init__(self, dim_in, inner, out, stride, se):
        super().__init__()
        self.conv_a, self.norm_a = tnn.Conv3d(dim_in, inner, 1, bias=False), tnn.BatchNorm3d(inner)
        self.conv_b = tnn.Conv3d(inner, inner, 3, (1, stride, stride), 1, groups=inner, bias=False)
        self.norm_b = tnn.Sequential(
            tnn.BatchNorm3d(inner),
            _SE(inner, _round_width(inner, 0.0625)) if se else tnn.Identity(),
        )
        self.conv_c, self.norm_c = tnn.Conv3d(inner, out, 1, bias=False), tnn.BatchNorm3d(out)

    def forward(self, x):
        x = torch.relu(self.norm_a(self.conv_a(x)))
        x = self.norm_b(self.conv_b(x))
        return self.norm_c(self.conv_c(x * torch.sigmoid(x)))


class _ResBlock(tnn.Module):
    def __init__(self, dim_in, inner, out, stride, se):
        super().__init__()
        shortcut = dim_in != out or stride > 1
        self.branch1_conv = tnn.Conv3d(dim_in, out, 1, (1, stride, stride), bias=False) \
            if shortcut else None  # fmt: skip
        self.branch1_norm = tnn.BatchNorm3d(out) if dim_in != out else None
        self.branch2 = _Bottleneck(dim_in, inner, out, stride, se)

    def forward(self, x):
        shortcut = x if self.branch1_conv is None else self.branch1_conv(x)
        if self.branch1_norm is not None:
            shortcut = self.branch1_norm(shortcut)
        return torch.relu(shortcut + self.branch2(x))


class _Stage(tnn.Module):
    def __init__(self, blocks):
        super().__init__()
        self.res_blocks = tnn.ModuleList(blocks)

    def forward(self, x):
        for block in self.res_blocks:
            x = block(x)
        return x


class _Stem(tnn.Module):
    def __init__(self, out):
        super().__init__()
        self.conv = tnn.Module()  # pytorchvideo's Conv2plus1d: conv_t is the 1x3x3 conv
        self.conv.conv_t = tnn.Conv3d(3, out, (1, 3, 3), (1, 2, 2), (0, 1, 1), bias=False)
        self.conv.conv_xy = tnn.Conv3d(out, out, (5, 1, 1), 1, (2, 0, 0), groups=out, bias=False)
        self.norm = tnn.BatchNorm3d(out)

    def forward(self, x):
        return torch.relu(self.norm(self.conv.conv_xy(self.conv.conv_t(x))))


class _Head(tnn.Module):
    def __init__(self, dim_in, inner, out, classes, window):
        super().__init__()
        self.pool = tnn.Module()
        self.pool.pre_conv = tnn.Conv3d(dim_in, inner, 1, bias=False)
        self.pool.pre_norm = tnn.BatchNorm3d(inner)
        self.pool.pool = tnn.AvgPool3d(window, stride=1)
        self.pool.post_conv = tnn.Conv3d(inner, out, 1, bias=False)
        self.proj = tnn.Linear(out, classes)

    def forward(self, x):
        p = self.pool
        x = torch.relu(p.post_conv(p.pool(torch.relu(p.pre_norm(p.pre_conv(x))))))
        x = self.proj(x.permute(0, 2, 3, 4, 1)).permute(0, 4, 1, 2, 3)
        return x.mean(dim=(2, 3, 4))  # AdaptiveAvgPool3d(1); the eval softmax left out


class TorchX3D(tnn.Module):
    """create_x3d's network (width factor 2, depth factor 2.2) with channel counts
    scaled by ``width`` and ``blocks`` per stage."""

    def __init__(self, classes, width, blocks, clip_length, crop):
        super().__init__()

        def c(n):
            return max(1, round(n * width))

        stem, outs = c(24), [c(24), c(48), c(96), c(192)]
        layers, dim_in = [_Stem(stem)], stem
        for out, count in zip(outs, blocks, strict=True):
            inner = int(2.25 * out)
            layers.append(_Stage([_ResBlock(dim_in if b == 0 else out, inner, out,
                                            2 if b == 0 else 1, b % 2 == 0)
                                  for b in range(count)]))  # fmt: skip
            dim_in = out
        window = (clip_length, math.ceil(crop / 32), math.ceil(crop / 32))
        layers.append(_Head(outs[-1], int(2.25 * outs[-1]), c(2048), classes, window))
        self.blocks = tnn.ModuleList(layers)

    def forward(self, x):
        for block in self.blocks:
            x = block(x)
        return x


def _randomise(net, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, tnn.BatchNorm3d):
                m.weight.uniform_(0.5, 1.5, generator=g)
                m.bias.normal_(0, 0.1, generator=g)
                m.running_mean.normal_(0, 0.2, generator=g)
                m.running_var.uniform_(0.5, 1.5, generator=g)
    return net.eval()


@pytest.mark.parametrize(
    ("arch", "clip", "crop", "blocks"),
    [("x3d_xs", (4, 64, 64), None, (1, 2, 1, 1)),     # the head pools the whole map
     ("x3d_s", (3, 96, 96), 64, (2, 1, 3, 1))],       # a 2x2 window over a 3x3 map
)  # fmt: skip
def test_logits_equal_the_pytorchvideo_layout_twin(arch, clip, crop, blocks):
    net = _randomise(TorchX3D(5, 0.25, blocks, clip[0], crop or clip[1]), seed=0)
    kwargs = {} if crop is None else {"model_kwargs": {"input_crop_size": crop}}
    model, variables = models.from_torch_state_dict(arch, net.state_dict(), clip_size=clip,
                                                    **kwargs)  # fmt: skip
    assert model.blocks == blocks and model.width == 0.25
    x = np.random.default_rng(1).standard_normal((2, *clip, 3)).astype(np.float32)
    with torch.no_grad():
        want = net(torch.from_numpy(x).permute(0, 4, 1, 2, 3)).numpy()
    got = np.asarray(jax.jit(model.apply)(variables, x))
    np.testing.assert_allclose(got, want, atol=1e-4 * max(1.0, np.abs(want).max()))


def test_published_channels_and_parameter_count():
    """pytorchvideo's X3D-XS and X3D-S: 3.79 M parameters, the same network."""
    from selrel_jax.models.x3d import x3d_widths

    assert x3d_widths(1.0) == (24, (24, 48, 96, 192), (54, 108, 216, 432), (8, 8, 16, 32))
    net = TorchX3D(400, 1.0, (3, 5, 11, 7), 13, 160)
    want = sum(p.numel() for p in net.parameters())
    for arch in ("x3d_xs", "x3d_s"):
        model = models.create(arch, 400, clip_size=(13, 160, 160))
        shapes = jax.eval_shape(lambda m=model: m.init(jax.random.key(0),
                                                      jnp.zeros((1, 13, 160, 160, 3))))  # fmt: skip
        got = sum(int(np.prod(s.shape)) for s in jax.tree_util.tree_leaves(shapes["params"]))
        assert got == want and round(got / 1e6, 2) == 3.79, (arch, got)


def test_clips_smaller_than_the_head_window_are_a_shape_error():
    with pytest.raises(ShapeError, match=r"head pools \(4, 5, 5\) windows .* input_crop_size 160"):
        models.create("x3d_xs", 3, width=0.25, clip_size=(4, 64, 64), blocks=(1, 1, 1, 1),
                      input_crop_size=160)  # fmt: skip
    model = models.create("x3d_xs", 3, width=0.25, clip_size=(4, 64, 64))
    with pytest.raises(ShapeError, match=r"head pools \(4, 2, 2\) windows"):
        jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 4, 32, 32, 3))))


@pytest.mark.slow  # a full-size X3D-XS state dict written and converted (7 s)
def test_convert_a_pytorchvideo_hub_file_keeps_the_published_head(tmp_path):
    """pytorchvideo's hub files hold {"model_state": state_dict}; the published head
    pools 5x5 windows (input_crop_size 160) of the 6x6 map a 182 crop leaves."""
    from selrel_jax.models.info import X3D_MEAN
    from selrel_jax.models.torch_import import convert_torch_file

    net = _randomise(TorchX3D(7, 0.25, (1, 1, 1, 1), 4, 160), seed=3)
    torch.save({"model_state": net.state_dict()}, tmp_path / "X3D_XS.pyth")
    model, variables, info = models.load(convert_torch_file(tmp_path / "X3D_XS.pyth", "x3d_xs",
                                                            tmp_path / "ckpt"))  # fmt: skip
    assert info.clip_size == (4, 182, 182) and (info.frame_step, info.mean) == (12, X3D_MEAN)
    assert info.extra["model_kwargs"] == {"blocks": [1, 1, 1, 1], "input_crop_size": 160}
    x = np.random.default_rng(4).standard_normal((1, 4, 182, 182, 3)).astype(np.float32)
    with torch.no_grad():
        want = net(torch.from_numpy(x).permute(0, 4, 1, 2, 3)).numpy()
    got = np.asarray(model.apply(variables, x))
    np.testing.assert_allclose(got, want, atol=1e-4 * max(1.0, np.abs(want).max()))


# X3D's deep stack compiles for ~20 s on two cores: in the slow step.
@pytest.mark.parametrize("arch", [pytest.param("x3d_xs", marks=pytest.mark.slow), "vit_small"])
def test_the_gradient_and_the_archs_default_method_explain_the_new_archs(arch):
    """Gradient methods need nothing of a model's layers; LRP needs rules for the
    products of activations (attention, norms, gates): the arch's default method
    (lrp.attn) has them, the CNN default refuses naming it."""
    import selrel_jax as sr
    from selrel_jax.attribution import UnsupportedLayerError, registry

    kwargs = {"width": 0.25, "blocks": (1, 1, 1, 1)} if arch == "x3d_xs" else {}
    model = models.create(arch, 5, clip_size=(2, 16, 16), **kwargs)
    x = np.random.default_rng(0).standard_normal((1, 2, 16, 16, 3)).astype(np.float32)
    variables = model.init(jax.random.key(0), x)
    assert registry.default_method(arch) == "lrp.attn"
    for method in ("gradient", registry.default_method(arch)):
        relevance = np.asarray(sr.explain(model, variables, x, np.array([1]), method))
        assert relevance.shape == x.shape and np.isfinite(relevance).all(), method
        assert np.abs(relevance).sum() > 0, method
    with pytest.raises(UnsupportedLayerError, match=r"lrp\.attn"):
        sr.explain(model, variables, x, np.array([1]), registry.CNN_METHOD)


def test_drop_head_replaces_the_projection_and_a_class_mismatch_names_it():
    from selrel_jax.errors import CheckpointError

    net = TorchX3D(7, 0.25, (1, 1, 1, 1), 4, 64)
    state = net.state_dict()
    with pytest.raises(CheckpointError, match=r"'blocks\.5\.proj' has 7 classes but num_classes=3"):
        models.from_torch_state_dict("x3d_xs", state, 3, clip_size=(4, 64, 64))
    _, variables = models.from_torch_state_dict("x3d_xs", state, 3, drop_head=True,
                                                clip_size=(4, 64, 64))  # fmt: skip
    assert variables["params"]["head_proj"]["kernel"].shape == (512, 3)
