"""Activations as the Pass rule, by swapping the activation functions while a
relevance pass is traced. Private: the engine's only way in is
:func:`activations_as_pass`.

Models call activations functionally (``nn.relu(x)``). Plain autodiff would
multiply the backward quantity by ``relu'(z)`` (or ``tanh'(z)`` ...), while
LRP's Pass rule hands relevance through unchanged. So while the forward pass is
traced, the activation functions of ``jax.nn`` and ``flax.linen`` are replaced
by wrappers with the same forward and an identity backward. The swap is
process-wide (a module attribute), reference counted across threads, and
undone when the last pass leaves; the wrappers act only in a thread that is
inside :func:`activations_as_pass` and only while its ``active()`` says so,
and call the original function everywhere else. Outputs of ReLU-like
activations (non-negative by construction) are reported to the pass, so rules
above them can skip work on negative inputs.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from typing import Any

import flax.linen as nn
import jax

from selrel_jax.attribution._model_checks import ENGINE_SCOPE

__all__ = ["activations_as_pass"]

_ACTIVATIONS = (
    "relu", "relu6", "leaky_relu", "elu", "celu", "selu", "gelu", "silu", "swish",
    "softplus", "sigmoid", "hard_sigmoid", "hard_silu", "hard_swish", "hard_tanh",
    "tanh", "log_sigmoid", "soft_sign", "mish",
)  # fmt: skip
_NONNEG_ACTIVATIONS = frozenset({"relu", "relu6", "softplus", "sigmoid", "hard_sigmoid"})

_LOCAL = threading.local()  # .handler: (tag_nonnegative, active) of this thread's pass
_PATCH_LOCK = threading.RLock()
_PATCH_DEPTH = [0]
_ORIGINALS: list[tuple[Any, str, Any]] = []


def _handler() -> tuple[Callable[[Any], None], Callable[[], bool]] | None:
    handler = getattr(_LOCAL, "handler", None)
    return handler if handler is not None and handler[1]() else None


def _pass_wrapper(name: str, original: Callable) -> Callable:
    def activation(x, *args, **kwargs):
        handler = _handler()
        if handler is None:
            return original(x, *args, **kwargs)

        @jax.custom_vjp
        def act(v):
            return original(v, *args, **kwargs)

        act.defvjp(lambda v: (original(v, *args, **kwargs), None), lambda _, g: (g,))
        with jax.named_scope(ENGINE_SCOPE):  # a rule covers it: no unseen nonlinearity
            out = act(x)
        if name in _NONNEG_ACTIVATIONS:
            handler[0](out)
        return out

    activation.__wrapped__ = original
    activation.__doc__ = original.__doc__
    return activation


def _namespaces() -> tuple[Any, ...]:
    import flax.linen.activation as flax_activation

    return (jax.nn, nn, flax_activation)


def _install() -> None:
    # One wrapper per original function: jax.nn.relu and flax.linen.relu are the
    # same object, so both names get the same wrapper.
    wrappers: dict[int, Callable] = {}
    for ns in _namespaces():
        for name in _ACTIVATIONS:
            original = getattr(ns, name, None)
            if original is None:
                continue
            wrapper = wrappers.setdefault(id(original), _pass_wrapper(name, original))
            _ORIGINALS.append((ns, name, original))
            setattr(ns, name, wrapper)


def _restore() -> None:
    while _ORIGINALS:
        ns, name, original = _ORIGINALS.pop()
        setattr(ns, name, original)


@contextlib.contextmanager
def _swapped() -> Iterator[None]:
    with _PATCH_LOCK:
        if _PATCH_DEPTH[0] == 0:
            _install()
        _PATCH_DEPTH[0] += 1
    try:
        yield
    finally:
        with _PATCH_LOCK:
            _PATCH_DEPTH[0] -= 1
            if _PATCH_DEPTH[0] == 0:
                _restore()


@contextlib.contextmanager
def activations_as_pass(
    tag_nonnegative: Callable[[Any], None], active: Callable[[], bool] = lambda: True
) -> Iterator[None]:
    """While inside, activations called in this thread have an identity backward
    (whenever ``active()`` is True); ReLU-like outputs go to ``tag_nonnegative``."""
    previous = getattr(_LOCAL, "handler", None)
    _LOCAL.handler = (tag_nonnegative, active)
    try:
        with _swapped():
            yield
    finally:
        _LOCAL.handler = previous
