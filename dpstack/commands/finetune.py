"""Fine-tune a Diffusion Policy in simulation with DPPO (`dpstack.policy.rl.dppo`).

    dpstack finetune checkpoint=<pretrained run> task=<name> out=<run> [key=value ...]

The result is an ordinary dpstack checkpoint whose last `finetuned_steps` denoising steps run the
fine-tuned weights: `dpstack eval`, `dpstack export` and `dpstack ros policy` take it unchanged.
`resume=true` continues `out` from its last checkpoint.
"""

from __future__ import annotations

from dpstack.policy.rl.dppo import DPPOConfig as Config

CONFIG_NAME = "finetune"
LOGS_COMMANDS = True  # <out>/commands.jsonl (dpstack.cli)
__all__ = ["CONFIG_NAME", "Config", "run"]


def run(cfg: Config) -> int:
    from pathlib import Path

    from dpstack.methods import load_policy
    from dpstack.policy.rl.dppo import finetune

    latest = Path(cfg.out) / "checkpoints" / "latest"
    resuming = cfg.resume and (latest / "train_state.json").exists()
    policy = load_policy(latest if resuming else cfg.checkpoint)
    task = (policy.checkpoint_config.get("task") or {}).get("name")
    finetune(cfg, policy, checkpoint_task=task)
    return 0
