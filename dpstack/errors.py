"""Errors that reach the user as one clear line instead of a traceback.

Every user-facing failure (a bad file, a bad key, a bad shape) raises a subclass of `UserError` whose
message names the file, the key and what was expected. The CLI prints it and exits with status 2.
"""


class UserError(Exception):
    """Base class for errors caused by the user's input rather than by a bug in dpstack."""


class ConfigError(UserError, ValueError):
    """A command line or config file that does not match the command's schema."""


class StoreError(UserError, ValueError):
    """An episode store (or a file being imported into one) that is missing, corrupt or inconsistent."""


class ModelError(UserError, ValueError):
    """An exported model directory (policy.json + .onnx) that is missing, corrupt, or does not match its inputs."""
