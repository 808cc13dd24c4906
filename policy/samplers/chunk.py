"""Chunk samplers: denoise a whole action chunk from pure noise with DDPM or DDIM (Diffusion Policy)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch

from dpstack.bounds import bounds
from dpstack.errors import ConfigError
from dpstack.policy.samplers.base import Denoiser, SamplerState, SamplerWindow
from dpstack.policy.schedulers import SPACINGS, DDIMScheduler, DDPMScheduler, NoiseSchedule

_STEPS_HELP = "actions executed per tick (None: the policy's n_action_steps)"


def reverse_steps(
    scheduler: DDPMScheduler | DDIMScheduler,
    denoiser: Denoiser,
    cond: torch.Tensor,
    x: torch.Tensor,
    timesteps: torch.Tensor,
    noise: torch.Tensor,
) -> torch.Tensor:
    """Run reverse steps from `x` over descending `timesteps` (the last one goes to clean); noise[i] for step i."""
    batch = x.shape[0]
    prev_timesteps = torch.cat([timesteps[1:], timesteps.new_tensor([-1])])
    for i in range(len(timesteps)):
        t, prev = timesteps[i].expand(batch), prev_timesteps[i].expand(batch)
        x = scheduler.step(denoiser(x, t, cond), t, prev, x, noise[i]).prev_sample
    return x


@dataclass(frozen=True)
class ChunkSampler:
    """Every tick starts from pure noise and runs `num_inference_steps` reverse steps; no state.

    noise[0] is the initial sample x_T; noise[i + 1] is the noise of reverse step i (unused, and may be
    zeros, for deterministic DDIM). `step_noise` False zeroes the reverse steps' noise: DDPM then takes
    each step's posterior mean ("DDPM mean"; DPPO's own evaluation keeps DDPM's noise, which is zero at the
    last step anyway, i.e. the default). `actions_per_tick` None
    executes the policy's n_action_steps.
    """

    scheduler: DDPMScheduler | DDIMScheduler
    num_inference_steps: int
    actions_per_tick: int | None = None
    spacing: str = "leading"  # of the inference timesteps, see `dpstack.policy.schedulers.spaced_timesteps`
    step_noise: bool = True

    stateful: ClassVar[bool] = False  # carries state between ticks (its first tick differs)

    def __post_init__(self) -> None:
        self.scheduler.timesteps(
            self.num_inference_steps, self.spacing
        )  # a bad count or spacing fails here, not mid-run

    @property
    def name(self) -> str:
        kind = "ddpm" if isinstance(self.scheduler, DDPMScheduler) else "ddim"
        spacing = "" if self.spacing == "leading" else f"-{self.spacing}"
        return f"{kind}{'' if self.step_noise else '-mean'}-{self.num_inference_steps}{spacing}"

    @property
    def nfe_per_chunk(self) -> int:
        return self.num_inference_steps

    def chunk_length(self, horizon: int) -> int:
        """Length of the chunk `tick` returns (from the window's first position)."""
        return horizon

    def nfe(self, state: SamplerState) -> int:
        return self.num_inference_steps

    def noise_shape(self, batch: int, horizon: int, action_dim: int, state: SamplerState = None) -> tuple[int, ...]:
        return (self.num_inference_steps + 1, batch, horizon, action_dim)

    @torch.no_grad()
    def sample(self, denoiser: Denoiser, cond: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """Normalized chunk (B, T, Da) from noise of `noise_shape`."""
        timesteps = self.scheduler.timesteps(self.num_inference_steps, self.spacing).to(cond.device)
        step_noise = noise[1:] if self.step_noise else torch.zeros_like(noise[1:])
        return reverse_steps(self.scheduler, denoiser, cond, noise[0], timesteps, step_noise)

    def tick(
        self, denoiser: Denoiser, cond: torch.Tensor, state: SamplerState, noise: torch.Tensor
    ) -> tuple[torch.Tensor, SamplerState]:
        return self.sample(denoiser, cond, noise), None


def make_sampler(
    name: str, schedule: NoiseSchedule, num_inference_steps: int | None = None, eta: float = 0.0
) -> ChunkSampler:
    """A chunk sampler: "ddpm" (all training levels by default) or "ddim" (10 steps by default)."""
    if name == "ddpm":
        return ChunkSampler(DDPMScheduler(schedule), num_inference_steps or schedule.num_train_timesteps)
    if name == "ddim":
        return ChunkSampler(DDIMScheduler(schedule, eta=eta), num_inference_steps or 10)
    raise ValueError(f"unknown chunk sampler {name!r}; choose ddpm or ddim")


@dataclass
class DDPMOptions:
    """`sampler=ddpm`: full ancestral DDPM over every training level (Diffusion Policy's default)."""

    name: str = "ddpm"
    num_inference_steps: int | None = field(
        default=None, metadata={"help": "levels (None: every training level)", **bounds(1)}
    )
    deterministic: bool = field(
        default=False,
        metadata={
            "help": "no noise in the reverse steps: each step's posterior mean (stricter than DPPO's "
            "evaluation, which is the default: DDPM's own noise, none at the last step)"
        },
    )
    actions_per_tick: int | None = field(default=None, metadata={"help": _STEPS_HELP, **bounds(1)})

    def build(self, window: SamplerWindow) -> ChunkSampler:
        sampler = make_sampler("ddpm", window.schedule, self.num_inference_steps)
        return ChunkSampler(
            sampler.scheduler, sampler.num_inference_steps, self.actions_per_tick, step_noise=not self.deterministic
        )


@dataclass
class DDIMOptions:
    """`sampler=ddim`: DDIM (Song et al. 2021) over a few levels; deterministic with eta 0."""

    name: str = "ddim"
    num_inference_steps: int | None = field(default=None, metadata={"help": "levels (None: 10)", **bounds(1)})
    eta: float = field(default=0.0, metadata={"help": "DDIM stochasticity (0: deterministic)", **bounds(0)})
    actions_per_tick: int | None = field(default=None, metadata={"help": _STEPS_HELP, **bounds(1)})
    spacing: str = field(
        default="leading",
        metadata={
            "help": "levels: leading (Diffusion Policy's; multiples of T // n, e.g. 84, 72, ..., 0 for 8 of 100) "
            "or trailing (from T - 1 down, e.g. 99, 86, ..., 11: the first step starts from pure noise) "
            "or linspace (both ends, e.g. 99, 85, ..., 14, 0)"
        },
    )

    def build(self, window: SamplerWindow) -> ChunkSampler:
        if self.spacing not in SPACINGS:
            raise ConfigError(f"sampler.spacing must be one of {', '.join(SPACINGS)}, got {self.spacing!r}")
        sampler = make_sampler("ddim", window.schedule, self.num_inference_steps, self.eta)
        return ChunkSampler(sampler.scheduler, sampler.num_inference_steps, self.actions_per_tick, self.spacing)
