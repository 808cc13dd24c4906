"""Diffusion Policy (Chi et al. 2023): a denoiser over action chunks conditioned on observation history.

Timing (per window of `horizon` steps): the policy observes steps [0, n_obs_steps) and predicts all
`horizon` actions; the executable actions are the `n_action_steps` starting at the last observed step
(index n_obs_steps - 1). Observations and actions are normalized inside the policy with statistics
fitted on the training store, so raw environment values go in and raw actions come out.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from dpstack.features import Feature
from dpstack.policy.denoisers import DENOISERS
from dpstack.policy.denoisers import mlp as mlp_presets
from dpstack.policy.denoisers import transformer as transformer_presets
from dpstack.policy.denoisers import unet1d as unet_presets
from dpstack.policy.denoisers.finetuned import FinetunedDenoiser
from dpstack.policy.encoders import ObservationEncoder
from dpstack.policy.module import PolicyModule
from dpstack.policy.normalizer import Normalizer
from dpstack.policy.samplers import SAMPLERS, Sampler, SamplerState, SamplerWindow, StreamLayout
from dpstack.policy.samplers.streaming import streaming_training_timesteps
from dpstack.policy.schedulers import NoiseSchedule

NOISE_MODES = ("constant", "streaming")
_PRESETS = {"unet": unet_presets.PRESETS, "transformer": transformer_presets.PRESETS, "mlp": mlp_presets.PRESETS}


@dataclass
class PolicyConfig:
    """`configs/policy/<name>.yaml`: the network, the noise schedule and the action timing."""

    method: str = "diffusion_policy"  # diffusion_policy | diffuser (dpstack/methods.py)
    denoiser: str = "unet"  # unet | transformer | mlp
    preset: str = "small"  # a size preset of that denoiser (e.g. unet: lowdim, image, small, tiny)
    horizon: int = 16
    n_obs_steps: int = 2
    n_action_steps: int = 8
    num_train_timesteps: int = 100
    beta_schedule: str = "squaredcos_cap_v2"
    prediction_type: str = "epsilon"
    clip_sample: bool = True
    sampler: str = "ddpm"  # default sampler at inference: ddpm | ddim | streaming | rti
    num_inference_steps: int | None = None  # None: the sampler's default (ddpm: all levels, ddim: 10)
    noise_mode: str = "constant"  # training levels: constant (one per window) | streaming (chunk-wise mix)
    chunkwise_weight: float = 0.8  # streaming mode: share of windows with chunk-wise rising levels
    crop_fraction: float = 0.9  # image random-crop size (training) / centre crop (inference)
    finetuned_below: int = 0  # DPPO: timesteps below this run a fine-tuned copy of the denoiser (0: none)
    denoiser_kwargs: dict[str, Any] = field(default_factory=dict)  # overrides of the preset
    method_kwargs: dict[str, Any] = field(default_factory=dict)  # options of the method (diffuser: DiffuserOptions)

    def __post_init__(self) -> None:
        if self.denoiser not in DENOISERS:
            raise ValueError(f"denoiser must be one of {sorted(DENOISERS)}, got {self.denoiser!r}")
        if self.preset not in _PRESETS[self.denoiser]:
            raise ValueError(
                f"preset for {self.denoiser} must be one of {sorted(_PRESETS[self.denoiser])}, got {self.preset!r}"
            )
        if (
            not 1 <= self.n_obs_steps <= self.horizon
            or not 1 <= self.n_action_steps <= self.horizon - self.n_obs_steps + 1
        ):
            raise ValueError(
                f"need 1 <= n_obs_steps <= horizon and 1 <= n_action_steps <= horizon - n_obs_steps + 1, got "
                f"horizon={self.horizon}, n_obs_steps={self.n_obs_steps}, n_action_steps={self.n_action_steps}"
            )

        if not 0 <= self.finetuned_below <= self.num_train_timesteps:
            raise ValueError(
                f"finetuned_below must be in [0, num_train_timesteps={self.num_train_timesteps}], got {self.finetuned_below}"
            )
        if self.noise_mode not in NOISE_MODES:
            raise ValueError(f"noise_mode must be one of {NOISE_MODES}, got {self.noise_mode!r}")
        if self.noise_mode == "streaming" or self.sampler == "streaming":
            self.stream_layout()  # raises if the window does not split into chunks

    def stream_layout(self) -> StreamLayout:
        return StreamLayout(self.horizon, self.n_obs_steps - 1, self.n_action_steps)

    def schedule(self) -> NoiseSchedule:
        return NoiseSchedule(
            self.num_train_timesteps,
            self.beta_schedule,
            prediction_type=self.prediction_type,
            clip_sample=self.clip_sample,
        )


class DiffusionPolicy(PolicyModule):
    """compute_loss(batch) for training; predict_action_chunk(obs), or reset() + select_action(obs), for acting.

    Args:
        cfg: network, schedule and timing.
        obs_features / action_feature: the task's declared features (shapes, normalizer modes).
        normalizer: fitted statistics; when None an empty one is made, filled by `load_state_dict`.
    """

    def __init__(
        self,
        cfg: PolicyConfig,
        obs_features: Mapping[str, Feature],
        action_feature: Feature,
        normalizer: Normalizer | None = None,
    ) -> None:
        super().__init__()
        self.cfg = cfg
        self.obs_features = dict(obs_features)
        self.action_feature = action_feature
        self.action_dim = int(action_feature.shape[0])
        self.normalizer = normalizer if normalizer is not None else Normalizer()
        self.obs_encoder = ObservationEncoder(obs_features, cfg.n_obs_steps, cfg.crop_fraction)
        kwargs = {**_PRESETS[cfg.denoiser][cfg.preset], **cfg.denoiser_kwargs}
        if cfg.denoiser in ("transformer", "mlp"):
            kwargs["horizon"] = cfg.horizon
        if cfg.denoiser == "transformer":
            kwargs["n_cond_tokens"] = cfg.n_obs_steps
        self.denoiser = DENOISERS[cfg.denoiser](self.action_dim, self.obs_encoder.output_dim, **kwargs)
        if cfg.finetuned_below:
            self.denoiser = FinetunedDenoiser(self.denoiser, cfg.finetuned_below)
        self.schedule = cfg.schedule()

    def data_timing(self) -> dict[str, int]:
        """The training windows this policy learns from."""
        return {
            "horizon": self.cfg.horizon,
            "n_obs_steps": self.cfg.n_obs_steps,
            "n_action_steps": self.cfg.n_action_steps,
        }

    # ------------------------------------------------------------------ shared pieces
    def normalize_obs(self, obs: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        missing = sorted(set(self.obs_features) - set(obs))
        if missing:
            raise KeyError(f"observation is missing key(s) {missing}; the policy needs {sorted(self.obs_features)}")
        out = {}
        for key, feature in self.obs_features.items():
            value = obs[key]
            if tuple(value.shape[2:]) != feature.shape:
                raise ValueError(
                    f"observation '{key}' has per-step shape {tuple(value.shape[2:])}, expected {feature.shape} "
                    f"(input shape (B, n_obs_steps, *{feature.shape}))"
                )
            out[key] = self.normalizer.normalize(key, value)
        return out

    def condition(self, obs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Raw obs {key: (B, To, ...)} -> conditioning (B, C)."""
        return self.obs_encoder(self.normalize_obs(obs))

    # ------------------------------------------------------------------ training
    def training_noise(self, batch_size: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """The noise (B, T, Da) and levels of one training batch, from the global RNG (noise first).

        Distributed training draws the global batch's on every rank and keeps its own rows, so N ranks
        of batch b see exactly the draws of one process with batch N b.
        """
        noise = torch.randn(batch_size, self.cfg.horizon, self.action_dim, device=device)
        if self.cfg.noise_mode == "streaming":
            timesteps = streaming_training_timesteps(
                self.cfg.stream_layout(), self.schedule.num_train_timesteps, batch_size, self.cfg.chunkwise_weight
            ).to(device)
        else:
            timesteps = torch.randint(0, self.schedule.num_train_timesteps, (batch_size,), device=device)
        return noise, timesteps

    def compute_loss(
        self, batch: Mapping[str, Any], noise: torch.Tensor | None = None, timesteps: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Denoising loss on a batch {"obs": {key: (B, To, ...)}, "action": (B, T, Da)} of raw values."""
        action = self.normalizer.normalize("action", batch["action"])
        cond = self.condition(batch["obs"])
        if noise is None or timesteps is None:
            drawn_noise, drawn_timesteps = self.training_noise(action.shape[0], action.device)
            noise = drawn_noise if noise is None else noise
            timesteps = drawn_timesteps if timesteps is None else timesteps
        noisy = self.schedule.add_noise(action, noise, timesteps)
        prediction = self.denoiser(noisy, timesteps, cond)
        loss = F.mse_loss(prediction, self.schedule.training_target(action, noise))
        return loss, {"loss": loss.detach()}

    # ------------------------------------------------------------------ acting
    SAMPLERS = SAMPLERS

    def default_sampler_options(self) -> dict[str, Any]:
        options = {"name": self.cfg.sampler}
        if self.cfg.num_inference_steps is not None:  # samplers without steps (consistency) take none
            options["num_inference_steps"] = self.cfg.num_inference_steps
        return options

    def make_sampler(self, options: Any = None) -> Sampler:
        """A sampler laid out for this policy's window (`options`: see `PolicyModule.sampler_options`)."""
        window = SamplerWindow(
            self.schedule,
            self.cfg.horizon,
            self.cfg.n_obs_steps,
            self.cfg.n_action_steps,
            self.action_feature.discrete_dims,
        )
        return self.sampler_options(options).build(window)

    def default_sampler(self) -> Sampler:
        return self.make_sampler()

    def actions_per_tick(self, sampler: Sampler) -> int:
        return sampler.actions_per_tick or self.cfg.n_action_steps

    @torch.no_grad()
    def sample_tick(
        self,
        obs: Mapping[str, torch.Tensor],
        sampler: Sampler,
        state: SamplerState = None,
        noise: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, SamplerState]:
        """One control tick: raw obs (B, n_obs_steps, ...) -> (actions, new sampler state).

        The actions (B, A, Da) are raw and start at the last observed step; A >= the sampler's actions
        per tick (chunk samplers return all horizon - n_obs_steps + 1). `state` None starts an episode.
        """
        cond = self.condition(obs)
        shape = sampler.noise_shape(cond.shape[0], self.cfg.horizon, self.action_dim, state)
        if noise is None:
            noise = torch.randn(shape, generator=generator, device=cond.device if generator is None else "cpu").to(
                cond.device
            )
        elif tuple(noise.shape) != shape:
            raise ValueError(f"noise must have shape {shape} for sampler {sampler.name}, got {tuple(noise.shape)}")
        chunk, state = sampler.tick(self.denoiser, cond, state, noise)
        return self.normalizer.unnormalize("action", chunk[:, self.cfg.n_obs_steps - 1 :]), state

    def predict_action_chunk(
        self,
        obs: Mapping[str, torch.Tensor],
        noise: torch.Tensor | None = None,
        sampler: Sampler | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """A fresh chunk (an episode's first tick of `sampler`): raw actions (B, n_action_steps, Da)."""
        actions, _ = self.sample_tick(obs, sampler or self.default_sampler(), None, noise, generator)
        return actions[:, : self.cfg.n_action_steps]

    def session(self, sampler: Sampler | None = None, generator: torch.Generator | None = None) -> PolicySession:
        return PolicySession(self, sampler or self.default_sampler(), generator)


class PolicySession:
    """One episode of acting with a torch policy: the sampler's state, the noise generator, an NFE count.

    Callable as `RecedingHorizon`'s chunk source: history {key: (B, To, ...)} numpy -> actions
    (B, A, Da) numpy starting at the current step. `reset()` starts a new episode.
    """

    def __init__(self, policy: DiffusionPolicy, sampler: Sampler, generator: torch.Generator | None = None) -> None:
        self.policy, self.sampler, self.generator = policy, sampler, generator
        self.actions_per_tick = policy.actions_per_tick(sampler)
        self.network_evaluations = 0
        self.reset()

    def reset(self) -> None:
        self.state: SamplerState = None

    def __call__(self, history: Mapping[str, np.ndarray]) -> np.ndarray:
        obs = {k: torch.as_tensor(v, device=self.policy.device) for k, v in history.items()}
        self.network_evaluations += self.sampler.nfe(self.state)
        actions, self.state = self.policy.sample_tick(obs, self.sampler, self.state, generator=self.generator)
        return actions.cpu().numpy()
