"""Fixtures of the robustness tests."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from selrel_jax import models
from selrel_jax.data import synthetic_motion

CLIP = (8, 32, 32)  # synthetic_motion's tiny configs


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    """The directory of an untrained thin c3d_small for tiny clips (its relevance is
    arbitrary but deterministic)."""
    model = models.create("c3d_small", 6, width=0.25, clip_size=CLIP, stem_stride=(1, 2, 2))
    init = jax.jit(lambda key: model.init(key, np.zeros((1, *CLIP, 3), np.float32)))
    info = models.ModelInfo.for_arch(
        "c3d_small", 6, class_names=synthetic_motion.CLASS_NAMES, width=0.25,
        clip_length=CLIP[0], crop_size=CLIP[1:], extra={"model_kwargs": {"stem_stride": [1, 2, 2]}},
    )  # fmt: skip
    return models.save(tmp_path_factory.mktemp("model") / "tiny", info, init(jax.random.key(3)))
