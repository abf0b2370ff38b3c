"""Reference models and inputs every exporter is tested on (also used by bench/).

- `fused_cnn`: two CNNs whose logits are summed, one frozen ("frozen.": a MobileCNN with a
  padded 10-class head) and one trainable ("trainable."), conv + BN + hardswish + depthwise:
  the shape of a controlled device step.
- `embedding_mlp`: user/item embeddings -> MLP -> click logit, trained with BCE.
Random but seeded weights, with non-trivial BatchNorm statistics so eval-mode BN matters.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from exporters.spec import TrainingSpec
from toolkit.models import EmbeddingMLP, MobileCNN, PadLogits, SumOfLogits


@dataclass
class Example:
    model: nn.Module
    inputs: tuple[torch.Tensor, ...]  # inference example (batch 1)
    input_names: list[str]
    output_names: list[str]
    spec: TrainingSpec
    batches: list[dict[str, torch.Tensor]]  # training batches: inputs + "y"


def _randomise_bn(model: nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.rand(m.num_features, generator=g) - 0.5)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)


def fused_cnn(batch: int = 8, seed: int = 0) -> Example:
    torch.manual_seed(seed)
    g = PadLogits(MobileCNN(10, (8, 16, 32), se=False), 20)
    f_d = MobileCNN(20, (4, 8, 16))
    model = SumOfLogits(frozen=g, trainable=f_d).eval()
    _randomise_bn(model, seed)
    gen = torch.Generator().manual_seed(seed + 1)
    batches = [{"x": torch.rand(batch, 1, 28, 28, generator=gen),
                "y": torch.randint(0, 20, (batch,), generator=gen)} for _ in range(4)]
    spec = TrainingSpec(trainable=["trainable."], loss="cross_entropy", lr=0.05, momentum=0.9, batch_size=batch)
    return Example(model, (torch.rand(1, 1, 28, 28, generator=gen),), ["x"], ["logits"], spec, batches)


def embedding_mlp(batch: int = 16, seed: int = 0) -> Example:
    torch.manual_seed(seed)
    model = EmbeddingMLP(num_users=50, num_items=80, dim=8, hidden=16).eval()
    gen = torch.Generator().manual_seed(seed + 1)
    batches = [{"user": torch.randint(0, 50, (batch,), generator=gen),
                "item": torch.randint(0, 80, (batch,), generator=gen),
                "y": torch.randint(0, 2, (batch,), generator=gen).float()} for _ in range(4)]
    spec = TrainingSpec(trainable=["user", "item", "mlp"], loss="bce_with_logits", lr=0.1, momentum=0.0,
                        batch_size=batch)
    inputs = (torch.randint(0, 50, (1,), generator=gen), torch.randint(0, 80, (1,), generator=gen))
    return Example(model, inputs, ["user", "item"], ["logit"], spec, batches)
