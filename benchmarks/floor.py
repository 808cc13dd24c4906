"""The latency floor of one denoiser call on this machine: FLOPs and weight bytes against measured rates.

    floor = max(FLOPs / matmul rate, weight bytes / memory read rate)

FLOPs come from `torch.utils.flop_counter.FlopCounterMode` (matmuls and convolutions, 2 per
multiply-add) on one call at batch 1; the rates are measured here, with the thread count the runtime
uses: a large fp32 matmul (GFLOP/s) and a sum over a buffer (GB/s), once far larger than the caches
(DRAM) and once the size of the weights (what a batch-1 control loop re-reads every call, and what
stays in a large L3 between calls). Both floors are reported; latencies are quoted as multiples of
the DRAM one, the conservative bound.
"""

from __future__ import annotations

import time
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode


def _median_seconds(fn: Any, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def matmul_gflops(threads: int, size: int = 1024, repeats: int = 20) -> float:
    """Measured fp32 matmul rate (GFLOP/s) of `size` x `size` matrices with `threads` torch threads."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        a, b = torch.randn(size, size), torch.randn(size, size)
        seconds = _median_seconds(lambda: torch.mm(a, b), repeats)
    finally:
        torch.set_num_threads(previous)
    return 2 * size**3 / seconds / 1e9


def read_gbps(n_bytes: int, threads: int, repeats: int = 20) -> float:
    """Measured read rate (GB/s): a sum over a float32 buffer of `n_bytes`."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        buffer = torch.ones(max(n_bytes // 4, 1))
        seconds = _median_seconds(lambda: buffer.sum(), repeats)
    finally:
        torch.set_num_threads(previous)
    return buffer.numel() * 4 / seconds / 1e9


def denoiser_cost(denoiser: torch.nn.Module, sample: torch.Tensor, timesteps: torch.Tensor, cond: torch.Tensor) -> dict:
    """FLOPs of one call and the bytes of the denoiser's parameters and buffers."""
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        denoiser(sample, timesteps, cond)
    weights = sum(t.numel() * t.element_size() for t in [*denoiser.parameters(), *denoiser.buffers()])
    return {"gflop": counter.get_total_flops() / 1e9, "weight_mb": weights / 1e6}


def network_floor(cost: dict[str, float], threads: int) -> dict[str, float]:
    """Rates of this machine and the floor (ms) of one call of a network with `cost` (see `denoiser_cost`)."""
    gflops = matmul_gflops(threads)
    dram = read_gbps(512 * 2**20, threads)
    cached = read_gbps(int(cost["weight_mb"] * 1e6), threads)
    compute_ms = cost["gflop"] / gflops * 1e3
    floor_dram = max(compute_ms, cost["weight_mb"] / 1e3 / dram * 1e3)
    floor_cached = max(compute_ms, cost["weight_mb"] / 1e3 / cached * 1e3)
    return {
        **cost,
        "threads": threads,
        "matmul_gflops": gflops,
        "dram_read_gbps": dram,
        "weights_sized_read_gbps": cached,
        "compute_floor_ms": compute_ms,
        "floor_ms": floor_dram,
        "floor_cached_ms": floor_cached,
    }
