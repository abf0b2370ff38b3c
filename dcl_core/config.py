"""Typed configs: dataclasses loaded from TOML or JSON with strict key and range checking.

Unknown keys are errors (a typo must not silently fall back to a default), values must have the
field's type and lie in its declared range (`bounded`), and every error names the offending key
and the file it came from: all before any work starts.
"""
from __future__ import annotations

import dataclasses
import json
import tomllib
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

from dcl_core.errors import ConfigError

T = TypeVar("T")


def from_dict(cls: type[T], data: dict[str, Any], where: str = "config") -> T:
    """Build dataclass `cls` from a nested dict, rejecting unknown keys and wrong types."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a table of keys, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    hints = typing.get_type_hints(cls)
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(
            f"{where}: unknown key {unknown[0]!r}; known keys: {', '.join(sorted(fields))}"
        )
    kwargs = {}
    for name, value in data.items():
        kwargs[name] = _coerce(hints[name], value, f"{where}.{name}")
        _check_range(fields[name], kwargs[name], f"{where}.{name}")
    return cls(**kwargs)


_BOUNDS = {"ge": (">=", lambda v, b: v >= b), "gt": (">", lambda v, b: v > b),
           "le": ("<=", lambda v, b: v <= b), "lt": ("<", lambda v, b: v < b)}


def bounded(default: Any, *, ge: float | None = None, gt: float | None = None, le: float | None = None,
            lt: float | None = None) -> Any:
    """A dataclass field whose value must lie in a range, checked when a config is decoded."""
    limits = {k: v for k, v in (("ge", ge), ("gt", gt), ("le", le), ("lt", lt)) if v is not None}
    return dataclasses.field(default=default, metadata={"bounds": limits})


def _check_range(f: dataclasses.Field, value: Any, where: str) -> None:
    bounds = f.metadata.get("bounds", {})
    if not bounds or value is None:
        return
    if isinstance(value, (list, tuple)):  # every item of a list field (e.g. layer widths)
        for i, item in enumerate(value):
            _check_range(f, item, f"{where}[{i}]")
        return
    if isinstance(value, float) and value != value:  # NaN satisfies no range
        raise ConfigError(f"{where}: must be a number, got nan")
    for key, limit in bounds.items():
        symbol, ok = _BOUNDS[key]
        if not ok(value, limit):
            rng = " and ".join(f"{_BOUNDS[k][0]} {v:g}" for k, v in bounds.items())
            raise ConfigError(f"{where}: must be {rng}, got {value!r}")


def _coerce(tp: Any, value: Any, where: str) -> Any:
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, where)
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(inner[0], value, where)
    if origin is typing.Literal:
        if value not in typing.get_args(tp):
            allowed = ", ".join(repr(a) for a in typing.get_args(tp))
            raise ConfigError(f"{where}: {value!r} is not one of {allowed}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        (item,) = typing.get_args(tp)[:1] or (Any,)
        items = [_coerce(item, v, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp in (int, float, str, bool) and not (type(value) is tp):
        raise ConfigError(f"{where}: expected {tp.__name__}, got {value!r}")
    return value


def to_dict(obj: Any) -> dict[str, Any]:
    return dataclasses.asdict(obj)


def load_file(path: str | Path) -> dict[str, Any]:
    """Read a TOML or JSON config file into a dict; one clear line if it is missing or malformed."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {p} does not exist; pass an existing .toml or .json file")
    try:
        text = p.read_text()
        data = json.loads(text) if p.suffix == ".json" else tomllib.loads(text)
    except (ValueError, tomllib.TOMLDecodeError, OSError) as e:
        raise ConfigError(f"config file {p} is not valid {p.suffix.lstrip('.') or 'TOML'}: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {p} holds a {type(data).__name__}; it must be a table of keys")
    return data


def merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Deep-merge `override` into a copy of `base` (tables merge, other values replace)."""
    out = dict(base)
    for k, v in override.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = merge(out[k], v)
        else:
            out[k] = v
    return out


def load_config(cls: type[T], table: str, path: str | Path | None = None, quick: dict[str, Any] | None = None,
                seed: int | None = None, overrides: dict[str, Any] | None = None) -> T:
    """A method's config: the dataclass defaults, then `quick` (the few-minutes run), then the
    file's `[table]` (or its top level), then `overrides`, then `seed`; decoded strictly, and
    checked across fields by the class's `check(where)` when it has one."""
    data: dict[str, Any] = dict(quick or {})
    where = f"{table} config"
    if path:
        where = str(path)
        loaded = load_file(path)
        data = merge(data, loaded.get(table, loaded))
    if overrides:
        data = merge(data, overrides)
    if seed is not None:
        data["seed"] = seed
    cfg = from_dict(cls, merge(to_dict(cls()), data), where)
    check = getattr(cfg, "check", None)
    return check(where) if callable(check) else cfg
