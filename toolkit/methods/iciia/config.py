"""ICIIA configuration (README, "ICIIA"). Every default is the documented full run; `QUICK`
overrides it for the few-minutes run. Config files use an `[iciia]` table.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from dcl_core.config import bounded, seed_field
from dcl_core.config import load_config as load_method_config
from dcl_core.errors import ConfigError
from toolkit.train import OptimConfig


@dataclass
class BackboneConfig:
    """The backbone: any registry model. Trained on the union of the training clients' images
    (`frozen = false`), or kept as a frozen pre-trained extractor with only its classifier trained
    on its cached features (`frozen = true`, e.g. EfficientNet-Lite0)."""

    name: str = "mobilecnn"
    # upper bounds here and below: far past any sensible run, short of an allocation that fails
    # (or a loop that never ends) after the data has loaded
    widths: list[int] | None = bounded(None, ge=1, le=8192)  # mobilecnn*: stem + stage widths
    image_size: int = bounded(64, ge=32, le=1024)  # efficientnet_lite0 only
    pretrained: bool = True  # efficientnet_lite0 only (packaged ImageNet weights, offline)
    frozen: bool = False
    train: OptimConfig = field(default_factory=lambda: OptimConfig(
        optimizer="sgd", lr=0.05, momentum=0.9, weight_decay=5e-4, epochs=8, batch_size=64, schedule="cosine"))

    def kwargs(self) -> dict[str, Any]:
        if self.name == "efficientnet_lite0":
            return {"image_size": self.image_size, "pretrained": self.pretrained}
        return {"widths": list(self.widths)} if self.widths else {}


@dataclass
class ClientsConfig:
    """Seeded clients over the 20-class pool (Fashion-MNIST 0-9 + MNIST digits 10-19), see clients.py."""

    train_clients: int = bounded(120, ge=1, le=100_000)
    val_clients: int = bounded(40, ge=1, le=100_000)
    test_clients: int = bounded(100, ge=1, le=100_000)
    images_per_client: int = bounded(200, ge=2, le=1_000_000)
    min_classes: int = bounded(2, ge=1, le=20)
    max_classes: int = bounded(4, ge=1, le=20)
    val_fraction: float = bounded(0.1, gt=0, lt=1)  # of every class's images
    test_fraction: float = bounded(0.2, gt=0, lt=1)


@dataclass
class AttentionConfig:
    """The ICIIA module and its training (once, on the cloud, on cached backbone features)."""

    layers: int = bounded(1, ge=1, le=64)
    heads: int = bounded(4, ge=1, le=1024)
    dropout: float = bounded(0.1, ge=0, lt=1)
    history: int = bounded(15, ge=1, le=4096)  # B - 1 cached features; B = history + 1 tokens
    # P of ICIIA-T (the `iciia_t` result, its no-shuffle ablation and the exported program); 4 was
    # chosen on the validation clients of the quick run (D = 128: P = 16 leaves 8x8 blocks, which
    # SGD at lr 0.01 had not trained within 40 epochs: val 89.2% vs 91.7% for P = 4)
    partitions: int = bounded(4, ge=1, le=4096)
    sweep: list[int] = field(default_factory=lambda: [8, 16], metadata={"bounds": {"ge": 1, "le": 4096}})  # more ICIIA-T P
    sets_per_batch: int = bounded(4, ge=1, le=4096)  # sets of B images per batch, all from one client
    partial_history: float = bounded(0.25, ge=0, le=1)  # share of training sets with a partly filled history
    optimizer: Literal["sgd", "adam"] = "sgd"  # the paper's: SGD
    lr: float = bounded(0.01, gt=0)  # constant
    momentum: float = bounded(0.9, ge=0, lt=1)
    weight_decay: float = bounded(0.0, ge=0)
    grad_clip: float = bounded(5.0, ge=0)
    max_epochs: int = bounded(60, ge=1, le=10_000)
    patience: int = bounded(10, ge=1, le=10_000)  # early stop: epochs without a better validation accuracy
    threads: int = bounded(1, ge=0, le=1024)  # torch threads while training the module (0: leave as is)

    def optim(self) -> OptimConfig:
        """One epoch of `fit`, whose batches are (1 item =) one client's sets."""
        return OptimConfig(optimizer=self.optimizer, lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay,
                           epochs=1, batch_size=1, schedule="constant", grad_clip=self.grad_clip)


@dataclass
class FinetuneConfig:
    """Per-client fine-tuning of a last Linear on the first `shots` labelled images of each test
    client's stream (full-batch SGD, `steps` steps), evaluated on the rest of its stream. The
    exported `head_finetune` program is one such step (batch = `shots`)."""

    shots: int = bounded(20, ge=1, le=1_000_000)
    steps: int = bounded(30, ge=1, le=1_000_000)
    lr: float = bounded(0.05, gt=0)
    momentum: float = bounded(0.9, ge=0, lt=1)
    weight_decay: float = bounded(0.0, ge=0)


@dataclass
class ICIIAConfig:
    seed: int = seed_field()
    threads: int = bounded(0, ge=0, le=1024)  # 0: PyTorch's default
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    clients: ClientsConfig = field(default_factory=ClientsConfig)
    attention: AttentionConfig = field(default_factory=AttentionConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)

    def check(self, where: str) -> ICIIAConfig:
        c = self.clients
        if c.min_classes > c.max_classes:
            raise ConfigError(f"{where}.clients: min_classes ({c.min_classes}) > max_classes ({c.max_classes})")
        if c.val_fraction + c.test_fraction >= 1:
            raise ConfigError(f"{where}.clients: val_fraction + test_fraction must be < 1")
        if c.images_per_client <= self.finetune.shots:
            raise ConfigError(f"{where}.finetune.shots ({self.finetune.shots}) must be < clients.images_per_client "
                              f"({c.images_per_client}): the rest of each stream is what it is evaluated on")
        if self.backbone.name == "efficientnet_lite0" and not self.backbone.frozen:
            raise ConfigError(f"{where}.backbone: efficientnet_lite0 is used as a frozen extractor; set frozen = true")
        return self

    def check_dim(self, dim: int) -> None:
        """Rules that need the backbone's feature size D (known once the backbone is built)."""
        a = self.attention
        for p in [a.partitions, *a.sweep]:
            if dim % p:
                raise ConfigError(f"attention: partitions {p} does not divide the backbone's feature size {dim}")
        if dim % a.heads:
            raise ConfigError(f"attention.heads {a.heads} does not divide the backbone's feature size {dim}")


# The --quick run: fewer and smaller clients, fewer epochs (a few minutes on 2 cores).
QUICK: dict[str, Any] = {
    "clients": {"train_clients": 60, "val_clients": 30, "test_clients": 60, "images_per_client": 160},
    "backbone": {"train": {"epochs": 6}},
    "attention": {"max_epochs": 50, "patience": 10},
}


def load_config(path: str | None = None, quick: bool = False, seed: int | None = None,
                overrides: dict[str, Any] | None = None) -> ICIIAConfig:
    return load_method_config(ICIIAConfig, "iciia", path, QUICK if quick else None, seed, overrides)
