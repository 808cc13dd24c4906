"""Few-step quality: score against network evaluations per action, paired with DDPM-100 on the same seeds.

Each row is one `dpstack eval` run (its exact command is kept in the row), `--episodes` seeds from each
`--seeds` start, every sampler on the same seeds as DDPM-100 of the same network, so the difference to
DDPM-100 is taken episode by episode (paired) and reported with its standard error. Evaluation batches
`--num-envs` environments through the network: this table is about quality; latency per tick at batch
1 is the samplers and export benchmarks' job.

    python -m benchmarks.few_step --standard runs/pusht-unet --distilled runs/pusht-consistency \
        --seeds 100000,200000 --episodes 50

An existing eval.json under --out is reused (`--fresh` re-runs it). Rows go to
benchmarks/results/few_step.json and few_step.md, merged with the rows of earlier runs by (sampler,
checkpoint, first seed).
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.report import merge_with_previous, write_results
from benchmarks.samplers import CONSISTENCY_LEVELS

RESULTS = Path(__file__).parent / "results"
REFERENCE = "ddpm-100"

# key -> (checkpoint: "standard" | "distilled", sampler overrides)
LINEUP: dict[str, tuple[str, list[str]]] = {
    REFERENCE: ("standard", ["sampler=ddpm"]),
    "ddim-10": ("standard", ["sampler=ddim", "sampler.num_inference_steps=10"]),
    "ddim-8": ("standard", ["sampler=ddim", "sampler.num_inference_steps=8"]),
    "ddim-8-trailing": ("standard", ["sampler=ddim", "sampler.num_inference_steps=8", "sampler.spacing=trailing"]),
    "ddim-4": ("standard", ["sampler=ddim", "sampler.num_inference_steps=4"]),
    **{
        f"consistency-{k}": ("distilled", ["sampler=consistency", f"sampler.timesteps=[{','.join(map(str, v))}]"])
        for k, v in CONSISTENCY_LEVELS.items()
    },
}


def evaluate(key: str, checkpoint: str, seed: int, args: argparse.Namespace) -> tuple[dict[str, Any], str]:
    """eval.json of one sampler on one seed block (run unless present), and the command behind it."""
    out = args.out / f"{key}-seed{seed}"
    command = [
        "dpstack", "eval", f"checkpoint={checkpoint}", *LINEUP[key][1], f"seed={seed}",
        f"episodes={args.episodes}", f"num_envs={args.num_envs}", "videos=0", "progress=false", f"out={out}",
    ]  # fmt: skip
    if args.fresh or not (out / "eval.json").is_file():
        print(shlex.join(command), flush=True)
        subprocess.run([sys.executable, "-m", "dpstack.cli", *command[1:]], check=True)
    return json.loads((out / "eval.json").read_text()), shlex.join(command)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--standard", required=True, help="a Diffusion Policy checkpoint (DDPM/DDIM rows)")
    parser.add_argument("--distilled", help="a consistency student of --standard (dpstack distill)")
    parser.add_argument("--seeds", default="100000", help="comma-separated first seeds of each block")
    parser.add_argument("--episodes", type=int, default=50)
    parser.add_argument("--num-envs", type=int, default=10)
    parser.add_argument("--only", default="", help=f"comma-separated rows, of {', '.join(LINEUP)}")
    parser.add_argument("--fresh", action="store_true", help="re-run evaluations found under --out")
    parser.add_argument("--out", type=Path, default=Path("runs/bench-few-step"))
    args = parser.parse_args()
    checkpoints = {"standard": args.standard, "distilled": args.distilled}
    keys = [k for k in LINEUP if not args.only or k in args.only.split(",") or k == REFERENCE]
    rows = []
    for seed in (int(s) for s in args.seeds.split(",")):
        reference = evaluate(REFERENCE, args.standard, seed, args)
        ref_scores = np.array([e["score"] for e in reference[0]["per_episode"]])
        for key in keys:
            if not checkpoints[LINEUP[key][0]]:
                print(f"skip {key}: no --{LINEUP[key][0]} checkpoint")
                continue
            record, command = reference if key == REFERENCE else evaluate(key, checkpoints[LINEUP[key][0]], seed, args)
            scores = np.array([e["score"] for e in record["per_episode"]])
            diff = scores - ref_scores
            n = len(scores)
            rows.append(
                {
                    "task": record["task"],
                    "sampler": key,
                    "checkpoint": checkpoints[LINEUP[key][0]],
                    "first_seed": seed,
                    "episodes": n,
                    "mean_score": float(scores.mean()),
                    "score_se": float(scores.std(ddof=1) / np.sqrt(n)),
                    "success_rate": record["success_rate"],
                    "nfe_per_action": record["nfe_per_action"],
                    "diff_vs_ddpm100": float(diff.mean()),
                    "diff_se": float(diff.std(ddof=1) / np.sqrt(n)),
                    "command": command,
                }
            )
    columns = [
        ("task", "task"),
        ("sampler", "sampler"),
        ("checkpoint", "checkpoint"),
        ("first seed", "first_seed"),
        ("episodes", "episodes"),
        ("NFE / action (measured)", "nfe_per_action"),
        ("mean score", "mean_score"),
        ("score SE", "score_se"),
        ("success", "success_rate"),
        ("minus DDPM-100 (paired)", "diff_vs_ddpm100"),
        ("paired SE", "diff_se"),
    ]
    command = "python -m benchmarks.few_step " + shlex.join(sys.argv[1:])
    for row in rows:
        row["benchmark_command"] = command
    # rows of other checkpoints (e.g. a longer-distilled student) measured by earlier runs are kept
    rows = merge_with_previous(
        RESULTS, "few_step", rows, key=lambda r: (r["sampler"], r["checkpoint"], r["first_seed"])
    )
    rows.sort(
        key=lambda r: (
            r["task"] != "pusht",
            r["task"],
            r["first_seed"],
            list(LINEUP).index(r["sampler"]),
            r["checkpoint"],
        )
    )
    write_results(RESULTS, "few_step", rows, columns, {"command": command, "reference": REFERENCE})


if __name__ == "__main__":
    main()
