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
checkpoint, first seed). few_step_pooled.json and .md pool each sampler's seed blocks (paired with DDPM-100 of
the network it was run against, on the same seeds).
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
    # the deterministic chain at DDPM's own 100 levels: the gap a few-step ODE sampler (or a consistency
    # student, which learns that ODE) starts from before any discretization error
    "ddim-100": ("standard", ["sampler=ddim", "sampler.num_inference_steps=100"]),
    "ddim-10": ("standard", ["sampler=ddim", "sampler.num_inference_steps=10"]),
    "ddim-8": ("standard", ["sampler=ddim", "sampler.num_inference_steps=8"]),
    "ddim-8-trailing": ("standard", ["sampler=ddim", "sampler.num_inference_steps=8", "sampler.spacing=trailing"]),
    "ddim-8-linspace": ("standard", ["sampler=ddim", "sampler.num_inference_steps=8", "sampler.spacing=linspace"]),
    "ddim-8-trailing-eta1": (  # stochastic: DDPM's posterior noise over the same 8 levels
        "standard",
        ["sampler=ddim", "sampler.num_inference_steps=8", "sampler.spacing=trailing", "sampler.eta=1.0"],
    ),
    "ddim-4": ("standard", ["sampler=ddim", "sampler.num_inference_steps=4"]),
    **{
        f"consistency-{k}": ("distilled", ["sampler=consistency", f"sampler.timesteps=[{','.join(map(str, v))}]"])
        for k, v in CONSISTENCY_LEVELS.items()
    },
    # the distillation grid's levels spaced from 90 down to 0 (linspace snapped to the grid): the last call
    # refines from level 0, as DDIM's linspace spacing ends
    "consistency-8-to0": ("distilled", ["sampler=consistency", "sampler.timesteps=[90,80,60,50,40,30,10,0]"]),
    "consistency-4-to0-apt4": (
        "distilled",
        ["sampler=consistency", "sampler.timesteps=[90,60,30,0]", "sampler.actions_per_tick=4"],
    ),
    # one evaluation per executed action by re-planning more often: k calls per chunk, k actions executed
    "ddim-4-trailing-apt4": (
        "standard",
        ["sampler=ddim", "sampler.num_inference_steps=4", "sampler.spacing=trailing", "sampler.actions_per_tick=4"],
    ),
    **{
        f"consistency-{k}-apt{k}": (
            "distilled",
            [
                "sampler=consistency",
                f"sampler.timesteps=[{','.join(map(str, CONSISTENCY_LEVELS[k]))}]",
                f"sampler.actions_per_tick={k}",
            ],
        )
        for k in (2, 4)
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
    parser.add_argument(
        "--results", type=Path, default=RESULTS, help="where the tables go (elsewhere for a selection run on dev seeds)"
    )
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
                    "reference_checkpoint": args.standard,
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
        args.results, "few_step", rows, key=lambda r: (r["sampler"], r["checkpoint"], r["first_seed"])
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
    write_results(args.results, "few_step", rows, columns, {"command": command, "reference": REFERENCE})
    write_results(
        args.results,
        "few_step_pooled",
        pooled(rows),
        [
            ("task", "task"),
            ("sampler", "sampler"),
            ("checkpoint", "checkpoint"),
            ("DDPM-100 of", "reference_checkpoint"),
            ("seed blocks", "first_seeds"),
            ("episodes", "episodes"),
            ("NFE / action (measured)", "nfe_per_action"),
            ("mean score", "mean_score"),
            ("success", "success_rate"),
            ("DDPM-100 score, same seeds", "reference_score"),
            ("minus DDPM-100 (paired)", "diff_vs_ddpm100"),
            ("paired SE", "diff_se"),
        ],
        {
            "note": "every seed block a sampler was run on, pooled (blocks of equal size: means of block means, "
            "SE = sqrt(sum of block SE^2) / blocks)",
            "rows_from": "few_step.json",
        },
    )


def pooled(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (task, sampler, checkpoint, reference network) over all its seed blocks of equal size."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault((row["task"], row["sampler"], row["checkpoint"], row["reference_checkpoint"]), []).append(row)
    out = []
    for (task, sampler, checkpoint, reference), blocks in groups.items():
        if len({b["episodes"] for b in blocks}) != 1:
            raise ValueError(f"{sampler} of {checkpoint}: seed blocks of different sizes, cannot pool them")
        seeds = sorted(b["first_seed"] for b in blocks)
        ref = [
            r for r in rows if r["sampler"] == REFERENCE and r["checkpoint"] == reference and r["first_seed"] in seeds
        ]
        k = len(blocks)
        out.append(
            {
                "task": task,
                "sampler": sampler,
                "checkpoint": checkpoint,
                "reference_checkpoint": reference,
                "first_seeds": ",".join(map(str, seeds)),
                "episodes": sum(b["episodes"] for b in blocks),
                "nfe_per_action": float(np.mean([b["nfe_per_action"] for b in blocks])),
                "mean_score": float(np.mean([b["mean_score"] for b in blocks])),
                "success_rate": float(np.mean([b["success_rate"] for b in blocks])),
                "reference_score": float(np.mean([r["mean_score"] for r in ref])) if len(ref) == k else None,
                "diff_vs_ddpm100": float(np.mean([b["diff_vs_ddpm100"] for b in blocks])),
                "diff_se": float(np.sqrt(sum(b["diff_se"] ** 2 for b in blocks)) / k),
            }
        )
    return out


if __name__ == "__main__":
    main()
