"""What an op builder sees besides its arguments: the node, the program's mode and state."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import tensorflow as tf
import torch
from torch import fx

_TF_DTYPES = {torch.float32: tf.float32, torch.int64: tf.int64, torch.int32: tf.int32,
              torch.bool: tf.bool}


class Unsupported(Exception):
    """An op variant the translator cannot express; the program names the node around it."""


class State(Protocol):
    def variable(self, name: str) -> tf.Variable: ...


@dataclass
class Ctx:
    node: fx.Node
    train: bool  # the training forward (train signature), not an inference one
    sources: dict[str, str]  # placeholder name -> PyTorch state name (parameters, buffers, constants)
    batch_norm: dict[str, float]  # module path -> momentum, for BatchNorms using batch statistics
    state: State

    def source(self, i: int) -> str | None:
        """The PyTorch state name of argument i when it is a parameter/buffer, else None."""
        arg = self.node.args[i] if i < len(self.node.args) else None
        return self.sources.get(arg.name) if isinstance(arg, fx.Node) else None

    @property
    def out_dtype(self) -> tf.DType | None:
        """The dtype PyTorch gives the (first) output: operands are cast to it, as PyTorch promotes."""
        val: Any = self.node.meta.get("val")
        if isinstance(val, (tuple, list)):
            val = val[0] if val else None
        return _TF_DTYPES.get(getattr(val, "dtype", None))


def tf_dtype(dtype: torch.dtype) -> tf.DType:
    if dtype not in _TF_DTYPES:
        raise Unsupported(f"dtype {dtype} (float32, int64, int32 and bool only)")
    return _TF_DTYPES[dtype]
