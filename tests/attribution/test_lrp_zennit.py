"""Cross-check against Zennit, number for number, on a small 3D conv net (written
with selrel_jax.layers modules and, as a twin, with inline ``x + y``,
``jnp.mean``, ``jnp.tanh``, ``nn.avg_pool``: both must match) and on a thin
torchvision-layout R3D (stem conv+BN, BasicBlocks with BatchNorm and residual
sums, strided downsample blocks, global pooling, fc).

Zennit is not a dependency of this project: the tests skip unless it is
importable, and fail instead when ``SELREL_REQUIRE_ZENNIT=1`` (CI's
``.ci/run`` installs ``zennit==0.5.1`` and sets it). Locally:
``pip install --no-deps zennit==0.5.1`` and
``pytest tests/attribution/test_lrp_zennit.py``. Zennit imports torchvision,
which is not installed here, so ``tests.torch_reference_models.import_zennit``
stands in for it (Zennit only needs two class names from it for its ResNet
canonizer). The torch R3D is ``tests/torch_reference_models.py``'s, the one
the weight-import tests and ``bench/lrp.py`` use.
"""

from __future__ import annotations

import importlib
import importlib.util
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

if os.environ.get("SELREL_REQUIRE_ZENNIT") == "1":  # CI: a skip would hide the check
    import torch

    if importlib.util.find_spec("zennit") is None:
        raise ImportError("SELREL_REQUIRE_ZENNIT=1 but zennit is not installed")
else:
    torch = pytest.importorskip("torch")
    if importlib.util.find_spec("zennit") is None:
        pytest.skip("zennit is not installed (optional cross-check)", allow_module_level=True)

import selrel_jax as sr
from selrel_jax import models
from selrel_jax.layers import AvgPool, GlobalAvgPool, MaxPool, Sum
from tests.torch_reference_models import build, import_zennit

_zennit = import_zennit()  # with its stand-in for torchvision's two ResNet block classes
zc, Gradient = _zennit.composites, _zennit.Gradient
SequentialMergeBatchNorm, ZSum = _zennit.SequentialMergeBatchNorm, _zennit.Sum


class TorchNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.c1, self.b1 = torch.nn.Conv3d(3, 8, 3, padding=1), torch.nn.BatchNorm3d(8)
        self.p1 = torch.nn.MaxPool3d((1, 2, 2))
        self.c2 = torch.nn.Conv3d(8, 8, (2, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1))
        self.p2 = torch.nn.AvgPool3d((1, 2, 2))
        self.c3 = torch.nn.Conv3d(8, 8, 1)
        self.sum = ZSum()
        self.gap = torch.nn.AdaptiveAvgPool3d(1)
        self.fc = torch.nn.Linear(8, 5)
        self.r1, self.r2, self.r4 = (torch.nn.ReLU() for _ in range(3))
        self.r3 = torch.nn.Tanh()  # an activation Zennit passes relevance through

    def forward(self, x):
        x = self.p1(self.r1(self.b1(self.c1(x))))
        x = self.p2(self.r2(self.c2(x)))
        x = self.r4(self.sum(torch.stack([x, self.r3(self.c3(x))], dim=-1)))
        return self.fc(self.gap(x).flatten(1))


class FlaxNet(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.Conv(8, (3, 3, 3), padding=1, name="c1")(x)
        x = nn.BatchNorm(use_running_average=True, epsilon=1e-5, name="b1")(x)
        x = MaxPool((1, 2, 2))(nn.relu(x))
        x = nn.Conv(8, (2, 3, 3), strides=(1, 2, 2), padding=((0, 0), (1, 1), (1, 1)),
                    name="c2")(x)  # fmt: skip
        x = AvgPool((1, 2, 2))(nn.relu(x))
        x = nn.relu(Sum()(x, nn.tanh(nn.Conv(8, (1, 1, 1), name="c3")(x))))
        return nn.Dense(5, name="fc")(GlobalAvgPool()(x))


class InlineNet(nn.Module):
    """FlaxNet written without selrel_jax.layers or nn activations."""

    @nn.compact
    def __call__(self, x):
        x = nn.Conv(8, (3, 3, 3), padding=1, name="c1")(x)
        x = nn.BatchNorm(use_running_average=True, epsilon=1e-5, name="b1")(x)
        x = nn.max_pool(jnp.maximum(x, 0), (1, 2, 2), (1, 2, 2))
        x = nn.Conv(8, (2, 3, 3), strides=(1, 2, 2), padding=((0, 0), (1, 1), (1, 1)),
                    name="c2")(x)  # fmt: skip
        x = nn.avg_pool(jax.nn.relu(x), (1, 2, 2), (1, 2, 2))
        x = jax.nn.relu(x + jnp.tanh(nn.Conv(8, (1, 1, 1), name="c3")(x)))
        return nn.Dense(5, name="fc")(jnp.mean(x, axis=(1, 2, 3)))


def _convert(net):
    def conv(m):
        return {"kernel": jnp.asarray(m.weight.detach().numpy().transpose(2, 3, 4, 1, 0)),
                "bias": jnp.asarray(m.bias.detach().numpy())}  # fmt: skip

    b1 = net.b1
    return {
        "params": {
            "c1": conv(net.c1), "c2": conv(net.c2), "c3": conv(net.c3),
            "fc": {"kernel": jnp.asarray(net.fc.weight.detach().numpy().T),
                   "bias": jnp.asarray(net.fc.bias.detach().numpy())},
            "b1": {"scale": jnp.asarray(b1.weight.detach().numpy()),
                   "bias": jnp.asarray(b1.bias.detach().numpy())},
        },
        "batch_stats": {"b1": {"mean": jnp.asarray(b1.running_mean.numpy()),
                               "var": jnp.asarray(b1.running_var.numpy())}},
    }  # fmt: skip


CASES = {
    "lrp.epsilon_plus": (zc.EpsilonPlus, {}),
    "lrp.epsilon_plus_flat": (zc.EpsilonPlusFlat, {}),
    "lrp.epsilon_alpha2_beta1": (zc.EpsilonAlpha2Beta1, {}),
    "lrp.epsilon_alpha2_beta1_flat": (zc.EpsilonAlpha2Beta1Flat, {}),
    "lrp.epsilon_gamma_box": (zc.EpsilonGammaBox, {"low": -3.0, "high": 3.0}),
}


def _zennit_relevance(net, method, x, target):
    composite_cls, options = CASES[method]
    composite = composite_cls(canonizers=[SequentialMergeBatchNorm()], **options)
    with Gradient(model=net, composite=composite) as attributor:
        _, rel = attributor(x.clone().requires_grad_(True), torch.eye(5)[target])
    return rel.detach().numpy().transpose(0, 2, 3, 4, 1)


def _assert_matches(got, want):
    """Equal to 1e-4 of the largest |R|; prints the measured error and cosine."""
    scale = np.abs(want).max()
    g, w = got.astype(np.float64).ravel(), want.astype(np.float64).ravel()
    cosine = float(g @ w / (np.linalg.norm(g) * np.linalg.norm(w)))
    print(f"max |diff| / max |R| = {np.abs(got - want).max() / scale:.1e}, cosine = {cosine:.8f}")
    np.testing.assert_allclose(got, want, atol=1e-4 * scale)
    assert cosine > 1 - 1e-6


@pytest.mark.parametrize("method", list(CASES))
def test_composites_match_zennit(method):
    torch.manual_seed(0)
    net = TorchNet().eval()
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.Conv3d | torch.nn.Linear):
                m.bias.normal_(0, 0.1)
        net.b1.running_mean.normal_(0, 0.2)
        net.b1.running_var.uniform_(0.5, 1.5)
        net.b1.weight.uniform_(0.5, 1.5)
        net.b1.bias.normal_(0, 0.1)
    variables = _convert(net)
    x = torch.randn(2, 3, 4, 8, 8)
    xj = jnp.asarray(x.numpy().transpose(0, 2, 3, 4, 1))
    target = torch.tensor([1, 3])
    want = _zennit_relevance(net, method, x, target)
    for model in (FlaxNet(), InlineNet()):
        np.testing.assert_allclose(np.asarray(model.apply(variables, xj)),
                                   net(x).detach().numpy(), atol=1e-5)  # fmt: skip
        got = np.asarray(sr.explain(model, variables, xj, jnp.asarray(target.numpy()), method,
                                    **CASES[method][1]))  # fmt: skip
        _assert_matches(got, want)


@pytest.fixture(scope="module")
def r3d():
    """Thin r3d_18 (width 1/16: 4..32 channels) with Zennit's Sum on the residuals,
    random BatchNorm statistics, its weights imported into the Flax VideoResNet."""
    net = build("r3d_18", 5, 1 / 16, seed=0, residual_sum=ZSum)
    with torch.no_grad():
        net.fc.bias.normal_(0, 0.1, generator=torch.Generator().manual_seed(2))
    model, variables = models.from_torch_state_dict("r3d_18", net.state_dict())
    x = torch.randn(2, 3, 4, 16, 16, generator=torch.Generator().manual_seed(1))
    xj = jnp.asarray(x.numpy().transpose(0, 2, 3, 4, 1))
    logits = net(x).detach().numpy()
    np.testing.assert_allclose(np.asarray(model.apply(variables, xj)), logits,
                               atol=1e-5 * np.abs(logits).max())  # fmt: skip
    return net, model, variables, x, xj


@pytest.mark.parametrize("method", list(CASES))
def test_composites_match_zennit_on_r3d(r3d, method):
    net, model, variables, x, xj = r3d
    target = torch.tensor([1, 3])
    want = _zennit_relevance(net, method, x, target)
    got = np.asarray(sr.explain(model, variables, xj, jnp.asarray(target.numpy()), method,
                                **CASES[method][1]))  # fmt: skip
    _assert_matches(got, want)


# ---------------------------------------------------------------- lrp.dtd (torchexplain's DTD)

# Per-channel bounds: pixels 0 and 1 after a Kinetics-style normalisation.
_MEAN, _STD = np.array([0.43, 0.39, 0.38]), np.array([0.23, 0.22, 0.22])
DTD_LOW, DTD_HIGH = (-_MEAN / _STD).astype(np.float32), ((1 - _MEAN) / _STD).astype(np.float32)


def _zennit_dtd(net, x, target, n_classes):
    """DTD built in Zennit: ZBox on the first conv/linear layer, ZPlus on every other."""
    zrules, ztypes = (importlib.import_module(f"zennit.{m}") for m in ("rules", "types"))
    low, high = (torch.tensor(b).reshape(1, 3, 1, 1, 1) for b in (DTD_LOW, DTD_HIGH))
    layer_map = [*zc.layer_map_base(), (ztypes.Convolution, zrules.ZPlus()),
                 (torch.nn.Linear, zrules.ZPlus())]  # fmt: skip
    composite = zc.SpecialFirstLayerMapComposite(
        layer_map=layer_map,
        first_map=[(ztypes.Linear, zrules.ZBox(low, high))],
        canonizers=[SequentialMergeBatchNorm()],
    )
    with Gradient(model=net, composite=composite) as attributor:
        _, rel = attributor(x.clone().requires_grad_(True), torch.eye(n_classes)[target])
    return rel.detach().numpy().transpose(0, 2, 3, 4, 1)


def _cosine(got, want):
    g, w = got.astype(np.float64).ravel(), want.astype(np.float64).ravel()
    return float(g @ w / (np.linalg.norm(g) * np.linalg.norm(w)))


class _C3DSmallPooled(torch.nn.Module):
    """The C3D-small twin with its global mean as a module Zennit sees (AdaptiveAvgPool3d
    gets Zennit's Norm rule, as the Flax model's mean gets ours)."""

    def __init__(self, twin):
        super().__init__()
        self.twin, self.gap = twin, torch.nn.AdaptiveAvgPool3d(1)

    def forward(self, x):
        t = self.twin
        for i in range(1, 5):
            x = torch.relu(getattr(t, f"conv{i}")(x))
            x = t.pools[i](x) if i in t.pools else x
        return t.fc(self.gap(x).flatten(1))


def test_dtd_matches_zennit_on_c3d_small():
    twin = build("c3d_small", 5, 0.25, seed=3)
    with torch.no_grad():
        for m in twin.modules():
            if isinstance(m, torch.nn.Conv3d | torch.nn.Linear):
                m.bias.normal_(0, 0.05, generator=torch.Generator().manual_seed(4))
    net = _C3DSmallPooled(twin).eval()
    model, variables = models.from_torch_state_dict("c3d_small", twin.state_dict(), width=0.25,
                                                    clip_size=(4, 16, 16))  # fmt: skip
    g = torch.Generator().manual_seed(5)
    x = torch.rand(2, 3, 4, 16, 16, generator=g) * torch.tensor(DTD_HIGH - DTD_LOW).reshape(
        1, 3, 1, 1, 1) + torch.tensor(DTD_LOW).reshape(1, 3, 1, 1, 1)  # fmt: skip
    xj = jnp.asarray(x.numpy().transpose(0, 2, 3, 4, 1))
    np.testing.assert_allclose(np.asarray(model.apply(variables, xj)), net(x).detach().numpy(),
                               atol=1e-5)  # fmt: skip
    target = torch.tensor([1, 3])
    want = _zennit_dtd(net, x, target, 5)
    got = np.asarray(sr.explain(model, variables, xj, jnp.asarray(target.numpy()), "lrp.dtd",
                                low=DTD_LOW, high=DTD_HIGH))  # fmt: skip
    print(f"c3d_small dtd cosine = {_cosine(got, want):.8f}")
    assert _cosine(got, want) >= 0.99999
    _assert_matches(got, want)


def test_dtd_matches_zennit_on_r3d(r3d):
    net, model, variables, x, xj = r3d
    target = torch.tensor([1, 3])
    want = _zennit_dtd(net, x, target, 5)
    got = np.asarray(sr.explain(model, variables, xj, jnp.asarray(target.numpy()), "lrp.dtd",
                                low=DTD_LOW, high=DTD_HIGH))  # fmt: skip
    print(f"r3d_18 dtd cosine = {_cosine(got, want):.8f}")
    assert _cosine(got, want) >= 0.99999
    _assert_matches(got, want)


# ---------------------------------------------------------------- grouped and depthwise convs


class TorchGroupedNet(torch.nn.Module):
    """X3D's kinds of convolution: depthwise with a channel multiplier (3 -> 6, groups 3),
    depthwise strided with BatchNorm (groups 6), grouped pointwise (groups 2)."""

    def __init__(self):
        super().__init__()
        self.c1 = torch.nn.Conv3d(3, 6, 3, padding=1, groups=3)
        self.c2 = torch.nn.Conv3d(6, 6, 3, stride=(1, 2, 2), padding=1, groups=6, bias=False)
        self.b2 = torch.nn.BatchNorm3d(6)
        self.c3 = torch.nn.Conv3d(6, 8, 1, groups=2)
        self.gap = torch.nn.AdaptiveAvgPool3d(1)
        self.fc = torch.nn.Linear(8, 5)
        self.r1, self.r2, self.r3 = (torch.nn.ReLU() for _ in range(3))

    def forward(self, x):
        x = self.r2(self.b2(self.c2(self.r1(self.c1(x)))))
        return self.fc(self.gap(self.r3(self.c3(x))).flatten(1))


class FlaxGroupedNet(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Conv(6, (3, 3, 3), padding=1, feature_group_count=3, name="c1")(x))
        x = nn.Conv(6, (3, 3, 3), (1, 2, 2), padding=1, feature_group_count=6, use_bias=False,
                    name="c2")(x)  # fmt: skip
        x = nn.relu(nn.BatchNorm(use_running_average=True, epsilon=1e-5, name="b2")(x))
        x = nn.relu(nn.Conv(8, (1, 1, 1), feature_group_count=2, name="c3")(x))
        return nn.Dense(5, name="fc")(GlobalAvgPool()(x))


def _grouped_pair():
    from tests.attribution.conformance.twin import randomise_biases_and_batch_norm

    torch.manual_seed(7)
    net = TorchGroupedNet().eval()
    randomise_biases_and_batch_norm((net.c1, net.c3, net.fc), net.b2)

    def tensor(t, *axes):
        return jnp.asarray(t.detach().numpy().transpose(*axes) if axes else t.detach().numpy())

    params = {f"c{i}": {"kernel": tensor(getattr(net, f"c{i}").weight, 2, 3, 4, 1, 0)}
              for i in (1, 2, 3)}  # fmt: skip
    params["c1"]["bias"], params["c3"]["bias"] = tensor(net.c1.bias), tensor(net.c3.bias)
    params["fc"] = {"kernel": tensor(net.fc.weight, 1, 0), "bias": tensor(net.fc.bias)}
    params["b2"] = {"scale": tensor(net.b2.weight), "bias": tensor(net.b2.bias)}
    stats = {"b2": {"mean": tensor(net.b2.running_mean), "var": tensor(net.b2.running_var)}}
    return net, {"params": params, "batch_stats": stats}


def _grouped_rules():
    """(our conv rule, Zennit's, whether it is the first layer's only): each rule the
    engine has for a convolution, the other convs z+ when only the first gets it."""
    zrules = importlib.import_module("zennit.rules")
    from selrel_jax.attribution import rules

    low, high = -3.0, 3.0
    return {
        "epsilon": (rules.Epsilon(0.01), zrules.Epsilon(0.01), False),
        "zplus": (rules.ZPlus(), zrules.ZPlus(), False),
        "gamma": (rules.Gamma(0.25), zrules.Gamma(0.25), False),
        "alpha2_beta1": (rules.AlphaBeta(2.0, 1.0), zrules.AlphaBeta(2.0, 1.0), False),
        "zbox": (rules.ZBox(low, high), zrules.ZBox(low, high), True),
        "flat": (rules.Flat(), zrules.Flat(), True),
        "wsquare": (rules.WSquare(), zrules.WSquare(), True),
    }


@pytest.mark.parametrize("fast", [False, True], ids=["lax_conv", "fast_conv"])
@pytest.mark.parametrize("rule", list(_grouped_rules()))
def test_grouped_and_depthwise_convs_match_zennit_in_every_rule(rule, fast, monkeypatch):
    """Each conv rule through grouped convs, as lax's convolution and (every size
    let through) as selrel_jax._conv's fast forms, which must then run."""
    from selrel_jax import _conv
    from selrel_jax.attribution import Composite, rules

    fast_calls = []
    if fast:
        monkeypatch.setattr(_conv, "MIN_FAST_ELEMENTS", 0)
        real_fast = _conv._fast
        monkeypatch.setattr(_conv, "_fast", lambda *a: fast_calls.append(a) or real_fast(*a))

    ours, theirs, first_only = _grouped_rules()[rule]
    ztypes = importlib.import_module("zennit.types")
    zrules = importlib.import_module("zennit.rules")
    net, variables = _grouped_pair()
    # Another clip length for the fast forms: a new trace, not the lax case's compiled one.
    frames = 6 if fast else 4
    x = torch.randn(2, 3, frames, 8, 8, generator=torch.Generator().manual_seed(8))
    xj = jnp.asarray(x.numpy().transpose(0, 2, 3, 4, 1))
    model = FlaxGroupedNet()
    np.testing.assert_allclose(np.asarray(model.apply(variables, xj)), net(x).detach().numpy(),
                               atol=1e-5)  # fmt: skip
    conv_rule, zconv_rule = (rules.ZPlus(), zrules.ZPlus()) if first_only else (ours, theirs)
    composite = Composite(layer_map=((nn.Conv, conv_rule), (nn.Dense, rules.Epsilon())),
                          first=ours if first_only else None)  # fmt: skip
    layer_map = [*zc.layer_map_base(), (ztypes.Convolution, zconv_rule),
                 (torch.nn.Linear, zrules.Epsilon())]  # fmt: skip
    first_map = [(ztypes.Convolution, theirs)] if first_only else []
    zcomposite = zc.SpecialFirstLayerMapComposite(
        layer_map=layer_map, first_map=first_map, canonizers=[SequentialMergeBatchNorm()]
    )
    target = torch.tensor([1, 3])
    with Gradient(model=net, composite=zcomposite) as attributor:
        _, rel = attributor(x.clone().requires_grad_(True), torch.eye(5)[target])
    want = rel.detach().numpy().transpose(0, 2, 3, 4, 1)
    got = np.asarray(sr.explain(model, variables, xj, jnp.asarray(target.numpy()), composite))
    _assert_matches(got, want)
    assert bool(fast_calls) == fast
    assert all(config.groups > 1 for _, _, config in fast_calls)
