"""Noise schedules and the DDPM / DDIM update rules, as pure tensor math.

Vocabulary (as in diffusers, minus the hidden state): a scheduler is built once from its options;
`timesteps(n)` returns the descending inference timesteps, `add_noise` is the forward process
q(x_t | x_0), and `step` is one reverse step that returns the Gaussian it samples from (mean and std,
which DPPO needs for log-likelihoods) together with the sample. Nothing is mutated, so one scheduler
serves training, every sampler, ONNX export and any number of concurrent streams.

Timesteps may be one per sample, shape (B,), or one per action position, shape (B, T) (the streaming
sampler gives each position its own noise level); they broadcast over samples of shape (B, T, D).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch

BETA_SCHEDULES = ("squaredcos_cap_v2", "linear")
PREDICTION_TYPES = ("epsilon", "sample")
SPACINGS = ("leading", "trailing", "linspace")


def _betas(schedule: str, n: int, beta_start: float, beta_end: float) -> torch.Tensor:
    if schedule == "linear":
        return torch.linspace(beta_start, beta_end, n, dtype=torch.float64)

    # cosine schedule (Nichol & Dhariwal 2021, eq. 17), betas capped at 0.999
    def alpha_bar(t: float) -> float:
        return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

    return torch.tensor(
        [min(1 - alpha_bar((i + 1) / n) / alpha_bar(i / n), 0.999) for i in range(n)], dtype=torch.float64
    )


class StepOutput(NamedTuple):
    """One reverse step x_t -> x_prev ~ N(mean, std^2)."""

    prev_sample: torch.Tensor  # (B, T, D) the sample at the previous (less noisy) timestep
    mean: torch.Tensor  # (B, T, D) mean of the Gaussian the sample is drawn from
    std: torch.Tensor  # broadcastable to (B, T, D): its standard deviation (0 for deterministic DDIM)
    pred_original_sample: torch.Tensor  # (B, T, D) the model's estimate of x_0


@dataclass(frozen=True)
class NoiseSchedule:
    """The forward process: betas and cumulative alphas over `num_train_timesteps` levels.

    Args:
        num_train_timesteps: number of noise levels N used in training (timestep 0 = least noisy).
        beta_schedule: "squaredcos_cap_v2" (cosine) or "linear".
        prediction_type: what the denoiser predicts: "epsilon" (the noise) or "sample" (x_0).
        clip_sample: clip the x_0 estimate to [-clip_range, clip_range] inside `step`.
    """

    num_train_timesteps: int = 100
    beta_schedule: str = "squaredcos_cap_v2"
    beta_start: float = 1e-4
    beta_end: float = 0.02
    prediction_type: str = "epsilon"
    clip_sample: bool = True
    clip_range: float = 1.0

    def __post_init__(self) -> None:
        if self.beta_schedule not in BETA_SCHEDULES:
            raise ValueError(f"beta_schedule must be one of {BETA_SCHEDULES}, got {self.beta_schedule!r}")
        if self.prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, got {self.prediction_type!r}")
        if self.num_train_timesteps < 1:
            raise ValueError(f"num_train_timesteps must be >= 1, got {self.num_train_timesteps}")
        betas = _betas(self.beta_schedule, self.num_train_timesteps, self.beta_start, self.beta_end)
        object.__setattr__(self, "betas", betas.float())
        object.__setattr__(self, "alphas_cumprod", torch.cumprod(1.0 - betas, 0).float())

    betas: torch.Tensor = None  # type: ignore[assignment]  # set in __post_init__
    alphas_cumprod: torch.Tensor = None  # type: ignore[assignment]

    def alpha_bar(self, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """alpha_bar_t broadcast to `like` (B, T, D); t < 0 means "clean" (alpha_bar = 1)."""
        table = torch.cat([torch.ones(1), self.alphas_cumprod]).to(like.device, like.dtype)
        values = table[t.long().clamp(min=-1) + 1]
        return values.reshape(*values.shape, *([1] * (like.ndim - values.ndim)))

    def add_noise(self, original: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """q(x_t | x_0) = N(sqrt(abar_t) x_0, (1 - abar_t) I) (DDPM eq. 4); t of shape (B,) or (B, T)."""
        abar = self.alpha_bar(t, original)
        return abar.sqrt() * original + (1 - abar).sqrt() * noise

    def training_target(self, original: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """What the denoiser is regressed onto: the noise or the clean sample."""
        return noise if self.prediction_type == "epsilon" else original

    def predict_original(self, model_output: torch.Tensor, t: torch.Tensor, sample: torch.Tensor) -> torch.Tensor:
        """x_0 estimate from the model output at x_t (clipped if `clip_sample`)."""
        if self.prediction_type == "epsilon":
            abar = self.alpha_bar(t, sample)
            x0 = (sample - (1 - abar).sqrt() * model_output) / abar.sqrt()
        else:
            x0 = model_output
        return x0.clamp(-self.clip_range, self.clip_range) if self.clip_sample else x0


@dataclass(frozen=True)
class DDPMScheduler:
    """Ancestral DDPM sampling (Ho et al. 2020, eq. 6-7) over a subset of the training timesteps."""

    schedule: NoiseSchedule
    min_std: float = 0.0  # floor on the step's std (DPPO's exploration noise floor)

    def timesteps(self, num_inference_steps: int | None = None, spacing: str = "leading") -> torch.Tensor:
        n = num_inference_steps or self.schedule.num_train_timesteps
        return spaced_timesteps(self.schedule.num_train_timesteps, n, spacing)

    def variance(self, t: torch.Tensor, prev_t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """The posterior variance of the step t -> prev_t, broadcastable to `like` (Diffuser scales guidance by it)."""
        abar_t = self.schedule.alpha_bar(t, like)
        abar_prev = self.schedule.alpha_bar(prev_t, like)
        return (1 - abar_prev) / (1 - abar_t) * (1 - abar_t / abar_prev)

    def step(
        self,
        model_output: torch.Tensor,
        t: torch.Tensor,
        prev_t: torch.Tensor,
        sample: torch.Tensor,
        noise: torch.Tensor | None,
    ) -> StepOutput:
        """x_t -> x_{prev_t}: the posterior q(x_prev | x_t, x_0_hat) with x_0_hat from the model.

        `t`, `prev_t`: (B,) or (B, T) integer timesteps (prev_t < t; -1 means "clean").
        `noise`: standard normal of the sample's shape, or None for the posterior mean.
        """
        x0 = self.schedule.predict_original(model_output, t, sample)
        abar_t = self.schedule.alpha_bar(t, sample)
        abar_prev = self.schedule.alpha_bar(prev_t, sample)
        alpha_t = abar_t / abar_prev  # the step's own alpha, also when timesteps are skipped
        beta_t = 1 - alpha_t
        mean = (abar_prev.sqrt() * beta_t / (1 - abar_t)) * x0 + (
            alpha_t.sqrt() * (1 - abar_prev) / (1 - abar_t)
        ) * sample
        std = self.variance(t, prev_t, sample).clamp(min=0).sqrt()  # 0 at the last step (prev_t = -1)
        std = std.clamp(min=self.min_std) if self.min_std > 0 else std
        prev = mean if noise is None else mean + std * noise
        return StepOutput(prev, mean, std, x0)


@dataclass(frozen=True)
class DDIMScheduler:
    """DDIM (Song et al. 2021, eq. 12): `eta` = 0 deterministic, 1 matches DDPM's variance."""

    schedule: NoiseSchedule
    eta: float = 0.0
    min_std: float = 0.0

    def timesteps(self, num_inference_steps: int = 10, spacing: str = "leading") -> torch.Tensor:
        return spaced_timesteps(self.schedule.num_train_timesteps, num_inference_steps, spacing)

    def step(
        self,
        model_output: torch.Tensor,
        t: torch.Tensor,
        prev_t: torch.Tensor,
        sample: torch.Tensor,
        noise: torch.Tensor | None,
    ) -> StepOutput:
        x0 = self.schedule.predict_original(model_output, t, sample)
        abar_t = self.schedule.alpha_bar(t, sample)
        abar_prev = self.schedule.alpha_bar(prev_t, sample)
        eps = (sample - abar_t.sqrt() * x0) / (1 - abar_t).sqrt()  # consistent with the (clipped) x0
        sigma = self.eta * ((1 - abar_prev) / (1 - abar_t) * (1 - abar_t / abar_prev)).clamp(min=0).sqrt()
        sigma = sigma.clamp(min=self.min_std) if self.min_std > 0 else sigma
        direction = (1 - abar_prev - sigma**2).clamp(min=0).sqrt() * eps
        mean = abar_prev.sqrt() * x0 + direction
        prev = mean if noise is None else mean + sigma * noise
        return StepOutput(prev, mean, sigma, x0)


def spaced_timesteps(num_train: int, n: int, spacing: str = "leading") -> torch.Tensor:
    """n descending timesteps evenly spaced over [0, num_train).

    "leading" (Diffusion Policy's DDIM): multiples of num_train // n, ending at 0, e.g. 90, 80, ..., 0.
    "trailing": floor((i + 1) num_train / n) - 1, starting at num_train - 1, e.g. 99, 89, ..., 9; the
    streaming sampler uses it so that its chunk boundaries fall on floor(N (i + 1) / h) - 1.
    "linspace" (diffusers' name): both ends, rounded, e.g. 99, 85, 71, 57, 42, 28, 14, 0 for 8 of 100.
    """
    if not 1 <= n <= num_train:
        raise ValueError(f"num_inference_steps must be in [1, {num_train}], got {n}")
    if spacing == "leading":
        return (torch.arange(n - 1, -1, -1) * (num_train // n)).long()
    if spacing == "trailing":
        return torch.tensor([(i + 1) * num_train // n - 1 for i in range(n - 1, -1, -1)], dtype=torch.long)
    if spacing == "linspace":
        return torch.linspace(num_train - 1, 0, n, dtype=torch.float64).round().long()
    raise ValueError(f"spacing must be one of {SPACINGS}, got {spacing!r}")
