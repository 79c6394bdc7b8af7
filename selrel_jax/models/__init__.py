"""Model zoo: C3D, compact C3D, torchvision's video ResNets, VideoMAE's ViTs and X3D in Flax.

Every model takes NTHWC clips (already normalised as its :class:`ModelInfo`
says) and returns logits; ``train=False`` is deterministic.

Examples:
    >>> import jax
    >>> import jax.numpy as jnp
    >>> from selrel_jax import models
    >>> model = models.create("c3d_small", 4, width=0.25, clip_size=(8, 32, 32))
    >>> variables = model.init(jax.random.key(0), jnp.zeros((1, 8, 32, 32, 3)), train=False)
    >>> clips = jax.random.normal(jax.random.key(1), (1, 8, 32, 32, 3))
    >>> info = models.ModelInfo.for_arch("c3d_small", 4, width=0.25, clip_length=8,
    ...                                  crop_size=(32, 32))
    >>> models.save("runs/c3d_small", info, variables)
    PosixPath('.../runs/c3d_small')
    >>> model, variables, info = models.load("runs/c3d_small")
    >>> info.clip_size, model.apply(variables, clips, train=False).shape
    ((8, 32, 32), (1, 4))

    PyTorch weights (torchvision key names; the C3D port's key names for ``c3d``),
    here a c3d_small's state_dict:

    >>> import torch
    >>> convs = zip(("conv1", "conv2", "conv3", "conv4"), (3, 4, 8, 16), (4, 8, 16, 16))
    >>> layers = {name: torch.nn.Conv3d(i, o, 3, padding=1) for name, i, o in convs}
    >>> state_dict = torch.nn.ModuleDict({**layers, "fc": torch.nn.Linear(16, 4)}).state_dict()
    >>> model, variables = models.from_torch_state_dict("c3d_small", state_dict,
    ...                                                 clip_size=(8, 32, 32))
    >>> model.width, variables["params"]["conv1"]["kernel"].shape
    (0.25, (3, 3, 3, 3, 4))
"""

from selrel_jax.errors import CheckpointError
from selrel_jax.models.c3d import C3D, C3DSmall
from selrel_jax.models.checkpoint import load, load_info, save, shipped_checkpoints
from selrel_jax.models.classes import kinetics400_class_names, sports1m_class_names
from selrel_jax.models.info import ModelInfo, numeric_class_names
from selrel_jax.models.registry import ARCHS, create
from selrel_jax.models.resnet3d import VideoResNet
from selrel_jax.models.torch_import import from_torch_state_dict
from selrel_jax.models.vit import VideoViT
from selrel_jax.models.x3d import X3D

__all__ = [
    "ARCHS",
    "C3D",
    "X3D",
    "C3DSmall",
    "CheckpointError",
    "ModelInfo",
    "VideoResNet",
    "VideoViT",
    "create",
    "from_torch_state_dict",
    "kinetics400_class_names",
    "load",
    "load_info",
    "numeric_class_names",
    "save",
    "shipped_checkpoints",
    "sports1m_class_names",
]
