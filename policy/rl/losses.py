"""PPO's math as small pure functions (Schulman et al. 2017; GAE: Schulman et al. 2016), pinned by tests
against hand-computed values and shared by Gaussian PPO and DPPO.

Shapes: (T, N) for T ticks of N envs unless stated; ``terminated`` / ``truncated`` mark the tick an
episode ended at. Bootstrapping follows the MDP, not the time limit: a terminated episode's next value
is 0; a truncated one's is the value of its final state (``final_values``), since the time limit is not
part of the task.
"""

from __future__ import annotations

import math

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


def clipped_surrogate(log_ratio: torch.Tensor, advantages: torch.Tensor, clip: float | torch.Tensor) -> torch.Tensor:
    """PPO's policy loss, mean over entries: -min(r A, clip(r, 1 - c, 1 + c) A) with r = exp(log_ratio).

    `clip` is one number, or one per entry (DPPO clips each denoising step differently).
    """
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


def clip_fraction(log_ratio: torch.Tensor, clip: float | torch.Tensor) -> torch.Tensor:
    """Share of entries whose ratio left [1 - clip, 1 + clip]."""
    return ((log_ratio.exp() - 1.0).abs() > clip).float().mean()


def explained_variance(predicted: torch.Tensor, target: torch.Tensor) -> float:
    """1 - Var(target - predicted) / Var(target): 1 is perfect, 0 no better than a constant (nan if Var = 0)."""
    variance = target.var()
    return float("nan") if variance == 0 else float(1.0 - (target - predicted).var() / variance)


# ---------------------------------------------------------------------- DPPO (Ren et al. 2024)
# Fine-tuned denoising steps are indexed i = 0 .. K' - 1 in sampling order: i = 0 is the noisiest
# fine-tuned step, i = K' - 1 the one that outputs the executed action chunk.


def denoising_discount(step: torch.Tensor, finetuned_steps: int, gamma_denoising: float) -> torch.Tensor:
    """gamma_denoising ** (K' - i - 1): the weight of step i's advantage (noisier steps weigh less)."""
    return gamma_denoising ** (finetuned_steps - 1 - step).to(torch.float32)


def clip_coefficients(
    step: torch.Tensor, finetuned_steps: int, base: float, last: float, rate: float = 3.0
) -> torch.Tensor:
    """PPO's clip per denoising step, rising exponentially from `base` (i = 0) to `last` (i = K' - 1).

    c(i) = base + (last - base) (exp(rate s) - 1) / (exp(rate) - 1) with s = i / (K' - 1); K' = 1 gives `last`;
    rate 0 is the formula's limit, linear in s (a negative rate rises fast first, then slowly).
    """
    if finetuned_steps == 1:
        return torch.full(step.shape, float(last), device=step.device)
    s = step.to(torch.float32) / (finetuned_steps - 1)
    if rate == 0:
        return base + (last - base) * s
    return base + (last - base) * torch.expm1(rate * s) / math.expm1(rate)  # expm1: exact near rate 0 too


def peak_log_density(std: float) -> float:
    """log N(mean; mean, std^2) = -log(std) - log(2 pi) / 2: the largest per-element log-likelihood at `std`.

    Every chain ends in a step whose own std is 0 (x_0 is the last mean), so that step's std is the
    log-likelihood floor; if this peak is above the clamp's top, most of its elements are clamped and
    give PPO no gradient (at floor 0.01: 3.69 > 2, 93% of the elements).
    """
    return -math.log(std) - 0.5 * math.log(2 * math.pi)


def chain_log_prob(
    x_prev: torch.Tensor,
    mean: torch.Tensor,
    std: torch.Tensor,
    min_std: float,
    executed: slice,
    clamp: tuple[float, float] = (-5.0, 2.0),
) -> torch.Tensor:
    """log N(x_prev; mean, max(std, min_std)^2) of one denoising step, per chunk: (M,) from (M, T, Da).

    Per element, clamped to `clamp` (a near-deterministic step must not dominate the ratio), then
    averaged (not summed) over the executed positions `executed` of the chunk and the action dims.
    """
    std = torch.as_tensor(std, dtype=mean.dtype).clamp(min=min_std).expand_as(mean)
    log_prob = -((x_prev - mean) ** 2) / (2 * std**2) - std.log() - 0.5 * math.log(2 * math.pi)
    return log_prob.clamp(*clamp)[:, executed].mean(dim=(1, 2))
