"""The op table: each Core ATen op (after decompositions) the translator maps to TF, and the
decomposition table the graph is captured with.

Hardswish, hardsigmoid and SiLU stay whole instead of decomposing into clamp arithmetic: one
HARD_SWISH / LOGISTIC+MUL builtin and one custom gradient each, rather than four ops with
gradients through clamp.
"""
from __future__ import annotations

from typing import Any, Callable

import torch

from exporters.tflite import ops_nn, ops_tensor

A = torch.ops.aten

TABLE: dict[Any, Callable[..., Any]] = {**ops_tensor.OPS, **ops_nn.OPS}

SUPPORTED_OPS: tuple[str, ...] = tuple(sorted(str(t) for t in TABLE if isinstance(t, torch._ops.OpOverload)
                                              and str(t).startswith("aten.") and "assert" not in str(t)
                                              and "sym_" not in str(t)))

_KEPT_WHOLE = (A.hardswish.default, A.hardsigmoid.default, A.silu.default)


def decompositions() -> Any:
    """torch.export's Core ATen decomposition table, minus the ops translated whole."""
    table = torch.export.default_decompositions()
    for target in _KEPT_WHOLE:
        table.pop(target, None)
    return table


def op_name(target: Any) -> str:
    return str(target) if isinstance(target, torch._ops.OpOverload) else getattr(target, "__name__", str(target))
