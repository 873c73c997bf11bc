"""Configs: a TOML file per shipped model (training/configs/<name>.toml), then `--key=value` overrides.

A config file names its family (`family = "gan"`) and gives values for that family's frozen dataclass;
every other key must be a field of it. Unknown keys and values of the wrong type are hard errors
(`ConfigError`, naming the key and the reason) - a typo must never silently train the default.
"""

from __future__ import annotations

import dataclasses
import json
import tomllib
import types
import typing
from pathlib import Path
from typing import Any

CONFIG_DIR = Path(__file__).parent / "configs"
PROJECT = Path(__file__).resolve().parent.parent  # relative store paths in configs are read against this


def project_path(path: str | Path) -> Path:
    """A path from a config (e.g. evaluator_store = "model_store"): relative ones are the project's, so a run
    started from another folder reads the same store instead of silently finding none."""
    path = Path(path)
    return path if path.is_absolute() else PROJECT / path


class ConfigError(ValueError):
    """A config file or override that cannot be used: unknown key, wrong type, bad value."""


def config_path(name_or_path: str) -> Path:
    """`gan-mnist` -> training/configs/gan-mnist.toml; an existing path is used as is."""
    p = Path(name_or_path)
    if p.suffix == ".toml" and p.exists():
        return p
    p = CONFIG_DIR / f"{name_or_path}.toml"
    if not p.exists():
        known = sorted(q.stem for q in CONFIG_DIR.glob("*.toml"))
        raise ConfigError(f"unknown config {name_or_path!r}; known: {', '.join(known)}")
    return p


def _field_types(cls) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _coerce(key: str, value: Any, tp: Any, from_cli: bool) -> Any:
    """Check (TOML) or parse (CLI string) one value against its annotated type."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):  # only `X | None` is used
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None or (from_cli and str(value).lower() in ("none", "null")):
            return None
        return _coerce(key, value, args[0], from_cli)
    if origin is tuple:
        if from_cli:
            try:
                value = json.loads(value)
            except json.JSONDecodeError as e:
                raise ConfigError(f"{key} must be a JSON list like [1, 2], got {value!r}") from e
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key} must be a list, got {type(value).__name__} {value!r}")
        (inner, *_rest) = typing.get_args(tp)
        return tuple(_coerce(f"{key}[{i}]", v, inner, False) for i, v in enumerate(value))
    if tp is bool:
        if from_cli:
            low = str(value).lower()
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off"):
                return False
            raise ConfigError(f"{key} must be a bool (true/false), got {value!r}")
        if not isinstance(value, bool):
            raise ConfigError(f"{key} must be a bool, got {type(value).__name__} {value!r}")
        return value
    if tp in (int, float):
        # TOML: an int for an int; an int or a float for a float; never a bool (a bool is an int in Python)
        name = tp.__name__
        if from_cli:
            try:
                return tp(value)
            except ValueError as e:
                raise ConfigError(f"{key} must be {'an' if tp is int else 'a'} {name}, got {value!r}") from e
        allowed = (int,) if tp is int else (int, float)
        if isinstance(value, bool) or not isinstance(value, allowed):
            raise ConfigError(f"{key} must be {'an' if tp is int else 'a'} {name}, "
                              f"got {type(value).__name__} {value!r}")
        return tp(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key} must be a string, got {type(value).__name__} {value!r}")
        return value
    raise ConfigError(f"{key}: unsupported config type {tp!r}")


def parse_overrides(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        if not item.startswith("--") or "=" not in item:
            raise ConfigError(f"override must look like --key=value, got {item!r}")
        k, v = item[2:].split("=", 1)
        out[k.replace("-", "_")] = v
    return out


def build(cls, values: dict[str, Any], overrides: dict[str, str] | None = None):
    """Instantiate the frozen dataclass `cls` from TOML values and CLI string overrides, strictly."""
    types_ = _field_types(cls)
    known = ", ".join(sorted(types_))
    kwargs = {}
    for k, v in values.items():
        if k not in types_:
            raise ConfigError(f"unknown config key {k!r} for {cls.__name__}; known: {known}")
        kwargs[k] = _coerce(k, v, types_[k], from_cli=False)
    for k, v in (overrides or {}).items():
        if k not in types_:
            raise ConfigError(f"unknown config key {k!r} for {cls.__name__}; known: {known}")
        kwargs[k] = _coerce(k, v, types_[k], from_cli=True)
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:
        raise ConfigError(str(e)) from e


def read_toml(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(Path(path).read_text())
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML ({e})") from e


def to_dict(cfg) -> dict[str, Any]:
    """JSON-ready dict of a config (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(cfg)))


def from_dict(cls, d: dict[str, Any]):
    """Rebuild a config from its saved dict (checkpoint or manifest), strictly."""
    return build(cls, {k: v for k, v in d.items()})
