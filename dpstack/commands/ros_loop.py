"""Closed-loop episodes over ROS 2: `dpstack ros policy` and `dpstack ros sim` as separate processes.

Runs on a private ROS_DOMAIN_ID, prints success and the policy node's tick latency, and writes
<out>/eval.json with the fields of `dpstack eval` (backend "ros"). Seeds and noise match
`dpstack eval backend=onnx num_envs=1`, so real_time_factor=0 (lockstep) reproduces its episodes.
"""

from __future__ import annotations

from dpstack.ros.loop import LoopConfig as Config
from dpstack.ros.loop import run_loop

CONFIG_NAME = "ros_loop"
POSITIONAL = ("model",)
__all__ = ["CONFIG_NAME", "POSITIONAL", "Config", "run"]


def run(cfg: Config) -> int:
    record = run_loop(cfg)
    print(
        f"{record['task']} {record['sampler']} over ROS 2: success {record['success_rate']:.2f}, mean score "
        f"{record['mean_score']:.3f} over {record['episodes']} episodes (seeds {record['seeds'][0]}..{record['seeds'][-1]}); "
        f"policy tick p50 {record['tick_ms_p50']:.2f} ms, p99 {record['tick_ms_p99']:.1f} ms, inference p50 "
        f"{record['inference_ms_p50']:.1f} ms, deadline misses {record['diagnostics'].get('deadline_misses', '?')}, "
        f"{record['wall_s']:.0f} s" + (f" -> {cfg.out}/eval.json" if cfg.out else "")
    )
    return 0
