"""Real-Time Iteration warm start (RTI-DP): training-free fast sampling for any Diffusion Policy checkpoint.

The first tick of an episode runs a full sampler (DDPM-100 by default). Every later tick takes the
previous clean chunk, shifts it by the actions executed since (the last action repeated at the end),
noises it to the first of a short descending list of timesteps (e.g. 2, 1, 0) with the forward process,
and runs only those reverse steps. Discrete action dimensions (a gripper) are scaled down in the warm
start (x 0.1) so a few steps can still flip them. `pick_start_timestep` (run by `dpstack rti calibrate`)
picks the starting timestep offline from a dataset.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch

from dpstack.bounds import bounds
from dpstack.policy.samplers.base import Denoiser, SamplerState, SamplerWindow
from dpstack.policy.samplers.chunk import ChunkSampler, make_sampler, reverse_steps
from dpstack.policy.schedulers import DDIMScheduler, DDPMScheduler, NoiseSchedule


def shift_chunk(chunk: torch.Tensor, steps: int) -> torch.Tensor:
    """Drop the first `steps` actions of (B, T, Da) and repeat the last one at the end."""
    if steps == 0:
        return chunk
    return torch.cat([chunk[:, steps:], chunk[:, -1:].expand(-1, steps, -1)], dim=1)


@dataclass(frozen=True)
class RTISampler:
    """State: {"chunk": (B, T, Da)}, the last clean (normalized) chunk.

    Noise: first tick as `first`; later ticks (len(timesteps) + 1, B, T, Da): noise[0] noises the warm
    start, noise[i + 1] is the noise of step i. With no timesteps the tick returns the warm start.
    """

    first: ChunkSampler
    scheduler: DDPMScheduler | DDIMScheduler
    timesteps: tuple[int, ...] = (2, 1, 0)
    actions_per_tick: int = 1
    discrete_dims: tuple[int, ...] = ()
    discrete_scale: float = 0.1

    def __post_init__(self) -> None:
        steps = list(self.timesteps)
        n = self.scheduler.schedule.num_train_timesteps
        if steps != sorted(set(steps), reverse=True) or any(not 0 <= t < n for t in steps):
            raise ValueError(f"rti timesteps must be distinct, descending and in [0, {n}), got {steps}")
        if self.actions_per_tick < 1:
            raise ValueError(f"rti actions_per_tick must be >= 1, got {self.actions_per_tick}")

    stateful: ClassVar[bool] = True  # carries state between ticks (its first tick differs)

    @property
    def name(self) -> str:
        return "rti-" + ",".join(str(t) for t in self.timesteps)

    @property
    def schedule(self) -> NoiseSchedule:
        return self.scheduler.schedule

    def chunk_length(self, horizon: int) -> int:
        """Length of the chunk `tick` returns (from the window's first position)."""
        return horizon

    def nfe(self, state: SamplerState) -> int:
        return self.first.nfe(None) if state is None else len(self.timesteps)

    def noise_shape(self, batch: int, horizon: int, action_dim: int, state: SamplerState = None) -> tuple[int, ...]:
        if state is None:
            return self.first.noise_shape(batch, horizon, action_dim)
        return (len(self.timesteps) + 1, batch, horizon, action_dim)

    def warm_start(self, previous: torch.Tensor) -> torch.Tensor:
        """The previous chunk shifted by one tick, discrete dimensions scaled down."""
        warm = shift_chunk(previous, self.actions_per_tick)
        if self.discrete_dims:
            scale = torch.ones(warm.shape[-1], dtype=warm.dtype, device=warm.device)
            scale[list(self.discrete_dims)] = self.discrete_scale
            warm = warm * scale
        return warm

    @torch.no_grad()
    def refine(self, denoiser: Denoiser, cond: torch.Tensor, warm: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """Noise `warm` to timesteps[0], then run the reverse steps over `timesteps`."""
        if not self.timesteps:
            return warm
        steps = torch.tensor(self.timesteps, device=warm.device)
        x = self.schedule.add_noise(warm, noise[0], steps[0].expand(warm.shape[0]))
        return reverse_steps(self.scheduler, denoiser, cond, x, steps, noise[1:])

    def tick(
        self, denoiser: Denoiser, cond: torch.Tensor, state: SamplerState, noise: torch.Tensor
    ) -> tuple[torch.Tensor, SamplerState]:
        if state is None:
            chunk = self.first.sample(denoiser, cond, noise)
        else:
            chunk = self.refine(denoiser, cond, self.warm_start(state["chunk"]), noise)
        return chunk, {"chunk": chunk}


def warm_start_gaps(sampler: RTISampler, x_now: torch.Tensor, x_next: torch.Tensor) -> torch.Tensor:
    """(N,) gap between the warm start and the full solution at every training timestep k, in noise units.

    `x_now`, `x_next`: full solutions (B, T, Da) of consecutive ticks (windows `actions_per_tick` apart).
    At level k the forward-diffusion means of the warm start w = warm_start(x_now) and of x_next are
    sqrt(abar_k) w and sqrt(abar_k) x_next, and both carry noise of std sqrt(1 - abar_k), so
    sqrt(abar_k / (1 - abar_k)) * rms(w - x_next) says how distinguishable the two are: below ~1 the
    noise covers the warm start's error and the reverse steps from k contract what is left.
    """
    abar = sampler.schedule.alphas_cumprod.to(x_now.device)
    error = (sampler.warm_start(x_now) - x_next).pow(2).mean().sqrt()
    return (abar / (1 - abar)).sqrt() * error


def pick_start_timestep(gaps: torch.Tensor, threshold: float = 1.0) -> int:
    """The smallest timestep whose gap is below `threshold` (gaps fall as k grows)."""
    below = torch.nonzero(gaps <= threshold).flatten()
    return int(below[0]) if len(below) else len(gaps) - 1


@dataclass
class RTIOptions:
    """`sampler=rti`: Real-Time Iteration warm start (training-free; any checkpoint)."""

    name: str = "rti"
    first: str = field(default="ddpm", metadata={"help": "sampler of an episode's first tick (ddpm | ddim)"})
    num_inference_steps: int | None = field(
        default=None, metadata={"help": "levels of the first tick's sampler", **bounds(1)}
    )
    eta: float = field(default=0.0, metadata={"help": "DDIM stochasticity of the first tick (first=ddim)", **bounds(0)})
    timesteps: list[int] = field(default_factory=lambda: [2, 1, 0], metadata={"help": "refinement timesteps"})
    actions_per_tick: int = field(default=1, metadata={"help": "actions executed per tick", **bounds(1)})
    discrete_dims: list[int] | None = field(
        default=None, metadata={"help": "discrete action dims scaled in the warm start (None: the task's)"}
    )
    discrete_scale: float = field(
        default=0.1, metadata={"help": "scale of discrete dims in the warm start", **bounds(0)}
    )

    def build(self, window: SamplerWindow) -> RTISampler:
        dims = tuple(window.discrete_dims if self.discrete_dims is None else self.discrete_dims)
        first = make_sampler(self.first, window.schedule, self.num_inference_steps, self.eta)
        scheduler = DDPMScheduler(window.schedule)
        return RTISampler(first, scheduler, tuple(self.timesteps), self.actions_per_tick, dims, self.discrete_scale)
