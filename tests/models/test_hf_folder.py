"""A HuggingFace VideoMAE folder converts without --arch: its config.json gives the
arch, clip, LayerNorm epsilon and class names, its preprocessor_config.json the
normalisation and resize; every field this library cannot follow is refused by name.
Folders written by transformers' own save_pretrained (random weights, no download)."""

from __future__ import annotations

import json
import shutil

import jax
import numpy as np
import pytest
from typer.testing import CliRunner

from selrel_jax import models
from selrel_jax.cli import app
from selrel_jax.errors import CheckpointError
from selrel_jax.models.hf_folder import read_videomae_folder
from selrel_jax.models.info import IMAGENET_MEAN, IMAGENET_STD

torch = pytest.importorskip("torch")
videomae = pytest.importorskip("transformers.models.videomae.modeling_videomae")

NAMES = ["walk", "run", "jump"]
# vit_small's sizes (at width 1): hidden 64, MLP 256, 2 blocks of 2 heads, 2x8x8 tubelets.
SMALL = dict(hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=2,
             patch_size=8, tubelet_size=2)  # fmt: skip
PROCESSOR = {
    "image_processor_type": "VideoMAEImageProcessor", "do_resize": True,
    "size": {"shortest_edge": 18}, "do_center_crop": True,
    "crop_size": {"height": 16, "width": 16}, "do_rescale": True,
    "rescale_factor": 1 / 255, "do_normalize": True, "image_mean": [0.4, 0.5, 0.6],
    "image_std": [0.2, 0.25, 0.3],
}  # fmt: skip


def _folder(path, processor=PROCESSOR, **config):
    """A classifier saved by transformers into ``path`` (config.json, model.safetensors),
    with the processor file beside."""
    options = {**SMALL, "image_size": 16, "num_frames": 4, "layer_norm_eps": 1e-6,
               "id2label": dict(enumerate(NAMES)), **config}  # fmt: skip
    options["label2id"] = {v: k for k, v in options["id2label"].items()}
    torch.manual_seed(0)
    net = videomae.VideoMAEForVideoClassification(videomae.VideoMAEConfig(**options)).eval()
    net.save_pretrained(path)
    if processor is not None:
        (path / "preprocessor_config.json").write_text(json.dumps(processor))
    return net


def _convert(*args):
    result = CliRunner().invoke(app, ["convert", *map(str, args)])
    return result.exit_code, result.stdout, result.stderr


def test_a_videomae_folder_converts_without_arch(tmp_path):
    net = _folder(tmp_path / "hf")
    assert sorted(p.name for p in (tmp_path / "hf").iterdir()) == [
        "config.json", "model.safetensors", "preprocessor_config.json"]  # fmt: skip
    code, _, stderr = _convert(tmp_path / "hf", "--out", tmp_path / "ck")
    assert code == 0, stderr
    model, variables, info = models.load(tmp_path / "ck")
    assert info.arch == "vit_small" and info.class_names == tuple(NAMES)
    assert info.clip_size == (4, 16, 16) and info.resize_size == 18
    np.testing.assert_allclose(info.mean, (0.4, 0.5, 0.6))
    np.testing.assert_allclose(info.std, (0.2, 0.25, 0.3))
    assert info.value_range == (0.0, 1.0) and model.layer_norm_eps == 1e-6
    assert info.extra["config_files"] == ["config.json", "preprocessor_config.json"]
    clips = np.random.default_rng(0).standard_normal((2, 4, 16, 16, 3)).astype(np.float32)
    with torch.no_grad():  # transformers takes (N, T, C, H, W)
        want = net(pixel_values=torch.from_numpy(clips).permute(0, 1, 4, 2, 3)).logits.numpy()
    got = np.asarray(jax.jit(model.apply)(variables, clips))
    np.testing.assert_allclose(got, want, atol=1e-4 * max(1.0, np.abs(want).max()))


def test_the_weights_file_in_a_folder_reads_the_folder_and_names_override(tmp_path):
    _folder(tmp_path / "hf", processor=None)
    names = tmp_path / "names.txt"
    names.write_text("a\nb\nc\n")
    code, _, stderr = _convert(tmp_path / "hf" / "model.safetensors", "--arch", "vit_small",
                               "--out", tmp_path / "ck", "--class-names", names)  # fmt: skip
    assert code == 0, stderr
    info = models.load_info(tmp_path / "ck")
    assert info.class_names == ("a", "b", "c") and info.clip_size == (4, 16, 16)
    # no processor file: transformers' processor defaults (ImageNet's), not vit_small's own
    assert (info.mean, info.std) == (IMAGENET_MEAN, IMAGENET_STD)


def test_a_videomae_of_another_width_needs_arch_and_takes_it(tmp_path):
    _folder(tmp_path / "hf", hidden_size=32, intermediate_size=128)
    code, _, stderr = _convert(tmp_path / "hf", "--out", tmp_path / "a")
    assert code == 2 and "describes a VideoMAE of no zoo size (hidden_size 32" in stderr
    code, _, stderr = _convert(tmp_path / "hf", "--arch", "vit_small", "--out", tmp_path / "b")
    assert code == 0, stderr
    assert models.load_info(tmp_path / "b").width == 0.5


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """One folder saved by transformers; each case below edits a copy's JSON files."""
    path = tmp_path_factory.mktemp("hf") / "hf"
    _folder(path)
    return path


@pytest.mark.parametrize(
    ("config", "processor", "args", "needle"),
    [
        ({}, {}, ["--arch", "videomae_vit_s"],
         "num_hidden_layers is 2 but videomae_vit_s has 12 (it describes vit_small)"),
        ({}, {}, ["--arch", "r3d_18"], "describes a VideoMAE, not r3d_18"),
        ({"hidden_act": "gelu_new"}, {}, [], "hidden_act 'gelu_new'"),
        ({"num_frames": 0}, {}, [], "config.json: num_frames must be a positive int; got 0"),
        ({}, {"crop_size": 20}, [], "crop_size 20 is not the model's image_size 16"),
        ({}, {"size": {"height": 18, "width": 18}}, [],
         "size must be one side in pixels (an int or shortest_edge)"),
        ({}, {"image_std": [0.2]}, [], "image_std must be 3 numbers"),
        ({}, {"rescale_factor": 1.0}, [], "only pixels rescaled by 1/255"),
        ({"id2label": {str(i): n for i, n in enumerate("abcde")}}, {}, [],
         "id2label has 5 names; the weights' head has 3 classes"),
        ({"id2label": {"0": "a", "2": "b", "3": "c"}}, {}, [], "id2label's indices are not 0 to 2"),
        ({}, {}, ["--class-names", "{names}"], "has 2 names; the model has 3 classes"),
    ],
)  # fmt: skip
def test_what_the_folder_says_is_checked(saved, tmp_path, config, processor, args, needle):
    folder = tmp_path / "hf"
    shutil.copytree(saved, folder)
    for name, edits in (("config.json", config), ("preprocessor_config.json", processor)):
        values = json.loads((folder / name).read_text())
        (folder / name).write_text(json.dumps({**values, **edits}))
    names = tmp_path / "names.txt"
    names.write_text("a\nb\n")
    args = [a.format(names=names) for a in args]
    code, stdout, stderr = _convert(folder, *args, "--out", tmp_path / "ck")
    assert code == 2 and stdout == "" and stderr.count("\n") == 1, stderr
    assert needle in stderr and "Traceback" not in stderr
    assert not (tmp_path / "ck").exists()


def test_made_up_labels_mean_no_names_and_a_sharded_folder_is_named(tmp_path):
    (tmp_path / "hf").mkdir()
    config = {"model_type": "videomae", **SMALL, "image_size": 16, "num_frames": 4,
              "id2label": {"0": "LABEL_0", "1": "LABEL_1"}}  # fmt: skip
    (tmp_path / "hf" / "config.json").write_text(json.dumps(config))
    assert read_videomae_folder(tmp_path / "hf").class_names == ()
    (tmp_path / "hf" / "model.safetensors.index.json").write_text("{}")
    with pytest.raises(CheckpointError, match=r"split into shards \(model\.safetensors\.index"):
        models.torch_import.convert_torch_file(tmp_path / "hf", None, tmp_path / "ck")
    (tmp_path / "hf" / "config.json").write_text(json.dumps({**config, "model_type": "vit"}))
    assert read_videomae_folder(tmp_path / "hf") is None  # another model: its weights decide
