"""Closed-loop score of a training run's latest checkpoint, appended to a learning curve.

Snapshots `<run>/checkpoints/latest` (so a run still training is not disturbed), evaluates it with
`dpstack eval`, and appends {step, train wall-clock, sampler, success, score} to
benchmarks/results/<name>_learning_curve.json and .md.

    python -m benchmarks.learning_curve --run runs/pusht-unet --sampler ddim --episodes 50
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

from benchmarks.report import write_results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True, help="training run directory")
    parser.add_argument("--sampler", default="ddim")
    parser.add_argument("--episodes", type=int, default=50)
    parser.add_argument("--num-envs", type=int, default=2)
    parser.add_argument("--out", default="benchmarks/results")
    args = parser.parse_args()
    run = Path(args.run)
    meta = json.loads((run / "checkpoints" / "latest" / "train_state.json").read_text())
    step = meta["step"]
    snapshot = run.parent / f"{run.name}-step{step}"
    if not snapshot.exists():
        shutil.copytree(run / "checkpoints" / "latest", snapshot)
    eval_dir = run.parent / f"{run.name}-step{step}-{args.sampler}-eval"
    dpstack = str(Path(sys.executable).with_name("dpstack"))
    subprocess.run(
        [
            dpstack,
            "eval",
            f"checkpoint={snapshot}",
            f"episodes={args.episodes}",
            f"sampler={args.sampler}",
            f"out={eval_dir}",
            f"num_envs={args.num_envs}",
            "videos=1",
            "progress=false",
        ],
        check=True,
    )
    record = json.loads((eval_dir / "eval.json").read_text())
    history = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    at_step = next((h for h in reversed(history) if h["step"] <= step and "val_loss" in h), {})
    row = {
        "step": step,
        "train_s": meta.get("train_seconds"),
        "val_loss": at_step.get("val_loss"),
        "sampler": record["sampler"],
        "episodes": record["episodes"],
        "success_rate": record["success_rate"],
        "mean_score": record["mean_score"],
    }
    name = f"{run.name}_learning_curve"
    path = Path(args.out) / f"{name}.json"
    rows = json.loads(path.read_text())["rows"] if path.exists() else []
    rows = sorted(
        [r for r in rows if (r["step"], r["sampler"]) != (step, row["sampler"])] + [row],
        key=lambda r: (r["step"], r["sampler"]),
    )
    write_results(
        Path(args.out),
        name,
        rows,
        columns=[
            ("step", "step"),
            ("validation loss", "val_loss"),
            ("sampler", "sampler"),
            ("episodes", "episodes"),
            ("success", "success_rate"),
            ("mean score", "mean_score"),
        ],
        meta={"run": str(run), "seed": 100000},
    )


if __name__ == "__main__":
    main()
