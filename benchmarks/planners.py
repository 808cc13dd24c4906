"""Diffuser planner benchmarks: collect -> train -> evaluate through the CLI a user runs.

Goal reaching (Diffuser's Maze2D protocol): a D4RL-style store per maze (the expert waypoint controller
with a new goal whenever one is reached, `task.env.reset_target=true`), `policy=diffuser[-medium|-large]`,
then `dpstack eval` on the fixed-goal task: success rate, D4RL normalized score (references measured in
this env, configs/task), the planning time per plan on this CPU, and how coherent the plans are (the
first and the largest step between planned positions, against the store's own steps).

Each maze is evaluated three ways from one checkpoint: Diffuser's plan once, the plan cut where it first
reaches the goal (`sampler.stop_at_goal`), and the first to arrive of 4 plans, cut the same way.

Value guidance: a store of a noisy controller (action noise 0.3) on `pointmaze-umaze-dense` (reward
exp(-distance to goal)), `policy=diffuser-value`, evaluated three ways from the same checkpoint:
guided and ranked by value (the preset), unguided best-of-N ranked by the value net, and unguided
single samples. `guidance_sweep` then shows what the guidance gradient does to single plans
(benchmarks/results/planners_guidance.json and .md).

Finished steps are skipped (stores resume, a finished run is reused, an interrupted one continues), so
the script can be re-run after a stop. Results: benchmarks/results/planners.json and .md.

    python -m benchmarks.planners [--recipes diffuser-umaze,diffuser-value] [--steps N] [--episodes N]
"""

from __future__ import annotations

import argparse
import json
import shlex
from pathlib import Path
from typing import Any

from benchmarks.policies import DPSTACK, run_command
from benchmarks.report import merge_with_previous, write_results
from dpstack.envs.registry import make_env
from dpstack.tasks import TaskConfig

# maze -> (policy preset, training steps, eval episodes): what fits this CPU's budget (Diffuser: 2 M steps on a GPU)
MAZE_PRESETS = {
    "umaze": ("diffuser", 5000, 50),
    "medium": ("diffuser-medium", 5000, 20),
    "large": ("diffuser-large", 3000, 20),
}
TRAIN = ["batch_size=32", "lr=2e-4", "warmup_steps=200", "eval_episodes=0", "checkpoint_every=500", "threads=2"]

# name -> task to evaluate, collect arguments, policy preset, training steps, eval episodes, evaluations {label: overrides}
RECIPES: dict[str, dict[str, Any]] = {
    **{
        f"diffuser-{maze}": {
            "task": f"pointmaze-{maze}",
            "collect": [f"task=pointmaze-{maze}", "task.env.reset_target=true", "task.max_steps=1000", "episodes=100"],
            "policy": preset,
            "steps": steps,
            "episodes": episodes,
            "evals": {
                "plan once": [],
                "plan once, stop at goal": ["sampler.stop_at_goal=0.45"],
                "first to arrive of 4, stop at goal": ["sampler.stop_at_goal=0.45", "sampler.n_samples=4"],
            },
        }
        for maze, (preset, steps, episodes) in MAZE_PRESETS.items()
    },
    "diffuser-value": {
        "task": "pointmaze-umaze-dense",
        "collect": ["task=pointmaze-umaze-dense", "episodes=300", "noise=0.3"],
        "policy": "diffuser-value",
        "steps": 2500,
        "episodes": 10,  # guided: 75 plans of 16 guided samples per episode, ~1 s each on this CPU
        "evals": {
            "guided, best of 16 by value": [],
            "unguided, best of 16 by value": ["sampler.guide_scale=0"],
            "unguided, one sample": ["sampler.guide_scale=0", "sampler.n_samples=1"],
        },
    },
}


def plan_steps(run_dir: Path, seeds: range = range(100000, 100004)) -> dict[str, float]:
    """How coherent the plans are: median over `seeds` of the first and the largest step between consecutive
    planned positions, beside the 99th percentile of the same step in the training store (its own motion)."""
    import numpy as np
    import torch

    from dpstack.data.store import EpisodeStore
    from dpstack.methods import load_policy
    from dpstack.policy.checkpoint import read_json, resolve_checkpoint

    torch.set_num_threads(2)
    planner = load_policy(run_dir)
    task = TaskConfig(**read_json(resolve_checkpoint(run_dir) / "config.json")["task"])
    env = make_env(task)
    first, largest = [], []
    for seed in seeds:
        obs, _ = env.reset(seed=seed)
        plan = planner.plan(
            torch.as_tensor(obs["state"])[None], torch.as_tensor(obs["goal"])[None],
            generator=torch.Generator().manual_seed(seed),
        )  # fmt: skip
        steps = np.linalg.norm(np.diff(plan["state"][0, :, :2].numpy(), axis=0), axis=1)
        first.append(steps[0])
        largest.append(steps.max())
    env.close()
    store = EpisodeStore.open(read_json(run_dir / "train_config.json")["dataset"])
    data = np.linalg.norm(np.diff(store.read("state")[:, :2], axis=0), axis=1)
    data = np.delete(data, store.episode_ends[:-1] - 1)  # no steps across episode boundaries
    return {
        "plan_first_step": float(np.median(first)),
        "plan_max_step": float(np.median(largest)),
        "data_step_p99": float(np.percentile(data, 99)),
    }


def guidance_sweep(
    run_dir: Path, scales: tuple[float, ...] = (0.0, 1.0, 10.0, 100.0, 1000.0), seeds: range = range(100000, 100024)
) -> tuple[list[dict[str, Any]], dict[str, float]]:
    """What the guidance gradient does to single plans from the evaluation starts, scale by scale: the value
    net's estimate at t = 0, beside the plan's own discounted dense reward (sum_k discount^k exp(-|xy_k - goal|),
    x (1 - discount) like the value targets), which is what the value stands for within the horizon.
    Also how well the estimate ranks 16 unguided plans: its correlation with their own reward over all
    plans, and the median correlation among the plans of one start."""
    import numpy as np
    import torch

    from dpstack.methods import load_policy
    from dpstack.planners.diffuser import PlanOptions
    from dpstack.policy.checkpoint import read_json, resolve_checkpoint

    torch.set_num_threads(2)
    planner = load_policy(run_dir)
    task = TaskConfig(**read_json(resolve_checkpoint(run_dir) / "config.json")["task"])
    env = make_env(task)
    starts = [env.reset(seed=seed)[0] for seed in seeds]
    env.close()
    state = torch.as_tensor(np.stack([obs["state"] for obs in starts]))
    goal = torch.as_tensor(np.stack([obs["goal"] for obs in starts]))
    discount = planner.options.value_discount

    def distance_to_goal(plan: dict[str, torch.Tensor], goal: torch.Tensor) -> torch.Tensor:
        return torch.linalg.vector_norm(plan["state"][..., : planner.goal_dim] - goal[:, None], dim=-1)

    def own_reward(distance: torch.Tensor) -> torch.Tensor:
        return (torch.exp(-distance) * discount ** torch.arange(distance.shape[1])).sum(1) * (1 - discount)

    def single_plans(scale: float) -> Any:
        return planner.make_sampler(PlanOptions(guide_scale=scale, n_samples=1))

    rows = []
    for scale in scales:
        plan = planner.plan(state, goal, single_plans(scale), torch.Generator().manual_seed(0))
        distance = distance_to_goal(plan, goal)
        own = own_reward(distance)
        rows.append(
            {
                "guide_scale": scale,
                "plans": len(seeds),
                "value_estimate": float(plan["value"].mean()),
                "plan_reward": float(own.mean()),
                "plan_final_distance": float(distance[:, -1].mean()),
            }
        )
    n = 16
    goals = goal.repeat_interleave(n, 0)
    plan = planner.plan(state.repeat_interleave(n, 0), goals, single_plans(0.0), torch.Generator().manual_seed(1))
    value, own = plan["value"].numpy(), own_reward(distance_to_goal(plan, goals)).numpy()
    within = [np.corrcoef(value[i : i + n], own[i : i + n])[0, 1] for i in range(0, len(value), n)]
    ranking = {
        "value_vs_own_reward_corr_all": float(np.corrcoef(value, own)[0, 1]),
        "value_vs_own_reward_corr_within_start_median": float(np.nanmedian(within)),
    }
    return rows, ranking


def run_recipe(name: str, runs: Path, steps: int | None, episodes: int | None) -> list[dict[str, Any]]:
    recipe = RECIPES[name]
    steps, episodes = steps or recipe["steps"], episodes or recipe["episodes"]
    store, run_dir, log = runs / f"{name}.zarr", runs / name, runs / f"{name}.log"
    commands = [
        [DPSTACK, "collect", *recipe["collect"], f"out={store}", "workers=2", "progress=false"],
        [
            DPSTACK,
            "train",
            f"task={recipe['task']}",
            f"policy={recipe['policy']}",
            f"dataset={store}",
            f"out={run_dir}",
            f"steps={steps}",
            *TRAIN,
            "progress=false",
            *(["resume=true"] if run_dir.exists() else []),
        ],
    ]
    for command in commands:
        run_command(command, log)
    history = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    coherence = plan_steps(run_dir) if recipe["policy"] != "diffuser-value" else {}
    rows = []
    for i, (label, overrides) in enumerate(recipe["evals"].items()):
        eval_dir = runs / f"{name}-eval{i}"
        command = [
            DPSTACK,
            "eval",
            f"checkpoint={run_dir}",
            f"episodes={episodes}",
            "sampler=plan",
            *overrides,
            f"out={eval_dir}",
            "num_envs=1",  # one plan per planning call: the time per plan is that of one plan
            "threads=2",
            "videos=2",
            "progress=false",
        ]
        model = run_dir / "checkpoints" / "latest" / "model.safetensors"
        done = eval_dir / "eval.json"
        if not done.exists() or done.stat().st_mtime < model.stat().st_mtime:  # an evaluation of this model: kept
            run_command(command, log)
        record = json.loads(done.read_text())
        rows.append(
            {
                "recipe": name,
                "task": recipe["task"],
                "planning": label,
                "train_steps": history[-1]["step"],
                "train_minutes": round(history[-1].get("train_s", 0.0) / 60, 1),
                "sampler": record["sampler"],
                "episodes": record["episodes"],
                "success_rate": record["success_rate"],
                "mean_score": record["mean_score"],
                "mean_return": record.get("mean_return"),
                "plan_ms_p50": record.get("plan_ms_p50"),
                "plans_per_episode": record.get("plans_per_episode"),
                "nfe_per_action": record["nfe_per_action"],
                **coherence,
                "commands": [shlex.join(["dpstack", *c[1:]]) for c in [*commands, command]],
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipes", default=",".join(RECIPES), help=f"comma-separated, from {', '.join(RECIPES)}")
    parser.add_argument("--runs", default="runs/planners", help="where stores and runs live")
    parser.add_argument("--steps", type=int, default=None, help="training steps of every recipe (default: its own)")
    parser.add_argument("--episodes", type=int, default=None, help="evaluation episodes per row (default: its own)")
    parser.add_argument("--out", default="benchmarks/results")
    args = parser.parse_args()
    runs = Path(args.runs)
    runs.mkdir(parents=True, exist_ok=True)
    rows = [row for name in args.recipes.split(",") for row in run_recipe(name, runs, args.steps, args.episodes)]
    if "diffuser-value" in args.recipes.split(","):
        sweep, ranking = guidance_sweep(runs / "diffuser-value")
        write_results(
            Path(args.out),
            "planners_guidance",
            sweep,
            columns=[
                ("guide scale", "guide_scale"),
                ("plans", "plans"),
                ("value estimate", "value_estimate"),
                ("plan's own discounted reward", "plan_reward"),
                ("plan end: distance to goal", "plan_final_distance"),
            ],
            meta={"seeds": "100000..100023", "sampling_seed": 0, "n_samples": 1, "torch_threads": 2, **ranking},
        )
    rows = merge_with_previous(Path(args.out), "planners", rows, list(RECIPES))
    write_results(
        Path(args.out),
        "planners",
        rows,
        columns=[
            ("recipe", "recipe"),
            ("task", "task"),
            ("planning", "planning"),
            ("train steps", "train_steps"),
            ("train min", "train_minutes"),
            ("episodes", "episodes"),
            ("success", "success_rate"),
            ("normalized score", "mean_score"),
            ("return", "mean_return"),
            ("ms / plan", "plan_ms_p50"),
            ("plans / episode", "plans_per_episode"),
            ("plan 1st step", "plan_first_step"),
            ("plan max step", "plan_max_step"),
            ("data step p99", "data_step_p99"),
        ],
        meta={"device": "cpu", "torch_threads": 2},
    )


if __name__ == "__main__":
    main()
