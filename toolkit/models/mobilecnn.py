"""Small mobile CNNs written here: a stride-1 stem, then depthwise-separable stages (stride 2).

For 28x28 grey input. `widths[0]` is the stem width, every further entry adds one stage.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from toolkit.models.blocks import ConvBNAct, DepthwiseSeparable


class MobileCNN(nn.Module):
    def __init__(self, num_classes: int, widths: Sequence[int] = (16, 32, 64, 128), se: bool = False,
                 in_channels: int = 1):
        super().__init__()
        widths = [int(w) for w in widths]
        if len(widths) < 1 or min(widths) < 1:
            raise ValueError(f"MobileCNN widths must be positive, got {widths}")
        self.widths = widths
        stages: list[nn.Module] = [ConvBNAct(in_channels, widths[0], 3, 1)]
        for cin, cout in zip(widths[:-1], widths[1:]):
            stages.append(DepthwiseSeparable(cin, cout, stride=2, se=se))
        self.features = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.classifier = nn.Linear(widths[-1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.flatten(self.pool(self.features(x))))

    @property
    def last_layer(self) -> nn.Linear:
        return self.classifier


PRESETS: dict[str, tuple[int, ...]] = {
    "mobilecnn_xs": (8, 16, 32, 32),
    "mobilecnn_s": (12, 24, 48, 64),
    "mobilecnn_m": (24, 48, 96, 128),
    "mobilecnn_l": (48, 96, 192, 256),
}
