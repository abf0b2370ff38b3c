"""What an export is asked to produce: tensor signatures and the on-device training program.

Methods describe their exports with these records; exporters know nothing about methods.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn

from dcl_core.bundle import Artifact
from dcl_core.errors import ExportError

ALL = "*"  # in TrainingSpec.trainable: every parameter of the model
DTYPES = {torch.float32: "float32", torch.int64: "int64", torch.int32: "int32"}  # names used in manifests

__all__ = ["TrainingSpec", "loss_fn"]


@dataclass
class TrainingSpec:
    """The on-device training program: loss(model(*inputs), target), then one optimizer step.

    trainable: parameter names or module-path prefixes (e.g. "f_d." for a whole submodule) that
    learn; every other parameter is frozen inside the program. bn: "frozen" keeps BatchNorm in
    eval mode (running statistics fixed, affine parameters still train if trainable); "train"
    normalises with batch statistics like PyTorch's train mode (supported where a format can).
    """

    trainable: list[str]
    frozen: list[str] = field(default_factory=list)
    loss: Literal["cross_entropy", "bce_with_logits", "mse"] = "cross_entropy"
    optimizer: Literal["sgd"] = "sgd"
    lr: float = 0.01
    momentum: float = 0.0
    weight_decay: float = 0.0
    batch_size: int = 8
    bn: Literal["frozen", "train"] = "frozen"

    def trainable_names(self, model: nn.Module) -> list[str]:
        """Full parameter names that train, in model order."""
        names = [n for n, _ in model.named_parameters()]
        chosen = [n for n in names if any(t == ALL or n == t or n.startswith(t if t.endswith(".") else t + ".")
                                          for t in self.trainable)]
        chosen = [n for n in chosen if not any(n == f or n.startswith(f if f.endswith(".") else f + ".")
                                               for f in self.frozen)]
        if not chosen:
            raise ExportError(f"training spec selects no parameter (trainable={self.trainable}); "
                              f"parameter names start with: {sorted({n.split('.')[0] for n in names})}")
        return chosen

    def batch_statistics_layers(self, model: nn.Module, trainable: list[str] | None = None) -> set[str]:
        """The one BatchNorm rule every format and the PyTorch reference follow: with bn="train" a
        BatchNorm whose own weight trains normalises with batch statistics; every other BatchNorm
        (frozen parts included, and all of them with bn="frozen") uses its running statistics."""
        if self.bn != "train":
            return set()
        chosen = set(trainable if trainable is not None else self.trainable_names(model))
        return {name for name, m in model.named_modules()
                if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.weight is not None
                and f"{name}.weight" in chosen}

    @staticmethod
    def from_artifact(artifact: Artifact, default_loss: str = "cross_entropy", **fields: object) -> "TrainingSpec":
        """The training program a bundle's artifact records (trainable set, loss, optimizer), e.g.
        to run the same step in PyTorch beside the runtime; `fields` sets what the manifest does
        not record (batch_size, bn)."""
        if artifact.kind != "training" or not artifact.optimizer:
            raise ExportError(f"artifact {artifact.name} is not a training artifact with an optimizer")
        o = artifact.optimizer
        return TrainingSpec(trainable=list(artifact.trainable), loss=artifact.loss or default_loss,  # type: ignore[arg-type]
                            lr=o["lr"], momentum=o.get("momentum", 0.0), weight_decay=o.get("weight_decay", 0.0),
                            **fields)  # type: ignore[arg-type]

    def optimizer_record(self) -> dict:
        return {"name": self.optimizer, "lr": self.lr, "momentum": self.momentum,
                "weight_decay": self.weight_decay, "dampening": 0.0, "nesterov": False}


def loss_fn(kind: str):
    """The PyTorch reference loss for a TrainingSpec (mean reduction everywhere)."""
    import torch.nn.functional as F

    return {
        "cross_entropy": lambda out, y: F.cross_entropy(out, y),
        "bce_with_logits": lambda out, y: F.binary_cross_entropy_with_logits(out, y),
        "mse": lambda out, y: F.mse_loss(out, y),
    }[kind]
