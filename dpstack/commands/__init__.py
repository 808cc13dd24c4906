"""One module per `dpstack` command: CONFIG_NAME, a Config dataclass (the schema) and run(cfg)."""

from __future__ import annotations

from typing import Any


def load_policy_and_sampler(
    checkpoint: str, sampler_cfg: Any, device: str = "cpu", methods: tuple[str, ...] | None = None
) -> tuple[Any, Any, Any]:
    """(policy, its TaskConfig, the sampler `sampler_cfg` names) for a command that acts with a checkpoint.

    `methods`: the policy methods the command supports (None: every method); another is a clear error.
    """
    from dpstack.errors import ConfigError
    from dpstack.methods import load_policy
    from dpstack.policy.checkpoint import CheckpointError
    from dpstack.tasks import TaskConfig

    policy = load_policy(checkpoint, device)
    if methods is not None and policy.cfg.method not in methods:
        raise ConfigError(f"{checkpoint}: a {policy.cfg.method} checkpoint; this command takes {', '.join(methods)}")
    if "task" not in policy.checkpoint_config:
        raise CheckpointError(f"{checkpoint}: config.json has no 'task' entry (not written by dpstack train)")
    try:
        sampler = policy.make_sampler(sampler_cfg)
    except ValueError as exc:
        raise ConfigError(f"sampler: {exc}") from None
    return policy, TaskConfig(**policy.checkpoint_config["task"]), sampler
