"""`PolicyModule`: the base every method (Diffusion Policy, the Diffuser planner) builds on.

Each method is a `PolicyModule` built as Method(cfg, obs_features, action_feature, normalizer) that
offers `data_timing()` and `compute_loss(batch)` for training, and `make_sampler`, `session` and
`predict_action_chunk` for acting; this base adds the rest of the policy interface (`reset`,
`select_action`) and the checkpoint metadata. The registry of methods is `dpstack.methods`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from dpstack.config import to_schema
from dpstack.features import Feature
from dpstack.policy.execution import RecedingHorizon


def method_options(options_type: type, cfg: Any) -> Any:
    """`cfg.method_kwargs` as the method's options dataclass; an unknown key is an error listing the valid ones."""
    try:
        return options_type(**cfg.method_kwargs)
    except TypeError as exc:
        valid = ", ".join(options_type.__dataclass_fields__)
        raise ValueError(f"policy.method_kwargs: {exc}; valid keys: {valid}") from None


class PolicyModule(nn.Module):
    """What every method shares: `reset()` + `select_action(obs)` over its `session()`, and `config_dict()`.

    Subclasses set `cfg` (a PolicyConfig), `obs_features`, `action_feature` and implement
    `session(sampler, generator)`, a `RecedingHorizon` chunk source with `actions_per_tick`.
    """

    cfg: Any
    obs_features: dict[str, Feature]
    action_feature: Feature
    SAMPLERS: ClassVar[Mapping[str, type]]  # the options dataclass of each sampler this method acts with

    def default_sampler_options(self) -> dict[str, Any]:
        """The sampler (name and options) this method acts with when none is named."""
        raise NotImplementedError

    def sampler_options(self, options: Any = None) -> Any:
        """Typed options of one of this method's samplers (`SAMPLERS`).

        `options`: typed options; a mapping {"name": ..., key: value} (validated: an unknown key or
        sampler is an error naming the valid ones; without a name, the method's default sampler with
        these keys set); a sampler name; or None (the method's default sampler).
        """
        if options is not None and not isinstance(options, str | Mapping):
            if type(options) not in self.SAMPLERS.values():
                raise ValueError(f"{self.cfg.method} cannot act with {type(options).__name__}")
            return options
        values = {"name": options} if isinstance(options, str) else dict(options or {})
        if not values.get("name"):
            values = {**self.default_sampler_options(), **{k: v for k, v in values.items() if v is not None}}
        name = values["name"]
        if name not in self.SAMPLERS:
            raise ValueError(f"{self.cfg.method} acts with sampler {' | '.join(self.SAMPLERS)}, got {name!r}")
        return to_schema(self.SAMPLERS[name], values, f"sampler {name}")

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def session(self, sampler: Any = None, generator: torch.Generator | None = None) -> Any:
        raise NotImplementedError

    def reset(self, generator: torch.Generator | None = None, sampler: Any = None) -> None:
        """Forget the observation history, queued actions and sampler state (call at every episode start).

        `generator` draws this episode's sampling noise (None: torch's global RNG).
        """
        session = self.session(sampler, generator)
        self._runner = RecedingHorizon(session, self.cfg.n_obs_steps, session.actions_per_tick)

    def select_action(self, obs: Mapping[str, Any]) -> torch.Tensor:
        """One control tick: raw obs {key: (B, *shape)} of the current step -> raw action (B, Da).

        Keeps the last n_obs_steps observations, a queue of actions and the method's acting state
        (sampler state, a plan); the caller's dict is not modified.
        """
        if getattr(self, "_runner", None) is None:
            self.reset()
        numpy_obs = {k: v.detach().cpu().numpy() if torch.is_tensor(v) else np.asarray(v) for k, v in obs.items()}
        return torch.as_tensor(self._runner.select_action(numpy_obs))

    def config_dict(self) -> dict[str, Any]:
        """What config.json records to rebuild the module (see dpstack.methods.load_policy)."""
        return {
            "policy": asdict(self.cfg),
            "obs_features": {k: asdict(f) for k, f in self.obs_features.items()},
            "action_feature": asdict(self.action_feature),
        }


@torch.no_grad()
def ema_update(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    """ema <- decay * ema + (1 - decay) * model, parameter by parameter (the trainer's EMA, a distillation target)."""
    averaged, current = list(ema.parameters()), [p.detach() for p in model.parameters()]
    if len(averaged) != len(current):
        raise ValueError(f"ema_update: the EMA has {len(averaged)} parameters, the model {len(current)}")
    torch._foreach_lerp_(averaged, current, 1 - decay)  # one fused pass, not two ops per parameter
