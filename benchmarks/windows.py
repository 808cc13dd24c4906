"""Conditioning from demonstration windows: the inputs of benchmarks that probe a policy's chain offline."""

from __future__ import annotations

import numpy as np
import torch

from dpstack.data.dataset import SequenceDataset
from dpstack.policy.diffusion_policy import DiffusionPolicy


@torch.no_grad()
def demonstration_conditions(policy: DiffusionPolicy, store: str, windows: int, seed: int) -> torch.Tensor:
    """The policy's conditioning (windows, C) on `windows` distinct windows of the episode store, drawn by `seed`."""
    cfg = policy.cfg
    data = SequenceDataset(store, list(policy.obs_features), horizon=cfg.horizon, n_obs_steps=cfg.n_obs_steps)
    batch = data.batch(np.random.default_rng(seed).choice(len(data), windows, replace=False))
    return policy.condition({k: v[:, : cfg.n_obs_steps] for k, v in batch["obs"].items()})
