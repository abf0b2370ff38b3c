"""The method registry: one line per method (registry key -> "module:Class" of its `Method`).

Classes are imported on first use, so `dcl --help` and commands of other methods never pay for
a method's imports.
"""
from __future__ import annotations

import importlib
import json
from functools import cache
from pathlib import Path

from dcl_core.errors import CheckpointError, ConfigError
from toolkit.plugin import Method

METHODS: dict[str, str] = {
    "dcccl": "toolkit.methods.dcccl.plugin:DCCCL",
    "iciia": "toolkit.methods.iciia.plugin:ICIIA",
    "coda": "toolkit.methods.coda.plugin:CoDA",
}


def method_names() -> list[str]:
    return list(METHODS)


@cache
def get_method(name: str) -> Method:
    if name not in METHODS:
        raise ConfigError(f"unknown method {name!r}; known methods: {', '.join(METHODS)}")
    module, cls = METHODS[name].split(":")
    return getattr(importlib.import_module(module), cls)()


def method_of_run(run_dir: str | Path) -> Method:
    """The method that wrote a run directory, from its config.json."""
    run = Path(run_dir)
    if run.is_file():
        raise CheckpointError(f"{run} is a file, not a run directory; pass the folder `dcl train` wrote")
    if not run.is_dir():
        raise CheckpointError(f"run directory {run} does not exist; make one with `dcl train METHOD --out {run}`")
    record_path = run / "config.json"
    if not record_path.is_file():
        raise CheckpointError(f"{record_path} is missing; is {run} a run directory made by `dcl train`?")
    try:
        record = json.loads(record_path.read_text())
    except ValueError as e:
        raise CheckpointError(f"{record_path} is corrupt ({e}); re-run `dcl train` to recreate the run") from None
    if not isinstance(record, dict) or not isinstance(record.get("method"), str):
        raise CheckpointError(f"{record_path} names no method (expected a JSON object with \"method\"); "
                              "re-run `dcl train` to recreate the run")
    return get_method(record["method"])
