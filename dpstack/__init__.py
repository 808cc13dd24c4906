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

# OpenMP threads that spin while waiting turn a shared 2-core machine into a crawl: a 2-thread U-Net
# training step next to two other jobs takes 8.0 s spinning vs 0.26 s passive (benchmarks/threads.py).
# This must be set before torch loads OpenMP, hence here; an explicit user setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

try:
    __version__ = version("dpstack")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"
