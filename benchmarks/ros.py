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
import itertools
import json
import os
import shlex
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.report import machine, merge_with_previous, write_results
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


class NodeUnderTest:
    """One `dpstack ros policy` process plus a peer node in this process that feeds it and listens."""

    def __init__(self, model: Path, out: Path, *node_args: str) -> None:
        import rclpy
        from diagnostic_msgs.msg import DiagnosticArray
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.node import Node
        from std_msgs.msg import Float32MultiArray

        from dpstack.envs.registry import make_env
        from dpstack.ros.messages import COMMAND_QOS, SENSOR_QOS, observation_topics
        from dpstack.tasks import TaskConfig

        meta = read_export_metadata(model)
        env = make_env(TaskConfig(**meta["task"]))
        obs, _ = env.reset(seed=0)
        topics = observation_topics(meta["observations"])
        messages = [(t, t.encode(obs[t.key])) for t in topics]
        domain = str(150 + os.getpid() % 50)
        child_env = {**os.environ, "ROS_DOMAIN_ID": domain, "ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST"}
        out.mkdir(parents=True, exist_ok=True)
        self.log = open(out / "policy.log", "w")  # noqa: SIM115 (kept open for the child's lifetime)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "dpstack.cli", "ros", "policy", f"model={model}", "seed=0", *node_args],
            env=child_env, stdout=self.log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        os.environ.update({k: child_env[k] for k in ("ROS_DOMAIN_ID", "ROS_AUTOMATIC_DISCOVERY_RANGE")})
        rclpy.init()
        self.peer = Node("dpstack_bench")
        self.actions: list[tuple[float, np.ndarray]] = []
        self.diagnostics: dict[str, str] = {}
        self.peer.create_subscription(
            Float32MultiArray,
            "action",
            lambda m: self.actions.append((time.monotonic(), np.array(m.data))),
            COMMAND_QOS,
        )

        def on_diagnostics(msg: DiagnosticArray) -> None:
            self.diagnostics.update({kv.key: kv.value for kv in msg.status[0].values})

        self.peer.create_subscription(DiagnosticArray, "/diagnostics", on_diagnostics, 10)
        self.pubs = [(self.peer.create_publisher(t.msg_type, t.topic, SENSOR_QOS), msg) for t, msg in messages]
        self.executor = SingleThreadedExecutor()
        self.executor.add_node(self.peer)
        self.spinner = threading.Thread(target=self.executor.spin, daemon=True)
        self.spinner.start()
        self.out = out

    def publish_for(self, seconds: float, hz: float) -> tuple[int, float]:
        """Publish every observation topic at `hz` for `seconds`; returns (rounds, time of the last)."""
        start = time.monotonic()
        rounds, last = 0, start
        while (now := time.monotonic()) < start + seconds:
            for pub, msg in self.pubs:
                pub.publish(msg)
            rounds += 1
            last = now
            time.sleep(max(0.0, start + rounds / hz - time.monotonic()))
        return rounds, last

    def wait_until_acting(self, hz: float) -> None:
        deadline = time.monotonic() + 60
        while not self.actions:
            self.publish_for(0.5, hz)
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the policy node did not start acting; see {self.out / 'policy.log'}")

    def close(self) -> None:
        import rclpy

        self.proc.send_signal(2)
        self.proc.wait(10)
        self.executor.shutdown()
        self.spinner.join(timeout=5)
        self.peer.destroy_node()
        rclpy.try_shutdown()
        self.log.close()


def bench_stress(model: Path, flood_hz: float, flood_s: float, dropout_s: float, out: Path) -> list[dict[str, Any]]:
    meta = read_export_metadata(model)
    rate = float(meta["control_hz"])
    low, high = np.asarray(meta["action"]["low"]), np.asarray(meta["action"]["high"])
    watchdog = 0.5
    node = NodeUnderTest(model, out, f"watchdog_timeout={watchdog}", "diagnostics_period=0.25", "stats_window=100000")
    actions, diagnostics, publish_for, node_proc = node.actions, node.diagnostics, node.publish_for, node.proc
    rows = []
    try:
        node.wait_until_acting(rate)
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
        node.close()
    return rows


# ---------------------------------------------------------------------------------------------- rate
def bench_rate(
    models: list[Path], rates: list[float], seconds: float, out: Path, settings: list[str]
) -> list[dict[str, Any]]:
    """Per model, node settings and control rate: one node process for `seconds`, observations fed at the rate.

    `settings`: node parameters per variant, each a space-separated "key=value ..." ("" for the defaults).
    Sustained means no deadline miss and every tick's action published (within 1%).
    """
    rows = []
    for model, setting, hz in itertools.product(models, settings, rates):
        sampler = read_export_metadata(model)["sampler"]
        tag = setting.replace(" ", "_").replace("=", "") or "defaults"
        node = NodeUnderTest(
            model,
            out / f"{model.name}-{tag}-{hz:g}hz",
            f"rate_hz={hz}",
            "diagnostics_period=0.5",
            "stats_window=1000000",
            *setting.split(),
        )
        try:
            node.wait_until_acting(hz)
            node.publish_for(1.0, hz)  # settle
            before = dict(node.diagnostics)
            first = len(node.actions)
            start = time.monotonic()
            node.publish_for(seconds, hz)
            elapsed = time.monotonic() - start
            node.publish_for(1.2, hz)  # a diagnostics message covering the run
            published = sum(1 for t, _ in node.actions[first:] if t <= start + elapsed)
            misses = int(node.diagnostics["deadline_misses"]) - int(before.get("deadline_misses", 0))
            row = {
                "model": model.name,
                "sampler": sampler["name"],
                "settings": setting or "defaults",
                "realtime": node.diagnostics.get("realtime", ""),
                "max_calls_per_tick": sampler.get("max_calls_per_tick", ""),
                "rate_hz": hz,
                "seconds": round(elapsed, 1),
                "actions_per_s": published / elapsed,
                "deadline_misses": misses,
                "sustained": bool(misses == 0 and published >= 0.99 * hz * elapsed),
                **{
                    k: float(node.diagnostics[k])
                    for k in (
                        "tick_latency_p50_ms",
                        "tick_latency_p99_ms",
                        "tick_latency_max_ms",
                        "inference_p50_ms",
                        "inference_p99_ms",
                        "inference_max_ms",
                    )
                },
            }
        finally:
            node.close()
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def probe_machine(hz: float, seconds: float, work_ms: float = 1.8) -> dict[str, Any]:
    """The machine's own stalls: a fixed single-threaded numpy workload (element-wise, no BLAS threads, no
    ROS, no onnxruntime, nothing allocated) every period, at SCHED_FIFO 80 when allowed. A period whose
    work ends after the next period starts is a miss.

    Runs in the benchmark's process right before the nodes, so a row of the rate table can be read
    against what the same machine does to plain arithmetic in the same minutes.
    """
    from dpstack.ros.realtime import realtime_scheduling, sleep_until

    a = np.ones(1 << 18, np.float32)  # 1 MiB: the work stays in cache, as a warm network call's would
    product = np.empty_like(a)
    start = time.perf_counter()
    repeats = 0
    while time.perf_counter() - start < 0.2:  # calibrate the workload to `work_ms`
        np.multiply(a, a, out=product)
        repeats += 1
    repeats = max(1, round(repeats * work_ms / 200))
    status = realtime_scheduling(80)
    try:
        period = 1.0 / hz
        work_ms_list, late_ms, misses = [], [], 0
        due = time.perf_counter()
        for _ in range(int(seconds * hz)):
            due += period
            sleep_until(due)
            begin = time.perf_counter()
            for _ in range(repeats):
                np.multiply(a, a, out=product)
            end = time.perf_counter()
            work_ms_list.append((end - begin) * 1000)
            late_ms.append((end - due) * 1000)  # as the node's tick latency: from the due time
            misses += end > due + period
            due = max(due, end - period)  # a stall skips periods instead of bunching them
    finally:
        realtime_scheduling(0)
    work, times = np.asarray(work_ms_list), np.asarray(late_ms)
    return {
        "model": "(machine probe)",
        "sampler": f"numpy work, {np.median(work):.1f} ms",
        "settings": status,
        "rate_hz": hz,
        "seconds": seconds,
        "actions_per_s": len(times) / seconds,
        "deadline_misses": int(misses),
        "sustained": bool(misses == 0),
        "tick_latency_p50_ms": float(np.median(times)),
        "tick_latency_p99_ms": float(np.percentile(times, 99)),
        "tick_latency_max_ms": float(times.max()),
        "inference_p50_ms": float(np.median(work)),
        "inference_p99_ms": float(np.percentile(work, 99)),
        "inference_max_ms": float(work.max()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=Path("runs/bench-export/pusht-streaming-15"))
    parser.add_argument("--part", choices=["loop", "stress", "rate", "all"], default="all")
    parser.add_argument("--rate-models", type=Path, nargs="*", default=[], help="export dirs for --part rate")
    parser.add_argument("--rates", default="10,50,100,200,500", help="control rates (Hz) for --part rate")
    parser.add_argument("--seconds", type=float, default=60.0, help="seconds per rate for --part rate")
    parser.add_argument(
        "--probe-hz", type=float, default=200.0, help="rate of the machine probe for --part rate (0: skip it)"
    )
    parser.add_argument(
        "--node-settings",
        nargs="*",
        default=[""],
        help='node parameters per variant for --part rate, e.g. "" "inference_lead=0.004 realtime_priority=80"',
    )
    parser.add_argument("--episodes", type=int, default=50)
    parser.add_argument("--flood-hz", type=float, default=1000.0)
    parser.add_argument("--flood-s", type=float, default=10.0)
    parser.add_argument("--dropout-s", type=float, default=2.0)
    parser.add_argument("--out", type=Path, default=Path("runs/bench-ros"))
    args = parser.parse_args()
    models = args.rate_models if args.part == "rate" and args.rate_models else [args.model]
    for model in models:
        if not (model / "policy.json").is_file():
            sys.exit(
                f"{model}: not an export dir; make one with `dpstack export checkpoint=<run> sampler=streaming out=...`"
            )
    meta = {
        "model": str(args.model),
        "sampler": read_export_metadata(models[0])["sampler"]["name"],
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
    if args.part == "rate":
        rates = [float(r) for r in args.rates.split(",")]
        rows = []
        if args.probe_hz:
            rows.append(probe_machine(args.probe_hz, args.seconds))
            print(json.dumps(rows[-1]), flush=True)
        rows += bench_rate(models, rates, args.seconds, args.out / "rate", args.node_settings)
        columns = [
            ("model", "model"),
            ("sampler", "sampler"),
            ("node settings", "settings"),
            ("max calls / tick", "max_calls_per_tick"),
            ("rate Hz", "rate_hz"),
            ("actions / s", "actions_per_s"),
            ("deadline misses", "deadline_misses"),
            ("sustained", "sustained"),
            ("tick p50 ms", "tick_latency_p50_ms"),
            ("tick p99 ms", "tick_latency_p99_ms"),
            ("tick max ms", "tick_latency_max_ms"),
            ("inference p50 ms", "inference_p50_ms"),
            ("inference p99 ms", "inference_p99_ms"),
            ("inference max ms", "inference_max_ms"),
            ("measured", "measured"),
        ]
        command = f"python -m benchmarks.ros --part rate --rate-models {' '.join(map(str, models))} "
        command += f"--rates {args.rates} --seconds {args.seconds:g}"
        command += f" --probe-hz {args.probe_hz:g} --node-settings " + " ".join(map(shlex.quote, args.node_settings))
        measured, cpu = time.strftime("%Y-%m-%d %H:%M"), machine()
        # each row keeps the command, date and CPU that measured it when later runs add or replace rows
        for row in rows:
            row.update(command=command, measured=measured, machine=cpu)
        rows = merge_with_previous(
            RESULTS, "ros_rate", rows, key=lambda r: (r["model"], r.get("settings", "defaults"), r["rate_hz"])
        )
        write_results(RESULTS, "ros_rate", rows, columns, {**meta, "seconds": args.seconds, "command": command})


if __name__ == "__main__":
    main()
