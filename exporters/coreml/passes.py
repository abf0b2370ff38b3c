"""Rewrites of a converted neural network spec into an updatable one, as small named passes.

Each pass is a callable that takes the Model spec and makes one edit; `training_rewrite` lists
them in order for a `plan.Plan`, and `run_passes` applies them. First the plan's `Rewrite`s make
the gradient path backpropagable (`rewrite_pass`). The trainable tail runs in Core ML's channel
layout [1, C, 1, 1] (a `softmax` layer normalises axis -3; innerProduct maps [N, C, 1, 1] to
[N, C', 1, 1]), and the rewrite leaves, after the head (blobs named after the model output `out`):
    cross_entropy    head -> out_per_class -> reshape -> out;  out_per_class -> softmax -> out_probabilities -> loss
    mse              head -> out_per_class -> reshape -> out;  out_per_class -> loss
    bce_with_logits  head (2 logits) -> out_per_class -> scale -> out_scaled -> difference -> out_z -> reshape -> out;
                     out_scaled -> softmax -> out_probabilities -> loss
The prediction output is rebuilt off the loss path, so its reshape (which blocks backpropagation) is harmless.
"""
from __future__ import annotations

import contextlib
import io
import math
from dataclasses import dataclass
from typing import Any, Iterator, Protocol, Sequence

import numpy as np

from dcl_core.errors import ExportError
from exporters.coreml.plan import Plan, Rewrite, layer_weight
from exporters.spec import TrainingSpec

LOSS_NAME = "loss"
# bce_with_logits as 2-class cross-entropy: logits s*(W0 h + b0), s*(W1 h + b1), see TwoClassHead
BCE_SCALE = 1.0 / math.sqrt(2.0)
BN_EPS = 1e-5


class Pass(Protocol):
    def __call__(self, spec: Any) -> None: ...


def run_passes(spec: Any, passes: Sequence[Pass]) -> None:
    for rewrite in passes:
        rewrite(spec)


@dataclass(frozen=True)
class TrainingRewrite:
    passes: list[Pass]
    loss_input: str  # the blob the loss layer reads
    reparam: dict | None  # how the head's weights map back to PyTorch's (bce_with_logits), else None


def training_rewrite(plan: Plan, shapes: dict[str, tuple[int, ...]], output: str, out_shape: list[int],
                     spec: TrainingSpec, target: str) -> TrainingRewrite:
    """The passes that turn the converted network into the updatable one `plan` describes."""
    logits = f"{output}_per_class"
    passes: list[Pass] = [rewrite_pass(r) for r in plan.rewrites]
    passes += [RemoveLayers(tuple(plan.trailing)), ToChannelLayout(tuple(plan.params), shapes),
               RedirectOutput(plan.head, logits)]
    reparam, prediction = None, logits
    if spec.loss == "bce_with_logits":
        two_class, scaled, prediction = TwoClassHead(plan.head), f"{output}_scaled", f"{output}_z"
        passes += [two_class, AddBatchnormScale(f"{output}_scale", logits, scaled, BCE_SCALE, 2),
                   AddLogitDifference(f"{output}_difference", scaled, prediction)]
        reparam, logits = two_class.record, scaled
    passes.append(AddOutputReshape(f"{output}_reshape", prediction, output, tuple(out_shape)))
    if spec.loss == "mse":
        loss_input = logits
    else:
        loss_input = f"{output}_probabilities"
        passes.append(AddSoftmax(f"{output}_softmax", logits, loss_input))
    passes += [RemoveDeadLayers(frozenset({loss_input})), MakeUpdatable(tuple(plan.params)),
               AddLoss(LOSS_NAME, spec.loss, loss_input, target, tuple(mse_target_shape(plan))),
               SetOptimizer(spec.lr, spec.batch_size, spec.momentum), SetEpochs(1)]
    return TrainingRewrite(passes, loss_input, reparam)


def mse_target_shape(plan: Plan) -> list[int]:
    """MSE target shape: the head's output in the channel layout, [1, C, 1, 1]."""
    return [1, plan.head_channels, 1, 1]


# ---------------------------------------------------------------- the gradient path (plan.Rewrite)


def rewrite_pass(rewrite: Rewrite) -> Pass:
    """The pass that carries out one of the plan's rewrites."""
    return {"bypass": Bypass, "clip": ClipAsRelus, "mean": MeanAsPooling}[rewrite.kind](rewrite)


@dataclass(frozen=True)
class Bypass:
    """The reader of a [N, C, 1, 1] -> [N, C] reshape reads its [N, C, 1, 1] source instead (same
    values in the channel layout); the reshape dies in RemoveDeadLayers."""
    rewrite: Rewrite

    def __call__(self, spec: Any) -> None:
        _layer(spec, self.rewrite.reader).input[0] = self.rewrite.source


@dataclass(frozen=True)
class ClipAsRelus:
    """clip(x, lo, hi) = hi - relu((hi - lo) - relu(x - lo)), the affines as frozen batchnorms:
    layers Core ML backpropagates through, with clip's gradient (1 strictly between lo and hi,
    else 0). Values differ from clip's by at most one rounding of (hi - lo) - r, half an ulp of
    hi - lo (2.4e-7 for ReLU6): for r >= (hi - lo) / 2 the subtractions are exact (Sterbenz)."""
    rewrite: Rewrite

    def __call__(self, spec: Any) -> None:
        from coremltools.proto import NeuralNetwork_pb2 as pb

        r = self.rewrite
        lo, hi = r.bounds
        # (layer suffix, kind, scale, shift); the last one writes the clip's output blob
        steps = ([("shift", "batchnorm", 1.0, -lo)] if lo else []) + [
            ("floor", "relu", 0.0, 0.0), ("flip", "batchnorm", -1.0, hi - lo),
            ("cap", "relu", 0.0, 0.0), ("unflip", "batchnorm", -1.0, hi)]
        layers, blob = [], r.source
        for i, (suffix, kind, scale, shift) in enumerate(steps):
            out = r.output if i == len(steps) - 1 else f"{r.layer}_{suffix}"
            layer = pb.NeuralNetworkLayer(name=f"{r.layer}_{suffix}", input=[blob], output=[out])
            if kind == "relu":
                layer.activation.ReLU.SetInParent()
            else:
                _affine_batchnorm(layer.batchnorm, scale, shift, r.channels)
            layers.append(layer)
            blob = out
        _replace_layer(spec, r.layer, layers)


@dataclass(frozen=True)
class MeanAsPooling:
    """A mean over H and W as global average pooling, as coremltools itself converts a mean that
    keeps the reduced axes (its output is [N, C, 1, 1]; the channel-layout layers after it compute
    the same values from that as from [N, C])."""
    rewrite: Rewrite

    def __call__(self, spec: Any) -> None:
        from coremltools.proto import NeuralNetwork_pb2 as pb

        r = self.rewrite
        layer = pb.NeuralNetworkLayer(name=r.layer, input=[r.source], output=[r.output])
        p = layer.pooling
        p.type, p.globalPooling, p.avgPoolExcludePadding = pb.PoolingLayerParams.AVERAGE, True, True
        p.kernelSize.extend([0, 0])
        p.stride.extend([0, 0])
        p.valid.paddingAmounts.borderAmounts.add()
        p.valid.paddingAmounts.borderAmounts.add()
        _replace_layer(spec, r.layer, [layer])


# ---------------------------------------------------------------- layer graph


@dataclass(frozen=True)
class RemoveLayers:
    """Drop the named layers (the shape-only layers after the head, which AddOutputReshape replaces)."""
    names: tuple[str, ...]

    def __call__(self, spec: Any) -> None:
        _set_layers(spec, [layer for layer in spec.neuralNetwork.layers if layer.name not in self.names])


@dataclass(frozen=True)
class ToChannelLayout:
    """Reshape an [N, C] input of the earliest updatable layer to [N, C, 1, 1]; the reshape sits
    before every updatable layer, where it does not need to backpropagate."""
    updatable: tuple[str, ...]
    shapes: dict[str, tuple[int, ...]]

    def __call__(self, spec: Any) -> None:
        from coremltools.proto import NeuralNetwork_pb2 as pb

        layers = list(spec.neuralNetwork.layers)
        # layers are in topological order
        i, earliest = next((i, layer) for i, layer in enumerate(layers) if layer.name in self.updatable)
        source = earliest.input[0]
        if len(self.shapes[source]) != 2:
            return
        reshaped = f"{source}_nchw"
        reshape = pb.NeuralNetworkLayer(name=f"{source}_to_nchw", input=[source], output=[reshaped])
        reshape.reshapeStatic.targetShape.extend([*self.shapes[source], 1, 1])
        earliest.input[0] = reshaped
        _set_layers(spec, layers[:i] + [reshape] + layers[i:])


@dataclass(frozen=True)
class RedirectOutput:
    """The layer writes `blob` instead (the head's logits, which the loss and output layers read)."""
    layer: str
    blob: str

    def __call__(self, spec: Any) -> None:
        _layer(spec, self.layer).output[0] = self.blob


@dataclass(frozen=True)
class RemoveDeadLayers:
    """Drop layers whose outputs nothing reads (the reshape the head no longer uses); the model
    outputs and `keep` (the loss input) count as read."""
    keep: frozenset[str]

    def __call__(self, spec: Any) -> None:
        needed = {d.name for d in spec.description.output} | self.keep
        layers = list(spec.neuralNetwork.layers)
        while True:
            read = needed | {i for layer in layers for i in layer.input}
            alive = [layer for layer in layers if any(o in read for o in layer.output)]
            if len(alive) == len(layers):
                break
            layers = alive
        _set_layers(spec, layers)


# ---------------------------------------------------------------- the head and the layers after it


@dataclass(frozen=True)
class TwoClassHead:
    """bce_with_logits as 2-class cross-entropy: the head's single logit z = w.h + b becomes two
    logits s*(W0 h + b0), s*(W1 h + b1) with W1 = -W0 = w/(2s), so softmax(.)[1] = sigmoid(z) and
    -log softmax(.)[y] = BCE(z, y) for y in {0, 1}. The fixed scale s = 1/sqrt(2) (a frozen
    batchnorm, AddBatchnormScale) makes SGD on W0, W1 move w = s*(W1 - W0) exactly as SGD moves w
    in PyTorch (each of W0, W1 gets s times the gradient, their difference 2*s^2 = 1 times), and
    passes the right gradient to the layers below, so the hidden layer trains with the same
    learning rate."""
    head: str

    def __call__(self, spec: Any) -> None:
        head = _layer(spec, self.head)
        p = head.innerProduct
        w, b = layer_weight(head)
        half = 1.0 / (2.0 * BCE_SCALE)
        p.outputChannels = 2
        _set_weights(p.weights, np.concatenate([-w * half, w * half]))
        if b is not None:
            _set_weights(p.bias, np.concatenate([-b * half, b * half]))

    @property
    def record(self) -> dict:
        """How to read PyTorch's weight and bias back from the rewritten head (manifest details)."""
        return {"layer": self.head, "scale": BCE_SCALE,
                "pytorch_weight": "scale * (weights[1] - weights[0])", "pytorch_bias": "scale * (bias[1] - bias[0])"}


@dataclass(frozen=True)
class AddBatchnormScale:
    """Append a frozen per-channel scale that Core ML can backpropagate through (a batchnorm layer)."""
    name: str
    src: str
    dst: str
    scale: float
    channels: int

    def __call__(self, spec: Any) -> None:
        _affine_batchnorm(_append_layer(spec, self.name, self.src, self.dst).batchnorm, self.scale, 0.0, self.channels)


@dataclass(frozen=True)
class AddLogitDifference:
    """Append z = logit1 - logit0: a frozen innerProduct, off the loss path (the prediction output only)."""
    name: str
    src: str
    dst: str

    def __call__(self, spec: Any) -> None:
        p = _append_layer(spec, self.name, self.src, self.dst).innerProduct
        p.inputChannels, p.outputChannels, p.hasBias = 2, 1, False
        p.weights.floatValue.extend([-1.0, 1.0])


@dataclass(frozen=True)
class AddOutputReshape:
    """Append the reshape producing the model output `dst` at PyTorch's shape, and describe the
    output with that shape."""
    name: str
    src: str
    dst: str
    shape: tuple[int, ...]

    def __call__(self, spec: Any) -> None:
        _append_layer(spec, self.name, self.src, self.dst).reshapeStatic.targetShape.extend(self.shape)
        for d in spec.description.output:
            if d.name == self.dst:
                del d.type.multiArrayType.shape[:]
                d.type.multiArrayType.shape.extend(self.shape)


@dataclass(frozen=True)
class AddSoftmax:
    """Append the softmax (over the channel axis) a cross-entropy loss must read."""
    name: str
    src: str
    dst: str

    def __call__(self, spec: Any) -> None:
        _append_layer(spec, self.name, self.src, self.dst).softmax.SetInParent()


# ---------------------------------------------------------------- training parameters


@dataclass(frozen=True)
class MakeUpdatable:
    """Mark the layers (weights and bias) and the model updatable."""
    layers: tuple[str, ...]

    def __call__(self, spec: Any) -> None:
        with _builder(spec) as builder:
            builder.make_updatable(list(self.layers))


@dataclass(frozen=True)
class AddLoss:
    """Attach the loss on `input` (categorical cross-entropy, or MSE for the mse loss) with the
    external feature `target` as its target, which also becomes the last training input."""
    name: str
    loss: str  # the TrainingSpec loss
    input: str
    target: str
    mse_shape: tuple[int, ...]

    def __call__(self, spec: Any) -> None:
        from coremltools.models import datatypes

        blobs = {o for layer in spec.neuralNetwork.layers for o in layer.output}
        if self.target in blobs | {d.name for d in spec.description.input}:
            raise ExportError(f"Core ML training target name {self.target!r} collides with a blob of the converted network")
        with _builder(spec) as builder:
            if self.loss == "mse":
                feature = (self.input, datatypes.Array(*self.mse_shape))
                builder.set_mean_squared_error_loss(self.name, input_feature=feature)
            else:
                builder.set_categorical_cross_entropy_loss(self.name, input=self.input)
        # the builder names the target `<input>_true`
        loss = spec.neuralNetwork.updateParams.lossLayers[0]
        getattr(loss, loss.WhichOneof("LossLayerType")).target = self.target
        spec.description.trainingInput[-1].name = self.target


@dataclass(frozen=True)
class SetOptimizer:
    """SGD with PyTorch's learning rate, momentum and batch size (Core ML has no weight decay)."""
    lr: float
    batch_size: int
    momentum: float

    def __call__(self, spec: Any) -> None:
        from coremltools.models.neural_network import SgdParams

        sgd = SgdParams(lr=self.lr, batch=self.batch_size, momentum=self.momentum)
        sgd.set_lr(self.lr, 0.0, max(1.0, self.lr))
        with _builder(spec) as builder:
            builder.set_sgd_optimizer(sgd)


@dataclass(frozen=True)
class SetEpochs:
    """Epochs per update call, without shuffling: each update call gets exactly the batches the
    app passes, in order, like the PyTorch loop."""
    epochs: int

    def __call__(self, spec: Any) -> None:
        with _builder(spec) as builder:
            builder.set_epochs(self.epochs)
        spec.neuralNetwork.updateParams.shuffle.defaultValue = False


# ---------------------------------------------------------------- helpers


@contextlib.contextmanager
def _builder(spec: Any) -> Iterator[Any]:
    """coremltools' NeuralNetworkBuilder editing `spec` in place, quiet (it prints one line per call)."""
    from coremltools.models.neural_network import NeuralNetworkBuilder

    with contextlib.redirect_stdout(io.StringIO()):
        yield NeuralNetworkBuilder(spec=spec)


def _layer(spec: Any, name: str) -> Any:
    return next(layer for layer in spec.neuralNetwork.layers if layer.name == name)


def _append_layer(spec: Any, name: str, src: str, dst: str) -> Any:
    return spec.neuralNetwork.layers.add(name=name, input=[src], output=[dst])


def _affine_batchnorm(bn: Any, scale: float, shift: float, channels: int) -> None:
    """A frozen batchnorm computing scale * x + shift per channel: gamma / sqrt(variance + eps)
    is `scale` (to one rounding), beta is `shift`."""
    bn.channels, bn.epsilon = channels, BN_EPS
    bn.gamma.floatValue.extend([float(np.float32(scale * math.sqrt(1.0 + BN_EPS)))] * channels)
    bn.beta.floatValue.extend([float(shift)] * channels)
    bn.mean.floatValue.extend([0.0] * channels)
    bn.variance.floatValue.extend([1.0] * channels)


def _replace_layer(spec: Any, name: str, replacement: list) -> None:
    """Put `replacement` (layers, in order) where the layer `name` is."""
    layers = list(spec.neuralNetwork.layers)
    i = next(i for i, layer in enumerate(layers) if layer.name == name)
    _set_layers(spec, layers[:i] + replacement + layers[i + 1:])


def _set_layers(spec: Any, layers: list) -> None:
    """Replace the layer list: protobuf cannot insert into a repeated field, and clearing it
    would detach the layers held in `layers`, so they are copied first."""
    from coremltools.proto import NeuralNetwork_pb2 as pb

    copies = []
    for layer in layers:
        copies.append(pb.NeuralNetworkLayer())
        copies[-1].CopyFrom(layer)
    del spec.neuralNetwork.layers[:]
    spec.neuralNetwork.layers.extend(copies)


def _set_weights(wp: Any, values: np.ndarray) -> None:
    wp.ClearField("rawValue")
    del wp.floatValue[:]
    wp.floatValue.extend(values.astype(np.float32).reshape(-1).tolist())
