"""Import PyTorch state_dicts: torchvision's video ResNets and the C3D port.

``from_torch_state_dict`` maps each torch key to its Flax variable with a
per-architecture table, converts layouts (conv kernels (O, I, kT, kH, kW) ->
(kT, kH, kW, I, O), dense (O, I) -> (I, O), BatchNorm weight/bias/running
statistics -> scale/bias/mean/var), permutes C3D's fc6 rows from the NCDHW
flatten order to NTHWC, and reports every missing, unexpected or misshaped
key at once. torch itself is only needed when values are torch tensors.

Examples:
    A c3d_small saved by PyTorch (the same goes for torchvision's ``r3d_18`` and
    the other archs, under their own key names), with the same logits here:

    >>> import jax.numpy as jnp
    >>> import numpy as np
    >>> import torch
    >>> from selrel_jax.models.torch_import import convert_torch_file, from_torch_state_dict
    >>> convs = zip(("conv1", "conv2", "conv3", "conv4"), (3, 4, 8, 16), (4, 8, 16, 16))
    >>> layers = {name: torch.nn.Conv3d(i, o, 3, padding=1) for name, i, o in convs}
    >>> torch_model = torch.nn.ModuleDict({**layers, "fc": torch.nn.Linear(16, 4)})
    >>> torch.save(torch_model.state_dict(), "c3d_small.pth")
    >>> state = torch.load("c3d_small.pth", weights_only=True)
    >>> model, variables = from_torch_state_dict("c3d_small", state, clip_size=(8, 32, 32))
    >>> model.apply(variables, jnp.zeros((1, 8, 32, 32, 3)), train=False).shape
    (1, 4)

    A .pth file straight to a checkpoint directory (what ``selrel convert`` does):

    >>> convert_torch_file("c3d_small.pth", "c3d_small", "models/c3d_small")
    PosixPath('.../models/c3d_small')
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import warnings
from collections.abc import Iterator, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from selrel_jax._checks import one_of
from selrel_jax.errors import CheckpointError, OptionError
from selrel_jax.models.c3d import c3d_pool5_size, scaled
from selrel_jax.models.checkpoint import checkpoint_target, save
from selrel_jax.models.classes import kinetics400_class_names, sports1m_class_names
from selrel_jax.models.hf_folder import (
    CONFIG_FILE,
    VideoMAEFolder,
    read_videomae_folder,
    weights_in,
)
from selrel_jax.models.info import ModelInfo, numeric_class_names, published_clip_size
from selrel_jax.models.registry import ARCHS, HEADS, create
from selrel_jax.models.resnet3d import BLOCKS_PER_STAGE, RESNET_ARCHS, fc_init
from selrel_jax.models.vit import VIT_ARCHS, VIT_CONFIGS
from selrel_jax.models.x3d import STEM_CHANNELS, X3D_ARCHS, X3D_BLOCKS

__all__ = [
    "convert_torch_file",
    "from_torch_state_dict",
    "legacy_names",
    "read_torch_state_dict",
    "state_dict_options",
    "strip_prefix",
    "torch_layout",
]

# transformers' VideoMAEForVideoClassification keeps its backbone under this name.
_VIDEOMAE = "videomae"
_BN_LEAVES = {
    "weight": ("params", "scale"),
    "bias": ("params", "bias"),
    "running_mean": ("batch_stats", "mean"),
    "running_var": ("batch_stats", "var"),
}
# Key whose output channels fix the width: (torch key, channels at width 1).
_WIDTH_KEYS = {
    "c3d": ("conv1.weight", 64),
    "c3d_small": ("conv1.weight", 16),
    "r3d_18": ("stem.0.weight", 64),
    "mc3_18": ("stem.0.weight", 64),
    "r2plus1d_18": ("stem.3.weight", 64),
    **{
        a: (f"{_VIDEOMAE}.embeddings.patch_embeddings.projection.weight", VIT_CONFIGS[a].dim)
        for a in VIT_ARCHS
    },
    **{a: ("blocks.0.conv.conv_t.weight", STEM_CHANNELS) for a in X3D_ARCHS},
}


@dataclasses.dataclass(frozen=True)
class Entry:
    """One torch module (key prefix) and the Flax module path it fills."""

    torch: str
    kind: str  # "conv", "conv_bias", "bn", "dense", "dense_weight", "ln", "fc6"
    flax: tuple[str, ...]


def _resnet_layout(arch: str) -> Iterator[Entry]:
    if arch == "r2plus1d_18":
        yield Entry("stem.0", "conv", ("stem_conv_spatial",))
        yield Entry("stem.1", "bn", ("stem_bn_spatial",))
        yield Entry("stem.3", "conv", ("stem_conv_temporal",))
        yield Entry("stem.4", "bn", ("stem_bn_temporal",))
    else:
        yield Entry("stem.0", "conv", ("stem_conv",))
        yield Entry("stem.1", "bn", ("stem_bn",))
    for stage, blocks in enumerate(BLOCKS_PER_STAGE, start=1):
        for b in range(blocks):
            t, f = f"layer{stage}.{b}", f"layer{stage}_{b}"
            for i in (1, 2):
                if arch == "r2plus1d_18":
                    yield Entry(f"{t}.conv{i}.0.0", "conv", (f, f"conv{i}", "conv_spatial"))
                    yield Entry(f"{t}.conv{i}.0.1", "bn", (f, f"conv{i}", "bn_mid"))
                    yield Entry(f"{t}.conv{i}.0.3", "conv", (f, f"conv{i}", "conv_temporal"))
                else:
                    yield Entry(f"{t}.conv{i}.0", "conv", (f, f"conv{i}"))
                yield Entry(f"{t}.conv{i}.1", "bn", (f, f"bn{i}"))
            if b == 0 and stage > 1:
                yield Entry(f"{t}.downsample.0", "conv", (f, "downsample_conv"))
                yield Entry(f"{t}.downsample.1", "bn", (f, "downsample_bn"))
    yield Entry("fc", "dense", ("fc",))


def _vit_layout(arch: str, use_mean_pooling: bool, qv_bias: bool) -> Iterator[Entry]:
    """transformers' VideoMAEForVideoClassification names."""
    embed = f"{_VIDEOMAE}.embeddings.patch_embeddings.projection"
    yield Entry(embed, "conv_bias", ("patch_embed",))
    qv = "dense" if qv_bias else "dense_weight"
    for index in range(VIT_CONFIGS[arch].depth):
        t, f = f"{_VIDEOMAE}.encoder.layer.{index}", f"layer_{index}"
        yield Entry(f"{t}.layernorm_before", "ln", (f, "layernorm_before"))
        yield Entry(f"{t}.attention.attention.query", qv, (f, "query"))
        yield Entry(f"{t}.attention.attention.key", "dense_weight", (f, "key"))
        yield Entry(f"{t}.attention.attention.value", qv, (f, "value"))
        yield Entry(f"{t}.attention.output.dense", "dense", (f, "attention_output"))
        yield Entry(f"{t}.layernorm_after", "ln", (f, "layernorm_after"))
        yield Entry(f"{t}.intermediate.dense", "dense", (f, "intermediate"))
        yield Entry(f"{t}.output.dense", "dense", (f, "output"))
    if use_mean_pooling:
        yield Entry("fc_norm", "ln", ("fc_norm",))
    else:
        yield Entry(f"{_VIDEOMAE}.layernorm", "ln", ("layernorm",))
    yield Entry("classifier", "dense", ("classifier",))


def _x3d_layout(blocks: tuple[int, ...]) -> Iterator[Entry]:
    """pytorchvideo's create_x3d names (its stem calls the 1x3x3 conv ``conv_t``)."""
    yield Entry("blocks.0.conv.conv_t", "conv", ("stem_conv_spatial",))
    yield Entry("blocks.0.conv.conv_xy", "conv", ("stem_conv_temporal",))
    yield Entry("blocks.0.norm", "bn", ("stem_bn",))
    for stage, count in enumerate(blocks, start=1):
        for b in range(count):
            t, f = f"blocks.{stage}.res_blocks.{b}", f"stage{stage}_{b}"
            if b == 0:  # strided: a conv on the shortcut, normalised where channels change
                yield Entry(f"{t}.branch1_conv", "conv", (f, "shortcut_conv"))
                if stage > 1:
                    yield Entry(f"{t}.branch1_norm", "bn", (f, "shortcut_bn"))
            for part in ("a", "b", "c"):
                yield Entry(f"{t}.branch2.conv_{part}", "conv", (f, f"conv_{part}"))
                norm = f"{t}.branch2.norm_{part}" + (".0" if part == "b" else "")
                yield Entry(norm, "bn", (f, f"bn_{part}"))
            if b % 2 == 0:
                se = f"{t}.branch2.norm_b.1.block"
                yield Entry(f"{se}.0", "conv_bias", (f, "se", "se_reduce"))
                yield Entry(f"{se}.2", "conv_bias", (f, "se", "se_expand"))
    yield Entry("blocks.5.pool.pre_conv", "conv", ("head_pre_conv",))
    yield Entry("blocks.5.pool.pre_norm", "bn", ("head_pre_bn",))
    yield Entry("blocks.5.pool.post_conv", "conv", ("head_post_conv",))
    yield Entry("blocks.5.proj", "dense", ("head_proj",))


def _x3d_blocks(state: Mapping[str, Any]) -> tuple[int, ...]:
    """Blocks per stage that ``blocks.<stage>.res_blocks.<i>`` keys show (the
    published count where a stage shows none: reported as missing keys)."""
    counts = list(X3D_BLOCKS)
    for stage in range(1, 5):
        prefix = f"blocks.{stage}.res_blocks."
        found = {k[len(prefix) :].split(".", 1)[0] for k in state if k.startswith(prefix)}
        indices = [int(i) for i in found if i.isdigit()]
        if indices:
            counts[stage - 1] = max(indices) + 1
    return tuple(counts)


def torch_head(arch: str) -> str:
    """The torch module of ``arch``'s head (the key prefix of its weight and bias)."""
    return "blocks.5.proj" if arch in X3D_ARCHS else HEADS[arch]


def state_dict_options(arch: str, state: Mapping[str, Any]) -> dict[str, Any]:
    """The model options a state_dict of ``arch`` shows (for create): VideoMAE's
    pooling (an ``fc_norm`` or a final ``layernorm``) and query/value biases, X3D's
    blocks per stage."""
    if arch in VIT_ARCHS:
        qv_bias = any(k.endswith(".attention.attention.query.bias") for k in state)
        return {"use_mean_pooling": "fc_norm.weight" in state or "fc_norm.bias" in state,
                "qv_bias": qv_bias}  # fmt: skip
    if arch in X3D_ARCHS:
        return {"blocks": _x3d_blocks(state)}
    return {}


def legacy_names(arch: str, state: Mapping[str, Any]) -> dict[str, Any]:
    """``state`` with older names of ``arch``'s keys renamed as the layout has them:
    VideoMAE's ``q_bias``/``v_bias`` (checkpoints before transformers 5) become
    ``query.bias``/``value.bias``, as transformers renames them."""
    if arch not in VIT_ARCHS:
        return dict(state)
    renames = {".attention.attention.q_bias": ".attention.attention.query.bias",
               ".attention.attention.v_bias": ".attention.attention.value.bias"}  # fmt: skip
    out = {}
    for key, value in state.items():
        for old, new in renames.items():
            if key.endswith(old):
                key = key[: -len(old)] + new
        out[key] = value
    return out


def torch_layout(arch: str, **options: Any) -> tuple[Entry, ...]:
    """The key table of ``arch``: torchvision's names for the ResNets, the C3D port's for
    C3D, transformers' VideoMAEForVideoClassification's for the ViTs (``options``: those
    of :func:`state_dict_options`, which change the ViTs' keys)."""
    if arch in RESNET_ARCHS:
        return tuple(_resnet_layout(arch))
    if arch in VIT_ARCHS:
        return tuple(_vit_layout(arch, options.get("use_mean_pooling", True),
                                 options.get("qv_bias", True)))  # fmt: skip
    if arch in X3D_ARCHS:
        return tuple(_x3d_layout(tuple(options.get("blocks", X3D_BLOCKS))))
    if arch == "c3d":
        convs = ("conv1", "conv2", "conv3a", "conv3b", "conv4a", "conv4b", "conv5a", "conv5b")
        dense = (Entry("fc6", "fc6", ("fc6",)), Entry("fc7", "dense", ("fc7",)))
        return (
            *(Entry(c, "conv_bias", (c,)) for c in convs),
            *dense,
            Entry("fc8", "dense", ("fc8",)),
        )
    if arch == "c3d_small":
        convs = tuple(Entry(f"conv{i}", "conv_bias", (f"conv{i}",)) for i in range(1, 5))
        return (*convs, Entry("fc", "dense", ("fc",)))
    raise OptionError(f"unknown model arch {arch!r}; expected one of {list(ARCHS)}")


def strip_prefix(state_dict: Mapping[str, Any], prefix: str = "module.") -> dict[str, Any]:
    """Drop ``prefix`` (DataParallel's ``module.``) from every key that has it."""
    return {(k[len(prefix) :] if k.startswith(prefix) else k): v for k, v in state_dict.items()}


def _to_numpy(key: str, value: Any) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch tensor; torch is imported by whoever made it
        value = value.detach().cpu()
        if str(value.dtype) == "torch.bfloat16":
            value = value.float()
        value = value.numpy()
    array = np.asarray(value)
    if not np.issubdtype(array.dtype, np.floating):
        raise CheckpointError(
            f"state_dict[{key!r}] must be floating point; got dtype {array.dtype}"
        )
    nan, inf = int(np.isnan(array).sum()), int(np.isinf(array).sum())
    if nan or inf:
        raise CheckpointError(
            f"state_dict[{key!r}] holds {nan + inf} non-finite values ({nan} NaN, {inf} "
            f"infinite) of shape {array.shape}: a model with such weights explains nothing"
        )
    return array.astype(np.float32)


def _torch_shape(kind: str, leaf: str, flax_shape: tuple[int, ...]) -> tuple[int, ...]:
    """The torch shape that converts to ``flax_shape`` (for error messages)."""
    if leaf == "weight" and kind in ("conv", "conv_bias"):
        *kernel, i, o = flax_shape
        return (o, i, *kernel)
    if leaf == "weight" and kind in ("dense", "dense_weight", "fc6"):
        return flax_shape[::-1]
    return flax_shape


def _convert(kind: str, leaf: str, array: np.ndarray, fc6_grid: tuple[int, ...]) -> np.ndarray:
    if leaf != "weight" or kind in ("bn", "ln"):
        return array
    if kind in ("conv", "conv_bias"):
        if array.ndim != 5:
            return array  # caught by the shape check
        return array.transpose(2, 3, 4, 1, 0)
    if kind == "fc6" and array.ndim == 2 and array.shape[1] == int(np.prod(fc6_grid)):
        # torch flattens pool5 as (C, T, H, W); the Flax model flattens (T, H, W, C).
        c, t, h, w = fc6_grid
        rows = array.reshape(array.shape[0], c, t, h, w).transpose(2, 3, 4, 1, 0)
        return rows.reshape(t * h * w * c, array.shape[0])
    return array.T


def _leaves(kind: str) -> dict[str, tuple[str, str]]:
    if kind == "bn":
        return _BN_LEAVES
    if kind in ("conv", "dense_weight"):
        return {"weight": ("params", "kernel")}
    if kind == "ln":
        return {"weight": ("params", "scale"), "bias": ("params", "bias")}
    return {"weight": ("params", "kernel"), "bias": ("params", "bias")}


def _infer_width(arch: str, state: Mapping[str, np.ndarray]) -> float | None:
    """The width the first conv's output channels give, or None without that conv."""
    key, base = _WIDTH_KEYS[arch]
    if key not in state or np.ndim(state[key]) < 1 or state[key].shape[0] < 1:
        return None
    return state[key].shape[0] / base


def _limited(items: list[str], limit: int = 20) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f", ... ({len(items) - limit} more)" if len(items) > limit else "")


def _numpy_state(state_dict: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """The state_dict without ``module.`` prefixes and ``num_batches_tracked``, as float32."""
    if not isinstance(state_dict, Mapping):
        raise CheckpointError(f"state_dict must be a mapping; got {type(state_dict).__name__}")
    return {
        k: _to_numpy(k, v)
        for k, v in strip_prefix(state_dict).items()
        if not k.endswith("num_batches_tracked")
    }


def _class_counts(
    state: Mapping[str, np.ndarray], head: str, num_classes: int | None, drop_head: bool
) -> tuple[int, list[str]]:
    """The class count to check the state_dict against, and the problems with the head."""
    weight = state.get(f"{head}.weight")
    stored = weight.shape[0] if weight is not None and weight.ndim == 2 else None
    if num_classes is None:
        hint = (
            [] if stored else [f"no 2-D {head + '.weight'!r}: pass num_classes with drop_head=True"]
        )
        return stored or 1, hint
    if stored is not None and stored != num_classes and not drop_head:
        return stored, [
            f"checkpoint head {head!r} has {stored} classes but num_classes={num_classes}; "
            "pass drop_head=True to replace the head"
        ]
    return num_classes, []


def _abstract_variables(model: nn.Module, clip_size: tuple[int, int, int]) -> dict[str, Any]:
    clips = jax.ShapeDtypeStruct((1, *clip_size, 3), jnp.float32)
    return jax.eval_shape(lambda c: model.init(jax.random.key(0), c, train=False), clips)


@dataclasses.dataclass
class _Match:
    """The state_dict's arrays in the model's variable tree, and what did not fit."""

    variables: dict[str, Any] = dataclasses.field(default_factory=dict)
    missing: list[str] = dataclasses.field(default_factory=list)
    unexpected: list[str] = dataclasses.field(default_factory=list)
    wrong: list[str] = dataclasses.field(default_factory=list)

    def put(self, collection: str, path: tuple[str, ...], name: str, value: Any) -> None:
        node = self.variables.setdefault(collection, {})
        for part in path:
            node = node.setdefault(part, {})
        node[name] = value

    def problems(self) -> list[str]:
        found = {"missing keys": self.missing, "unexpected keys": self.unexpected,
                 "wrong shapes": self.wrong}  # fmt: skip
        return [f"{what}: {_limited(keys)}" for what, keys in found.items() if keys]


def _match(
    arch: str, state: Mapping[str, np.ndarray], abstract: Any, fc6_grid: tuple[int, ...],
    skip: str | None, check_shapes: bool, options: Mapping[str, Any],
) -> _Match:  # fmt: skip
    """Every key of ``arch``'s layout looked up in ``state`` and converted to Flax layout;
    ``skip`` (a dropped head) is consumed but not taken."""
    match, used = _Match(), set()
    for entry in torch_layout(arch, **options):
        if entry.torch == skip:
            used.update(k for k in state if k.startswith(skip + "."))
            continue
        for leaf, (collection, name) in _leaves(entry.kind).items():
            key = f"{entry.torch}.{leaf}"
            if key not in state:
                match.missing.append(key)
                continue
            used.add(key)
            want = abstract[collection]
            for part in (*entry.flax, name):
                want = want[part]
            value = _convert(entry.kind, leaf, state[key], fc6_grid)
            if value.shape == tuple(want.shape):
                match.put(collection, entry.flax, name, jnp.asarray(value))
            elif check_shapes:
                expected = _torch_shape(entry.kind, leaf, tuple(want.shape))
                match.wrong.append(f"{key} {tuple(state[key].shape)} (expected {expected})")
    match.unexpected = sorted(set(state) - used)
    return match


def _fresh_head(arch: str, abstract: Any, num_classes: int, seed: int) -> dict[str, Any]:
    features = abstract["params"][HEADS[arch]]["kernel"].shape[0]
    init = fc_init if arch in RESNET_ARCHS else nn.initializers.lecun_normal()
    fresh = nn.Dense(num_classes, kernel_init=init).init(
        jax.random.key(seed), jnp.zeros((1, features), jnp.float32)
    )
    return fresh["params"]


def _width(arch: str, state: Mapping[str, np.ndarray], width: float | None, problems: list) -> Any:
    """``width``, else the one the first conv gives (None, with a problem, without it)."""
    inferred = _infer_width(arch, state) if width is None else width
    if inferred is None:
        key = _WIDTH_KEYS[arch][0]
        problems.append(f"no usable {key!r} to infer its width from (shapes not checked)")
    return inferred


def from_torch_state_dict(
    arch: str,
    state_dict: Mapping[str, Any],
    num_classes: int | None = None,
    *,
    drop_head: bool = False,
    width: float | None = None,
    clip_size: tuple[int, int, int] | None = None,
    seed: int = 0,
    model_kwargs: Mapping[str, Any] | None = None,
) -> tuple[nn.Module, dict[str, Any]]:
    """Convert a PyTorch state_dict to ``(model, variables)`` with identical logits.

    ``arch`` is one of :data:`~selrel_jax.models.ARCHS`. Values may be torch tensors
    or numpy arrays; ``num_batches_tracked`` entries and a ``module.`` prefix are
    ignored. ``num_classes`` defaults to the checkpoint's head; a different value
    needs ``drop_head=True``, which replaces the head by a fresh one (initialised
    from ``seed``). ``width`` is inferred from the first conv unless given;
    ``clip_size`` (T, H, W) defaults to the published clip of ``arch``
    (:func:`~selrel_jax.models.info.published_clip_size`): C3D's fc6 inputs and the
    ViTs' token grid depend on it. Model options the keys show (VideoMAE's pooling
    and query/value biases, :func:`state_dict_options`) are read from them;
    ``model_kwargs`` adds or overrides options. Every missing, unexpected or
    misshaped key (and a head of another class count) is listed in one
    CheckpointError; long lists end with a count.
    """
    if arch not in ARCHS:
        raise OptionError(f"unknown model arch {arch!r}; expected one of {list(ARCHS)}")
    state = legacy_names(arch, _numpy_state(state_dict))
    head = HEADS[arch]
    classes, problems = _class_counts(state, torch_head(arch), num_classes, drop_head)
    inferred = _width(arch, state, width, problems)
    size = published_clip_size(arch) if clip_size is None else tuple(clip_size)
    options = {**state_dict_options(arch, state), **dict(model_kwargs or {})}
    model = create(arch, classes, width=inferred or 1.0, clip_size=size, **options)
    abstract = _abstract_variables(model, size)
    grid = (scaled(512, model.width), *c3d_pool5_size(size)) if arch == "c3d" else ()
    skip = torch_head(arch) if drop_head else None
    match = _match(arch, state, abstract, grid, skip, inferred is not None, options)
    problems += match.problems()
    if problems:
        shown = "?" if inferred is None else f"{inferred:g}"
        raise CheckpointError(
            f"state_dict does not fit {arch} (width {shown}, {classes} classes): "
            + "; ".join(problems)
        )
    variables = match.variables
    if drop_head:
        variables["params"][head] = _fresh_head(arch, abstract, classes, seed)
    if jax.tree_util.tree_structure(variables) != jax.tree_util.tree_structure(abstract):
        raise RuntimeError(f"torch_layout({arch!r}) does not cover every variable of the model")
    return model, variables


# How files written by torch.save begin: a zip archive, or (the legacy format) a pickle.
_TORCH_FILE_STARTS = (b"PK\x03\x04", b"\x80")


def _load_reason(error: Exception, limit: int = 200) -> str:
    """The gist of torch.load's error: what weights_only refused, else the first line."""
    text = str(error).strip()
    if text.startswith("Weights only load failed"):
        after = text.split("WeightsUnpickler error:", 1)[-1]
        after = after.removeprefix("Weights only load failed.")
        detail = next((line.strip() for line in after.splitlines() if line.strip()), "")
        reason = f"weights_only=True refuses its contents: {detail}"
    else:
        first = text.splitlines()[0] if text else ""
        reason = f"{type(error).__name__}: {first}" if first else type(error).__name__
    return reason if len(reason) <= limit else reason[: limit - 3] + "..."


def _load_error(path: pathlib.Path, error: Exception) -> CheckpointError:
    """Say whether ``path`` is no PyTorch file at all or a PyTorch file torch cannot read."""
    try:
        with path.open("rb") as f:
            start = f.read(4)
    except OSError as e:
        return CheckpointError(f"cannot read PyTorch weights {path}: {e.strerror or e}")
    if not start:
        return CheckpointError(f"{path} is empty, not a PyTorch weights file")
    if not start.startswith(_TORCH_FILE_STARTS):
        return CheckpointError(
            f"{path} is not a PyTorch weights file (torch.load: {_load_reason(error)})"
        )
    return CheckpointError(f"cannot read PyTorch weights {path}: {_load_reason(error)}")


def _read_safetensors(path: pathlib.Path) -> dict[str, Any]:
    """A .safetensors file (HuggingFace's ``model.safetensors``) as torch tensors."""
    try:
        from safetensors.torch import load_file
    except ImportError:
        raise CheckpointError(
            f"reading {path} needs safetensors: pip install safetensors"
        ) from None
    try:
        loaded = load_file(path)
    except Exception as e:  # safetensors raises its own errors for a file it cannot parse
        raise CheckpointError(
            f"cannot read safetensors weights {path}: {_load_reason(e)}"
        ) from None
    if not loaded:
        raise CheckpointError(f"{path} holds no tensors")
    return dict(loaded)


def read_torch_state_dict(path: str | os.PathLike) -> dict[str, Any]:
    """``torch.load(path, weights_only=True)`` as a flat state_dict (a ``.safetensors``
    file, as HuggingFace saves models, is read with safetensors).

    Unwraps a ``"state_dict"``, ``"model"`` or ``"model_state"`` entry (training
    scripts' checkpoints; pytorchvideo's hub files hold ``"model_state"``).
    A missing torch, a missing or unreadable file, or one that holds no state_dict
    raises CheckpointError.
    """
    try:
        import torch
    except ImportError:
        raise CheckpointError(
            "converting PyTorch weights needs torch: pip install 'selrel-jax[torch]'"
        ) from None
    path = pathlib.Path(path)
    if path.is_dir():
        raise CheckpointError(f"{path} is a directory, not a PyTorch weights file")
    if not path.is_file():
        raise CheckpointError(f"weights file not found: {path}")
    if path.suffix == ".safetensors":
        return _read_safetensors(path)
    try:
        with warnings.catch_warnings():  # e.g. about the pickle protocol of a file it refuses
            warnings.simplefilter("ignore")
            loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle, zip and torch errors all mean "not a readable .pth"
        raise _load_error(path, e) from None
    for wrapper in ("state_dict", "model", "model_state"):
        if isinstance(loaded, Mapping) and isinstance(loaded.get(wrapper), Mapping):
            loaded = loaded[wrapper]
            break
    if not isinstance(loaded, Mapping) or not loaded:
        raise CheckpointError(f"{path} holds no state_dict (got {type(loaded).__name__})")
    return dict(loaded)


# Facts about the published weights that ModelInfo.for_arch does not cover (it has
# their resize and crop). torchvision evaluates its Kinetics models on 16-frame clips
# resampled to 15 fps; C3D used the source videos' frame rate.
_PUBLISHED: dict[str, dict[str, Any]] = {
    "c3d": {"trained_on": "Sports-1M"},
    "c3d_small": {},
    **{a: {"trained_on": "Kinetics-400"} for a in RESNET_ARCHS},
    **{a: {"layout": "transformers VideoMAEForVideoClassification"} for a in VIT_ARCHS},
    **{a: {"layout": "pytorchvideo create_x3d"} for a in X3D_ARCHS},
}
# Options the published weights need that their keys do not show: pytorchvideo's hub
# X3Ds were built with input_crop_size 160 (the head's pool) and are evaluated at 182.
_PUBLISHED_OPTIONS: dict[str, dict[str, Any]] = {a: {"input_crop_size": 160} for a in X3D_ARCHS}
_PUBLISHED_FPS = {a: 15.0 for a in RESNET_ARCHS}


def _class_names(path: pathlib.Path | None, arch: str, num_classes: int) -> tuple[str, ...]:
    if path is None:
        if arch in RESNET_ARCHS and num_classes == 400:
            return kinetics400_class_names()
        if arch == "c3d" and num_classes == 487:
            return sports1m_class_names()
        return numeric_class_names(num_classes)
    try:
        lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    except (OSError, UnicodeDecodeError) as e:
        raise CheckpointError(f"cannot read class names {path}: {e}") from None
    numbered = [(number, name) for number, name in enumerate(lines, 1) if name]
    if len(numbered) != num_classes:
        raise CheckpointError(
            f"class names {path} has {len(numbered)} names; the model has {num_classes} classes"
        )
    first: dict[str, int] = {}
    for number, name in numbered:
        if name in first:
            raise CheckpointError(
                f"class names {path} repeat {name!r} (lines {first[name]} and {number}); "
                "each class needs its own name"
            )
        first[name] = number
    return tuple(name for _, name in numbered)


def _kwargs_record(arch: str, model: nn.Module, given: Mapping[str, Any]) -> dict[str, Any]:
    """``{"model_kwargs": ...}``: the options of ``model`` that the keys, the published
    settings or the folder's config (``given``) fixed (what
    :func:`~selrel_jax.models.checkpoint.load` builds it with)."""
    names = set(_PUBLISHED_OPTIONS.get(arch, {})) | set(state_dict_options(arch, {})) | set(given)
    if not names:
        return {}
    return {"model_kwargs": {name: getattr(model, name) for name in sorted(names)}}


def _arch_and_folder(
    weights: pathlib.Path, arch: str | None
) -> tuple[str, pathlib.Path, VideoMAEFolder | None]:
    """``(arch, weights file, VideoMAE folder or None)``: a folder's weights file, its
    config's arch where ``arch`` is None, and ``arch`` (one of :data:`ARCHS`, checked by
    the caller before the output folder) checked against the config."""
    weights = weights_in(weights)
    folder = read_videomae_folder(weights)
    if arch is None:
        if folder is not None and folder.arch is not None:
            return folder.arch, weights, folder
        if folder is not None:
            sizes = ", ".join(f"{k} {v}" for k, v in folder.layers.items())
            raise CheckpointError(
                f"{folder.path / CONFIG_FILE} describes a VideoMAE of no zoo size ({sizes}); "
                f"pass --arch ({', '.join(VIT_ARCHS)}), its width is read from the weights"
            )
        raise CheckpointError(
            f"{weights}: pass --arch (one of {', '.join(ARCHS)}); only a HuggingFace VideoMAE "
            f"folder ({CONFIG_FILE} beside the weights) says its own"
        )
    if folder is not None:
        folder.check(arch)
    return arch, weights, folder


def convert_torch_file(
    weights: str | os.PathLike,
    arch: str | None,
    out: str | os.PathLike,
    *,
    class_names: str | os.PathLike | None = None,
    overwrite: bool = False,
) -> pathlib.Path:
    """Convert a PyTorch .pth file to a checkpoint directory ``out``; returns it.

    The metadata records the published preprocessing (:meth:`ModelInfo.for_arch`:
    normalisation, clip, resize and crop; torchvision's 15 fps), the model options
    the weights fixed (``extra["model_kwargs"]``: VideoMAE's pooling and biases,
    X3D's blocks and the published head's ``input_crop_size`` 160) and the
    class names: ``class_names`` (a text file, one name per line in head order),
    else Kinetics-400 for 400-class ResNets, Sports-1M for the 487-class C3D, else
    ``class_<i>``. ``weights`` may be a HuggingFace VideoMAE folder
    (``save_pretrained``'s or a hub download) or a weights file in one: its
    ``config.json`` gives the arch (``arch`` None; else it is checked against it), the
    clip, the LayerNorm epsilon and the class names (``id2label``), and its
    ``preprocessor_config.json`` the mean, std and resize
    (:mod:`~selrel_jax.models.hf_folder`). An existing checkpoint in ``out`` needs
    ``overwrite=True``. Nothing is written on error.
    """
    if arch is not None:
        arch = one_of("arch", arch, ARCHS)
    out = checkpoint_target(out)  # before the slow part: a path we cannot write is refused
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise CheckpointError(
            f"{out} already holds a checkpoint; pass --overwrite (overwrite=True) to replace it"
        )
    arch, weights, folder = _arch_and_folder(pathlib.Path(weights), arch)
    given = dict(folder.model_kwargs) if folder else {}
    state_dict = read_torch_state_dict(weights)
    try:
        model, variables = from_torch_state_dict(
            arch, state_dict, clip_size=folder.clip_size if folder else None,
            model_kwargs={**_PUBLISHED_OPTIONS.get(arch, {}), **given},
        )  # fmt: skip
    except CheckpointError as e:  # which file: the state_dict's problems name keys only
        raise CheckpointError(f"{weights}: {e}") from None
    num_classes = variables["params"][HEADS[arch]]["bias"].shape[0]
    names = _names_of(class_names, folder, arch, num_classes)
    extra = {**_PUBLISHED[arch], "converted_from": weights.name,
             **_kwargs_record(arch, model, given)}  # fmt: skip
    if folder is not None:
        extra["config_files"] = list(folder.files)
    info = ModelInfo.for_arch(
        arch, num_classes, class_names=names, width=model.width, fps=_PUBLISHED_FPS.get(arch),
        extra=extra, **(dict(folder.info_overrides) if folder else {}),
    )  # fmt: skip
    return save(out, info, variables)


def _names_of(
    path: str | os.PathLike | None, folder: VideoMAEFolder | None, arch: str, num_classes: int
) -> tuple[str, ...]:
    """The class names: the file given, else the folder's ``id2label``, else the
    published ones (:func:`_class_names`)."""
    if path is None and folder is not None and folder.class_names:
        if len(folder.class_names) != num_classes:
            raise CheckpointError(
                f"{folder.path / CONFIG_FILE}: id2label has {len(folder.class_names)} names; "
                f"the weights' head has {num_classes} classes"
            )
        return folder.class_names
    return _class_names(None if path is None else pathlib.Path(path), arch, num_classes)
