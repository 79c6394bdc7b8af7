"""One entry point for every attribution method: :func:`explain`.

Examples:
    A Flax linen model with its variables:

    >>> import jax
    >>> import jax.numpy as jnp
    >>> from selrel_jax import models
    >>> model = models.create("c3d_small", 4, width=0.25, clip_size=(8, 32, 32))
    >>> variables = model.init(jax.random.key(0), jnp.zeros((1, 8, 32, 32, 3)), train=False)
    >>> clips = jax.random.normal(jax.random.key(1), (1, 8, 32, 32, 3))
    >>> import selrel_jax as sr
    >>> relevance = sr.explain(model, variables, clips, method="lrp.epsilon_plus_flat")
    >>> relevance.shape
    (1, 8, 32, 32, 3)

    A plain ``apply_fn(params, clips)`` with its parameters, or ``apply_fn(clips)``:

    >>> def apply_fn(params, clips):
    ...     return model.apply(params, clips, train=False)
    >>> relevance = sr.explain(apply_fn, variables, clips)
    >>> grads = sr.explain(lambda x: apply_fn(variables, x), None, clips, method="gradient")
    >>> grads.shape
    (1, 8, 32, 32, 3)

    A Flax NNX module, with the state it holds:

    >>> from flax import nnx
    >>> class Tiny(nnx.Module):
    ...     def __init__(self, rngs):
    ...         self.conv = nnx.Conv(3, 4, (3, 3, 3), rngs=rngs)
    ...         self.fc = nnx.Linear(4, 2, rngs=rngs)
    ...     def __call__(self, x):
    ...         return self.fc(jax.nn.relu(self.conv(x)).mean(axis=(1, 2, 3)))
    >>> sr.explain(Tiny(nnx.Rngs(0)), None, clips).shape
    (1, 8, 32, 32, 3)

    A target per clip and a method's options (here the box rule's input bounds):

    >>> rel = sr.explain(model, variables, clips, jnp.array([3]), "lrp.epsilon_gamma_box",
    ...                  low=-2.0, high=2.0)
    >>> rel.shape, bool(jnp.isfinite(rel).all())
    ((1, 8, 32, 32, 3), True)

For repeated calls under your own ``jax.jit`` / ``jax.vmap`` use
:func:`make_explainer`, which returns the pure function
``(variables, clips, target) -> relevance``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from selrel_jax._checks import one_of

# composites and gradients register their methods when imported.
from selrel_jax.attribution import (  # noqa: F401
    baselines,
    composites,
    gradients,
    occlusion,
    registry,
)
from selrel_jax.attribution._frontends import as_pure, check_params, is_linen
from selrel_jax.attribution._inputs import (
    CHECKIFY,
    check_clips,
    check_logits,
    check_option_array,
    check_target,
)
from selrel_jax.attribution._model_checks import inspect_forward
from selrel_jax.attribution.composites import Composite
from selrel_jax.attribution.engine import lrp
from selrel_jax.errors import OptionError

__all__ = [
    "BASELINE_METHODS",
    "GRADIENT_METHODS",
    "LRP_METHODS",
    "METHODS",
    "PRECISIONS",
    "default_precision",
    "explain",
    "make_explainer",
]

#: Names of the gradient-family methods (registered with ``register_gradient``).
GRADIENT_METHODS: tuple[str, ...] = registry.method_names("gradient")
#: Names of the LRP methods: ``"lrp."`` and a composite registered with ``register_composite``.
LRP_METHODS: tuple[str, ...] = registry.method_names("lrp")
#: Names of the model-free baselines: ``"baseline."`` and a map registered with
#: ``register_baseline``.
BASELINE_METHODS: tuple[str, ...] = registry.method_names("baseline")
#: Every method name of ``explain`` at import: the gradient family, the LRP composites,
#: then the baselines.
METHODS: tuple[str, ...] = (*GRADIENT_METHODS, *LRP_METHODS, *BASELINE_METHODS)
# Options that may be arrays: handed to the jitted explainer as traced arguments.
_ARRAY_OPTIONS = ("low", "high", "baseline")
#: Values of the ``precision`` option: JAX's matmul/conv precisions, and "auto".
PRECISIONS: tuple[str, ...] = ("auto", "default", "high", "highest")


def _resolve(method: Any, options: dict[str, Any]) -> tuple[registry.Method, dict[str, Any]]:
    """The registered method named ``method``, or a :class:`Composite` as an LRP method."""
    if not isinstance(method, Composite):
        return registry.resolve(method, options)
    if options:
        raise OptionError(
            f"option(s) {sorted(options)} are for named methods; a Composite carries its "
            f"rules' settings (build it with them, e.g. composites.epsilon_gamma_box(low=..., "
            f"high=...))"
        )
    return registry.Method("composite", "lrp", lambda: method, {}), {}


def default_precision(method: Any) -> str | None:
    """The precision ``precision="auto"`` stands for: ``"highest"`` for LRP, JAX's
    own default (None: ``jax_default_matmul_precision``) for the gradient family.

    LRP divides by each layer's output (``R / S(z)``): where ``z`` is near 0, the
    reduced-precision passes of accelerators (TF32 on NVIDIA GPUs, bf16 passes on
    TPUs; ~1e-3 relative error) change the ratio by far more than the result's
    float32 rounding. On CPU "highest" costs nothing (XLA:CPU computes float32 in
    float32 whatever is asked). Gradients divide by nothing: they keep JAX's
    default, the fast one. Where JAX's default differs: NVIDIA GPUs (Ampere
    and later) run float32 convolutions and matmuls as TF32, TPUs as bf16
    passes; CPUs in float32."""
    lrp_method = isinstance(method, Composite) or str(method).startswith("lrp.")
    return "highest" if lrp_method else None


def _check_precision(precision: Any, method: Any) -> str | None:
    precision = one_of("precision", precision, PRECISIONS)
    return default_precision(method) if precision == "auto" else precision


def _with_precision(fn: Callable, precision: str | None) -> Callable:
    """``fn`` traced under ``jax.default_matmul_precision(precision)``: every
    convolution and matmul of the model and of the rules gets it."""
    if precision is None:
        return fn

    @functools.wraps(fn)
    def run(*args, **kwargs):
        with jax.default_matmul_precision(precision):
            return fn(*args, **kwargs)

    return run


def make_explainer(
    model: Any,
    method: str | Composite = "lrp.epsilon_plus_flat",
    *,
    checked: bool = False,
    precision: str = "auto",
    **options: Any,
) -> Callable:
    """The pure function ``(variables, clips, target=None) -> relevance`` of
    ``method`` (see :func:`explain`) for any model :func:`explain` takes:
    ``variables`` are a linen model's variables, an NNX module's state (None:
    the state it has when ``make_explainer`` is called), or a plain
    ``apply_fn(params, clips)``'s params (None for ``apply_fn(clips)``).

    Called with concrete arrays, the function checks them as :func:`explain`
    does. Traced (under ``jit``/``vmap``), a clip with NaN/Inf values, an
    out-of-range target or an invalid traced option (bounds, baseline) gets an
    all-NaN relevance and the other clips are untouched; ``checked=True`` adds
    ``jax.experimental.checkify`` checks for these (run the function under
    ``checkify.checkify``).

    ``precision`` is the matmul/convolution precision of the model's and the
    rules' passes (:data:`PRECISIONS`; see :func:`explain`)."""
    entry, merged = _resolve(method, options)
    precision = _check_precision(precision, method)
    model, default = as_pure(model)
    if entry.family == "lrp":
        explainer = lrp(model, entry.build(**merged), checked=checked)

        def lrp_explainer(variables, clips, target=None):
            # Video clips only here; lrp's own check covers the values.
            variables = default if variables is None else variables
            return explainer(variables, check_clips(clips, values=False), target)

        return _with_precision(lrp_explainer, precision)

    def explainer(variables, clips, target=None):
        apply_fn = _apply_fn(model, default if variables is None else variables)
        token = CHECKIFY.set(bool(checked))
        try:
            return entry.build(apply_fn, clips, target, **merged)
        finally:
            CHECKIFY.reset(token)

    return _with_precision(explainer, precision)


def _apply_fn(model: Any, variables: Any) -> Callable:
    """``apply_fn(clips) -> logits`` of a linen model with its variables, or of a
    plain ``apply_fn(params, clips)`` with its params (None: ``apply_fn(clips)``)."""
    if is_linen(model):
        if variables is None:
            raise OptionError(
                f"variables is None, but the Flax linen model {type(model).__name__} needs "
                f"its variables (only an NNX module or a plain apply_fn(clips) goes without)"
            )
        return functools.partial(model.apply, variables)
    if not callable(model):
        raise OptionError(
            f"model must be a Flax linen model, an NNX module or a callable apply_fn(params, "
            f"clips) / apply_fn(clips); got {type(model).__name__}"
        )
    check_params(variables)
    return model if variables is None else functools.partial(model, variables)


class _Closure:
    """A plain ``apply_fn(clips)`` as its traced computation: equal for closures
    that trace to the same jaxpr, so one compiled explainer serves every call.
    The arrays it closes over are handed in at each call (``consts``), never
    baked into the compiled code, so a closure whose captured weights change
    between calls is explained with the weights of each call."""

    def __init__(self, jaxpr: Any, treedef: Any) -> None:
        self.jaxpr, self.treedef = jaxpr, treedef
        self._key = (str(jaxpr), treedef)

    def __hash__(self) -> int:
        return hash(self._key)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Closure) and self._key == other._key

    def bind(self, consts: list) -> Callable:
        """``apply_fn(clips)`` closing over ``consts`` (traced ones inside jit)."""
        return lambda clips: jax.tree.unflatten(
            self.treedef, jax.core.eval_jaxpr(self.jaxpr, consts, clips)
        )


@functools.lru_cache(maxsize=32)
def _jitted_closure(closure: _Closure, method: str, static: tuple) -> Callable:
    def run(consts, clips, target, arrays):
        explainer = make_explainer(closure.bind(consts), method, **dict(static), **arrays)
        return explainer(None, clips, target)

    return jax.jit(run)


def _closure_run(apply_fn: Callable, clips: jax.Array, method: str, static: tuple) -> Callable:
    """The cached jitted explainer of a plain ``apply_fn(clips)`` and its constants."""
    struct = jax.ShapeDtypeStruct(clips.shape, clips.dtype)
    closed, out = jax.make_jaxpr(apply_fn, return_shape=True)(struct)
    closure = _Closure(closed.jaxpr, jax.tree.structure(out))
    run = _jitted_closure(closure, method, static)
    return functools.partial(run, list(closed.consts))


@functools.lru_cache(maxsize=32)
def _jitted(model: Any, method: str, static: tuple) -> Callable:
    def run(variables, clips, target, arrays):
        return make_explainer(model, method, **dict(static), **arrays)(variables, clips, target)

    return jax.jit(run)


def explain(
    model: Any,
    variables: Any,
    clips: Any,
    target: Any = None,
    method: str | Composite = "lrp.epsilon_plus_flat",
    **options: Any,
) -> jax.Array:
    """Relevance of ``clips`` (float (N,T,H,W,C), normalised) for ``target``
    (int (N,), None: the predicted class) under ``method``: an array of the
    shape and floating dtype of ``clips``.

    ``model`` is a Flax linen model with its ``variables``
    (``model.apply(variables, clips)`` returns logits (N, classes)), a Flax
    NNX module (``variables`` None: its current state; or an ``nnx.State`` of
    it), or a plain callable: ``apply_fn(params, clips)`` with ``variables``
    its params pytree, or ``apply_fn(clips)`` with ``variables=None``. Every
    method takes every kind of model.

    ``method`` is one of :data:`METHODS`: the gradient family
    (:mod:`~selrel_jax.attribution.gradients`, ``"occlusion"``),
    ``"lrp.<composite>"`` (:mod:`~selrel_jax.attribution.composites`), a
    model-free ``"baseline.<name>"`` (:mod:`~selrel_jax.attribution.baselines`),
    or a ``Composite`` of your own. ``options`` are the
    keyword-only parameters of that function, with its defaults. LRP seeds
    the one-hot target (value 1), as Zennit does.

    ``precision``: matmul/conv precision (:data:`PRECISIONS`); ``"auto"`` is
    "highest" for LRP, JAX's default for gradients (:func:`default_precision`).

    Every argument is checked before anything runs, and a ``SelrelError``
    names the bad one: clips' rank, dtype and NaN/Inf values
    (``NonFiniteError``, with the count and the clips), the variables and the
    clip size against the model, the model's output, the target's shape,
    dtype and range, the options' types and ranges.
    """
    precision = options.pop("precision", "auto")
    entry, merged = _resolve(method, options)
    _check_precision(precision, method)
    clips = check_clips(clips)
    model, default = as_pure(model)
    variables = default if variables is None else variables
    apply_fn = _apply_fn(model, variables)
    if entry.family == "lrp":
        entry.build(**merged)  # the rules check their options (concrete here)
    static, arrays = _split_options(options, precision)
    logits, _ = inspect_forward(apply_fn, clips)
    target = check_target(target, clips.shape[0], check_logits(logits, clips.shape))
    if variables is None:  # apply_fn(clips): cached by its traced computation
        if not _hashable(method, static):
            explainer = make_explainer(model, method, precision=precision, **options)
            return explainer(None, clips, target)
        return _closure_run(apply_fn, clips, method, static)(clips, target, arrays)
    if _hashable(model, method, static):
        return _jitted(model, method, static)(variables, clips, target, arrays)
    return _jitted.__wrapped__(model, method, static)(variables, clips, target, arrays)


def _split_options(options: dict[str, Any], precision: str) -> tuple[tuple, dict[str, Any]]:
    """``(static, arrays)``: the options compiled into the explainer (hashable),
    and the array options handed to it as traced arguments (bounds, baseline,
    a PRNG key)."""
    arrays = {k: check_option_array(k, v) for k, v in options.items()
              if k in _ARRAY_OPTIONS and v is not None}  # fmt: skip
    if isinstance(options.get("key"), jax.Array | np.ndarray):
        arrays["key"] = options["key"]
    static = tuple(sorted((k, v) for k, v in options.items()
                          if k not in _ARRAY_OPTIONS and k not in arrays))  # fmt: skip
    return (*static, ("precision", precision)), arrays


def _hashable(*values: Any) -> bool:
    try:
        hash(values)
    except TypeError:
        return False
    return True
