"""Model zoo: C3D, compact C3D and torchvision's video ResNets in Flax.

Every model takes NTHWC clips (already normalised as its :class:`ModelInfo`
says) and returns logits; ``train=False`` is deterministic.

Example::

    from selrel_jax import models
    model = models.create("c3d_small", num_classes=8, clip_size=(16, 64, 64))
    variables = model.init(jax.random.key(0), jnp.zeros((1, 16, 64, 64, 3)))
    info = models.ModelInfo.for_arch("c3d_small", 8, crop_size=(64, 64))
    models.save("runs/c3d_small", info, variables)
    model, variables, info = models.load("runs/c3d_small")

    # PyTorch weights (torchvision key names; C3D port key names for c3d):
    model, variables = models.from_torch_state_dict("r3d_18", state_dict)
"""

from selrel_jax.errors import CheckpointError
from selrel_jax.models.c3d import C3D, C3DSmall
from selrel_jax.models.checkpoint import load, save, shipped_checkpoints
from selrel_jax.models.classes import kinetics400_class_names, sports1m_class_names
from selrel_jax.models.info import ModelInfo, numeric_class_names
from selrel_jax.models.registry import ARCHS, create
from selrel_jax.models.resnet3d import VideoResNet
from selrel_jax.models.torch_import import from_torch_state_dict

__all__ = [
    "ARCHS",
    "C3D",
    "C3DSmall",
    "CheckpointError",
    "ModelInfo",
    "VideoResNet",
    "create",
    "from_torch_state_dict",
    "kinetics400_class_names",
    "load",
    "numeric_class_names",
    "save",
    "shipped_checkpoints",
    "sports1m_class_names",
]
