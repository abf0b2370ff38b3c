"""Importing a library without one of its heavy, unneeded dependencies.

Some libraries import far more than the part dcl uses: Flower's simulation package imports
TensorFlow whenever it is installed (for a GPU option), and ExecuTorch's runtime bindings import
the whole `executorch.exir` compiler package for one small module of decorators. Each costs
seconds of CPU in every process that imports them (Ray's workers, ClientApp processes, `dcl
profile`). `without` skips such an import for the duration of a block and leaves no trace after
it: the skipped module imports normally later, in full, if something needs it.
"""
from __future__ import annotations

import importlib.util
import sys
import types
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def without(name: str, *, keep_submodules: bool = False) -> Iterator[None]:
    """Within the block, `import name` does not run `name`'s code. By default it raises
    ModuleNotFoundError (for an optional dependency the library tolerates missing); with
    `keep_submodules`, `name` is an empty package whose submodules still import (for a library
    that needs one small submodule of a heavy package). Nothing happens if `name` is already
    imported. Afterwards `name` and any submodule loaded through the empty package are forgotten,
    so a later import of `name` runs it in full."""
    if name in sys.modules:
        yield
        return
    if keep_submodules:
        spec = importlib.util.find_spec(name)
        if spec is None or spec.submodule_search_locations is None:
            raise ModuleNotFoundError(f"{name} is not an installed package")
        stub = types.ModuleType(name)
        stub.__path__ = list(spec.submodule_search_locations)
        sys.modules[name] = stub
    else:
        sys.modules[name] = None  # type: ignore[assignment]  # the import system's "not importable"
    try:
        yield
    finally:
        for loaded in [m for m in sys.modules if m == name or (keep_submodules and m.startswith(f"{name}."))]:
            del sys.modules[loaded]
