"""MobileNetV3-style building blocks, kept to ops every exporter handles.

Only Conv2d (dense or depthwise), BatchNorm2d, Hardswish/ReLU/Hardsigmoid, global average pooling
and Linear appear, so the TFLite rebuild and the Core ML updatable path can map each layer 1:1.
"""
from __future__ import annotations

from torch import nn


class ConvBNAct(nn.Sequential):
    """Conv2d (no bias) -> BatchNorm2d -> activation (Hardswish by default, or none)."""

    def __init__(self, cin: int, cout: int, kernel: int = 3, stride: int = 1, groups: int = 1, act: bool = True):
        super().__init__(
            nn.Conv2d(cin, cout, kernel, stride, padding=kernel // 2, groups=groups, bias=False),
            nn.BatchNorm2d(cout),
            nn.Hardswish() if act else nn.Identity(),
        )


class SqueezeExcite(nn.Module):
    """Channel attention: global pool -> 1x1 reduce -> ReLU -> 1x1 expand -> Hardsigmoid -> scale."""

    def __init__(self, channels: int, reduction: int = 4):
        super().__init__()
        hidden = max(channels // reduction, 4)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.reduce = nn.Conv2d(channels, hidden, 1)
        self.act = nn.ReLU()
        self.expand = nn.Conv2d(hidden, channels, 1)
        self.gate = nn.Hardsigmoid()

    def forward(self, x):
        return x * self.gate(self.expand(self.act(self.reduce(self.pool(x)))))


class DepthwiseSeparable(nn.Sequential):
    """Depthwise 3x3 (stride s) -> [squeeze-excite] -> pointwise 1x1, each conv with BN + Hardswish."""

    def __init__(self, cin: int, cout: int, stride: int, se: bool = False):
        layers: list[nn.Module] = [ConvBNAct(cin, cin, 3, stride, groups=cin)]
        if se:
            layers.append(SqueezeExcite(cin))
        layers.append(ConvBNAct(cin, cout, 1))
        super().__init__(*layers)
