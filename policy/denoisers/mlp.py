"""MLP denoiser: the whole action chunk flattened into one vector (fast, small, a strong baseline)."""

from __future__ import annotations

import itertools

import torch
from torch import nn

from dpstack.policy.denoisers.embeddings import SinusoidalEmbedding, check_denoiser_inputs
from dpstack.policy.denoisers.mish import Mish

PRESETS = {"small": {"hidden": (512, 512, 512)}, "tiny": {"hidden": (64, 64)}}


class PreActivationBlock(nn.Module):
    """x + Linear(Mish(Linear(Mish(x)))): DPPO's residual pair of hidden layers."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.body = nn.Sequential(Mish(), nn.Linear(width, width), Mish(), nn.Linear(width, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class MLPDenoiser(nn.Module):
    """eps_theta(sample (B, T, Da), timesteps (B,) | (B, T), cond (B, C)) -> (B, T, Da) for a fixed T."""

    def __init__(
        self,
        action_dim: int,
        cond_dim: int,
        horizon: int = 16,
        hidden: tuple[int, ...] = (512, 512, 512),
        step_embed_dim: int = 16,
        residual: bool = False,
    ) -> None:
        super().__init__()
        self.action_dim, self.cond_dim, self.horizon = action_dim, cond_dim, horizon
        self.time_emb = SinusoidalEmbedding(step_embed_dim)
        sizes = [horizon * (action_dim + step_embed_dim) + cond_dim, *hidden]
        layers: list[nn.Module] = []
        if residual:  # DPPO's ResidualMLP: in -> width, residual pairs, width -> out
            if len(set(hidden)) != 1 or len(hidden) % 2 == 0:
                raise ValueError(f"MLPDenoiser: residual needs an odd number of equal hidden sizes, got {hidden}")
            layers = [nn.Linear(sizes[0], hidden[0])]
            layers += [PreActivationBlock(hidden[0]) for _ in range(len(hidden) // 2)]
        else:
            for a, b in itertools.pairwise(sizes):
                layers += [nn.Linear(a, b), Mish()]
        self.body = nn.Sequential(*layers, nn.Linear(sizes[-1], horizon * action_dim))

    def forward(self, sample: torch.Tensor, timesteps: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        check_denoiser_inputs(sample, timesteps, cond, "MLPDenoiser")
        batch, horizon = sample.shape[:2]
        if horizon != self.horizon:
            raise ValueError(f"MLPDenoiser: horizon must be {self.horizon}, got {horizon}")
        if timesteps.ndim == 1:
            timesteps = timesteps[:, None].expand(batch, horizon)
        x = torch.cat([sample.reshape(batch, -1), self.time_emb(timesteps).reshape(batch, -1), cond], dim=-1)
        return self.body(x).reshape(batch, horizon, self.action_dim)
