"""selrel_jax: selective relevance for 3D-CNN activity recognition, in JAX and Flax.

Layout is NTHWC everywhere: clips and relevance maps are (N, T, H, W, C).

Examples:
    A tiny untrained C3D and one random clip (1 clip, 8 frames of 32x32 RGB):

    >>> import flax.linen
    >>> import jax
    >>> import jax.numpy as jnp
    >>> import numpy as np
    >>> import selrel_jax as sr
    >>> from selrel_jax import models
    >>> model = models.create("c3d_small", 4, width=0.25, clip_size=(8, 32, 32))
    >>> variables = model.init(jax.random.key(0), jnp.zeros((1, 8, 32, 32, 3)), train=False)
    >>> frames = np.random.default_rng(0).integers(0, 256, (8, 32, 32, 3), dtype=np.uint8)
    >>> clips = jnp.asarray(frames[None] / 127.5 - 1.0, jnp.float32)
    >>> relevance = sr.explain(model, variables, clips, method="lrp.epsilon_plus_flat")
    >>> relevance.shape, relevance.dtype
    ((1, 8, 32, 32, 3), dtype('float32'))
    >>> sel = sr.selective_relevance(relevance, sigma=1.0)   # motion relevance
    >>> bias = sr.spatial_bias(relevance, sel)               # share that was static
    >>> bias.shape, bool(0 <= bias[0] <= 1)
    ((1,), True)
    >>> sr.metrics.gini(sel).shape                           # more scores
    (1,)
    >>> fig = sr.viz.panels(frames, {"relevance": relevance[0], "selective": sel[0]})

    Your own LRP rules (one for every layer with parameters), through ``explain`` or
    as a transform:

    >>> linen = flax.linen
    >>> mine = sr.Composite(
    ...     layer_map=((linen.Conv, sr.ZPlus()), (linen.Dense, sr.Epsilon())), first=sr.Flat()
    ... )
    >>> relevance = sr.explain(model, variables, clips, method=mine)
    >>> fn = jax.jit(sr.lrp(model, mine))
    >>> fn(variables, clips).shape
    (1, 8, 32, 32, 3)

Submodules and names are imported on first use (``sr.viz``: matplotlib, ``sr.explain``: JAX).
"""

from selrel_jax.errors import (
    CheckpointError,
    DataError,
    DTypeError,
    NonFiniteError,
    OptionError,
    SelrelError,
    ShapeError,
)

# Everything else is imported on first use (PEP 562): `import selrel_jax` (and so the
# `selrel` CLI's `--help`) stays free of JAX (~1 s) and matplotlib (~1 s).
_LAZY = {
    **dict.fromkeys(
        ("AlphaBeta", "Composite", "Epsilon", "Flat", "Gamma", "Norm", "Pass", "WSquare",
         "ZBox", "ZPlus", "explain", "lrp", "make_explainer", "register_composite"),
        "selrel_jax.attribution",
    ),
    **dict.fromkeys(
        ("motion_mask", "selective_relevance", "spatial_bias", "static_relevance",
         "temporal_gradient", "validate_relevance"),
        "selrel_jax.selective",
    ),
}  # fmt: skip
_SUBMODULES = ("metrics", "viz")

__version__ = "0.1.0"

__all__ = [
    "AlphaBeta",
    "CheckpointError",
    "Composite",
    "DTypeError",
    "DataError",
    "Epsilon",
    "Flat",
    "Gamma",
    "NonFiniteError",
    "Norm",
    "OptionError",
    "Pass",
    "SelrelError",
    "ShapeError",
    "WSquare",
    "ZBox",
    "ZPlus",
    "explain",
    "lrp",
    "make_explainer",
    "metrics",
    "motion_mask",
    "register_composite",
    "selective_relevance",
    "spatial_bias",
    "static_relevance",
    "temporal_gradient",
    "validate_relevance",
    "viz",
]


def __getattr__(name: str):
    import importlib

    if name in _SUBMODULES:
        return importlib.import_module(f"selrel_jax.{name}")
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value  # looked up once
        return value
    raise AttributeError(f"module 'selrel_jax' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
