"""DC-CCL configuration (README, "DC-CCL"). Every default here is the documented full run;
`QUICK` overrides it for the few-minutes run.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from dcl_core.config import bounded, seed_field
from dcl_core.config import load_config as load_method_config
from dcl_core.errors import ConfigError
from toolkit.methods.dcccl.scenario import ScenarioConfig
from toolkit.train import OptimConfig


@dataclass
class ModelChoice:
    """A registry model (toolkit.models): name plus the keyword arguments it takes."""

    name: str = "mobilecnn_xs"
    # upper bounds here and below: far past any sensible run, short of an allocation that fails
    # (or a loop that never ends) after the data has loaded; 8192 channels is 3x EfficientNet-B7's widest
    widths: list[int] | None = bounded(None, ge=1, le=8192)
    se: bool = False
    image_size: int = bounded(64, ge=32, le=1024)  # efficientnet_lite0 only
    pretrained: bool = True  # efficientnet_lite0 only

    def kwargs(self) -> dict[str, Any]:
        if self.name == "efficientnet_lite0":
            return {"image_size": self.image_size, "pretrained": self.pretrained}
        kw: dict[str, Any] = {"se": self.se}
        if self.widths:
            kw["widths"] = list(self.widths)
        return kw


@dataclass
class SplitConfig:
    """Vertical split: one base CNN whose every layer is split cloud:device = ratio:1."""

    widths: list[int] = field(default_factory=lambda: [64, 128, 256, 256], metadata={"bounds": {"ge": 2, "le": 8192}})
    ratio: float = bounded(7.0, gt=0)
    se: bool = False


@dataclass
class MimicConfig:
    loss: Literal["mse", "kl"] = "mse"
    temperature: float = bounded(4.0, gt=0)
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(
        optimizer="adam", lr=1e-3, weight_decay=0.0, epochs=6, batch_size=128, schedule="step"))


@dataclass
class DCCCLConfig:
    seed: int = seed_field()
    threads: int = bounded(0, ge=0, le=1024)  # 0: PyTorch's default
    # "split": f_c and f_d are the two branches of one channel-split CNN;
    # "hetero": f_c is any registry model (e.g. the pre-trained EfficientNet-Lite0), f_d another.
    mode: Literal["split", "hetero"] = "split"
    split: SplitConfig = field(default_factory=SplitConfig)
    cloud_model: ModelChoice = field(default_factory=lambda: ModelChoice(name="efficientnet_lite0"))
    device_model: ModelChoice = field(default_factory=lambda: ModelChoice(name="mobilecnn_xs"))
    mimic_model: ModelChoice = field(default_factory=lambda: ModelChoice(name="mobilecnn_m"))
    # "known": f_c (and so g) has logits only for the classes the cloud holds, zero-padded to the
    # joint label space; "all": f_c learns logits for every class, including never-seen ones.
    cloud_head: Literal["known", "all"] = "known"
    scenario: ScenarioConfig = field(default_factory=ScenarioConfig)
    cloud: OptimConfig = field(default_factory=lambda: OptimConfig(
        optimizer="sgd", lr=0.05, momentum=0.9, weight_decay=5e-4, epochs=6, batch_size=128, schedule="cosine"))
    mimic: MimicConfig = field(default_factory=MimicConfig)
    device: OptimConfig = field(default_factory=lambda: OptimConfig(
        optimizer="sgd", lr=0.05, momentum=0.9, weight_decay=5e-4, epochs=2, batch_size=32))
    rounds: int = bounded(10, ge=1, le=10_000)
    # Step 4 options: the cloud trains its own copy of f_d on cloud data (controlled by the true
    # f_c) and merges it 0.5/0.5 with the devices' average, then fine-tunes f_d's last layer.
    cloud_copy_merge: bool = False
    cloud_copy_samples: int = bounded(5000, ge=1, le=10**8)
    finetune: OptimConfig = field(default_factory=lambda: OptimConfig(
        optimizer="sgd", lr=0.01, momentum=0.9, weight_decay=0.0, epochs=0, batch_size=128))
    finetune_samples: int = bounded(5000, ge=1, le=10**8)

    def check(self, where: str) -> "DCCCLConfig":
        """Rules across fields: stages that must train do (0 epochs is allowed only for the
        optional last-layer fine-tune)."""
        for name, optim in (("cloud", self.cloud), ("mimic.optim", self.mimic.optim), ("device", self.device)):
            if optim.epochs < 1:
                raise ConfigError(f"{where}.{name}.epochs: must be >= 1 (0 trains nothing), got {optim.epochs}")
        return self


# The --quick run: same pipeline, smaller data and fewer epochs (minutes on 2 cores).
# Chosen on the validation sets (the union_val gap oracle - mimic, seeds 0 and 1; issue P11).
QUICK: dict[str, Any] = {
    # on 2 cores shared with other jobs, two intra-op threads spin against them (a forward pass
    # measured 10-30x slower than with one thread); one thread keeps the run at a few minutes
    "threads": 1,
    "scenario": {"cloud_train_limit": 8000, "num_devices": 2, "test_limit": 2000, "cloud_val": 2000},
    "cloud": {"epochs": 3},
    # the mimic's fidelity decides how close DC-CCL comes to the oracle: at 6 epochs its logits on
    # device images were off enough that f_d, fitted to them, got 38% of digits vs the oracle's 70%
    "mimic": {"optim": {"epochs": 12}},
    # the full run's 10 rounds, each gentler: with 5 rounds (or 2 epochs a round) at lr 0.05 the
    # val gap was 8-12 points, with 10 rounds at lr 0.02 about 3 before the longer mimic
    "device": {"epochs": 1, "lr": 0.02},
    "cloud_copy_samples": 1000,
    "finetune_samples": 1000,
}


def load_config(path: str | None = None, quick: bool = False, seed: int | None = None,
                overrides: dict[str, Any] | None = None) -> DCCCLConfig:
    return load_method_config(DCCCLConfig, "dcccl", path, QUICK if quick else None, seed, overrides)
