"""How far a few-step deterministic chain lands from DDIM over every level, on demonstration windows.

Every row starts from the same x_T and conditioning (`--windows` windows of the store, fixed seed) and
reports the mean absolute difference to DDIM-100 (all training levels) in normalized action units: the
discretization error of the level set alone, without any episode. One more row runs DDIM-100 without
x_0 clipping, to show how much the clip shapes the chain.

    python -m benchmarks.ode_error --checkpoint runs/pusht-unet-s10 --dataset runs/pusht200.zarr
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import torch

from benchmarks.report import write_results
from benchmarks.windows import demonstration_conditions
from dpstack.methods import load_policy
from dpstack.policy.samplers.chunk import reverse_steps
from dpstack.policy.schedulers import SPACINGS, DDIMScheduler, spaced_timesteps

RESULTS = Path(__file__).parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="a Diffusion Policy checkpoint (epsilon, DDPM levels)")
    parser.add_argument("--dataset", required=True, help="its episode store")
    parser.add_argument("--windows", type=int, default=128)
    parser.add_argument("--steps", default="4,8,16", help="comma-separated step counts")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    policy = load_policy(args.checkpoint)
    cfg = policy.cfg
    cond = demonstration_conditions(policy, args.dataset, args.windows, args.seed)
    start = torch.randn(args.windows, cfg.horizon, policy.action_dim)
    levels = policy.schedule.num_train_timesteps

    @torch.no_grad()
    def chain(scheduler: DDIMScheduler, timesteps: torch.Tensor) -> torch.Tensor:
        return reverse_steps(scheduler, policy.denoiser, cond, start, timesteps, torch.zeros(len(timesteps), 1))

    ddim = DDIMScheduler(policy.schedule)
    reference = chain(ddim, spaced_timesteps(levels, levels))
    rows = []
    for n in (int(s) for s in args.steps.split(",")):
        for spacing in SPACINGS:
            timesteps = spaced_timesteps(levels, n, spacing)
            error = (chain(ddim, timesteps) - reference).abs().mean().item()
            rows.append({"chain": f"ddim-{n}-{spacing}", "levels": timesteps.tolist(), "error": error})
    unclipped = DDIMScheduler(dataclasses.replace(policy.schedule, clip_sample=False))
    error = (chain(unclipped, spaced_timesteps(levels, levels)) - reference).abs().mean().item()
    rows.append({"chain": f"ddim-{levels} without x_0 clipping", "levels": "all", "error": error})
    write_results(
        args.out,
        "ode_error",
        rows,
        [("chain", "chain"), ("levels", "levels"), ("mean abs difference to DDIM-100 (normalized)", "error")],
        {
            "command": "python -m benchmarks.ode_error "
            + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if k != "out")
        },
    )


if __name__ == "__main__":
    main()
