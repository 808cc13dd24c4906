"""The simulator bridge: a dpstack task playing the robot on ROS 2 (`dpstack ros sim task=<name>`).

It steps the task's env at the task's control rate, publishes every observation key on the topic and
message kind the policy node reads (`dpstack.ros.messages`, sensor-data QoS), and applies the newest action
received on `action` at the next step (the robot holds still until the first action of an episode).
`~/reset` (std_srvs/Trigger) starts an episode on the next seed; each finished episode is published
as JSON (seed, success, score, steps, ...) on `~/episode`.

Time follows ROS conventions. By default (real_time_factor 1, no /clock) the bridge runs on the wall
clock, as a robot does. With `publish_clock` it owns simulated time: every step advances /clock by one
control period, and nodes with `use_sim_time` tick on it. `real_time_factor` > 1 runs that many times
faster than real time; 0 is lockstep: each step waits for the action the policy computes from that
step's observation (up to `action_timeout` s of wall time), so closed-loop evaluation runs as fast as
the policy answers.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from rcl_interfaces.msg import ParameterDescriptor
from rclpy.node import Node
from rosgraph_msgs.msg import Clock
from std_msgs.msg import Float32MultiArray, String
from std_srvs.srv import Trigger

from dpstack.bounds import bounds
from dpstack.envs.base import TaskEnv
from dpstack.envs.registry import make_env
from dpstack.policy.chunk_env import EXTRA_INFO_KEYS
from dpstack.ros.messages import COMMAND_QOS, SENSOR_QOS, MalformedMessage, decode_action, observation_topics
from dpstack.ros.parameters import declare_config, read_config
from dpstack.ros.spin import spin_until_shutdown
from dpstack.tasks import TaskConfig


@dataclass
class SimBridgeConfig:
    """The bridge's ROS parameters (and `dpstack ros sim` keys)."""

    task: TaskConfig = field(default_factory=TaskConfig, metadata={"help": "task config group: task=<name>"})
    node_name: str = field(default="dpstack_sim", metadata={"help": "ROS node name"})
    seed: int = field(
        default=-1,
        metadata={"help": "seed of the first episode (then +1 each); -1: the task's eval_seed", **bounds(-1)},
    )
    episodes: int = field(
        default=0, metadata={"help": "episodes to run on their own with autostart (0: no limit)", **bounds(0)}
    )
    autostart: bool = field(default=True, metadata={"help": "start episodes at launch (else wait for ~/reset)"})
    real_time_factor: float = field(
        default=1.0,
        metadata={"help": "sim seconds per wall second; 0: lockstep (each step waits for its action)", **bounds(0)},
    )
    publish_clock: bool = field(default=False, metadata={"help": "publish /clock (sim time); forced on in lockstep"})
    topic_prefix: str = field(default="obs/", metadata={"help": "observation key k is published on <topic_prefix>k"})
    action_topic: str = field(default="action", metadata={"help": "std_msgs/Float32MultiArray action topic"})
    action_timeout: float = field(
        default=2.0, metadata={"help": "lockstep: wall seconds to wait for an action", **bounds(0, open_low=True)}
    )
    settle_ms: float = field(
        default=2.0,
        metadata={"help": "sim time: wall ms between publishing observations and advancing /clock", **bounds(0)},
    )


class SimBridge(Node):
    def __init__(self, cfg: SimBridgeConfig) -> None:
        super().__init__(cfg.node_name)
        declare_config(self, cfg)
        self.declare_parameter("task_name", cfg.task.name, ParameterDescriptor(read_only=True, description="task"))
        self.cfg = cfg = read_config(self, SimBridgeConfig, task=cfg.task)
        self.task = cfg.task
        self.env: TaskEnv = make_env(self.task)
        self.period_ns = round(1e9 / self.env.control_hz)
        self.lockstep = cfg.real_time_factor == 0
        self.publish_clock = cfg.publish_clock or self.lockstep
        self.topics = observation_topics(
            [
                {"key": k, "shape": f.shape, "dtype": f.dtype, "message": f.message}
                for k, f in self.env.features.items()
            ],
            cfg.topic_prefix,
        )
        self._obs_pubs = {t.key: self.create_publisher(t.msg_type, t.topic, SENSOR_QOS) for t in self.topics}
        self._clock_pub = self.create_publisher(Clock, "/clock", 10) if self.publish_clock else None
        self._episode_pub = self.create_publisher(String, "~/episode", COMMAND_QOS)
        self.create_subscription(Float32MultiArray, cfg.action_topic, self._on_action, COMMAND_QOS)
        self.create_service(Trigger, "~/reset", self._on_reset)
        self._action_dim = int(np.prod(self.env.action_feature.shape))
        self._cv = threading.Condition()
        self._action: np.ndarray | None = None
        self._action_seq = 0
        self._rejected_actions = 0
        self._restart = False
        self._stop = False
        self._next_seed = self.task.eval_seed if cfg.seed < 0 else cfg.seed
        self._episodes_started = 0
        self._sim_steps = 0  # over all episodes: sim time never runs backwards
        self._start_requested = cfg.autostart
        self._thread = threading.Thread(target=self._run, name="dpstack-sim", daemon=True)

    def start(self) -> None:
        self._thread.start()

    # ------------------------------------------------------------------ ROS callbacks
    def _on_action(self, msg: Float32MultiArray) -> None:
        try:
            action = decode_action(msg, self._action_dim)
        except MalformedMessage as exc:
            self._rejected_actions += 1
            self.get_logger().warning(f"rejected: {exc}", throttle_duration_sec=5.0)
            return
        with self._cv:
            self._action = action
            self._action_seq += 1
            self._cv.notify_all()

    def _on_reset(self, request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        with self._cv:
            seed = self._next_seed
            self._restart = self._start_requested = True
            self._cv.notify_all()
        response.success = True
        response.message = json.dumps({"episode": self._episodes_started, "seed": seed})
        return response

    def stop(self) -> None:
        with self._cv:
            self._stop = True
            self._cv.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    # ------------------------------------------------------------------ stepping
    def _publish(self, obs: dict[str, np.ndarray]) -> None:
        stamp = self._sim_time().to_msg() if self.publish_clock else self.get_clock().now().to_msg()
        for topic in self.topics:
            self._obs_pubs[topic.key].publish(topic.encode(obs[topic.key], stamp))
        if self._clock_pub is not None:
            time.sleep(self.cfg.settle_ms / 1000)  # observations reach the policy before its timer ticks
            self._clock_pub.publish(Clock(clock=self._sim_time().to_msg()))

    def _sim_time(self) -> Any:
        from rclpy.time import Time

        return Time(nanoseconds=(self._sim_steps + 1) * self.period_ns)

    def _run(self) -> None:
        try:
            while True:
                with self._cv:
                    self._cv.wait_for(lambda: self._start_requested or self._stop)
                    if self._stop:
                        return
                    self._start_requested = self._restart = False
                    seed = self._next_seed
                    self._next_seed += 1
                    self._episodes_started += 1
                self._episode(seed)
                with self._cv:
                    limit = self.cfg.episodes
                    if self.cfg.autostart and not self._restart and (limit == 0 or self._episodes_started < limit):
                        self._start_requested = True
        except Exception as exc:  # keep the node alive and say why the simulation stopped
            self.get_logger().error(f"simulation stopped: {type(exc).__name__}: {exc}")

    def _episode(self, seed: int) -> None:
        obs, info = self.env.reset(seed=seed)
        with self._cv:
            self._action = None  # hold still until the policy acts in this episode
            seen = self._action_seq
        steps, missing = 0, 0
        wall_period = 0.0 if self.lockstep else self.period_ns / 1e9 / self.cfg.real_time_factor
        deadline = time.monotonic()
        self._publish(obs)
        while True:
            with self._cv:
                if self.lockstep:
                    self._cv.wait_for(
                        lambda seen=seen: self._action_seq > seen or self._stop or self._restart,
                        self.cfg.action_timeout,
                    )
                else:
                    deadline += wall_period
                    self._cv.wait_for(lambda: self._stop or self._restart, max(0.0, deadline - time.monotonic()))
                if self._stop or self._restart:
                    return
                action = None if self.lockstep and self._action_seq == seen else self._action
                seen = self._action_seq
            if action is None:  # no action for this step: the robot holds still, its sensors go on
                missing += 1
                if self.lockstep:
                    self.get_logger().warning("no action within action_timeout; waiting", throttle_duration_sec=5.0)
                self._sim_steps += 1
                self._publish(obs)
                continue
            obs, _, terminated, truncated, info = self.env.step(action)
            steps += 1
            self._sim_steps += 1
            if terminated or truncated:
                result = {
                    "seed": seed,
                    "success": bool(info["is_success"]),
                    "score": float(info["score"]),
                    "steps": steps,
                }
                result.update({k: float(info[k]) for k in EXTRA_INFO_KEYS if k in info})
                result["steps_without_action"] = missing
                self._episode_pub.publish(String(data=json.dumps(result)))
                self.get_logger().info(f"episode done: {result}")
                return
            self._publish(obs)


def spin_sim_bridge(cfg: SimBridgeConfig) -> int:
    """Run the bridge until SIGINT/SIGTERM."""
    return spin_until_shutdown(lambda: SimBridge(cfg))
