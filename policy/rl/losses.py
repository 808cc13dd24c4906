"""PPO's math as small pure functions (Schulman et al. 2017; GAE: Schulman et al. 2016), pinned by tests
against hand-computed values and shared by Gaussian PPO and DPPO.

Shapes: (T, N) for T ticks of N envs unless stated; ``terminated`` / ``truncated`` mark the tick an
episode ended at. Bootstrapping follows the MDP, not the time limit: a terminated episode's next value
is 0; a truncated one's is the value of its final state (``final_values``), since the time limit is not
part of the task.
"""

from __future__ import annotations

import torch


def gae(
    rewards: torch.Tensor,
    values: torch.Tensor,
    next_values: torch.Tensor,
    terminated: torch.Tensor,
    truncated: torch.Tensor,
    final_values: torch.Tensor,
    gamma: float,
    lam: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalized advantage estimation: (advantages, returns), both (T, N).

    rewards, values, terminated, truncated, final_values: (T, N); next_values: (N,) the value of the
    state after the last tick. delta_t = r_t + gamma * V(s_{t+1}) (1 - terminated_t) - V(s_t), with
    V(s_{t+1}) the final state's value where the episode was truncated; the recursion
    A_t = delta_t + gamma * lam * A_{t+1} stops at every episode end.
    """
    steps = rewards.shape[0]
    advantages = torch.zeros_like(rewards)
    last = torch.zeros_like(next_values)
    for t in reversed(range(steps)):
        following = next_values if t == steps - 1 else values[t + 1]
        following = torch.where(truncated[t], final_values[t], following)
        ended = (terminated[t] | truncated[t]).to(rewards.dtype)
        delta = rewards[t] + gamma * following * (1.0 - terminated[t].to(rewards.dtype)) - values[t]
        last = delta + gamma * lam * (1.0 - ended) * last
        advantages[t] = last
    return advantages, advantages + values


def normalize(x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """(x - mean) / (std + eps) over all entries (advantage normalization per minibatch)."""
    return (x - x.mean()) / (x.std() + eps)


def clipped_surrogate(log_ratio: torch.Tensor, advantages: torch.Tensor, clip: float) -> torch.Tensor:
    """PPO's policy loss, mean over entries: -min(r A, clip(r, 1 - c, 1 + c) A) with r = exp(log_ratio)."""
    ratio = log_ratio.exp()
    return -torch.min(ratio * advantages, ratio.clamp(1.0 - clip, 1.0 + clip) * advantages).mean()


def value_loss(
    values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, clip: float | None = None
) -> torch.Tensor:
    """0.5 * mean (V - R)^2; with `clip`, the max of that and the clipped update's error (PPO2's value clip)."""
    unclipped = (values - returns) ** 2
    if clip is None:
        return 0.5 * unclipped.mean()
    clipped = (old_values + (values - old_values).clamp(-clip, clip) - returns) ** 2
    return 0.5 * torch.max(unclipped, clipped).mean()


def approx_kl(log_ratio: torch.Tensor) -> torch.Tensor:
    """The low-variance KL(old || new) estimator mean((r - 1) - log r) (Schulman's k3)."""
    return ((log_ratio.exp() - 1.0) - log_ratio).mean()


def clip_fraction(log_ratio: torch.Tensor, clip: float) -> torch.Tensor:
    """Share of entries whose ratio left [1 - clip, 1 + clip]."""
    return ((log_ratio.exp() - 1.0).abs() > clip).float().mean()


def explained_variance(predicted: torch.Tensor, target: torch.Tensor) -> float:
    """1 - Var(target - predicted) / Var(target): 1 is perfect, 0 no better than a constant (nan if Var = 0)."""
    variance = target.var()
    return float("nan") if variance == 0 else float(1.0 - (target - predicted).var() / variance)
