"""TFLiteExporter: a TF rebuild of the PyTorch module (copied weights), converted to builtin ops.

Inference: one `serving_default` signature, PyTorch-layout inputs (NCHW images are transposed
inside), static shapes of the example inputs.

Training: one .tflite with four signatures, all builtin ops (runs on the stock interpreter):
- `train`(inputs..., y) -> loss: forward, builtin-only backward (exporters.tflite.grads), then
  SGD with momentum / weight decay exactly as torch.optim.SGD (dampening 0, not Nesterov);
  trainable parameters, momentum buffers and (bn="train") BN running statistics are resource
  variables; frozen parameters are constants;
- `infer`(inputs...) -> outputs: eval-mode forward with the current weights, any batch size;
- `get_weights`() / `set_weights`(...): the variables in PyTorch layout under short keys
  (w000, ...); details["weights"] maps each key to its PyTorch name (the app owns checkpoints:
  LiteRT has no builtin Save/Restore).
"""
from __future__ import annotations

from pathlib import Path

import tensorflow as tf
import torch
from torch import nn

from dcl_core.bundle import Artifact
from dcl_core.errors import ExportError
from exporters.base import Exporter, ExportJob
from exporters.spec import TensorSpec, TrainingSpec
from exporters.tflite.convert import convert, signature_specs
from exporters.tflite.grads import LOSSES
from exporters.tflite.graph import Program
from exporters.tflite.layers import BuildContext, WeightStore

_TF_DTYPES = {torch.float32: tf.float32, torch.int64: tf.int64, torch.int32: tf.int32}


def _tensor_spec(name: str, t: torch.Tensor, dynamic_batch: bool = False) -> tf.TensorSpec:
    if t.dtype not in _TF_DTYPES:
        raise ExportError(f"input {name} has dtype {t.dtype}; the TFLite exporter takes float32, int64 or int32")
    shape = [None if dynamic_batch and i == 0 else s for i, s in enumerate(t.shape)]
    return tf.TensorSpec(shape, _TF_DTYPES[t.dtype], name=name)


def _ordered(specs: list[TensorSpec], names: list[str]) -> list[TensorSpec]:
    """Signature details come back sorted by name; the manifest lists them in call order."""
    by_name = {s.name: s for s in specs}
    return [by_name[n] for n in names]


class TrainingModule(tf.Module):
    """Variables and the four training-artifact signatures."""

    def __init__(self, program: Program, store: WeightStore, spec: TrainingSpec, output_names: list[str]):
        super().__init__()
        self.program, self.spec, self.output_names = program, spec, output_names
        self.weights = store.weights
        self.state = [w.var for w in store.weights]  # tracked, so the SavedModel (hence TFLite) owns them
        self.params = [w for w in store.weights if w.kind == "param"]
        self.momentum = [tf.Variable(tf.zeros_like(w.var), trainable=False, name=f"momentum_{i}")
                         for i, w in enumerate(self.params)] if spec.momentum else []
        self.keys = [f"w{i:03d}" for i in range(len(store.weights))]

    def train(self, *args: tf.Tensor) -> dict[str, tf.Tensor]:
        inputs, y = list(args[:-1]), args[-1]
        with tf.GradientTape() as tape:
            loss = LOSSES[self.spec.loss](self.program(inputs, train=True)[0], y)
        self._sgd(tape.gradient(loss, [w.var for w in self.params]))
        return {"loss": loss}

    def _sgd(self, gradients: list[tf.Tensor]) -> None:
        """torch.optim.SGD: d = g + wd * w; buf = momentum * buf + d (buf starts at 0, so the
        first step gives buf = d as torch does); w -= lr * buf."""
        lr, wd, m = self.spec.lr, self.spec.weight_decay, self.spec.momentum
        for i, (w, g) in enumerate(zip(self.params, gradients)):
            if g is None:  # unused in the forward: torch.optim.SGD skips it too
                continue
            d = g + wd * w.var if wd else g
            if m:
                d = m * self.momentum[i] + d
                self.momentum[i].assign(d)
            w.var.assign_sub(lr * d)

    def infer(self, *inputs: tf.Tensor) -> dict[str, tf.Tensor]:
        return dict(zip(self.output_names, self.program(list(inputs), train=False)))

    def get_weights(self) -> dict[str, tf.Tensor]:
        return {k: w.to_torch() for k, w in zip(self.keys, self.weights)}

    def set_weights(self, *values: tf.Tensor) -> dict[str, tf.Tensor]:
        for w, v in zip(self.weights, values):
            w.assign_from_torch(v)
        return {"count": tf.constant(len(values), tf.int32)}


class TFLiteExporter(Exporter):
    format = "tflite"

    def export_inference(self, job: ExportJob) -> Artifact:
        model = job.model.eval()
        program = Program(model, BuildContext(WeightStore(model, trainable=set()), bn_train=set()))
        module = tf.Module()
        specs = [_tensor_spec(n, t) for n, t in zip(job.input_names, job.inputs)]
        fn = tf.function(lambda *xs: dict(zip(job.output_names, program(list(xs), train=False))), input_signature=specs)
        data = convert(module, {"serving_default": fn.get_concrete_function()}, f"{job.name} (inference)")
        inputs, outputs = signature_specs(data, "serving_default")
        return Artifact(name=job.name, path=self._write(job, data), format=self.format, kind="inference",
                        inputs=_ordered(inputs, job.input_names), outputs=_ordered(outputs, job.output_names),
                        details={"signature": "serving_default", "layout": "inputs as in PyTorch (NCHW)"})

    def export_training(self, job: ExportJob) -> Artifact:
        if job.spec is None or job.target is None:
            raise ExportError("a TFLite training export needs a TrainingSpec and a target batch")
        if job.spec.optimizer != "sgd":
            raise ExportError(f"optimizer {job.spec.optimizer!r}: the TFLite training program implements sgd only")
        model = job.model.eval()
        _check_loss_shapes(model, job)
        trainable = job.spec.trainable_names(model)
        store = WeightStore(model, set(trainable))
        program = Program(model, BuildContext(store, job.spec.batch_statistics_layers(model, trainable)))
        for name in trainable:  # parameters the forward never uses still round-trip, unchanged as in torch
            store.param(name)
        module = TrainingModule(program, store, job.spec, job.output_names)
        data = convert(module, self._training_signatures(module, job), f"{job.name} (training)")
        names = job.input_names + [job.target_name]
        inputs, _ = signature_specs(data, "train")
        _, outputs = signature_specs(data, "infer")
        details = {
            "signatures": {s: s for s in ("train", "infer", "get_weights", "set_weights")},
            "train_outputs": ["loss"],
            "weights": [{"key": k, "name": w.name, "kind": w.kind, "shape": w.torch_shape}
                        for k, w in zip(module.keys, module.weights)],
            "bn": job.spec.bn,
            "layout": "inputs and weights as in PyTorch (NCHW, OIHW)",
        }
        return Artifact(name=job.name, path=self._write(job, data), format=self.format, kind="training",
                        inputs=_ordered(inputs, names), outputs=_ordered(outputs, job.output_names),
                        details=details)

    @staticmethod
    def _training_signatures(module: TrainingModule, job: ExportJob) -> dict:
        inputs = [_tensor_spec(n, t) for n, t in zip(job.input_names, job.inputs)]
        target = _tensor_spec(job.target_name, job.target)
        infer_inputs = [_tensor_spec(n, t, dynamic_batch=True) for n, t in zip(job.input_names, job.inputs)]
        weights = [tf.TensorSpec(w.torch_shape, tf.float32, name=k) for k, w in zip(module.keys, module.weights)]
        return {
            "train": tf.function(module.train, input_signature=inputs + [target]).get_concrete_function(),
            "infer": tf.function(module.infer, input_signature=infer_inputs).get_concrete_function(),
            "get_weights": tf.function(module.get_weights, input_signature=[]).get_concrete_function(),
            "set_weights": tf.function(module.set_weights, input_signature=weights).get_concrete_function(),
        }

    def _write(self, job: ExportJob, data: bytes) -> str:
        rel = f"{job.name}.tflite"
        Path(job.bundle, rel).write_bytes(data)
        return rel


def _check_loss_shapes(model: nn.Module, job: ExportJob) -> None:
    """The loss needs one output shaped as the target (class ids: (N, C) logits vs (N,));
    checked on the PyTorch side so the error is one clear line, not a TF tracing trace."""
    with torch.no_grad():
        out = model(*job.inputs)
    if not isinstance(out, torch.Tensor):
        raise ExportError(f"the model returns {type(out).__name__}; a TFLite training export needs one tensor")
    got, target = list(out.shape), list(job.target.shape)
    ok = (out.dim() == 2 and target == got[:1]) if job.spec.loss == "cross_entropy" else got == target
    if not ok:
        raise ExportError(f"{job.spec.loss} loss cannot take model output {got} with target {target} "
                          f"({'(N, C) logits and (N,) class ids' if job.spec.loss == 'cross_entropy' else 'equal shapes'})")
