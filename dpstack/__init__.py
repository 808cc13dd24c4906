"""dpstack: Diffusion Policy, Diffuser planners and DPPO, from zarr episode stores to a ROS 2 node.

The top-level packages split the stack by role:
  dpstack/   command line, config composition, shared error types
  policy/    episode store, normalizer, denoisers, schedulers, samplers, training
  envs/      benchmark tasks and their expert demonstrators
  planners/  Diffuser-style trajectory planners
  ros/       the ROS 2 policy node and the simulator bridge
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("dpstack")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"
