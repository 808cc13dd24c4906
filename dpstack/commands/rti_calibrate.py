"""Pick the RTI warm-start timestep offline from a dataset (no simulator, no robot).

For `windows` random pairs of observation windows one tick apart in the store, the policy's full
solutions x_now and x_next are sampled; the warm start is x_now shifted by the tick. At every training
timestep k the gap sqrt(abar_k / (1 - abar_k)) * rms(warm - x_next) compares the forward-diffusion
means of the warm start and of the full solution in units of the noise std; the smallest k with gap
<= threshold is proposed, with the `sampler.timesteps` list to use. Writes <out>/rti_calibration.json
when `out` is given.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from dpstack.bounds import OUTPUT_DIRECTORY, bounds

CONFIG_NAME = "rti_calibrate"


@dataclass
class Config:
    checkpoint: str = field(default="???", metadata={"help": "training run dir or checkpoint dir"})
    dataset: str = field(default="???", metadata={"help": "episode store with the policy's observation keys"})
    windows: int = field(default=64, metadata={"help": "pairs of consecutive windows to compare", **bounds(1)})
    threshold: float = field(
        default=1.0, metadata={"help": "largest acceptable gap, in noise std units", **bounds(0, open_low=True)}
    )
    first: str = field(default="ddpm", metadata={"help": "full sampler for the solutions (ddpm | ddim)"})
    actions_per_tick: int = field(
        default=1, metadata={"help": "actions executed between ticks (the shift)", **bounds(1)}
    )
    max_timestep: int = field(default=20, metadata={"help": "largest timestep shown in the table", **bounds(0)})
    seed: int = field(default=0, metadata={"help": "seed of the window choice and the sampling noise", **bounds(0)})
    threads: int = field(default=1, metadata={"help": "torch intra-op threads", **bounds(1)})
    out: str | None = field(
        default=None, metadata={"help": "directory for rti_calibration.json (optional)", **OUTPUT_DIRECTORY}
    )


def suggested_timesteps(start: int) -> list[int]:
    """RTI-DP's lists: [2, 1, 0] from 2, [k, 1, 0] from k > 2 (three calls), [1, 0] or [0] below."""
    return list(range(start, -1, -1)) if start <= 2 else [start, 1, 0]


def run(cfg: Config) -> int:
    import numpy as np
    import torch

    from dpstack.data.dataset import SequenceDataset
    from dpstack.errors import ConfigError
    from dpstack.methods import load_policy
    from dpstack.policy.samplers.rti import pick_start_timestep, warm_start_gaps

    torch.set_num_threads(cfg.threads)
    policy = load_policy(cfg.checkpoint).eval()
    if policy.cfg.method != "diffusion_policy":
        raise ConfigError(
            f"{cfg.checkpoint}: a {policy.cfg.method} checkpoint; RTI calibrates Diffusion Policy checkpoints"
        )
    to, shift = policy.cfg.n_obs_steps, cfg.actions_per_tick
    sampler = policy.make_sampler({"name": "rti", "first": cfg.first, "actions_per_tick": shift})
    dataset = SequenceDataset(
        cfg.dataset, sorted(policy.obs_features), horizon=to + shift, n_obs_steps=to + shift, n_action_steps=1
    )
    rng = np.random.default_rng(cfg.seed)
    picks = rng.choice(len(dataset), size=min(cfg.windows, len(dataset)), replace=False)
    items = [dataset[int(i)]["obs"] for i in picks]
    obs = {k: torch.stack([item[k] for item in items]) for k in items[0]}
    generator = torch.Generator().manual_seed(cfg.seed)
    x_now = policy.sample_tick({k: v[:, :to] for k, v in obs.items()}, sampler.first, generator=generator)[0]
    x_next = policy.sample_tick({k: v[:, shift:] for k, v in obs.items()}, sampler.first, generator=generator)[0]
    # compare in the network's (normalized) action space, where the noise levels are defined
    gaps = warm_start_gaps(
        sampler, policy.normalizer.normalize("action", x_now), policy.normalizer.normalize("action", x_next)
    )
    start = pick_start_timestep(gaps, cfg.threshold)
    print(f"{'timestep':>8}  gap (noise std units)")
    for k in range(min(cfg.max_timestep + 1, len(gaps))):
        print(f"{k:>8}  {float(gaps[k]):.3f}{'  <- start' if k == start else ''}")
    timesteps = suggested_timesteps(start)
    print(f"start timestep {start}: use sampler=rti sampler.timesteps=[{','.join(map(str, timesteps))}]")
    if cfg.out:
        Path(cfg.out).mkdir(parents=True, exist_ok=True)
        record = {"start": start, "timesteps": timesteps, "threshold": cfg.threshold, "gaps": gaps.tolist()}
        (Path(cfg.out) / "rti_calibration.json").write_text(json.dumps(record, indent=2) + "\n")
    return 0
