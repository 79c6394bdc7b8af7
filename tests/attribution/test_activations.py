"""Activations as the Pass rule: relevance passes through unchanged, ReLU
outputs let rules skip their negative passes, and the swapped functions never
leak out of the trace."""

from __future__ import annotations

import threading

import flax.linen as nn
import flax.linen.activation as flax_activation
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from selrel_jax.attribution import Composite, composites, lrp, rules
from selrel_jax.attribution._activations import _ACTIVATIONS, activations_as_pass

NAMESPACES = {"jax.nn": jax.nn, "flax.linen": nn, "flax.linen.activation": flax_activation}


class Mlp(nn.Module):
    activation: str = "relu"

    @nn.compact
    def __call__(self, x):
        h = getattr(nn, self.activation)(nn.Dense(6, name="fc1")(x))
        return nn.Dense(3, name="fc2")(h)


def _stab(z):
    return z + 1e-6 * np.where(z >= 0, 1.0, -1.0)


def test_activation_passes_relevance_where_relu_input_was_negative(normal_clips, random_variables):
    """Flat on the top layer hands relevance to dead ReLU units; Pass must keep it
    (plain autodiff would multiply it by relu'(z) = 0)."""
    x = normal_clips((1, 5), 6)
    model = Mlp("relu")
    v = random_variables(model, x, 7)
    comp = Composite(path_map=(("fc2", rules.Flat()), ("fc1", rules.Epsilon(1e-6))))
    rel = np.asarray(lrp(model, comp)(v, x, jnp.array([2])))[0]
    W1, b1 = np.asarray(v["params"]["fc1"]["kernel"]), np.asarray(v["params"]["fc1"]["bias"])
    a = np.asarray(x[0], np.float64)
    z1 = a @ W1 + b1
    assert (z1 < 0).any() and (z1 > 0).any()
    R2 = np.zeros(3)
    R2[2] = 1.0
    R1 = np.ones((6, 3)) @ (R2 / _stab(np.full(3, 6.0)))  # Flat: 1/6 to every hidden unit
    want = a * (W1 @ (R1 / _stab(z1)))  # Pass through the ReLU, then Epsilon
    np.testing.assert_allclose(rel, want, atol=1e-5 * np.abs(want).max())
    masked = a * (W1 @ (R1 * (z1 > 0) / _stab(z1)))
    assert np.abs(masked - want).max() > 1e-3 * np.abs(want).max()


def test_tanh_passes_relevance_unchanged(normal_clips, random_variables):
    x = normal_clips((1, 5), 8)
    model = Mlp("tanh")
    v = random_variables(model, x, 9)
    rel = np.asarray(
        lrp(model, composites.uniform(rules.Epsilon(), rules.Epsilon()))(v, x, jnp.array([0]))
    )[0]
    p = jax.tree.map(lambda t: np.asarray(t, np.float64), v["params"])
    a = np.asarray(x[0], np.float64)
    z1 = a @ p["fc1"]["kernel"] + p["fc1"]["bias"]
    h = np.tanh(z1)
    z2 = h @ p["fc2"]["kernel"] + p["fc2"]["bias"]
    R1 = h * (p["fc2"]["kernel"] @ (np.eye(3)[0] / _stab(z2)))
    want = a * (p["fc1"]["kernel"] @ (R1 / _stab(z1)))
    np.testing.assert_allclose(rel, want, atol=1e-5 * np.abs(want).max())


def _namespace_functions():
    return {(ns, name): getattr(mod, name) for ns, mod in NAMESPACES.items()
            for name in _ACTIVATIONS if hasattr(mod, name)}  # fmt: skip


ORIGINALS = _namespace_functions()  # at import, before any pass was traced
SEEN: list[dict] = []


class Spy(nn.Module):
    """Records, while traced, which namespace functions are the originals."""

    @nn.compact
    def __call__(self, x):
        SEEN.append({key: getattr(NAMESPACES[key[0]], key[1]) is fn
                     for key, fn in ORIGINALS.items()})  # fmt: skip
        h = nn.relu(nn.Dense(4, name="fc1")(x))
        return nn.Dense(2, name="fc2")(jax.nn.tanh(h))


def _assert_restored():
    leaked = [f"{ns}.{name}" for (ns, name), fn in ORIGINALS.items()
              if getattr(NAMESPACES[ns], name) is not fn]  # fmt: skip
    assert not leaked, f"activation wrappers left installed: {leaked}"


def test_activations_are_swapped_during_the_trace_and_restored_after(normal_clips):
    """Each namespace's function is checked by identity against its original:
    jax.nn.relu and flax.linen.relu are one object, so comparing the two names
    with each other cannot see a leak."""
    assert ORIGINALS[("jax.nn", "relu")] is ORIGINALS[("flax.linen", "relu")]
    x = normal_clips((1, 3), 1)
    v = Spy().init(jax.random.key(0), x)
    SEEN.clear()
    jax.jit(lrp(Spy(), composites.epsilon_plus()))(v, x, jnp.array([0]))
    # The plan's abstract trace (which looks for nonlinearities LRP can't see) and
    # the relevance pass both see the wrappers, none of the originals.
    assert len(SEEN) == 2 and not any(SEEN[0].values()) and not any(SEEN[1].values())
    _assert_restored()


class FailsInThePass(nn.Module):
    """Raises only while the activations are swapped (from the plan's trace on)."""

    @nn.compact
    def __call__(self, x):
        if nn.relu is not ORIGINALS[("flax.linen", "relu")]:
            raise RuntimeError("model bug")
        return nn.relu(x)


def test_activations_are_restored_when_the_trace_fails(normal_clips):
    x = normal_clips((1, 3), 1)
    with pytest.raises(RuntimeError, match="model bug"):
        lrp(FailsInThePass(), composites.epsilon_plus())({}, x, jnp.array([0]))
    _assert_restored()


def test_wrappers_act_only_in_the_thread_inside_the_pass():
    """While one thread traces a pass, another thread's activations keep their gradient."""
    inside, outside_done = threading.Event(), threading.Event()
    tagged: list = []
    grads: dict = {}

    def other_thread():
        inside.wait(10)
        grads["other"] = jax.grad(lambda z: jax.nn.relu(z))(-1.0)
        outside_done.set()

    worker = threading.Thread(target=other_thread)
    worker.start()
    with activations_as_pass(tagged.append):
        inside.set()
        outside_done.wait(10)
        grads["inside"] = jax.grad(lambda z: jax.nn.relu(z))(-1.0)
    worker.join()
    assert float(grads["other"]) == 0.0  # relu'(-1): the original function
    assert float(grads["inside"]) == 1.0  # Pass: identity backward
    assert len(tagged) == 1  # relu's output, tagged non-negative
    _assert_restored()


def _count(jaxpr, name):
    total = 0
    for eqn in jaxpr.eqns:
        total += eqn.primitive.name == name
        for param in eqn.params.values():
            inner = getattr(param, "jaxpr", None)
            if inner is not None and hasattr(inner, "eqns"):
                total += _count(inner, name)
            elif hasattr(param, "eqns"):
                total += _count(param, name)
    return total


@pytest.mark.filterwarnings("ignore::selrel_jax.attribution.UnseenNonlinearityWarning")
def test_negative_passes_are_skipped_after_relu(normal_clips, random_variables):
    class Net(nn.Module):
        visible: bool

        @nn.compact
        def __call__(self, x):
            h = nn.Conv(4, (3, 3), padding=1, name="c1")(x)
            h = nn.relu(h) if self.visible else jnp.maximum(h, 0)
            h = nn.Conv(4, (3, 3), padding=1, name="c2")(h)
            return nn.Dense(2, name="fc")(h.reshape(x.shape[0], -1))

    x = normal_clips((1, 4, 4, 2), 10)
    v = random_variables(Net(True), x, 11)
    comp = composites.uniform(rules.Gamma(0.25), rules.Epsilon())
    fns = [jax.jit(lrp(Net(flag), comp)) for flag in (True, False)]
    a, b = (np.asarray(f(v, x, jnp.array([1]))) for f in fns)
    np.testing.assert_allclose(a, b, atol=1e-5 * np.abs(b).max())
    convs = [
        _count(jax.make_jaxpr(lrp(Net(flag), comp))(v, x, jnp.array([1])).jaxpr,
               "conv_general_dilated")
        for flag in (True, False)
    ]  # fmt: skip
    assert convs[0] < convs[1], convs
