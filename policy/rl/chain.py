"""DPPO's two-layer MDP over one Diffusion Policy: the denoising chain as a sequence of Gaussian actions.

Every reverse step x_t -> x_prev of the sampler is a Gaussian N(mean, std^2) whose mean and std come
from the scheduler's own `step` (DDPM, or DDIM with eta = 1), so the log-likelihood of a recorded step
is the same formula the sampler drew it with, never a second hand-written one. Of the K steps, the
last K' run the fine-tuned copy of the denoiser (`FinetunedDenoiser` routes them by timestep); the
rollout records those K' + 1 samples per control tick (`chain`, (B, K' + 1, T, Da)), and the update
recomputes each step's log-likelihood under the current weights.

Exploration during fine-tuning (DPPO's defaults): every step's std is floored at `min_sampling_std`
(the last DDPM step has std 0 otherwise), its standard-normal draw is clipped to +-`noise_clip`, and
the final sample is clipped to +-`final_action_clip` (normalized units). The log-likelihood floors the
std at `min_logprob_std`. Evaluation does not use this class: it runs the checkpoint's ordinary sampler.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from dpstack.policy.diffusion_policy import DiffusionPolicy
from dpstack.policy.rl.losses import chain_log_prob
from dpstack.policy.schedulers import DDIMScheduler, DDPMScheduler


@dataclass(frozen=True)
class ChainOptions:
    """The noise settings of DPPO's rollouts and log-likelihoods (config keys of `dpstack finetune`)."""

    min_sampling_std: float = 0.1
    min_logprob_std: float = 0.1
    noise_clip: float = 3.0
    final_action_clip: float | None = 1.0
    logprob_clamp: tuple[float, float] = (-5.0, 2.0)


class DenoisingChain:
    """Sampling with a recorded chain, and log-likelihoods of recorded steps, for one policy.

    Args:
        policy: a Diffusion Policy whose denoiser is a `FinetunedDenoiser` (or any denoiser: then the
            split only decides which steps are recorded and trained).
        scheduler: DDPM, or DDIM with eta = 1 (a Gaussian chain; DDIM eta 0 has no likelihood).
        timesteps: the K descending inference timesteps.
        finetuned_steps: K', the last steps of the chain that are recorded and trained.
        actions_per_tick: executed actions per chunk (the log-likelihood averages over them).
    """

    def __init__(
        self,
        policy: DiffusionPolicy,
        scheduler: DDPMScheduler | DDIMScheduler,
        timesteps: torch.Tensor,
        finetuned_steps: int,
        actions_per_tick: int,
        options: ChainOptions = ChainOptions(),
    ) -> None:
        if isinstance(scheduler, DDIMScheduler) and scheduler.eta <= 0:
            raise ValueError("DDIM with eta = 0 is deterministic: fine-tune with DDPM or DDIM eta > 0")
        if not 1 <= finetuned_steps <= len(timesteps):
            raise ValueError(
                f"finetuned_steps must be in [1, {len(timesteps)}] (the chain's steps), got {finetuned_steps}"
            )
        self.policy, self.scheduler, self.options = policy, scheduler, options
        self.timesteps = timesteps.long()
        self.prev_timesteps = torch.cat([self.timesteps[1:], self.timesteps.new_tensor([-1])])
        self.finetuned_steps = finetuned_steps
        first = policy.cfg.n_obs_steps - 1
        self.executed = slice(first, first + actions_per_tick)

    @property
    def first_finetuned_timestep(self) -> int:
        """Timesteps below this one are fine-tuned (what `FinetunedDenoiser` routes on): t of step K - K', plus 1."""
        return int(self.timesteps[len(self.timesteps) - self.finetuned_steps]) + 1

    @torch.no_grad()
    def sample(self, cond: torch.Tensor, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Exploring rollout sample: (x0 (B, T, Da) normalized, chain (B, K' + 1, T, Da))."""
        batch, opts = cond.shape[0], self.options
        shape = (batch, self.policy.cfg.horizon, self.policy.action_dim)
        x = torch.randn(shape, generator=generator).to(cond.device)
        steps = len(self.timesteps)
        timesteps, prev_timesteps = self.timesteps.to(cond.device), self.prev_timesteps.to(cond.device)
        chain = []
        for i in range(steps):
            if i == steps - self.finetuned_steps:
                chain.append(x)
            t, prev = timesteps[i].expand(batch), prev_timesteps[i].expand(batch)
            out = self.scheduler.step(self.policy.denoiser(x, t, cond), t, prev, x, None)
            noise = torch.randn(shape, generator=generator).to(cond.device).clamp(-opts.noise_clip, opts.noise_clip)
            x = out.mean + out.std.clamp(min=opts.min_sampling_std) * noise
            if i == steps - 1 and opts.final_action_clip is not None:
                x = x.clamp(-opts.final_action_clip, opts.final_action_clip)
            if i >= steps - self.finetuned_steps:
                chain.append(x)
        return x, torch.stack(chain, dim=1)

    def log_prob(self, cond: torch.Tensor, chain: torch.Tensor, step: torch.Tensor) -> torch.Tensor:
        """log-likelihood (M,) of fine-tuned step `step` (M,) (0 .. K' - 1) of each recorded chain (M, K' + 1, T, Da).

        Differentiable in the fine-tuned denoiser's weights; `cond` (M, C) is the conditioning.
        """
        rows = torch.arange(chain.shape[0], device=chain.device)
        x, x_prev = chain[rows, step], chain[rows, step + 1]
        index = len(self.timesteps) - self.finetuned_steps + step.cpu()
        t, prev = self.timesteps[index].to(cond.device), self.prev_timesteps[index].to(cond.device)
        out = self.scheduler.step(self.policy.denoiser(x, t, cond), t, prev, x, None)
        return chain_log_prob(
            x_prev, out.mean, out.std, self.options.min_logprob_std, self.executed, self.options.logprob_clamp
        )
