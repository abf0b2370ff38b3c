"""The channel-split ("vertical split") CNN of DC-CCL.

Every layer's channels are split into a wide cloud branch and a narrow device branch at a fixed
ratio (e.g. 7:1). The branches never mix (each is its own MobileCNN, so no conv sees the other's
channels) and their heads are summed: logits = cloud(x) + device(x). Splitting this way instead
of building two unrelated nets keeps one "base model" whose total width is the config's widths.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from toolkit.models.mobilecnn import MobileCNN
from toolkit.models.padded import PadLogits


def split_widths(widths: Sequence[int], ratio: float) -> tuple[list[int], list[int]]:
    """Split each width into (cloud, device) parts with cloud:device = ratio:1 (device >= 1)."""
    if ratio <= 0:
        raise ValueError(f"split ratio must be positive, got {ratio}")
    device = [max(1, round(w / (ratio + 1))) for w in widths]
    cloud = [max(1, w - d) for w, d in zip(widths, device)]
    return cloud, device


class ChannelSplitCNN(nn.Module):
    def __init__(self, num_classes: int, widths: Sequence[int] = (64, 128, 256, 512), ratio: float = 7.0,
                 se: bool = False, in_channels: int = 1, cloud_classes: int | None = None):
        super().__init__()
        cloud_w, device_w = split_widths(widths, ratio)
        self.cloud: nn.Module = MobileCNN(num_classes, cloud_w, se=se, in_channels=in_channels)
        if cloud_classes is not None and cloud_classes < num_classes:
            # the cloud head covers only the cloud's classes (see toolkit.models.padded)
            self.cloud = PadLogits(MobileCNN(cloud_classes, cloud_w, se=se, in_channels=in_channels), num_classes)
        self.device = MobileCNN(num_classes, device_w, se=se, in_channels=in_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cloud(x) + self.device(x)
