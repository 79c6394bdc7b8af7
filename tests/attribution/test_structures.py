"""Softmaxes and normalisations found on the traced computation (however they are
written: jax.nn, Flax linen, Equinox, by hand), and what the engine does with them
under AttnLRP's rules, against NumPy oracles of the rules' formulas."""

from __future__ import annotations

import dataclasses

import equinox as eqx
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from selrel_jax.attribution import Composite, composites, lrp, rules
from selrel_jax.attribution._graph import analyse, flatten
from selrel_jax.attribution._structures import find_structures

X = jax.random.normal(jax.random.key(0), (2, 6, 8))
EPS = 1e-9
# AttnLRP's own rules with dense layers under Epsilon, no first-layer rule: the
# NumPy oracles below are each rule's formula, one layer after the other.
ATTN = Composite(
    layer_map=(*composites.attn_layer_map(EPS), (nn.Dense, rules.Epsilon(EPS))), stabilizer=EPS
)


def _found(fn):
    graph = flatten(jax.make_jaxpr(fn)(X), 0)
    found = find_structures(graph, analyse(graph))
    return len(found.softmaxes), len(found.normalisers)


def _linen(module):
    variables = module.init(jax.random.key(1), X)
    return lambda x: module.apply(variables, x)


def _by_hand_layer_norm(x):
    centred = x - x.mean(-1, keepdims=True)
    return centred / jnp.sqrt(jnp.mean(centred**2, -1, keepdims=True) + 1e-5)


@pytest.mark.parametrize(
    ("fn", "want"),
    [
        (lambda x: jax.nn.softmax(x, axis=-1), (1, 0)),
        (lambda x: jnp.exp(x) / jnp.sum(jnp.exp(x), axis=1, keepdims=True), (1, 0)),
        (lambda x: nn.softmax(x @ x.transpose(0, 2, 1)), (1, 0)),
        (_linen(nn.LayerNorm()), (0, 1)),
        (_linen(nn.RMSNorm()), (0, 1)),
        (_linen(nn.GroupNorm(num_groups=2)), (0, 1)),
        (jax.vmap(jax.vmap(eqx.nn.LayerNorm(8))), (0, 1)),
        (_by_hand_layer_norm, (0, 1)),
        (lambda x: _by_hand_layer_norm(x.mean(1)), (0, 1)),  # a pooled activation's
        # not normalisations: a gate computed by layers, a linear statistic
        (lambda x: x * jax.nn.sigmoid(x.mean(1, keepdims=True) @ jnp.ones((8, 8))), (0, 0)),
        (lambda x: x * x.mean(-1, keepdims=True), (0, 0)),
    ],
    ids=["jax.nn", "exp-sum", "linen-qk", "LayerNorm", "RMSNorm", "GroupNorm", "eqx-LayerNorm",
         "by-hand-div", "pooled", "gate", "linear-statistic"],
)  # fmt: skip
def test_softmaxes_and_normalisations_are_found_however_written(fn, want):
    assert _found(fn) == want


def _explain(apply_fn, params, x, composite=ATTN, target=(0, 1)):
    return np.asarray(lrp(apply_fn, composite)(params, x, jnp.asarray(target)), np.float64)


def _epsilon(a, w, R):
    z = a @ w
    return a * ((R / (z + EPS * np.where(z >= 0, 1, -1))) @ w.T)


def _one_hot(target, logits):
    return np.eye(logits.shape[-1])[list(target)]


def test_softmax_then_dense_matches_the_formulas():
    """R_z = z * (R_s - s * sum R_s) (AttnLRP's softmax), dense layers epsilon."""
    rng = np.random.default_rng(0)
    p = {"w": rng.normal(size=(4, 5)).astype(np.float32),
         "v": rng.normal(size=(5, 3)).astype(np.float32)}  # fmt: skip
    x = rng.normal(size=(2, 4)).astype(np.float32)

    def apply_fn(p, x):
        return jax.nn.softmax(x @ p["w"], axis=-1) @ p["v"]

    w, v = p["w"].astype(np.float64), p["v"].astype(np.float64)
    z = x @ w
    s = np.exp(z) / np.exp(z).sum(-1, keepdims=True)
    R_s = _epsilon(s, v, _one_hot((0, 1), s @ v))
    R_z = z * (R_s - s * R_s.sum(-1, keepdims=True))
    np.testing.assert_allclose(_explain(apply_fn, p, x), _epsilon(x, w, R_z), rtol=2e-4, atol=1e-6)


def _attention(fused: bool, causal: bool):
    """Two-head attention over 6 tokens of 8 features: jax.nn.dot_product_attention, or
    the same written as einsums, a softmax and (causal) a mask of -inf logits."""

    def apply_fn(p, x):
        n, tokens, _ = x.shape
        q, k, v = ((x @ p[name]).reshape(n, tokens, 2, 4) for name in ("q", "k", "v"))
        if fused:
            out = jax.nn.dot_product_attention(q, k, v, is_causal=causal)
        else:
            logits = jnp.einsum("nqhd,nkhd->nhqk", q, k) / jnp.sqrt(4.0)
            if causal:
                logits = jnp.where(jnp.tril(jnp.ones((tokens, tokens), bool)), logits, -jnp.inf)
            out = jnp.einsum("nhqk,nkhd->nqhd", jax.nn.softmax(logits, axis=-1), v)
        return out.reshape(n, tokens, 8).mean(1) @ p["head"]

    return apply_fn


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("composite", [composites.attn(), composites.cp()], ids=["attn", "cp"])
def test_jax_nn_dot_product_attention_is_the_einsum_forms_relevance(composite, causal):
    rng = np.random.default_rng(4)
    p = {name: rng.normal(size=(8, 8)).astype(np.float32) for name in ("q", "k", "v")}
    p["head"] = rng.normal(size=(8, 3)).astype(np.float32)
    x = np.asarray(X)
    logits = [_attention(fused, causal)(p, x) for fused in (True, False)]
    np.testing.assert_allclose(logits[0], logits[1], rtol=1e-5, atol=1e-5)
    fused, by_hand = (_explain(_attention(f, causal), p, x, composite) for f in (True, False))
    assert np.isfinite(fused).all() and np.abs(fused).sum() > 0
    np.testing.assert_allclose(fused, by_hand, rtol=0, atol=1e-5 * np.abs(by_hand).max())


def test_rms_norm_passes_relevance_and_a_gate_held_constant_by_path_takes_none():
    """RMSNorm without bias: the identity rule (statistics held constant). The product
    named in the path map holds its sigmoid gate constant: all relevance to x @ a."""
    rng = np.random.default_rng(1)

    class Net(nn.Module):
        @nn.compact
        def __call__(self, x):
            h = nn.Dense(4, use_bias=False, name="a")(x)
            gate = nn.sigmoid(nn.Dense(4, use_bias=False, name="b")(x))
            h = nn.RMSNorm(epsilon=1e-6, use_scale=False, name="norm")(h)
            return nn.Dense(3, use_bias=False, name="head")(_Gate(name="gate")(h, gate))

    x = jnp.asarray(rng.normal(size=(2, 5)), jnp.float32)
    variables = Net().init(jax.random.key(2), x)
    held = Composite(ATTN.layer_map, (("gate", rules.Uniform(EPS, gate_constant=True)),),
                     stabilizer=EPS)  # fmt: skip
    p = jax.tree.map(lambda v: np.asarray(v, np.float64), variables["params"])
    h = np.asarray(x, np.float64) @ p["a"]["kernel"]
    normed = h / np.sqrt(np.mean(h**2, -1, keepdims=True) + 1e-6)
    gate = 1 / (1 + np.exp(-(np.asarray(x, np.float64) @ p["b"]["kernel"])))
    R_prod = _epsilon(
        normed * gate, p["head"]["kernel"], _one_hot((0, 1), normed @ np.eye(4)[:, :3])
    )
    want = _epsilon(np.asarray(x, np.float64), p["a"]["kernel"], R_prod)  # norm: identity
    np.testing.assert_allclose(_explain(Net(), variables, x, held), want, rtol=2e-4, atol=1e-6)


class _Gate(nn.Module):
    @nn.compact
    def __call__(self, h, gate):
        return h * gate


class _Block(nn.Module):
    @nn.compact
    def __call__(self, h, _):
        return h + nn.SelfAttention(2, name="attn")(nn.LayerNorm(name="norm")(h)), None


class _Stack(nn.Module):
    kind: str

    @nn.compact
    def __call__(self, x):
        h = nn.Dense(8, name="embed")(x)
        if self.kind == "scan":
            stack = nn.scan(_Block, variable_axes={"params": 0}, split_rngs={"params": True},
                            length=2)  # fmt: skip
            h, _ = stack(name="blocks")(h, None)
        else:
            block = nn.remat(_Block) if self.kind == "remat" else _Block
            for i in range(2):
                h, _ = block(name=f"block{i}")(h, None)
        return nn.Dense(3, name="head")(h.mean(1))


@pytest.mark.slow  # 12 s on two cores: three attention blocks compiled
def test_remat_blocks_are_looked_through():
    plain, remat = _Stack("plain"), _Stack("remat")
    variables = plain.init(jax.random.key(3), X)
    want = lrp(plain, composites.attn())(variables, X, jnp.array([0, 1]))
    got = lrp(remat, composites.attn())(variables, X, jnp.array([0, 1]))
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-7)


@pytest.mark.slow  # 25 s on two cores: two attention stacks compiled
def test_nn_scan_blocks_are_written_out_step_by_step():
    """nn.scan over two blocks (stacked parameters) = the same blocks in a for loop."""
    scanned, plain = _Stack("scan"), _Stack("plain")
    variables = scanned.init(jax.random.key(3), X)
    p = variables["params"]
    unstacked = {k: v for k, v in p.items() if k != "blocks"}
    for i in range(2):
        unstacked[f"block{i}"] = jax.tree.map(lambda leaf, i=i: leaf[i], p["blocks"])
    want = lrp(plain, composites.attn())({"params": unstacked}, X, jnp.array([0, 1]))
    got = lrp(scanned, composites.attn())(variables, X, jnp.array([0, 1]))
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-7)


def test_a_reversed_scan_is_its_loop_written_out():
    """Scanned inputs sliced per step, the outputs stacked (a ``jnp.stack`` of
    activations is a shape operation), the carry threaded, in reverse."""

    def step(h, w):
        h = jax.nn.relu(h @ w)
        return h, h.sum(-1)

    def looped(ws, x):
        outs = []
        for i in reversed(range(3)):
            x, out = step(x, ws[i])
            outs.insert(0, out)
        return x + jnp.stack(outs, 1) @ jnp.ones((3, 4))

    def scanned_fn(ws, x):
        h, outs = jax.lax.scan(step, x, ws, reverse=True)
        return h + outs.T @ jnp.ones((3, 4))

    ws = jax.random.normal(jax.random.key(4), (3, 4, 4))
    x = jax.random.normal(jax.random.key(5), (2, 4))
    want = lrp(looped, composites.epsilon())(ws, x, jnp.array([0, 1]))
    got = lrp(scanned_fn, composites.epsilon())(ws, x, jnp.array([0, 1]))
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-7)


@dataclasses.dataclass(frozen=True)
class _Ledger(rules.Rule):
    """``inner``, recording the relevance each layer receives and hands on."""

    inner: rules.Rule
    book: list = dataclasses.field(default_factory=list, compare=False, hash=False)

    def relevance(self, call, relevance):
        out = self.inner.relevance(call, relevance)
        given = sum(jnp.sum(r) for r in out)
        name = type(self.inner).__name__
        jax.debug.callback(lambda a, b: self.book.append((name, float(a), float(b))),
                           jnp.sum(relevance), given)  # fmt: skip
        return out


@pytest.mark.slow  # a two-block ViT, about 10 s on two cores
@pytest.mark.parametrize("method", ["attn", "cp"])
def test_vit_relevance_is_conserved_layer_by_layer(method):
    """With every bias 0, each AttnLRP layer hands on the relevance it receives (to
    1e-4 of the target's): Flat, Epsilon, Norm, Uniform, the normalisations'
    identity; AttnLRP's softmax does not (its bias term, Prop. 3.1), so under
    ``lrp.attn`` the input relevance differs from 1, under ``lrp.cp`` (no
    relevance through the softmax) it is 1 to 1e-3."""
    from tests.attribution.conformance import vit

    w = {k: (np.zeros_like(v) if k.endswith("bias") or k == "pos" else v)
         for k, v in vit.weights().items()}  # fmt: skip
    base = getattr(composites, method)()
    book: list = []
    ledgers = [(types, _Ledger(rule, book)) for types, rule in base.layer_map]
    ledgers.append((composites.NORM_TYPES, _Ledger(rules.Norm(1e-6), book)))
    composite = Composite(tuple(ledgers), first=_Ledger(base.first, book))
    params = jax.tree.map(jnp.asarray, w)
    got = lrp(vit.jax_apply, composite)(params, jnp.asarray(vit.clips()), jnp.array([vit.TARGET]))
    kinds = {name for name, _, _ in book}
    assert {"Flat", "Epsilon", "Norm", "Uniform", "AttnSoftmax"} <= kinds, kinds
    for name, received, handed in book:
        if name != "AttnSoftmax":
            assert abs(handed - received) <= 1e-4, (name, received, handed)
    total = float(jnp.sum(got))
    if method == "cp":
        assert abs(total - 1) <= 1e-3, total
    else:
        assert abs(total - 1) > 1e-3, total  # the softmax's bias term absorbs some
