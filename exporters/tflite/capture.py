"""Graph capture: torch.export + Core ATen decompositions, and where a node came from.

Inference programs are captured at the example inputs' fixed shapes. The `infer` signature of a
training program is captured with a dynamic batch (torch.export's Dim.AUTO on dim 0 of every
input), so sizes derived from the batch appear as symbolic values the translator computes at run
time; a model whose code fixes the batch keeps it fixed (the signature then records that size).
"""
from __future__ import annotations

import re
from pathlib import Path

import torch
from torch import fx, nn

from dcl_core.errors import ExportError
from exporters.tflite.aten import decompositions

_FRAME = re.compile(r'File "([^"]+)", line (\d+), in [^\n]*\n\s*([^\n]*)')


def capture(model: nn.Module, inputs: tuple[torch.Tensor, ...],
            dynamic_batch: bool = False) -> torch.export.ExportedProgram:
    """The model's Core ATen graph. A dynamic batch needs an example batch above 1 (torch.export
    specialises size-1 dims); with 1 the capture is static."""
    if dynamic_batch and all(t.dim() > 0 and t.shape[0] > 1 for t in inputs):
        shapes = tuple({0: torch.export.Dim.AUTO} for _ in inputs)
        try:
            return _export(model, inputs, shapes)
        except ExportError:
            pass  # e.g. code that branches on the batch size: fall back to the fixed batch
    return _export(model, inputs, None)


def _export(model: nn.Module, inputs: tuple[torch.Tensor, ...], shapes) -> torch.export.ExportedProgram:
    try:
        return torch.export.export(model, inputs, dynamic_shapes=shapes).run_decompositions(decompositions())
    except Exception as e:  # noqa: BLE001 - torch.export raises many types for one user-facing problem
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise ExportError(f"the TFLite exporter could not capture {type(model).__name__} with torch.export "
                          f"({type(e).__name__}: {first})") from None


def source_line(node: fx.Node) -> str:
    """Where the user's code made `node`: the innermost frame outside torch and site-packages,
    as "file.py:12 (`code`)"; the node name when the graph kept no trace."""
    frames = _FRAME.findall(node.meta.get("stack_trace") or "")
    if not frames:
        return f"node {node.name}"
    user = [f for f in frames if not _library(f[0])]
    file, line, code = (user or frames)[-1]
    return f"{Path(file).name}:{line} (`{code.strip()}`)"


def _library(path: str) -> bool:
    return "site-packages" in path or "/torch/" in path or path.startswith("<")
