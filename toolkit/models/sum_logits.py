"""SumOfLogits: several models over the same input whose logits are added.

DC-CCL serves f_c(x) + f_d(x) and trains the device submodel inside g(x) + f_d(x); each part
keeps its own name, so parameter names read as what they are (`f_d.classifier.weight`), which
is how training programs, manifests and returned weights address them.
"""
from __future__ import annotations

import torch
from torch import nn


class SumOfLogits(nn.Module):
    def __init__(self, **parts: nn.Module):
        super().__init__()
        if not parts:
            raise ValueError("SumOfLogits needs at least one part")
        for name, part in parts.items():
            self.add_module(name, part)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        parts = iter(self.children())
        out = next(parts)(x)
        for part in parts:
            out = out + part(x)
        return out
