"""Runners per runtime. `open_inference` / `open_training` pick one by format name (lazy imports,
so a missing runtime only matters when it is used)."""
from __future__ import annotations

import importlib
from pathlib import Path

from exporters.manifest import Artifact
from runtime_harness.runners.base import InferenceRunner, TrainingRunner

# format -> module implementing `open_inference(path, artifact, threads)` and
# `open_training(path, artifact, threads)`; `artifact` is the manifest's Artifact record
_MODULES = {
    "executorch": "runtime_harness.runners.executorch",
    "onnx": "runtime_harness.runners.onnxruntime",
    "tflite": "runtime_harness.runners.litert",
    "coreml": "runtime_harness.runners.coreml",
    "pytorch": "runtime_harness.runners.pytorch",
}


def _module(fmt: str):
    if fmt not in _MODULES:
        raise ValueError(f"no runner for format {fmt!r}")
    return importlib.import_module(_MODULES[fmt])


def open_inference(fmt: str, path: str | Path, artifact: Artifact, threads: int = 1) -> InferenceRunner:
    return _module(fmt).open_inference(Path(path), artifact, threads)


def open_training(fmt: str, path: str | Path, artifact: Artifact, threads: int = 1) -> TrainingRunner:
    return _module(fmt).open_training(Path(path), artifact, threads)


__all__ = ["InferenceRunner", "TrainingRunner", "open_inference", "open_training"]
