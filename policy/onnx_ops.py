"""Spellings of PyTorch modules that run faster in ONNX Runtime, numerically equal to the originals.

At batch 1 a denoiser call through ONNX Runtime is mostly per-node overhead and a few slow kernels, not
arithmetic (README "One call per tick"). Three modules decide what can change without touching the
network (profile of the U-Net's one-call tick, ONNX Runtime 1 thread):

- `nn.Mish` exports as one Mish node that ONNX Runtime expands to Softplus, Tanh and Mul; its Softplus
  kernel is scalar and was ~13% of the call (a development profile). `OnnxMish` uses one Exp instead, in six nodes:
  tanh(softplus(x)) = n / (n + 2) = 1 / (1 + 2 / n) with n = e^x (e^x + 2), exactly. The last form needs
  no clamp: where n overflows to inf it gives x, where it underflows to 0 it gives 0 (so does Mish).
- `nn.GroupNorm` exports with runtime shape arithmetic (Shape, Gather, Concat around its reshapes,
  since the batch axis is dynamic). `OnnxGroupNorm` reshapes to constant shapes with a -1 batch.
- `nn.Conv1d`: ONNX Runtime's blocked-layout (NCHWc) convolution kernels, chosen at its highest graph
  optimization level, apply to 2-d convolutions only. `OnnxConv1d` is the same convolution as a 2-d one
  over a height of 1 (~18% off the U-Net's call in a development measurement).

`for_onnx(module)` returns a copy with all three replaced (their parameters and names unchanged, so a
checkpoint's weights hash is the same); the original module is left as it was. `benchmarks.floor` times
both spellings side by side (README "One call per tick"); the parity bound of every export (1e-4
normalized) still applies and is checked.
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn
from torch.nn import functional as F

from dpstack.policy.denoisers.mish import Mish


class OnnxMish(nn.Mish):
    """x * tanh(softplus(x)) with one exponential."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e = torch.exp(x)
        return x / (1.0 + 2.0 / (e * (e + 2.0)))


class OnnxGroupNorm(nn.GroupNorm):
    """GroupNorm through InstanceNorm on constant shapes (the batch axis as -1)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rest = tuple(x.shape[1:])  # static under torch.export: only the batch axis is dynamic
        grouped = F.instance_norm(x.reshape(-1, self.num_groups, math.prod(rest) // self.num_groups), eps=self.eps)
        y = grouped.reshape(-1, *rest)
        if self.affine:
            broadcast = (-1, *([1] * (len(rest) - 1)))
            y = y * self.weight.reshape(broadcast) + self.bias.reshape(broadcast)
        return y


class OnnxConv1d(nn.Conv1d):
    """Conv1d as Conv2d over (N, C, 1, L): the same weights with a height-1 kernel."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        padding = self.padding if isinstance(self.padding, str) else (0, self.padding[0])
        y = F.conv2d(
            x.unsqueeze(-2),
            self.weight.unsqueeze(-2),
            self.bias,
            (1, self.stride[0]),
            padding,
            (1, self.dilation[0]),
            self.groups,
        )
        return y.squeeze(-2)


_REPLACEMENTS: dict[type[nn.Module], type[nn.Module]] = {
    nn.Mish: OnnxMish,
    Mish: OnnxMish,  # dpstack's training Mish (`denoisers/mish.py`): the same function
    nn.GroupNorm: OnnxGroupNorm,
    nn.Conv1d: OnnxConv1d,
}


def for_onnx(module: nn.Module) -> nn.Module:
    """A copy of `module` with every Mish, GroupNorm and Conv1d in their ONNX Runtime spellings (same parameters)."""
    out = copy.deepcopy(module)
    for child in out.modules():
        replacement = _REPLACEMENTS.get(type(child))  # exact types: a subclass may compute something else
        if replacement is OnnxConv1d and child.padding_mode != "zeros":
            continue  # circular or reflected padding: PyTorch's own spelling
        if replacement is not None:
            child.__class__ = replacement
    return out
