"""selrel_jax: selective relevance for 3D-CNN activity recognition, in JAX and Flax.

Layout is NTHWC everywhere: clips and relevance maps are (N, T, H, W, C).

Example::

    import selrel_jax as sr
    sel = sr.selective_relevance(relevance, sigma=1.0)   # motion relevance
    bias = sr.spatial_bias(relevance, sel)               # share that was static
    sr.metrics.gini(sel)                                 # more scores
    sr.viz.panels(frames, {"relevance": relevance, "selective": sel})  # pictures

    mine = sr.Composite(layer_map=((flax.linen.Conv, sr.ZPlus()),), first=sr.Flat())
    relevance = sr.explain(model, variables, clips, method=mine)  # your own LRP rules
    fn = jax.jit(sr.lrp(model, mine))                              # or the transform

``selrel_jax.viz`` (matplotlib) is imported on first use of ``sr.viz``.
"""

from selrel_jax import metrics
from selrel_jax.attribution import (
    AlphaBeta,
    Composite,
    Epsilon,
    Flat,
    Gamma,
    Norm,
    Pass,
    WSquare,
    ZBox,
    ZPlus,
    explain,
    lrp,
    make_explainer,
    register_composite,
)
from selrel_jax.errors import (
    CheckpointError,
    DataError,
    DTypeError,
    NonFiniteError,
    OptionError,
    SelrelError,
    ShapeError,
)
from selrel_jax.selective import (
    motion_mask,
    selective_relevance,
    spatial_bias,
    static_relevance,
    temporal_gradient,
    validate_relevance,
)

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
    # viz pulls in matplotlib (~1 s); `import selrel_jax` stays light for the CLI.
    if name == "viz":
        import importlib

        return importlib.import_module("selrel_jax.viz")
    raise AttributeError(f"module 'selrel_jax' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | {"viz"})
