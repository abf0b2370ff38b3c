"""Opening a runner loads the runtime, not the converters: what a `dcl profile` or `dcl simulate`
process pays at load (TensorFlow alone took 3.3 s to import on a quiet 2-core host)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CONVERTERS = ("tensorflow", "coremltools", "onnxscript", "executorch.exir")


@pytest.mark.parametrize("runner", ["exporters.tflite.runner", "exporters.onnx.runner", "exporters.executorch.runner"])
def test_importing_a_runner_imports_no_converter(runner):
    code = (f"import sys; sys.path.insert(0, {str(ROOT)!r}); import {runner}; "
            f"print(','.join(m for m in {CONVERTERS!r} if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.strip().splitlines()
    imported = set(filter(None, lines[-1].split(","))) if lines else set()
    # executorch 1.5.1's bindings import executorch.exir for one decorator module; the runner skips
    # the rest of the compiler (dcl_core.imports.without)
    assert not imported, f"{runner} imported {sorted(imported)}"
