"""Compose a command's config with hydra and validate it against the command's dataclass schema.

`configs/<name>.yaml` (installed as the package `dpstack.configs`) holds the defaults (and may pull config groups such as `task: pusht`); the
command's dataclass is the schema: unknown keys, wrong types and missing values are errors that name
the key. A field may also declare its range in its metadata (`bounds`: a key's value outside is an
error that names the key and the range, and `--help` shows it). No config runs code (no eval resolvers).
"""

from __future__ import annotations

import dataclasses
import re
import typing
from collections.abc import Sequence
from importlib.resources import files
from pathlib import Path
from typing import Any, TypeVar

from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import OverrideType
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException

from dpstack.bounds import check_bounds, describe_bounds
from dpstack.errors import ConfigError

# The YAML files ship inside the package (`dpstack.configs`), so an installed wheel finds them too.
CONFIG_DIR = Path(str(files("dpstack.configs")))
T = TypeVar("T")
_MISSING_OPTION = re.compile(r"Could not find '([^']+/[^']+)'")
_PARSER = OverridesParser.create()
_UNKNOWN_KEY = re.compile(r"Could not override '([^']+)'|Key '([^']+)' (?:is not in struct|not in )")


def quote_value(value: str) -> str:
    """Quote a value as a hydra string literal for a `key=value` override (paths may hold '=', ',', spaces)."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _valid_keys(schema: type) -> list[str]:
    return [f.name for f in dataclasses.fields(schema)]


def compose_raw(config_name: str, overrides: Sequence[str] = ()) -> DictConfig:
    """The hydra-composed YAML for `config_name` with `key=value` overrides applied (not validated)."""
    if not (CONFIG_DIR / f"{config_name}.yaml").is_file():
        raise ConfigError(f"{CONFIG_DIR / (config_name + '.yaml')}: config file not found")
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3", job_name="dpstack"):
        return compose(config_name=config_name, overrides=list(overrides))


def load_config(config_name: str, schema: type[T], overrides: Sequence[str] = (), command: str = "") -> T:
    """Compose `configs/<config_name>.yaml` + overrides and return a validated `schema` instance.

    A config inside a group (``task/pusht``) is returned without its group prefix, and its overrides
    are given without it too (``image=true``, not ``task.image=true``).
    """
    where = f"'{command or config_name}'"
    group = config_name.rpartition("/")[0].replace("/", ".")
    # A mapping-typed key (e.g. `sampler`) is validated later by whoever reads it (a sampler's own options),
    # so its sub-keys may be set or added freely here: `sampler.eta=0.5` -> `++sampler.eta=0.5`.
    free = {f.name for f in dataclasses.fields(schema) if "dict[" in str(f.type)}
    overrides = [
        ("++" if o.split(".")[0] in free and "." in o.split("=")[0] else "") + (f"{group}.{o}" if group else o)
        for o in overrides
    ]
    # A scalar key named like a config group (finetune's `sampler=ddim` against configs/sampler/) would be
    # taken by hydra for a group choice; a group composes a mapping, so a scalar never is one: set its value
    # after composing instead.
    try:
        parsed = _PARSER.parse_overrides(overrides)
        plain = [o for o in parsed if _is_scalar_named_like_a_group(o.key_or_group, schema)]
        raw = compose_raw(config_name, [o.input_line for o in parsed if o not in plain])
        for override in plain:
            if override.is_sweep_override() or override.type not in (OverrideType.CHANGE, OverrideType.FORCE_ADD):
                raise ConfigError(
                    f"bad config for {where}: {override.input_line}: give one value, {override.key_or_group}=<value>"
                )
            with open_dict(raw):
                OmegaConf.update(raw, override.key_or_group, override.value(), merge=False)
    except (HydraException, OmegaConfBaseException) as exc:
        raise _config_error(exc, schema, where) from None
    return to_schema(schema, OmegaConf.select(raw, group) if group else raw, where)


def _is_scalar_named_like_a_group(key: str, schema: type) -> bool:
    if "." in key or not (CONFIG_DIR / key).is_dir():
        return False
    hint = typing.get_type_hints(schema).get(key)
    kinds = [k for k in typing.get_args(hint) if k is not type(None)] or [hint]
    return all(k in (str, int, float, bool) for k in kinds)


def to_schema(schema: type[T], values: Any, where: str) -> T:
    """`values` (a mapping) validated against the dataclass `schema`; unknown keys, bad types and values out
    of a field's `bounds` name the key."""
    try:
        merged = OmegaConf.merge(OmegaConf.structured(schema), values)
        check_bounds(schema, OmegaConf.to_container(merged))  # type: ignore[arg-type]
        return OmegaConf.to_object(merged)  # type: ignore[return-value]
    except (HydraException, OmegaConfBaseException) as exc:
        raise _config_error(exc, schema, where) from None
    except ValueError as exc:  # raised by check_bounds or a schema's __post_init__ checks
        raise ConfigError(f"bad config for {where}: {exc}") from None


def _config_error(exc: Exception, schema: type, where: str) -> ConfigError:
    """One clear line for a hydra / OmegaConf error: the key, and what was expected."""
    message = str(exc).strip()
    unknown = _UNKNOWN_KEY.search(message)
    if unknown:
        return ConfigError(
            f"unknown key '{unknown.group(1) or unknown.group(2)}' for {where}; valid keys: "
            f"{', '.join(_valid_keys(schema))} (see --help)"
        )
    missing_option = _MISSING_OPTION.search(message)
    if missing_option:
        group, option = missing_option.group(1).rsplit("/", 1)
        options = sorted(p.stem for p in (CONFIG_DIR / group).glob("*.yaml"))
        return ConfigError(f"unknown {group} '{option}' for {where}; choose one of: {', '.join(options)}")
    if isinstance(exc, MissingMandatoryValue):
        key = exc.full_key
        return ConfigError(f"missing value for key '{key}' of {where} (give {key}=...)")
    first_line = message.splitlines()[0] if message else type(exc).__name__
    key = getattr(exc, "full_key", None)
    detail = f" (key '{key}')" if key and f"'{key}'" not in first_line else ""
    return ConfigError(f"bad config for {where}{detail}: {first_line}")


def describe(config_name: str, schema: type) -> list[tuple[str, str, str]]:
    """(key, default as shown in YAML, help) for every top-level key, for `--help`."""
    raw = compose_raw(config_name)
    rows = []
    for field in dataclasses.fields(schema):
        value: Any = OmegaConf.select(raw, field.name, default="???") if field.name in raw else "???"
        if isinstance(value, DictConfig):
            value = "{" + ", ".join(f"{k}: {v}" for k, v in OmegaConf.to_container(value).items()) + "}"
        elif OmegaConf.is_list(value):
            value = OmegaConf.to_container(value)
        rule = field.metadata.get("bounds")
        help_text = field.metadata.get("help", "") + (f"; must be {describe_bounds(rule)}" if rule else "")
        rows.append(
            (field.name, "(required)" if value == "???" else repr(value) if value is None else str(value), help_text)
        )
    return rows
