"""A config field's range, declared next to it and checked where configs enter (core layer, no dependencies).

    steps: int = field(default=2000, metadata={"help": "optimizer steps", **bounds(1)})
    out: str = field(default="???", metadata={"help": "run directory", **OUTPUT_DIRECTORY})

`dpstack.config.to_schema` checks every command's config (and a sampler's options) against its fields'
bounds, so ``steps=0`` is one line naming the key and the range, not a traceback or a run that does
nothing; ``--help`` prints the range; the ROS 2 nodes check their parameters with the same rule. An
output directory that is an existing file is refused the same way, before anything is computed.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

OUTPUT_DIRECTORY = {"output_directory": True}  # a field naming a directory the command writes into


def bounds(
    low: float | None = None, high: float | None = None, *, open_low: bool = False, open_high: bool = False
) -> dict[str, Any]:
    """A field's range, for its metadata: ``metadata={"help": ..., **bounds(1)}`` (>= 1), ``bounds(0, 1,
    open_high=True)`` (in [0, 1)). None (where a field allows it) is never out of range."""
    return {"bounds": (low, high, open_low, open_high)}


def describe_bounds(rule: tuple[float | None, float | None, bool, bool]) -> str:
    """'>= 1', '> 0', 'in [0, 1)' ..."""
    low, high, open_low, open_high = rule
    if low is not None and high is not None:
        return f"in {'(' if open_low else '['}{low}, {high}{')' if open_high else ']'}"
    if low is not None:
        return f"{'>' if open_low else '>='} {low}"
    return f"{'<' if open_high else '<='} {high}"


def field_violation(field: dataclasses.Field, value: Any) -> str | None:
    """Why `value` breaks `field`'s declared constraint (e.g. "rate_hz=-1 must be >= 0"), or None."""
    if field.metadata.get("output_directory") and isinstance(value, str) and value:  # '???' is no path either
        path = Path(value)
        return f"{field.name}={value} exists and is not a directory" if path.exists() and not path.is_dir() else None
    rule = field.metadata.get("bounds")
    if rule is None or isinstance(value, bool) or not isinstance(value, int | float):
        return None  # None, strings (a missing '???', an interpolation) and unbounded fields pass
    low, high, open_low, open_high = rule
    below = low is not None and (value <= low if open_low else value < low)
    above = high is not None and (value >= high if open_high else value > high)
    return f"{field.name}={value} must be {describe_bounds(rule)}" if below or above else None


def check_bounds(schema: type, values: Mapping[str, Any], prefix: str = "") -> None:
    """Every field of `schema` (nested schemas too) keeps its declared constraint, else ValueError
    naming the key; `to_schema` checks before the schema's own `__post_init__`, which so never computes
    with an out-of-range value."""
    for field in dataclasses.fields(schema):
        value = values.get(field.name)
        if isinstance(value, Mapping) and field.default_factory is not dataclasses.MISSING:
            default = field.default_factory()
            if dataclasses.is_dataclass(default):  # a nested schema (a task config)
                check_bounds(type(default), value, f"{prefix}{field.name}.")
            continue
        problem = field_violation(field, value)
        if problem:
            raise ValueError(prefix + problem)
