"""Typed configs: dataclasses loaded from TOML or JSON with strict key and range checking.

Unknown keys are errors (a typo must not silently fall back to a default; the closest known key is
named), values must have the field's type and lie in its declared range (`bounded`), and every
error names the offending key and the file it came from: all before any work starts.

Numbers that no range was declared for are still checked: every float must be finite and within
float32's range, what dcl trains and runs in (an `inf` learning rate or a `nan` ratio poisons a
whole run without an error, and `lr = 1e300` overflows inside the optimizer), unless its field says
otherwise; and every int must fit in int64, the widest integer numpy and torch hold (past it they
fail deep inside with an overflow). `check_number` is the same check for numbers read back from
other records (run metrics, profile results).
"""
from __future__ import annotations

import dataclasses
import difflib
import json
import math
import tomllib
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

from dcl_core.errors import ConfigError

T = TypeVar("T")

# The widest int numpy and torch hold; an int field without its own upper bound is capped here.
INT_MAX = 2**63 - 1
# Seeds: 0 to 2**32 - 1, the range of numpy's RandomState and of every seed API dcl uses (torch
# takes up to 2**64 - 1, numpy's default_rng any non-negative int; derived seeds such as
# seed * 1000 + epoch stay far inside int64 from here).
SEED_MAX = 2**32 - 1
FLOAT32_MAX = 3.4028234663852886e38  # numpy.finfo(numpy.float32).max (numpy stays out of `dcl --help`)


def from_dict(cls: type[T], data: dict[str, Any], where: str = "config") -> T:
    """Build dataclass `cls` from a nested dict, rejecting unknown keys and wrong types."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a table of keys, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    hints = typing.get_type_hints(cls)
    refuse_unknown(data, fields, where)
    kwargs = {}
    for name, value in data.items():
        kwargs[name] = _decode_field(fields[name], hints[name], value, f"{where}.{name}")
    return cls(**kwargs)


def refuse_unknown(keys: Any, known: Any, where: str) -> None:
    """One line for the first key not in `known`, naming the closest known key (a typo is the
    usual cause) and then all of them."""
    unknown = sorted(set(keys) - set(known), key=str)
    if not unknown:
        return
    bad = str(unknown[0])
    close = difflib.get_close_matches(bad, [str(k) for k in known], n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    raise ConfigError(f"{where}: unknown key {bad!r}{hint} (known keys: {', '.join(sorted(map(str, known)))})")


def _decode_field(f: dataclasses.Field, tp: Any, value: Any, where: str) -> Any:
    """A field's value, typed and range-checked; a wrong type on a bounded field names the range
    too (`rounds = 1e20` is refused as a float, and the user should learn what is accepted)."""
    try:
        out = _coerce(tp, value, where)
    except ConfigError as e:
        rng = _range_text(f.metadata.get("bounds", {}))
        if rng and not dataclasses.is_dataclass(tp) and str(e).startswith(f"{where}: expected"):
            raise ConfigError(f"{e} (allowed: {rng})") from None
        raise
    _check_range(f, out, where)
    return out


_BOUNDS = {"ge": (">=", lambda v, b: v >= b), "gt": (">", lambda v, b: v > b),
           "le": ("<=", lambda v, b: v <= b), "lt": ("<", lambda v, b: v < b)}


def bounded(default: Any, *, ge: float | None = None, gt: float | None = None, le: float | None = None,
            lt: float | None = None, finite: bool = True) -> Any:
    """A dataclass field whose value must lie in a range, checked when a config is decoded.
    `finite=False` lets a float field hold inf or nan (no field needs that today)."""
    limits = {k: v for k, v in (("ge", ge), ("gt", gt), ("le", le), ("lt", lt)) if v is not None}
    return dataclasses.field(default=default, metadata={"bounds": limits, "finite": finite})


def seed_field(default: int = 0) -> Any:
    """A seed: an int in [0, SEED_MAX], the same range `dcl train --seed` takes."""
    return bounded(default, ge=0, le=SEED_MAX)


def _range_text(bounds: dict[str, float]) -> str:
    # ints in full (a seed bound of 4.29497e+09 would hide the exact limit), floats short
    return " and ".join(f"{_BOUNDS[k][0]} {v if isinstance(v, int) else format(v, 'g')}" for k, v in bounds.items())


def check_number(value: Any, where: str, *, ge: float | None = None, gt: float | None = None,
                 le: float | None = None, lt: float | None = None, finite: bool = True) -> float:
    """The one check of a number read from a file (configs, run metrics, profile results): a real
    number (not a bool or a string), finite unless `finite=False`, an int within int64, and within
    the given limits; otherwise one line naming where it is and the accepted range."""
    bounds = {k: v for k, v in (("ge", ge), ("gt", gt), ("le", le), ("lt", lt)) if v is not None}
    rng = _range_text(bounds)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{where}: expected a number{f' {rng}' if rng else ''}, got {value!r}")
    if isinstance(value, float) and not math.isfinite(value):
        if finite:
            raise ConfigError(f"{where}: must be a finite number{f' {rng}' if rng else ''}, got {value!r}")
        if value != value:  # NaN satisfies no range
            return value
    if finite and isinstance(value, float) and abs(value) > FLOAT32_MAX:
        raise ConfigError(f"{where}: must be a finite float32 number (magnitude <= {FLOAT32_MAX:.6g}), got {value!r}")
    if isinstance(value, int) and "le" not in bounds and "lt" not in bounds and abs(value) > INT_MAX:
        raise ConfigError(f"{where}: must be <= {INT_MAX} (int64), got {value}")
    for key, limit in bounds.items():
        if not _BOUNDS[key][1](value, limit):
            raise ConfigError(f"{where}: must be {rng}, got {value!r}")
    return value


def _check_range(f: dataclasses.Field, value: Any, where: str) -> None:
    """Every number of a field (each item of a list field, e.g. layer widths) through
    `check_number` with the field's bounds; other values are left to their own decoding."""
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            _check_range(f, item, f"{where}[{i}]")
        return
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        check_number(value, where, **f.metadata.get("bounds", {}), finite=f.metadata.get("finite", True))


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
        try:
            return float(value)
        except OverflowError:  # an int past any float (JSON allows 1 followed by 400 zeros)
            raise ConfigError(f"{where}: must be a finite number, got an integer of {len(str(value))} digits") from None
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
        data = merge(data, _method_table(load_file(path), table, cls, where))
    if overrides:
        data = merge(data, overrides)
    if seed is not None:
        data["seed"] = seed
    cfg = from_dict(cls, merge(to_dict(cls()), data), where)
    check = getattr(cfg, "check", None)
    return check(where) if callable(check) else cfg


def _method_table(loaded: dict[str, Any], table: str, cls: type, where: str) -> dict[str, Any]:
    """The file's `[table]`, or its top level when it has none. Either way every key must be
    known: beside `[table]` a stray key or a misspelt second table was silently ignored before."""
    fields = [f.name for f in dataclasses.fields(cls)]
    if table not in loaded:
        refuse_unknown(loaded, [table, *fields], where)
        return loaded
    _refuse_beside_table(loaded, table, fields, where)
    section = loaded[table]
    if not isinstance(section, dict):
        raise ConfigError(f"{where}: {table} must be a table of keys ([{table}]), got {section!r}")
    return section


def _refuse_beside_table(loaded: dict[str, Any], table: str, fields: list[str], where: str) -> None:
    """A file with `[table]` holds nothing else; name where the first stray key probably belongs."""
    extra = sorted(k for k in loaded if k != table)
    if not extra:
        return
    key = extra[0]
    close = difflib.get_close_matches(key, fields, n=1)
    if isinstance(loaded[key], dict):  # a second table: a misspelt [table], or one of its sub-tables
        guess = f"{table}.{close[0]}" if close else table
        raise ConfigError(f"{where}: table [{key}] is outside [{table}] and would be ignored; "
                          f"did you mean [{guess}]? (a {table} config holds only its [{table}] table)")
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise ConfigError(f"{where}: key {key!r} is outside [{table}] and would be ignored; move it into [{table}]{hint}")
