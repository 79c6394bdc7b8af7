"""VideoMAE's ViT: logits equal to transformers' VideoMAEForVideoClassification
(random weights, small configs, no download) after ``from_torch_state_dict``; the
position table; the clip checks."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from selrel_jax import models
from selrel_jax.errors import ShapeError
from selrel_jax.models.vit import VIT_CONFIGS, VideoViT, sinusoid_table

torch = pytest.importorskip("torch")
videomae = pytest.importorskip("transformers.models.videomae.modeling_videomae")


def _hf_model(arch: str, width: float, clip, num_classes: int = 5, **options):
    """transformers' classifier of ``arch``'s layout at ``width``, random weights
    (biases and LayerNorms too, so every key matters)."""
    config = VIT_CONFIGS[arch]
    head_dim = max(1, round(config.dim // config.heads * width))
    hf_config = videomae.VideoMAEConfig(
        image_size=clip[1], patch_size=config.tubelet[1], num_frames=clip[0],
        tubelet_size=config.tubelet[0], hidden_size=config.heads * head_dim,
        num_hidden_layers=config.depth, num_attention_heads=config.heads,
        intermediate_size=max(1, round(config.mlp * width)), num_labels=num_classes, **options,
    )  # fmt: skip
    torch.manual_seed(0)
    net = videomae.VideoMAEForVideoClassification(hf_config).eval()
    with torch.no_grad():
        for name, p in net.named_parameters():
            if name.endswith("bias") or "norm" in name:
                p.add_(torch.randn(p.shape) * 0.1)
    return net


def _parity(net, arch, clip, **kw):
    model, variables = models.from_torch_state_dict(arch, net.state_dict(), clip_size=clip, **kw)
    clips = np.random.default_rng(1).standard_normal((2, *clip, 3)).astype(np.float32)
    with torch.no_grad():  # transformers takes (N, T, C, H, W)
        want = net(pixel_values=torch.from_numpy(clips).permute(0, 1, 4, 2, 3)).logits.numpy()
    got = np.asarray(jax.jit(model.apply)(variables, clips))
    np.testing.assert_allclose(got, want, atol=1e-4 * max(1.0, np.abs(want).max()))
    return model, variables


@pytest.mark.parametrize("use_mean_pooling", [True, False])
def test_vit_small_logits_equal_transformers(use_mean_pooling):
    clip = (4, 16, 16)
    net = _hf_model("vit_small", 1.0, clip, use_mean_pooling=use_mean_pooling)
    model, _ = _parity(net, "vit_small", clip)
    assert model.use_mean_pooling is use_mean_pooling and model.qv_bias


def test_videomae_vit_s_thin_logits_equal_transformers_without_qv_bias():
    clip = (4, 32, 32)
    net = _hf_model("videomae_vit_s", 1 / 8, clip, qv_bias=False)
    model, _ = _parity(net, "videomae_vit_s", clip)
    assert model.width == pytest.approx(1 / 8) and not model.qv_bias


def test_legacy_q_bias_and_v_bias_keys_are_read():
    """Checkpoints saved before transformers 5 name the biases q_bias and v_bias."""
    clip = (4, 16, 16)
    net = _hf_model("vit_small", 1.0, clip)
    legacy = {k.replace("query.bias", "q_bias").replace("value.bias", "v_bias"): v
              for k, v in net.state_dict().items()}  # fmt: skip
    assert any(k.endswith("q_bias") for k in legacy)
    _, variables = models.from_torch_state_dict("vit_small", legacy, clip_size=clip)
    np.testing.assert_array_equal(
        variables["params"]["layer_0"]["query"]["bias"],
        net.videomae.encoder.layer[0].attention.attention.query.bias.detach().numpy(),
    )


@pytest.mark.slow
def test_videomae_vit_b_full_size_logits_equal_transformers():
    clip = (16, 224, 224)
    net = _hf_model("videomae_vit_b", 1.0, clip, num_classes=400)
    _parity(net, "videomae_vit_b", clip)


def test_sinusoid_table_is_transformers():
    want = videomae.get_sinusoid_encoding_table(10, 6)[0].numpy()
    np.testing.assert_allclose(sinusoid_table(10, 6), want, atol=1e-7)


def test_clips_of_another_size_or_off_the_tubelet_grid_are_shape_errors():
    model = models.create("vit_small", 3, clip_size=(4, 16, 16))
    variables = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 4, 16, 16, 3))))
    with pytest.raises(ShapeError, match=r"built for clips \(4, 16, 16\)"):
        jax.eval_shape(model.apply, variables, jnp.zeros((1, 4, 24, 24, 3)))
    odd = models.create("vit_small", 3, clip_size=(5, 16, 16))
    with pytest.raises(ShapeError, match="2x8x8 tubelets"):
        jax.eval_shape(lambda: odd.init(jax.random.key(0), jnp.zeros((1, 5, 16, 16, 3))))


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_convert_a_transformers_checkpoint_to_a_loadable_checkpoint(tmp_path, suffix):
    """What a user brings: a saved VideoMAEForVideoClassification (torch.save of its
    state_dict, or transformers' model.safetensors), at the arch's published clip."""
    from safetensors.torch import save_file

    from selrel_jax.models.info import IMAGENET_MEAN
    from selrel_jax.models.torch_import import convert_torch_file

    clip = (16, 48, 48)
    net = _hf_model("vit_small", 1.0, clip, use_mean_pooling=False)
    weights = tmp_path / f"model{suffix}"
    state = {k: v.contiguous() for k, v in net.state_dict().items()}
    save_file(state, weights) if suffix == ".safetensors" else torch.save(state, weights)
    out = convert_torch_file(weights, "vit_small", tmp_path / "ckpt")
    model, variables, info = models.load(out)
    assert info.clip_size == clip and info.extra["model_kwargs"] == {
        "qv_bias": True, "use_mean_pooling": False}  # fmt: skip
    assert models.ModelInfo.for_arch("videomae_vit_b", 400).mean == IMAGENET_MEAN
    clips = np.random.default_rng(2).standard_normal((1, *clip, 3)).astype(np.float32)
    with torch.no_grad():
        want = net(pixel_values=torch.from_numpy(clips).permute(0, 1, 4, 2, 3)).logits.numpy()
    np.testing.assert_allclose(np.asarray(model.apply(variables, clips)), want, atol=1e-4)


class _TableAsParameter(VideoViT):
    """vit_small with its position table a parameter (the oracle below)."""

    def _embed(self, x, dim):
        patches = nn.Conv(dim, (2, 8, 8), (2, 8, 8), padding="VALID", name="patch_embed")(x)
        tokens = patches.reshape(x.shape[0], -1, dim)
        return tokens + self.param("table", nn.initializers.zeros, tokens.shape[1:])


def test_lrp_explains_vit_small_its_fixed_position_table_a_sum():
    """The sinusoid table is a constant, not a parameter: in the params form it is added
    like a learnt position embedding (a Sum) and explained by the transformer composites
    (was refused as an unmergeable closed-over bias). Oracle: the same network with the
    table a parameter gives the same relevance."""
    from selrel_jax import explain

    model = models.create("vit_small", 6, clip_size=(4, 16, 16))
    clips = jax.random.normal(jax.random.key(1), (1, 4, 16, 16, 3))
    variables = model.init(jax.random.key(0), clips, train=False)
    target = jnp.array([2])
    relevance = np.asarray(explain(model, variables, clips, method="lrp.cp", target=target))
    oracle_model = _TableAsParameter(arch="vit_small", num_classes=6, clip_size=(4, 16, 16))
    table = jnp.asarray(sinusoid_table(8, VIT_CONFIGS["vit_small"].dim))
    params = {**variables["params"], "table": table}
    oracle = np.asarray(explain(oracle_model, {"params": params}, clips, method="lrp.cp",
                                target=target))  # fmt: skip
    assert np.abs(oracle).max() > 0
    np.testing.assert_allclose(relevance, oracle, rtol=1e-4, atol=1e-5 * np.abs(oracle).max())
