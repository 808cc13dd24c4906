"""A node's config dataclass <-> ROS parameters: every key a user tunes is a declared parameter.

The same dataclass is the schema of the `dpstack ros ...` command (hydra, `key=value`, `--help`) and
the set of ROS parameters of the node, declared with the command's values as defaults and its help
strings as descriptions, so `ros2 param list/describe/set` show and change the same keys.
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Any, TypeVar

from rcl_interfaces.msg import ParameterDescriptor, ParameterType
from rclpy.node import Node
from rclpy.parameter import Parameter

from dpstack.bounds import check_bounds

T = TypeVar("T")

_TYPES = {
    str: ParameterType.PARAMETER_STRING,
    int: ParameterType.PARAMETER_INTEGER,
    float: ParameterType.PARAMETER_DOUBLE,
    bool: ParameterType.PARAMETER_BOOL,
    list[str]: ParameterType.PARAMETER_STRING_ARRAY,
    list[float]: ParameterType.PARAMETER_DOUBLE_ARRAY,
    list[int]: ParameterType.PARAMETER_INTEGER_ARRAY,
}


def _parameter_type(schema: type, name: str) -> int:
    hint = typing.get_type_hints(schema)[name]
    if hint not in _TYPES:
        raise TypeError(f"{schema.__name__}.{name}: type {hint} has no ROS parameter type")
    return _TYPES[hint]


def declare_config(node: Node, cfg: Any, read_only: tuple[str, ...] = (), skip: tuple[str, ...] = ()) -> None:
    """Declare one ROS parameter per field of the dataclass instance `cfg`, defaulting to its value.

    `skip` names parameters rclpy declares itself (use_sim_time); nested dataclasses (a task config)
    are not parameters either.
    """
    for field in dataclasses.fields(cfg):
        if field.name in skip or dataclasses.is_dataclass(getattr(cfg, field.name)):
            continue
        descriptor = ParameterDescriptor(
            name=field.name,
            type=_parameter_type(type(cfg), field.name),
            description=field.metadata.get("help", ""),
            read_only=field.name in read_only,
        )
        value = getattr(cfg, field.name)
        if isinstance(value, list | tuple) and not value:  # rclpy cannot infer an empty list's type
            node.declare_parameter(field.name, Parameter.Type(descriptor.type), descriptor)
            node.set_parameters([Parameter(field.name, Parameter.Type(descriptor.type), [])])
            continue
        value = (
            list(value)
            if isinstance(value, list | tuple)
            else float(value)
            if descriptor.type == _TYPES[float]
            else value
        )
        node.declare_parameter(field.name, value, descriptor)


def read_config(node: Node, schema: type[T], **fixed: Any) -> T:
    """The current values of the parameters declared by `declare_config` (plus `fixed` fields) as a `schema`."""
    values = dict(fixed)
    for field in dataclasses.fields(schema):  # type: ignore[arg-type]
        if field.name in fixed:
            continue
        value = node.get_parameter(field.name).value
        values[field.name] = list(value) if isinstance(value, list | tuple) or hasattr(value, "tolist") else value
    check_bounds(schema, values)  # parameters given at launch (--ros-args -p) never passed the set callback
    return schema(**values)
