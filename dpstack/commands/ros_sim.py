"""Run a dpstack task as a robot on ROS 2: observations out at the task's rate, actions in.

Publishes each observation key on <topic_prefix><key>, applies the newest action from `action` at
every step, offers ~/reset (std_srvs/Trigger: next episode) and publishes each finished episode as
JSON on ~/episode. real_time_factor=0 runs lockstep on /clock (as fast as the policy answers); >1 runs
faster than real time on /clock; 1 (default) runs on the wall clock like hardware.
"""

from __future__ import annotations

from dpstack.ros.sim_bridge import SimBridgeConfig as Config
from dpstack.ros.sim_bridge import spin_sim_bridge

CONFIG_NAME = "ros_sim"
__all__ = ["CONFIG_NAME", "Config", "run"]


def run(cfg: Config) -> int:
    return spin_sim_bridge(cfg)
