"""robosuite Lift and PickPlaceCan (robomimic's ``lift`` and ``can``) as `TaskEnv`s.

Panda arm, OSC_POSE delta control (``BASIC`` composite controller: 5 cm / 0.5 rad per unit action) plus
gripper (+1 closes), 20 Hz, robosuite's default joint initialization noise. The 7-d action lies in [-1, 1].

Observations use robomimic's key names so that robomimic datasets import as-is: ``object`` (Lift 10-d:
cube pos, quat xyzw, gripper-to-cube pos; Can 14-d: can pos, quat, can pose in the gripper frame as pos +
quat, the robosuite 1.2 order robomimic stored), ``robot0_eef_pos`` (3), ``robot0_eef_quat`` (4, xyzw),
``robot0_gripper_qpos`` (2); with ``image=True`` also ``agentview_image`` and
``robot0_eye_in_hand_image`` (camera_size^2 x 3 uint8, flipped right side up; robosuite renders
OpenGL-style, bottom row first).

Episodes: ``max_steps`` defaults to 400 for both tasks, robomimic's rollout horizon; the scripted expert
needs about 56 (Lift, at most ~65) and 180 (Can, at most ~230) steps, so a policy has ample margin. Success (``env._check_success()``)
ends the episode; ``score`` is 1.0 once it happened.
Reward: 1 on the success step (robosuite's sparse reward); ``dense_reward=True``
(``task.env.dense_reward=true``) gives robosuite's staged shaped reward (reaching, grasping, lifting) for RL.

Seeding: robosuite draws the robot's initial joint noise and every placement sample from one
``np.random.Generator`` (``env.rng``) that the samplers share by reference, so `_reset` overwrites that
generator's state in place from ``seed``; the same seed then gives the same initial scene. The model is
built once per env (no hard reset) from a fixed construction seed, so Lift's cube size (robosuite draws it
in [2.0, 2.2] cm when building the model) is the same fixed value in every env instance and episode.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import numpy as np

from dpstack.envs.base import TaskEnv
from dpstack.features import Feature
from dpstack.tasks import TaskSpec

TASKS = {"Lift": 10, "PickPlaceCan": 14}  # robosuite env name -> object-state size
CAMERAS = ("agentview", "robot0_eye_in_hand")
DEFAULT_MAX_STEPS = {"Lift": 400, "PickPlaceCan": 400}
ALIASES = {"lift": "Lift", "can": "PickPlaceCan", "PickPlace": "PickPlaceCan"}  # registry / robomimic names
REGISTRY_NAMES = {"Lift": "lift", "PickPlaceCan": "can"}
CONTROL_HZ = 20.0


def _import_robosuite() -> Any:
    """Import robosuite quietly; the EGL default must be set before mujoco picks a GL backend."""
    os.environ.setdefault("MUJOCO_GL", "egl")
    os.environ.setdefault("PYOPENGL_PLATFORM", os.environ["MUJOCO_GL"])
    import robosuite

    for name in ("robosuite_logs", "robosuite"):
        logging.getLogger(name).setLevel(logging.ERROR)
    return robosuite


def make_controller_config(robosuite: Any) -> dict:
    """Panda's BASIC composite controller restricted to its single arm (no warnings for absent parts)."""
    from robosuite.controllers import load_composite_controller_config

    cfg = load_composite_controller_config(controller="BASIC", robot="Panda")
    cfg["body_parts"] = {"right": cfg["body_parts"]["right"]}
    return cfg


def _pose_in_frame(pos: np.ndarray, quat: np.ndarray, frame_pos: np.ndarray, frame_quat: np.ndarray) -> tuple:
    """(pos, xyzw quat) of a world pose expressed in the frame (frame_pos, frame_quat)."""
    from robosuite.utils import transform_utils as T

    world_in_frame = T.pose_inv(T.pose2mat((frame_pos, frame_quat)))
    return T.mat2pose(T.pose_in_A_to_pose_in_B(T.pose2mat((pos, quat)), world_in_frame))


class RobosuiteEnv(TaskEnv):
    """A robosuite manipulation task with robomimic-style observations (see the module docstring)."""

    @classmethod
    def spec(
        cls,
        task: str,
        image: bool = False,
        max_steps: int | None = None,
        camera_size: int = 84,
        dense_reward: bool = False,
    ) -> TaskSpec:
        task = ALIASES.get(task, task)
        if task not in TASKS:
            raise ValueError(f"RobosuiteEnv: unknown task {task!r}, expected one of {sorted(TASKS)}")
        features = {
            "object": Feature((TASKS[task],)),
            "robot0_eef_pos": Feature((3,)),
            "robot0_eef_quat": Feature((4,)),
            "robot0_gripper_qpos": Feature((2,), message="joint_state"),  # the two finger joints
        }
        if image:
            for cam in CAMERAS:
                features[f"{cam}_image"] = Feature((camera_size, camera_size, 3), "uint8", "image")
        return TaskSpec(
            REGISTRY_NAMES[task],
            features,
            Feature((7,), discrete_dims=(6,)),  # the gripper
            (-1.0,) * 7,
            (1.0,) * 7,
            CONTROL_HZ,
            int(max_steps or DEFAULT_MAX_STEPS[task]),
        )

    def __init__(
        self,
        task: str,
        image: bool = False,
        max_steps: int | None = None,
        camera_size: int = 84,
        dense_reward: bool = False,
    ) -> None:
        spec = self.spec(task, image, max_steps, camera_size, dense_reward)
        task = ALIASES.get(task, task)
        self.task = task
        self.image = image
        self.camera_size = camera_size
        suite = _import_robosuite()
        self._env = suite.make(
            task,
            robots="Panda",
            controller_configs=make_controller_config(suite),
            has_renderer=False,
            has_offscreen_renderer=image,
            use_camera_obs=image,
            use_object_obs=True,
            camera_names=list(CAMERAS),
            camera_heights=camera_size,
            camera_widths=camera_size,
            reward_shaping=dense_reward,  # robosuite's staged dense reward (reach, grasp, lift) for RL
            control_freq=int(CONTROL_HZ),
            horizon=10**6,
            ignore_done=True,
            hard_reset=False,  # rebuilding the MJCF model every episode costs ~0.5 s and drops render contexts
            seed=0,  # construction draws (Lift's cube size) are then the same in every env instance / worker
        )
        self._obj = "cube" if task == "Lift" else "Can"
        self._raw: dict[str, np.ndarray] = {}
        self._init_from_spec(spec)

    @property
    def sim(self) -> Any:
        """The raw robosuite env (``.sim.data`` for poses, ``.robots[0]``, ``_check_success()``)."""
        return self._env

    @property
    def raw_obs(self) -> dict[str, np.ndarray]:
        """The last full robosuite observation dict (experts read object poses from it)."""
        return self._raw

    def _convert(self, raw: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self._raw = raw
        o = self._obj
        if self.task == "Lift":
            obj = np.concatenate([raw["cube_pos"], raw["cube_quat"], raw["gripper_to_cube_pos"]])
        else:
            # robosuite 1.5's own Can_to_robot0_eef_* sensors read a stale (at reset: empty) cache, so the
            # can pose in the gripper frame is recomputed here, as robosuite 1.2 defined it.
            rel_pos, rel_quat = _pose_in_frame(
                raw[f"{o}_pos"], raw[f"{o}_quat"], raw["robot0_eef_pos"], raw["robot0_eef_quat"]
            )
            obj = np.concatenate([raw[f"{o}_pos"], raw[f"{o}_quat"], rel_pos, rel_quat])
        out = {
            "object": obj,
            "robot0_eef_pos": raw["robot0_eef_pos"],
            "robot0_eef_quat": raw["robot0_eef_quat"],
            "robot0_gripper_qpos": raw["robot0_gripper_qpos"],
        }
        if self.image:
            for cam in CAMERAS:
                out[f"{cam}_image"] = np.ascontiguousarray(raw[f"{cam}_image"][::-1])
        return out

    def _reset(self, seed: int | None) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        if seed is not None:
            # The placement samplers and robot.reset hold this very Generator, so reseed it in place.
            self._env.rng.bit_generator.state = np.random.default_rng(seed).bit_generator.state
        raw = self._env.reset()
        return self._convert(raw), {"score": 0.0}

    def _step(self, action: np.ndarray) -> tuple[dict[str, np.ndarray], float, dict[str, Any]]:
        raw, reward, _, _ = self._env.step(np.asarray(action, dtype=np.float64))
        success = bool(self._env._check_success())
        score = 1.0 if (success or self._success) else 0.0
        return self._convert(raw), float(reward), {"is_success": success, "terminated": success, "score": score}

    def render(self, size: int = 256, camera: str = "agentview") -> np.ndarray:
        """An RGB frame (size x size x 3 uint8), right side up. Needs a working EGL (``MUJOCO_GL=egl``)."""
        sim = self._env.sim
        if sim._render_context_offscreen is None:
            from robosuite.utils.binding_utils import MjRenderContextOffscreen

            MjRenderContextOffscreen(sim, device_id=-1)  # registers itself with the sim
        frame = sim.render(width=size, height=size, camera_name=camera)
        return np.ascontiguousarray(frame[::-1])

    def close(self) -> None:
        self._env.close()
