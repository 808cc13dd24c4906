"""The ROS 2 deployment path: closed-loop success over DDS, and the policy node under stress.

Two parts, each written as JSON + a markdown table under benchmarks/results/:

- `--part loop` (ros_loop): the same exported policy on the same seeds through `dpstack eval
  backend=onnx num_envs=1`, through `dpstack ros loop` in lockstep on /clock, and through `dpstack
  ros loop` at real time on the wall clock (the node and the bridge as separate processes).
- `--part stress` (ros_stress): one `dpstack ros policy` process fed by this process with a Push-T
  observation at the task's rate, then a 1 kHz flood of every observation topic, then a 2 s dropout.
  Per phase: the node's action rate and intervals, its resident memory (VmRSS), what it published
  during the dropout, and how soon it acted again.

    python -m benchmarks.ros --model runs/bench-export/pusht-streaming-15 --episodes 50
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.report import write_results
from dpstack.policy.runtime import read_export_metadata

RESULTS = Path(__file__).parent / "results"


def _median_interval_stats(times: list[float]) -> dict[str, float]:
    gaps = np.diff(times) * 1000 if len(times) > 1 else np.zeros(1)
    return {
        "interval_p50_ms": float(np.percentile(gaps, 50)),
        "interval_p99_ms": float(np.percentile(gaps, 99)),
        "interval_max_ms": float(gaps.max()),
    }


# ---------------------------------------------------------------------------------------------- loop
def bench_loop(model: Path, episodes: int, out: Path) -> list[dict[str, Any]]:
    from dpstack.policy.evaluate import EvalSpec, evaluate_exported
    from dpstack.ros.loop import LoopConfig, run_loop
    from dpstack.tasks import TaskConfig

    meta = read_export_metadata(model)
    task = TaskConfig(**meta["task"])
    seed = task.eval_seed
    runs: dict[str, dict[str, Any]] = {}
    runs["dpstack eval backend=onnx"] = evaluate_exported(model, EvalSpec(task, episodes, seed, videos=0))
    for name, factor in (("ROS 2 loop, lockstep on /clock", 0.0), ("ROS 2 loop, real time", 1.0)):
        runs[name] = run_loop(
            LoopConfig(model=str(model), episodes=episodes, real_time_factor=factor, out=str(out / f"rtf{factor:g}"))
        )
    reference = [e["score"] for e in runs["dpstack eval backend=onnx"]["per_episode"]]
    rows = []
    for name, record in runs.items():
        scores = [e["score"] for e in record["per_episode"]]
        diagnostics = record.get("diagnostics", {})
        rows.append(
            {
                "path": name,
                "success_rate": record["success_rate"],
                "mean_score": record["mean_score"],
                "mean_steps": record["mean_steps"],
                "episodes_identical_to_eval": int(
                    sum(abs(a - b) < 1e-6 for a, b in zip(scores, reference, strict=True))
                ),
                "tick_ms_p50": record["tick_ms_p50"],
                "tick_ms_p99": record["tick_ms_p99"],
                "inference_ms_p50": record["inference_ms_p50"],
                "deadline_misses": diagnostics.get("deadline_misses", "-"),
                "wall_s": record.get("wall_s", float("nan")),
                "per_episode": record["per_episode"],
            }
        )
        print(f"{name}: success {record['success_rate']:.2f}, mean score {record['mean_score']:.3f}", flush=True)
    return rows


# ---------------------------------------------------------------------------------------------- stress
def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def bench_stress(model: Path, flood_hz: float, flood_s: float, dropout_s: float, out: Path) -> list[dict[str, Any]]:
    import rclpy
    from diagnostic_msgs.msg import DiagnosticArray
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.node import Node
    from std_msgs.msg import Float32MultiArray

    from dpstack.envs.registry import make_env
    from dpstack.ros.messages import COMMAND_QOS, SENSOR_QOS, observation_topics
    from dpstack.tasks import TaskConfig

    meta = read_export_metadata(model)
    rate = float(meta["control_hz"])
    low, high = np.asarray(meta["action"]["low"]), np.asarray(meta["action"]["high"])
    watchdog = 0.5
    env = make_env(TaskConfig(**meta["task"]))
    obs, _ = env.reset(seed=0)
    topics = observation_topics(meta["observations"])
    messages = [(t, t.encode(obs[t.key])) for t in topics]
    domain = str(150 + os.getpid() % 50)
    child_env = {**os.environ, "ROS_DOMAIN_ID": domain, "ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST"}
    out.mkdir(parents=True, exist_ok=True)
    log = open(out / "policy.log", "w")  # noqa: SIM115 (kept open for the child's lifetime)
    node_proc = subprocess.Popen(
        [sys.executable, "-m", "dpstack.cli", "ros", "policy", f"model={model}", "seed=0",
         f"watchdog_timeout={watchdog}", "diagnostics_period=0.25", "stats_window=100000"],
        env=child_env, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    os.environ.update({k: child_env[k] for k in ("ROS_DOMAIN_ID", "ROS_AUTOMATIC_DISCOVERY_RANGE")})
    rclpy.init()
    peer = Node("dpstack_stress")
    actions: list[tuple[float, np.ndarray]] = []
    diagnostics: dict[str, str] = {}
    peer.create_subscription(
        Float32MultiArray, "action", lambda m: actions.append((time.monotonic(), np.array(m.data))), COMMAND_QOS
    )

    def on_diagnostics(msg: DiagnosticArray) -> None:
        diagnostics.update({kv.key: kv.value for kv in msg.status[0].values})

    peer.create_subscription(DiagnosticArray, "/diagnostics", on_diagnostics, 10)
    pubs = [(peer.create_publisher(t.msg_type, t.topic, SENSOR_QOS), msg) for t, msg in messages]
    executor = SingleThreadedExecutor()
    executor.add_node(peer)
    spinner = threading.Thread(target=executor.spin, daemon=True)
    spinner.start()

    def publish_for(seconds: float, hz: float) -> tuple[int, float]:
        """Publish every observation topic at `hz` for `seconds`; returns (rounds, time of the last)."""
        start = time.monotonic()
        rounds, last = 0, start
        while (now := time.monotonic()) < start + seconds:
            for pub, msg in pubs:
                pub.publish(msg)
            rounds += 1
            last = now
            time.sleep(max(0.0, start + rounds / hz - time.monotonic()))
        return rounds, last

    rows = []
    try:
        deadline = time.monotonic() + 60
        while not actions:  # the node is up and acting
            publish_for(0.5, rate)
            if node_proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the policy node did not start acting; see {out / 'policy.log'}")
        for phase, hz, seconds in (
            ("calm", rate, 5.0),
            ("1 kHz flood", flood_hz, flood_s),
            ("calm after flood", rate, 5.0),
        ):
            before = dict(diagnostics)
            first = len(actions)
            rss_start = _rss_mib(node_proc.pid)
            start = time.monotonic()
            rounds, _ = publish_for(seconds, hz)
            elapsed = time.monotonic() - start
            publish_for(0.6, rate)  # a diagnostics message covering the phase (observations go on)
            times = [t for t, _ in actions[first:] if t <= start + elapsed]
            rows.append(
                {
                    "phase": phase,
                    "obs_rate_hz": rounds / elapsed,
                    "action_rate_hz": len(times) / elapsed,
                    **_median_interval_stats(times),
                    "rss_start_mib": rss_start,
                    "rss_end_mib": _rss_mib(node_proc.pid),
                    "superseded": int(diagnostics["superseded_messages"]) - int(before.get("superseded_messages", 0)),
                    "lost": int(diagnostics["lost_messages"]) - int(before.get("lost_messages", 0)),
                    "deadline_misses": int(diagnostics["deadline_misses"]) - int(before.get("deadline_misses", 0)),
                    "tick_ms_p99": float(diagnostics["tick_latency_p99_ms"]),
                    "unsafe_actions": 0,
                    "recovery_s": float("nan"),
                }
            )
            print(rows[-1], flush=True)
        # dropout: observations stop for dropout_s, then come back at the task's rate
        first = len(actions)
        trips_before = int(diagnostics["watchdog_trips"])
        _, last_obs = publish_for(2.0, rate)
        time.sleep(dropout_s)
        resume = time.monotonic()
        publish_for(5.0, rate)
        time.sleep(0.6)
        window = actions[first:]
        during = [t for t, _ in window if last_obs + watchdog + 1.0 / rate < t < resume]
        after = [t for t, _ in window if t >= resume]
        values = np.stack([a for _, a in window])
        outside = int(((values < low - 1e-6) | (values > high + 1e-6)).any(axis=1).sum())
        rows.append(
            {
                "phase": f"{dropout_s:g} s dropout",
                "obs_rate_hz": 0.0,
                "action_rate_hz": 0.0,
                **_median_interval_stats(after),
                "rss_start_mib": float("nan"),
                "rss_end_mib": _rss_mib(node_proc.pid),
                "superseded": 0,
                "lost": 0,
                "deadline_misses": 0,
                "tick_ms_p99": float(diagnostics["tick_latency_p99_ms"]),
                "unsafe_actions": len(during) + outside,
                "recovery_s": (after[0] - resume) if after else float("inf"),
                "watchdog_trips": int(diagnostics["watchdog_trips"]) - trips_before,
            }
        )
        print(rows[-1], flush=True)
    finally:
        node_proc.send_signal(2)
        node_proc.wait(10)
        executor.shutdown()
        spinner.join(timeout=5)
        peer.destroy_node()
        rclpy.try_shutdown()
        log.close()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=Path("runs/bench-export/pusht-streaming-15"))
    parser.add_argument("--part", choices=["loop", "stress", "all"], default="all")
    parser.add_argument("--episodes", type=int, default=50)
    parser.add_argument("--flood-hz", type=float, default=1000.0)
    parser.add_argument("--flood-s", type=float, default=10.0)
    parser.add_argument("--dropout-s", type=float, default=2.0)
    parser.add_argument("--out", type=Path, default=Path("runs/bench-ros"))
    args = parser.parse_args()
    if not (args.model / "policy.json").is_file():
        sys.exit(
            f"{args.model}: not an export dir; make one with `dpstack export checkpoint=<run> sampler=streaming out=...`"
        )
    meta = {
        "model": str(args.model),
        "sampler": read_export_metadata(args.model)["sampler"]["name"],
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
    }
    if args.part in ("loop", "all"):
        rows = bench_loop(args.model, args.episodes, args.out / "loop")
        columns = [
            ("path", "path"),
            ("success", "success_rate"),
            ("mean score", "mean_score"),
            ("mean steps", "mean_steps"),
            ("episodes identical to eval", "episodes_identical_to_eval"),
            ("tick p50 ms", "tick_ms_p50"),
            ("tick p99 ms", "tick_ms_p99"),
            ("inference p50 ms", "inference_ms_p50"),
            ("deadline misses", "deadline_misses"),
            ("wall s", "wall_s"),
        ]
        write_results(RESULTS, "ros_loop", rows, columns, {**meta, "episodes": args.episodes})
    if args.part in ("stress", "all"):
        rows = bench_stress(args.model, args.flood_hz, args.flood_s, args.dropout_s, args.out / "stress")
        columns = [
            ("phase", "phase"),
            ("obs rate Hz (per topic)", "obs_rate_hz"),
            ("action rate Hz", "action_rate_hz"),
            ("action interval p50 ms", "interval_p50_ms"),
            ("p99 ms", "interval_p99_ms"),
            ("max ms", "interval_max_ms"),
            ("RSS start MiB", "rss_start_mib"),
            ("RSS end MiB", "rss_end_mib"),
            ("superseded msgs", "superseded"),
            ("deadline misses", "deadline_misses"),
            ("unsafe actions", "unsafe_actions"),
            ("recovery s", "recovery_s"),
        ]
        write_results(RESULTS, "ros_stress", rows, columns, meta)


if __name__ == "__main__":
    main()
