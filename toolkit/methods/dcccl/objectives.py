"""DC-CCL's controlled objective: the device submodel learns as if the cloud submodel were there."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from toolkit.train import frozen


class Controlled(nn.Module):
    """DC-CCL's controlled step: CE(control(x) + trainable(x), y) with `control` frozen.

    `control` is the mimic g on a device (or the true f_c for the oracle and on the cloud). It
    stays in eval mode even when the objective is put in train mode.
    """

    def __init__(self, trainable: nn.Module, control: nn.Module):
        super().__init__()
        self.trainable = trainable
        self.control = frozen(control)

    def train(self, mode: bool = True) -> "Controlled":
        super().train(mode)
        self.control.eval()
        return self

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            c = self.control(x)
        return F.cross_entropy(c + self.trainable(x), y)
