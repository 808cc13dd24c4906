"""Expert demonstrators: success rate, score, steps and CPU seconds per episode, per task.

Also measures the PointMaze normalized-score references in this env: R_random (uniform random
actions) and R_expert (the waypoint controller), mean return over the same seeds, which
`configs/task/pointmaze-*.yaml` store, and an upper bound on the normalized score any controller can
reach in this env (`free_space_bound`).

    python -m benchmarks.experts [--tasks pusht,lift] [--seeds 100] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from benchmarks.report import write_results
from dpstack.envs.collect import run_expert_episode
from dpstack.envs.registry import TASKS, load_task_config, make_env
from dpstack.tasks import TaskConfig


def random_return(task: TaskConfig, seeds: range) -> float:
    """Mean episode return of uniform random actions (the 0 of a normalized score)."""
    env = make_env(task)
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


def free_space_bound(task: TaskConfig, seeds: range) -> float:
    """An upper bound on the mean sparse return of any controller over `seeds`.

    Walls and floor friction only slow the point down, and a force of at most 1 per axis has at most
    sqrt(2) along any direction, so no controller covers a distance faster than the point pushed by
    (1, 1) from rest with contacts turned off. Each episode's return is then at most the steps left
    after that point would first come within the success radius (0.45) of the goal in a straight line.
    """
    env = make_env(task)
    obs, _ = env.reset(seed=0)
    model = env.sim.point_env.model
    model.geom_contype[:] = 0
    model.geom_conaffinity[:] = 0
    start, reach = obs["state"][:2].copy(), [0.0]
    for _ in range(env.max_steps):
        obs, *_ = env.step(np.ones(2, np.float32))
        reach.append(float(np.linalg.norm(obs["state"][:2] - start)))
    env.close()
    reach = np.maximum.accumulate(reach)
    env = make_env(task)  # contacts back on
    bounds = []
    for seed in seeds:
        obs, _ = env.reset(seed=seed)
        distance = float(np.linalg.norm(obs["state"][:2] - obs["goal"])) - 0.45
        first = int(np.searchsorted(reach, distance)) if distance > 0 else 0  # steps before the first reward
        bounds.append(max(0, env.max_steps - max(first - 1, 0)))
    env.close()
    return float(np.mean(bounds))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", default=",".join(TASKS), help="comma-separated task names")
    parser.add_argument("--seeds", type=int, default=100, help="episodes per task (seeds 0..N-1)")
    parser.add_argument("--out", default="benchmarks/results")
    args = parser.parse_args()
    rows = []
    for name in args.tasks.split(","):
        task = load_task_config(name)
        env = make_env(task)
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
            if env.reward_type == "sparse":  # the bound counts steps at the goal
                row["return_bound"] = free_space_bound(task, seeds)
                row["score_bound"] = 100 * (row["return_bound"] - row["r_random"]) / (row["r_expert"] - row["r_random"])
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
            ("R random", "r_random"),
            ("R expert", "r_expert"),
            ("R bound", "return_bound"),
            ("score bound", "score_bound"),
        ],
        meta={"seeds": f"0..{args.seeds - 1}", "noise": 0.0},
    )


if __name__ == "__main__":
    main()
