"""DC-CCL's bundle: the phone's inference program g(x) + f_d(x) and its controlled training step.

- inference: Fused(g, f_d), the phone's offline approximation of the served f_c + f_d.
- training: the controlled step CE(g(x) + f_d(x), y) with f_d ("b.") trainable and g ("a.")
  frozen inside the program, SGD with the run's device hyper-parameters.
Validation uses real data: device samples (digits) and cloud-domain samples from the run's own
scenario, rebuilt deterministically from its config.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

from exporters.manifest import Manifest
from exporters.spec import TrainingSpec
from toolkit.data.scenarios import build_dcccl_scenario
from toolkit.methods.dcccl import Fused, load_run

INPUT_NAMES, OUTPUT_NAMES = ["x"], ["logits"]
TRAIN_BATCHES = 4  # distinct fixed real batches cycled through the gate's steps
# On-device learning rate. The cloud-side simulation trains f_d with batch-statistics BN at the
# run's device lr (0.05, momentum 0.9); with frozen BN statistics (the portable default on
# phones) that lr diverges within 7 steps on a trained f_d (measured on the full run: loss 0.39
# -> 1.9e7 -> NaN), while 0.01 trains stably. Override with `dcl export --lr`.
ON_DEVICE_LR = 0.01


def device_program(run_dir: str | Path):
    """(cfg, Fused(g, f_d), scenario) for a run: what the phone holds."""
    cfg, trained, _ = load_run(run_dir)
    model = Fused(trained.models.g, trained.models.f_d).eval()
    return cfg, model, build_dcccl_scenario(cfg.scenario, cfg.seed)


def training_spec(cfg, bn: str = "frozen", momentum: float | None = None, lr: float = ON_DEVICE_LR) -> TrainingSpec:
    d = cfg.device
    return TrainingSpec(trainable=["b."], frozen=["a."], loss="cross_entropy", optimizer="sgd", lr=lr,
                        momentum=d.momentum if momentum is None else momentum, weight_decay=d.weight_decay,
                        batch_size=d.batch_size, bn=bn)  # type: ignore[arg-type]


def real_batches(sc, batch_size: int, n: int, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    data = sc.devices[0]
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(data), generator=g)[: batch_size * n]
    return [{"x": data.x[idx[i * batch_size:(i + 1) * batch_size]], "y": data.y[idx[i * batch_size:(i + 1) * batch_size]]}
            for i in range(n)]


def export_dcccl(run_dir: str | Path, target: str, formats: Sequence[str], out_dir: str | Path,
                 bn: str = "frozen", momentum: float | None = None, lr: float = ON_DEVICE_LR,
                 log=print) -> Manifest:
    from exporters.api import export

    cfg, model, sc = device_program(run_dir)
    log(f"exporting {run_dir} for {target} ({', '.join(formats)}) -> {out_dir}")
    spec = training_spec(cfg, bn, momentum, lr)
    real_inputs = [(sc.device_test.x[:1],), (sc.cloud_test.x[:1],)]
    return export(model, (sc.device_test.x[:1],), formats=formats, out_dir=out_dir, training=spec, target=target,
                  method="dcccl", name="dcccl", input_names=INPUT_NAMES, output_names=OUTPUT_NAMES,
                  validation_inputs=real_inputs, train_batches=real_batches(sc, spec.batch_size, TRAIN_BATCHES),
                  extra={"run_dir": str(Path(run_dir).resolve()), "num_classes": sc.num_classes,
                         "input": {"layout": "NCHW", "shape": [1, 1, 28, 28], "range": [0.0, 1.0],
                                   "channels": "grey"},
                         "device_submodel_prefix": "b.", "mimic_prefix": "a."}, log=log)
