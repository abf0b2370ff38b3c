"""A flat model registry: `create_model(name, num_classes, **kwargs)`."""
from __future__ import annotations

from typing import Any, Callable

from torch import nn

from dcl_core.errors import ConfigError
from toolkit.models.efficientnet_lite import EfficientNetLite0
from toolkit.models.mobilecnn import PRESETS, MobileCNN
from toolkit.models.padded import PadLogits
from toolkit.models.recommender import EmbeddingMLP
from toolkit.models.split_cnn import ChannelSplitCNN, split_widths
from toolkit.models.sum_logits import SumOfLogits

_REGISTRY: dict[str, Callable[..., nn.Module]] = {
    "mobilecnn": MobileCNN,
    "channel_split_cnn": ChannelSplitCNN,
    "efficientnet_lite0": EfficientNetLite0,
    "embedding_mlp": lambda num_classes=1, **kw: EmbeddingMLP(**kw),
}
for _name, _widths in PRESETS.items():
    _REGISTRY[_name] = (lambda w: (lambda num_classes, **kw: MobileCNN(num_classes, kw.pop("widths", w), **kw)))(_widths)


def model_names() -> list[str]:
    return sorted(_REGISTRY)


def create_model(name: str, num_classes: int, **kwargs: Any) -> nn.Module:
    if name not in _REGISTRY:
        raise ConfigError(f"unknown model {name!r}; known models: {', '.join(model_names())}")
    return _REGISTRY[name](num_classes, **kwargs)


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def state_bytes(model: nn.Module) -> int:
    """Bytes of everything that ships with the model: parameters and buffers (BN statistics)."""
    return sum(t.numel() * t.element_size() for t in model.state_dict().values())


__all__ = ["ChannelSplitCNN", "EfficientNetLite0", "EmbeddingMLP", "MobileCNN", "count_params", "create_model",
           "model_names", "PadLogits", "split_widths", "state_bytes", "SumOfLogits"]
