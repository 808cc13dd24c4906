"""Train a Gaussian MLP policy with PPO on a task in simulation (`dpstack.policy.rl.ppo`).

The result is an ordinary dpstack checkpoint (method ``gaussian``): `dpstack eval checkpoint=<out>` runs
its mean action. On the locomotion tasks it is the expert whose rollouts make the D4RL-style stores.
"""

from __future__ import annotations

from dpstack.policy.rl.ppo import PPOConfig as Config

CONFIG_NAME = "rl_train"
LOGS_COMMANDS = True  # <out>/commands.jsonl (dpstack.cli)
__all__ = ["CONFIG_NAME", "Config", "run"]


def run(cfg: Config) -> int:
    from dpstack.methods import load_policy
    from dpstack.policy.rl.ppo import train

    train(cfg, load_policy(cfg.init).train() if cfg.init else None)
    return 0
