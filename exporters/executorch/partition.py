"""XNNPACK for the part of a training program whose values do not change between steps.

Why not XNNPACK on the whole joint graph: its partitioner treats every parameter as a static
weight. It packs a COPY of a trainable conv weight into the delegate (so the forward never sees
the optimizer's updates) and absorbs trainable biases into the delegate entirely (so they drop
out of the program's parameter outputs, the training metadata's gradient/parameter lists no
longer line up, and SGD applies gradients to the wrong tensors). Training then diverges to NaN
within a few steps (tests/test_executorch_training_speed.py reproduces both effects).

What XNNPACK can take exactly: every node computed from user inputs and frozen constants only
(e.g. DC-CCL's frozen mimic g, or a frozen backbone under a head fine-tune). Those nodes are
the same at every step, like an inference program. Anything downstream of a trainable
parameter or of a buffer the program mutates (train-mode BatchNorm statistics) is left to the
portable/optimized CPU kernels, and so is the whole backward pass.
"""
from __future__ import annotations

from typing import Iterable

import torch
from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
from torch.export import ExportedProgram


def step_dependent_nodes(ep: ExportedProgram, trainable: Iterable[str]) -> set[torch.fx.Node]:
    """Nodes whose value can differ between two training steps given the same inputs: the
    trainable parameters (by their program names), mutated buffers, and every node that reads
    one of them, directly or not."""
    sig = ep.graph_signature
    wanted = set(trainable)
    mutated = set(sig.buffers_to_mutate.values())
    seeds = {n for n, p in sig.inputs_to_parameters.items() if p in wanted}
    seeds |= {n for n, b in sig.inputs_to_buffers.items() if b in mutated}
    dependent: set[torch.fx.Node] = set()
    for node in ep.graph_module.graph.nodes:  # topological order: inputs come before their users
        if (node.op == "placeholder" and node.name in seeds) or any(a in dependent for a in node.all_input_nodes):
            dependent.add(node)
    return dependent


class FrozenPartXnnpackPartitioner(XnnpackPartitioner):
    """The stock XNNPACK partitioner, refused every node that `step_dependent_nodes` names."""

    def __init__(self, trainable: Iterable[str]):
        super().__init__()
        self._trainable = list(trainable)
        # per graph: the partitioner sees the aten graph (what not to decompose), then the edge graph
        self._dependent: dict[torch.fx.Graph, set[torch.fx.Node]] = {}
        for config in self.target_partitioner_configs.values():
            config.check_constraints = self._refusing_dependent(config.check_constraints)

    def _refusing_dependent(self, check):
        def check_constraints(node: torch.fx.Node, ep: ExportedProgram) -> bool:
            return node not in self._dependent_nodes(ep) and check(node, ep)
        return check_constraints

    def _dependent_nodes(self, ep: ExportedProgram) -> set[torch.fx.Node]:
        key = ep.graph_module.graph
        if key not in self._dependent:
            self._dependent[key] = step_dependent_nodes(ep, self._trainable)
        return self._dependent[key]
