"""Named export targets (phones and `host`) and what each supports, read from targets.toml."""
from __future__ import annotations

import difflib
import tomllib
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

from dcl_core.errors import ConfigError

TARGETS_FILE = Path(__file__).with_name("targets.toml")


@dataclass(frozen=True)
class Target:
    key: str
    name: str
    os: str
    soc: str
    ram_gb: float
    abi: str
    formats: tuple[str, ...]
    backends: dict[str, str] = field(default_factory=dict, hash=False, compare=False)
    os_version: str = ""
    cpu_power_w: float = 0.0

    def supports(self, fmt: str) -> bool:
        return fmt in self.formats


@cache
def all_targets() -> dict[str, Target]:
    raw = tomllib.loads(TARGETS_FILE.read_text())
    return {k: Target(key=k, name=v["name"], os=v["os"], soc=v["soc"], ram_gb=float(v["ram_gb"]), abi=v["abi"],
                      formats=tuple(v["formats"]), backends=dict(v.get("backends", {})),
                      os_version=str(v.get("os_version", "")), cpu_power_w=float(v.get("cpu_power_w", 0.0)))
            for k, v in raw.items()}


def get_target(key: str) -> Target:
    targets = all_targets()
    if key in targets:
        return targets[key]
    close = difflib.get_close_matches(key.lower(), targets, n=3, cutoff=0.4)
    hint = f"did you mean {', '.join(close)}?" if close else f"known targets: {', '.join(targets)}"
    raise ConfigError(f"unknown target {key!r}; {hint} (see `dcl targets`)")


def resolve_formats(target: Target, requested: list[str] | None) -> list[str]:
    """The formats to export: the requested ones (each must apply to the target) or all it supports."""
    if not requested:
        return list(target.formats)
    bad = [f for f in requested if not target.supports(f)]
    if bad:
        raise ConfigError(f"target {target.key} ({target.os}) does not run {', '.join(bad)}; "
                          f"it supports: {', '.join(target.formats)}")
    return requested
