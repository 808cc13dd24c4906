"""The installed dpstack version (core layer: imports nothing of the project)."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("dpstack")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"
