"""Diffuser's value function: V(noisy trajectory, diffusion timestep, condition) -> predicted discounted return.

The network is the down path of the temporal U-Net (FiLM residual blocks, stride-2 convs), average-pooled
over time and read out by an MLP. It is trained on trajectories noised to random diffusion levels,
with the same inpainted conditions as the diffusion model, to regress the discounted return-to-go of
the window's first step (scaled by 1 - discount so values stay O(1)). Its gradient guides sampling
(`dpstack.planners.diffusion.TrajectoryDiffusion.sample(guide=...)`) and its value at t = 0 ranks finished plans.
"""

from __future__ import annotations

import torch
from torch import nn

from dpstack.policy.denoisers.embeddings import timestep_mlp
from dpstack.policy.denoisers.mish import Mish
from dpstack.policy.denoisers.unet1d import down_levels


class TrajectoryValue(nn.Module):
    """(x (B, H, D), timesteps (B,), cond (B, C)) -> (B,) value; every level but the last halves H."""

    def __init__(
        self,
        transition_dim: int,
        cond_dim: int,
        down_dims: tuple[int, ...] = (32, 64, 128, 256),
        kernel_size: int = 5,
        step_embed_dim: int = 32,
        n_groups: int = 8,
    ) -> None:
        super().__init__()
        self.cond_dim = cond_dim
        self.step_encoder = timestep_mlp(step_embed_dim)
        film_dim = step_embed_dim + cond_dim
        self.blocks = down_levels(transition_dim, down_dims, film_dim, kernel_size, n_groups)
        width = down_dims[-1]
        self.head = nn.Sequential(nn.Linear(width + film_dim, width // 2), Mish(), nn.Linear(width // 2, 1))

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        if cond.shape != (x.shape[0], self.cond_dim):
            raise ValueError(
                f"TrajectoryValue: cond shape {tuple(cond.shape)}, expected ({x.shape[0]}, {self.cond_dim})"
            )
        film = torch.cat([self.step_encoder(timesteps), cond], dim=-1)
        h = x.transpose(1, 2)
        for block1, block2, downsample in self.blocks:
            h = downsample(block2(block1(h, film[:, None]), film[:, None]))
        return self.head(torch.cat([h.mean(dim=-1), film], dim=-1)).squeeze(-1)
