"""A MobileNetV2-style network: inverted residual blocks (1x1 expand -> ReLU6 -> 3x3 depthwise ->
ReLU6 -> 1x1 linear projection, residual add when shapes allow), global average pooling written
as `x.mean((2, 3))` the way users write it, dropout and a Linear head.

Small widths by default: a corpus model the exporters are tested on, not a pre-trained network.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn


def conv_bn_relu6(cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU6())


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int):
        super().__init__()
        hidden = cin * expand
        layers: list[nn.Module] = [conv_bn_relu6(cin, hidden, 1)] if expand != 1 else []
        layers += [conv_bn_relu6(hidden, hidden, 3, stride, groups=hidden),
                   nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout)]
        self.block = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.block(x)
        return x + y if self.residual else y


class MobileNetV2(nn.Module):
    # (expand, out channels, repeats, first stride) per stage, as in the paper's table, scaled down
    STAGES: Sequence[tuple[int, int, int, int]] = ((1, 8, 1, 1), (4, 12, 2, 2), (4, 16, 2, 2), (4, 24, 1, 1))

    def __init__(self, num_classes: int = 10, in_channels: int = 3, stem: int = 8, last: int = 64,
                 dropout: float = 0.2):
        super().__init__()
        layers: list[nn.Module] = [conv_bn_relu6(in_channels, stem, 3, 2)]
        cin = stem
        for expand, cout, repeats, stride in self.STAGES:
            for i in range(repeats):
                layers.append(InvertedResidual(cin, cout, stride if i == 0 else 1, expand))
                cin = cout
        layers.append(conv_bn_relu6(cin, last, 1))
        self.features = nn.Sequential(*layers)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(last, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.dropout(self.features(x).mean((2, 3))))

    @property
    def last_layer(self) -> nn.Linear:
        return self.classifier
