"""Build DC-CCL's three models (f_c, f_d, g) from a config, identically at train and eval time."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from toolkit.methods.dcccl.config import DCCCLConfig
from toolkit.models import ChannelSplitCNN, PadLogits, SumOfLogits, create_model


@dataclass
class DCCCLModels:
    f_c: nn.Module  # large cloud submodel
    f_d: nn.Module  # small device submodel (the co-submodel)
    g: nn.Module  # light mimic of f_c, shipped to the device


def served(f_c: nn.Module, f_d: nn.Module) -> SumOfLogits:
    """The served model: logits summed, f_c(x) + f_d(x)."""
    return SumOfLogits(f_c=f_c, f_d=f_d)


def device_program(g: nn.Module, f_d: nn.Module) -> SumOfLogits:
    """What the phone holds: g(x) + f_d(x), the mimic standing in for f_c."""
    return SumOfLogits(g=g, f_d=f_d)


def build_models(cfg: DCCCLConfig, num_classes: int, pretrained: bool = True) -> DCCCLModels:
    """Seeded construction; `pretrained=False` skips loading ImageNet weights (a checkpoint follows)."""
    torch.manual_seed(cfg.seed)
    cloud_classes = cloud_num_classes(cfg) if cfg.cloud_head == "known" else num_classes
    if cfg.mode == "split":
        base = ChannelSplitCNN(num_classes, cfg.split.widths, cfg.split.ratio, se=cfg.split.se,
                               cloud_classes=cloud_classes)
        f_c, f_d = base.cloud, base.device
    else:
        kw = cfg.cloud_model.kwargs()
        if "pretrained" in kw:
            kw["pretrained"] = kw["pretrained"] and pretrained
        f_c = _padded(create_model(cfg.cloud_model.name, cloud_classes, **kw), num_classes)
        f_d = create_model(cfg.device_model.name, num_classes, **cfg.device_model.kwargs())
    g = _padded(create_model(cfg.mimic_model.name, cloud_classes, **cfg.mimic_model.kwargs()), num_classes)
    return DCCCLModels(f_c=f_c, f_d=f_d, g=g)


def cloud_num_classes(cfg: DCCCLConfig) -> int:
    """The cloud holds the first `device_label_offset` classes of the joint label space."""
    return cfg.scenario.device_label_offset


def _padded(model: nn.Module, num_classes: int) -> nn.Module:
    out = getattr(model, "last_layer").out_features
    return model if out == num_classes else PadLogits(model, num_classes)
