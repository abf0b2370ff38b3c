"""The layer registry: each supported torch module type -> a TF builder with the module's weights.

A builder runs once per export. It takes the module, its path in the model and the WeightStore,
checks the options it supports (anything else raises ExportError naming the layer), and returns
a Layer: a callable applied to a `Val` inside the traced TF functions. Trainable parameters
become tf.Variables in TF layout (conv OIHW -> HWIO, depthwise (C,1,kh,kw) -> (kh,kw,C,1); Linear
and Embedding keep PyTorch's layout, which is already TFLite's FULLY_CONNECTED/GATHER layout);
frozen ones become constants folded into the program.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal

import numpy as np
import tensorflow as tf
import torch
from torch import nn

from dcl_core.errors import ExportError
from exporters.tflite import grads

NCHW_TO_NHWC = [0, 2, 3, 1]
NHWC_TO_NCHW = [0, 3, 1, 2]
DENSE_CONV_PERM = (2, 3, 1, 0)  # OIHW -> HWIO
DEPTHWISE_CONV_PERM = (2, 3, 0, 1)  # (C, 1, kh, kw) -> (kh, kw, C, 1)


class Val:
    """A TF tensor and its layout. 4-D activations switch to NHWC at the first layer that needs
    it (conv, BN, pooling) and back only where PyTorch semantics need NCHW, so a model input or
    output keeps PyTorch's layout. `torch_shape` is the shape the PyTorch forward sees."""

    def __init__(self, t: tf.Tensor, nhwc: bool = False):
        self.t = t
        self.is_nhwc = nhwc
        self._other: tf.Tensor | None = None  # the other layout, made once (inputs feed branches)

    @property
    def rank(self) -> int:
        return self.t.shape.rank

    @property
    def torch_shape(self) -> list[int | None]:
        shape = self.t.shape.as_list()
        return [shape[i] for i in NHWC_TO_NCHW] if self.is_nhwc else shape

    def nhwc(self) -> tf.Tensor:
        if self.is_nhwc:
            return self.t
        if self.rank != 4:
            raise ExportError(f"expected a 4-D (N, C, H, W) tensor, got shape {self.torch_shape}")
        if self._other is None:
            self._other = grads.transpose(self.t, NCHW_TO_NHWC)
        return self._other

    def torch(self) -> tf.Tensor:
        if not self.is_nhwc:
            return self.t
        if self._other is None:
            self._other = grads.transpose(self.t, NHWC_TO_NCHW)
        return self._other

    def tf_axis(self, dim: int) -> int:
        """The TF axis of PyTorch dimension `dim` (negative allowed)."""
        dim %= self.rank
        return NCHW_TO_NHWC.index(dim) if self.is_nhwc else dim


Layer = Callable[[Val, bool], Val]  # (input, train) -> output; train: the training forward


@dataclass
class Weight:
    """A tensor the program owns as a variable, with how to map it to PyTorch's layout."""

    name: str  # PyTorch state_dict name
    var: tf.Variable
    perm: tuple[int, ...] | None  # PyTorch layout -> TF layout; None: same
    kind: Literal["param", "buffer"]

    @property
    def torch_shape(self) -> list[int]:
        shape = self.var.shape.as_list()
        return [shape[i] for i in np.argsort(self.perm)] if self.perm else shape

    def to_torch(self) -> tf.Tensor:
        return tf.transpose(self.var, np.argsort(self.perm).tolist()) if self.perm else self.var.read_value()

    def assign_from_torch(self, value: tf.Tensor) -> None:
        self.var.assign(tf.transpose(value, list(self.perm)) if self.perm else value)


class WeightStore:
    """Hands each layer its tensors: trainable parameters (and buffers a training program
    updates) as variables, everything else as numpy constants."""

    def __init__(self, model: nn.Module, trainable: set[str]):
        self.state = {k: v.detach().cpu() for k, v in model.state_dict(keep_vars=False).items()}
        self.trainable = trainable
        self.weights: list[Weight] = []

    def param(self, name: str, perm: tuple[int, ...] | None = None) -> tf.Variable | np.ndarray:
        value = self._value(name, perm)
        if name in self.trainable:
            return self._variable(name, value, perm, "param")
        return value

    def state_variable(self, name: str) -> tf.Variable:
        """A buffer the training step writes (BatchNorm running statistics in train mode)."""
        return self._variable(name, self._value(name, None), None, "buffer")

    def _value(self, name: str, perm: tuple[int, ...] | None) -> np.ndarray:
        value = self.state[name].to(torch.float32).numpy()
        return np.ascontiguousarray(value.transpose(perm) if perm else value)

    def _variable(self, name: str, value: np.ndarray, perm, kind) -> tf.Variable:
        for w in self.weights:  # a module used twice shares its variable
            if w.name == name:
                return w.var
        var = tf.Variable(value, trainable=kind == "param", name=name.replace(".", "_"))
        self.weights.append(Weight(name, var, perm, kind))
        return var


@dataclass
class BuildContext:
    store: WeightStore
    bn_train: set[str]  # paths of BatchNorm layers normalising with batch statistics when training


def _unsupported(path: str, m: nn.Module, what: str) -> ExportError:
    return ExportError(f"layer {path} ({type(m).__name__}) uses {what}, which the TFLite exporter does not support")


def _pair(v: int | tuple[int, ...]) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


def _conv2d(m: nn.Conv2d, path: str, ctx: BuildContext) -> Layer:
    if _pair(m.dilation) != (1, 1):
        raise _unsupported(path, m, f"dilation {m.dilation}")
    depthwise = m.groups > 1
    if depthwise and not m.groups == m.in_channels == m.out_channels:
        raise _unsupported(path, m, f"groups={m.groups} (only 1 or depthwise with out == in channels)")
    stride, pad = _pair(m.stride), _conv_padding(m, path)
    if depthwise and stride[0] != stride[1]:
        raise _unsupported(path, m, f"unequal depthwise strides {stride}")
    w = ctx.store.param(f"{path}.weight", DEPTHWISE_CONV_PERM if depthwise else DENSE_CONV_PERM)
    b = ctx.store.param(f"{path}.bias") if m.bias is not None else None

    def run(x: Val, train: bool) -> Val:
        y = grads.conv2d(x.nhwc(), tf.convert_to_tensor(w), stride, pad, depthwise)
        return Val(y if b is None else y + b, nhwc=True)
    return run


def _conv_padding(m: nn.Conv2d, path: str) -> tuple[int, int]:
    """Symmetric zero padding per side; "same" (stride 1) is symmetric for odd kernels only."""
    if m.padding_mode != "zeros":
        raise _unsupported(path, m, f"padding_mode {m.padding_mode!r}")
    if m.padding == "valid":
        return (0, 0)
    if m.padding == "same":
        if any(k % 2 == 0 for k in m.kernel_size):
            raise _unsupported(path, m, f"padding='same' with an even kernel {m.kernel_size}")
        return (m.kernel_size[0] // 2, m.kernel_size[1] // 2)
    return _pair(m.padding)


def _batchnorm2d(m: nn.BatchNorm2d, path: str, ctx: BuildContext) -> Layer:
    if not m.track_running_stats:
        raise _unsupported(path, m, "track_running_stats=False")
    batch_stats = path in ctx.bn_train
    if batch_stats and m.momentum is None:
        raise _unsupported(path, m, "momentum=None (cumulative averages) in train mode")
    eps, momentum = float(m.eps), float(m.momentum or 0.0)
    gamma = ctx.store.param(f"{path}.weight") if m.affine else None
    beta = ctx.store.param(f"{path}.bias") if m.affine else None
    if batch_stats:
        mean, var = (ctx.store.state_variable(f"{path}.running_{s}") for s in ("mean", "var"))
    else:
        mean, var = (ctx.store.param(f"{path}.running_{s}") for s in ("mean", "var"))

    def run(x: Val, train: bool) -> Val:
        t = x.nhwc()
        if train and batch_stats:
            xhat = _batch_normalise(t, mean, var, eps, momentum)
        else:
            xhat = (t - mean) * tf.math.rsqrt(tf.convert_to_tensor(var) + eps)
        y = xhat if gamma is None else xhat * gamma + beta
        return Val(y, nhwc=True)
    return run


def _batch_normalise(t: tf.Tensor, running_mean: tf.Variable, running_var: tf.Variable,
                     eps: float, momentum: float) -> tf.Tensor:
    """PyTorch train-mode BatchNorm: normalise by the biased batch variance, update the running
    statistics with the unbiased one."""
    n = t.shape[0] * t.shape[1] * t.shape[2]
    mean = tf.reduce_mean(t, axis=[0, 1, 2])
    d = t - mean
    var = tf.reduce_mean(d * d, axis=[0, 1, 2])
    running_mean.assign((1.0 - momentum) * running_mean + momentum * mean)
    running_var.assign((1.0 - momentum) * running_var + momentum * var * (n / max(n - 1, 1)))
    return d * grads.rsqrt(var + eps)


def _linear(m: nn.Linear, path: str, ctx: BuildContext) -> Layer:
    w = ctx.store.param(f"{path}.weight")  # (out, in): FULLY_CONNECTED's own layout
    b = ctx.store.param(f"{path}.bias") if m.bias is not None else None
    n_in, n_out = m.in_features, m.out_features

    def run(x: Val, train: bool) -> Val:
        t = x.torch()
        lead = t.shape.as_list()[:-1]  # a matmul over the last dim, as nn.Linear on (..., in)
        flat = t if len(lead) == 1 else tf.reshape(t, [-1, n_in])
        y = tf.matmul(flat, w, transpose_b=True)
        y = y if b is None else y + b
        return Val(y if len(lead) == 1 else tf.reshape(y, [-1 if d is None else d for d in lead] + [n_out]))
    return run


def _embedding(m: nn.Embedding, path: str, ctx: BuildContext) -> Layer:
    if m.max_norm is not None or m.scale_grad_by_freq or m.sparse:
        raise _unsupported(path, m, "max_norm, scale_grad_by_freq or sparse")
    table = ctx.store.param(f"{path}.weight")
    padding_idx = m.padding_idx

    def run(ids: Val, train: bool) -> Val:
        return Val(grads.embedding(tf.convert_to_tensor(table), ids.t, padding_idx))
    return run


def _elementwise(fn: Callable[[tf.Tensor], tf.Tensor]) -> Callable[[nn.Module, str, BuildContext], Layer]:
    def build(m: nn.Module, path: str, ctx: BuildContext) -> Layer:
        return lambda x, train: Val(fn(x.t), x.is_nhwc)
    return build


def _adaptive_avg_pool2d(m: nn.AdaptiveAvgPool2d, path: str, ctx: BuildContext) -> Layer:
    if m.output_size not in (1, (1, 1)):
        raise _unsupported(path, m, f"output_size {m.output_size} (only 1)")
    return lambda x, train: Val(tf.reduce_mean(x.nhwc(), axis=[1, 2], keepdims=True), nhwc=True)


def flatten(x: Val, start: int = 0, end: int = -1) -> Val:
    """torch.flatten. NHWC with 1x1 spatial dims (after global pooling) flattens without a
    transpose: the element order is the same."""
    shape = x.torch_shape
    start, end = start % len(shape), end % len(shape)
    same_order = x.is_nhwc and start == 1 and end == 3 and shape[2] == shape[3] == 1
    t = x.t if same_order else x.torch()
    new = shape[:start] + [int(np.prod(shape[start:end + 1]))] + shape[end + 1:]
    return Val(tf.reshape(t, [-1 if d is None else d for d in new]))


def _flatten(m: nn.Flatten, path: str, ctx: BuildContext) -> Layer:
    return lambda x, train: flatten(x, m.start_dim, m.end_dim)


def _identity(m: nn.Module, path: str, ctx: BuildContext) -> Layer:
    return lambda x, train: x


# Dropout is the identity: the exported programs, like the PyTorch reference, run modules in
# eval mode (only BatchNorm has a train mode, selected by TrainingSpec.bn).
LAYERS: dict[type[nn.Module], Callable[[nn.Module, str, BuildContext], Layer]] = {
    nn.Conv2d: _conv2d,
    nn.BatchNorm2d: _batchnorm2d,
    nn.Linear: _linear,
    nn.Embedding: _embedding,
    nn.ReLU: _elementwise(grads.relu),
    nn.Hardswish: _elementwise(grads.hardswish),
    nn.Hardsigmoid: _elementwise(grads.hardsigmoid),
    nn.Sigmoid: _elementwise(grads.sigmoid),
    nn.AdaptiveAvgPool2d: _adaptive_avg_pool2d,
    nn.Flatten: _flatten,
    nn.Identity: _identity,
    nn.Dropout: _identity,
}

LAYER_NOTES = {
    "Conv2d": "dense or depthwise (groups == in == out channels), any kernel/stride, zero padding, no dilation",
    "Linear": "over the last dim of any input",
    "BatchNorm2d": "running statistics, or batch statistics when training with bn='train'",
    "AdaptiveAvgPool2d": "output_size 1 only",
    "Embedding": "no max_norm / scale_grad_by_freq / sparse",
    "Dropout": "identity (eval semantics)",
}

SUPPORTED_LAYERS: tuple[str, ...] = tuple(sorted(t.__name__ for t in LAYERS))


def build_layer(m: nn.Module, path: str, ctx: BuildContext) -> Layer:
    builder = LAYERS.get(type(m))
    if builder is None:
        raise ExportError(f"layer {path} ({type(m).__module__}.{type(m).__name__}) is not supported by the "
                          f"TFLite exporter; supported layers: {', '.join(SUPPORTED_LAYERS)}")
    return builder(m, path, ctx)
