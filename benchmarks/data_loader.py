"""Data-loader throughput: training windows per second for batch 256, state and 96x96 image stores.

Builds two stores shaped like Push-T demonstrations (200 episodes of ~125 steps; state 20-d, or
96x96x3 frames of a moving T on a plain background, which compress like real renders), then times
passes over shuffled windows (horizon 16, n_obs_steps 2), with images held in RAM and read lazily from
disk, with 0 and 2 worker processes, read window by window (a plain DataLoader) and batch by batch (the
trainer's `batch_loader`), alternating. Medians of repeated runs.

    python -m benchmarks.data_loader [--quick] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, RandomSampler

from benchmarks.report import write_results
from dpstack.data.dataset import SequenceDataset, batch_loader
from dpstack.data.store import EpisodeStore


def _frames(rng: np.random.Generator, length: int) -> np.ndarray:
    """Smooth synthetic 96x96 renders: a dark square drifting over a light background."""
    frames = np.full((length, 96, 96, 3), 235, dtype=np.uint8)
    pos = rng.uniform(20, 76, 2)
    vel = rng.normal(0, 1.0, 2)
    for t in range(length):
        pos = np.clip(pos + vel, 10, 86)
        x, y = pos.astype(int)
        frames[t, y - 8 : y + 8, x - 8 : x + 8] = (70, 90, 160)
        frames[t, 40:56, 40:56, 1] = 200  # fixed goal marker
    return frames


def build_store(path: Path, episodes: int, image: bool, seed: int = 0) -> EpisodeStore:
    rng = np.random.default_rng(seed)
    store = EpisodeStore.create(path)
    for _ in range(episodes):
        length = int(rng.integers(100, 150))
        episode = {
            "action": rng.uniform(0, 512, (length, 2)).astype(np.float32),
            "state": rng.uniform(0, 512, (length, 20)).astype(np.float32),
        }
        if image:
            episode["image"] = _frames(rng, length)
        store.append_episode(episode)
    return store


LOADERS = ("per window", "whole batch")


def time_epochs(dataset: SequenceDataset, workers: int, batches: int, repeats: int) -> dict[str, list[float]]:
    """Samples per second of `repeats` runs of `batches` shuffled batches of 256 windows, for each loader,
    alternating: "per window" (a plain DataLoader: one read per window, then collated) and "whole batch"
    (`batch_loader`, the trainer's: one gather per key and batch)."""
    rates: dict[str, list[float]] = {name: [] for name in LOADERS}
    for repeat in range(repeats):
        for name in LOADERS:
            order = RandomSampler(dataset, generator=torch.Generator().manual_seed(repeat))
            if name == "per window":
                loader = DataLoader(dataset, batch_size=256, sampler=order, num_workers=workers, drop_last=True)
            else:
                loader = batch_loader(dataset, order, 256, num_workers=workers)
            start = time.perf_counter()
            count = 0
            for i, batch in enumerate(loader):
                count += batch["action"].shape[0]
                if i + 1 == batches:
                    break
            rates[name].append(count / (time.perf_counter() - start))
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer episodes and batches (smoke run)")
    parser.add_argument("--out", default="benchmarks/results", help="directory for JSON and markdown")
    args = parser.parse_args()
    episodes, batches, repeats = (30, 4, 2) if args.quick else (200, 20, 3)
    torch.set_num_threads(1)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        stores = {
            "state": build_store(Path(tmp) / "state.zarr", episodes, image=False),
            "image": build_store(Path(tmp) / "image.zarr", episodes, image=True),
        }
        cases = [
            ("state", ["state"], 1 << 34),
            ("image (in RAM)", ["state", "image"], 1 << 34),
            ("image (lazy from disk)", ["state", "image"], 0),
        ]
        for name, obs_keys, budget in cases:
            store = stores["image" if "image" in obs_keys else "state"]
            dataset = SequenceDataset(
                store.path,
                obs_keys=obs_keys,
                horizon=16,
                n_obs_steps=2,
                n_action_steps=8,
                ram_budget_bytes=budget,
            )
            for workers in (0, 2):
                for loader, rates in time_epochs(dataset, workers, batches, repeats).items():
                    rows.append(
                        {
                            "case": name,
                            "workers": workers,
                            "loader": loader,
                            "batch_size": 256,
                            "samples_per_s_median": statistics.median(rates),
                            "samples_per_s_all": rates,
                            "store_steps": store.n_steps,
                        }
                    )
                    print(f"{name:<24} workers={workers} {loader:<12} {statistics.median(rates):>10.0f} samples/s")
    write_results(
        Path(args.out),
        "data_loader",
        rows,
        columns=[
            ("case", "case"),
            ("workers", "workers"),
            ("loader", "loader"),
            ("samples/s (median)", "samples_per_s_median"),
        ],
        meta={
            "episodes": episodes,
            "batches_per_run": batches,
            "repeats": repeats,
            "quick": args.quick,
            "torch_threads": 1,
        },
    )


if __name__ == "__main__":
    main()
