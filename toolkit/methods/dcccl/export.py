"""DC-CCL's bundle: one program, `device_step`, for inference g(x) + f_d(x) and its controlled
training step.

- inference: g(x) + f_d(x), the phone's offline approximation of the served f_c + f_d.
- training: the controlled step CE(g(x) + f_d(x), y) with f_d trainable and g frozen inside the
  program, SGD with the run's device hyper-parameters (lr: ON_DEVICE_LR unless overridden).
Validation uses real data: device samples (digits) and cloud-domain samples from the run's own
scenario, rebuilt deterministically from its config.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from exporters.api import ProgramSpec
from exporters.spec import TrainingSpec
from toolkit.methods.dcccl.config import DCCCLConfig
from toolkit.methods.dcccl.model import device_program
from toolkit.methods.dcccl.pipeline import load_run
from toolkit.methods.dcccl.scenario import Scenario, build_dcccl_scenario

PROGRAM = "device_step"
DEVICE_PART, MIMIC_PART = "f_d", "g"  # submodule names inside the device program
INPUT_NAMES, OUTPUT_NAMES = ["x"], ["logits"]
TRAIN_BATCHES = 4  # distinct fixed real batches cycled through the gate's steps
# On-device learning rate. The cloud-side simulation trains f_d with batch-statistics BN at the
# run's device lr (0.05, momentum 0.9); with frozen BN statistics (the portable default on
# phones) that lr diverges within 7 steps on a trained f_d (measured on the full run: loss 0.39
# -> 1.9e7 -> NaN), while 0.01 trains stably. Override with `dcl export --lr`.
ON_DEVICE_LR = 0.01


def phone_program(run_dir: str | Path) -> tuple[DCCCLConfig, nn.Module, Scenario]:
    """(cfg, g(x) + f_d(x), scenario) for a run: what the phone holds."""
    cfg, trained, _ = load_run(run_dir)
    model = device_program(trained.models.g, trained.models.f_d).eval()
    return cfg, model, build_dcccl_scenario(cfg.scenario, cfg.seed)


def training_spec(cfg: DCCCLConfig, bn: str = "frozen", lr: float | None = None) -> TrainingSpec:
    d = cfg.device
    return TrainingSpec(trainable=[f"{DEVICE_PART}."], frozen=[f"{MIMIC_PART}."], loss="cross_entropy",
                        optimizer="sgd", lr=ON_DEVICE_LR if lr is None else lr, momentum=d.momentum,
                        weight_decay=d.weight_decay, batch_size=d.batch_size, bn=bn)  # type: ignore[arg-type]


def real_batches(sc: Scenario, batch_size: int, n: int, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    data = sc.devices[0]
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(data), generator=g)[: batch_size * n]
    return [{"x": data.x[idx[i * batch_size:(i + 1) * batch_size]], "y": data.y[idx[i * batch_size:(i + 1) * batch_size]]}
            for i in range(n)]


def device_step_program(run_dir: str | Path, bn: str = "frozen", lr: float | None = None) -> ProgramSpec:
    cfg, model, sc = phone_program(run_dir)
    spec = training_spec(cfg, bn, lr)
    return ProgramSpec(
        PROGRAM, model, (sc.device_test.x[:1],), INPUT_NAMES, OUTPUT_NAMES, training=spec,
        validation_inputs=[(sc.device_test.x[:1],), (sc.cloud_test.x[:1],)],
        train_batches=real_batches(sc, spec.batch_size, TRAIN_BATCHES),
        extra={"num_classes": sc.num_classes,
               "input": {"layout": "NCHW", "shape": [1, 1, 28, 28], "range": [0.0, 1.0], "channels": "grey"},
               "trainable_part": f"{DEVICE_PART}.", "frozen_part": f"{MIMIC_PART}."})
