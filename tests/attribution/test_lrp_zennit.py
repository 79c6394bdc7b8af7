"""Cross-check against Zennit, number for number (optional: skipped unless the
``zennit`` package is importable; it is not a dependency of this project).

Run with ``pip install --target /tmp/zn zennit --no-deps`` and
``PYTHONPATH=/tmp/zn pytest tests/test_lrp_zennit.py``. Zennit imports
torchvision, which is not installed here, so a stub stands in for it (Zennit
only needs two class names from it for its ResNet canonizer).
"""

from __future__ import annotations

import importlib.util
import sys
import types

import flax.linen as nn
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
if importlib.util.find_spec("zennit") is None:
    pytest.skip("zennit is not installed (optional cross-check)", allow_module_level=True)
_STUB_NAMES = ("torchvision", "torchvision.models", "torchvision.models.resnet")
_stubbed = importlib.util.find_spec("torchvision") is None
if _stubbed:  # only while zennit is imported; removed again right after
    stub, models, resnet = (types.ModuleType(n) for n in _STUB_NAMES)
    resnet.Bottleneck = resnet.BasicBlock = type("Block", (torch.nn.Module,), {})
    stub.models, models.resnet = models, resnet
    sys.modules.update({m.__name__: m for m in (stub, models, resnet)})
from zennit import composites as zc  # noqa: E402
from zennit.attribution import Gradient  # noqa: E402
from zennit.canonizers import SequentialMergeBatchNorm  # noqa: E402
from zennit.layer import Sum as ZSum  # noqa: E402

if _stubbed:
    for _name in _STUB_NAMES:
        sys.modules.pop(_name, None)

import selrel_jax as sr  # noqa: E402
from selrel_jax.layers import AvgPool, GlobalAvgPool, MaxPool, Sum  # noqa: E402


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
        self.r1, self.r2, self.r3, self.r4 = (torch.nn.ReLU() for _ in range(4))

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
        x = nn.relu(Sum()(x, nn.relu(nn.Conv(8, (1, 1, 1), name="c3")(x))))
        return nn.Dense(5, name="fc")(GlobalAvgPool()(x))


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
    np.testing.assert_allclose(np.asarray(FlaxNet().apply(variables, xj)),
                               net(x).detach().numpy(), atol=1e-5)  # fmt: skip
    composite_cls, options = CASES[method]
    composite = composite_cls(canonizers=[SequentialMergeBatchNorm()], **options)
    with Gradient(model=net, composite=composite) as attributor:
        _, rel = attributor(x.clone().requires_grad_(True), torch.eye(5)[target])
    want = rel.detach().numpy().transpose(0, 2, 3, 4, 1)
    got = np.asarray(sr.explain(FlaxNet(), variables, xj, jnp.asarray(target.numpy()), method,
                                **options))  # fmt: skip
    np.testing.assert_allclose(got, want, atol=1e-4 * np.abs(want).max())
