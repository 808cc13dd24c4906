"""Distill a trained Diffusion Policy into a consistency policy (Consistency Policy): one call per chunk.

The student starts as a copy of the teacher checkpoint and learns, on the same demonstrations, to map a
noisy chunk at any level straight to the end of the teacher's deterministic DDIM trajectory
(`dpstack.policy.consistency`). The result is an ordinary checkpoint whose default sampler is
`consistency` (sampler.timesteps=[90]: one call; [90, 50]: two), so `dpstack eval`, `dpstack export`
and the ROS node take it unchanged. Same outputs, resume and keys as `dpstack train`.
"""

from __future__ import annotations

import json

from dpstack.train import TrainConfig as Config

CONFIG_NAME = "distill"
LOGS_COMMANDS = True  # <out>/commands.jsonl (dpstack.cli)
__all__ = ["CONFIG_NAME", "Config", "run"]


def run(cfg: Config) -> int:
    from dpstack.errors import ConfigError
    from dpstack.train import train

    if not cfg.teacher:
        raise ConfigError("teacher: required, the Diffusion Policy run or checkpoint to distill")
    print(json.dumps(train(cfg), indent=2))
    return 0
