"""The architecture corpus every format is tested on: real kinds of models users export.

Each entry builds a `ProgramSpec` (model, example input, real or seeded validation inputs, and a
training program: the head fine-tune, the whole network, or none) ready for `exporters.export`.
These functions are also valid `dcl export --model` factories, e.g.
`dcl export --model toolkit.models.corpus:resnet --target pixel-8`.

- efficientnet_lite0: the pre-trained EfficientNet-Lite0 at its native 224x224 RGB input
  (ZeroPad2d "same" padding, ReLU6, depthwise convs), validated on foolbox's real ImageNet images;
- mobilenet_v2: inverted residuals, ReLU6, `x.mean((2, 3))` pooling, dropout;
- resnet: basic blocks, max pooling, adaptive average pooling;
- transformer: nn.MultiheadAttention, LayerNorm, GELU over a sequence of features;
- embedding_mlp: the user/item embedding recommender (integer inputs, BCE).
"""
from __future__ import annotations

from typing import Callable, Literal

import torch
from torch import nn

from exporters.api import ProgramSpec
from exporters.spec import ALL, TrainingSpec
from toolkit.models.efficientnet_lite import efficientnet_lite0_imagenet
from toolkit.models.mobilenet_v2 import MobileNetV2
from toolkit.models.recommender import EmbeddingMLP
from toolkit.models.resnet import ResNet
from toolkit.models.transformer import TransformerClassifier

Training = Literal["none", "head", "full"]
TRAIN_BATCHES = 3


def _randomise_bn(model: nn.Module, seed: int) -> nn.Module:
    """Non-trivial running statistics, so a format that ignored them would fail the gate."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.rand(m.num_features, generator=g) * 0.2 - 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) * 0.5 + 0.75)
    return model.eval()


def head_of(model: nn.Module) -> list[str]:
    """The module path of the model's classifier (its `last_layer`), as a TrainingSpec prefix."""
    return [n for n, m in model.named_modules() if m is model.last_layer]


def _classifier(name: str, model: nn.Module, shape: tuple[int, ...], classes: int, training: Training,
                batch: int, validation: list[tuple[torch.Tensor, ...]] | None = None, lr: float = 0.01,
                seed: int = 0) -> ProgramSpec:
    g = torch.Generator().manual_seed(seed + 1)
    spec = None
    if training != "none":
        spec = TrainingSpec(trainable=head_of(model) if training == "head" else [ALL], loss="cross_entropy", lr=lr,
                            momentum=0.9, batch_size=batch)
    batches = [{"x": torch.rand((batch, *shape), generator=g), "y": torch.randint(0, classes, (batch,), generator=g)}
               for _ in range(TRAIN_BATCHES)] if spec else []
    return ProgramSpec(name, model, (torch.rand((1, *shape), generator=g),), ["x"], ["logits"], training=spec,
                       validation_inputs=validation or [], train_batches=batches)


def efficientnet_lite0(training: Training = "none", batch: int = 2) -> ProgramSpec:
    from toolkit.data.sources import load_foolbox_images

    net = efficientnet_lite0_imagenet()
    images, _ = load_foolbox_images("imagenet", 224)
    real = [((images[i:i + 1].float() - 127.0) / 128.0,) for i in range(2)]
    program = _classifier("efficientnet_lite0", _Head(net), (3, 224, 224), 1000, training, batch, real, lr=0.001)
    program.extra = {"input": {"layout": "NCHW", "shape": [1, 3, 224, 224], "normalise": "(x - 127) / 128",
                               "channels": "RGB"}}
    return program


class _Head(nn.Module):
    """Names the package's classifier `last_layer`, as the other corpus models do."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    @property
    def last_layer(self) -> nn.Module:
        return self.net._fc


def mobilenet_v2(training: Training = "full", batch: int = 4) -> ProgramSpec:
    torch.manual_seed(0)
    return _classifier("mobilenet_v2", _randomise_bn(MobileNetV2(10), 1), (3, 32, 32), 10, training, batch)


def resnet(training: Training = "full", batch: int = 4) -> ProgramSpec:
    torch.manual_seed(0)
    return _classifier("resnet", _randomise_bn(ResNet(10), 2), (3, 32, 32), 10, training, batch)


def transformer(training: Training = "full", batch: int = 4) -> ProgramSpec:
    torch.manual_seed(0)
    return _classifier("transformer", TransformerClassifier(10).eval(), (8, 32), 10, training, batch)


def embedding_mlp(training: Training = "full", batch: int = 16) -> ProgramSpec:
    torch.manual_seed(0)
    model = EmbeddingMLP(num_users=50, num_items=80, dim=8, hidden=16).eval()
    g = torch.Generator().manual_seed(1)
    spec = None
    if training != "none":
        spec = TrainingSpec(trainable=head_of(model) if training == "head" else [ALL], loss="bce_with_logits", lr=0.1,
                            batch_size=batch)
    batches = [{"user": torch.randint(0, 50, (batch,), generator=g), "item": torch.randint(0, 80, (batch,), generator=g),
                "y": torch.randint(0, 2, (batch,), generator=g).float()} for _ in range(TRAIN_BATCHES)] if spec else []
    inputs = (torch.randint(0, 50, (1,), generator=g), torch.randint(0, 80, (1,), generator=g))
    return ProgramSpec("embedding_mlp", model, inputs, ["user", "item"], ["logit"], training=spec, train_batches=batches)


CORPUS: dict[str, Callable[..., ProgramSpec]] = {
    "efficientnet_lite0": efficientnet_lite0,
    "mobilenet_v2": mobilenet_v2,
    "resnet": resnet,
    "transformer": transformer,
    "embedding_mlp": embedding_mlp,
}
