"""Consistency distillation of a Diffusion Policy (Consistency Policy, Prasad et al. 2024; Song et al. 2023).

A student f(x_t, t) maps any point of the teacher's probability-flow trajectory straight to its clean
end, so a chunk comes out of one call (or two, re-noising in between). The student is an ordinary
epsilon denoiser of the teacher's architecture, initialized from the teacher; the consistency function
f is a fixed map of its output (`dpstack.policy.samplers.consistency.consistency_function`).

Training (one step, `distillation_loss`): on a grid of `grid` DDIM levels plus "clean",
pick adjacent levels t_hi > t_lo, noise a demonstration window to t_hi, take one deterministic DDIM
step of the frozen teacher to t_lo, and regress f_student(x_hi, t_hi) onto f_target(x_lo, t_lo), where
the target network is an exponential moving average of the student (decay 0.95, no gradient).
Sampling is `policy/samplers/consistency.py`.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F

from dpstack.policy.diffusion_policy import DiffusionPolicy
from dpstack.policy.module import ema_update
from dpstack.policy.samplers.base import Denoiser
from dpstack.policy.samplers.consistency import consistency_function
from dpstack.policy.schedulers import DDIMScheduler, NoiseSchedule, spaced_timesteps


def distillation_levels(schedule: NoiseSchedule, grid: int) -> torch.Tensor:
    """(grid + 1,) ascending levels: -1 (clean), then DDIM's `grid` leading-spaced levels (0, 10, ..., 90).

    Leading spacing keeps the top level off the schedule's last one, where alpha_bar is ~1e-7 and an
    epsilon network's x0 estimate is amplified ~2000x (and clipped): Diffusion Policy's DDIM starts at 90
    from pure noise too.
    """
    return torch.cat([torch.tensor([-1]), spaced_timesteps(schedule.num_train_timesteps, grid, "leading").flip(0)])


def distillation_loss(
    student: Denoiser,
    target: Denoiser,
    teacher: Denoiser,
    schedule: NoiseSchedule,
    action: torch.Tensor,
    cond: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    grid: int,
    noise: torch.Tensor | None = None,
    index: torch.Tensor | None = None,
) -> torch.Tensor:
    """Consistency-distillation loss on normalized action windows (B, T, Da).

    `cond` = (student's, target's, teacher's) conditioning (B, C): each network encodes the
    observations with its own encoder. `index` (B,) in [1, grid] picks t_hi = levels[index] and t_lo =
    levels[index - 1] (random when None).
    """
    levels = distillation_levels(schedule, grid).to(action.device)
    batch = action.shape[0]
    if index is None:
        index = torch.randint(1, grid + 1, (batch,), device=action.device)
    if noise is None:
        noise = torch.randn_like(action)
    t_hi, t_lo = levels[index], levels[index - 1]
    x_hi = schedule.add_noise(action, noise, t_hi)
    student_cond, target_cond, teacher_cond = cond
    with torch.no_grad():
        x_lo = DDIMScheduler(schedule).step(teacher(x_hi, t_hi, teacher_cond), t_hi, t_lo, x_hi, None).prev_sample
        # the target network is only called where t_lo is a noise level; at "clean" f is the identity
        target_value = consistency_function(schedule, target(x_lo, t_lo.clamp(min=0), target_cond), t_lo, x_lo)
    prediction = consistency_function(schedule, student(x_hi, t_hi, student_cond), t_hi, x_hi)
    return F.mse_loss(prediction, target_value)


class ConsistencyDistillation:
    """The frozen teacher and the EMA target network of a distillation run; the student is trained outside.

    `dpstack.train` calls `compute_loss(student, batch)` in place of the student's own denoising loss
    and `update_target(student)` after each optimizer step; `target` is saved with the train state.
    """

    def __init__(self, teacher: DiffusionPolicy, student: DiffusionPolicy, grid: int = 10, target_decay: float = 0.95):
        if teacher.schedule.prediction_type != "epsilon":
            raise ValueError(
                f"distillation needs an epsilon-prediction teacher, got {teacher.schedule.prediction_type}"
            )
        if not 1 <= grid <= teacher.schedule.num_train_timesteps:
            raise ValueError(f"grid must be in [1, {teacher.schedule.num_train_timesteps}], got {grid}")
        self.teacher = teacher.eval().requires_grad_(False)
        self.target = copy.deepcopy(student).eval().requires_grad_(False)
        self.grid, self.target_decay = grid, target_decay

    def to(self, device: torch.device) -> ConsistencyDistillation:
        self.teacher.to(device)
        self.target.to(device)
        return self

    def compute_loss(
        self, student: DiffusionPolicy, batch: Mapping[str, Any]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        action = student.normalizer.normalize("action", batch["action"])
        with torch.no_grad():
            target_cond, teacher_cond = self.target.condition(batch["obs"]), self.teacher.condition(batch["obs"])
        cond = (student.condition(batch["obs"]), target_cond, teacher_cond)
        loss = distillation_loss(
            student.denoiser, self.target.denoiser, self.teacher.denoiser, student.schedule, action, cond, self.grid
        )
        return loss, {"loss": loss.detach()}

    def update_target(self, student: DiffusionPolicy) -> None:
        ema_update(self.target, student, self.target_decay)
