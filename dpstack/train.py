"""Train a Diffusion Policy on an episode store: one generic trainer, read top to bottom in `train()`.

Recipe (Diffusion Policy): AdamW (lr 1e-4, betas 0.95/0.999, weight decay 1e-6), cosine schedule with
linear warm-up, EMA of the weights (power 0.75, max 0.9999) used for evaluation and checkpoints,
gradient clipping, validation loss on held-out episodes, periodic closed-loop evaluation.

Outputs in `out/`: checkpoints/latest (safetensors + JSON, atomic), metrics.jsonl, loss_curve.png,
tb/ (TensorBoard). `resume=true` restores weights, EMA, optimizer, RNG and the position in the epoch,
so the continued run takes the same steps the uninterrupted one would have.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Sampler
from tqdm import tqdm

from dpstack import distributed
from dpstack.bounds import OUTPUT_DIRECTORY, bounds
from dpstack.data.dataset import SequenceDataset, batch_loader
from dpstack.data.sampler import split_episodes
from dpstack.data.store import EpisodeStore
from dpstack.envs.registry import task_spec
from dpstack.errors import ConfigError, StoreError
from dpstack.methods import build_policy
from dpstack.policy.checkpoint import (
    load_optimizer_state,
    optimizer_state,
    read_json,
    read_tensors,
    resolve_checkpoint,
    save_policy,
)
from dpstack.policy.diffusion_policy import DiffusionPolicy, PolicyConfig
from dpstack.policy.module import ema_update
from dpstack.policy.normalizer import Normalizer
from dpstack.rundir import check_fresh
from dpstack.tasks import TaskConfig


@dataclass
class TrainConfig:
    task: TaskConfig = field(default_factory=TaskConfig, metadata={"help": "task config group: task=<name>"})
    policy: PolicyConfig = field(
        default_factory=PolicyConfig, metadata={"help": "policy config group: policy=unet|transformer|mlp"}
    )
    dataset: str = field(default="???", metadata={"help": "episode store to train on"})
    out: str = field(
        default="???", metadata={"help": "run directory (checkpoints, metrics, TensorBoard)", **OUTPUT_DIRECTORY}
    )
    steps: int = field(
        default=2000, metadata={"help": "optimizer steps in total (the cosine schedule spans them)", **bounds(1)}
    )
    batch_size: int = field(default=64, metadata={"help": "windows per step", **bounds(1)})
    lr: float = field(default=1e-4, metadata={"help": "AdamW peak learning rate", **bounds(0, open_low=True)})
    weight_decay: float = field(default=1e-6, metadata={"help": "AdamW weight decay", **bounds(0)})
    warmup_steps: int = field(default=500, metadata={"help": "linear warm-up steps", **bounds(0)})
    grad_clip: float = field(default=1.0, metadata={"help": "max gradient norm", **bounds(0, open_low=True)})
    ema_power: float = field(default=0.75, metadata={"help": "EMA warm-up power", **bounds(0, open_low=True)})
    ema_max: float = field(default=0.9999, metadata={"help": "EMA max decay", **bounds(0, 1)})
    val_ratio: float = field(
        default=0.05, metadata={"help": "fraction of episodes held out for validation", **bounds(0, 1, open_high=True)}
    )
    val_every: int = field(default=500, metadata={"help": "steps between validation losses", **bounds(1)})
    eval_every: int = field(
        default=0, metadata={"help": "steps between closed-loop evaluations (0: only at the end)", **bounds(0)}
    )
    eval_episodes: int = field(
        default=10, metadata={"help": "episodes per closed-loop evaluation (0: none)", **bounds(0)}
    )
    eval_envs: int = field(default=2, metadata={"help": "parallel environments for evaluation", **bounds(1)})
    checkpoint_every: int = field(default=1000, metadata={"help": "steps between checkpoints", **bounds(1)})
    num_workers: int = field(default=0, metadata={"help": "DataLoader worker processes", **bounds(0)})
    threads: int = field(
        default=0, metadata={"help": "torch threads (0: all cores; use 1 on a busy machine)", **bounds(0)}
    )
    device: str = field(default="auto", metadata={"help": "auto | cpu | cuda"})
    seed: int = field(default=0, metadata={"help": "seed of the split, the shuffling and the noise", **bounds(0)})
    resume: bool = field(default=False, metadata={"help": "continue the run in `out` exactly where it stopped"})
    stop_after: int = field(default=0, metadata={"help": "end this run after N steps (0: run to `steps`)", **bounds(0)})
    progress: bool = field(default=True, metadata={"help": "show a progress bar"})
    teacher: str = field(
        default="",
        metadata={
            "help": "distill this Diffusion Policy checkpoint into a consistency policy (`dpstack distill`): the "
            "student starts as its copy (policy= is ignored) and samples with sampler=consistency"
        },
    )
    distill_grid: int = field(
        default=10, metadata={"help": "distillation: noise levels of the teacher's DDIM grid", **bounds(1)}
    )
    target_decay: float = field(
        default=0.95, metadata={"help": "distillation: EMA decay of the target network", **bounds(0, 1)}
    )


# ---------------------------------------------------------------------- pure pieces (unit-tested)
def lr_factor(step: int, warmup: int, total: int) -> float:
    """Linear warm-up to 1, then cosine decay to 0 at `total`."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


def ema_decay(step: int, power: float = 0.75, max_value: float = 0.9999, inv_gamma: float = 1.0) -> float:
    """Diffusion Policy's EMA warm-up: 1 - (1 + step / inv_gamma)^-power, clipped to [0, max_value]."""
    return float(min(max(1.0 - (1.0 + step / inv_gamma) ** -power, 0.0), max_value))


class EpochSampler(Sampler[int]):
    """Shuffled indices, one permutation per epoch from (seed, epoch), optionally starting mid-epoch.

    With a `world` of several ranks, each rank yields its rows of every global batch of `batch`
    indices, so the ranks' batches together are exactly one process's batch.
    """

    def __init__(
        self, n: int, seed: int, epoch: int, start: int = 0, batch: int = 1, world: distributed.World | None = None
    ) -> None:
        self.n, self.seed, self.epoch, self.start = n, seed, epoch, start
        self.batch, self.world = batch, world or distributed.World()

    def _indices(self) -> torch.Tensor:
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        indices = torch.randperm(self.n, generator=generator)[self.start :]
        if self.world.size == 1:
            return indices
        global_batches = indices[: len(indices) // self.batch * self.batch].view(-1, self.batch)
        return self.world.shard_rows(global_batches.T, self.batch).T.reshape(-1)

    def __iter__(self) -> Iterator[int]:
        return iter(self._indices().tolist())

    def __len__(self) -> int:
        return len(self._indices())


# ---------------------------------------------------------------------- the trainer
def _to(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, dict):
        return {k: _to(v, device) for k, v in batch.items()}
    return batch.to(device, non_blocking=True)


def _loader(
    dataset: SequenceDataset, cfg: TrainConfig, epoch: int, start_batch: int, world: distributed.World
) -> DataLoader:
    sampler = EpochSampler(len(dataset), cfg.seed, epoch, start_batch * cfg.batch_size, cfg.batch_size, world)
    # its own generator: creating an iterator must not draw from the global RNG that noise comes from
    generator = torch.Generator().manual_seed(epoch)
    return batch_loader(dataset, sampler, world.local_batch(cfg.batch_size), cfg.num_workers, generator=generator)


@torch.no_grad()
def validation_loss(policy: torch.nn.Module, dataset: SequenceDataset, cfg: TrainConfig, device: torch.device) -> float:
    """Mean denoising loss on held-out episodes, with fixed noise so values are comparable across steps."""
    generator = torch.Generator().manual_seed(1234)
    losses = []
    for i, batch in enumerate(batch_loader(dataset, range(len(dataset)), cfg.batch_size, drop_last=False)):
        batch = _to(batch, device)
        size = batch["action"].shape[0]
        timesteps = (  # a method without a noise schedule (the Gaussian policy) ignores them
            torch.randint(0, policy.schedule.num_train_timesteps, (size,), generator=generator).to(device)
            if hasattr(policy, "schedule")
            else None
        )
        with torch.random.fork_rng(devices=[]):  # the noise too is the same at every validation
            torch.manual_seed(1234 + i)
            losses.append(float(policy.compute_loss(batch, timesteps=timesteps)[0]))
    return float(np.mean(losses)) if losses else float("nan")


def _plot(history: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    train = [(h["step"], h["loss"]) for h in history if "loss" in h]
    val = [(h["step"], h["val_loss"]) for h in history if "val_loss" in h]
    if train:
        steps, losses = zip(*train, strict=True)
        window = max(1, len(losses) // 50)
        smooth = np.convolve(losses, np.ones(window) / window, mode="valid")
        ax.plot(steps[window - 1 :], smooth, label="train (smoothed)")
    if val:
        ax.plot(*zip(*val, strict=True), "o-", label="validation")
    ax.set_xlabel("step")
    ax.set_ylabel("denoising loss")
    ax.set_yscale("log")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _student_of(cfg: TrainConfig) -> tuple[torch.nn.Module, Any]:
    """A consistency student (the teacher's copy, default sampler consistency) and its distillation state."""
    from dpstack.methods import load_policy
    from dpstack.policy.consistency import ConsistencyDistillation

    teacher = load_policy(cfg.teacher)
    if not isinstance(teacher, DiffusionPolicy):
        raise ConfigError(f"teacher={cfg.teacher}: a {type(teacher).__name__}, distillation needs a Diffusion Policy")
    teacher_task = teacher.checkpoint_config.get("task", {}).get("name")
    if teacher_task != cfg.task.name:
        raise ConfigError(f"teacher={cfg.teacher}: trained on task {teacher_task!r}, task is {cfg.task.name!r}")
    student = copy.deepcopy(teacher).train().requires_grad_(True)
    student.cfg = dataclasses.replace(teacher.cfg, sampler="consistency", num_inference_steps=None)
    try:
        return student, ConsistencyDistillation(teacher, student, cfg.distill_grid, cfg.target_decay)
    except ValueError as exc:
        raise ConfigError(f"teacher={cfg.teacher}: {exc}") from None


def train(cfg: TrainConfig) -> dict[str, Any]:
    """Run (or resume) training; returns the final metrics."""
    from torch.utils.tensorboard import SummaryWriter

    from dpstack.policy.evaluate import EvalSpec, evaluate_policy

    out = Path(cfg.out)
    latest = out / "checkpoints" / "latest"
    check_fresh(out, cfg.resume)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)  # the same on every rank: each draws the global batch's noise (distributed.py)
    world, device = distributed.init(cfg.device)
    world.local_batch(cfg.batch_size)  # a world size that does not divide the batch fails before any work
    world.barrier()  # every rank has checked `out` before rank 0 writes to it

    # distillation: the student is the teacher's network, normalizer and timing, sampled by consistency
    policy, distill = _student_of(cfg) if cfg.teacher else (None, None)

    # data: the task declares the observation keys; episodes are split once, by seed
    spec = task_spec(cfg.task)
    obs_features, action_feature = spec.features, spec.action_feature
    store = EpisodeStore.open(cfg.dataset)
    problems = store.mismatches(spec)
    if problems:
        raise StoreError(f"{store.path}: does not fit task {spec.name}: " + "; ".join(problems))
    train_eps, val_eps = split_episodes(store.n_episodes, cfg.val_ratio, cfg.seed)
    if distill is not None:
        policy.to(device), distill.to(device)
    else:
        normalizer = Normalizer.fit(store, {"action": "minmax", **{k: f.normalize for k, f in obs_features.items()}})
        try:
            policy = build_policy(cfg.policy, obs_features, action_feature, normalizer).to(device)
        except ValueError as exc:
            raise ConfigError(f"policy: {exc}") from None
    if world.size > 1 and (distill is not None or not isinstance(policy, DiffusionPolicy)):
        raise ConfigError(
            f"distributed training (WORLD_SIZE={world.size}) covers Diffusion Policy; run "
            f"{'distillation' if distill is not None else cfg.policy.method} on one process"
        )
    timing = policy.data_timing()
    train_set = SequenceDataset(store.path, list(obs_features), episodes=train_eps, **timing)
    val_set = SequenceDataset(store.path, list(obs_features), episodes=val_eps, **timing) if len(val_eps) else None
    if len(train_set) < cfg.batch_size:
        raise ConfigError(f"{store.path}: {len(train_set)} training windows, fewer than batch_size={cfg.batch_size}")

    # EMA copy, optimizer, schedule
    ema = copy.deepcopy(policy).eval().requires_grad_(False)
    loss_module = _LossModule(policy)
    if world.size > 1:  # averages gradients across ranks (and broadcasts rank 0's parameters now)
        loss_module = torch.nn.parallel.DistributedDataParallel(loss_module)
    optimizer = torch.optim.AdamW(  # fused: one kernel for all parameters, 4x faster than foreach on CPU
        policy.parameters(), lr=cfg.lr, betas=(0.95, 0.999), weight_decay=cfg.weight_decay, fused=True
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, cfg.warmup_steps, cfg.steps))
    step, epoch, batch_in_epoch, elapsed_before = 0, 0, 0, 0.0
    if cfg.resume and (latest / "train_state.json").exists():
        meta = read_json(latest / "train_state.json")
        tensors = read_tensors(latest / "train_state.safetensors")
        policy.load_state_dict({k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")})
        ema.load_state_dict(read_tensors(resolve_checkpoint(latest) / "model.safetensors"))
        load_optimizer_state(optimizer, tensors, meta)
        torch.set_rng_state(tensors["rng.torch"])
        if device.type == "cuda" and "rng.cuda" in tensors:  # the training noise is drawn on the GPU
            torch.cuda.set_rng_state(tensors["rng.cuda"], device)
        if distill is not None:
            distill.target.load_state_dict(
                {k[len("target.") :]: v for k, v in tensors.items() if k.startswith("target.")}
            )
        step, epoch, batch_in_epoch = meta["step"], meta["epoch"], meta["batch_in_epoch"]
        elapsed_before = meta.get("train_seconds", 0.0)
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda s: lr_factor(s, cfg.warmup_steps, cfg.steps), last_epoch=step - 1
        )
    if world.main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "train_config.json").write_text(json.dumps(asdict(cfg) | {"world_size": world.size}, indent=2) + "\n")
    writer = SummaryWriter(str(out / "tb"), purge_step=step) if world.main else None
    metrics_path = out / "metrics.jsonl"
    history = [json.loads(line) for line in metrics_path.read_text().splitlines()] if metrics_path.exists() else []
    history = [h for h in history if h["step"] <= step]

    def log(record: dict[str, Any]) -> None:
        if writer is None:
            return
        history.append(record)
        for key, value in record.items():
            if key != "step" and isinstance(value, int | float):
                writer.add_scalar(key, value, record["step"])

    def checkpoint() -> None:
        tensors, meta = optimizer_state(optimizer)
        tensors.update({f"model.{k}": v for k, v in policy.state_dict().items()})
        if distill is not None:
            tensors.update({f"target.{k}": v for k, v in distill.target.state_dict().items()})
        tensors["rng.torch"] = torch.get_rng_state()
        if device.type == "cuda":
            tensors["rng.cuda"] = torch.cuda.get_rng_state(device)
        meta.update(step=step, epoch=epoch, batch_in_epoch=batch_in_epoch, train_seconds=elapsed())
        save_policy(
            latest,
            ema,
            extra={"task": asdict(cfg.task), "train": {"step": step, "dataset": str(store.path)}},
            train_state=(tensors, meta),
        )
        metrics_path.write_text("".join(json.dumps(h) + "\n" for h in history))
        _plot(history, out / "loss_curve.png")
        writer.flush()

    def evaluate(tag: str) -> dict[str, Any]:
        spec = EvalSpec(cfg.task, cfg.eval_episodes, num_envs=cfg.eval_envs, out_dir=out / "eval" / tag, videos=1)
        record = evaluate_policy(ema, spec)
        return {"eval/success_rate": record["success_rate"], "eval/mean_score": record["mean_score"]}

    # the loop
    policy.train()
    batches = iter(_loader(train_set, cfg, epoch, batch_in_epoch, world))
    bar = tqdm(total=cfg.steps, initial=step, desc="train", unit="step", disable=not (cfg.progress and world.main))
    start_time = time.perf_counter()

    def elapsed() -> float:
        """Training wall-clock over every run of this training (resumes included)."""
        return elapsed_before + time.perf_counter() - start_time

    stop_at = min(cfg.steps, step + cfg.stop_after) if cfg.stop_after else cfg.steps
    while step < stop_at:
        try:
            batch = next(batches)
        except StopIteration:
            epoch, batch_in_epoch = epoch + 1, 0
            batches = iter(_loader(train_set, cfg, epoch, 0, world))
            continue
        batch = _to(batch, device)
        if distill is not None:
            loss, parts = distill.compute_loss(policy, batch)
        elif world.size > 1:  # the global batch's noise, this rank's rows
            noise, timesteps = policy.training_noise(cfg.batch_size, device)
            loss, parts = loss_module(
                batch, world.shard_rows(noise, cfg.batch_size), world.shard_rows(timesteps, cfg.batch_size)
            )
        else:
            loss, parts = loss_module(batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(policy.parameters(), cfg.grad_clip)
        optimizer.step()
        scheduler.step()
        if distill is not None:
            distill.update_target(policy)
        loss = distributed.mean_over_ranks(loss, world)
        step, batch_in_epoch = step + 1, batch_in_epoch + 1
        if not world.main:  # rank 0 keeps the EMA, validates, evaluates, logs and checkpoints
            continue
        ema_update(ema, policy, ema_decay(step - 1, cfg.ema_power, cfg.ema_max))
        record: dict[str, Any] = {
            "step": step,
            "train_s": elapsed(),
            "loss": float(loss.detach()),  # the global batch's
            "lr": scheduler.get_last_lr()[0],
            "grad_norm": float(grad_norm),
            "epoch": epoch,
            # a method's loss terms, e.g. a planner's value loss: tensors until here, so the step never waits on the GPU
            **{k: float(v) for k, v in parts.items() if k != "loss"},
        }
        if val_set is not None and (step % cfg.val_every == 0 or step == cfg.steps):
            with _rng_untouched(device):  # rank 0 alone validates: the ranks' RNGs must stay equal
                record["val_loss"] = validation_loss(ema, val_set, cfg, device)
        if cfg.eval_episodes > 0 and cfg.eval_every and step % cfg.eval_every == 0 and step < cfg.steps:
            with _rng_untouched(device):
                record.update(evaluate(f"step_{step}"))
        log(record)
        bar.update(1)
        bar.set_postfix(loss=f"{record['loss']:.4f}")
        if step % cfg.checkpoint_every == 0 or step == stop_at:
            checkpoint()
    bar.close()
    final = {"step": step, "train_seconds": elapsed()}
    if world.main and cfg.eval_episodes > 0 and step == cfg.steps:
        final.update(evaluate("final"))
        log({"step": step, **{k: v for k, v in final.items() if k.startswith("eval/")}})
        checkpoint()
    if writer is not None:
        writer.close()
    distributed.finish(world)
    return final


def _rng_untouched(device: torch.device) -> Any:
    """Run a block without advancing the RNGs the training noise comes from."""
    return torch.random.fork_rng(devices=[device] if device.type == "cuda" else [])


class _LossModule(torch.nn.Module):
    """The policy's training loss as a module's forward, so DistributedDataParallel can wrap it."""

    def __init__(self, policy: torch.nn.Module) -> None:
        super().__init__()
        self.policy = policy

    def forward(
        self, batch: Any, noise: Any = None, timesteps: Any = None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if noise is None:
            return self.policy.compute_loss(batch)
        return self.policy.compute_loss(batch, noise=noise, timesteps=timesteps)
