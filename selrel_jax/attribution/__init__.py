"""Attribution methods for Flax video models: LRP and the gradient family.

* :mod:`~selrel_jax.attribution.types`: the layer vocabulary (conv, dense,
  primitive layer types; :class:`LayerCall`, what a rule sees of a layer call).
* :mod:`~selrel_jax.attribution.rules`: Epsilon, ZPlus, AlphaBeta, Gamma, ZBox,
  Flat, WSquare, Norm, Pass, Gradient.
* :mod:`~selrel_jax.attribution.composites`: layer -> rule maps (Zennit's names).
* :mod:`~selrel_jax.attribution.canonizers`: per-channel affine maps (BatchNorm)
  merged into the conv/dense layer before them.
* :mod:`~selrel_jax.attribution.engine`: :func:`lrp`, the jax.vjp transform of
  the traced model (Flax linen, Flax NNX or a plain ``apply_fn(params, clips)``).
* :mod:`~selrel_jax.attribution.gradients`: gradient, gradient x input,
  integrated gradients, SmoothGrad, Grad-CAM 3D.
* :mod:`~selrel_jax.attribution.registry`: methods by name, options from signatures.
* :func:`explain`: one entry point by method name.

Examples:
    >>> import jax
    >>> import jax.numpy as jnp
    >>> from selrel_jax import models
    >>> model = models.create("c3d_small", 4, width=0.25, clip_size=(8, 32, 32))
    >>> variables = model.init(jax.random.key(0), jnp.zeros((1, 8, 32, 32, 3)), train=False)
    >>> clips = jax.random.normal(jax.random.key(1), (1, 8, 32, 32, 3))
    >>> from selrel_jax.attribution import composites, explain, lrp
    >>> rel = explain(model, variables, clips, method="lrp.epsilon_plus_flat")
    >>> rel.shape, rel.dtype
    ((1, 8, 32, 32, 3), dtype('float32'))
    >>> fn = jax.jit(lrp(model, composites.epsilon_gamma_box(low=-2.0, high=2.0)))
    >>> fn(variables, clips, jnp.array([3])).shape
    (1, 8, 32, 32, 3)
"""

from selrel_jax.attribution import canonizers, composites, gradients, registry, rules, types
from selrel_jax.attribution.composites import (
    Composite,
    attn,
    cp,
    epsilon_alpha2_beta1,
    epsilon_alpha2_beta1_flat,
    epsilon_gamma_box,
    epsilon_plus,
    epsilon_plus_flat,
)
from selrel_jax.attribution.engine import lrp
from selrel_jax.attribution.explain import METHODS, explain, make_explainer
from selrel_jax.attribution.registry import register_composite, register_gradient
from selrel_jax.attribution.rules import (
    AlphaBeta,
    AttnSoftmax,
    Epsilon,
    Flat,
    Gamma,
    Gradient,
    Norm,
    Pass,
    Rule,
    Uniform,
    WSquare,
    ZBox,
    ZPlus,
)
from selrel_jax.attribution.types import (
    LayerCall,
    UnsupportedLayerError,
)

__all__ = [
    "METHODS",
    "AlphaBeta",
    "AttnSoftmax",
    "Composite",
    "Epsilon",
    "Flat",
    "Gamma",
    "Gradient",
    "LayerCall",
    "Norm",
    "Pass",
    "Rule",
    "Uniform",
    "UnsupportedLayerError",
    "WSquare",
    "ZBox",
    "ZPlus",
    "attn",
    "canonizers",
    "composites",
    "cp",
    "epsilon_alpha2_beta1",
    "epsilon_alpha2_beta1_flat",
    "epsilon_gamma_box",
    "epsilon_plus",
    "epsilon_plus_flat",
    "explain",
    "gradients",
    "lrp",
    "make_explainer",
    "register_composite",
    "register_gradient",
    "registry",
    "rules",
    "types",
]
