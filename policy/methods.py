"""The methods a policy config can name (`policy.method`): what `dpstack train` builds and checkpoints rebuild.

Each method is a torch module built as Method(cfg, obs_features, action_feature, normalizer) that
offers `data_timing()`, `compute_loss(batch)`, `config_dict()` for training and the policy interface
(`make_sampler`, `session`, `reset`, `select_action`, `predict_action_chunk`) for acting. Adding a
method costs one module and one line here.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

from envs.base import Feature

METHODS = {
    "diffusion_policy": "policy.diffusion_policy:DiffusionPolicy",
    "diffuser": "planners.diffuser:DiffuserPlanner",
}


def build_policy(cfg: Any, obs_features: Mapping[str, Feature], action_feature: Feature, normalizer: Any = None) -> Any:
    """The module of `cfg.method` for these features (normalizer None: filled by load_state_dict)."""
    module, name = METHODS[cfg.method].split(":")
    return getattr(importlib.import_module(module), name)(cfg, obs_features, action_feature, normalizer)
