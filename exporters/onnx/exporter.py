"""ONNX / ONNX Runtime: an opset-18 inference model and ONNX Runtime training artifacts.

Inference: `torch.onnx.export(dynamo=True)` with its optimizer (BatchNorm folded into the conv).
Training: `onnxruntime.training.artifacts.generate_artifacts` on a graph ORT can differentiate
with PyTorch's semantics, written to a folder (training_model.onnx, eval_model.onnx,
optimizer_model.onnx, checkpoint). What that takes (measured with the pinned versions):
- every model file is rewritten to IR version 10, the newest ONNX Runtime 1.19.2 loads;
- ORT's training graph normalises every BatchNormalization node with batch statistics, so
  bn="frozen" BatchNorms are exported as plain Sub/Mul/Add ops on constant running statistics
  (affine weight/bias stay trainable initializers); with bn="train" the BatchNorms whose affine
  parameters train stay BatchNormalization nodes (batch statistics in training_model.onnx,
  running statistics in eval_model.onnx, which are never updated by ORT);
- ORT 1.19 has no gradient for HardSwish / HardSigmoid: they are exported as Clip arithmetic;
- ORT's SGD optimizer has neither momentum nor weight decay: with either, the runner applies
  torch.optim.SGD's update itself on ORT's gradients (details["optimizer"]["step"] == "host").
ONNX initializer names are the PyTorch parameter names (checked at export).
"""
from __future__ import annotations

import contextlib
import copy
import logging
import os
import re
import sys
import warnings
from pathlib import Path
from typing import Iterator

import onnx
import onnxruntime as ort
import torch
from torch import nn

from dcl_core.bundle import Artifact, TensorSpec
from dcl_core.errors import ExportError
from exporters.base import Exporter, ExportJob
from exporters.onnx.runner import IR_VERSION, load_training_session, save_inference_model, save_model
from exporters.spec import TrainingSpec

OPSET = 18
LOSS_OUTPUT = "loss"
# the file names generate_artifacts writes (no prefix); the runner reads them from details
TRAINING_FILES = {"training_model": "training_model.onnx", "eval_model": "eval_model.onnx",
                  "optimizer_model": "optimizer_model.onnx", "checkpoint": "checkpoint"}


class OnnxExporter(Exporter):
    format = "onnx"

    def export_inference(self, job: ExportJob) -> Artifact:
        model = job.model.eval()
        proto = _to_onnx(model, job.inputs, job.input_names, job.output_names, protect=())
        path = job.bundle / f"{job.name}.onnx"
        save_model(proto, path)
        _check_inference_loads(path)
        with torch.no_grad():
            outs = model(*job.inputs)
        outs = [outs] if isinstance(outs, torch.Tensor) else list(outs)
        return Artifact(name=job.name, path=path.name, format=self.format, kind="inference",
                        outputs=[TensorSpec.of(n, t) for n, t in zip(job.output_names, outs)],
                        details={"opset": OPSET, "ir_version": IR_VERSION,
                                 "exporter": "torch.onnx dynamo, optimized (BatchNorm folded)"})

    def export_training(self, job: ExportJob) -> Artifact:
        spec = job.spec
        if spec is None or job.target is None:
            raise ExportError("onnx training export needs a TrainingSpec and a target batch; "
                              "pass training=... and train_batches=... to exporters.export")
        trainable = spec.trainable_names(job.model)
        _check_target(spec.loss, job.target)
        model = differentiable_copy(job.model, trainable, spec)
        proto = _to_onnx(model, job.inputs, job.input_names, job.output_names, protect=trainable)
        _check_parameters(proto, job.model, trainable)
        folder = job.bundle / job.name
        folder.mkdir(parents=True, exist_ok=True)
        _generate(proto, trainable, spec, job.target_name, folder)
        _check_training_loads(folder)
        return Artifact(name=job.name, path=folder.name, format=self.format, kind="training",
                        outputs=[TensorSpec(LOSS_OUTPUT, [], "float32")],
                        details=_training_details(job, spec, trainable))


def export_inference_from_checkpoint(training_folder: str | Path, out_path: str | Path,
                                     output_names: list[str]) -> Path:
    """The inference model of a (trained) ORT checkpoint: eval_model.onnx with the checkpoint's
    parameters, cut at `output_names` (ORT's Module.export_model_for_inferencing), IR 10."""
    folder = Path(training_folder)
    try:
        session = load_training_session(folder, TRAINING_FILES, threads=1, with_optimizer=False)
    except Exception as e:  # noqa: BLE001 - ORT raises its own types; the user needs one line
        raise ExportError(f"cannot load ONNX Runtime training artifacts in {folder} ({_first_line(e)}); "
                          "point at a folder written by the onnx training export") from None
    return save_inference_model(session.module, Path(out_path), output_names)


# ---------------------------------------------------------------- a graph ORT can differentiate

class _EvalBatchNorm(nn.Module):
    """Eval-mode BatchNorm as plain ops: running statistics are constants, weight/bias keep
    the original Parameters (so their ONNX names stay the PyTorch names)."""

    def __init__(self, bn: nn.modules.batchnorm._BatchNorm):
        super().__init__()
        self.weight, self.bias, self.eps = bn.weight, bn.bias, bn.eps
        self.register_buffer("running_mean", bn.running_mean.detach().clone())
        self.register_buffer("running_var", bn.running_var.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = (1, -1) + (1,) * (x.dim() - 2)
        y = (x - self.running_mean.reshape(shape)) * torch.rsqrt(self.running_var.reshape(shape) + self.eps)
        if self.weight is not None:
            y = y * self.weight.reshape(shape) + self.bias.reshape(shape)
        return y


class _Hardswish(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.clamp(x + 3.0, 0.0, 6.0) / 6.0


class _Hardsigmoid(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.clamp(x + 3.0, 0.0, 6.0) / 6.0


def differentiable_copy(model: nn.Module, trainable: list[str], spec: TrainingSpec) -> nn.Module:
    """A deep copy in eval mode with the layers ORT cannot train as PyTorch does replaced by
    equivalent plain ops; parameter names are unchanged."""
    if spec.bn not in ("frozen", "train"):
        raise ExportError(f"unknown TrainingSpec.bn {spec.bn!r}; use 'frozen' or 'train'")
    batch_stats = spec.batch_statistics_layers(model, trainable)
    model = copy.deepcopy(model).eval()
    for name, module in list(model.named_modules()):
        replacement = _replacement(name, module, batch_stats)
        if replacement is not None:
            model.set_submodule(name, replacement)
    return model


def _replacement(name: str, module: nn.Module, batch_stats: set[str]) -> nn.Module | None:
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.running_mean is not None:
        # a BatchNorm with batch statistics (TrainingSpec.batch_statistics_layers) is what ORT's
        # training graph does with a BatchNormalization node; every other one becomes plain ops
        return None if name in batch_stats else _EvalBatchNorm(module)
    if isinstance(module, nn.Hardswish):
        return _Hardswish()
    if isinstance(module, nn.Hardsigmoid):
        return _Hardsigmoid()
    return None


# ---------------------------------------------------------------- torch -> ONNX

@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """The exporters log progress, optional-dependency notes (torchvision) and deprecations on
    every call; keep `dcl export` output to its own summary lines."""
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "onnx_ir", "onnxscript")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


@contextlib.contextmanager
def _native_stderr_silenced() -> Iterator[None]:
    """ORT's gradient-graph builder logs ~130 INFO lines from C++ whatever the logger severity
    (it builds its own session options); failures still arrive as exceptions."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _to_onnx(model: nn.Module, inputs: tuple[torch.Tensor, ...], input_names: list[str],
             output_names: list[str], protect: list[str] | tuple[()]) -> onnx.ModelProto:
    """Dynamo export at fixed shapes. For training (`protect` = trainable parameter names) the
    graph is optimised with those initializers marked as graph inputs, so constant folding
    removes exporter artefacts without an ORT gradient (CastLike) and folds frozen
    sub-expressions, but never folds a trainable parameter away."""
    try:
        with _quiet():
            program = torch.onnx.export(model, tuple(inputs), dynamo=True, optimize=not protect,
                                        opset_version=OPSET, input_names=list(input_names),
                                        output_names=list(output_names), external_data=False, verbose=False)
            proto = program.model_proto
            if protect:
                proto = _optimize_protecting(proto, list(protect))
    except Exception as e:  # noqa: BLE001 - torch.export / onnxscript raise many types
        raise ExportError(f"torch.onnx.export failed ({_first_line(e)}); the model must be "
                          "exportable with torch.export at fixed input shapes") from None
    return proto


def _optimize_protecting(proto: onnx.ModelProto, names: list[str]) -> onnx.ModelProto:
    """onnxscript's optimizer, blind to the protected initializers' values: they become plain
    graph inputs while it runs (otherwise it simplifies by value, e.g. drops a Gemm's all-zero
    bias, as nn.MultiheadAttention's out_proj starts, and the parameter loses its consumer)."""
    import onnxscript.optimizer

    graph = proto.graph
    protected = [i for i in graph.initializer if i.name in set(names)]
    kept = [i for i in graph.initializer if i.name not in set(names)]
    n_inputs = len(graph.input)
    graph.input.extend(onnx.helper.make_tensor_value_info(i.name, i.data_type, list(i.dims)) for i in protected)
    del graph.initializer[:]
    graph.initializer.extend(kept)
    proto = onnxscript.optimizer.optimize(proto)
    del proto.graph.input[n_inputs:]
    proto.graph.initializer.extend(protected)
    return proto


def _check_parameters(proto: onnx.ModelProto, model: nn.Module, trainable: list[str]) -> None:
    """Every trainable parameter must be an initializer of the same name and PyTorch shape, so
    the runner can key weights by PyTorch name without any mapping."""
    inits = {i.name: list(i.dims) for i in proto.graph.initializer}
    params = dict(model.named_parameters())
    for name in trainable:
        if name not in inits:
            raise ExportError(f"trainable parameter {name} is not in the exported ONNX graph (unused by "
                              "forward, or shared with another parameter); freeze it or remove it")
        if inits[name] != list(params[name].shape):
            raise ExportError(f"trainable parameter {name} was exported as shape {inits[name]}, PyTorch "
                              f"has {list(params[name].shape)}; this layer is not supported for onnx training")


# ---------------------------------------------------------------- ORT training artifacts

def _loss_block(kind: str, target_name: str):
    """An onnxblock computing spec.loss (mean) on the model output, output named "loss", the
    target a graph input named `target_name`."""
    from onnxruntime.training import onnxblock

    class StableBCEWithLogits(onnxblock.Block):
        """mean(max(x, 0) - x*y + log(1 + exp(-|x|))), PyTorch's formula. ORT's BCEWithLogitsLoss
        computes log(sigmoid(x)) and log(1 - sigmoid(x)), which loses precision for |x| > ~8 and
        is infinite beyond ~17 in float32; log(1 + exp(-|x|)) = -log(sigmoid(|x|)) is stable."""

        def build(self, x: str, y: str) -> str:
            b = onnxblock.blocks
            y = b.InputLike(x)(y)  # the target: a graph input shaped like the output
            relu = b.Clip(clip_min=0.0)(x)
            softplus = b.Neg()(b.Log()(b.Sigmoid()(b.Abs()(x))))
            return b.ReduceMean(keepdims=False)(b.Add()(b.Sub()(relu, b.Mul()(x, y)), softplus))

    class Loss(onnxblock.Block):
        def __init__(self) -> None:
            super().__init__()
            self._inner = {"cross_entropy": lambda: onnxblock.loss.CrossEntropyLoss(reduction="mean"),
                           "bce_with_logits": StableBCEWithLogits,
                           "mse": lambda: onnxblock.loss.MSELoss(reduction="mean")}[kind]()

        def build(self, output_name: str) -> str:
            # each loss block adds the target graph input itself (int64 labels for cross entropy)
            loss = self._inner(output_name, target_name)
            self.base.graph.node.append(onnx.helper.make_node("Identity", [loss], [LOSS_OUTPUT], name="loss_output"))
            return LOSS_OUTPUT

    return Loss()


def _generate(proto: onnx.ModelProto, trainable: list[str], spec: TrainingSpec, target_name: str,
              folder: Path) -> None:
    from onnxruntime.training import artifacts

    if len(proto.graph.output) != 1:
        raise ExportError(f"onnx training needs a model with one output, this one has {len(proto.graph.output)}")
    _expose_layer_norm_statistics(proto)
    try:
        # the optimizer model is ORT's plain SGD (p -= lr * g); momentum / weight decay are
        # applied by the runner (see _training_details)
        with _native_stderr_silenced():
            artifacts.generate_artifacts(proto, requires_grad=trainable, loss=_loss_block(spec.loss, target_name),
                                         optimizer=artifacts.OptimType.SGD, artifact_directory=folder)
    except Exception as e:  # noqa: BLE001 - ORT raises RuntimeError / its own Fail types
        op = re.search(r"not been registered: (\S+) for node", str(e))
        if op:
            raise ExportError(f"ONNX Runtime 1.19 has no gradient for op {op.group(1)} on the trainable "
                              "path; freeze the layers that use it or rewrite them with supported ops") from None
        raise ExportError(f"onnxruntime training artifact generation failed ({_first_line(e)})") from None
    for name in ("training_model", "eval_model", "optimizer_model"):
        path = folder / TRAINING_FILES[name]
        save_model(onnx.load(path), path)


def _expose_layer_norm_statistics(proto: onnx.ModelProto) -> None:
    """ORT's LayerNormalization gradient reads the node's optional Mean and InvStdDev outputs,
    which the exporter leaves out (gradient generation then fails on a missing output): name them."""
    for i, node in enumerate(proto.graph.node):
        if node.op_type == "LayerNormalization" and len(node.output) == 1:
            node.output.extend([f"layer_norm_{i}_mean", f"layer_norm_{i}_inv_std_dev"])


def _check_target(loss: str, target: torch.Tensor) -> None:
    want = torch.int64 if loss == "cross_entropy" else torch.float32
    if target.dtype != want:
        raise ExportError(f"loss {loss} needs a {want} target, train_batches give {target.dtype}")


def _training_details(job: ExportJob, spec: TrainingSpec, trainable: list[str]) -> dict:
    host_step = spec.momentum != 0.0 or spec.weight_decay != 0.0
    optimizer = {**spec.optimizer_record(), "step": "host" if host_step else "ort",
                 "note": ("optimizer_model.onnx is plain SGD (p -= lr * grad); momentum / weight decay "
                          "are applied as torch.optim.SGD does on the gradients ORT computes"
                          if host_step else "optimizer_model.onnx implements this SGD exactly; "
                          "set its learning rate to lr")}
    return {"files": dict(TRAINING_FILES), "opset": OPSET, "ir_version": IR_VERSION,
            "train_inputs": [*job.input_names, job.target_name], "loss_output": LOSS_OUTPUT,
            "output_names": list(job.output_names), "optimizer": optimizer,
            # ONNX initializer name -> PyTorch parameter name (identical by construction)
            "parameters": {n: n for n in trainable}, "bn": spec.bn,
            "bn_running_stats": "constant: ORT never updates them (bn='train' trains with batch "
                                "statistics, eval_model/inference use the exported running statistics)"}


# ---------------------------------------------------------------- load checks (clear errors)

def _check_inference_loads(path: Path) -> None:
    try:
        ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as e:  # noqa: BLE001
        raise ExportError(_load_failure("inference model", path, e)) from None


def _check_training_loads(folder: Path) -> None:
    try:
        load_training_session(folder, TRAINING_FILES, threads=1, with_optimizer=True)
    except Exception as e:  # noqa: BLE001
        raise ExportError(_load_failure("training artifacts", folder, e)) from None


def _load_failure(what: str, path: Path, e: Exception) -> str:
    op = re.search(r"implementation for (\w+)\((\d+)\)", str(e))
    if op:
        return (f"ONNX Runtime 1.19 has no CPU kernel for op {op.group(1)} (opset {op.group(2)}) in the "
                f"onnx {what}; rewrite that layer with supported ops")
    return f"ONNX Runtime cannot load the onnx {what} {path.name} ({_first_line(e)})"


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:300] if text else type(e).__name__
