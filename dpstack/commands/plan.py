"""Plan one trajectory with a Diffuser checkpoint and render it over the maze as a PNG.

Resets the checkpoint's task on `seed`, plans from the start state to the goal (the plan's first and
last states are the inpainted conditions) and draws the planned positions over a top-down picture of
the maze. Prints the plan's length, the planning time and the distance from its end to the goal.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from dpstack.bounds import bounds

CONFIG_NAME = "plan"
POSITIONAL = ("checkpoint",)


@dataclass
class Config:
    checkpoint: str = field(default="???", metadata={"help": "training run or checkpoint dir of a diffuser planner"})
    out: str = field(default="plan.png", metadata={"help": "PNG to write"})
    seed: int | None = field(
        default=None, metadata={"help": "episode seed (default: the task's eval_seed)", **bounds(0)}
    )
    num_inference_steps: int | None = field(
        default=None, metadata={"help": "DDPM steps (default: the planner's)", **bounds(1)}
    )
    threads: int = field(default=1, metadata={"help": "torch intra-op threads", **bounds(1)})


def run(cfg: Config) -> int:
    import time
    from pathlib import Path

    import imageio.v2 as imageio
    import numpy as np
    import torch

    from dpstack.commands import load_policy_and_sampler
    from dpstack.envs.pointmaze_render import draw_plan
    from dpstack.envs.registry import make_env
    from dpstack.errors import ConfigError

    torch.set_num_threads(cfg.threads)
    sampler_cfg = {"num_inference_steps": cfg.num_inference_steps}
    planner, task, sampler = load_policy_and_sampler(cfg.checkpoint, sampler_cfg, methods=("diffuser",))
    env = make_env(task)
    if not hasattr(env.sim, "maze"):
        raise ConfigError(f"dpstack plan draws maze tasks; {task.name} has no maze")
    seed = task.eval_seed if cfg.seed is None else cfg.seed
    obs, _ = env.reset(seed=seed)
    opts = planner.options
    start = time.perf_counter()
    plan = planner.plan(
        torch.as_tensor(obs[opts.state_key])[None],
        torch.as_tensor(obs[opts.goal_key])[None],
        sampler,
        torch.Generator().manual_seed(seed),
    )
    elapsed = time.perf_counter() - start
    xy = plan["state"][0, :, : planner.goal_dim].numpy()
    out = Path(cfg.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    imageio.imwrite(out, draw_plan(env.sim, obs[opts.state_key][: planner.goal_dim], xy))
    env.close()
    gap = float(np.linalg.norm(xy[-1] - obs[opts.goal_key]))
    print(
        f"{task.name} seed {seed}: planned {len(xy)} states in {elapsed:.2f} s ({sampler.name}), "
        f"end {gap:.3f} from the goal -> {out}"
    )
    return 0
