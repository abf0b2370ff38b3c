"""An exported (Core ATen) graph as a TF program: an interpreter that runs each node's builder
from the op table inside a traced tf.function.

Placeholders are the model's inputs (PyTorch layouts) or its state, which the WeightStore serves
as variables or constants under PyTorch names. Every op is checked against the table before
tracing, so an unsupported model fails at once with the op and the user's source line.
"""
from __future__ import annotations

from typing import Any, Mapping

import tensorflow as tf
import torch
from torch import fx
from torch.export.graph_signature import OutputKind

from dcl_core.errors import ExportError
from exporters.tflite.aten import SUPPORTED_OPS, TABLE, op_name
from exporters.tflite.capture import source_line
from exporters.tflite.context import Ctx, Unsupported
from exporters.tflite.ops_nn import HWIO
from exporters.tflite.values import Layout, Val
from exporters.tflite.weights import WeightStore

_CONV = torch.ops.aten.convolution.default


def unsupported(node: fx.Node, reason: str, list_ops: bool = False) -> ExportError:
    """One line: the op, the user's source line, why; for an unknown op, the ops that are known."""
    known = f"; supported ops: {', '.join(SUPPORTED_OPS)}" if list_ops else ""
    return ExportError(f"{op_name(node.target)} at {source_line(node)} is not supported by the TFLite exporter: "
                       f"{reason}{known}")


class Program:
    """Call inside a tf.function: inputs in PyTorch layouts -> the model's outputs (a list)."""

    def __init__(self, ep: torch.export.ExportedProgram, store: WeightStore | None = None,
                 batch_norm: Mapping[str, float] | None = None):
        """batch_norm: module path -> momentum of the BatchNorms that normalise with batch
        statistics (and update their running statistics) in the training forward."""
        sig = ep.graph_signature
        self.nodes = list(ep.graph.nodes)
        self.sources: dict[str, str] = {**sig.inputs_to_parameters, **sig.inputs_to_buffers,
                                        **sig.inputs_to_lifted_tensor_constants}
        self.state: dict[str, torch.Tensor] = {**ep.constants, **ep.state_dict}
        self.input_names = list(sig.user_inputs)
        self.output_index = [i for i, s in enumerate(sig.output_specs) if s.kind == OutputKind.USER_OUTPUT]
        self.store = store
        self.batch_norm = dict(batch_norm or {})
        for spec in sig.output_specs:
            if spec.kind != OutputKind.USER_OUTPUT:
                raise ExportError(f"the forward mutates {spec.target} ({spec.kind.name}); the TFLite exporter "
                                  "translates forwards without side effects only")
        for node in self.nodes:
            self._check(node)

    def _check(self, node: fx.Node) -> None:
        if node.op == "call_function" and node.target not in TABLE:
            raise unsupported(node, "no translation to TFLite builtin ops", list_ops=True)
        if node.op in ("get_attr", "call_module", "call_method"):
            raise ExportError(f"{node.op} {node.target} at {source_line(node)} is not supported by the TFLite "
                              "exporter (control flow or submodule calls in the exported graph)")

    def dynamic_batch(self) -> list[bool]:
        """Per input, whether the captured graph takes any batch size."""
        vals = [n.meta.get("val") for n in self.nodes if n.op == "placeholder" and n.name in self.input_names]
        return [v is not None and v.dim() > 0 and isinstance(v.shape[0], torch.SymInt) for v in vals]

    def layouts(self) -> dict[str, Layout]:
        """Storage layouts for the state: HWIO for weights only convolutions read (no transpose
        per step, and TF's conv layout for the gradient)."""
        out = {}
        for node in self.nodes:
            name = self.sources.get(node.name) if node.op == "placeholder" else None
            if name is None or node.meta["val"].dim() != 4 or not node.users:
                continue
            if all(u.target is _CONV and u.args[1] is node for u in node.users):
                out[name] = HWIO
        return out

    def __call__(self, inputs: list[tf.Tensor], train: bool) -> list[tf.Tensor]:
        if self.store is None:
            raise ExportError("a Program needs a WeightStore to run")
        feed = dict(zip(self.input_names, inputs))
        env: dict[fx.Node, Any] = {}
        for node in self.nodes:
            if node.op == "placeholder":
                env[node] = Val(feed[node.name]) if node.name in feed else self.store.val(self.sources[node.name])
            elif node.op == "call_function":
                env[node] = self._run(node, env, train)
            elif node.op == "output":
                results = fx.node.map_arg(node.args[0], env.__getitem__)
                return [self._output(results[i], node) for i in self.output_index]
        raise ExportError("the exported graph has no output")

    def _run(self, node: fx.Node, env: dict[fx.Node, Any], train: bool) -> Any:
        args = fx.node.map_arg(node.args, env.__getitem__)
        kwargs = fx.node.map_arg(node.kwargs, env.__getitem__)
        ctx = Ctx(node, train, self.sources, self.batch_norm, self.store)
        try:
            return TABLE[node.target](ctx, *args, **kwargs)
        except Unsupported as e:
            raise unsupported(node, str(e)) from None
        except ExportError:
            raise
        except Exception as e:  # noqa: BLE001 - a TF error while translating: one line with the node
            first = str(e).strip().splitlines()[0] if str(e).strip() else ""
            raise ExportError(f"translating {op_name(node.target)} at {source_line(node)} failed "
                              f"({type(e).__name__}: {first})") from None

    @staticmethod
    def _output(value: Any, node: fx.Node) -> tf.Tensor:
        if not isinstance(value, Val):
            raise ExportError(f"the model returns {type(value).__name__}; the TFLite exporter returns tensors only")
        return value.torch()
