"""LiteRT (TFLite) runners on the stock `ai_edge_litert` interpreter.

Everything goes through signature runners, addressed by the names the manifest records (never
by position: LiteRT lists signature inputs sorted as strings). Inputs arrive in PyTorch dtypes
and layouts and are cast to the artifact's dtypes; the programs transpose NCHW inside. Weights
cross the boundary under PyTorch names and layouts: the `get_weights`/`set_weights` signatures
transpose inside, and details["weights"] maps their keys (w000, ...) to PyTorch names.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from ai_edge_litert.interpreter import Interpreter

from dcl_core.bundle import Artifact
from dcl_core.errors import BundleError
from exporters.runner import InferenceRunner, TrainingRunner, feed

WHO = "the LiteRT program"


def _interpreter(path: Path, threads: int) -> Interpreter:
    return Interpreter(model_path=str(path), num_threads=threads)


class LiteRTInference(InferenceRunner):
    format = "tflite"

    def __init__(self, path: Path, art: Artifact, threads: int):
        self.interpreter = _interpreter(path, threads)
        self.runner = self.interpreter.get_signature_runner(art.details["signature"])
        self.inputs = art.inputs
        self.outputs = [s.name for s in art.outputs]

    def infer(self, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
        out = self.runner(**feed(inputs, self.inputs, WHO))
        return [out[n] for n in self.outputs]


class LiteRTTraining(TrainingRunner):
    format = "tflite"

    def __init__(self, path: Path, art: Artifact, threads: int):
        details = art.details
        self.interpreter = _interpreter(path, threads)
        runner = {role: self.interpreter.get_signature_runner(name) for role, name in details["signatures"].items()}
        self._train, self._infer = runner["train"], runner["infer"]
        self._get_weights, self._set_weights = runner["get_weights"], runner["set_weights"]
        self.inputs = art.inputs  # model inputs + the target
        self.outputs = [s.name for s in art.outputs]
        self.weights = details["weights"]

    def train_step(self, inputs: dict[str, np.ndarray]) -> float:
        return float(self._train(**feed(inputs, self.inputs, WHO))["loss"])

    def infer(self, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
        """Eval-mode outputs with the current weights (any batch size)."""
        model_inputs = [s for s in self.inputs if s.name in self._infer.get_input_details()]
        out = self._infer(**feed(inputs, model_inputs, WHO))
        return [out[n] for n in self.outputs]

    def get_weights(self) -> dict[str, np.ndarray]:
        """Trainable parameters, plus BatchNorm running statistics where training updates them."""
        out = self._get_weights()
        return {w["name"]: np.array(out[w["key"]]) for w in self.weights}

    def set_weights(self, weights: dict[str, np.ndarray]) -> None:
        """Replace the weights (PyTorch names and layouts). Every trainable parameter is required;
        BatchNorm statistics left out keep their current values. Momentum buffers are kept."""
        known = {w["name"] for w in self.weights}
        unknown = sorted(set(weights) - known)
        if unknown:
            raise BundleError(f"set_weights got {unknown[:3]}, which this program does not train; it has {sorted(known)[:3]}...")
        missing = sorted(w["name"] for w in self.weights if w["kind"] == "param" and w["name"] not in weights)
        if missing:
            raise BundleError(f"set_weights lacks trainable parameters {missing[:3]}")
        current = self.get_weights() if len(weights) < len(self.weights) else {}
        feed = {}
        for w in self.weights:
            value = np.asarray(weights.get(w["name"], current.get(w["name"])), dtype=np.float32)
            if list(value.shape) != list(w["shape"]):
                raise BundleError(f"weight {w['name']} has shape {list(value.shape)}, expected {w['shape']}")
            feed[w["key"]] = np.ascontiguousarray(value)
        self._set_weights(**feed)


def open_inference(path: Path, art: Artifact, threads: int) -> InferenceRunner:
    return LiteRTInference(path, art, threads)


def open_training(path: Path, art: Artifact, threads: int) -> TrainingRunner:
    return LiteRTTraining(path, art, threads)
