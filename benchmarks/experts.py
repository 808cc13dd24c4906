"""Expert demonstrators: success rate, score, steps and CPU seconds per episode, per task.

Also measures the PointMaze normalized-score references in this env: R_random (uniform random
actions) and R_expert (the waypoint controller), mean return over the same seeds, which
`configs/task/pointmaze-*.yaml` store.

    python -m benchmarks.experts [--tasks pusht,lift] [--seeds 100] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from benchmarks.report import write_results
from envs.collect import run_expert_episode
from envs.registry import TASKS, TaskConfig, load_task_config


def random_return(task: TaskConfig, seeds: range) -> float:
    """Mean episode return of uniform random actions (the 0 of a normalized score)."""
    env = task.make_env()
    rng = np.random.default_rng(0)
    returns = []
    for seed in seeds:
        env.reset(seed=seed)
        total, done = 0.0, False
        while not done:
            _, reward, terminated, truncated, _ = env.step(rng.uniform(env.action_low, env.action_high))
            total += reward
            done = terminated or truncated
        returns.append(total)
    env.close()
    return float(np.mean(returns))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", default=",".join(TASKS), help="comma-separated task names")
    parser.add_argument("--seeds", type=int, default=100, help="episodes per task (seeds 0..N-1)")
    parser.add_argument("--out", default="benchmarks/results")
    args = parser.parse_args()
    rows = []
    for name in args.tasks.split(","):
        task = load_task_config(name)
        env = task.make_env()
        seeds = range(args.seeds)
        start = time.perf_counter()
        results = [run_expert_episode(env, task, seed, noise=0.0) for seed in seeds]
        env.close()
        returns = [float(r.data["reward"].sum()) for r in results]
        row = {
            "task": name,
            "episodes": len(results),
            "success_rate": float(np.mean([r.success for r in results])),
            "mean_score": float(np.mean([r.score for r in results])),
            "mean_return": float(np.mean(returns)),
            "mean_steps": float(np.mean([r.steps for r in results])),
            "cpu_s_per_episode": float(np.mean([r.cpu_s for r in results])),
            "cpu_s_per_episode_max": float(np.max([r.cpu_s for r in results])),
            "wall_s": time.perf_counter() - start,
        }
        if name == "pusht":
            row["mean_max_coverage"] = float(np.mean([r.final_info["max_coverage"] for r in results]))
        if name.startswith("pointmaze"):
            row["r_random"] = random_return(task, seeds)
            row["r_expert"] = row["mean_return"]
        rows.append(row)
        print({k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()}, flush=True)
    previous = Path(args.out) / "experts.json"
    if previous.exists():  # keep the rows of tasks not re-measured in this run
        measured = {row["task"] for row in rows}
        kept = [row for row in json.loads(previous.read_text())["rows"] if row["task"] not in measured]
        rows = sorted(kept + rows, key=lambda row: list(TASKS).index(row["task"]))
    write_results(
        Path(args.out),
        "experts",
        rows,
        columns=[
            ("task", "task"),
            ("episodes", "episodes"),
            ("success", "success_rate"),
            ("mean score", "mean_score"),
            ("mean steps", "mean_steps"),
            ("CPU s / episode", "cpu_s_per_episode"),
        ],
        meta={"seeds": f"0..{args.seeds - 1}", "noise": 0.0},
    )


if __name__ == "__main__":
    main()
