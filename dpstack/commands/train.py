"""Train a Diffusion Policy on an episode store (AdamW + cosine + EMA, Diffusion Policy's recipe).

Writes out/checkpoints/latest (safetensors + JSON), metrics.jsonl, loss_curve.png and TensorBoard
logs under out/tb; evaluates the EMA policy in closed loop at the end (and every eval_every steps).
Stop it any time and continue with resume=true.
"""

from __future__ import annotations

import json

from dpstack.train import TrainConfig as Config

CONFIG_NAME = "train"
LOGS_COMMANDS = True  # <out>/commands.jsonl (dpstack.cli)
__all__ = ["CONFIG_NAME", "Config", "run"]


def run(cfg: Config) -> int:
    from dpstack.train import train

    print(json.dumps(train(cfg), indent=2))
    return 0
