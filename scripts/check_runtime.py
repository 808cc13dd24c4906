"""Check the `dpstack[runtime]` install profile: an exported policy acts with torch and simulators absent.

usage: python check_runtime.py <export dir> <expected.json>   (run from outside the checkout)

1. `import torch` and every simulator must fail: the profile does not install them; a command that
   needs them (`dpstack train`) says which profile to install.
2. `OnnxPolicy` loads the export and reproduces the actions recorded in expected.json (`onnx_seed0`).
3. `dpstack ros policy <export>` runs as a real ROS 2 node (Fast DDS, loopback) and answers the
   observations this script publishes with actions on its `action` topic.
Exits non-zero with a message naming the failed step.
"""

from __future__ import annotations

import importlib
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import numpy as np


def fail(step: str, detail: str) -> None:
    print(f"check_runtime: FAILED at {step}: {detail}", file=sys.stderr)
    sys.exit(1)


def check_absent() -> None:
    for name in ("torch", "mujoco", "robosuite", "gymnasium", "gym_pusht", "zarr"):
        try:
            importlib.import_module(name)
        except ImportError:
            continue
        fail("absent packages", f"`import {name}` works; the runtime profile must not install it")
    dpstack = Path(sys.executable).with_name("dpstack")
    result = subprocess.run([str(dpstack), "train", "--help"], capture_output=True, text=True, timeout=60)
    if result.returncode != 2 or "needs PyTorch" not in result.stderr:
        fail(
            "dpstack train", f"expected one line naming the missing torch, got rc {result.returncode}: {result.stderr}"
        )
    print("runtime: torch and the simulators are absent; `dpstack train` says so:", result.stderr.strip())


def check_onnx_policy(export: Path, expected: dict) -> None:
    from dpstack.policy.runtime import OnnxPolicy

    policy = OnnxPolicy(export, seed=0)
    policy.reset()
    obs = {k: np.asarray(v, np.float32) for k, v in expected["observation"].items()}
    actions = np.array([policy.act(obs) for _ in range(len(expected["onnx_seed0"]))])
    worst = float(np.abs(actions - np.asarray(expected["onnx_seed0"])).max())
    if worst > 1e-5:
        fail("OnnxPolicy", f"actions differ from {expected['written_by']} by {worst:.2e} (bound 1e-5)")
    assert "torch" not in sys.modules
    print(f"runtime: OnnxPolicy reproduces the recorded actions (max abs diff {worst:.1e})")


def check_ros_node(export: Path, expected: dict) -> None:
    os.environ["ROS_DOMAIN_ID"] = str(random.Random().randint(150, 230))
    os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
    import rclpy
    from rclpy.node import Node
    from std_msgs.msg import Float32MultiArray

    from dpstack.ros.messages import COMMAND_QOS, SENSOR_QOS, float_array

    dpstack = Path(sys.executable).with_name("dpstack")
    node = subprocess.Popen([str(dpstack), "ros", "policy", str(export), "seed=0"], stderr=subprocess.PIPE, text=True)
    rclpy.init()
    peer = Node("runtime_check_robot")
    received: list[np.ndarray] = []
    peer.create_subscription(Float32MultiArray, "action", lambda m: received.append(np.array(m.data)), COMMAND_QOS)
    publishers = {k: peer.create_publisher(Float32MultiArray, f"obs/{k}", SENSOR_QOS) for k in expected["observation"]}
    try:
        deadline = time.monotonic() + 60
        while len(received) < 3 and time.monotonic() < deadline and node.poll() is None:
            for key, pub in publishers.items():
                pub.publish(float_array(np.asarray(expected["observation"][key], np.float32)))
            rclpy.spin_once(peer, timeout_sec=0.02)
        if node.poll() is not None:
            fail("dpstack ros policy", f"the node exited with {node.returncode}: {node.stderr.read()[-2000:]}")
        if len(received) < 3:
            fail("dpstack ros policy", "no actions within 60 s of publishing observations")
        if not all(a.shape == (2,) and np.isfinite(a).all() for a in received):
            fail("dpstack ros policy", f"malformed actions {received[:3]}")
    finally:
        node.terminate()
        node.wait(timeout=20)
        peer.destroy_node()
        rclpy.shutdown()
    assert "torch" not in sys.modules
    print(f"runtime: `dpstack ros policy` answered with {len(received)} actions, e.g. {received[0].round(3).tolist()}")


def main() -> None:
    export, expected_path = Path(sys.argv[1]), Path(sys.argv[2])
    expected = json.loads(expected_path.read_text())
    check_absent()
    check_onnx_policy(export, expected)
    check_ros_node(export, expected)
    print("check_runtime: ok")


if __name__ == "__main__":
    main()
