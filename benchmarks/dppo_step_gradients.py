"""Where DPPO's actor gradient comes from, per fine-tuned denoising step, under different noise floors.

All fine-tuned steps share one denoiser, so one optimizer step follows the sum of their gradients. This
benchmark samples exploring chains (`DenoisingChain.sample`, the rollout's own) on demonstration windows
and reports, for each step i = 0 .. K' - 1, the norm of the gradient of mean(A * log-likelihood) over the
fine-tuned weights, with standard-normal advantages A (a PPO batch's normalized advantages, without a
task's sign). A step whose norm dwarfs the others decides the update's direction, and Adam's per-weight
scale then shrinks what the other steps get.

The last DDPM step has no noise of its own (std 0): its sampling std is the floor. With both floors at
0.01 its log-likelihood's gradient is ~(x - mean) / 0.01^2, on Push-T's weak start 6-43x each other
step's (69% of the sum); with `min_sampling_std=0` the recorded last sample is the step's mean, so its
gradient is 0 at the recorded weights and the steps with their own noise drive the update.

    python -m benchmarks.dppo_step_gradients --checkpoint runs/dp-pusht-weak10k --dataset runs/pusht200.zarr
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from benchmarks.report import write_results
from benchmarks.windows import demonstration_conditions
from dpstack.methods import load_policy
from dpstack.policy.rl.chain import ChainOptions
from dpstack.policy.rl.dppo import DPPOConfig, prepare

RESULTS = Path(__file__).parent / "results"
# (min_sampling_std, min_logprob_std): DPPO's floors, the Push-T recipe's until 2026-12-07, the natural chain
FLOORS = ((0.1, 0.1), (0.01, 0.01), (0.0, 0.01))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="a Diffusion Policy checkpoint")
    parser.add_argument("--dataset", required=True, help="its episode store (the conditioning windows)")
    parser.add_argument("--windows", type=int, default=512)
    parser.add_argument("--finetuned-steps", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    policy = load_policy(args.checkpoint)
    cond = demonstration_conditions(policy, args.dataset, args.windows, args.seed)
    chain = prepare(policy, DPPOConfig(checkpoint=args.checkpoint, out="-", finetuned_steps=args.finetuned_steps), None)
    weights = list(policy.denoiser.finetuned.parameters())
    advantages = torch.randn(args.windows, generator=torch.Generator().manual_seed(args.seed + 1))
    rows = []
    for sampling, logprob in FLOORS:
        chain.options = ChainOptions(sampling, logprob, logprob_clamp=(-5.0, 4.0))
        _, recorded = chain.sample(cond, torch.Generator().manual_seed(args.seed))
        norms = []
        for i in range(args.finetuned_steps):
            log_prob = chain.log_prob(cond, recorded, torch.full((args.windows,), i))
            grads = torch.autograd.grad((advantages * log_prob).mean(), weights)
            norms.append(float(torch.sqrt(sum((g**2).sum() for g in grads))))
        earlier = float(np.median(norms[:-1]))
        rows.append(
            {
                "floors": f"sampling {sampling:g}, log-prob {logprob:g}",
                "norms": " ".join(f"{n:.3g}" for n in norms),
                "last_over_median": norms[-1] / earlier,
                "last_share": norms[-1] / sum(norms),
            }
        )
    write_results(
        args.out,
        "dppo_step_gradients",
        rows,
        [
            ("noise floors", "floors"),
            ("gradient norm per fine-tuned step, noisiest first", "norms"),
            ("last step / median of the others", "last_over_median"),
            ("last step's share of the sum", "last_share"),
        ],
        {
            "command": "python -m benchmarks.dppo_step_gradients "
            + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if k != "out")
        },
    )


if __name__ == "__main__":
    main()
