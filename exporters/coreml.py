"""Core ML: inference as an ML program (.mlpackage), on-device training as an updatable neural
network (.mlmodel).

Nothing Core ML can be compiled or run on Linux, so on Linux (and for training everywhere, see
`runnable_here`) the gate calls `validate_structure`, which checks the spec with coremltools:
signature, MIL ops and fp32 precision, and for training the rules Apple's compiler enforces on
updatable networks plus agreement with the PyTorch model.

Conversion goes through `torch.export` (coremltools' "TorchExport" frontend), not `torch.jit.trace`:
a trace keeps PadLogits' shape arithmetic, whose `aten::Int` coremltools 9 cannot convert.

On-device training. Only neural-network specs can be updatable (MLUpdateTask), and Apple's
validator (coremltools mlmodel/src/Validation/NeuralNetwork/UpdatableNeuralNetworkValidator.cpp,
NeuralNetworkValidatorGraph.hpp) allows:
- updatable layers: convolution and innerProduct only, weights and bias both updatable;
- backpropagation, between the loss and every updatable layer, only through convolution,
  innerProduct, flatten, pooling, batchnorm and ReLU/sigmoid/tanh activations (and a `softmax`
  feeding a cross-entropy loss). Add, multiply (hardswish), reshape, concat, padding block it;
- losses: categorical cross-entropy on a channel-axis `softmax` layer, or mean squared error;
- optimizers: SGD (learning rate, mini-batch size, momentum) or Adam; no weight decay.
What this exporter supports within that:
- updatable set: the head (the innerProduct producing the output) plus the nearest trainable
  weight layer before it (a model's last conv, or an MLP's hidden layer), as far as
  backpropagation reaches; BatchNorm is kept unfolded so an updatable conv holds exactly
  PyTorch's weights. `artifact.trainable` names exactly these PyTorch parameters.
- losses: cross_entropy -> categorical cross-entropy; mse -> MSE on the head's output;
  bce_with_logits -> categorical cross-entropy over two logits (-z/2, z/2), which equals BCE for
  0/1 targets (see `_two_class_head`).
- optimizer: SGD with lr, momentum and the spec's batch size, 1 epoch; weight_decay > 0 fails.
  (That Core ML's momentum is PyTorch's heavy-ball form, as the proto suggests, cannot be checked
  off macOS; both forms agree for a constant learning rate.)
Core ML trains per sample: every feature is one example (batch dimension 1) and the update task
groups `mini_batch_size` of them into one step.
"""
from __future__ import annotations

import contextlib
import io
import math
import sys
from collections import Counter, deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from exporters.base import ExportJob, Exporter
from exporters.manifest import Artifact, Validation
from exporters.spec import TensorSpec, TrainingSpec
from toolkit.errors import ExportError, TrainingNotExpressible

DEPLOYMENT_TARGET = "iOS16"  # iPhone 13-15 all run iOS 16+; ML programs need iOS 15+
MAX_UPDATABLE = 2  # head + one weight layer before it: the last conv of a CNN, an MLP's hidden layer
# Layers Core ML can backpropagate through (Apple's isLayerSupportedForBackprop)
BACKPROP_LAYERS = {"convolution", "innerProduct", "flatten", "pooling", "batchnorm"}
BACKPROP_ACTIVATIONS = {"ReLU", "sigmoid", "tanh"}
WEIGHT_LAYERS = {"convolution", "innerProduct"}
# Layers that only reshape the logits on their way to the model output
SHAPE_LAYERS = {"squeeze", "reshapeStatic", "expandDims", "flatten"}
LOSS_NAME = "loss"
# spec loss -> Core ML loss layer (bce_with_logits as 2-class cross-entropy, see _two_class_head)
_LOSS_KINDS = {"cross_entropy": "categoricalCrossEntropyLossLayer", "bce_with_logits": "categoricalCrossEntropyLossLayer",
               "mse": "meanSquaredErrorLossLayer"}
# bce_with_logits as 2-class cross-entropy: logits s*(W0 h + b0), s*(W1 h + b1), see _two_class_head
BCE_SCALE = 1.0 / math.sqrt(2.0)
BN_EPS = 1e-5


class CoreMLExporter(Exporter):
    format = "coreml"

    def export_inference(self, job: ExportJob) -> Artifact:
        mlmodel = _convert(job.model, job.inputs, job.input_names, job.output_names, "mlprogram")
        rel = f"{job.name}.mlpackage"
        mlmodel.save(str(job.bundle / rel))
        outputs = _torch_outputs(job.model, job.inputs)
        return Artifact(
            name=job.name, path=rel, format=self.format, kind="inference",
            inputs=[TensorSpec(n, list(t.shape), _MLPROGRAM_DTYPES[t.dtype]) for n, t in zip(job.input_names, job.inputs)],
            outputs=[TensorSpec(n, list(o.shape), "float32") for n, o in zip(job.output_names, outputs)],
            details={"model_type": "mlProgram", "deployment_target": DEPLOYMENT_TARGET,
                     "spec_version": mlmodel.get_spec().specificationVersion, "compute_precision": "float32",
                     "compute_units": "cpuOnly for parity (the GPU and Neural Engine compute in fp16)",
                     "source_dtypes": _changed_dtypes(job, _MLPROGRAM_DTYPES)})

    def export_training(self, job: ExportJob) -> Artifact:
        spec = _require_spec(job)
        _check_supported(spec, job)
        sample = tuple(t[:1] for t in job.inputs)  # Core ML trains per example; see module docstring
        mlmodel = _convert(job.model, sample, job.input_names, job.output_names, "neuralnetwork")
        model_spec = mlmodel.get_spec()
        shapes = _blob_shapes(mlmodel)
        out_shape = list(_torch_outputs(job.model, sample)[0].shape)
        plan = _plan_updatable(model_spec, shapes, job, spec)
        _rewrite_tail(model_spec, plan, shapes, job.output_names[0], out_shape, spec.loss)
        _add_training(model_spec, plan, job, spec)
        rel = f"{job.name}.mlmodel"
        _save_spec(model_spec, job.bundle / rel)
        updatable = {n for names in plan.params.values() for n in names}
        return Artifact(
            name=job.name, path=rel, format=self.format, kind="training",
            inputs=_training_inputs(job, sample, spec.loss, plan),
            outputs=[TensorSpec(job.output_names[0], out_shape, "float32")],
            trainable=[n for n in spec.trainable_names(job.model) if n in updatable],
            details={"model_type": "neuralNetwork", "spec_version": model_spec.specificationVersion,
                     "updatable_layers": plan.params, "loss_layer": LOSS_NAME, "loss_input": plan.loss_input,
                     "target": job.target_name, "mini_batch_size": spec.batch_size, "epochs": 1,
                     "per_example_features": True, "backprop_stops_at": plan.stop,
                     "head_reparametrization": plan.reparam,
                     "source_dtypes": _changed_dtypes(job, _NN_DTYPES)})

    def runnable_here(self, kind: str) -> tuple[bool, str]:
        if sys.platform != "darwin":
            return False, f"Core ML runs only on macOS (this machine is {sys.platform})"
        if kind == "training":
            return False, ("Core ML updates models only through MLUpdateTask (Swift/Objective-C), which "
                           "coremltools does not expose to Python; the iOS app runs it")
        return True, ""

    def validate_structure(self, artifact: Artifact, job: ExportJob) -> Validation:
        import coremltools as ct

        try:
            spec = ct.utils.load_spec(str(job.bundle / artifact.path))
        except Exception as e:  # noqa: BLE001 - an unreadable spec is a structural failure, not a crash
            return Validation(True, False, f"cannot load {artifact.path}: {type(e).__name__}: {_first_line(e)}")
        checks = _inference_checks if artifact.kind == "inference" else _training_checks
        passed: list[str] = []
        for name, check in checks(spec, artifact, job):
            failure = check()
            if failure:
                return Validation(True, False, f"{name}: {failure}" + (f" (passed: {', '.join(passed)})" if passed else ""))
            passed.append(name)
        return Validation(True, True, f"{len(passed)} checks passed: {', '.join(passed)}")


# ---------------------------------------------------------------- conversion

# Core ML feature dtypes: ML programs take int32 (not int64) ids; neural networks take float arrays only
_MLPROGRAM_DTYPES = {torch.float32: "float32", torch.int64: "int32", torch.int32: "int32"}
_NN_DTYPES = {torch.float32: "float32", torch.int64: "float32", torch.int32: "float32"}


def _convert(model: torch.nn.Module, inputs: tuple[torch.Tensor, ...], input_names: list[str],
             output_names: list[str], convert_to: str):
    import coremltools as ct

    np_dtypes = {"float32": np.float32, "int32": np.int32}
    ct_inputs = [ct.TensorType(name=n, shape=tuple(t.shape), dtype=np_dtypes[_MLPROGRAM_DTYPES[t.dtype]])
                 for n, t in zip(input_names, inputs)]
    if convert_to == "mlprogram":
        options = dict(compute_precision=ct.precision.FLOAT32,
                       minimum_deployment_target=getattr(ct.target, DEPLOYMENT_TARGET))
    else:
        # an updatable conv must hold PyTorch's weights, not weights with BatchNorm folded in
        pipeline = ct.PassPipeline.DEFAULT
        pipeline.remove_passes(["common::fuse_conv_batchnorm"])
        options = dict(pass_pipeline=pipeline)
    try:
        program = torch.export.export(model.eval(), inputs).run_decompositions({})
        return ct.convert(program, inputs=ct_inputs, outputs=[ct.TensorType(name=n) for n in output_names],
                          convert_to=convert_to, **options)
    except Exception as e:  # noqa: BLE001 - torch.export / coremltools raise many types; one line for the user
        raise ExportError(f"coremltools could not convert the model to a Core ML {convert_to}: "
                          f"{type(e).__name__}: {_first_line(e)}") from e


def _torch_outputs(model: torch.nn.Module, inputs: tuple[torch.Tensor, ...]) -> list[torch.Tensor]:
    with torch.no_grad():
        out = model.eval()(*inputs)
    return [out] if isinstance(out, torch.Tensor) else list(out)


def _changed_dtypes(job: ExportJob, mapping: dict) -> dict[str, str]:
    """Inputs whose PyTorch dtype differs from the Core ML feature's (apps cast before feeding)."""
    from exporters.spec import DTYPES

    return {n: DTYPES[t.dtype] for n, t in zip(job.input_names, job.inputs) if DTYPES[t.dtype] != mapping[t.dtype]}


def _blob_shapes(mlmodel) -> dict[str, tuple[int, ...]]:
    """Static shapes of every blob, from the MIL program the neural network was translated from
    (the NN spec itself does not record intermediate shapes)."""
    shapes = {}
    for op in mlmodel._mil_program.functions["main"].operations:
        for out in op.outputs:
            shapes[out.name] = tuple(int(d) for d in out.shape)
    return shapes


def _save_spec(spec, path: Path) -> None:
    import coremltools as ct

    ct.utils.save_spec(spec, str(path))


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else "no message"


# ---------------------------------------------------------------- training: what can train

def _require_spec(job: ExportJob) -> TrainingSpec:
    if job.spec is None:
        raise ExportError("a Core ML training export needs a TrainingSpec")
    return job.spec


def _check_supported(spec: TrainingSpec, job: ExportJob) -> None:
    if spec.loss not in _LOSS_KINDS:
        raise ExportError(f"Core ML training supports losses {sorted(_LOSS_KINDS)}, not {spec.loss!r}")
    if spec.optimizer != "sgd":
        raise ExportError(f"Core ML training supports optimizer 'sgd' here, not {spec.optimizer!r}")
    if spec.weight_decay:
        raise TrainingNotExpressible(f"Core ML's SGD has no weight decay (spec has weight_decay={spec.weight_decay}); "
                          "set it to 0 for the coreml format")
    if not 0.0 <= spec.momentum < 1.0:
        raise ExportError(f"Core ML's SGD momentum must be in [0, 1), spec has {spec.momentum}")
    if len(job.output_names) != 1:
        raise ExportError(f"Core ML training needs a model with one output (the loss input), this one has "
                          f"{len(job.output_names)}: {job.output_names}")
    if spec.loss == "bce_with_logits" and job.target is not None and not bool(((job.target == 0) | (job.target == 1)).all()):
        raise ExportError("Core ML trains bce_with_logits as 2-class cross-entropy, which needs 0/1 targets; "
                          "the training batches have soft labels")


@dataclass
class _Plan:
    head: Any  # the innerProduct layer producing the output
    trailing: list[str]  # shape-only layers between the head and the model output (replaced)
    params: dict[str, list[str]]  # updatable Core ML layer -> its PyTorch parameter names, head first
    stop: str  # where backpropagation stops (why nothing before it is updatable)
    loss_input: str = ""
    reparam: dict | None = None


def _plan_updatable(model_spec, shapes: dict, job: ExportJob, spec: TrainingSpec) -> _Plan:
    nn = model_spec.neuralNetwork
    producer = _producers(nn)
    head, trailing = _find_head(producer, job.output_names[0])
    _read_pooled_blob(head, producer, shapes)
    chain, stop = _backprop_chain(head, producer)
    torch_params = {n: p.detach().numpy() for n, p in job.model.named_parameters()}
    trainable = set(spec.trainable_names(job.model))
    params: dict[str, list[str]] = {}
    for layer in chain:
        names = _torch_names(layer, torch_params) if layer.WhichOneof("layer") in WEIGHT_LAYERS else None
        if names and set(names) <= trainable:
            params[layer.name] = names
            if len(params) == MAX_UPDATABLE:
                break
    if not params:
        raise TrainingNotExpressible(f"Core ML cannot train this model: backpropagation from the loss stops at {stop} before "
                          f"reaching a trainable layer (Core ML backpropagates only through convolution, innerProduct, "
                          f"flatten, pooling, batchnorm and ReLU/sigmoid/tanh); trainable: {sorted(spec.trainable)}")
    earliest = next(layer for layer in reversed(chain) if layer.name in params)  # chain runs head first
    if len(shapes.get(earliest.input[0], ())) not in (2, 4):
        raise ExportError(f"Core ML training: layer {earliest.name!r} reads a rank-{len(shapes.get(earliest.input[0], ()))} "
                          "tensor; only [N, C] or [N, C, H, W] inputs to the trainable layers are supported")
    return _Plan(head=head, trailing=trailing, params=params, stop=stop)


def _producers(nn) -> dict[str, Any]:
    return {out: layer for layer in nn.layers for out in layer.output}


def _find_head(producer: dict, output: str) -> tuple[Any, list[str]]:
    """The innerProduct whose values become the output, and the shape-only layers after it."""
    trailing, layer = [], producer.get(output)
    if layer is None:
        raise ExportError(f"Core ML training: the output {output!r} is not computed by any layer")
    while layer.WhichOneof("layer") in SHAPE_LAYERS and layer.input[0] in producer:
        trailing.append(layer.name)
        layer = producer[layer.input[0]]
    if layer.WhichOneof("layer") != "innerProduct":
        raise TrainingNotExpressible(f"Core ML cannot train this model: its output {output!r} comes from {_describe(layer)}, and "
                          "Core ML backpropagates only through convolution, innerProduct, flatten, pooling, batchnorm "
                          "and ReLU/sigmoid/tanh, so no layer before it can be updatable")
    return layer, trailing


def _read_pooled_blob(head, producer: dict, shapes: dict) -> None:
    """Let the head read a [N, C, 1, 1] blob directly instead of its flattened [N, C] copy: an
    innerProduct computes the same values from either, and a reshape would stop backpropagation."""
    layer = producer.get(head.input[0])
    if layer is None or layer.WhichOneof("layer") not in SHAPE_LAYERS - {"flatten"}:
        return
    source = shapes.get(layer.input[0], ())
    if len(source) == 4 and source[2:] == (1, 1):
        head.input[0] = layer.input[0]


def _backprop_chain(head, producer: dict) -> tuple[list, str]:
    """Layers from the head back to the first one Core ML cannot backpropagate through."""
    chain, layer = [head], head
    while layer.input[0] in producer:
        parent = producer[layer.input[0]]
        if not _backpropagable(parent):
            return chain, _describe(parent)
        chain.append(parent)
        layer = parent
    return chain, f"the model input {layer.input[0]!r}"


def _backpropagable(layer) -> bool:
    kind = layer.WhichOneof("layer")
    if kind == "activation":
        return layer.activation.WhichOneof("NonlinearityType") in BACKPROP_ACTIVATIONS
    return kind in BACKPROP_LAYERS


def _describe(layer) -> str:
    return f"{layer.name!r} ({layer.WhichOneof('layer')})"


def _weights(wp, shape: tuple[int, ...]) -> np.ndarray:
    if len(wp.floatValue):
        return np.asarray(wp.floatValue, dtype=np.float32).reshape(shape)
    return np.frombuffer(wp.rawValue, dtype=np.float32).reshape(shape)


def _layer_weight(layer) -> tuple[np.ndarray, np.ndarray | None]:
    """A weight layer's (weight, bias) in PyTorch layout: Linear (out, in), Conv2d (O, I/groups, kH, kW)."""
    if layer.WhichOneof("layer") == "innerProduct":
        p = layer.innerProduct
        w = _weights(p.weights, (p.outputChannels, p.inputChannels))
        return w, _weights(p.bias, (p.outputChannels,)) if p.hasBias else None
    p = layer.convolution
    w = _weights(p.weights, (p.outputChannels, p.kernelChannels, *p.kernelSize))
    return w, _weights(p.bias, (p.outputChannels,)) if p.hasBias else None


def _torch_names(layer, torch_params: dict[str, np.ndarray]) -> list[str] | None:
    """The PyTorch parameters a Core ML weight layer holds, found by value (Core ML renames layers;
    fp32 conversion keeps weights bit-exact). None when no single module matches."""
    w, b = _layer_weight(layer)
    hits = [n for n, p in torch_params.items() if n.endswith("weight") and p.shape == w.shape and np.array_equal(p, w)]
    if len(hits) != 1:
        return None
    prefix = hits[0][: -len("weight")]
    bias = torch_params.get(prefix + "bias")
    if (bias is None) != (b is None) or (b is not None and not np.array_equal(bias, b)):
        return None
    return [hits[0]] + ([prefix + "bias"] if b is not None else [])


# ---------------------------------------------------------------- training: rewriting the tail

def _rewrite_tail(model_spec, plan: _Plan, shapes: dict, output: str, out_shape: list[int], loss: str) -> None:
    """Run the trainable tail in Core ML's channel layout [1, C, 1, 1] (a `softmax` layer
    normalises axis -3; innerProduct maps [N, C, 1, 1] to [N, C', 1, 1]), then feed the loss and
    rebuild the prediction output from the head. Layers are edited as copies, then replace the list."""
    from coremltools.proto import NeuralNetwork_pb2 as pb

    nn = model_spec.neuralNetwork
    layers = [_copy(pb, layer) for layer in nn.layers if layer.name not in plan.trailing]
    _to_channel_layout(pb, layers, plan, shapes)
    plan.head = next(layer for layer in layers if layer.name == plan.head.name)
    layers += _loss_and_output_layers(pb, plan, output, out_shape, loss)
    layers = _without_dead(layers, {d.name for d in model_spec.description.output} | {plan.loss_input})
    del nn.layers[:]
    nn.layers.extend(layers)
    for d in model_spec.description.output:
        if d.name == output:
            del d.type.multiArrayType.shape[:]
            d.type.multiArrayType.shape.extend(out_shape)


def _copy(pb, layer):
    out = pb.NeuralNetworkLayer()
    out.CopyFrom(layer)
    return out


def _to_channel_layout(pb, layers: list, plan: _Plan, shapes: dict) -> None:
    """Reshape an [N, C] input of the earliest updatable layer to [N, C, 1, 1]; the reshape sits
    before every updatable layer, where it does not need to backpropagate."""
    earliest = next(layer for layer in layers if layer.name in plan.params)  # layers are in topological order
    source = earliest.input[0]
    if len(shapes[source]) == 2:
        reshaped = f"{source}_nchw"
        layers.insert(layers.index(earliest), _reshape(pb, f"{source}_to_nchw", source, reshaped, [*shapes[source], 1, 1]))
        earliest.input[0] = reshaped


def _loss_and_output_layers(pb, plan: _Plan, output: str, out_shape: list[int], loss: str) -> list:
    """New layers after the head: the loss input (softmax probabilities, or the head's output for
    MSE) and the prediction output at its PyTorch shape (off the loss path, so a reshape is fine)."""
    logits = f"{output}_per_class"
    plan.head.output[0] = logits
    layers = []
    if loss == "bce_with_logits":
        plan.reparam = _two_class_head(plan.head)
        scaled = f"{output}_scaled"
        layers += [_batchnorm_scale(pb, f"{output}_scale", logits, scaled, BCE_SCALE, 2),
                   _difference(pb, f"{output}_difference", scaled, f"{output}_z"),
                   _reshape(pb, f"{output}_reshape", f"{output}_z", output, out_shape)]
        logits = scaled
    else:
        layers.append(_reshape(pb, f"{output}_reshape", logits, output, out_shape))
    if loss == "mse":
        plan.loss_input = logits
    else:
        plan.loss_input = f"{output}_probabilities"
        layers.append(_softmax(pb, f"{output}_softmax", logits, plan.loss_input))
    return layers


def _two_class_head(head) -> dict:
    """bce_with_logits as 2-class cross-entropy: the head's single logit z = w.h + b becomes two
    logits s*(W0 h + b0), s*(W1 h + b1) with W1 = -W0 = w/(2s), so softmax(.)[1] = sigmoid(z) and
    -log softmax(.)[y] = BCE(z, y) for y in {0, 1}. The fixed scale s = 1/sqrt(2) (a frozen
    batchnorm) makes SGD on W0, W1 move w = s*(W1 - W0) exactly as SGD moves w in PyTorch (each of
    W0, W1 gets s times the gradient, their difference 2*s^2 = 1 times), and passes the right
    gradient to the layers below, so the hidden layer trains with the same learning rate."""
    p = head.innerProduct
    w, b = _layer_weight(head)
    half = 1.0 / (2.0 * BCE_SCALE)
    p.outputChannels = 2
    _set_weights(p.weights, np.concatenate([-w * half, w * half]))
    if b is not None:
        _set_weights(p.bias, np.concatenate([-b * half, b * half]))
    return {"layer": head.name, "scale": BCE_SCALE,
            "pytorch_weight": "scale * (weights[1] - weights[0])", "pytorch_bias": "scale * (bias[1] - bias[0])"}


def _set_weights(wp, values: np.ndarray) -> None:
    wp.ClearField("rawValue")
    del wp.floatValue[:]
    wp.floatValue.extend(values.astype(np.float32).reshape(-1).tolist())


def _reshape(pb, name: str, src: str, dst: str, shape: list[int]):
    layer = pb.NeuralNetworkLayer(name=name, input=[src], output=[dst])
    layer.reshapeStatic.targetShape.extend(shape)
    return layer


def _softmax(pb, name: str, src: str, dst: str):
    layer = pb.NeuralNetworkLayer(name=name, input=[src], output=[dst])
    layer.softmax.SetInParent()
    return layer


def _batchnorm_scale(pb, name: str, src: str, dst: str, scale: float, channels: int):
    """A frozen per-channel scale that Core ML can backpropagate through (a batchnorm layer)."""
    layer = pb.NeuralNetworkLayer(name=name, input=[src], output=[dst])
    bn = layer.batchnorm
    bn.channels, bn.epsilon = channels, BN_EPS
    bn.gamma.floatValue.extend([float(np.float32(scale * math.sqrt(1.0 + BN_EPS)))] * channels)
    bn.beta.floatValue.extend([0.0] * channels)
    bn.mean.floatValue.extend([0.0] * channels)
    bn.variance.floatValue.extend([1.0] * channels)
    return layer


def _difference(pb, name: str, src: str, dst: str):
    """z = logit1 - logit0: a frozen innerProduct, off the loss path (the prediction output only)."""
    layer = pb.NeuralNetworkLayer(name=name, input=[src], output=[dst])
    p = layer.innerProduct
    p.inputChannels, p.outputChannels, p.hasBias = 2, 1, False
    p.weights.floatValue.extend([-1.0, 1.0])
    return layer


def _without_dead(layers: list, needed: set[str]) -> list:
    """Drop layers whose outputs nothing reads (the reshape the head no longer uses)."""
    while True:
        read = needed | {i for layer in layers for i in layer.input}
        alive = [layer for layer in layers if any(o in read for o in layer.output)]
        if len(alive) == len(layers):
            return layers
        layers = alive


def _add_training(model_spec, plan: _Plan, job: ExportJob, spec: TrainingSpec) -> None:
    from coremltools.models import datatypes
    from coremltools.models.neural_network import NeuralNetworkBuilder, SgdParams

    target = job.target_name
    blobs = {o for layer in model_spec.neuralNetwork.layers for o in layer.output} | set(job.input_names)
    if target in blobs:
        raise ExportError(f"Core ML training target name {target!r} collides with a blob of the converted network")
    with contextlib.redirect_stdout(io.StringIO()):  # the builder prints one line per call
        builder = NeuralNetworkBuilder(spec=model_spec)
        builder.make_updatable(list(plan.params))
        if spec.loss == "mse":
            shape = _loss_input_shape(plan)
            builder.set_mean_squared_error_loss(LOSS_NAME, input_feature=(plan.loss_input, datatypes.Array(*shape)))
        else:
            builder.set_categorical_cross_entropy_loss(LOSS_NAME, input=plan.loss_input)
        sgd = SgdParams(lr=spec.lr, batch=spec.batch_size, momentum=spec.momentum)
        sgd.set_lr(spec.lr, 0.0, max(1.0, spec.lr))
        builder.set_sgd_optimizer(sgd)
        builder.set_epochs(1)
    update = model_spec.neuralNetwork.updateParams
    # each update call gets exactly the batches the app passes, in order, like the PyTorch loop
    update.shuffle.defaultValue = False
    loss = update.lossLayers[0]
    getattr(loss, loss.WhichOneof("LossLayerType")).target = target
    model_spec.description.trainingInput[-1].name = target


def _loss_input_shape(plan: _Plan) -> list[int]:
    """MSE target shape: the head's output in the channel layout, [1, C, 1, 1]."""
    return [1, int(plan.head.innerProduct.outputChannels), 1, 1]


def _training_inputs(job: ExportJob, sample: tuple[torch.Tensor, ...], loss: str, plan: _Plan) -> list[TensorSpec]:
    """The features of one training example: the model inputs (neural networks take float arrays
    only, so ids arrive as floats) and the target: a class index, or the head's output for MSE."""
    inputs = [TensorSpec(n, list(t.shape), _NN_DTYPES[t.dtype]) for n, t in zip(job.input_names, sample)]
    if loss == "mse":
        return inputs + [TensorSpec(job.target_name, _loss_input_shape(plan), "float64")]
    return inputs + [TensorSpec(job.target_name, [1], "int32")]


# ---------------------------------------------------------------- structural validation

_FEATURE_DTYPES = {"FLOAT32": "float32", "DOUBLE": "float64", "INT32": "int32", "FLOAT16": "float16"}


def _features(descriptions) -> list[TensorSpec]:
    from coremltools.proto import FeatureTypes_pb2

    out = []
    for d in descriptions:
        t = d.type.multiArrayType
        out.append(TensorSpec(d.name, [int(s) for s in t.shape],
                              _FEATURE_DTYPES.get(FeatureTypes_pb2.ArrayFeatureType.ArrayDataType.Name(t.dataType), "?")))
    return out


def _compare_features(kind: str, got: list[TensorSpec], expected: list[TensorSpec]) -> str:
    g = [(t.name, list(t.shape), t.dtype) for t in got]
    e = [(t.name, list(t.shape), t.dtype) for t in expected]
    return "" if g == e else f"spec {kind} {g} != artifact {e}"


def _inference_checks(spec, artifact: Artifact, job: ExportJob):
    is_program = spec.WhichOneof("Type") == "mlProgram"
    ops = main_ops(spec) if is_program else []
    counts = Counter(op.type for op in ops)
    yield "ML program", lambda: "" if is_program else f"model type is {spec.WhichOneof('Type')}, not mlProgram"
    yield f"spec version >= 7 ({DEPLOYMENT_TARGET})", lambda: (
        "" if spec.specificationVersion >= 7 else f"spec version {spec.specificationVersion}")
    yield "inputs", lambda: _compare_features("inputs", _features(spec.description.input), artifact.inputs)
    yield "outputs", lambda: _compare_features("outputs", _features(spec.description.output), artifact.outputs)
    yield f"{len(ops)} MIL ops ({', '.join(f'{t} {n}' for t, n in counts.most_common(3))})", lambda: (
        "" if set(counts) - {"const"} else "the program has no compute op")
    yield "fp32 tensors", lambda: _fp16_tensors(ops)


def main_ops(spec) -> list:
    """The operations of an ML program's main function (top-level block)."""
    main = spec.mlProgram.functions["main"]
    return list(main.block_specializations[main.opset].operations)


def _fp16_tensors(ops) -> str:
    from coremltools.proto import MIL_pb2

    fp16 = [f"{op.type}:{o.name}" for op in ops for o in op.outputs
            if o.type.WhichOneof("type") == "tensorType" and o.type.tensorType.dataType == MIL_pb2.FLOAT16]
    return f"{len(fp16)} fp16 tensors, e.g. {fp16[:3]}" if fp16 else ""


def _training_checks(spec, artifact: Artifact, job: ExportJob):
    nn = spec.neuralNetwork if spec.WhichOneof("Type") == "neuralNetwork" else None
    yield "updatable neural network", lambda: (
        "" if nn is not None and spec.isUpdatable and spec.specificationVersion >= 4
        else f"type {spec.WhichOneof('Type')}, isUpdatable={spec.isUpdatable}, spec version {spec.specificationVersion}")
    yield "inputs", lambda: _compare_features(
        "training inputs", _features(spec.description.trainingInput), artifact.inputs)
    yield "outputs", lambda: _compare_features("outputs", _features(spec.description.output), artifact.outputs)
    yield "layer order", lambda: _check_order(nn, spec)
    yield "updatable layers", lambda: _check_updatable(nn, artifact, job)
    yield "backpropagation path", lambda: _check_backprop(nn)
    yield "loss", lambda: _check_loss(nn, spec, artifact, job)
    yield "optimizer", lambda: _check_optimizer(nn, job.spec)


def _check_order(nn, spec) -> str:
    """Core ML needs every layer's inputs defined before it (model inputs or earlier layers)."""
    defined = {d.name for d in spec.description.input}
    for layer in nn.layers:
        missing = [i for i in layer.input if i not in defined]
        if missing:
            return f"{_describe(layer)} reads {missing} before any layer produces them"
        defined.update(layer.output)
    return ""


def _check_updatable(nn, artifact: Artifact, job: ExportJob) -> str:
    """Exactly the planned layers are updatable, each fully (weights and bias), and each holds the
    PyTorch parameters it is named after, which the spec lets train."""
    planned = artifact.details.get("updatable_layers", {})
    marked = {layer.name: layer for layer in nn.layers if layer.isUpdatable}
    if set(marked) != set(planned):
        return f"updatable layers {sorted(marked)} != planned {sorted(planned)}"
    names = [n for ns in planned.values() for n in ns]
    if set(names) != set(artifact.trainable):
        return f"updatable layers hold {sorted(names)}, artifact.trainable is {sorted(artifact.trainable)}"
    allowed = set(job.spec.trainable_names(job.model))
    if not set(names) <= allowed:
        return f"{sorted(set(names) - allowed)} are updatable but the training spec freezes them"
    params = {n: p.detach().numpy() for n, p in job.model.named_parameters()}
    for name, layer in marked.items():
        failure = _check_layer(layer, planned[name], params, artifact.details.get("head_reparametrization"))
        if failure:
            return failure
    return ""


def _check_layer(layer, names: list[str], params: dict[str, np.ndarray], reparam: dict | None) -> str:
    kind = layer.WhichOneof("layer")
    if kind not in WEIGHT_LAYERS:
        return f"{_describe(layer)} is updatable; Core ML updates only convolution and innerProduct"
    p = getattr(layer, kind)
    if not p.weights.isUpdatable or (p.hasBias and not p.bias.isUpdatable):
        return f"{_describe(layer)} has weights or a bias not marked updatable"
    w, b = _layer_weight(layer)
    if reparam and reparam["layer"] == layer.name:  # see _two_class_head
        w = reparam["scale"] * (w[1:] - w[:1])
        b = None if b is None else reparam["scale"] * (b[1:] - b[:1])
    ref = [params[n] for n in names]
    got = [w] + ([b] if b is not None else [])
    if len(got) != len(ref) or any(g.shape != r.shape or not np.allclose(g, r, rtol=1e-5, atol=1e-6)
                                   for g, r in zip(got, ref)):
        return f"{_describe(layer)} does not hold the PyTorch parameters {names}"
    return ""


def _check_backprop(nn) -> str:
    """Apple's rule: walking back (breadth first) from the loss, no updatable layer may come after
    a layer that cannot backpropagate (a softmax right before a cross-entropy loss is allowed)."""
    producer = _producers(nn)
    for loss in nn.updateParams.lossLayers:
        kind = loss.WhichOneof("LossLayerType")
        queue, seen, blocker = deque([(loss.name, [getattr(loss, kind).input])]), set(), ""
        while queue:
            child, blobs = queue.popleft()
            for parent in (producer[b] for b in blobs if b in producer):
                if parent.name in seen:
                    continue
                seen.add(parent.name)
                queue.append((parent.name, list(parent.input)))
                if parent.isUpdatable and blocker:
                    return f"{blocker}, which cannot backpropagate, lies between the loss and updatable {parent.name!r}"
                softmax_before_loss = (parent.WhichOneof("layer") == "softmax" and child == loss.name
                                       and kind == "categoricalCrossEntropyLossLayer")
                if not _backpropagable(parent) and not softmax_before_loss:
                    blocker = blocker or _describe(parent)
    return ""


def _check_loss(nn, spec, artifact: Artifact, job: ExportJob) -> str:
    losses = list(nn.updateParams.lossLayers)
    if len(losses) != 1:
        return f"{len(losses)} loss layers; Core ML supports exactly one"
    loss = losses[0]
    kind = loss.WhichOneof("LossLayerType")
    if kind != _LOSS_KINDS[job.spec.loss]:
        return f"loss layer is {kind}, spec loss {job.spec.loss!r} needs {_LOSS_KINDS[job.spec.loss]}"
    params = getattr(loss, kind)
    producer = _producers(nn)
    source = producer.get(params.input)
    if source is None:
        return f"loss input {params.input!r} is not produced by the network"
    if kind == "categoricalCrossEntropyLossLayer" and source.WhichOneof("layer") != "softmax":
        return f"cross-entropy loss input {params.input!r} comes from {_describe(source)}, Core ML needs a softmax layer"
    target = artifact.details.get("target")
    if params.target != target or params.target in producer:
        return f"loss target {params.target!r} must be the external feature {target!r}"
    if params.target not in {d.name for d in spec.description.trainingInput}:
        return f"loss target {params.target!r} is not a training input"
    if not {d.name for d in spec.description.input} & {d.name for d in spec.description.trainingInput}:
        return "no model input is a training input"
    return ""


def _check_optimizer(nn, spec: TrainingSpec) -> str:
    update = nn.updateParams
    if update.optimizer.WhichOneof("OptimizerType") != "sgdOptimizer":
        return f"optimizer is {update.optimizer.WhichOneof('OptimizerType')}, spec asks for sgd"
    sgd = update.optimizer.sgdOptimizer
    got = (sgd.learningRate.defaultValue, sgd.momentum.defaultValue, sgd.miniBatchSize.defaultValue,
           update.epochs.defaultValue)
    want = (spec.lr, spec.momentum, spec.batch_size, 1)
    if not (math.isclose(got[0], want[0]) and math.isclose(got[1], want[1]) and got[2:] == want[2:]):
        return f"SGD lr/momentum/batch/epochs {got} != spec {want}"
    if not sgd.learningRate.range.minValue <= spec.lr <= sgd.learningRate.range.maxValue:
        return f"lr {spec.lr} outside its allowed range"
    if spec.batch_size not in sgd.miniBatchSize.set.values or 1 not in update.epochs.set.values:
        return "batch size or epochs outside their allowed sets"
    return ""

