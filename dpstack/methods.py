"""The method registry: the one place that lists what a policy config can name (`policy.method`).

    diffusion_policy   Diffusion Policy (dpstack.policy.diffusion_policy)
    diffuser           Diffuser trajectory planner (dpstack.planners.diffuser)
    gaussian           Gaussian MLP policy, trained by PPO (dpstack.policy.rl.gaussian)

It sits above both the policy and the planner layers (it imports them; neither imports it), so
`dpstack train` and every command that loads a checkpoint build any method through it. Adding a method
costs one module and one line here.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from dpstack.features import Feature
from dpstack.planners.diffuser import DiffuserPlanner
from dpstack.policy.checkpoint import FORMAT_VERSION, CheckpointError, read_json, read_tensors, resolve_checkpoint
from dpstack.policy.diffusion_policy import DiffusionPolicy, PolicyConfig
from dpstack.policy.module import PolicyModule
from dpstack.policy.rl.gaussian import GaussianPolicy

METHODS: dict[str, type[PolicyModule]] = {
    "diffusion_policy": DiffusionPolicy,
    "diffuser": DiffuserPlanner,
    "gaussian": GaussianPolicy,
}


def build_policy(
    cfg: PolicyConfig, obs_features: Mapping[str, Feature], action_feature: Feature, normalizer: Any = None
) -> PolicyModule:
    """The module of `cfg.method` for these features (normalizer None: filled by load_state_dict)."""
    if cfg.method not in METHODS:
        raise ValueError(f"method must be one of {sorted(METHODS)}, got {cfg.method!r}")
    return METHODS[cfg.method](cfg, obs_features, action_feature, normalizer)


def load_policy(path: str | Path, device: str | torch.device = "cpu") -> PolicyModule:
    """Rebuild the policy from config.json and load model.safetensors (strict: every tensor must match)."""
    directory = resolve_checkpoint(path)
    config = read_json(directory / "config.json")
    if config.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{directory / 'config.json'}: format_version {config.get('format_version')!r}, "
            f"this dpstack reads {FORMAT_VERSION}"
        )
    try:
        policy_cfg = PolicyConfig(**config["policy"])
        obs_features = {k: Feature.from_dict(v) for k, v in config["obs_features"].items()}
        policy = build_policy(policy_cfg, obs_features, Feature.from_dict(config["action_feature"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{directory / 'config.json'}: invalid policy config ({exc})") from exc
    state = read_tensors(directory / "model.safetensors")
    try:
        policy.load_state_dict(state, strict=True)
    except RuntimeError as exc:  # torch lists every tensor; the first one and a count say enough
        problems = [line.strip() for line in str(exc).splitlines()[1:] if line.strip()]
        first = (problems[0] if problems else str(exc)).rstrip(".")
        more = f"; and {len(problems) - 1} more" if len(problems) > 1 else ""
        raise CheckpointError(f"{directory / 'model.safetensors'}: does not match config.json: {first}{more}") from None
    policy.checkpoint_config = config
    return policy.to(device).eval()
