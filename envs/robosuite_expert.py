"""Scripted demonstrators for robosuite Lift and PickPlaceCan (`dpstack.envs.robosuite_tasks.RobosuiteEnv`).

Both are phase machines over Cartesian waypoints computed from the simulator's object pose (read only).
A reference point moves toward the current waypoint with a trapezoidal speed profile and the OSC delta
action tracks it (``(ref - eef) * gain / 5 cm``), so motions accelerate and stop smoothly instead of
saturating; the gripper is held pointing straight down, yawed to the cube's faces for Lift. Per-episode
randomness (speeds, hover and grasp heights, grasp offsets, yaw, drop point) comes from ``rng`` so that
demonstrations differ; ``noise`` > 0 adds Gaussian action noise of that std plus occasional detours of
the reference, to make deliberately weaker datasets. A failed grasp or a dropped can is retried.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

_POS_SCALE, _ROT_SCALE = 0.05, 0.5  # metres / radians per unit action of robosuite's OSC_POSE
_OPEN, _CLOSE = -1.0, 1.0
_PHASES = {
    "Lift": ("approach", "descend", "close", "lift"),
    "PickPlaceCan": ("approach", "descend", "close", "lift", "transport", "lower", "release", "retreat"),
}


def _rot_log(r: np.ndarray) -> np.ndarray:
    """Axis-angle vector of a rotation matrix (angles below pi)."""
    cos = np.clip((np.trace(r) - 1.0) / 2.0, -1.0, 1.0)
    angle = math.acos(cos)
    w = np.array([r[2, 1] - r[1, 2], r[0, 2] - r[2, 0], r[1, 0] - r[0, 1]])
    if angle < 1e-6:
        return 0.5 * w
    return w * (angle / (2.0 * math.sin(angle)))


def _down_frame(yaw: float) -> np.ndarray:
    """Gripper orientation pointing straight down with its x axis at `yaw` in the table plane."""
    x = np.array([math.cos(yaw), math.sin(yaw), 0.0])
    z = np.array([0.0, 0.0, -1.0])
    return np.stack([x, np.cross(z, x), z], axis=1)


def _wrap(a: float, period: float) -> float:
    return (a + period / 2) % period - period / 2


class RobosuiteExpert:
    """Grasp-and-lift (Lift) or pick-and-place (Can) from object poses, with OSC delta actions."""

    def __init__(self, rng: np.random.Generator, noise: float = 0.0, task: str = "Lift") -> None:
        task = {"lift": "Lift", "can": "PickPlaceCan", "PickPlace": "PickPlaceCan"}.get(task, task)  # registry names
        if task not in _PHASES:
            raise ValueError(f"RobosuiteExpert: unknown task {task!r}")
        self.rng = rng
        self.noise = float(noise)
        self.task = task

    # ----- reading the simulator (never written) -----
    def _state(self, env: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        rs = env.sim
        data = rs.sim.data
        sid = rs.robots[0].eef_site_id["right"]
        bid = rs.cube_body_id if self.task == "Lift" else rs.obj_body_id[rs.obj_to_use]
        return (
            data.site_xpos[sid].copy(),
            data.site_xmat[sid].reshape(3, 3).copy(),
            data.body_xpos[bid].copy(),
            data.body_xmat[bid].reshape(3, 3).copy(),
        )

    def reset(self, env: Any) -> None:
        """Sample this episode's style and start at the first phase."""
        u = self.rng.uniform
        eef, rot, obj, obj_rot = self._state(env)
        self._vmax = u(0.009, 0.013)  # m per step of the reference at cruise (18-26 cm/s)
        self._acc = u(0.0008, 0.0012)  # m per step^2
        self._gain = u(1.3, 1.7)
        self._hover = u(0.06, 0.10)
        self._grasp_xy = u(-0.004, 0.004, 2)
        self._close_steps = int(self.rng.integers(6, 10))
        yaw0 = math.atan2(rot[1, 0], rot[0, 0])
        if self.task == "Lift":
            self._grasp_z = u(-0.006, 0.002)  # relative to the cube centre
            self._lift = u(0.08, 0.14)
            cube_yaw = math.atan2(obj_rot[1, 0], obj_rot[0, 0])
            self._yaw = yaw0 + _wrap(cube_yaw - yaw0, math.pi / 2) + u(-0.05, 0.05)
        else:
            rs = env.sim
            self._grasp_z = u(0.0, 0.02)  # relative to the can's body origin (6 cm above its bottom)
            self._yaw = yaw0 + u(-0.3, 0.3)
            self._carry_z = rs.bin2_pos[2] + u(0.21, 0.25)  # can bottom >= 2 cm above the bin walls
            # The target quadrant spans x in [0.1, 0.3], y in [0.28, 0.52]; its far corner is beyond the
            # Panda's comfortable reach, so drop in the part nearest the robot, >= 4 cm inside the edges.
            low = rs.target_bin_placements[rs.object_id][:2] - rs.bin_size[:2] / 4.0
            self._drop = low + np.array([u(0.04, 0.07), u(0.04, 0.08)])
            self._release_z = obj[2] + self._grasp_z + u(0.02, 0.04)  # can bottom 2-4 cm above the floor
        self._target_rot = _down_frame(self._yaw)
        self._ref = eef.copy()
        self._speed = 0.0
        self._detour = np.zeros(3)
        self._detour_left = 0
        self._rot_err = math.inf
        self._enter("approach", eef)

    def _enter(self, phase: str, eef: np.ndarray) -> None:
        self._phase = phase
        self._t = 0
        self._best_err, self._stall = math.inf, 0
        self._anchor = eef.copy()

    # ----- the phase machine -----
    def _target(self, obj: np.ndarray) -> tuple[np.ndarray, float]:
        """Waypoint and gripper command of the current phase."""
        p = self._phase
        grasp = obj + np.array([*self._grasp_xy, self._grasp_z])
        if p == "approach":
            return grasp + np.array([0.0, 0.0, self._hover]), _OPEN
        if p == "descend":
            return grasp, _OPEN
        if p == "close":
            return self._anchor, _CLOSE
        if p == "lift":
            up = self._lift if self.task == "Lift" else self._carry_z - self._anchor[2]
            return self._anchor + np.array([0.0, 0.0, up]), _CLOSE
        if p == "transport":
            return np.array([*self._drop, self._carry_z]), _CLOSE
        if p == "lower":
            return np.array([*self._drop, self._release_z]), _CLOSE
        if p == "release":
            return self._anchor, _OPEN
        if p == "retreat":
            return self._anchor + np.array([0.0, 0.0, 0.12]), _OPEN
        return self._anchor + np.array([0.0, 0.0, 0.05]), _OPEN  # regrasp: open and back off upward

    def _next_phase(self, wp: np.ndarray, eef: np.ndarray, obj: np.ndarray) -> str | None:
        """The phase to switch to now, if the current one is done (or failed)."""
        p, t = self._phase, self._t
        at = float(np.linalg.norm(self._ref - wp)) < 1e-3  # the reference has (about) arrived ...
        err = float(np.linalg.norm(eef - wp))  # ... and the arm is this close, or stopped improving
        if err < self._best_err - 0.001:
            self._best_err, self._stall = err, 0
        elif at:
            self._stall += 1
        holding = p in ("lift", "transport", "lower")
        if holding and self._dropped(eef, obj):
            return "regrasp"
        if p == "approach" and ((self._arrived(at, err, 0.012) and self._rot_err < 0.08) or t > 120):
            return "descend"
        if p == "descend" and (self._arrived(at, err, 0.006) or t > 60):
            return "close"
        if p == "close" and t >= self._close_steps:
            return "lift"
        if p == "lift" and self.task != "Lift" and self._arrived(at, err, 0.02):
            return "transport"
        if p == "transport" and self._arrived(at, err, 0.015):
            return "lower"
        if p == "lower" and (self._arrived(at, err, 0.01) or t > 60):
            return "release"
        if p == "release" and t >= self._close_steps:
            return "retreat"
        if p == "regrasp" and t > 12:
            return "approach"
        return None

    def _arrived(self, at: bool, err: float, tol: float) -> bool:
        """Waypoint reached: within `tol`, or within 3 `tol` and no longer improving (e.g. at the reach limit)."""
        return at and (err < tol or (self._stall > 10 and err < 3 * tol))

    def _dropped(self, eef: np.ndarray, obj: np.ndarray) -> bool:
        """The object is no longer between the fingers (checked once the lift has begun)."""
        return self._t > 8 and np.linalg.norm(eef - obj - np.array([0, 0, self._grasp_z])) > 0.05

    def _advance_ref(self, wp: np.ndarray, eef: np.ndarray) -> None:
        """Move the reference toward `wp` with a trapezoidal speed profile, never far ahead of the arm."""
        d = wp - self._ref
        dist = float(np.linalg.norm(d))
        vmax = self._vmax * (0.5 if self._phase in ("descend", "lower") else 1.0)
        speed = min(vmax, self._speed + self._acc, math.sqrt(2.0 * self._acc * dist), dist)
        self._ref = wp.copy() if dist <= speed + 1e-12 else self._ref + d * (speed / dist)
        self._speed = speed
        lag = self._ref - eef
        if np.linalg.norm(lag) > 0.05:
            self._ref = eef + lag * (0.05 / np.linalg.norm(lag))

    def act(self, env: Any) -> np.ndarray:
        """One 7-d action: OSC delta toward the moving reference, orientation hold, gripper command."""
        eef, rot, obj, _ = self._state(env)
        self._rot_err = float(np.linalg.norm(_rot_log(self._target_rot @ rot.T)))
        wp, grip = self._target(obj)
        for _ in range(len(_PHASES[self.task]) + 1):
            nxt = self._next_phase(wp, eef, obj)
            if nxt is None:
                break
            self._enter(nxt, eef)
            wp, grip = self._target(obj)
        if self.noise > 0 and self._phase in ("approach", "transport"):
            self._maybe_detour()
        self._advance_ref(wp + self._detour, eef)
        self._t += 1
        action = np.zeros(7)
        action[:3] = self._gain * (self._ref - eef) / _POS_SCALE
        rot_err = _rot_log(self._target_rot @ rot.T)
        norm = np.linalg.norm(rot_err)
        if norm > 0.08:
            rot_err *= 0.08 / norm  # at most ~0.08 rad of correction per step keeps rotations gentle
        action[3:6] = 1.5 * rot_err / _ROT_SCALE
        action[6] = grip
        if self.noise > 0:
            action[:6] += self.rng.normal(0.0, self.noise, 6)
        return np.clip(action, -1.0, 1.0).astype(np.float32)

    def _maybe_detour(self) -> None:
        """With noise, sometimes wander off the straight path for a few steps (a sub-optimal segment)."""
        if self._detour_left > 0:
            self._detour_left -= 1
            if self._detour_left == 0:
                self._detour = np.zeros(3)
        elif self.rng.random() < min(0.3, 0.2 * self.noise):
            direction = self.rng.normal(size=3)
            direction[2] = abs(direction[2])  # wander sideways or up, never into the table
            self._detour = direction / np.linalg.norm(direction) * self.rng.uniform(0.03, 0.07)
            self._detour_left = int(self.rng.integers(5, 15))
