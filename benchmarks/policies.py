"""Policy benchmarks: collect expert demos -> train -> evaluate, per recipe, through the CLI a user runs.

Each recipe is the exact sequence of `dpstack` commands that reproduces its row; finished steps are
skipped (an existing store is resumed, a finished training run is reused, `resume=true` continues an
interrupted one), so the script can be re-run after a stop. Results: benchmarks/results/policies.json
and .md, with the training budget (steps, wall-clock) and each run's learning curve in its run dir.

    python -m benchmarks.policies --recipes pointmaze-umaze-mlp,lift-unet [--runs runs]
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

from benchmarks.report import merge_with_previous, write_results

DPSTACK = str(Path(sys.executable).with_name("dpstack"))

RECIPES: dict[str, dict[str, Any]] = {
    "pusht-unet": {"task": "pusht", "demos": 200, "train": ["policy=unet", "steps=20000"], "eval": ["sampler=ddpm"]},
    "lift-unet": {"task": "lift", "demos": 200, "train": ["policy=unet", "steps=5000"], "eval": ["sampler=ddpm"]},
    **{
        f"pointmaze-{maze}-{policy}": {
            "task": f"pointmaze-{maze}",
            "demos": 200,
            "train": [f"policy={policy}", f"steps={steps}"],
            "eval": ["sampler=ddim"],
        }
        for policy, steps in (("mlp", 4000), ("unet", 3000))
        for maze in ("umaze", "medium", "large")
    },
}


def run_command(args: list[str], log: Path) -> None:
    """Run a dpstack command line (echoed, output appended to `log`); a failure stops the benchmark."""
    print("$", shlex.join(["dpstack", *args[1:]]), flush=True)
    with log.open("a") as out:
        subprocess.run(args, check=True, stdout=out, stderr=subprocess.STDOUT)


def run_recipe(name: str, runs: Path, eval_episodes: int) -> dict[str, Any]:
    recipe = RECIPES[name]
    task, store, run_dir, eval_dir = (
        recipe["task"],
        runs / f"{recipe['task']}{recipe['demos']}.zarr",
        runs / name,
        runs / f"{name}-eval",
    )
    log = runs / f"{name}.log"
    commands = [
        [
            DPSTACK,
            "collect",
            f"task={task}",
            f"episodes={recipe['demos']}",
            f"out={store}",
            "workers=2",
            "progress=false",
        ],
        [
            DPSTACK,
            "train",
            f"task={task}",
            *recipe["train"],
            f"dataset={store}",
            f"out={run_dir}",
            "eval_episodes=0",
            "checkpoint_every=1000",
            "val_every=1000",
            "threads=1",
            "progress=false",
            *(["resume=true"] if run_dir.exists() else []),
        ],
        [
            DPSTACK,
            "eval",
            f"checkpoint={run_dir}",
            f"episodes={eval_episodes}",
            *recipe["eval"],
            f"out={eval_dir}",
            "num_envs=2",
            "videos=2",
            "progress=false",
        ],
    ]
    for command in commands:
        run_command(command, log)
    record = json.loads((eval_dir / "eval.json").read_text())
    history = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {
        "recipe": name,
        "task": task,
        "policy": next(a.split("=")[1] for a in recipe["train"] if a.startswith("policy=")),
        "demos": recipe["demos"],
        "train_steps": history[-1]["step"],
        "train_wall_s": history[-1].get("train_s"),
        "sampler": record["sampler"],
        "episodes": record["episodes"],
        "success_rate": record["success_rate"],
        "mean_score": record["mean_score"],
        "nfe_per_action": record["nfe_per_action"],
        "tick_ms_p50": record["tick_ms_p50"],
        "tick_ms_p99": record["tick_ms_p99"],
        "commands": [shlex.join(["dpstack", *c[1:]]) for c in commands],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipes", default=",".join(RECIPES), help=f"comma-separated, from {', '.join(RECIPES)}")
    parser.add_argument("--runs", default="runs", help="where stores and runs live")
    parser.add_argument("--eval-episodes", type=int, default=50)
    parser.add_argument("--out", default="benchmarks/results")
    args = parser.parse_args()
    runs = Path(args.runs)
    runs.mkdir(parents=True, exist_ok=True)
    rows = [run_recipe(name, runs, args.eval_episodes) for name in args.recipes.split(",")]
    rows = merge_with_previous(Path(args.out), "policies", rows, list(RECIPES))
    write_results(
        Path(args.out),
        "policies",
        rows,
        columns=[
            ("recipe", "recipe"),
            ("train steps", "train_steps"),
            ("sampler", "sampler"),
            ("episodes", "episodes"),
            ("success", "success_rate"),
            ("mean score", "mean_score"),
            ("NFE / action", "nfe_per_action"),
            ("tick p50 ms", "tick_ms_p50"),
            ("tick p99 ms", "tick_ms_p99"),
        ],
        meta={"cpu_threads": 1},
    )


if __name__ == "__main__":
    main()
