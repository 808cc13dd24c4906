"""`Feature`: one observation or action key, the one source of shapes (core layer: numpy-free data).

Tasks declare their features (`dpstack.tasks.TaskSpec`); episode stores, normalizers, policies, the
exporter's policy.json and the ROS node's topics are all laid out from them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Feature:
    """One observation or action key: per-step shape, dtype, and how to normalize it."""

    shape: tuple[int, ...]
    dtype: str = "float32"
    normalize: str = "minmax"  # a mode of dpstack.policy.normalizer: minmax | image | identity
    discrete_dims: tuple[int, ...] = ()  # dims that take a few discrete values (a gripper open/close)
    message: str = ""  # ROS 2 message kind (dpstack.ros.messages): "" picks by dtype and shape (uint8 HxWxC: image)

    @classmethod
    def from_dict(cls, entry: dict[str, Any]) -> Feature:
        """A Feature from its JSON form (checkpoint config.json, policy.json): lists back to tuples."""
        return cls(**{**entry, "shape": tuple(entry["shape"]), "discrete_dims": tuple(entry.get("discrete_dims", ()))})
