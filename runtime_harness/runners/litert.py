"""LiteRT (TFLite) runners on the stock `ai_edge_litert` interpreter.

Everything goes through signature runners, addressed by the names the manifest records (never
by position: LiteRT lists signature inputs sorted as strings). Inputs arrive in PyTorch dtypes
and layouts and are cast to the artifact's dtypes; the programs transpose NCHW inside. Weights
cross the boundary under PyTorch names and layouts: the `get_weights`/`set_weights` signatures
transpose inside, and details["weights"] maps their keys (w000, ...) to PyTorch names.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from ai_edge_litert.interpreter import Interpreter

from runtime_harness.runners.base import InferenceRunner, TrainingRunner


def _get(obj: Any, key: str) -> Any:
    """Artifact fields from an Artifact record or its manifest JSON dict."""
    return obj[key] if isinstance(obj, dict) else getattr(obj, key)


def _dtypes(specs: list[Any]) -> dict[str, np.dtype]:
    return {_get(s, "name"): np.dtype(_get(s, "dtype")) for s in specs}


def _feed(inputs: dict[str, np.ndarray], dtypes: dict[str, np.dtype]) -> dict[str, np.ndarray]:
    missing = [n for n in dtypes if n not in inputs]
    if missing:
        raise ValueError(f"LiteRT runner needs inputs {missing}; got {sorted(inputs)}")
    return {n: np.ascontiguousarray(inputs[n], dtype=dt) for n, dt in dtypes.items()}


def _interpreter(path: Path, threads: int) -> Interpreter:
    return Interpreter(model_path=str(path), num_threads=threads)


class LiteRTInference(InferenceRunner):
    format = "tflite"

    def __init__(self, path: Path, artifact: Any, threads: int):
        self.interpreter = _interpreter(path, threads)
        self.runner = self.interpreter.get_signature_runner(_get(artifact, "details")["signature"])
        self.inputs = _dtypes(_get(artifact, "inputs"))
        self.outputs = [_get(s, "name") for s in _get(artifact, "outputs")]

    def infer(self, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
        out = self.runner(**_feed(inputs, self.inputs))
        return [out[n] for n in self.outputs]


class LiteRTTraining(TrainingRunner):
    format = "tflite"

    def __init__(self, path: Path, artifact: Any, threads: int):
        details = _get(artifact, "details")
        self.interpreter = _interpreter(path, threads)
        runner = {role: self.interpreter.get_signature_runner(name) for role, name in details["signatures"].items()}
        self._train, self._infer = runner["train"], runner["infer"]
        self._get_weights, self._set_weights = runner["get_weights"], runner["set_weights"]
        self.inputs = _dtypes(_get(artifact, "inputs"))  # model inputs + the target
        self.outputs = [_get(s, "name") for s in _get(artifact, "outputs")]
        self.weights = details["weights"]

    def train_step(self, inputs: dict[str, np.ndarray]) -> float:
        return float(self._train(**_feed(inputs, self.inputs))["loss"])

    def infer(self, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
        """Eval-mode outputs with the current weights (any batch size)."""
        model_inputs = {n: dt for n, dt in self.inputs.items() if n in self._infer.get_input_details()}
        out = self._infer(**_feed(inputs, model_inputs))
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
            raise ValueError(f"set_weights got {unknown[:3]}, which this program does not train; it has {sorted(known)[:3]}...")
        missing = sorted(w["name"] for w in self.weights if w["kind"] == "param" and w["name"] not in weights)
        if missing:
            raise ValueError(f"set_weights lacks trainable parameters {missing[:3]}")
        current = self.get_weights() if len(weights) < len(self.weights) else {}
        feed = {}
        for w in self.weights:
            value = np.asarray(weights.get(w["name"], current.get(w["name"])), dtype=np.float32)
            if list(value.shape) != list(w["shape"]):
                raise ValueError(f"weight {w['name']} has shape {list(value.shape)}, expected {w['shape']}")
            feed[w["key"]] = np.ascontiguousarray(value)
        self._set_weights(**feed)


def open_inference(path: Path, artifact: Any, threads: int) -> InferenceRunner:
    return LiteRTInference(path, artifact, threads)


def open_training(path: Path, artifact: Any, threads: int) -> TrainingRunner:
    return LiteRTTraining(path, artifact, threads)
