"""The reference Diffusion Policy's low-dim training step on CUDA, as its own workspace runs it.

A measuring stick for `python -m benchmarks.train_throughput --part gpu`, run in the reference's side
environment (diffusers, zarr 2; ../shared/peers/README.md), never imported by dpstack. It drives the
reference's own classes (real-stanford/diffusion_policy: `DiffusionUnetLowdimPolicy`,
`ConditionalUnet1D`, `LinearNormalizer`, `SequenceSampler`, `EMAModel`, diffusers' `DDPMScheduler`)
the way `TrainDiffusionUnetLowdimWorkspace` does on `cuda:0`: a DataLoader with one worker and pinned
memory (its `dataloader` config), the batch moved with `non_blocking=True`, AdamW (lr 1e-4, betas
0.95/0.999), a cosine schedule with warm-up, the EMA after every step and `loss.item()` every step
(its logging), which also makes each step's time the GPU's.

    REF=<folder holding diffusion_policy> python reference_train_cuda.py store.npz STEPS DOWN_DIMS EMBED BATCH

prints one JSON line: the median step time and the rate after 20 warm-up steps.
"""

import copy
import json
import os
import sys
import time

sys.path.insert(0, os.environ["REF"])
import numpy as np
import torch
from diffusers.optimization import get_scheduler
from diffusers.schedulers.scheduling_ddpm import DDPMScheduler
from diffusion_policy.common.replay_buffer import ReplayBuffer
from diffusion_policy.common.sampler import SequenceSampler
from diffusion_policy.model.common.normalizer import LinearNormalizer
from diffusion_policy.model.diffusion.conditional_unet1d import ConditionalUnet1D
from diffusion_policy.model.diffusion.ema_model import EMAModel
from diffusion_policy.policy.diffusion_unet_lowdim_policy import DiffusionUnetLowdimPolicy

WARMUP = 20


class Windows(torch.utils.data.Dataset):
    def __init__(self, sampler: SequenceSampler) -> None:
        self.sampler = sampler

    def __len__(self) -> int:
        return len(self.sampler)

    def __getitem__(self, i: int) -> dict:
        s = self.sampler.sample_sequence(i)
        return {"obs": torch.from_numpy(s["obs"]).float(), "action": torch.from_numpy(s["action"]).float()}


def main() -> None:
    npz, steps = sys.argv[1], int(sys.argv[2])
    down_dims = [int(d) for d in sys.argv[3].split(",")]
    embed, batch_size = int(sys.argv[4]), int(sys.argv[5])
    device = torch.device(os.environ.get("DEVICE", "cuda:0"))  # DEVICE=cpu: a check without a GPU
    torch.manual_seed(0)
    data = np.load(npz)
    buffer = ReplayBuffer.create_empty_numpy()
    start = 0
    for end in data["episode_ends"]:
        buffer.add_episode({"obs": data["obs"][start:end], "action": data["action"][start:end]})
        start = end
    windows = Windows(SequenceSampler(buffer, sequence_length=16, pad_before=1, pad_after=7))
    loader = torch.utils.data.DataLoader(
        windows, batch_size=batch_size, shuffle=True, num_workers=1, pin_memory=True, persistent_workers=False
    )
    obs_dim = data["obs"].shape[1]
    model = ConditionalUnet1D(input_dim=2, global_cond_dim=obs_dim * 2, diffusion_step_embed_dim=embed,
                              down_dims=down_dims, kernel_size=5, n_groups=8, cond_predict_scale=True)  # fmt: skip
    scheduler = DDPMScheduler(num_train_timesteps=100, beta_schedule="squaredcos_cap_v2", clip_sample=True,
                              prediction_type="epsilon", variance_type="fixed_small")  # fmt: skip
    policy = DiffusionUnetLowdimPolicy(model=model, noise_scheduler=scheduler, horizon=16, obs_dim=obs_dim,
                                       action_dim=2, n_action_steps=8, n_obs_steps=2, obs_as_global_cond=True)  # fmt: skip
    normalizer = LinearNormalizer()
    normalizer.fit({"obs": torch.from_numpy(data["obs"]), "action": torch.from_numpy(data["action"])},
                   last_n_dims=1, mode="limits")  # fmt: skip
    policy.set_normalizer(normalizer)
    ema_model = copy.deepcopy(policy)
    policy.to(device)
    ema_model.to(device)
    ema = EMAModel(ema_model, power=0.75)
    optimizer = torch.optim.AdamW(policy.parameters(), lr=1e-4, betas=(0.95, 0.999), weight_decay=1e-6)
    lr = get_scheduler("cosine", optimizer=optimizer, num_warmup_steps=500, num_training_steps=20000)
    batches = iter(loader)
    times = []
    for step in range(steps + WARMUP):
        begin = time.perf_counter()
        try:
            batch = next(batches)
        except StopIteration:
            batches = iter(loader)
            batch = next(batches)
        batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        loss = policy.compute_loss(batch)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        lr.step()
        ema.step(policy)
        loss.item()
        if step >= WARMUP:
            times.append(time.perf_counter() - begin)
    print(json.dumps({"side": "reference", "device": torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu",
                      "params_M": sum(p.numel() for p in model.parameters()) / 1e6, "steps": steps,
                      "step_s_median": float(np.median(times)), "steps_per_s": 1 / float(np.mean(times))}))  # fmt: skip


if __name__ == "__main__":
    main()
