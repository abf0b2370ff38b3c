"""`dcl export --model pkg.module:factory`: export a user's own model, like `optimum-cli export`.

The factory is called with no arguments and returns one of:
- `(model, example_inputs)`: an inference-only program named after the factory;
- a `ProgramSpec` (exporters.api): adds a training program (TrainingSpec, training batches with
  the target "y", names, real validation inputs);
- a list of ProgramSpecs: a bundle of several named programs.
Every problem (no such module or attribute, a factory that raises, a wrong return) is one line.
"""
from __future__ import annotations

import importlib
import os
import sys
from typing import Any

import torch
from torch import nn

from dcl_core.errors import ConfigError
from exporters.api import ProgramSpec

USAGE = "give --model as package.module:factory (a function returning (model, example_inputs) or ProgramSpecs)"


def load_programs(reference: str) -> list[ProgramSpec]:
    module_name, _, attr = reference.partition(":")
    if not module_name or not attr:
        raise ConfigError(f"--model {reference!r}: {USAGE}")
    if os.getcwd() not in sys.path:  # the user's own package, run from its folder
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ConfigError(f"--model {reference!r}: cannot import {module_name!r} ({e}); {USAGE}") from None
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise ConfigError(f"--model {reference!r}: {module_name} has no function {attr!r}; {USAGE}")
    try:
        made = factory()
    except Exception as e:  # noqa: BLE001 - the user's code: any failure is reported as theirs
        raise ConfigError(f"--model {reference!r}: the factory raised {type(e).__name__}: {_first_line(e)}") from None
    return _programs(made, attr, reference)


def _programs(made: Any, name: str, reference: str) -> list[ProgramSpec]:
    if isinstance(made, ProgramSpec):
        return [made]
    if isinstance(made, (list, tuple)) and made and all(isinstance(p, ProgramSpec) for p in made):
        return list(made)
    if isinstance(made, tuple) and len(made) == 2 and isinstance(made[0], nn.Module):
        inputs = made[1]
        inputs = (inputs,) if isinstance(inputs, torch.Tensor) else tuple(inputs)
        if inputs and all(isinstance(t, torch.Tensor) for t in inputs):
            return [ProgramSpec(name, made[0], inputs)]
    raise ConfigError(f"--model {reference!r}: the factory returned {type(made).__name__}; {USAGE}")


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else "(no message)"
