"""ONNX Runtime runners: `InferenceSession` for an .onnx model, `onnxruntime.training.api`
(CheckpointState / Module / Optimizer) for the training folder written by exporters/onnx/exporter.py.

Training step = what torch.optim.SGD does after `zero_grad(); loss.backward()`: ORT computes the
gradients (Module.lazy_reset_grad + train step); the update is ORT's SGD optimizer model when it
implements the artifact's optimizer exactly (no momentum, no weight decay), else it is applied
here in float32 numpy on ORT's gradients, with torch's formula (dampening 0, no Nesterov):
    d = g + weight_decay * p;  buf = d (first step) or momentum * buf + d;  p -= lr * buf
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

try:  # onnxruntime-training; the inference-only wheel (aarch64 has no other) runs inference alone
    from onnxruntime.training.api import CheckpointState, Module, Optimizer
except ImportError:  # pragma: no cover - exercised on the arm64 device
    CheckpointState = Module = Optimizer = None

from dcl_core.bundle import Artifact
from dcl_core.errors import BundleError
from dcl_core.untrusted import inside
from exporters.runner import InferenceRunner, TrainingRunner, feed

WHO = "the ONNX model"
IR_VERSION = 10  # the newest ONNX IR version ONNX Runtime 1.19.2 loads (onnx 1.23 writes 14)


def save_model(proto, path: Path) -> None:
    """Save at the IR version this runtime loads (the graphs use nothing newer)."""
    import onnx

    proto.ir_version = IR_VERSION
    onnx.save(proto, path)


def _options(threads: int) -> ort.SessionOptions:
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    # ORT warns on every optimizer-model load about a shape it merges leniently (its own
    # onnxblock output); real problems surface as exceptions
    so.log_severity_level = 3
    return so


class OrtInferenceRunner(InferenceRunner):
    format = "onnx"

    def __init__(self, path: Path, art: Artifact, threads: int):
        self._session = ort.InferenceSession(str(path), sess_options=_options(threads),
                                             providers=["CPUExecutionProvider"])
        self._inputs = art.inputs
        self._outputs = [s.name for s in art.outputs] or [o.name for o in self._session.get_outputs()]

    def infer(self, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
        # ORT does not cast: feed() gives each input the artifact's dtype
        return self._session.run(self._outputs, feed(inputs, self._inputs, WHO))


@dataclass
class TrainingSession:
    state: CheckpointState
    module: Module
    optimizer: Optimizer | None


def load_training_session(folder: Path, files: dict[str, str], threads: int,
                          with_optimizer: bool) -> TrainingSession:
    """Checkpoint + Module (training and eval models) [+ ORT optimizer] of a training folder."""
    # the file names come from the manifest (someone else's file): they must stay inside the folder
    def at(role: str) -> Path:
        return inside(folder, files[role], f"ONNX training {role}", BundleError)

    if CheckpointState is None:
        raise BundleError("this onnxruntime has no training API (onnxruntime-training has no build for this "
                          "machine); ONNX Runtime training artifacts run where onnxruntime-training installs")
    state = CheckpointState.load_checkpoint(at("checkpoint"))
    module = Module(at("training_model"), state, at("eval_model"), device="cpu", session_options=_options(threads))
    optimizer = Optimizer(at("optimizer_model"), module) if with_optimizer else None
    return TrainingSession(state, module, optimizer)


def save_inference_model(module: Module, out_path: Path, output_names: list[str]) -> Path:
    """The eval model cut at `output_names`, with the module's current parameters baked in."""
    out_path.parent.mkdir(parents=True, exist_ok=True)
    module.export_model_for_inferencing(out_path, list(output_names))
    import onnx

    save_model(onnx.load(out_path), out_path)
    return out_path


class OrtTrainingRunner(TrainingRunner):
    format = "onnx"

    def __init__(self, folder: Path, art: Artifact, threads: int):
        details = art.details
        opt = details["optimizer"]
        self._host_step = opt["step"] == "host"
        self._lr, self._momentum = np.float32(opt["lr"]), np.float32(opt["momentum"])
        self._weight_decay = np.float32(opt["weight_decay"])
        self._session = load_training_session(folder, details["files"], threads,
                                              with_optimizer=not self._host_step)
        if self._session.optimizer is not None:
            self._session.optimizer.set_learning_rate(float(opt["lr"]))
        self._to_torch: dict[str, str] = dict(details["parameters"])  # ONNX name -> PyTorch name
        self._to_onnx = {t: o for o, t in self._to_torch.items()}
        specs = {s.name: s for s in art.inputs}
        self._inputs = [specs[n] for n in self._session.module.input_names()]
        self._output_names = list(details["output_names"])
        self._momentum_buffers: dict[str, np.ndarray] = {}
        self._stepped = False

    def train_step(self, inputs: dict[str, np.ndarray]) -> float:
        module = self._session.module
        module.train()
        module.lazy_reset_grad()  # this step's gradients only, as after torch's zero_grad()
        loss = module(*feed(inputs, self._inputs, WHO).values())
        if self._host_step:
            self._sgd_step()
        else:
            self._session.optimizer.step()
        self._stepped = True
        return float(loss)

    def _sgd_step(self) -> None:
        params = self._session.state.parameters
        for name in self._to_torch:
            p = params[name]
            w, d = p.data.copy(), p.grad.copy()
            if self._weight_decay:
                d = d + self._weight_decay * w
            if self._momentum:
                buf = self._momentum_buffers.get(name)
                buf = d if buf is None else self._momentum * buf + d
                self._momentum_buffers[name] = buf
                d = buf
            params[name] = (w - self._lr * d).astype(np.float32)

    def get_weights(self) -> dict[str, np.ndarray]:
        params = self._session.state.parameters
        return {t: params[o].data.copy() for o, t in self._to_torch.items()}

    def set_weights(self, weights: dict[str, np.ndarray]) -> None:
        """Replace trainable weights; momentum buffers are kept, like a torch optimizer whose
        model weights were loaded over."""
        params = self._session.state.parameters
        unknown = sorted(set(weights) - set(self._to_onnx))
        if unknown:
            raise BundleError(f"onnx runner: {unknown[:3]} are not trainable parameters of this artifact")
        for torch_name, value in weights.items():
            name = self._to_onnx[torch_name]
            value = np.ascontiguousarray(value, dtype=np.float32)
            if value.shape != params[name].data.shape:
                raise BundleError(f"onnx runner: weight {torch_name} has shape {value.shape}, "
                                 f"the artifact has {params[name].data.shape}")
            params[name] = value

    def gradients(self) -> dict[str, np.ndarray] | None:
        if not self._stepped:
            return None
        params = self._session.state.parameters
        return {t: params[o].grad.copy() for o, t in self._to_torch.items()}

    def export_inference(self, out_path: str | Path) -> Path:
        """An inference model (IR 10) with the current trained weights."""
        return save_inference_model(self._session.module, Path(out_path), self._output_names)


def open_inference(path: Path, art: Artifact, threads: int = 1) -> OrtInferenceRunner:
    return OrtInferenceRunner(path, art, threads)


def open_training(path: Path, art: Artifact, threads: int = 1) -> OrtTrainingRunner:
    return OrtTrainingRunner(path, art, threads)
