"""What travels over ROS 2: observations and actions as messages <-> numpy arrays, checked, and the QoS.

The policy node decodes with these functions and the simulator bridge encodes with them, so the two
ends agree on every topic by construction. Each observation key of a model (policy.json) or a task
(its features) travels on its own topic as one of three message kinds:

- ``array``: std_msgs/Float32MultiArray, the flattened vector (generic state);
- ``joint_state``: sensor_msgs/JointState, its ``position`` field (proprioception); with joint names
  configured, positions are picked by name, in that order;
- ``image``: sensor_msgs/Image, ``rgb8`` (or ``bgr8``, converted) for (H, W, 3) uint8 keys, ``mono8``
  for (H, W, 1).

A message that does not fit (wrong size, wrong encoding, NaN or inf) raises `MalformedMessage`, which
says why; the node counts and logs it and never stores it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import Float32MultiArray, MultiArrayDimension
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

MESSAGE_KINDS = {"array": Float32MultiArray, "joint_state": JointState, "image": Image}

# Sensor-data QoS (as rclpy's qos_profile_sensor_data): the newest samples matter, old ones may drop.
SENSOR_QOS = QoSProfile(
    history=HistoryPolicy.KEEP_LAST,
    depth=5,
    reliability=ReliabilityPolicy.BEST_EFFORT,
    durability=DurabilityPolicy.VOLATILE,
)
# Commands and episode events: none may be lost on the way.
COMMAND_QOS = QoSProfile(
    history=HistoryPolicy.KEEP_LAST,
    depth=10,
    reliability=ReliabilityPolicy.RELIABLE,
    durability=DurabilityPolicy.VOLATILE,
)


class MalformedMessage(ValueError):
    """A message that does not match its topic's declared shape, encoding or value range."""


def default_message_kind(shape: Sequence[int], dtype: str) -> str:
    """uint8 (H, W, C) keys are images; everything else a Float32MultiArray unless declared otherwise."""
    return "image" if dtype == "uint8" and len(shape) == 3 and shape[-1] in (1, 3) else "array"


@dataclass(frozen=True)
class ObservationTopic:
    """One observation key on one topic: what arrives there and how it becomes an array."""

    key: str
    shape: tuple[int, ...]
    dtype: str
    message: str  # array | joint_state | image
    topic: str
    joint_names: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.message not in MESSAGE_KINDS:
            raise ValueError(
                f"observation '{self.key}': message kind {self.message!r}; choose one of {sorted(MESSAGE_KINDS)}"
            )
        if self.message == "image" and (self.dtype != "uint8" or len(self.shape) != 3 or self.shape[-1] not in (1, 3)):
            raise ValueError(
                f"observation '{self.key}': images must be uint8 (H, W, 1|3), got {self.dtype} {self.shape}"
            )

    @property
    def msg_type(self) -> type:
        return MESSAGE_KINDS[self.message]

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))

    # ------------------------------------------------------------------ decode (policy node)
    def decode(self, msg: Any) -> np.ndarray:
        """Message -> array of `shape` and `dtype`; raises MalformedMessage."""
        if self.message == "image":
            return self._decode_image(msg)
        if self.message == "joint_state":
            values = self._joint_positions(msg)
        else:
            values = np.frombuffer(msg.data, np.float32) if len(msg.data) else np.zeros(0, np.float32)
        if values.size != self.size:
            raise MalformedMessage(f"'{self.topic}': {values.size} values, expected {self.size} for shape {self.shape}")
        if not np.isfinite(values).all():
            raise MalformedMessage(f"'{self.topic}': contains NaN or inf")
        return values.astype(self.dtype).reshape(self.shape)

    def _joint_positions(self, msg: JointState) -> np.ndarray:
        positions = np.asarray(msg.position, np.float64)
        if not self.joint_names:
            return positions
        if len(msg.name) != len(positions):
            raise MalformedMessage(f"'{self.topic}': {len(msg.name)} joint names but {len(positions)} positions")
        index = {name: i for i, name in enumerate(msg.name)}
        missing = [n for n in self.joint_names if n not in index]
        if missing:
            raise MalformedMessage(f"'{self.topic}': joint(s) {missing} missing (message has {list(msg.name)})")
        return positions[[index[n] for n in self.joint_names]]

    def _decode_image(self, msg: Image) -> np.ndarray:
        height, width, channels = self.shape
        encodings = ("rgb8", "bgr8") if channels == 3 else ("mono8",)
        if msg.encoding not in encodings:
            raise MalformedMessage(f"'{self.topic}': encoding {msg.encoding!r}, expected one of {list(encodings)}")
        if (msg.height, msg.width) != (height, width):
            raise MalformedMessage(f"'{self.topic}': image {msg.height}x{msg.width}, expected {height}x{width}")
        if msg.step != width * channels or len(msg.data) != height * width * channels:
            raise MalformedMessage(
                f"'{self.topic}': step {msg.step} and {len(msg.data)} bytes do not make a dense "
                f"{height}x{width}x{channels} image"
            )
        image = np.frombuffer(msg.data, np.uint8).reshape(self.shape)
        return image[..., ::-1].copy() if msg.encoding == "bgr8" else image.copy()

    # ------------------------------------------------------------------ encode (simulator bridge)
    def encode(self, value: np.ndarray, stamp: Any = None) -> Any:
        """Array -> message (stamped where the message has a header)."""
        value = np.asarray(value)
        if self.message == "image":
            msg = Image(height=self.shape[0], width=self.shape[1], step=self.shape[1] * self.shape[2])
            msg.encoding = "rgb8" if self.shape[2] == 3 else "mono8"
            msg.data = np.ascontiguousarray(value, np.uint8).tobytes()
        elif self.message == "joint_state":
            msg = JointState(position=value.astype(np.float64).ravel().tolist())
            msg.name = list(self.joint_names)
        else:
            return float_array(value)
        if stamp is not None:
            msg.header.stamp = stamp
        return msg


def observation_topics(
    observations: Sequence[Mapping[str, Any]],
    prefix: str = "obs/",
    overrides: Mapping[str, str] | None = None,
    joint_names: Mapping[str, Sequence[str]] | None = None,
) -> list[ObservationTopic]:
    """Topics for policy.json's `observations` (or a task's features as the same dicts).

    Each key goes to `<prefix><key>` unless `overrides` names its topic; its message kind is the
    entry's ``message`` if declared, else `default_message_kind`.
    """
    overrides = dict(overrides or {})
    joint_names = dict(joint_names or {})
    keys = [o["key"] for o in observations]
    unknown = sorted(set(overrides) - set(keys))
    if unknown:
        raise ValueError(f"topic override(s) for unknown observation key(s) {unknown}; the model takes {keys}")
    topics = []
    for entry in observations:
        shape, dtype = tuple(int(s) for s in entry["shape"]), str(entry["dtype"])
        topics.append(
            ObservationTopic(
                key=entry["key"],
                shape=shape,
                dtype=dtype,
                message=entry.get("message") or default_message_kind(shape, dtype),
                topic=overrides.get(entry["key"], prefix + entry["key"]),
                joint_names=tuple(joint_names.get(entry["key"], ())),
            )
        )
    return topics


def parse_mapping(items: Sequence[str], what: str) -> dict[str, str]:
    """["key=value", ...] (how list-valued ROS parameters carry a mapping) -> {key: value}."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key or not value:
            raise ValueError(f"{what}: expected 'key=value' entries, got {item!r}")
        out[key.strip()] = value.strip()
    return out


def float_array(value: np.ndarray) -> Float32MultiArray:
    value = np.asarray(value, np.float32)
    msg = Float32MultiArray()
    msg.layout.dim = [MultiArrayDimension(label="data", size=value.size, stride=value.size)]
    msg.data = value.ravel().tolist()
    return msg


def decode_action(msg: Float32MultiArray, dim: int) -> np.ndarray:
    """An action message -> (dim,) float32; raises MalformedMessage."""
    action = np.frombuffer(msg.data, np.float32) if len(msg.data) else np.zeros(0, np.float32)
    if action.size != dim:
        raise MalformedMessage(f"action has {action.size} values, expected {dim}")
    if not np.isfinite(action).all():
        raise MalformedMessage("action contains NaN or inf")
    return action.copy()


def joint_trajectory(joint_names: Sequence[str], action: np.ndarray, stamp: Any, period_s: float) -> JointTrajectory:
    """One-point trajectory: reach `action` (joint positions, in `joint_names` order) one period from now."""
    point = JointTrajectoryPoint(positions=np.asarray(action, np.float64).tolist())
    point.time_from_start.sec = int(period_s)
    point.time_from_start.nanosec = round((period_s - int(period_s)) * 1e9)
    msg = JointTrajectory(joint_names=list(joint_names), points=[point])
    msg.header.stamp = stamp
    return msg
