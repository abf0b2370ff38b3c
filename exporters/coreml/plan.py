"""What Core ML can train: which layers of a converted neural network become updatable.

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
  0/1 targets (see `passes.TwoClassHead`).
- optimizer: SGD with lr, momentum and the spec's batch size, 1 epoch; weight_decay > 0 fails.
  (That Core ML's momentum is PyTorch's heavy-ball form, as the proto suggests, cannot be checked
  off macOS; both forms agree for a constant learning rate.)
Core ML trains per sample: every feature is one example (batch dimension 1) and the update task
groups `mini_batch_size` of them into one step.

Planning only reads the spec; `passes` rewrites it to carry the plan out.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from dcl_core.errors import ExportError, TrainingNotExpressible
from exporters.base import ExportJob
from exporters.spec import TrainingSpec

MAX_UPDATABLE = 2  # head + one weight layer before it: the last conv of a CNN, an MLP's hidden layer
# Layers Core ML can backpropagate through (Apple's isLayerSupportedForBackprop)
BACKPROP_LAYERS = {"convolution", "innerProduct", "flatten", "pooling", "batchnorm"}
BACKPROP_ACTIVATIONS = {"ReLU", "sigmoid", "tanh"}
_BACKPROP_RULE = ("Core ML backpropagates only through convolution, innerProduct, flatten, pooling, batchnorm "
                  "and ReLU/sigmoid/tanh")
WEIGHT_LAYERS = {"convolution", "innerProduct"}
# Layers that only reshape the logits on their way to the model output
SHAPE_LAYERS = {"squeeze", "reshapeStatic", "expandDims", "flatten"}
# spec loss -> Core ML loss layer (bce_with_logits as 2-class cross-entropy, see passes.TwoClassHead)
LOSS_KINDS = {"cross_entropy": "categoricalCrossEntropyLossLayer", "bce_with_logits": "categoricalCrossEntropyLossLayer",
              "mse": "meanSquaredErrorLossLayer"}


@dataclass(frozen=True)
class Plan:
    head: str  # the innerProduct layer producing the output
    head_input: str  # the blob the head is to read (its pooled [N, C, 1, 1] source where there is one)
    head_channels: int  # the head's output channels
    trailing: list[str]  # shape-only layers between the head and the model output (replaced)
    params: dict[str, list[str]]  # updatable Core ML layer -> its PyTorch parameter names, head first
    stop: str  # where backpropagation stops (why nothing before it is updatable)


def supported_spec(job: ExportJob) -> TrainingSpec:
    """The job's training spec, if Core ML can train it at all (before converting anything)."""
    spec = job.spec
    if spec is None:
        raise ExportError("a Core ML training export needs a TrainingSpec")
    if spec.loss not in LOSS_KINDS:
        raise ExportError(f"Core ML training supports losses {sorted(LOSS_KINDS)}, not {spec.loss!r}")
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
    binary = job.target is None or bool(((job.target == 0) | (job.target == 1)).all())
    if spec.loss == "bce_with_logits" and not binary:
        raise ExportError("Core ML trains bce_with_logits as 2-class cross-entropy, which needs 0/1 targets; "
                          "the training batches have soft labels")
    return spec


def plan_updatable(nn: Any, shapes: dict[str, tuple[int, ...]], job: ExportJob, spec: TrainingSpec) -> Plan:
    """The updatable layers of the neural network `nn`: up to MAX_UPDATABLE trainable weight
    layers on the backpropagation chain from the head, nearest first."""
    producer = producers(nn)
    head, trailing = _find_head(producer, job.output_names[0])
    head_input = _pooled_input(head, producer, shapes)
    chain, stop = _backprop_chain(head, head_input, producer)
    torch_params = {n: p.detach().numpy() for n, p in job.model.named_parameters()}
    trainable = set(spec.trainable_names(job.model))
    params: dict[str, list[str]] = {}
    for layer, _ in chain:
        names = _torch_names(layer, torch_params) if layer.WhichOneof("layer") in WEIGHT_LAYERS else None
        if names and set(names) <= trainable:
            params[layer.name] = names
            if len(params) == MAX_UPDATABLE:
                break
    if not params:
        raise TrainingNotExpressible(
            f"Core ML cannot train this model: backpropagation from the loss stops at {stop} before reaching a "
            f"trainable layer ({_BACKPROP_RULE}); trainable: {sorted(spec.trainable)}")
    # the chain runs head first: the last updatable layer on it is the earliest in the network
    earliest, source = next((layer, blob) for layer, blob in reversed(chain) if layer.name in params)
    if len(shapes.get(source, ())) not in (2, 4):
        raise ExportError(f"Core ML training: layer {earliest.name!r} reads a rank-{len(shapes.get(source, ()))} "
                          "tensor; only [N, C] or [N, C, H, W] inputs to the trainable layers are supported")
    return Plan(head=head.name, head_input=head_input, head_channels=int(head.innerProduct.outputChannels),
                trailing=trailing, params=params, stop=stop)


def producers(nn: Any) -> dict[str, Any]:
    """Blob name -> the layer that writes it."""
    return {out: layer for layer in nn.layers for out in layer.output}


def backpropagable(layer: Any) -> bool:
    kind = layer.WhichOneof("layer")
    if kind == "activation":
        return layer.activation.WhichOneof("NonlinearityType") in BACKPROP_ACTIVATIONS
    return kind in BACKPROP_LAYERS


def describe(layer: Any) -> str:
    return f"{layer.name!r} ({layer.WhichOneof('layer')})"


def layer_weight(layer: Any) -> tuple[np.ndarray, np.ndarray | None]:
    """A weight layer's (weight, bias) in PyTorch layout: Linear (out, in), Conv2d (O, I/groups, kH, kW)."""
    if layer.WhichOneof("layer") == "innerProduct":
        p = layer.innerProduct
        w = _weights(p.weights, (p.outputChannels, p.inputChannels))
        return w, _weights(p.bias, (p.outputChannels,)) if p.hasBias else None
    p = layer.convolution
    w = _weights(p.weights, (p.outputChannels, p.kernelChannels, *p.kernelSize))
    return w, _weights(p.bias, (p.outputChannels,)) if p.hasBias else None


def _find_head(producer: dict[str, Any], output: str) -> tuple[Any, list[str]]:
    """The innerProduct whose values become the output, and the shape-only layers after it."""
    trailing, layer = [], producer.get(output)
    if layer is None:
        raise ExportError(f"Core ML training: the output {output!r} is not computed by any layer")
    while layer.WhichOneof("layer") in SHAPE_LAYERS and layer.input[0] in producer:
        trailing.append(layer.name)
        layer = producer[layer.input[0]]
    if layer.WhichOneof("layer") != "innerProduct":
        raise TrainingNotExpressible(
            f"Core ML cannot train this model: its output {output!r} comes from {describe(layer)}, and "
            f"{_BACKPROP_RULE}, so no layer before it can be updatable")
    return layer, trailing


def _pooled_input(head: Any, producer: dict[str, Any], shapes: dict[str, tuple[int, ...]]) -> str:
    """The blob the head should read: a [N, C, 1, 1] blob directly instead of its flattened [N, C]
    copy, when there is one. An innerProduct computes the same values from either, and the
    reshape in between would stop backpropagation (passes.ReadPooledBlob makes the switch)."""
    layer = producer.get(head.input[0])
    if layer is None or layer.WhichOneof("layer") not in SHAPE_LAYERS - {"flatten"}:
        return head.input[0]
    source = shapes.get(layer.input[0], ())
    return layer.input[0] if len(source) == 4 and source[2:] == (1, 1) else head.input[0]


def _backprop_chain(head: Any, head_input: str, producer: dict[str, Any]) -> tuple[list[tuple[Any, str]], str]:
    """Layers from the head back to the first one Core ML cannot backpropagate through, each with
    the blob it reads, and where the chain stops."""
    chain, blob = [(head, head_input)], head_input
    while blob in producer:
        parent = producer[blob]
        if not backpropagable(parent):
            return chain, describe(parent)
        blob = parent.input[0]
        chain.append((parent, blob))
    return chain, f"the model input {blob!r}"


def _weights(wp: Any, shape: tuple[int, ...]) -> np.ndarray:
    if len(wp.floatValue):
        return np.asarray(wp.floatValue, dtype=np.float32).reshape(shape)
    return np.frombuffer(wp.rawValue, dtype=np.float32).reshape(shape)


def _torch_names(layer: Any, torch_params: dict[str, np.ndarray]) -> list[str] | None:
    """The PyTorch parameters a Core ML weight layer holds, found by value (Core ML renames layers;
    fp32 conversion keeps weights bit-exact). None when no single module matches."""
    w, b = layer_weight(layer)
    hits = [n for n, p in torch_params.items() if n.endswith("weight") and p.shape == w.shape and np.array_equal(p, w)]
    if len(hits) != 1:
        return None
    prefix = hits[0][: -len("weight")]
    bias = torch_params.get(prefix + "bias")
    if (bias is None) != (b is None) or (b is not None and not np.array_equal(bias, b)):
        return None
    return [hits[0]] + ([prefix + "bias"] if b is not None else [])
