"""A DPPO fine-tuned denoiser: the pretrained network for the noisy steps, a fine-tuned copy for the rest.

DPPO (Ren et al. 2024) fine-tunes only the last K' denoising steps; the first K - K' keep the frozen
pretrained weights. Routing by timestep inside one module keeps the fine-tuned policy an ordinary
Diffusion Policy: every sampler, `dpstack eval`, the ONNX export and the ROS node call it through the
one denoiser interface and use the fine-tuned steps without knowing about them (evaluating with the
pretrained weights by mistake is a known trap of DPPO's own code).
"""

from __future__ import annotations

import copy

import torch
from torch import nn


class FinetunedDenoiser(nn.Module):
    """forward(sample, timesteps, cond): `finetuned` where timestep < `below`, `pretrained` elsewhere.

    Per-sample (B,) or per-position (B, T) timesteps are routed entry by entry. In eager mode a batch
    that lies on one side runs one network; a traced graph (ONNX export) runs both and selects.
    """

    def __init__(self, pretrained: nn.Module, below: int, finetuned: nn.Module | None = None) -> None:
        super().__init__()
        if below < 1:
            raise ValueError(f"FinetunedDenoiser: `below` must be >= 1 (timesteps < below are fine-tuned), got {below}")
        self.pretrained = pretrained
        self.finetuned = finetuned if finetuned is not None else copy.deepcopy(pretrained)
        self.below = below
        self.pretrained.requires_grad_(False)

    def forward(self, sample: torch.Tensor, timesteps: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        low = timesteps < self.below
        if not (torch.jit.is_tracing() or torch.onnx.is_in_onnx_export()):
            if bool(low.all()):
                return self.finetuned(sample, timesteps, cond)
            if not bool(low.any()):
                return self.pretrained(sample, timesteps, cond)
        mask = low.reshape(*low.shape, *([1] * (sample.ndim - low.ndim)))
        return torch.where(mask, self.finetuned(sample, timesteps, cond), self.pretrained(sample, timesteps, cond))
