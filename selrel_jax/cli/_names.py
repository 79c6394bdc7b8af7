"""Names the help texts list, written out so that ``selrel --help`` imports no JAX.

Each is a copy of a library list (the method registry, the model architectures, the
video folder's file suffixes); tests/cli/test_help.py checks each equals its source,
so the library stays the one place they are defined.
"""

from __future__ import annotations

#: selrel_jax.attribution.registry.method_names()
METHODS = (
    "gradient", "gradient_x_input", "integrated_gradients", "smoothgrad", "grad_cam",
    "occlusion", "lrp.epsilon", "lrp.zplus", "lrp.epsilon_plus", "lrp.epsilon_plus_flat",
    "lrp.epsilon_gamma_box", "lrp.epsilon_alpha2_beta1", "lrp.epsilon_alpha2_beta1_flat",
    "lrp.dtd", "lrp.attn", "lrp.cp", "baseline.random", "baseline.frame_difference",
    "baseline.input_sobel",
)  # fmt: skip

#: selrel_jax.models.registry.ARCHS
ARCHS = ("c3d", "c3d_small", "r3d_18", "mc3_18", "r2plus1d_18", "videomae_vit_s",
         "videomae_vit_b", "vit_small", "x3d_xs", "x3d_s")  # fmt: skip

#: selrel_jax.data.VIDEO_EXTENSIONS
VIDEO_EXTENSIONS = (".mp4", ".avi", ".webm", ".mkv", ".mov", ".m4v", ".mpg", ".mpeg")


def video_formats() -> str:
    """``mp4, avi, ...`` of :data:`VIDEO_EXTENSIONS`."""
    return ", ".join(suffix.lstrip(".") for suffix in VIDEO_EXTENSIONS)
