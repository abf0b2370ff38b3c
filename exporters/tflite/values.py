"""Translated tensors with a lazy layout, so the program transposes only where it must.

A `Val` is a TF tensor plus `layout`: layout[k] is the TF axis holding PyTorch dimension k. An
image in NHWC has layout (0, 3, 1, 2). Convolution, pooling and batch norm want channels last,
elementwise ops and reductions take any layout (they map dims through `layout`), `permute` only
rewrites the layout, and a transpose is emitted when an op needs an order the tensor does not
have (a reshape mixing dims, a matmul operand, a model output). Shapes are static except for a
dynamic batch (None) in the `infer` signature of training programs.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import tensorflow as tf

from exporters.tflite import grads

Layout = tuple[int, ...]
Dim = int | tf.Tensor  # a static size, or a scalar int32 tensor for a dynamic one


def identity(rank: int) -> Layout:
    return tuple(range(rank))


def channels_last(rank: int) -> Layout:
    """(N, C, *spatial) stored as (N, *spatial, C): NHWC for images."""
    return (0, rank - 1, *range(1, rank - 1)) if rank >= 3 else identity(rank)


def inverse(perm: Sequence[int]) -> Layout:
    return tuple(int(i) for i in np.argsort(perm))


def compress(layout: Sequence[int], removed: set[int]) -> Layout:
    """The layout after removing the torch dims `removed` (their TF axes go too)."""
    kept = [a for k, a in enumerate(layout) if k not in removed]
    order = sorted(kept)
    return tuple(order.index(a) for a in kept)


def static_shape(t: tf.Tensor) -> list[int | None]:
    return t.shape.as_list()


def shape_arg(dims: Sequence[Dim]) -> Any:
    """A shape for tf.fill/broadcast_to: a list if static, else a tensor."""
    if not any(isinstance(d, tf.Tensor) for d in dims):
        return [int(d) for d in dims]
    return tf.stack([tf.cast(d, tf.int32) if isinstance(d, tf.Tensor) else tf.constant(int(d), tf.int32) for d in dims])


def reshape_arg(dims: Sequence[Dim]) -> Any:
    """A shape for tf.reshape: as shape_arg, but one dynamic size becomes -1 (a constant shape)."""
    dynamic = [i for i, d in enumerate(dims) if isinstance(d, tf.Tensor)]
    if len(dynamic) == 1 and all(d != -1 for d in dims if not isinstance(d, tf.Tensor)):
        return [-1 if i == dynamic[0] else int(d) for i, d in enumerate(dims)]
    return shape_arg(dims)


def dynamic_shape(t: tf.Tensor) -> list[Dim]:
    """Static sizes where known, tf.shape entries where not."""
    shape = static_shape(t)
    if all(d is not None for d in shape):
        return shape
    dyn = tf.shape(t)
    return [d if d is not None else dyn[i] for i, d in enumerate(shape)]


def permute(t: tf.Tensor, perm: Sequence[int]) -> tf.Tensor:
    """tf.transpose(t, perm), as a reshape when only size-1 dims move (same element order) and
    with a builtin-only gradient otherwise."""
    perm = tuple(perm)
    if perm == identity(len(perm)):
        return t
    shape = static_shape(t)
    moved = [a for a in perm if shape[a] != 1]
    if moved == sorted(moved):
        return tf.reshape(t, reshape_arg([dynamic_shape(t)[a] for a in perm]))
    return grads.transpose(t, list(perm))


class Val:
    """A translated tensor: storage `t` and the layout mapping PyTorch dims to its axes."""

    def __init__(self, t: tf.Tensor, layout: Sequence[int] | None = None):
        self.t = t
        self.layout: Layout = tuple(layout) if layout is not None else identity(t.shape.rank)
        self._views: dict[Layout, tf.Tensor] = {self.layout: t}  # made once: inputs feed several branches

    @property
    def rank(self) -> int:
        return len(self.layout)

    @property
    def dtype(self) -> tf.DType:
        return self.t.dtype

    @property
    def shape(self) -> list[int | None]:
        """The PyTorch shape (None: dynamic)."""
        s = static_shape(self.t)
        return [s[a] for a in self.layout]

    def dims(self) -> list[Dim]:
        """The PyTorch shape with dynamic sizes as tensors."""
        s = dynamic_shape(self.t)
        return [s[a] for a in self.layout]

    def axis(self, dim: int) -> int:
        """The TF axis of PyTorch dim `dim` (negative allowed)."""
        return self.layout[dim % self.rank]

    def as_layout(self, layout: Sequence[int]) -> tf.Tensor:
        """The tensor stored in `layout`."""
        layout = tuple(layout)
        if layout not in self._views:
            order = inverse(layout)
            self._views[layout] = permute(self.t, [self.layout[order[j]] for j in range(self.rank)])
        return self._views[layout]

    def torch(self) -> tf.Tensor:
        """The tensor in PyTorch's dim order."""
        return self.as_layout(identity(self.rank))

    def channels_last(self) -> tf.Tensor:
        return self.as_layout(channels_last(self.rank))

    @property
    def torch_ordered(self) -> bool:
        """Whether the storage has PyTorch's element order (only size-1 dims are elsewhere), so a
        reshape can act on it directly."""
        shape = static_shape(self.t)
        moved = [a for a in self.layout if shape[a] != 1]
        return moved == sorted(moved)


def align(*operands: Any) -> tuple[list[Any], Layout | None]:
    """Operands of a broadcasting elementwise op in one common layout: that of the largest
    tensor operand (activations stay put, biases and masks move; between equals, a computed
    layout such as NHWC wins over PyTorch's, which is usually a model input's). Lower-rank
    operands broadcast against the trailing dims as in PyTorch; Python scalars pass through."""
    vals = [v for v in operands if isinstance(v, Val)]
    if not vals:
        return list(operands), None
    rank = max(v.rank for v in vals)
    lead = max((v for v in vals if v.rank == rank), key=lambda v: (_size(v), v.layout != identity(rank)))
    layout = lead.layout

    def place(v: Any) -> Any:
        if not isinstance(v, Val):
            return v
        if v.rank < rank:
            v = Val(tf.reshape(v.torch(), reshape_arg([1] * (rank - v.rank) + v.dims())))
        return v.as_layout(layout)
    return [place(v) for v in operands], layout


def _size(v: Val) -> float:
    return float(np.prod([d if d is not None else 1 << 20 for d in v.shape]))
