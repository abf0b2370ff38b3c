"""What Core ML can train: which layers of a converted neural network become updatable.

On-device training. Only neural-network specs can be updatable (MLUpdateTask), and Apple's
validator (coremltools mlmodel/src/Validation/NeuralNetwork/UpdatableNeuralNetworkValidator.cpp,
NeuralNetworkValidatorGraph.hpp) allows:
- updatable layers: convolution and innerProduct only, weights and bias both updatable
  (validateUpdatableLayerSupport, validateWeightParamsUpdatable); any number of them: nothing
  there or in NeuralNetworkBuilder.make_updatable caps the count;
- backpropagation, between the loss and every updatable layer, only through convolution,
  innerProduct, flatten, pooling, batchnorm, the legacy rank-5 `reshape` and ReLU/sigmoid/tanh
  activations (isLayerSupportedForBackprop; a `softmax` may feed a cross-entropy loss). Add,
  multiply (swish, hardswish), concat, reshapeStatic, squeeze, clip (ReLU6), reduceMean, padding
  block it: isTrainingConfigurationSupported walks back from the loss and fails on an updatable
  layer met after any of them;
- batchnorm backpropagates but is never updatable: its gamma and beta stay frozen;
- losses: categorical cross-entropy on a channel-axis `softmax` layer, or mean squared error;
- optimizers: SGD (learning rate, mini-batch size, momentum) or Adam; no weight decay.

The trainable tail. From the head (the innerProduct whose values become the output) walk back
input by input while backpropagation can pass each layer: as it is, or after an exact rewrite
into kinds Core ML backpropagates through (`Rewrite`: clip -> ReLUs and frozen batchnorm
affines, a spatial reduceMean -> global average pooling, a [N, C, 1, 1] -> [N, C] reshape ->
nothing). The walk ends at the first layer it cannot pass (`Plan.stop`). Every convolution and
innerProduct on the walk whose PyTorch parameters (weight and bias: Core ML updates them
together) are all requested becomes updatable; rewrites are made only between the loss and the
earliest updatable layer, where gradients must flow. No extra check for fan-out is needed: every
layer the walk passes has one input, so the walk is the head's whole ancestry down to the stop,
and a layer on it can feed nothing else that reaches the loss (that layer would be an ancestor
of the head, hence the stop or behind it: a cycle). Core ML's gradient at each updatable layer
is therefore PyTorch's. Requested parameters that do not train are reported with the reason
(`Plan.left_frozen`); nothing requested being trainable is a refusal.

What this exporter supports within Apple's rules:
- BatchNorm is kept unfolded (`convert`) so an updatable conv holds exactly PyTorch's weights;
  `artifact.trainable` names exactly the PyTorch parameters of the updatable layers.
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
from torch import nn

from dcl_core.errors import ExportError, TrainingNotExpressible
from exporters.base import ExportJob
from exporters.spec import TrainingSpec

# Layers Core ML can backpropagate through (Apple's isLayerSupportedForBackprop)
BACKPROP_LAYERS = {"convolution", "innerProduct", "flatten", "pooling", "batchnorm", "reshape"}
BACKPROP_ACTIVATIONS = {"ReLU", "sigmoid", "tanh"}
_BACKPROP_RULE = ("Core ML backpropagates only through convolution, innerProduct, flatten, pooling, batchnorm "
                  "and ReLU/sigmoid/tanh")
WEIGHT_LAYERS = {"convolution", "innerProduct"}
# Layers that only reshape the logits on their way to the model output
SHAPE_LAYERS = {"squeeze", "reshapeStatic", "expandDims", "flatten"}
# spec loss -> Core ML loss layer (bce_with_logits as 2-class cross-entropy, see passes.TwoClassHead)
LOSS_KINDS = {"cross_entropy": "categoricalCrossEntropyLossLayer", "bce_with_logits": "categoricalCrossEntropyLossLayer",
              "mse": "meanSquaredErrorLossLayer"}
# Why requested parameters stay frozen (Plan.left_frozen keys; the stop's reason is built per model)
FROZEN_BATCHNORM = ("Core ML's batchnorm layers backpropagate but are not updatable (only convolution and "
                    "innerProduct are): they stay frozen and normalise with their running statistics")
FROZEN_PARTNER = ("Core ML updates a layer's weight and bias together, and the training spec freezes the "
                  "other one of the pair")


@dataclass(frozen=True)
class Rewrite:
    """A layer on the gradient path that Core ML cannot backpropagate through, replaced by layers
    it can, computing the same values (`passes.rewrite_pass` makes the edit, `validate` re-checks
    it). kind: "clip" (clip(x, lo, hi) = hi - relu((hi - lo) - relu(x - lo)), the affines as
    frozen batchnorms), "mean" (a mean over H and W of [N, C, H, W] as global average pooling,
    which yields [N, C, 1, 1]: the layers after it, all channel-layout layers, compute the same
    values) or "bypass" (a [N, C, 1, 1] -> [N, C] reshape: `reader` reads its source instead)."""
    kind: str
    layer: str  # the replaced layer
    source: str  # the blob it reads
    output: str  # the blob it writes
    reader: str  # the next layer toward the loss
    channels: int  # C of the blob it reads
    bounds: tuple[float, float] | None = None  # clip: (lo, hi)

    def record(self) -> dict:
        """The manifest's description (details["rewrites"]); `validate` re-checks the spec against it."""
        out = {"layer": self.layer, "kind": self.kind, "source": self.source, "output": self.output,
               "reader": self.reader, "channels": self.channels}
        return out | ({"bounds": list(self.bounds)} if self.bounds else {})


@dataclass(frozen=True)
class Plan:
    head: str  # the innerProduct producing the output
    head_channels: int  # the head's output channels
    trailing: list[str]  # shape-only layers between the head and the model output (replaced)
    params: dict[str, list[str]]  # updatable Core ML layer -> its PyTorch parameter names, head first
    rewrites: list[Rewrite]  # between the loss and the earliest updatable layer, head first
    stop: str  # where backpropagation stops (why nothing before it is updatable)
    requested: list[str]  # the PyTorch parameters the training spec asks to train, in model order
    left_frozen: dict[str, list[str]]  # why -> requested parameters that do not train

    @property
    def trains(self) -> list[str]:
        """The PyTorch parameters that train in Core ML, in model order."""
        updatable = {n for names in self.params.values() for n in names}
        return [n for n in self.requested if n in updatable]


@dataclass(frozen=True)
class _Step:
    """One layer of the walk back from the head; rewrite: how backpropagation passes it, None if as is."""
    layer: Any
    rewrite: str | None = None


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


def plan_updatable(nn_spec: Any, shapes: dict[str, tuple[int, ...]], job: ExportJob, spec: TrainingSpec) -> Plan:
    """The trainable tail of the neural network `nn_spec` (see the module docstring)."""
    producer = producers(nn_spec)
    head, trailing = _find_head(producer, job.output_names[0])
    walk, stop = _walk_back(head, producer, shapes)
    requested = spec.trainable_names(job.model)
    params, partners, unmatched = _match_weight_layers(walk, job.model, set(requested))
    why_stopped = f"backpropagation from the loss stops at {stop} ({_BACKPROP_RULE}) before reaching them"
    if unmatched:
        why_stopped += (f", or they are in {', '.join(unmatched)}, which hold no single PyTorch module's "
                        "parameters unchanged")
    trains = {n for names in params.values() for n in names}
    left_frozen = _left_frozen(job.model, requested, trains, partners, why_stopped)
    if not params:
        raise TrainingNotExpressible("Core ML cannot train any requested parameter of this model: " + "; ".join(
            f"{why}: {', '.join(names)}" for why, names in left_frozen.items()))
    depth = max(i for i, step in enumerate(walk) if step.layer.name in params)
    earliest = walk[depth].layer
    if len(shapes.get(earliest.input[0], ())) not in (2, 4):
        raise ExportError(f"Core ML training: layer {earliest.name!r} reads a rank-{len(shapes.get(earliest.input[0], ()))} "
                          "tensor; only [N, C] or [N, C, H, W] inputs to the trainable layers are supported")
    rewrites = [_rewrite(walk[i], walk[i - 1].layer, shapes) for i in range(1, depth) if walk[i].rewrite]
    return Plan(head=head.name, head_channels=int(head.innerProduct.outputChannels), trailing=trailing,
                params=params, rewrites=rewrites, stop=stop, requested=requested, left_frozen=left_frozen)


def producers(nn_spec: Any) -> dict[str, Any]:
    """Blob name -> the layer that writes it."""
    return {out: layer for layer in nn_spec.layers for out in layer.output}


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


def _walk_back(head: Any, producer: dict[str, Any], shapes: dict[str, tuple[int, ...]]) -> tuple[list[_Step], str]:
    """The layers from the head back to the first one backpropagation cannot pass, head first, and
    where the walk stops."""
    walk, layer = [_Step(head)], head
    while layer.input[0] in producer:
        parent = producer[layer.input[0]]
        if len(parent.input) != 1:
            return walk, describe(parent)
        if backpropagable(parent):
            walk.append(_Step(parent))
        else:
            kind = _rewrite_kind(parent, shapes)
            if kind is None:
                return walk, describe(parent)
            walk.append(_Step(parent, kind))
        layer = parent
    return walk, f"the model input {layer.input[0]!r}"


def _match_weight_layers(walk: list[_Step], model: nn.Module,
                         requested: set[str]) -> tuple[dict[str, list[str]], set[str], list[str]]:
    """The weight layers on the walk that become updatable (-> their PyTorch parameters, head
    first); requested parameters of layers that cannot, because their weight or bias partner is
    frozen; and weight layers holding no single PyTorch module's parameters unchanged."""
    torch_params = {n: p.detach().numpy() for n, p in model.named_parameters()}
    params: dict[str, list[str]] = {}
    partners: set[str] = set()
    unmatched: list[str] = []
    for step in walk:
        if step.layer.WhichOneof("layer") not in WEIGHT_LAYERS:
            continue
        names = _torch_names(step.layer, torch_params)
        if names is None:
            unmatched.append(describe(step.layer))
        elif set(names) <= requested:
            params[step.layer.name] = names
        else:
            partners |= set(names) & requested
    return params, partners, unmatched


def _rewrite_kind(layer: Any, shapes: dict[str, tuple[int, ...]]) -> str | None:
    """Which exact rewrite (see Rewrite) lets backpropagation pass `layer`, if any."""
    kind = layer.WhichOneof("layer")
    source, out = shapes.get(layer.input[0], ()), shapes.get(layer.output[0], ())
    if kind == "clip" and len(source) in (2, 4):
        return "clip"
    if kind == "reduceMean" and len(source) == 4 and not layer.reduceMean.reduceAll:
        axes = {a % 4 for a in layer.reduceMean.axes}
        return "mean" if axes == {2, 3} else None
    if kind in ("reshapeStatic", "squeeze") and len(source) == 4 and source[2:] == (1, 1) and out == source[:2]:
        return "bypass"
    return None


def _rewrite(step: _Step, reader: Any, shapes: dict[str, tuple[int, ...]]) -> Rewrite:
    layer = step.layer
    bounds = (float(layer.clip.minVal), float(layer.clip.maxVal)) if step.rewrite == "clip" else None
    return Rewrite(step.rewrite, layer.name, layer.input[0], layer.output[0], reader.name,
                   int(shapes[layer.input[0]][1]), bounds)


def _left_frozen(model: nn.Module, requested: list[str], trains: set[str], partners: set[str],
                 why_stopped: str) -> dict[str, list[str]]:
    """Requested parameters that do not train, grouped by why."""
    batchnorm = {f"{m}.{p}" if m else p for m, module in model.named_modules()
                 if isinstance(module, nn.modules.batchnorm._BatchNorm)
                 for p, _ in module.named_parameters(recurse=False)}
    frozen: dict[str, list[str]] = {}
    for name in requested:
        if name in trains:
            continue
        why = FROZEN_PARTNER if name in partners else FROZEN_BATCHNORM if name in batchnorm else why_stopped
        frozen.setdefault(why, []).append(name)
    return frozen


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
