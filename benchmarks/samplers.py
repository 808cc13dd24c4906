"""Real-time samplers side by side: score, success, network evaluations per action and tick latency.

One run, one task, the same seeds for every sampler, batch 1 (one robot), `threads` torch threads.
The chunk samplers and RTI act with a standard Diffusion Policy checkpoint; streaming needs a policy
trained with `policy.noise_mode=streaming` of the same recipe (same data, network and steps), which is
also evaluated with DDPM-100 to show what the streaming training costs the standard sampler. The
one-call-per-tick rows use a per-action streaming policy (`policy=unet-streaming-per-action`) and a
consistency student distilled from the standard policy (`dpstack distill`).

    python -m benchmarks.samplers --task pusht --standard runs/pusht-unet-step10000 \
        --streaming runs/pusht-unet-streaming --per-action runs/pusht-unet-stream1 \
        --distilled runs/pusht-consistency --episodes 50

Rows go to benchmarks/results/samplers.json (merged by task, so tasks can be run one at a time) and
samplers.md; each evaluation's eval.json is kept under --out.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from benchmarks.report import write_results
from dpstack.envs.registry import task_spec
from dpstack.methods import load_policy
from dpstack.policy.evaluate import EvalSpec, evaluate_policy
from dpstack.policy.samplers import (
    ConsistencyOptions,
    DDIMOptions,
    DDPMOptions,
    RTIOptions,
    SamplerOptions,
    StreamingOptions,
)
from dpstack.tasks import TaskConfig

RESULTS = Path(__file__).parent / "results"

# the consistency student's levels per number of calls: the distillation grid, evenly spaced, fixed before any
# evaluation; every benchmark's consistency-K row uses these (samplers, export, few_step)
CONSISTENCY_LEVELS: dict[int, list[int]] = {
    1: [90],
    2: [90, 50],
    4: [90, 70, 50, 30],
    8: [90, 80, 70, 60, 50, 40, 30, 20],
}

# key -> (row label, checkpoint: "standard" | "streaming" | "per_action" | "distilled", sampler config)
LINEUP: dict[str, tuple[str, str, SamplerOptions]] = {
    "ddpm-100": ("ddpm-100", "standard", DDPMOptions()),
    "ddim-10": ("ddim-10", "standard", DDIMOptions(num_inference_steps=10)),
    "ddim-4": ("ddim-4", "standard", DDIMOptions(num_inference_steps=4)),
    "ddim-8": ("ddim-8", "standard", DDIMOptions(num_inference_steps=8)),
    "ddim-8-trailing": ("ddim-8, trailing levels", "standard", DDIMOptions(num_inference_steps=8, spacing="trailing")),
    "rti-1": ("rti [2,1,0], 1 action/tick", "standard", RTIOptions(actions_per_tick=1)),
    "rti-calibrated": (
        "rti [7,1,0] (dpstack rti calibrate), 1 action/tick",
        "standard",
        RTIOptions(timesteps=[7, 1, 0], actions_per_tick=1),
    ),
    "rti-3": ("rti [2,1,0], 3 actions/tick", "standard", RTIOptions(actions_per_tick=3)),
    "streaming": ("streaming-15, 5 actions/tick", "streaming", StreamingOptions()),
    "streaming-ddpm": ("ddpm-100 on the streaming-trained policy", "streaming", DDPMOptions()),
    "per-action": (
        "per-action streaming-15, one-call start (1 call/tick)",
        "per_action",
        StreamingOptions(start_steps=1),
    ),
    "per-action-full-start": ("per-action streaming-15, full start", "per_action", StreamingOptions()),
    "per-action-ddpm": ("ddpm-100 on the per-action streaming policy", "per_action", DDPMOptions()),
    "consistency-1": ("consistency-1 (distilled from the standard policy)", "distilled", ConsistencyOptions()),
    **{
        f"consistency-{k}": (
            f"consistency-{k} {CONSISTENCY_LEVELS[k]}",
            "distilled",
            ConsistencyOptions(timesteps=CONSISTENCY_LEVELS[k]),
        )
        for k in (2, 4, 8)
    },
}


def steady_nfe_per_action(policy: Any, sampler: Any) -> float:
    """Network evaluations per executed action once an episode runs (its first tick left out)."""
    return sampler.nfe({} if sampler.stateful else None) / policy.actions_per_tick(sampler)


def run(task_name: str, checkpoints: dict[str, str], episodes: int, out: Path, only: list[str]) -> list[dict[str, Any]]:
    rows = []
    for key, (label, which, sampler_cfg) in LINEUP.items():
        if only and key not in only:
            continue
        if not checkpoints.get(which):
            print(f"skip {label}: no --{which} checkpoint")
            continue
        policy = load_policy(checkpoints[which])
        task = TaskConfig(**policy.checkpoint_config["task"])
        assert task.name == task_name, f"{checkpoints[which]} is a {task.name} policy, not {task_name}"
        if sampler_cfg.name == "rti" and sampler_cfg.discrete_dims is None:
            # checkpoints written before actions declared discrete dims: take them from the task
            sampler_cfg = replace(sampler_cfg, discrete_dims=list(task_spec(task).action_feature.discrete_dims))
        sampler = policy.make_sampler(sampler_cfg)
        eval_dir = out / f"{task_name}-{key}"
        print(f"{task_name} {label}: {episodes} episodes ...", flush=True)
        record = evaluate_policy(policy, EvalSpec(task, episodes, out_dir=eval_dir, videos=0), sampler)
        row = {
            "task": task_name,
            "sampler": label,
            "sampler_name": sampler.name,
            "checkpoint": checkpoints[which],
            "actions_per_tick": policy.actions_per_tick(sampler),
            "steady_nfe_per_action": steady_nfe_per_action(policy, sampler),
            **{k: record[k] for k in ("episodes", "mean_score", "success_rate", "nfe_per_action")},
            **{k: record[k] for k in ("tick_ms_p50", "tick_ms_p99", "inference_ms_p50", "mean_steps")},
        }
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", required=True)
    parser.add_argument("--standard", help="checkpoint of a standard (constant-noise) policy")
    parser.add_argument("--streaming", help="checkpoint of the same recipe trained with noise_mode=streaming")
    parser.add_argument("--per-action", help="the same recipe trained with policy=unet-streaming-per-action")
    parser.add_argument("--distilled", help="a consistency student of --standard (dpstack distill)")
    parser.add_argument("--episodes", type=int, default=50)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--only", default="", help=f"comma-separated rows to run, of {', '.join(LINEUP)}")
    parser.add_argument("--out", type=Path, default=Path("runs/bench-samplers"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    only = [s for s in args.only.split(",") if s] if args.only else []
    checkpoints = {
        "standard": args.standard,
        "streaming": args.streaming,
        "per_action": args.per_action,
        "distilled": args.distilled,
    }
    rows = run(args.task, checkpoints, args.episodes, args.out, only)
    merge_and_write(rows, args.episodes, args.threads)


def merge_and_write(rows: list[dict[str, Any]], episodes: int, threads: int) -> None:
    """Merge `rows` into benchmarks/results/samplers.json (replacing rows of the same task and sampler)."""
    previous = (
        json.loads((RESULTS / "samplers.json").read_text())["rows"] if (RESULTS / "samplers.json").exists() else []
    )
    done = {(r["task"], r["sampler"]) for r in rows}
    rows = [r for r in previous if (r["task"], r["sampler"]) not in done] + rows
    for row in rows:  # rows written before this column existed
        if "steady_nfe_per_action" not in row:
            key = next(k for k, (label, _, _) in LINEUP.items() if label == row["sampler"])
            policy = load_policy(row["checkpoint"])
            row["steady_nfe_per_action"] = steady_nfe_per_action(policy, policy.make_sampler(LINEUP[key][2]))
    order = {label: i for i, (label, _, _) in enumerate(LINEUP.values())}
    rows.sort(key=lambda r: (r["task"], order.get(r["sampler"], 99)))
    write_results(
        RESULTS,
        "samplers",
        rows,
        [
            ("task", "task"),
            ("sampler", "sampler"),
            ("mean score", "mean_score"),
            ("success", "success_rate"),
            ("NFE / action (steady)", "steady_nfe_per_action"),
            ("NFE / action (measured)", "nfe_per_action"),
            ("tick p50 ms", "tick_ms_p50"),
            ("tick p99 ms", "tick_ms_p99"),
            ("inference p50 ms", "inference_ms_p50"),
            ("episodes", "episodes"),
        ],
        {
            "episodes": episodes,
            "threads": threads,
            "batch": 1,
            "torch": torch.__version__,
        },
    )


if __name__ == "__main__":
    main()
