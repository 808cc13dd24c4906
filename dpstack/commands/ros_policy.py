"""Run an exported policy (`dpstack export`) as a ROS 2 lifecycle node.

Subscribes to one topic per observation key (<topic_prefix><key>; Float32MultiArray, JointState or
Image as the model declares), publishes clamped actions on `action` at the model's rate (and a
JointTrajectory when joint_names is set), reports on /diagnostics, and offers ~/reset and ~/enable.
Every key below is also a ROS parameter of the node. With autostart=false the node waits for
lifecycle transitions (configure, activate) on ~/change_state.
"""

from __future__ import annotations

from dpstack.ros.policy_node import PolicyNodeConfig as Config
from dpstack.ros.policy_node import spin_policy_node

CONFIG_NAME = "ros_policy"
POSITIONAL = ("model",)
__all__ = ["CONFIG_NAME", "POSITIONAL", "Config", "run"]


def run(cfg: Config) -> int:
    return spin_policy_node(cfg)
