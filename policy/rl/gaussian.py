"""A Gaussian MLP policy with a value head: what Gaussian PPO trains and the baseline DPPO compares with.

Method ``gaussian`` of `dpstack.methods`: its checkpoints are ordinary dpstack checkpoints (safetensors +
config.json) that `dpstack eval` runs with the deterministic mean action (``sampler=gaussian``,
``sampler.deterministic=false`` samples). The actor maps the normalized observation to the mean of a
Gaussian over actions in [-1, 1]^Da (state-independent log-std); actions are scaled to the task's
limits, so one policy serves any action range. Observation normalization (running mean and variance,
updated from rollouts) lives in the module's buffers and so in the checkpoint: evaluation sees exactly
the statistics training used.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from dpstack.features import Feature
from dpstack.policy.module import PolicyModule, method_options


@dataclass
class GaussianOptions:
    """`policy.method_kwargs` of a Gaussian policy."""

    hidden: list[int] = field(default_factory=lambda: [64, 64])
    init_log_std: float = 0.0
    activation: str = "tanh"  # tanh (CleanRL's) | relu (rl-zoo's HalfCheetah setting)
    action_low: list[float] | None = None  # the task's limits (filled from the task spec at training)
    action_high: list[float] | None = None


@dataclass
class GaussianSamplerOptions:
    """`sampler=gaussian`: the mean action (deterministic, evaluation's default) or a sample."""

    name: str = "gaussian"
    deterministic: bool = field(default=True, metadata={"help": "act with the mean (false: sample)"})


@dataclass(frozen=True)
class GaussianSampler:
    deterministic: bool = True
    actions_per_tick: int = 1
    stateful: bool = False

    @property
    def name(self) -> str:
        return "gaussian-mean" if self.deterministic else "gaussian-sample"

    def chunk_length(self, horizon: int) -> int:
        return 1

    def nfe(self, state: Any) -> int:
        return 1

    def noise_shape(self, batch: int, horizon: int, action_dim: int, state: Any = None) -> tuple[int, ...]:
        return (1, batch, 1, action_dim)  # one draw per tick; steps first, batch second, like every sampler


class RunningNorm(nn.Module):
    """Running mean and variance of a feature vector (parallel-variance updates), kept in buffers."""

    def __init__(self, dim: int, clip: float = 10.0) -> None:
        super().__init__()
        self.clip = clip
        self.register_buffer("mean", torch.zeros(dim, dtype=torch.float64))
        self.register_buffer("var", torch.ones(dim, dtype=torch.float64))
        self.register_buffer("count", torch.tensor(1e-4, dtype=torch.float64))

    @torch.no_grad()
    def update(self, x: torch.Tensor) -> None:
        x = x.reshape(-1, x.shape[-1]).double()
        batch_mean, batch_var, n = x.mean(0), x.var(0, unbiased=False), x.shape[0]
        delta, total = batch_mean - self.mean, self.count + n
        self.mean += delta * n / total
        self.var.copy_((self.var * self.count + batch_var * n + delta**2 * self.count * n / total) / total)
        self.count.fill_(float(total))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        normalized = (x.double() - self.mean) / torch.sqrt(self.var + 1e-8)
        return normalized.clamp(-self.clip, self.clip).float()


ACTIVATIONS = {"tanh": nn.Tanh, "relu": nn.ReLU}


def _mlp(sizes: list[int], out_gain: float, activation: str = "tanh") -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(itertools.pairwise(sizes)):
        linear = nn.Linear(a, b)
        last = i == len(sizes) - 2
        nn.init.orthogonal_(linear.weight, out_gain if last else math.sqrt(2))
        nn.init.zeros_(linear.bias)
        layers += [linear] if last else [linear, ACTIVATIONS[activation]()]
    return nn.Sequential(*layers)


class GaussianPolicy(PolicyModule):
    """obs {key: (B, To, ...)} (the last step is used) -> Normal(mean (B, Da), std (Da,)) and V (B,)."""

    def __init__(
        self, cfg: Any, obs_features: Mapping[str, Feature], action_feature: Feature, normalizer: Any = None
    ) -> None:
        super().__init__()
        self.options = method_options(GaussianOptions, cfg)
        if any(f.dtype == "uint8" for f in obs_features.values()):
            raise ValueError("the Gaussian MLP policy takes low-dimensional observations only (no images)")
        self.cfg, self.obs_features, self.action_feature = cfg, dict(obs_features), action_feature
        self.keys = sorted(obs_features)
        obs_dim = sum(int(np.prod(obs_features[k].shape)) for k in self.keys)
        act_dim = int(np.prod(action_feature.shape))
        self.action_dim = act_dim
        self.obs_norm = RunningNorm(obs_dim)
        if self.options.activation not in ACTIVATIONS:
            raise ValueError(f"activation: {self.options.activation!r} is not one of {sorted(ACTIVATIONS)}")
        self.actor = _mlp([obs_dim, *self.options.hidden, act_dim], 0.01, self.options.activation)
        self.critic = _mlp([obs_dim, *self.options.hidden, 1], 1.0, self.options.activation)
        self.log_std = nn.Parameter(torch.full((act_dim,), float(self.options.init_log_std)))
        low = self.options.action_low or [-1.0] * act_dim
        high = self.options.action_high or [1.0] * act_dim
        if normalizer is not None and not self.options.action_low:  # behaviour cloning: the demonstrations' range
            scale, offset = normalizer.params("action")
            low, high = ((-1.0 - offset) / scale).tolist(), ((1.0 - offset) / scale).tolist()
        self.register_buffer("action_low", torch.tensor(low, dtype=torch.float32))
        self.register_buffer("action_high", torch.tensor(high, dtype=torch.float32))
        if normalizer is not None:  # behaviour cloning: start from the store's statistics (min-max as mean / std)
            scales, offsets = zip(*(normalizer.params(k) for k in self.keys), strict=True)
            scale, offset = torch.cat([s.flatten() for s in scales]).double(), torch.cat([o.flatten() for o in offsets])
            self.obs_norm.mean.copy_(-offset.double() / scale)
            self.obs_norm.var.copy_(1.0 / scale**2)
            self.obs_norm.count.fill_(1e6)  # later PPO updates move them slowly

    # ------------------------------------------------------------------ the math PPO needs
    def flat_obs(self, obs: Mapping[str, Any]) -> torch.Tensor:
        """{key: (..., To, *shape)} -> (..., obs_dim): the raw features of the newest step, concatenated."""
        parts = []
        for key in self.keys:
            x = torch.as_tensor(obs[key]).float()
            dims = len(self.obs_features[key].shape)
            x = x.select(-dims - 1, -1)  # the newest of the To steps
            parts.append(x.reshape(*x.shape[: x.dim() - dims], -1))
        return torch.cat(parts, dim=-1)

    def distribution(self, flat: torch.Tensor) -> torch.distributions.Normal:
        """Normal over normalized actions u in (roughly) [-1, 1]^Da for raw flat observations (..., obs_dim)."""
        mean = self.actor(self.obs_norm(flat))
        return torch.distributions.Normal(mean, self.log_std.exp().expand_as(mean))

    def value(self, flat: torch.Tensor) -> torch.Tensor:
        return self.critic(self.obs_norm(flat)).squeeze(-1)

    def to_action(self, u: torch.Tensor) -> torch.Tensor:
        """Normalized u -> the task's action units (the env clips to its limits)."""
        return self.action_low + (u + 1.0) * 0.5 * (self.action_high - self.action_low)

    # ------------------------------------------------------------------ the policy interface
    SAMPLERS: ClassVar[dict[str, type]] = {"gaussian": GaussianSamplerOptions}

    def default_sampler_options(self) -> dict[str, Any]:
        return {"name": "gaussian"}

    def make_sampler(self, options: Any = None) -> GaussianSampler:
        return GaussianSampler(self.sampler_options(options).deterministic)

    def default_sampler(self) -> GaussianSampler:
        return self.make_sampler()

    def actions_per_tick(self, sampler: GaussianSampler) -> int:
        return 1

    def session(self, sampler: GaussianSampler | None = None, generator: torch.Generator | None = None) -> Any:
        return GaussianSession(self, sampler or self.default_sampler(), generator)

    def data_timing(self) -> dict[str, int]:
        return {"horizon": 1, "n_obs_steps": 1, "n_action_steps": 1}

    @torch.no_grad()
    def sample_tick(
        self,
        obs: Mapping[str, torch.Tensor],
        sampler: GaussianSampler,
        state: Any = None,
        noise: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, None]:
        """One control tick (the ONNX export's tick graph): history -> (raw actions (B, 1, Da), no state).

        The mean action, or with a sampling sampler mean + std * noise[0] (noise (1, B, 1, Da), drawn if None).
        """
        u = self.actor(self.obs_norm(self.flat_obs(obs)))[:, None]  # no torch.distributions: it exports
        if not sampler.deterministic:
            noise = torch.randn((1, *u.shape)) if noise is None else noise
            u = u + self.log_std.exp() * noise[0]
        return self.to_action(u), None

    def normalized_action_scale(self) -> torch.Tensor:
        """Raw action units -> the [-1, 1] units the policy acts in (parity bounds of the export)."""
        return 2.0 / (self.action_high - self.action_low)

    def compute_loss(self, batch: Mapping[str, Any], **_: Any) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Behaviour cloning (the baseline's pretraining): negative log-likelihood of the demonstrated actions.

        `batch`: {"obs": {key: (B, To, ...)}, "action": (B, T, Da)} as `dpstack train` gives it (the first action
        is the one taken at the newest observation), or the keys at the top level.
        """
        obs = batch.get("obs", batch)
        flat = self.flat_obs({k: obs[k] for k in self.keys})
        act = batch["action"][:, 0] if batch["action"].dim() == 3 else batch["action"]
        u = 2.0 * (act - self.action_low) / (self.action_high - self.action_low) - 1.0
        loss = -self.distribution(flat).log_prob(u).sum(-1).mean()
        return loss, {"nll": loss.detach()}


class GaussianSession:
    """One episode of acting: a chunk source (history -> (B, 1, Da) raw actions) that counts its calls."""

    def __init__(self, policy: GaussianPolicy, sampler: GaussianSampler, generator: torch.Generator | None) -> None:
        self.policy, self.sampler, self.generator = policy, sampler, generator
        self.actions_per_tick = 1
        self.network_evaluations = 0

    def reset(self) -> None:
        pass

    def __call__(self, history: Mapping[str, np.ndarray]) -> np.ndarray:
        self.network_evaluations += 1
        obs = {k: torch.as_tensor(v) for k, v in history.items()}
        noise = None
        if not self.sampler.deterministic:
            shape = self.sampler.noise_shape(len(next(iter(obs.values()))), 1, self.policy.action_dim)
            noise = torch.randn(shape, generator=self.generator)
        return self.policy.sample_tick(obs, self.sampler, None, noise)[0].cpu().numpy()
