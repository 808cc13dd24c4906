"""The policy node: an exported dpstack policy (`dpstack export`) driving a robot over ROS 2.

A lifecycle node (`dpstack ros policy model=<export dir>`):

- configure: loads the ONNX model with the PyTorch-free runtime, checks its metadata against the
  parameters (topics, joint names, rate, latency), and subscribes to one topic per observation key
  (sensor-data QoS; see `dpstack.ros.messages` for the message kinds);
- activate: starts the control timer at the model's rate; deactivate stops it and publishes nothing.

Every control tick takes the newest message of each key into the observation history and publishes
the action planned for that tick (std_msgs/Float32MultiArray on `action`, and a one-point
trajectory_msgs/JointTrajectory when `joint_names` is set), clamped to the model's action limits.
Inference runs on a worker thread: the timer only hands it a snapshot of the history when
`latency_steps` actions are left, so a slow inference never delays the publishing of actions already
computed. Chunks merge with `dpstack.policy.execution.ActionSchedule` (time-indexed, newest wins), as in the
evaluator. An action that is not ready when the next tick starts is a deadline miss.

A model that infers every tick (one action per tick, e.g. per-action streaming) cannot compute ahead:
its tick waits for its call. With `inference_lead` the node samples the observation and starts the
call that long before the action is due, then publishes at the due time, so the action leaves on the
tick's grid (latency = lateness against the due time) from an observation `inference_lead` older.
`realtime_priority` runs the executor and inference threads under SCHED_FIFO (`dpstack.ros.realtime`).

Safety: nothing is published while the node is inactive or disabled (`enabled` parameter or the
`~/enable` service), before every key has been received, or when the oldest newest-message is older
than `watchdog_timeout` (the watchdog; it then drops the planned actions and sampler state, and the
policy restarts from fresh observations by itself). Malformed messages are rejected, counted and
logged, never stored. `~/reset` starts a new episode. Status goes to /diagnostics.
"""

from __future__ import annotations

import dataclasses
import math
import queue
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rcl_interfaces.msg import SetParametersResult
from rclpy.clock import Clock, ClockType
from rclpy.event_handler import SubscriptionEventCallbacks
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.parameter import Parameter
from std_msgs.msg import Float32MultiArray
from std_srvs.srv import SetBool, Trigger
from trajectory_msgs.msg import JointTrajectory

from dpstack.bounds import bounds, field_violation
from dpstack.errors import ModelError
from dpstack.policy.execution import ActionSchedule, ObservationHistory, resolve_latency_steps
from dpstack.ros.messages import (
    COMMAND_QOS,
    SENSOR_QOS,
    MalformedMessage,
    ObservationTopic,
    float_array,
    joint_trajectory,
    observation_topics,
    parse_mapping,
)
from dpstack.ros.parameters import declare_config, read_config
from dpstack.ros.realtime import realtime_scheduling, sleep_until
from dpstack.ros.spin import spin_until_shutdown

DYNAMIC_PARAMETERS = ("enabled", "watchdog_timeout")  # take effect at once; the rest at the next configure


@dataclass
class PolicyNodeConfig:
    """The policy node's ROS parameters (and `dpstack ros policy` keys)."""

    model: str = field(default="???", metadata={"help": "directory written by `dpstack export` (policy.json + .onnx)"})
    node_name: str = field(default="dpstack_policy", metadata={"help": "ROS node name"})
    rate_hz: float = field(default=0.0, metadata={"help": "control rate; 0: the model's control_hz", **bounds(0)})
    topic_prefix: str = field(default="obs/", metadata={"help": "observation key k is read from <topic_prefix>k"})
    topics: list[str] = field(default_factory=list, metadata={"help": "per-key topic overrides, ['key=/topic', ...]"})
    observation_joints: list[str] = field(
        default_factory=list,
        metadata={"help": "JointState keys read by joint name, ['key=joint1,joint2', ...] (default: message order)"},
    )
    action_topic: str = field(default="action", metadata={"help": "std_msgs/Float32MultiArray action topic"})
    joint_names: list[str] = field(
        default_factory=list, metadata={"help": "when set, also publish a JointTrajectory with these joints"}
    )
    trajectory_topic: str = field(default="joint_trajectory", metadata={"help": "JointTrajectory topic"})
    watchdog_timeout: float = field(
        default=0.5,
        metadata={
            "help": "publish nothing when an observation is older than this (s, node clock)",
            **bounds(0, open_low=True),
        },
    )
    enabled: bool = field(default=True, metadata={"help": "gate on all output (also the ~/enable service)"})
    latency_steps: int = field(
        default=-1,
        metadata={
            "help": "request the next chunk while this many actions are left (as dpstack eval); "
            "-1: 1 when the model's chunk allows it (no tick waits for inference), else 0"
        },
    )
    inference_lead: float = field(
        default=0.0,
        metadata={
            "help": "for a model that infers every tick (1 action per tick): sample the observation and start "
            "inference this many seconds before the action is due, and publish it when due (wall clock); "
            "0: at the tick, the action leaves when inference ends",
            **bounds(0),
        },
    )
    realtime_priority: int = field(
        default=0,
        metadata={
            "help": "SCHED_FIFO priority (1-99) for the executor and inference threads (needs CAP_SYS_NICE; "
            "refused: a warning, and /diagnostics says so); 0: the default scheduler",
            **bounds(0, 99),
        },
    )
    threads: int = field(default=1, metadata={"help": "onnxruntime intra-op threads", **bounds(1)})
    seed: int = field(default=-1, metadata={"help": "seed of the sampler noise; -1: fresh entropy", **bounds(-1)})
    diagnostics_period: float = field(
        default=1.0, metadata={"help": "seconds between /diagnostics messages", **bounds(0, open_low=True)}
    )
    stats_window: int = field(
        default=1000, metadata={"help": "ticks over which latency percentiles are taken", **bounds(1)}
    )
    autostart: bool = field(default=True, metadata={"help": "configure and activate at launch"})
    use_sim_time: bool = field(default=False, metadata={"help": "follow /clock (ROS convention)"})


class PolicyNode(LifecycleNode):
    """See the module docstring. `configure_error` holds why the last configure failed."""

    def __init__(self, cfg: PolicyNodeConfig) -> None:
        super().__init__(
            cfg.node_name, parameter_overrides=[Parameter("use_sim_time", Parameter.Type.BOOL, cfg.use_sim_time)]
        )
        declare_config(self, dataclasses.replace(cfg, use_sim_time=False), skip=("use_sim_time",))
        self.add_on_set_parameters_callback(self._on_set_parameters)
        self._lock = threading.Lock()
        self._enabled = cfg.enabled
        self._watchdog_timeout_ns = int(cfg.watchdog_timeout * 1e9)
        self.configure_error = ""
        self.runtime: Any = None
        self._timer: Any = None
        self._worker: threading.Thread | None = None
        self._entities: list[Any] = []
        self._active = False
        self._realtime: dict[str, str] = {}  # thread -> its scheduling (`realtime_priority`)
        self._executor_tid: int | None = None  # the executor thread raised to SCHED_FIFO, restored at release
        self._reset_counters()
        self._diagnostics_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self._diagnostics_timer = self.create_timer(  # wall clock: reports go on while sim time is paused
            cfg.diagnostics_period,
            self._publish_diagnostics,
            clock=Clock(clock_type=ClockType.STEADY_TIME),
        )

    # ------------------------------------------------------------------ lifecycle
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        from dpstack.policy.runtime import OnnxPolicy

        try:
            self.cfg = read_config(self, PolicyNodeConfig)
            self.runtime = OnnxPolicy(
                self.cfg.model, threads=self.cfg.threads, seed=None if self.cfg.seed < 0 else self.cfg.seed
            )
            self._check_model()
        except (ModelError, ValueError) as exc:
            self.configure_error = str(exc)
            self.get_logger().error(f"configure failed: {exc}")
            self.runtime = None
            return TransitionCallbackReturn.FAILURE
        meta = self.runtime.meta
        self.period_s = 1.0 / (self.cfg.rate_hz or float(meta["control_hz"]))
        self._stats_window = max(10, self.cfg.stats_window)
        self._reset_counters()
        self._latest: dict[str, tuple[np.ndarray, int, bool]] = {}  # key -> (value, received ns, used)
        self._history = ObservationHistory(self.runtime.n_obs_steps)
        self._schedule = ActionSchedule()
        self._generation = 0
        self._restart_episode()
        for topic in self.topics:
            self._entities.append(
                self.create_subscription(
                    topic.msg_type,
                    topic.topic,
                    lambda msg, topic=topic: self._on_observation(topic, msg),
                    SENSOR_QOS,
                    event_callbacks=SubscriptionEventCallbacks(message_lost=self._on_message_lost),
                )
            )
        self._action_pub = self.create_lifecycle_publisher(Float32MultiArray, self.cfg.action_topic, COMMAND_QOS)
        self._trajectory_pub = (
            self.create_lifecycle_publisher(JointTrajectory, self.cfg.trajectory_topic, COMMAND_QOS)
            if self.cfg.joint_names
            else None
        )
        self._entities += [
            self.create_service(Trigger, "~/reset", self._on_reset),
            self.create_service(SetBool, "~/enable", self._on_enable),
        ]
        self._realtime = {}
        self._executor_tid = threading.get_native_id() if self.cfg.realtime_priority else None
        self._apply_realtime("executor")
        self._requests: queue.Queue = queue.Queue()
        self._worker = threading.Thread(target=self._work, name="dpstack-inference", daemon=True)
        self._worker.start()
        self.configure_error = ""
        self.get_logger().info(
            f"configured {self.cfg.model}: sampler {meta['sampler']['name']}, {1 / self.period_s:g} Hz, "
            f"latency_steps {self.latency_steps}, "
            f"observations {[t.topic for t in self.topics]}, actions on {self.cfg.action_topic}"
        )
        return super().on_configure(state)

    def _check_model(self) -> None:
        meta, cfg = self.runtime.meta, self.cfg
        self.topics: list[ObservationTopic] = observation_topics(
            meta["observations"],
            cfg.topic_prefix,
            parse_mapping(cfg.topics, "topics"),
            {k: v.split(",") for k, v in parse_mapping(cfg.observation_joints, "observation_joints").items()},
        )
        dim = int(meta["action"]["dim"])
        if cfg.joint_names and len(cfg.joint_names) != dim:
            raise ValueError(f"joint_names has {len(cfg.joint_names)} names, the model's action has {dim} dims")
        if cfg.rate_hz < 0 or not (cfg.rate_hz or meta.get("control_hz")):
            raise ValueError(f"rate_hz must be > 0 (or 0 with a model that declares control_hz), got {cfg.rate_hz}")
        self.latency_steps = resolve_latency_steps(
            cfg.latency_steps, self.runtime.actions_per_tick, int(meta["actions_per_output"]), "the model"
        )
        if cfg.watchdog_timeout <= 0:
            raise ValueError(f"watchdog_timeout must be > 0 s, got {cfg.watchdog_timeout}")
        if not 0 <= cfg.realtime_priority <= 99:
            raise ValueError(
                f"realtime_priority must be in [0, 99] (0: default scheduler), got {cfg.realtime_priority}"
            )
        period = 1.0 / (cfg.rate_hz or float(meta["control_hz"]))
        if cfg.inference_lead and not (
            0 < cfg.inference_lead < period and self.runtime.actions_per_tick == 1 and not cfg.use_sim_time
        ):
            raise ValueError(
                f"inference_lead={cfg.inference_lead:g} s needs a model that infers every tick (this one executes "
                f"{self.runtime.actions_per_tick} actions per tick; 1 is required), the wall clock "
                f"(use_sim_time={cfg.use_sim_time}) and 0 < inference_lead < the period ({period:g} s)"
            )

    def _apply_realtime(self, thread: str) -> None:
        """`realtime_priority` for the calling thread; a refusal is logged and reported, not fatal."""
        if self.cfg.realtime_priority:
            status = realtime_scheduling(self.cfg.realtime_priority)
            self._realtime[thread] = status
            if status.startswith("denied"):
                self.get_logger().warning(f"realtime_priority={self.cfg.realtime_priority}: {thread} thread {status}")

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        with self._lock:
            self._restart_episode()
            self._active = True
        self._timer = self.create_timer(self.period_s, self._control_tick)
        self.get_logger().info("active: publishing actions")
        return super().on_activate(state)

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop_control()
        self.get_logger().info("inactive: no actions are published")
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._release()
        return super().on_cleanup(state)

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop_control()
        self._release()
        return super().on_shutdown(state)

    def _stop_control(self) -> None:
        with self._lock:
            self._active = False
            if self.runtime is not None:
                self._restart_episode()
        if self._timer is not None:
            self.destroy_timer(self._timer)
            self._timer = None

    def _release(self) -> None:
        if self._worker is not None:
            self._requests.put(None)
            self._worker.join(timeout=10)
            self._worker = None
        if self._executor_tid is not None:  # the executor thread goes on serving others
            realtime_scheduling(0, self._executor_tid)
            self._executor_tid = None
        for entity in self._entities:
            if hasattr(entity, "srv_type"):
                self.destroy_service(entity)
            else:
                self.destroy_subscription(entity)
        self._entities = []
        for pub in (getattr(self, "_action_pub", None), getattr(self, "_trajectory_pub", None)):
            if pub is not None:
                self.destroy_lifecycle_publisher(pub)
        self._action_pub = self._trajectory_pub = None
        self.runtime = None

    def start(self) -> None:
        """Launch: with `autostart`, configure and activate (a failed configure raises ModelError)."""
        if self.get_parameter("autostart").value:
            if self.trigger_configure() != TransitionCallbackReturn.SUCCESS:
                raise ModelError(self.configure_error or "configure failed")
            self.trigger_activate()

    def stop(self) -> None:
        """Stop the timer and join the inference thread before the node is destroyed."""
        if self.runtime is not None:
            self._stop_control()
            self._release()

    def destroy_node(self) -> None:
        """`stop()` first: the inference thread must never publish through a destroyed publisher."""
        self.stop()
        super().destroy_node()

    # ------------------------------------------------------------------ state (call with the lock held)
    def _reset_counters(self) -> None:
        self._tick_ms: deque[float] = deque(maxlen=getattr(self, "_stats_window", 1000))
        self._inference_ms: deque[float] = deque(maxlen=getattr(self, "_stats_window", 1000))
        self._counts: Counter[str] = Counter()
        self._rejected: Counter[str] = Counter()
        self._watchdog = "waiting"  # waiting (for every key) | ok | tripped

    def _restart_episode(self) -> None:
        """Drop history, planned actions and (lazily, in the worker) the sampler state."""
        self._generation += 1
        self._history.clear()
        self._schedule.clear()
        self._tick = 0
        self._requested: int | None = None  # tick of the chunk request in flight
        self._awaiting: tuple[int, float] | None = None  # (tick, its start) whose action is not yet published

    # ------------------------------------------------------------------ callbacks
    def _on_observation(self, topic: ObservationTopic, msg: Any) -> None:
        try:
            value = topic.decode(msg)
        except MalformedMessage as exc:
            with self._lock:
                self._rejected[topic.key] += 1
            self.get_logger().warning(f"rejected: {exc}", throttle_duration_sec=5.0)
            return
        now = self.get_clock().now().nanoseconds
        with self._lock:
            previous = self._latest.get(topic.key)
            if previous is not None and not previous[2]:
                self._counts["superseded"] += 1  # replaced before any tick used it (e.g. a flood)
            self._latest[topic.key] = (value, now, False)

    def _on_message_lost(self, info: Any) -> None:
        with self._lock:
            self._counts["lost"] += int(info.total_count_change)

    def _observation_status(self, now_ns: int) -> str:
        if len(self._latest) < len(self.topics):
            return "waiting"
        oldest = min(received for _, received, _ in self._latest.values())
        return "tripped" if now_ns - oldest > self._watchdog_timeout_ns else "ok"

    def _control_tick(self) -> None:
        start = self._scheduled_start(time.perf_counter())
        now = self.get_clock().now().nanoseconds
        with self._lock:
            if not self._active:
                return
            if self._awaiting is not None:  # the previous tick's action never became ready
                self._counts["deadline_misses"] += 1
                self._awaiting = None
            if not self._enabled:
                return
            status = self._observation_status(now)
            if status != self._watchdog:
                if status == "tripped":
                    self.get_logger().warning(
                        f"watchdog: no fresh observation for {self._watchdog_timeout_ns / 1e9:g} s"
                    )
                    self._counts["watchdog_trips"] += 1
                    self._restart_episode()
                else:
                    self.get_logger().info(f"observations {status} (were {self._watchdog})")
                self._watchdog = status
            if status != "ok":
                return
            tick = self._tick
            self._tick += 1
            self._history.observe({k: value[None] for k, (value, _, _) in self._latest.items()})
            self._latest = {k: (value, received, True) for k, (value, received, _) in self._latest.items()}
            lag = self._schedule.remaining(tick)
            if self._requested is None and lag <= self.latency_steps:
                self._requested = tick
                self._requests.put((self._generation, tick, lag, self._history.stacked()))
            action = self._schedule.action_at(tick)
            if action is None:  # due now, or `inference_lead` from now (the worker publishes it)
                self._awaiting = (tick, start + self.cfg.inference_lead)
            else:
                self._publish(action, start)

    def _scheduled_start(self, now: float) -> float:
        """When this tick was due on the timer's grid (perf_counter time): latencies count a late callback.

        Under sim time the grid is on /clock, not the wall clock: the callback's start stands in.
        """
        until_next = None if self.cfg.use_sim_time or self._timer is None else self._timer.time_until_next_call()
        return now if until_next is None else min(now, now + until_next / 1e9 - self.period_s)

    def _work(self) -> None:
        """Inference thread: one request at a time, results merged into the schedule."""
        self._apply_realtime("inference")
        served_generation = -1
        while True:
            request = self._requests.get()
            if request is None:
                return
            generation, tick, lag, history = request
            if generation != served_generation:  # a new episode: fresh sampler state
                self.runtime.reset()
                served_generation = generation
            start = time.perf_counter()
            try:
                chunk = self.runtime.tick(history)
            except Exception as exc:  # a broken model must not take the node down: stop acting, say why
                self.get_logger().error(f"inference failed: {exc}", throttle_duration_sec=5.0)
                with self._lock:
                    self._counts["inference_errors"] += 1
                    if generation == self._generation:
                        self._restart_episode()
                continue
            elapsed = (time.perf_counter() - start) * 1000
            with self._lock:
                if generation != self._generation or not self._active:
                    continue  # planned for an episode that has ended
                self._inference_ms.append(elapsed)
                self._requested = None
                self._schedule.insert(chunk[:, : lag + self.runtime.actions_per_tick], tick)
                awaiting = self._awaiting
                action = None if awaiting is None else self._schedule.action_at(awaiting[0])
            if action is None:
                continue
            sleep_until(awaiting[1])  # `inference_lead`: the action is due at its tick, not before
            with self._lock:
                if self._awaiting == awaiting and generation == self._generation and self._active:
                    self._awaiting = None
                    self._publish(action, awaiting[1])

    def _publish(self, action: np.ndarray, tick_start: float) -> None:
        raw = np.asarray(action[0], np.float32)
        clamped = np.clip(raw, self.runtime.action_low, self.runtime.action_high)
        if not np.array_equal(raw, clamped):
            self._counts["clamped"] += 1
        self._action_pub.publish(float_array(clamped))
        if self._trajectory_pub is not None:
            stamp = self.get_clock().now().to_msg()
            self._trajectory_pub.publish(joint_trajectory(self.cfg.joint_names, clamped, stamp, self.period_s))
        self._counts["published"] += 1
        self._tick_ms.append((time.perf_counter() - tick_start) * 1000)

    def _on_reset(self, request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        with self._lock:
            self._restart_episode()
            self._latest = {}
            self._watchdog = "waiting"
        response.success, response.message = True, "episode reset: waiting for fresh observations"
        return response

    def _on_enable(self, request: SetBool.Request, response: SetBool.Response) -> SetBool.Response:
        result = self.set_parameters([Parameter("enabled", Parameter.Type.BOOL, bool(request.data))])[0]
        response.success, response.message = result.successful, "enabled" if request.data else "disabled"
        return response

    def _on_set_parameters(self, params: list[Parameter]) -> SetParametersResult:
        fields = {f.name: f for f in dataclasses.fields(PolicyNodeConfig)}
        for param in params:  # all or nothing: a value out of its field's range refuses the whole set
            problem = field_violation(fields[param.name], param.value) if param.name in fields else None
            if problem:
                return SetParametersResult(successful=False, reason=problem)
        for param in params:
            if param.name == "enabled":
                with self._lock:
                    self._enabled = bool(param.value)
                    if not self._enabled and self.runtime is not None:
                        self._restart_episode()
            elif param.name == "watchdog_timeout":
                self._watchdog_timeout_ns = int(param.value * 1e9)
        return SetParametersResult(successful=True)

    # ------------------------------------------------------------------ diagnostics
    def stats(self) -> dict[str, Any]:
        """What /diagnostics reports, as a dict (also for tests and the benchmark)."""
        with self._lock:
            ticks = np.asarray(self._tick_ms) if self._tick_ms else None
            inference = np.asarray(self._inference_ms) if self._inference_ms else None
            return {
                "state": "active" if self._active else "configured" if self.runtime is not None else "unconfigured",
                "enabled": self._enabled,
                "watchdog": self._watchdog,
                "tick_latency_p50_ms": float(np.percentile(ticks, 50)) if ticks is not None else math.nan,
                "tick_latency_p99_ms": float(np.percentile(ticks, 99)) if ticks is not None else math.nan,
                "tick_latency_max_ms": float(ticks.max()) if ticks is not None else math.nan,
                "inference_p50_ms": float(np.percentile(inference, 50)) if inference is not None else math.nan,
                "inference_p99_ms": float(np.percentile(inference, 99)) if inference is not None else math.nan,
                "inference_max_ms": float(inference.max()) if inference is not None else math.nan,
                "actions_published": self._counts["published"],
                "actions_clamped": self._counts["clamped"],
                "deadline_misses": self._counts["deadline_misses"],
                "watchdog_trips": self._counts["watchdog_trips"],
                "rejected_messages": sum(self._rejected.values()),
                "rejected_by_key": dict(self._rejected),
                "superseded_messages": self._counts["superseded"],
                "lost_messages": self._counts["lost"],
                "inference_errors": self._counts["inference_errors"],
                "network_evaluations": self.runtime.network_evaluations if self.runtime is not None else 0,
                "realtime": ", ".join(f"{k}: {v}" for k, v in self._realtime.items()) or "off",
            }

    def _publish_diagnostics(self) -> None:
        stats = self.stats()
        if stats["state"] != "active":
            level, message = DiagnosticStatus.OK, stats["state"]
        elif stats["watchdog"] != "ok" or not stats["enabled"]:
            level = DiagnosticStatus.WARN
            message = "disabled" if not stats["enabled"] else f"no output: observations {stats['watchdog']}"
        elif stats["inference_errors"]:
            level, message = DiagnosticStatus.ERROR, "inference failed"
        else:
            level, message = DiagnosticStatus.OK, "publishing actions"
        status = DiagnosticStatus(level=level, name=f"{self.get_name()}: control", message=message)
        status.hardware_id = str(self.get_parameter("model").value)
        status.values = [KeyValue(key=k, value=str(v)) for k, v in stats.items() if k != "rejected_by_key"] + [
            KeyValue(key=f"rejected/{k}", value=str(v)) for k, v in stats["rejected_by_key"].items()
        ]
        msg = DiagnosticArray(status=[status])
        msg.header.stamp = self.get_clock().now().to_msg()
        self._diagnostics_pub.publish(msg)


def spin_policy_node(cfg: PolicyNodeConfig) -> int:
    """Run the node until SIGINT/SIGTERM; with `autostart`, configure and activate it first."""
    return spin_until_shutdown(lambda: PolicyNode(cfg))
