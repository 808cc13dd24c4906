"""The ROS 2 policy node and simulator bridge on real rclpy and Fast DDS over loopback.

Every test run gets its own ROS_DOMAIN_ID (from the process id), so parallel runs never see each
other's topics. The node under test runs in this process on a background executor; a peer node plays
the robot (publishes observations, listens to actions and /diagnostics). The closed-loop test runs
`dpstack ros loop`, which starts the node and the bridge as two more processes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy")

from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from rclpy.lifecycle import TransitionCallbackReturn  # noqa: E402
from rclpy.node import Node  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from sensor_msgs.msg import Image, JointState  # noqa: E402
from std_msgs.msg import Float32MultiArray  # noqa: E402
from std_srvs.srv import SetBool, Trigger  # noqa: E402
from trajectory_msgs.msg import JointTrajectory  # noqa: E402

from dpstack.methods import load_policy  # noqa: E402
from dpstack.policy.diffusion_policy import PolicyConfig  # noqa: E402
from dpstack.policy.export import export_policy  # noqa: E402
from dpstack.policy.samplers import StreamingOptions  # noqa: E402
from dpstack.ros.messages import (  # noqa: E402
    COMMAND_QOS,
    SENSOR_QOS,
    MalformedMessage,
    float_array,
    observation_topics,
    parse_mapping,
)
from dpstack.ros.policy_node import PolicyNode, PolicyNodeConfig  # noqa: E402
from dpstack.train import train  # noqa: E402
from tests.conftest import MAZE, train_config  # noqa: E402

DOMAIN_ID = 1 + os.getpid() % 100  # unique per test run; the closed loop uses DOMAIN_ID + 100
VALID = {"state": np.array([0.5, -0.5, 0.0, 0.0], np.float32), "goal": np.array([1.0, 1.0], np.float32)}


@pytest.fixture(scope="module")
def ros_context() -> Iterator[None]:
    os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
    rclpy.init(domain_id=DOMAIN_ID)
    yield
    rclpy.shutdown()


class Robot:
    """A policy node under test plus a peer node that publishes observations and records what comes back."""

    def __init__(self, model: Path, **overrides: Any) -> None:
        self.node = PolicyNode(PolicyNodeConfig(model=str(model), seed=0, autostart=False, **overrides))
        self.peer = Node(f"robot_{id(self)}")
        self.actions: list[tuple[float, np.ndarray]] = []
        self.trajectories: list[JointTrajectory] = []
        self.diagnostics: list[DiagnosticArray] = []
        self.peer.create_subscription(
            Float32MultiArray,
            "action",
            lambda m: self.actions.append((time.monotonic(), np.array(m.data))),
            COMMAND_QOS,
        )
        self.peer.create_subscription(JointTrajectory, "joint_trajectory", self.trajectories.append, COMMAND_QOS)
        self.peer.create_subscription(DiagnosticArray, "/diagnostics", self.diagnostics.append, 10)
        self.obs_pubs = {k: self.peer.create_publisher(Float32MultiArray, f"obs/{k}", SENSOR_QOS) for k in VALID}
        self.executor = SingleThreadedExecutor()
        self.executor.add_node(self.node)
        self.executor.add_node(self.peer)
        self.thread = threading.Thread(target=self.executor.spin, daemon=True)
        self.thread.start()

    def start(self) -> None:
        assert self.node.trigger_configure() == TransitionCallbackReturn.SUCCESS, self.node.configure_error
        assert self.node.trigger_activate() == TransitionCallbackReturn.SUCCESS

    def publish(self, seconds: float, rate_hz: float = 50.0, **values: np.ndarray) -> float:
        """Publish observations (VALID unless given) for `seconds`; returns the time of the last one."""
        end = time.monotonic() + seconds
        last = time.monotonic()
        while time.monotonic() < end:
            for key, pub in self.obs_pubs.items():
                pub.publish(float_array(values.get(key, VALID[key])))
            last = time.monotonic()
            time.sleep(1 / rate_hz)
        return last

    def call(self, srv_type: Any, name: str, request: Any) -> Any:
        client = self.peer.create_client(srv_type, name)
        assert client.wait_for_service(timeout_sec=10)
        future = client.call_async(request)
        end = time.monotonic() + 10
        while not future.done() and time.monotonic() < end:
            time.sleep(0.01)
        return future.result()

    def close(self) -> None:
        self.executor.shutdown()
        self.node.destroy_node()
        self.peer.destroy_node()


@pytest.fixture
def robot_factory(ros_context: None) -> Iterator[Any]:
    robots: list[Robot] = []

    def make(model: Path, **overrides: Any) -> Robot:
        robots.append(Robot(model, **overrides))
        return robots[-1]

    yield make
    for robot in robots:
        robot.close()


def test_messages_round_trip_and_malformed_ones_are_named() -> None:
    topics = observation_topics(
        [
            {"key": "state", "shape": [3], "dtype": "float32"},
            {"key": "joints", "shape": [2], "dtype": "float32", "message": "joint_state"},
            {"key": "camera", "shape": [4, 5, 3], "dtype": "uint8"},
        ],
        overrides={"camera": "/wrist/image_raw"},
        joint_names={"joints": ["finger_b", "finger_a"]},
    )
    state, joints, camera = topics
    assert (state.msg_type, joints.msg_type, camera.msg_type, camera.topic) == (
        Float32MultiArray,
        JointState,
        Image,
        "/wrist/image_raw",
    )
    np.testing.assert_array_equal(state.decode(state.encode(np.array([1, 2, 3]))), [1, 2, 3])
    reordered = JointState(name=["finger_a", "finger_b", "wrist"], position=[0.1, 0.2, 0.3])
    np.testing.assert_allclose(joints.decode(reordered), [0.2, 0.1])  # picked by name, in the configured order
    image = np.random.default_rng(0).integers(0, 255, (4, 5, 3), dtype=np.uint8)
    np.testing.assert_array_equal(camera.decode(camera.encode(image)), image)
    bgr = camera.encode(image[..., ::-1].copy())
    bgr.encoding = "bgr8"
    np.testing.assert_array_equal(camera.decode(bgr), image)

    with pytest.raises(MalformedMessage, match=r"'obs/state': 2 values, expected 3"):
        state.decode(float_array(np.zeros(2)))
    with pytest.raises(MalformedMessage, match="NaN or inf"):
        state.decode(float_array(np.array([0, np.nan, 0])))
    with pytest.raises(MalformedMessage, match=r"joint\(s\) \['finger_b'\] missing"):
        joints.decode(JointState(name=["finger_a"], position=[0.1]))
    wrong = camera.encode(image)
    wrong.encoding = "16UC1"
    with pytest.raises(MalformedMessage, match="encoding '16UC1'"):
        camera.decode(wrong)
    small = observation_topics([{"key": "camera", "shape": [2, 5, 3], "dtype": "uint8"}])[0].encode(image[:2])
    with pytest.raises(MalformedMessage, match="image 2x5, expected 4x5"):
        camera.decode(small)
    with pytest.raises(ValueError, match=r"unknown observation key\(s\) \['gripper'\]"):
        observation_topics([{"key": "state", "shape": [3], "dtype": "float32"}], overrides={"gripper": "/g"})
    with pytest.raises(ValueError, match="expected 'key=value'"):
        parse_mapping(["state"], "topics")


def test_lifecycle_transitions_and_control_rate(robot_factory: Any, exports: dict[str, Path], tmp_path: Path) -> None:
    robot = robot_factory(exports["streaming"], rate_hz=20.0)
    assert robot.node.trigger_configure() == TransitionCallbackReturn.SUCCESS
    robot.publish(0.5)
    assert robot.actions == []  # configured but inactive: silent
    assert robot.node.trigger_activate() == TransitionCallbackReturn.SUCCESS
    robot.publish(0.5)  # first actions (the first tick runs the sampler's start graph)
    count = len(robot.actions)
    robot.publish(2.0)
    produced = len(robot.actions) - count
    assert 30 <= produced <= 46, produced  # 20 Hz for 2 s, with scheduling slack on a shared 2-core machine
    assert all(a.shape == (2,) and np.isfinite(a).all() for _, a in robot.actions)
    assert robot.node.trigger_deactivate() == TransitionCallbackReturn.SUCCESS
    time.sleep(0.2)
    count = len(robot.actions)
    robot.publish(0.5)
    assert len(robot.actions) == count  # inactive again: silent
    assert robot.node.trigger_cleanup() == TransitionCallbackReturn.SUCCESS
    assert robot.node.runtime is None

    ahead = robot_factory(exports["ddim"], node_name="ddim_policy")  # chunks of 15, 5 executed: room to look ahead
    assert ahead.node.trigger_configure() == TransitionCallbackReturn.SUCCESS
    assert ahead.node.latency_steps == 1  # auto: the next chunk is computed one tick before the queue runs dry
    too_late = robot_factory(exports["ddim"], node_name="late_policy", latency_steps=11)
    assert too_late.node.trigger_configure() == TransitionCallbackReturn.FAILURE
    assert "latency_steps must be in [0, 4]" in too_late.node.configure_error

    broken = robot_factory(tmp_path / "nowhere", node_name="broken_policy")
    assert broken.node.trigger_configure() == TransitionCallbackReturn.FAILURE
    assert "policy.json: missing" in broken.node.configure_error


def test_actions_are_clamped_and_sent_as_joint_trajectories(
    robot_factory: Any, exports: dict[str, Path], tmp_path: Path
) -> None:
    narrow = tmp_path / "narrow"
    narrow.mkdir()
    for file in exports["streaming"].iterdir():
        (narrow / file.name).write_bytes(file.read_bytes())
    meta = json.loads((narrow / "policy.json").read_text())
    meta["action"]["low"], meta["action"]["high"] = [0.0, -0.001], [0.001, 0.0]
    (narrow / "policy.json").write_text(json.dumps(meta))
    robot = robot_factory(narrow, rate_hz=20.0, joint_names=["x", "y"])
    robot.start()
    robot.publish(1.5)
    # Stop the node and let the last messages land, so the last action and the last trajectory come
    # from the same tick (the two topics are delivered independently while it runs).
    assert robot.node.trigger_deactivate() == TransitionCallbackReturn.SUCCESS
    time.sleep(0.5)
    actions = np.stack([a for _, a in robot.actions])
    assert len(actions) >= 10
    assert (actions[:, 0] >= 0).all() and (actions[:, 0] <= 0.001).all()
    assert (actions[:, 1] >= -0.001).all() and (actions[:, 1] <= 0).all()
    assert robot.node.stats()["actions_clamped"] > 0  # the untrained policy's raw actions leave that box
    assert robot.trajectories and robot.trajectories[-1].joint_names == ["x", "y"]
    np.testing.assert_allclose(robot.trajectories[-1].points[0].positions, actions[-1], atol=1e-7)


def test_watchdog_stops_output_on_stale_observations_and_recovers(robot_factory: Any, exports: dict[str, Path]) -> None:
    robot = robot_factory(exports["streaming"], rate_hz=20.0, watchdog_timeout=0.3)
    robot.start()
    last = robot.publish(1.0)
    time.sleep(1.0)  # observations stop
    late = [t for t, _ in robot.actions if t > last + 0.3 + 0.1]  # timeout + two ticks of slack
    assert late == []
    assert robot.node.stats()["watchdog"] == "tripped"
    count = len(robot.actions)
    robot.publish(1.0)  # observations come back
    assert len(robot.actions) - count >= 10
    stats = robot.node.stats()
    assert stats["watchdog"] == "ok" and stats["watchdog_trips"] == 1


def test_parameters_out_of_their_range_are_refused(robot_factory: Any, exports: dict[str, Path]) -> None:
    robot = robot_factory(exports["streaming"], rate_hz=20.0, stats_window=0)  # as if launched with -p stats_window:=0
    assert robot.node.trigger_configure() == TransitionCallbackReturn.FAILURE
    assert robot.node.configure_error == "stats_window=0 must be >= 1"
    robot.node.set_parameters([Parameter("stats_window", Parameter.Type.INTEGER, 100)])
    robot.start()  # fixed: configures now
    for name, value, reason in (
        ("rate_hz", -5.0, "rate_hz=-5.0 must be >= 0"),
        ("watchdog_timeout", 0.0, "watchdog_timeout=0.0 must be > 0"),
    ):
        result = robot.node.set_parameters([Parameter(name, Parameter.Type.DOUBLE, value)])[0]
        assert not result.successful and result.reason == reason
    assert robot.node.get_parameter("watchdog_timeout").value == 0.5  # unchanged
    assert robot.node.set_parameters([Parameter("watchdog_timeout", Parameter.Type.DOUBLE, 0.2)])[0].successful


def test_malformed_messages_are_rejected_counted_and_survived(robot_factory: Any, exports: dict[str, Path]) -> None:
    robot = robot_factory(exports["streaming"], rate_hz=20.0)
    robot.start()
    robot.publish(0.5, state=np.array([0, np.nan, 0, 0], np.float32), goal=np.zeros(3, np.float32))
    assert robot.actions == []  # no valid observation yet: nothing to act on
    stats = robot.node.stats()
    assert stats["rejected_by_key"].get("state", 0) >= 5 and stats["rejected_by_key"].get("goal", 0) >= 5
    robot.publish(1.0)
    assert len(robot.actions) >= 10  # the node survived and acts on valid observations


def test_enable_service_gates_output_and_reset_waits_for_fresh_observations(
    robot_factory: Any, exports: dict[str, Path]
) -> None:
    robot = robot_factory(exports["streaming"], rate_hz=20.0)
    robot.start()
    robot.publish(0.7)
    assert robot.actions
    assert robot.call(SetBool, "/dpstack_policy/enable", SetBool.Request(data=False)).success
    assert robot.node.get_parameter("enabled").value is False
    time.sleep(0.1)
    count = len(robot.actions)
    robot.publish(0.7)
    assert len(robot.actions) == count
    robot.call(SetBool, "/dpstack_policy/enable", SetBool.Request(data=True))
    robot.publish(0.7)
    assert len(robot.actions) > count
    assert robot.call(Trigger, "/dpstack_policy/reset", Trigger.Request()).success
    time.sleep(0.1)
    count = len(robot.actions)
    time.sleep(0.5)
    assert len(robot.actions) == count  # after a reset the old observations are not acted on


def test_diagnostics_report_latency_and_counters(robot_factory: Any, exports: dict[str, Path]) -> None:
    robot = robot_factory(exports["streaming"], rate_hz=20.0, diagnostics_period=0.2)
    robot.start()
    robot.publish(0.5, state=np.zeros(7, np.float32))
    robot.publish(1.0)
    status = robot.diagnostics[-1].status[0]
    values = {kv.key: kv.value for kv in status.values}
    assert status.name == "dpstack_policy: control" and status.message == "publishing actions"
    assert float(values["tick_latency_p50_ms"]) >= 0 and float(values["tick_latency_p99_ms"]) >= float(
        values["tick_latency_p50_ms"]
    )
    assert int(values["rejected_messages"]) >= 5 and int(values["rejected/state"]) >= 5
    assert values["watchdog"] == "ok" and int(values["actions_published"]) >= 10
    assert {"deadline_misses", "superseded_messages", "lost_messages", "inference_p99_ms"} <= set(values)


def test_closed_loop_in_separate_processes_matches_dpstack_eval(exports: dict[str, Path], tmp_path: Path) -> None:
    """`dpstack ros loop` in lockstep reproduces the episodes of the evaluator on the same seeds and noise."""
    from dpstack.policy.evaluate import EvalSpec, evaluate_exported

    args = [
        f"model={exports['streaming']}",
        f"task={MAZE.name}",
        "task.max_steps=25",
        "episodes=2",
        "real_time_factor=0",
        f"domain_id={DOMAIN_ID + 100}",
        f"out={tmp_path / 'loop'}",
    ]
    result = subprocess.run(
        [sys.executable, "-m", "dpstack.cli", "ros", "loop", *args], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "over ROS 2: success" in result.stdout
    record = json.loads((tmp_path / "loop" / "eval.json").read_text())
    assert record["backend"] == "ros" and record["episodes"] == 2 and record["seeds"] == [100000, 100001]
    assert record["exit_codes"] == {"policy": 0, "sim": 0}  # both processes shut down cleanly
    assert record["diagnostics"]["deadline_misses"] == "0"
    for key in ("success_rate", "mean_score", "nfe_per_action", "tick_ms_p50", "tick_ms_p99", "per_episode"):
        assert key in record
    task = MAZE.__class__(**{**MAZE.__dict__, "max_steps": 25})
    reference = evaluate_exported(exports["streaming"], EvalSpec(task, episodes=2, seed=100000, videos=0))
    assert [e["steps"] for e in record["per_episode"]] == [e["steps"] for e in reference["per_episode"]]
    np.testing.assert_allclose(
        [e["score"] for e in record["per_episode"]], [e["score"] for e in reference["per_episode"]], atol=1e-6
    )


@pytest.fixture(scope="module")
def per_action_export(maze_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny per-action streaming policy exported with its one-call sampler (one call, one action per tick)."""
    run = tmp_path_factory.mktemp("per-action") / "run"
    policy = PolicyConfig(denoiser="unet", preset="tiny", n_action_steps=1, noise_mode="streaming", sampler="streaming")
    train(train_config(maze_store, run, steps=10, batch_size=16, warmup_steps=2, policy=policy))
    out = tmp_path_factory.mktemp("onnx-per-action")
    loaded = load_policy(run)
    export_policy(
        loaded, loaded.make_sampler(StreamingOptions(start_steps=1)), out, [-1, -1], [1, 1], 20.0, {"name": MAZE.name}
    )
    return out


def test_node_runs_the_one_call_per_tick_sampler(robot_factory: Any, per_action_export: Path) -> None:
    robot = robot_factory(per_action_export, rate_hz=20.0, diagnostics_period=0.2)
    robot.start()
    assert robot.node.latency_steps == 0 and robot.node.runtime.actions_per_tick == 1
    robot.publish(2.0)
    stats = robot.node.stats()
    assert stats["actions_published"] >= 25 and stats["deadline_misses"] == 0
    # one network call per published action: every tick ran exactly one (the first tick included)
    assert abs(stats["network_evaluations"] - stats["actions_published"]) <= 1, stats
    assert stats["tick_latency_max_ms"] >= stats["tick_latency_p99_ms"] >= stats["tick_latency_p50_ms"] > 0
    assert stats["inference_max_ms"] >= stats["inference_p50_ms"] > 0


def test_inference_lead_publishes_on_the_tick_grid(robot_factory: Any, per_action_export: Path) -> None:
    lead = 0.03
    robot = robot_factory(per_action_export, rate_hz=20.0, inference_lead=lead)
    ticks: list[float] = []
    control_tick = robot.node._control_tick

    def recorded_tick() -> None:  # the timer is created at activation from this attribute
        ticks.append(time.monotonic())
        control_tick()

    robot.node._control_tick = recorded_tick  # type: ignore[method-assign]
    robot.start()
    robot.publish(2.0)
    stats = robot.node.stats()
    assert stats["actions_published"] >= 25 and stats["deadline_misses"] == 0, stats
    # every action leaves `lead` after the tick that sampled its observation, not when inference ends
    delays = [arrival - max(t for t in ticks if t <= arrival) for arrival, _ in robot.actions[1:]]
    assert lead - 0.002 <= np.median(delays) <= lead + 0.015, np.median(delays)
    # latency counts from the due time: a published action was due `lead` after its tick
    assert stats["tick_latency_p50_ms"] < 1000 * lead / 2, stats


def test_inference_lead_and_realtime_priority_are_checked(
    robot_factory: Any, exports: dict[str, Path], per_action_export: Path
) -> None:
    chunked = robot_factory(exports["ddim"], node_name="lead_chunked", inference_lead=0.01)
    assert chunked.node.trigger_configure() == TransitionCallbackReturn.FAILURE
    assert "needs a model that infers every tick (this one executes 5 actions per tick" in chunked.node.configure_error
    too_long = robot_factory(per_action_export, node_name="lead_long", rate_hz=20.0, inference_lead=0.05)
    assert too_long.node.trigger_configure() == TransitionCallbackReturn.FAILURE
    assert "0 < inference_lead < the period (0.05 s)" in too_long.node.configure_error
    bad_priority = robot_factory(per_action_export, node_name="rt_bad", realtime_priority=100)
    assert bad_priority.node.trigger_configure() == TransitionCallbackReturn.FAILURE
    assert "realtime_priority=100 must be in [0, 99]" in bad_priority.node.configure_error

    robot = robot_factory(per_action_export, node_name="rt_policy", rate_hz=20.0, realtime_priority=1)
    robot.start()  # configure runs in this thread: it stands in for the executor's
    robot.publish(0.5)
    realtime = robot.node.stats()["realtime"]
    granted = realtime == "executor: SCHED_FIFO 1, inference: SCHED_FIFO 1"
    assert granted or realtime.count("denied") == 2, realtime
    assert os.sched_getscheduler(0) == (os.SCHED_FIFO if granted else os.SCHED_OTHER)
    assert robot.node.trigger_deactivate() == TransitionCallbackReturn.SUCCESS
    assert robot.node.trigger_cleanup() == TransitionCallbackReturn.SUCCESS
    assert os.sched_getscheduler(0) == os.SCHED_OTHER  # handed back with the model
