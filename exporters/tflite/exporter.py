"""TFLiteExporter: the model's torch.export graph translated op by op to TF (exporters.tflite.
program), converted to builtin ops.

Inference: one `serving_default` signature, PyTorch-layout inputs (NCHW images are transposed
inside), static shapes of the example inputs.

Training: one .tflite with four signatures, all builtin ops (runs on the stock interpreter):
- `train`(inputs..., y) -> loss: forward (the graph captured at the training batch), builtin-only
  backward (exporters.tflite.grads), then SGD with momentum / weight decay exactly as
  torch.optim.SGD (dampening 0, not Nesterov); trainable parameters, momentum buffers and
  (bn="train") BN running statistics are resource variables; frozen parameters are constants.
  The BatchNorms `TrainingSpec.batch_statistics_layers` selects normalise with batch statistics
  there (the translation switches them; the captured graph is the eval one);
- `infer`(inputs...) -> outputs: eval-mode forward with the current weights, any batch size (a
  second capture with a dynamic batch);
- `get_weights`() / `set_weights`(...): the variables in PyTorch layout under short keys
  (w000, ...); details["weights"] maps each key to its PyTorch name (the app owns checkpoints:
  LiteRT has no builtin Save/Restore).
"""
from __future__ import annotations

from pathlib import Path

import tensorflow as tf
import torch
from torch import nn

from dcl_core.bundle import Artifact, TensorSpec
from dcl_core.errors import ExportError
from exporters.base import Exporter, ExportJob
from exporters.spec import TrainingSpec
from exporters.tflite.capture import capture
from exporters.tflite.convert import convert, signature_specs
from exporters.tflite.grads import LOSSES
from exporters.tflite.program import Program
from exporters.tflite.weights import WeightStore

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


def _function(fn, specs: list[tf.TensorSpec]):
    # autograph off: the interpreter is plain Python over a fixed graph, nothing to convert
    return tf.function(fn, input_signature=specs, autograph=False).get_concrete_function()


class TrainingModule(tf.Module):
    """Variables and the four training-artifact signatures."""

    def __init__(self, train: Program, infer: Program, store: WeightStore, spec: TrainingSpec,
                 output_names: list[str]):
        super().__init__()
        self.train_program, self.infer_program = train, infer
        self.spec, self.output_names = spec, output_names
        self.weights = store.weights
        self.state = [w.var for w in store.weights]  # tracked, so the SavedModel (hence TFLite) owns them
        self.params = [w for w in store.weights if w.kind == "param"]
        self.momentum = [tf.Variable(tf.zeros_like(w.var), trainable=False, name=f"momentum_{i}")
                         for i, w in enumerate(self.params)] if spec.momentum else []
        self.keys = [f"w{i:03d}" for i in range(len(store.weights))]

    def train(self, *args: tf.Tensor) -> dict[str, tf.Tensor]:
        inputs, y = list(args[:-1]), args[-1]
        with tf.GradientTape() as tape:
            loss = LOSSES[self.spec.loss](self.train_program(inputs, train=True)[0], y)
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
        return dict(zip(self.output_names, self.infer_program(list(inputs), train=False)))

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
        program = Program(capture(model, tuple(job.inputs)))
        program.store = WeightStore(program.state, params=[])
        specs = [_tensor_spec(n, t) for n, t in zip(job.input_names, job.inputs)]
        fn = _function(lambda *xs: dict(zip(job.output_names, program(list(xs), train=False))), specs)
        data = convert(tf.Module(), {"serving_default": fn}, f"{job.name} (inference)")
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
        batch_norm = _batch_norm_momenta(model, job.spec.batch_statistics_layers(model, trainable))
        inputs = tuple(job.inputs)
        train = Program(capture(model, inputs), batch_norm=batch_norm)
        infer = Program(capture(model, inputs, dynamic_batch=True))
        # parameters the forward never uses still get variables: they round-trip unchanged, as in torch
        store = WeightStore(train.state, params=trainable, layouts=train.layouts(),
                            buffers=[f"{m}.running_{s}" for m in batch_norm for s in ("mean", "var")])
        train.store = infer.store = store
        module = TrainingModule(train, infer, store, job.spec, job.output_names)
        data = convert(module, self._training_signatures(module, job, infer.dynamic_batch()),
                       f"{job.name} (training)")
        names = job.input_names + [job.target_name]
        inputs_spec, _ = signature_specs(data, "train")
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
                        inputs=_ordered(inputs_spec, names), outputs=_ordered(outputs, job.output_names),
                        details=details)

    @staticmethod
    def _training_signatures(module: TrainingModule, job: ExportJob, dynamic: list[bool]) -> dict:
        inputs = [_tensor_spec(n, t) for n, t in zip(job.input_names, job.inputs)]
        target = _tensor_spec(job.target_name, job.target)
        infer_inputs = [_tensor_spec(n, t, dynamic_batch=d) for n, t, d in zip(job.input_names, job.inputs, dynamic)]
        weights = [tf.TensorSpec(w.torch_shape, tf.float32, name=k) for k, w in zip(module.keys, module.weights)]
        return {
            "train": _function(module.train, inputs + [target]),
            "infer": _function(module.infer, infer_inputs),
            "get_weights": _function(module.get_weights, []),
            "set_weights": _function(module.set_weights, weights),
        }

    def _write(self, job: ExportJob, data: bytes) -> str:
        rel = f"{job.name}.tflite"
        Path(job.bundle, rel).write_bytes(data)
        return rel


def _batch_norm_momenta(model: nn.Module, layers: set[str]) -> dict[str, float]:
    """Momentum of each BatchNorm normalising with batch statistics (PyTorch's cumulative
    average, momentum=None, is not translated)."""
    out = {}
    for name in sorted(layers):
        m = model.get_submodule(name)
        if m.momentum is None or not m.track_running_stats:
            raise ExportError(f"BatchNorm {name} uses momentum=None or track_running_stats=False, which a TFLite "
                              "training program with bn='train' does not support")
        out[name] = float(m.momentum)
    return out


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
