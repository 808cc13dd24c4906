"""The methods a policy config can name (`policy.method`): what `dpstack train` builds and checkpoints rebuild.

Each method is a `PolicyModule` built as Method(cfg, obs_features, action_feature, normalizer) that
offers `data_timing()` and `compute_loss(batch)` for training, and `make_sampler`, `session` and
`predict_action_chunk` for acting; `PolicyModule` adds the rest of the policy interface (`reset`,
`select_action`) and the checkpoint metadata. Adding a method costs one module and one line here.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import asdict
from typing import Any

import numpy as np
import torch
from torch import nn

from envs.base import Feature
from policy.execution import RecedingHorizon

METHODS = {
    "diffusion_policy": "policy.diffusion_policy:DiffusionPolicy",
    "diffuser": "planners.diffuser:DiffuserPlanner",
}


def build_policy(cfg: Any, obs_features: Mapping[str, Feature], action_feature: Feature, normalizer: Any = None) -> Any:
    """The module of `cfg.method` for these features (normalizer None: filled by load_state_dict)."""
    module, name = METHODS[cfg.method].split(":")
    return getattr(importlib.import_module(module), name)(cfg, obs_features, action_feature, normalizer)


class PolicyModule(nn.Module):
    """What every method shares: `reset()` + `select_action(obs)` over its `session()`, and `config_dict()`.

    Subclasses set `cfg` (a PolicyConfig), `obs_features`, `action_feature` and implement
    `session(sampler, generator)`, a `RecedingHorizon` chunk source with `actions_per_tick`.
    """

    cfg: Any
    obs_features: dict[str, Feature]
    action_feature: Feature

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
        """What config.json records to rebuild the module (see policy.checkpoint.load_policy)."""
        return {
            "policy": asdict(self.cfg),
            "obs_features": {k: asdict(f) for k, f in self.obs_features.items()},
            "action_feature": asdict(self.action_feature),
        }
