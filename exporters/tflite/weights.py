"""The program's tensors from the PyTorch state: variables for what training changes, constants
for the rest, each stored in the layout its consumer wants (conv weights HWIO).

Trainable parameters, and the BatchNorm running statistics a bn="train" program updates, are
tf.Variables (the SavedModel, hence the .tflite, owns them); everything else is a numpy constant
the converter folds. Each variable remembers how to map back to PyTorch's layout, so
get_weights/set_weights speak PyTorch names and layouts.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Mapping

import numpy as np
import tensorflow as tf
import torch

from exporters.tflite.values import Layout, Val, identity, inverse


@dataclass
class Weight:
    """A tensor the program owns as a variable."""

    name: str  # PyTorch state_dict name
    var: tf.Variable
    layout: Layout  # layout[k]: the variable's axis holding PyTorch dim k
    kind: Literal["param", "buffer"]

    @property
    def torch_shape(self) -> list[int]:
        shape = self.var.shape.as_list()
        return [shape[a] for a in self.layout]

    def to_torch(self) -> tf.Tensor:
        if self.layout == identity(len(self.layout)):
            return self.var.read_value()
        return tf.transpose(self.var, list(self.layout))

    def assign_from_torch(self, value: tf.Tensor) -> None:
        if self.layout == identity(len(self.layout)):
            self.var.assign(value)
        else:
            self.var.assign(tf.transpose(value, list(inverse(self.layout))))


class WeightStore:
    """Tensors by PyTorch name. `variables` (trainable parameters first, in model order, then
    updated buffers) become tf.Variables in the layouts of `layouts` (default: PyTorch's)."""

    def __init__(self, state: Mapping[str, torch.Tensor], params: list[str], buffers: list[str] = (),
                 layouts: Mapping[str, Layout] | None = None):
        self.state = {k: v.detach().cpu() for k, v in state.items()}
        self.layouts = dict(layouts or {})
        self.weights: list[Weight] = []
        self._vars: dict[str, Weight] = {}
        for names, kind in ((params, "param"), (buffers, "buffer")):
            for name in names:
                if name not in self._vars:
                    self._add_variable(name, kind)

    def _add_variable(self, name: str, kind: Literal["param", "buffer"]) -> None:
        layout = self._layout(name)
        var = tf.Variable(self._value(name, layout), trainable=kind == "param", name=name.replace(".", "_"))
        w = Weight(name, var, layout, kind)
        self.weights.append(w)
        self._vars[name] = w

    def _layout(self, name: str) -> Layout:
        return tuple(self.layouts.get(name, identity(self.state[name].dim())))

    def _value(self, name: str, layout: Layout) -> np.ndarray:
        t = self.state[name]
        value = t.to(torch.float32).numpy() if t.is_floating_point() else t.numpy()
        return np.ascontiguousarray(value.transpose(inverse(layout)))

    def variable(self, name: str) -> tf.Variable:
        return self._vars[name].var

    def val(self, name: str) -> Val:
        """The tensor as the program reads it (call inside the traced function)."""
        layout = self._vars[name].layout if name in self._vars else self._layout(name)
        t = self._vars[name].var.read_value() if name in self._vars else tf.constant(self._value(name, layout))
        return Val(t, layout)
