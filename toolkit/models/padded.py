"""PadLogits: a model that knows only the first k classes of a joint label space.

DC-CCL sums cloud and device logits over one joint label space. The cloud submodel never saw the
device's classes, so rather than let it learn arbitrary (strongly negative) logits for them, its
head covers only its own classes and the rest are padded with zeros: it has no opinion on
classes it has never seen, and its mimic reproduces that exactly.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class PadLogits(nn.Module):
    def __init__(self, model: nn.Module, num_classes: int):
        super().__init__()
        self.model = model
        self.num_classes = num_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.model(x)
        return F.pad(logits, (0, self.num_classes - logits.shape[-1]))

    @property
    def last_layer(self) -> nn.Module:
        return self.model.last_layer
