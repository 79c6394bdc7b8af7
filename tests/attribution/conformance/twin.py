"""The conformance suite's reference: a tiny 3D CNN as a torch.nn twin (NCTHW, the
model Zennit explains), its clips and weights, and the comparison every test
uses (not a test module).

The net: Conv3d 3->4 (k3, pad 1, bias), BatchNorm (inference, random running
statistics and affine), ReLU, max pool (1,2,2), a residual ``x + relu(conv 4->4)``,
dropout (inference: a no-op), average pool (1,2,2), global mean over T,H,W, dense
4->5. ``residual_sum`` builds the residual's module: a parameter-free sum of a
stacked last axis (Zennit's ``Sum`` for the Zennit test, :class:`StackSum` else),
so the state dict is the same either way.
"""

from __future__ import annotations

import numpy as np
import torch

CLIPS_NCTHW = (2, 3, 4, 8, 8)  # clips (N, T, H, W, C) = (2, 4, 8, 8, 3)
CLASSES = 5
EPS = 1e-5
TARGET = np.array([1, 3])
# Options of the methods that need (or are sped up by) them; random ones get a seed.
OPTIONS = {
    "lrp.epsilon_gamma_box": {"low": -3.0, "high": 3.0},
    "lrp.dtd": {"low": -3.0, "high": 3.0},
    "integrated_gradients": {"steps": 8},
    "smoothgrad": {"samples": 4, "key": 0},
    "occlusion": {"window": (2, 4, 4), "strides": (1, 2, 2)},
}


class StackSum(torch.nn.Module):
    """Sum over a stacked last axis (Zennit's ``Sum`` without Zennit)."""

    def forward(self, x):
        return x.sum(dim=-1)


class TorchTwin(torch.nn.Module):
    def __init__(self, residual_sum=StackSum):
        super().__init__()
        self.conv1, self.bn = torch.nn.Conv3d(3, 4, 3, padding=1), torch.nn.BatchNorm3d(4)
        self.pool1, self.relu1 = torch.nn.MaxPool3d((1, 2, 2)), torch.nn.ReLU()
        self.conv2, self.relu2 = torch.nn.Conv3d(4, 4, 3, padding=1), torch.nn.ReLU()
        self.sum, self.dropout = residual_sum(), torch.nn.Dropout(0.5)
        self.pool2, self.gap = torch.nn.AvgPool3d((1, 2, 2)), torch.nn.AdaptiveAvgPool3d(1)
        self.fc = torch.nn.Linear(4, CLASSES)

    def forward(self, x):
        x = self.pool1(self.relu1(self.bn(self.conv1(x))))
        x = self.sum(torch.stack([x, self.relu2(self.conv2(x))], dim=-1))
        return self.fc(self.gap(self.pool2(self.dropout(x))).flatten(1))


def randomise_biases_and_batch_norm(biased, batch_norm) -> None:
    """In place, drawn from torch's generator in this order: each layer's bias
    N(0, 0.1), then the BatchNorm's running mean N(0, 0.2), running variance and
    scale U(0.5, 1.5), bias N(0, 0.1) (a fresh BatchNorm would be the identity)."""
    with torch.no_grad():
        for m in biased:
            m.bias.normal_(0, 0.1)
        batch_norm.running_mean.normal_(0, 0.2)
        batch_norm.running_var.uniform_(0.5, 1.5)
        batch_norm.weight.uniform_(0.5, 1.5)
        batch_norm.bias.normal_(0, 0.1)


def make_twin(residual_sum=StackSum, seed=0):
    """The twin in eval mode: seeded weights, biases N(0, 0.1), random BatchNorm."""
    torch.manual_seed(seed)
    net = TorchTwin(residual_sum)
    randomise_biases_and_batch_norm((net.conv1, net.conv2, net.fc), net.bn)
    return net.eval()


def torch_clips(seed=1):
    return torch.randn(CLIPS_NCTHW, generator=torch.Generator().manual_seed(seed))


def to_nthwc(x):
    """A torch NCTHW tensor as a NumPy NTHWC array."""
    return x.detach().numpy().transpose(0, 2, 3, 4, 1)


def weights(net):
    """The twin's weights as NumPy, channels last: conv kernels (T,H,W,in,out),
    the dense kernel (in,out), BatchNorm ``scale, bias, mean, var``."""

    def a(t):
        return t.detach().numpy().astype(np.float32)

    def conv(m):
        return {"kernel": a(m.weight).transpose(2, 3, 4, 1, 0), "bias": a(m.bias)}

    bn = net.bn
    return {
        "conv1": conv(net.conv1),
        "conv2": conv(net.conv2),
        "bn": {"scale": a(bn.weight), "bias": a(bn.bias),
               "mean": a(bn.running_mean), "var": a(bn.running_var)},
        "fc": {"kernel": a(net.fc.weight).T, "bias": a(net.fc.bias)},
    }  # fmt: skip


def cosine(got, want):
    g, w = np.ravel(got).astype(np.float64), np.ravel(want).astype(np.float64)
    return float(g @ w / (np.linalg.norm(g) * np.linalg.norm(w)))


def assert_matches(got, want):
    """cosine >= 0.99999 and max |diff| <= 1e-4 * max |want|; prints both."""
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape, (got.shape, want.shape)
    cos, err = cosine(got, want), np.abs(got - want).max() / np.abs(want).max()
    print(f"cosine = {cos:.8f}, max |diff| / max |R| = {err:.1e}")
    assert cos >= 0.99999 and err <= 1e-4, f"cosine {cos:.8f}, max |diff| / max |R| {err:.1e}"
