"""Data-parallel training across processes with PyTorch's own stack: torchrun + torch.distributed.

    torchrun --nproc-per-node 2 -m dpstack.cli train task=pusht dataset=... out=... batch_size=64

`torchrun` sets RANK, WORLD_SIZE, LOCAL_RANK and the rendezvous; `init` joins the process group (gloo
on CPU, NCCL on CUDA). Nothing here launches processes. The conventions every caller follows:

- the global batch is defined once (`batch_size`); each rank takes `batch_size / world` rows of every
  global batch (`shard_rows`), and every rank draws the global batch's noise from the same RNG state and
  keeps its rows, so N ranks of batch b equal one process of batch N b (up to float reduction order);
- gradients are averaged by `DistributedDataParallel`; parameters start equal (DDP broadcasts rank 0's);
- only rank 0 writes: checkpoints, metrics, TensorBoard, the progress bar, the EMA, evaluations.

A rank that dies ends the job: torchrun stops the others and names the failed rank in its error.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from dpstack.errors import ConfigError


@dataclass(frozen=True)
class World:
    """This process's place in the job: rank `rank` of `size` (1: a plain single-process run)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.size > 1:
            dist.barrier()

    def local_batch(self, global_batch: int) -> int:
        """Rows of each global batch this rank computes; the world size must divide the batch."""
        if global_batch % self.size:
            raise ConfigError(
                f"batch_size={global_batch} is not divisible by the world size {self.size} (WORLD_SIZE); "
                f"use a multiple of {self.size}"
            )
        return global_batch // self.size

    def shard_rows(self, rows: torch.Tensor, global_batch: int) -> torch.Tensor:
        """This rank's rows of a tensor that holds a whole global batch along dim 0."""
        local = self.local_batch(global_batch)
        return rows[self.rank * local : (self.rank + 1) * local]


def init(device_name: str, timeout_s: float = 3 * 3600.0) -> tuple[World, torch.device]:
    """Join the torchrun job when WORLD_SIZE > 1 (gloo on CPU, NCCL on CUDA) and pick this rank's device.

    The collective timeout is long because the other ranks wait in their next all-reduce while rank 0
    alone evaluates in closed loop; a dead rank is caught by torchrun's process monitoring, not by it.

    `device_name`: auto (CUDA when present) | cpu | cuda; several ranks on one node take the GPU of
    their local rank.
    """
    if device_name == "auto":
        device_name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device_name)
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size == 1:
        return World(), device
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=timedelta(seconds=timeout_s))
    world = World(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", world.local_rank)
        torch.cuda.set_device(device)
    return world, device


def mean_over_ranks(value: torch.Tensor, world: World) -> torch.Tensor:
    """The mean of a tensor over all ranks (itself on one process)."""
    return value if world.size == 1 else sum_over_ranks(value, world) / world.size


def finish(world: World) -> None:
    if world.size > 1 and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def average_gradients(parameters: list[torch.nn.Parameter], world: World) -> None:
    """Average the gradients of `parameters` over all ranks, in one flat all-reduce."""
    if world.size == 1:
        return
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= world.size
    offset = 0
    for g in grads:
        g.copy_(flat[offset : offset + g.numel()].view_as(g))
        offset += g.numel()


def broadcast_parameters(module: torch.nn.Module, world: World) -> None:
    """Give every rank rank 0's parameters and buffers."""
    if world.size == 1:
        return
    for tensor in [*module.parameters(), *module.buffers()]:
        dist.broadcast(tensor.data, src=0)


def _communicable(value: torch.Tensor) -> torch.Tensor:
    """`value` where the backend can reduce it: NCCL only moves CUDA tensors (bookkeeping stays on the CPU)."""
    if dist.get_backend() == "nccl" and value.device.type != "cuda":
        return value.to(torch.device("cuda", torch.cuda.current_device()))
    return value


def sum_over_ranks(values: torch.Tensor, world: World) -> torch.Tensor:
    """Element-wise sum of a tensor over all ranks (a copy, on the tensor's device)."""
    total = values.detach().clone()
    if world.size > 1:
        moved = _communicable(total)
        dist.all_reduce(moved)
        total = moved.to(values.device)
    return total


def normalize_over_ranks(x: torch.Tensor, world: World, eps: float = 1e-8) -> torch.Tensor:
    """(x - mean) / (std + eps) with the mean and std of the union of every rank's `x`."""
    moments = sum_over_ranks(torch.stack([x.sum(), (x * x).sum(), x.new_tensor(float(x.numel()))]).double(), world)
    mean = moments[0] / moments[2]
    var = (moments[1] / moments[2] - mean**2).clamp(min=0) * moments[2] / (moments[2] - 1).clamp(min=1)
    return (x - mean.to(x.dtype)) / (var.sqrt().to(x.dtype) + eps)


def gather_tensors(value: torch.Tensor, world: World) -> list[torch.Tensor]:
    """Every rank's `value` (the same shape and dtype on all ranks), in rank order."""
    if world.size == 1:
        return [value]
    moved = _communicable(value.contiguous())
    out = [torch.empty_like(moved) for _ in range(world.size)]
    dist.all_gather(out, moved)
    return [v.to(value.device) for v in out]
