"""Fixtures of the robustness tests."""

from __future__ import annotations

import pytest

CLIP = (8, 32, 32)  # synthetic_motion's tiny configs


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory, save_tiny_model):
    """The directory of an untrained thin c3d_small for tiny clips."""
    return save_tiny_model(tmp_path_factory.mktemp("model") / "tiny", 3)
