"""Core ML runners: `MLModel.predict` through coremltools, which works on macOS only.

Inference runs on the CPU only: the GPU and the Neural Engine compute in fp16, which the 1e-4
parity gate would (rightly) reject. Core ML has no thread setting, so `threads` is ignored.

Training has no Python path: Core ML updates a model only through MLUpdateTask (Swift /
Objective-C), and coremltools exposes no update API. The training artifact runs in the iOS app;
here it is validated structurally (exporters.coreml.CoreMLExporter.validate_structure).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from dcl_core.bundle import Artifact
from dcl_core.errors import DeviceError
from exporters.formats import get_format
from exporters.runner import InferenceRunner, TrainingRunner, feed


def open_inference(path: Path, art: Artifact, threads: int) -> InferenceRunner:
    _require_macos()
    return CoreMLInference(path, art)


def open_training(path: Path, art: Artifact, threads: int) -> TrainingRunner:
    _require_macos()
    raise DeviceError(f"Core ML training of {path.name} needs MLUpdateTask (Swift/Objective-C), which "
                      "coremltools does not expose to Python: run it in the iOS app")


class CoreMLInference(InferenceRunner):
    format = "coreml"

    def __init__(self, path: Path, art: Artifact):
        import coremltools as ct

        self._model = ct.models.MLModel(str(path), compute_units=ct.ComputeUnit.CPU_ONLY)
        self._inputs = art.inputs
        self._outputs = [o.name for o in art.outputs]

    def infer(self, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
        # Core ML features carry the artifact's dtypes (int64 ids arrive as int32)
        out = self._model.predict(feed(inputs, self._inputs, "the Core ML model"))
        return [np.asarray(out[name]) for name in self._outputs]


def _require_macos() -> None:
    ok, why = get_format("coreml").runs_here()
    if not ok:
        raise DeviceError(why)
