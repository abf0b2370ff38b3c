"""A PyTorch module as a TF program: torch.fx traces the forward, each node becomes TF.

Modules of a registered type (exporters.tflite.layers.LAYERS) are leaves built by the registry;
other custom modules (Sequential, MobileCNN, SumOfLogits, SqueezeExcite, ...) are traced through, so
their forward's glue (add, mul, cat, pad, flatten, squeeze, shape arithmetic) is translated by
the FUNCTIONS/METHODS tables here. Anything else raises ExportError naming the node.
"""
from __future__ import annotations

import operator
from typing import Any, Callable

import tensorflow as tf
import torch
import torch.nn.functional as F
from torch import fx, nn

from dcl_core.errors import ExportError
from exporters.tflite import grads
from exporters.tflite.layers import LAYERS, BuildContext, Layer, Val, build_layer, flatten


class _Tracer(fx.Tracer):
    """Registered layers are leaves even when they are not torch.nn types (so the registry can
    grow); unregistered torch.nn modules stay leaves and are then reported as unsupported."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return type(m) in LAYERS or super().is_leaf_module(m, qualname)


def _binary(fn: Callable[[Any, Any], Any]) -> Callable[..., Any]:
    def run(a: Any, b: Any) -> Any:
        if not isinstance(a, Val) and not isinstance(b, Val):
            return fn(a, b)  # shape arithmetic on Python numbers (e.g. PadLogits' width)
        a, b, nhwc = _align(a, b)
        return Val(fn(a, b), nhwc)
    return run


def _align(a: Any, b: Any) -> tuple[Any, Any, bool]:
    """Both operands in one layout: NHWC if both are 4-D tensors and one is NHWC already, else
    PyTorch's layout (broadcasting against a lower-rank tensor follows PyTorch's dims)."""
    vals = [v for v in (a, b) if isinstance(v, Val)]
    nhwc = any(v.is_nhwc for v in vals) and all(v.rank == 4 for v in vals)

    def pick(v: Any) -> Any:
        if not isinstance(v, Val):
            return v
        return v.nhwc() if nhwc else v.torch()
    return pick(a), pick(b), nhwc


def _cat(tensors: list[Val], dim: int = 0) -> Val:
    nhwc = all(v.is_nhwc for v in tensors)
    ts = [v.t for v in tensors] if nhwc else [v.torch() for v in tensors]
    axis = tensors[0].tf_axis(dim) if nhwc else dim % tensors[0].rank
    return Val(tf.concat(ts, axis=axis), nhwc)


def _pad(x: Val, pad: tuple[int, ...], mode: str = "constant", value: float | None = None) -> Val:
    if mode != "constant" or value not in (None, 0, 0.0) or any(p < 0 for p in pad):
        raise ExportError(f"F.pad with mode={mode!r}, value={value!r}, pad={pad} is not supported by the TFLite "
                          "exporter (only non-negative zero padding)")
    paddings = [[0, 0] for _ in range(x.rank)]
    for i in range(len(pad) // 2):  # F.pad lists (before, after) pairs from the last dim backwards
        paddings[x.tf_axis(-1 - i)] = [int(pad[2 * i]), int(pad[2 * i + 1])]
    return Val(tf.pad(x.t, paddings), x.is_nhwc)


def _squeeze(x: Val, dim: int | None = None) -> Val:
    shape = x.torch_shape
    dims = [d for d in range(len(shape)) if shape[d] == 1] if dim is None else [dim % len(shape)]
    keep = [s for d, s in enumerate(shape) if not (d in dims and s == 1)]
    if len(keep) == len(shape):
        return x  # like torch: squeezing a dim that is not 1 is a no-op
    return Val(tf.reshape(x.torch(), [-1 if s is None else s for s in keep]))


def _reshape(x: Val, *shape: int | tuple[int, ...]) -> Val:
    dims = list(shape[0]) if len(shape) == 1 and isinstance(shape[0], (tuple, list, torch.Size)) else list(shape)
    return Val(tf.reshape(x.torch(), dims))


def _getattr(x: Any, name: str) -> Any:
    if isinstance(x, Val) and name == "shape":
        return tuple(x.torch_shape)
    raise ExportError(f"attribute {name!r} of a traced value is not supported by the TFLite exporter")


def _getitem(x: Any, index: Any) -> Any:
    if isinstance(x, Val):
        raise ExportError("tensor indexing is not supported by the TFLite exporter")
    return x[index]


def _size(x: Val, dim: int | None = None) -> Any:
    shape = tuple(x.torch_shape)
    return shape if dim is None else shape[dim]


def _relu(x: Val, inplace: bool = False) -> Val:
    return Val(grads.relu(x.t), x.is_nhwc)


FUNCTIONS: dict[Any, Callable[..., Any]] = {
    operator.add: _binary(operator.add),
    operator.sub: _binary(operator.sub),
    operator.mul: _binary(operator.mul),
    operator.truediv: _binary(operator.truediv),
    torch.cat: _cat,
    torch.concat: _cat,
    F.pad: _pad,
    torch.flatten: lambda x, start_dim=0, end_dim=-1: flatten(x, start_dim, end_dim),
    torch.relu: _relu,
    F.relu: _relu,
    getattr: _getattr,
    operator.getitem: _getitem,
}

METHODS: dict[str, Callable[..., Any]] = {
    "flatten": lambda x, start_dim=0, end_dim=-1: flatten(x, start_dim, end_dim),
    "squeeze": _squeeze,
    "view": _reshape,
    "reshape": _reshape,
    "size": _size,
    "relu": _relu,
}

SUPPORTED_OPS: tuple[str, ...] = ("+", "-", "*", "/", "torch.cat", "F.pad (zeros)", "flatten", "squeeze", "view/reshape",
                                  "relu", ".shape/.size()")


def trace(model: nn.Module) -> fx.GraphModule:
    try:
        graph = _Tracer().trace(model)
    except Exception as e:  # noqa: BLE001 - any tracing failure is the same user-facing problem
        raise ExportError(f"the TFLite exporter could not trace {type(model).__name__} with torch.fx "
                          f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
                          "data-dependent control flow is not supported") from None
    return fx.GraphModule(model, graph)


class Program:
    """The traced model with one TF layer per leaf module; call it inside a tf.function."""

    def __init__(self, model: nn.Module, ctx: BuildContext):
        gm = trace(model)
        self.nodes = list(gm.graph.nodes)
        self.layers: dict[str, Layer] = {}
        self.consts: dict[str, Any] = {}
        for node in self.nodes:
            self._check(node, gm, ctx)

    def _check(self, node: fx.Node, gm: fx.GraphModule, ctx: BuildContext) -> None:
        if node.op == "call_module" and node.target not in self.layers:
            self.layers[node.target] = build_layer(gm.get_submodule(node.target), node.target, ctx)
        elif node.op == "get_attr":
            if node.target not in ctx.store.state:
                raise ExportError(f"attribute {node.target} used in the forward is not a parameter or buffer; "
                                  "the TFLite exporter cannot translate it")
            self.consts[node.target] = ctx.store.param(node.target)
        elif node.op == "call_function" and node.target not in FUNCTIONS:
            raise ExportError(f"{getattr(node.target, '__name__', node.target)} (node {node.name}) is not supported by the "
                              f"TFLite exporter; supported operations: {', '.join(SUPPORTED_OPS)}")
        elif node.op == "call_method" and node.target not in METHODS:
            raise ExportError(f"tensor method .{node.target}() (node {node.name}) is not supported by the TFLite exporter; "
                              f"supported operations: {', '.join(SUPPORTED_OPS)}")

    def __call__(self, inputs: list[tf.Tensor], train: bool) -> list[tf.Tensor]:
        """Outputs in PyTorch layout, as a list (a model returning a tuple gives several)."""
        env: dict[fx.Node, Any] = {}
        feed = iter(inputs)
        for node in self.nodes:
            args = fx.node.map_arg(node.args, env.__getitem__)
            kwargs = fx.node.map_arg(node.kwargs, env.__getitem__)
            if node.op == "placeholder":
                env[node] = Val(next(feed))
            elif node.op == "get_attr":
                env[node] = Val(tf.convert_to_tensor(self.consts[node.target]))
            elif node.op == "call_module":
                env[node] = self.layers[node.target](*args, train)
            elif node.op == "call_function":
                env[node] = FUNCTIONS[node.target](*args, **kwargs)
            elif node.op == "call_method":
                env[node] = METHODS[node.target](*args, **kwargs)
            elif node.op == "output":
                result = args[0]
                outs = list(result) if isinstance(result, (tuple, list)) else [result]
                return [v.torch() for v in outs]
        raise ExportError("the traced model has no output")
