"""Closed-loop evaluation over ROS 2: the policy node and the simulator bridge as separate processes.

`dpstack ros loop model=<export dir> [task=<name>] episodes=N` starts `dpstack ros policy` and
`dpstack ros sim` on a private ROS_DOMAIN_ID (DDS discovery kept on localhost), drives episodes from a
third node (`~/reset` on both, then the bridge's `~/episode` result), reads the policy's /diagnostics,
prints success and latency, writes eval.json (the fields of `dpstack eval`, backend "ros"), and shuts
both processes down with SIGINT (SIGKILL after a grace period).

Seeds and noise match `dpstack eval backend=onnx num_envs=1`: episode i runs on seed `seed + i` and the
policy's noise generator is seeded with `seed`, so in lockstep (real_time_factor=0) the two take the
same observations and give the same episodes.
"""

from __future__ import annotations

import json
import os
import queue
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dpstack.bounds import OUTPUT_DIRECTORY, bounds
from dpstack.config import quote_value
from dpstack.envs.registry import task_spec
from dpstack.errors import ConfigError, UserError
from dpstack.tasks import TaskConfig


@dataclass
class LoopConfig:
    """`dpstack ros loop` keys."""

    model: str = field(default="???", metadata={"help": "directory written by `dpstack export`"})
    task: TaskConfig | None = field(
        default=None, metadata={"help": "task config group: task=<name> (default: the model's)"}
    )
    episodes: int = field(default=10, metadata={"help": "episodes (seeds seed, seed+1, ...)", **bounds(1)})
    seed: int = field(
        default=-1,
        metadata={"help": "first seed, also the policy's noise seed; -1: the task's eval_seed", **bounds(-1)},
    )
    real_time_factor: float = field(
        default=1.0,
        metadata={"help": "1: real time on the wall clock; >1 faster on /clock; 0: lockstep on /clock", **bounds(0)},
    )
    latency_steps: int = field(
        default=0,
        metadata={"help": "the policy node's latency_steps (0 as in dpstack eval; -1: its auto)", **bounds(-1)},
    )
    threads: int = field(default=1, metadata={"help": "onnxruntime threads of the policy node", **bounds(1)})
    domain_id: int = field(default=-1, metadata={"help": "ROS_DOMAIN_ID for the run; -1: a random free-ish one"})
    out: str = field(
        default="", metadata={"help": "directory for eval.json and the two nodes' logs (optional)", **OUTPUT_DIRECTORY}
    )
    startup_timeout: float = field(
        default=120.0, metadata={"help": "seconds to wait for both nodes to come up", **bounds(0, open_low=True)}
    )


class _Process:
    """A child `dpstack ros ...` process with its output in a log file."""

    def __init__(self, name: str, args: list[str], env: dict[str, str], log_dir: Path) -> None:
        self.name = name
        self.log = log_dir / f"{name}.log"
        with open(self.log, "w") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "dpstack.cli", "ros", name, *args],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a Ctrl-C in the terminal reaches us; we stop the children
            )

    def check(self) -> None:
        if self.proc.poll() is not None:
            tail = self.log.read_text().strip().splitlines()[-8:]
            raise UserError(f"'dpstack ros {self.name}' exited with {self.proc.returncode}:\n  " + "\n  ".join(tail))

    def stop(self, grace: float = 10.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def run_loop(cfg: LoopConfig) -> dict[str, Any]:
    """Run the closed loop; returns the eval.json record (also written to `<out>/eval.json`)."""
    import rclpy
    from diagnostic_msgs.msg import DiagnosticArray
    from lifecycle_msgs.srv import GetState
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.node import Node
    from std_msgs.msg import String
    from std_srvs.srv import Trigger

    from dpstack.policy.evaluate import summarize, write_eval
    from dpstack.policy.runtime import read_export_metadata
    from dpstack.ros.messages import COMMAND_QOS

    meta = read_export_metadata(cfg.model)
    task = cfg.task or TaskConfig(**meta["task"])
    if cfg.episodes < 1:
        raise ConfigError(f"episodes must be >= 1, got {cfg.episodes}")
    if cfg.real_time_factor < 0:
        raise ConfigError(f"real_time_factor must be >= 0 (0: lockstep), got {cfg.real_time_factor}")
    spec = task_spec(task)
    control_hz, max_steps = spec.control_hz, spec.max_steps
    seed = task.eval_seed if cfg.seed < 0 else cfg.seed
    sim_time = cfg.real_time_factor != 1.0
    domain = cfg.domain_id if cfg.domain_id >= 0 else random.Random().randint(1, 100)
    env = {**os.environ, "ROS_DOMAIN_ID": str(domain)}
    env.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    log_dir = Path(cfg.out) if cfg.out else Path(tempfile.mkdtemp(prefix="dpstack-ros-loop-"))
    log_dir.mkdir(parents=True, exist_ok=True)

    os.environ.update({k: env[k] for k in ("ROS_DOMAIN_ID", "ROS_AUTOMATIC_DISCOVERY_RANGE")})
    children = [
        _Process(
            "policy",
            [
                f"model={quote_value(str(cfg.model))}",
                f"rate_hz={control_hz}",
                f"use_sim_time={str(sim_time).lower()}",
                f"seed={seed}",
                f"latency_steps={cfg.latency_steps}",
                f"threads={cfg.threads}",
                "stats_window=1000000",
                "diagnostics_period=0.5",
            ],
            env,
            log_dir,
        ),
        _Process(
            "sim",
            [
                f"task={task.name}",
                f"task.image={str(task.image).lower()}",
                f"task.eval_seed={task.eval_seed}",
                f"seed={seed}",
                "autostart=false",
                f"real_time_factor={cfg.real_time_factor}",
                f"publish_clock={str(sim_time).lower()}",
                f"task.max_steps={max_steps}",
            ],
            env,
            log_dir,
        ),
    ]
    rclpy.init()
    node = Node("dpstack_loop")
    results: queue.Queue = queue.Queue()
    diagnostics: dict[str, str] = {}
    node.create_subscription(String, "/dpstack_sim/episode", lambda m: results.put(json.loads(m.data)), COMMAND_QOS)

    def on_diagnostics(msg: DiagnosticArray) -> None:
        for status in msg.status:
            if status.name.startswith("dpstack_policy"):
                diagnostics.clear()
                diagnostics.update({kv.key: kv.value for kv in status.values})

    node.create_subscription(DiagnosticArray, "/diagnostics", on_diagnostics, 10)
    reset_policy = node.create_client(Trigger, "/dpstack_policy/reset")
    reset_sim = node.create_client(Trigger, "/dpstack_sim/reset")
    policy_state = node.create_client(GetState, "/dpstack_policy/get_state")
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    spinner = threading.Thread(target=executor.spin, daemon=True)
    spinner.start()

    def call(client: Any, request: Any, timeout: float = 30.0) -> Any:
        future = client.call_async(request)
        end = time.monotonic() + timeout
        while not future.done():
            for child in children:
                child.check()
            if time.monotonic() > end:
                raise UserError(f"no answer from {client.srv_name} within {timeout:g} s")
            time.sleep(0.01)
        return future.result()

    episodes: list[dict[str, Any]] = []
    started = time.monotonic()
    try:
        end = time.monotonic() + cfg.startup_timeout
        for client in (reset_policy, reset_sim, policy_state):
            while not client.wait_for_service(timeout_sec=0.2):
                for child in children:
                    child.check()
                if time.monotonic() > end:
                    raise UserError(
                        f"{client.srv_name} did not come up within {cfg.startup_timeout:g} s (logs in {log_dir})"
                    )
        while call(policy_state, GetState.Request()).current_state.label != "active":
            if time.monotonic() > end:
                raise UserError(f"the policy node did not become active (log: {children[0].log})")
            time.sleep(0.1)
        per_step = 1.0 / control_hz / cfg.real_time_factor if cfg.real_time_factor else 0.5
        episode_timeout = max_steps * per_step * 2 + 60
        mode = "lockstep" if cfg.real_time_factor == 0 else f"{cfg.real_time_factor:g}x real time"
        print(f"ROS 2 closed loop on domain {domain} ({mode}); logs in {log_dir}", flush=True)
        for i in range(cfg.episodes):
            call(reset_policy, Trigger.Request())
            call(reset_sim, Trigger.Request())
            end = time.monotonic() + episode_timeout
            while True:
                try:
                    result = results.get(timeout=0.2)
                    break
                except queue.Empty:
                    for child in children:
                        child.check()
                    if time.monotonic() > end:
                        raise UserError(f"episode {i} did not finish within {episode_timeout:.0f} s") from None
            episodes.append(result)
            print(
                f"  episode {i + 1}/{cfg.episodes} seed {result['seed']}: success {result['success']}, "
                f"score {result['score']:.3f}, {result['steps']} steps",
                flush=True,
            )
        time.sleep(1.0)  # one more /diagnostics message covering the last episode
    finally:
        codes = {child.name: child.stop() for child in children}
        executor.shutdown()
        spinner.join(timeout=5)
        node.destroy_node()
        rclpy.try_shutdown()
    wall_s = time.monotonic() - started

    def stat(key: str) -> float:
        try:
            return float(diagnostics[key])
        except (KeyError, ValueError):
            return float("nan")

    run = {"episodes": episodes, "ticks_ms": [], "inference_ms": [], "videos": []}
    record = summarize(
        task,
        meta["sampler"]["name"],
        stat("network_evaluations") / max(1.0, stat("actions_published")),
        run,
        tick_ms_p50=stat("tick_latency_p50_ms"),
        tick_ms_p99=stat("tick_latency_p99_ms"),
        inference_ms_p50=stat("inference_p50_ms"),
        inference_ms_p99=stat("inference_p99_ms"),
        backend="ros",
        model=str(cfg.model),
        weights_sha256=meta["weights_sha256"],
        real_time_factor=cfg.real_time_factor,
        latency_steps=cfg.latency_steps,
        wall_s=wall_s,
        diagnostics=diagnostics,
        exit_codes=codes,
    )
    if cfg.out:
        write_eval(Path(cfg.out), record)
    return record
