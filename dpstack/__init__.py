"""dpstack: Diffusion Policy, Diffuser planners and DPPO, from zarr episode stores to a ROS 2 node.

The top-level packages split the stack by role:
  dpstack/   command line, config composition, shared error types
  policy/    episode store, normalizer, denoisers, schedulers, samplers, training
  envs/      benchmark tasks and their expert demonstrators
  planners/  Diffuser-style trajectory planners
  ros/       the ROS 2 policy node and the simulator bridge
"""

import os
from importlib.metadata import PackageNotFoundError, version

# OpenMP threads that spin while waiting turn a busy 2-core machine into a crawl: a U-Net training step
# took 16 s with 2 torch threads next to one other busy process, 0.6 s with passive waiting (0.5 s with
# 1 thread). This must be set before torch loads OpenMP, hence here; an explicit user setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

try:
    __version__ = version("dpstack")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"
