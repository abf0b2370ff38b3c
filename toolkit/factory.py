"""`dcl export --model pkg.module:factory`: export a user's own model, like `optimum-cli export`.

The factory is called with no arguments and returns one of:
- `(model, example_inputs)`: an inference-only program named after the factory;
- a `ProgramSpec` (exporters.api): adds a training program (TrainingSpec, training batches with
  the target "y", names, real validation inputs);
- a list of ProgramSpecs: a bundle of several named programs.
How the module is found: `path/to/file.py:factory` imports exactly that file; a dotted name is
looked up among the installed packages first and in the current folder last, so a file in the
working directory named like a dependency never shadows it (and if the name you meant is taken by
an installed module, dcl says so rather than importing the wrong one).
Every problem (no such module or attribute, a syntax error or failing import in the module, a
factory that raises, a wrong return) is one line.
"""
from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from torch import nn

from dcl_core.errors import ConfigError
from exporters.api import ProgramSpec, check_programs

USAGE = ("give --model as package.module:factory or path/to/file.py:factory (a function returning "
         "(model, example_inputs) or ProgramSpecs)")


def load_programs(reference: str) -> list[ProgramSpec]:
    module_ref, _, attr = reference.rpartition(":")
    if not module_ref or not attr or not attr.isidentifier():
        raise ConfigError(f"--model {reference!r}: {USAGE}")
    module = _import_user_module(module_ref, reference)
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise ConfigError(f"--model {reference!r}: {module.__name__} ({_where(module)}) has no function {attr!r}; {USAGE}")
    try:
        made = factory()
    except Exception as e:  # noqa: BLE001 - the user's code: any failure is reported as theirs
        raise ConfigError(f"--model {reference!r}: the factory raised {type(e).__name__}: {_first_line(e)}") from None
    programs = _programs(made, attr, reference)
    check_programs(programs)  # before the command announces an export
    return programs


def _import_user_module(module_ref: str, reference: str) -> ModuleType:
    """Import the user's module: a file path (`models/net.py`) or a dotted name searched on the
    installed packages first and the current folder LAST, so a file in the working directory
    named like a dependency (numpy.py, torch.py) can never shadow it."""
    if module_ref.endswith(".py"):
        return _import_file(Path(module_ref), reference)
    if not all(part.isidentifier() for part in module_ref.split(".")):
        raise ConfigError(f"--model {reference!r}: {module_ref!r} is neither a dotted module name nor a .py file; {USAGE}")
    cwd = os.getcwd()
    sys.path[:] = [p for p in sys.path if p not in ("", ".", cwd)] + [cwd]
    try:
        module = importlib.import_module(module_ref)
    except ModuleNotFoundError as e:
        if e.name and module_ref.startswith(e.name):
            raise ConfigError(f"--model {reference!r}: no module {module_ref!r} among the installed packages or in "
                              f"{cwd}; {USAGE}") from None
        raise ConfigError(f"--model {reference!r}: importing {module_ref} failed: {_first_line(e)}") from None
    except BaseException as e:  # noqa: BLE001 - the user's module: a syntax error, a failing import, a sys.exit
        raise ConfigError(f"--model {reference!r}: importing {module_ref} failed: {_describe(e)}") from None
    local = Path(cwd, *module_ref.split("."))
    shadowed = next((p for p in (local.with_suffix(".py"), local / "__init__.py") if p.is_file()), None)
    if shadowed is not None and Path(_where(module)).resolve() != shadowed.resolve():
        raise ConfigError(f"--model {reference!r}: {module_ref!r} is an installed module ({_where(module)}), "
                          f"not your {shadowed}; rename your file or pass its path: --model {shadowed}:{reference.rpartition(':')[2]}")
    return module


def _import_file(path: Path, reference: str) -> ModuleType:
    """A module from a file path, under a private name (it never replaces an imported module);
    its folder goes to the END of sys.path so its own sibling imports resolve."""
    if not path.is_file():
        raise ConfigError(f"--model {reference!r}: {path} is not a file; {USAGE}")
    name = f"dcl_user_model_{abs(hash(str(path.resolve())))}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ConfigError(f"--model {reference!r}: {path} cannot be imported as a Python module")
    folder = str(path.resolve().parent)
    if folder not in sys.path:
        sys.path.append(folder)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException as e:  # noqa: BLE001 - the user's module: a syntax error, a failing import, a sys.exit
        del sys.modules[name]
        raise ConfigError(f"--model {reference!r}: importing {path} failed: {_describe(e)}") from None
    return module


def _where(module: ModuleType) -> str:
    return getattr(module, "__file__", None) or "built in"


def _describe(e: BaseException) -> str:
    if isinstance(e, SyntaxError):
        return f"syntax error at {e.filename}:{e.lineno}: {e.msg}"
    return f"{type(e).__name__}: {_first_line(e)}"


def _programs(made: Any, name: str, reference: str) -> list[ProgramSpec]:
    if isinstance(made, ProgramSpec):
        return [made]
    if isinstance(made, (list, tuple)) and made and all(isinstance(p, ProgramSpec) for p in made):
        return list(made)
    if isinstance(made, tuple) and len(made) == 2 and isinstance(made[0], nn.Module):
        inputs = made[1]
        inputs = (inputs,) if isinstance(inputs, torch.Tensor) else inputs
        if isinstance(inputs, (list, tuple)) and inputs and all(isinstance(t, torch.Tensor) for t in inputs):
            return [ProgramSpec(name, made[0], tuple(inputs))]
        raise ConfigError(f"--model {reference!r}: the factory returned a model with example inputs of type "
                          f"{type(made[1]).__name__}; give a tensor or a list of tensors")
    raise ConfigError(f"--model {reference!r}: the factory returned {type(made).__name__}; {USAGE}")


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else "(no message)"
