"""A HuggingFace VideoMAE folder (``save_pretrained``'s, or a hub download): what its
``config.json`` and ``preprocessor_config.json`` say about the model beside its weights.

The weights file alone fixes the layers; the folder's JSON files fix the rest of
what explaining the model needs: the arch (``hidden_size``, depth, heads, tubelet
and patch), the clip (``num_frames``, ``image_size``), the LayerNorms' epsilon, the
class names (``id2label``) and the preprocessing (the processor's mean, std, resize
and crop). ``selrel convert`` reads them when ``WEIGHTS`` is such a folder or a
weights file in one; every value is checked, and one that this library's ViT cannot
follow (another activation, a crop that is not the model's input) is a
CheckpointError naming the field.

Examples:
    >>> import json, pathlib
    >>> from selrel_jax.models.hf_folder import read_videomae_folder
    >>> folder = pathlib.Path("videomae")
    >>> folder.mkdir()
    >>> config = {"model_type": "videomae", "hidden_size": 64, "num_hidden_layers": 2,
    ...           "num_attention_heads": 2, "intermediate_size": 256, "patch_size": 8,
    ...           "tubelet_size": 2, "num_frames": 4, "image_size": 16,
    ...           "id2label": {"0": "left", "1": "right"}}
    >>> _ = (folder / "config.json").write_text(json.dumps(config))
    >>> found = read_videomae_folder(folder / "model.safetensors")
    >>> found.arch, found.class_names, found.info_overrides["crop_size"]
    ('vit_small', ('left', 'right'), (16, 16))
"""

from __future__ import annotations

import dataclasses
import json
import math
import pathlib
import re
from collections.abc import Mapping
from typing import Any

from selrel_jax._checks import positive_int
from selrel_jax.errors import CheckpointError
from selrel_jax.models.info import IMAGENET_MEAN, IMAGENET_STD
from selrel_jax.models.vit import HF_LAYER_NORM_EPS, VIT_ARCHS, VIT_CONFIGS

__all__ = ["CONFIG_FILE", "PROCESSOR_FILE", "WEIGHT_FILES", "VideoMAEFolder",
           "read_videomae_folder", "weights_in"]  # fmt: skip

#: The model's configuration in a transformers folder (arch sizes, clip, labels).
CONFIG_FILE = "config.json"
#: The image processor's settings in a transformers folder (mean, std, resize, crop).
PROCESSOR_FILE = "preprocessor_config.json"
#: The weights file of a folder, in the order looked for (transformers saves
#: safetensors; older hub folders hold the pickle).
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
# transformers names labels it was not given LABEL_0, LABEL_1, ...: no names at all.
_PLACEHOLDER_LABEL = re.compile(r"LABEL_[0-9]+")
# config.json's fields that fix the layers' count and shapes.
_LAYER_FIELDS = ("hidden_size", "intermediate_size", "patch_size", "num_hidden_layers",
                 "num_attention_heads", "tubelet_size")  # fmt: skip


@dataclasses.dataclass(frozen=True)
class VideoMAEFolder:
    """What a VideoMAE folder says: ``arch`` (None where no zoo arch has its sizes at
    width 1), ``clip_size``, model options (``layer_norm_eps`` where not transformers'
    default), the class names (empty without ``id2label``), ModelInfo overrides (clip
    length, crop, and from the processor file mean, std, resize: without it,
    transformers' processor defaults, ImageNet's mean and std), the files read, and
    ``layers``: the config's depth, heads, tubelet and patch."""

    path: pathlib.Path
    arch: str | None
    clip_size: tuple[int, int, int]
    model_kwargs: Mapping[str, Any]
    class_names: tuple[str, ...]
    info_overrides: Mapping[str, Any]
    files: tuple[str, ...]
    layers: Mapping[str, int]

    def check(self, arch: str) -> None:
        """A CheckpointError naming the first of the config's layer fields that ``arch``
        does not have (the widths are the weights' to check)."""
        if arch not in VIT_ARCHS:
            raise CheckpointError(
                f"{self.path / CONFIG_FILE} describes a VideoMAE, not {arch}; use one of "
                f"{', '.join(VIT_ARCHS)}"
            )
        vit = VIT_CONFIGS[arch]
        wanted = {"num_hidden_layers": vit.depth, "num_attention_heads": vit.heads,
                  "tubelet_size": vit.tubelet[0], "patch_size": vit.tubelet[1]}  # fmt: skip
        for key, value in wanted.items():
            if self.layers[key] != value:
                guess = f" (it describes {self.arch})" if self.arch else ""
                raise CheckpointError(
                    f"{self.path / CONFIG_FILE}: {key} is {self.layers[key]} but {arch} has "
                    f"{value}{guess}"
                )


def weights_in(path: pathlib.Path) -> pathlib.Path:
    """``path``, or for a folder the weights file in it (:data:`WEIGHT_FILES`); a folder
    without one, or with weights split into shards, is a CheckpointError naming it."""
    if not path.is_dir():
        return path
    for name in WEIGHT_FILES:
        if (path / name).is_file():
            return path / name
    shards = sorted(p.name for p in path.glob("*.index.json"))
    if shards:
        raise CheckpointError(
            f"{path} holds weights split into shards ({shards[0]}); merge them into one "
            "model.safetensors (transformers: save_pretrained(..., max_shard_size='10GB'))"
        )
    raise CheckpointError(f"{path} is a folder without {' or '.join(WEIGHT_FILES)}")


def _read_json(path: pathlib.Path) -> dict[str, Any]:
    try:
        loaded = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"cannot read {path}: {e}") from None
    if not isinstance(loaded, dict):
        raise CheckpointError(f"{path} is not a JSON object")
    return loaded


def _positive(config: Mapping[str, Any], key: str, where: pathlib.Path) -> int:
    return positive_int(f"{where}: {key}", config.get(key), CheckpointError)


def _arch_of(sizes: Mapping[str, int]) -> str | None:
    """The zoo arch whose sizes (at width 1) are the config's, else None."""
    for arch in VIT_ARCHS:
        vit = VIT_CONFIGS[arch]
        zoo = (vit.dim, vit.mlp, vit.tubelet[1], vit.depth, vit.heads, vit.tubelet[0])
        if tuple(sizes[k] for k in _LAYER_FIELDS) == zoo:
            return arch
    return None


def _class_names(config: Mapping[str, Any], where: pathlib.Path) -> tuple[str, ...]:
    """``id2label``'s names in index order; none where transformers made them up."""
    labels = config.get("id2label")
    if not labels:
        return ()
    try:
        indexed = {int(k): str(v) for k, v in dict(labels).items()}
    except (TypeError, ValueError):
        raise CheckpointError(f"{where}: id2label must map class indices to names") from None
    if sorted(indexed) != list(range(len(indexed))):
        raise CheckpointError(f"{where}: id2label's indices are not 0 to {len(indexed) - 1}")
    names = tuple(indexed[i] for i in range(len(indexed)))
    return () if all(_PLACEHOLDER_LABEL.fullmatch(n) for n in names) else names


def _side(value: Any, key: str, where: pathlib.Path) -> int:
    """A processor size in pixels: an int or ``{"shortest_edge": n}`` (``size``: the
    shorter side frames are resized to), ``{"height": n, "width": n}`` (``crop_size``)."""
    if isinstance(value, Mapping):
        named = ("shortest_edge",) if key == "size" else ("height", "width")
        sides = {value.get(name) for name in named}
        value = sides.pop() if len(sides) == 1 else None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        form = "shortest_edge" if key == "size" else "equal height and width"
        raise CheckpointError(
            f"{where}: {key} must be one side in pixels (an int or {form}); got {value!r}"
        )
    return value


def _triple(processor: Mapping[str, Any], key: str, where: pathlib.Path) -> tuple[float, ...]:
    value = processor.get(key)
    try:
        out = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        out = ()
    if len(out) != 3 or not all(math.isfinite(v) for v in out):
        raise CheckpointError(f"{where}: {key} must be 3 numbers (RGB); got {value!r}")
    return out


def _preprocessing(path: pathlib.Path, image_size: int) -> dict[str, Any]:
    """ModelInfo overrides from the processor file: mean, std, resize; its crop must be
    the model's input (the position table fixes the token grid)."""
    processor = _read_json(path)
    if processor.get("do_rescale", True) is not True or not math.isclose(
        float(processor.get("rescale_factor", 1 / 255)), 1 / 255
    ):
        raise CheckpointError(f"{path}: only pixels rescaled by 1/255 (to [0, 1]) are supported")
    out: dict[str, Any] = {"value_range": (0.0, 1.0)}
    if processor.get("do_normalize", True):
        out |= {"mean": _triple(processor, "image_mean", path),
                "std": _triple(processor, "image_std", path)}  # fmt: skip
    else:
        out |= {"mean": (0.0, 0.0, 0.0), "std": (1.0, 1.0, 1.0)}
    if "crop_size" in processor and processor.get("do_center_crop", True):
        crop = _side(processor["crop_size"], "crop_size", path)
        if crop != image_size:
            raise CheckpointError(
                f"{path}: crop_size {crop} is not the model's image_size {image_size}"
            )
    if "size" in processor and processor.get("do_resize", True):
        out["resize_size"] = _side(processor["size"], "size", path)
    return out


def read_videomae_folder(weights: pathlib.Path) -> VideoMAEFolder | None:
    """What the folder of ``weights`` (a weights file, or the folder itself) says, or
    None where it holds no ``config.json`` of ``model_type`` ``"videomae"``."""
    folder = weights if weights.is_dir() else weights.parent
    config_path = folder / CONFIG_FILE
    if not config_path.is_file():
        return None
    config = _read_json(config_path)
    if config.get("model_type") != "videomae":
        return None
    if config.get("hidden_act", "gelu") != "gelu":
        raise CheckpointError(
            f"{config_path}: hidden_act {config['hidden_act']!r}; the ViT here uses gelu (exact)"
        )
    frames = _positive(config, "num_frames", config_path)
    side = _positive(config, "image_size", config_path)
    sizes = {key: _positive(config, key, config_path) for key in _LAYER_FIELDS}
    eps = float(config.get("layer_norm_eps", HF_LAYER_NORM_EPS))
    # VideoMAEImageProcessor's defaults, what a folder without its file was made with
    overrides: dict[str, Any] = {"clip_length": frames, "crop_size": (side, side),
                                 "value_range": (0.0, 1.0), "mean": IMAGENET_MEAN,
                                 "std": IMAGENET_STD}  # fmt: skip
    files = [CONFIG_FILE]
    if (folder / PROCESSOR_FILE).is_file():
        overrides |= _preprocessing(folder / PROCESSOR_FILE, side)
        files.append(PROCESSOR_FILE)
    return VideoMAEFolder(
        path=folder, arch=_arch_of(sizes), clip_size=(frames, side, side),
        model_kwargs={} if eps == HF_LAYER_NORM_EPS else {"layer_norm_eps": eps},
        class_names=_class_names(config, config_path), info_overrides=overrides,
        files=tuple(files), layers=sizes,
    )  # fmt: skip
