"""DC-CCL end to end: cloud step, mimic distillation, controlled device rounds, baselines, metrics.

Results (accuracy in percent on the cloud test set, the device test set and their union):
- cloud_only:   f_c alone.
- device_only:  f_d trained alone on device data (no control), evaluated alone.
- dcccl_mimic:  f_c + f_d, f_d trained on devices controlled by the mimic g.
- dcccl_oracle: f_c + f_d, f_d trained controlled by the true f_c (upper bound of control quality).
"""
from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dcl_core.config import to_dict
from toolkit.data.imageset import ImageSet
from toolkit.distributed import context
from toolkit.methods.dcccl.config import DCCCLConfig
from toolkit.methods.dcccl.model import DCCCLModels, build_models, served
from toolkit.methods.dcccl.rounds import run_rounds
from toolkit.methods.dcccl.scenario import Scenario, build_dcccl_scenario, joint_num_classes
from toolkit.models import count_params, state_bytes
from toolkit.run import RunDir, atomic_run_dir, open_run
from toolkit.train import Distill, Supervised, accuracy, fit, frozen

METHOD = "dcccl"  # the registry key, written into every run's config.json and metrics
RESULTS = ("cloud_only", "device_only", "dcccl_mimic", "dcccl_oracle")
# checkpoint name of the f_d each result uses (cloud_only has none)
F_D_CHECKPOINT = {"device_only": "f_d_device_only", "dcccl_mimic": "f_d", "dcccl_oracle": "f_d_oracle"}


@dataclass
class TrainedDCCCL:
    models: DCCCLModels
    f_d_oracle: nn.Module
    f_d_device_only: nn.Module

    def served(self, result: str) -> nn.Module:
        """The model each result evaluates."""
        return {
            "cloud_only": self.models.f_c,
            "device_only": self.f_d_device_only,
            "dcccl_mimic": served(self.models.f_c, self.models.f_d),
            "dcccl_oracle": served(self.models.f_c, self.f_d_oracle),
        }[result]


def _score(model: nn.Module, sc: Scenario, split: str = "test") -> dict[str, float]:
    cloud, device = (sc.cloud_test, sc.device_test) if split == "test" else (sc.cloud_val, sc.device_val)
    return {
        f"cloud_{split}": round(accuracy(model, cloud), 2),
        f"device_{split}": round(accuracy(model, device), 2),
        f"union_{split}": round(accuracy(model, ImageSet.concat(cloud, device)), 2),
    }


def evaluate(trained: TrainedDCCCL, sc: Scenario, with_val: bool = True) -> dict[str, dict[str, float]]:
    out = {}
    for name in RESULTS:
        model = trained.served(name)
        out[name] = _score(model, sc, "test") | (_score(model, sc, "val") if with_val else {})
    return out


def sizes(models: DCCCLModels) -> dict[str, Any]:
    """Parameter counts and fp32 bytes of each part, and of what crosses the network per round.

    down_vs_cloud = (f_d + g) / f_c in bytes: what the phone receives relative to the cloud model
    it stands in for (DC-CCL's point is that this stays well below 1).
    """
    part = {n: {"params": count_params(m), "bytes": state_bytes(m)}
            for n, m in (("f_c", models.f_c), ("g", models.g), ("f_d", models.f_d))}
    down = part["f_d"]["bytes"] + part["g"]["bytes"]
    return part | {
        "down_to_device_bytes": down,
        "up_to_cloud_bytes": part["f_d"]["bytes"],
        "down_vs_cloud": down / part["f_c"]["bytes"],
    }


def train(cfg: DCCCLConfig) -> tuple[TrainedDCCCL, Scenario, dict[str, Any]]:
    """Run the whole DC-CCL schedule; returns the trained models, the scenario and a timing log."""
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    sc = build_dcccl_scenario(cfg.scenario, cfg.seed)
    models = build_models(cfg, sc.num_classes)
    log: dict[str, Any] = {"scenario": sc.summary()}
    t0 = time.perf_counter()

    # 1. cloud step: f_c on cloud data, cross-entropy
    log["cloud_loss"] = fit(Supervised(models.f_c), sc.cloud_train, cfg.cloud, cfg.seed + 1, "cloud f_c")
    frozen(models.f_c)
    t1 = time.perf_counter()

    # 2. mimic distillation on the cloud: g imitates the frozen f_c's logits on cloud data
    log["mimic_loss"] = fit(Distill(models.g, models.f_c, cfg.mimic.loss, cfg.mimic.temperature),
                            sc.cloud_train, cfg.mimic.optim, cfg.seed + 2, "mimic g")
    frozen(models.g)
    t2 = time.perf_counter()

    # 3-4. controlled device rounds (mimic), and the two baselines from the same f_d initialisation
    f_d_init = copy.deepcopy(models.f_d.state_dict())
    f_d_oracle, f_d_device_only = copy.deepcopy(models.f_d), copy.deepcopy(models.f_d)
    log["rounds_mimic"] = run_rounds(models.f_d, models.g, models.f_c, sc, cfg, "dcccl mimic")
    f_d_oracle.load_state_dict(f_d_init)
    log["rounds_oracle"] = run_rounds(f_d_oracle, models.f_c, models.f_c, sc, cfg, "dcccl oracle")
    f_d_device_only.load_state_dict(f_d_init)
    log["rounds_device_only"] = run_rounds(f_d_device_only, None, None, sc, cfg, "device only")
    t3 = time.perf_counter()
    log["seconds"] = {"cloud": round(t1 - t0, 1), "mimic": round(t2 - t1, 1), "devices": round(t3 - t2, 1)}
    return TrainedDCCCL(models, f_d_oracle, f_d_device_only), sc, log


def train_to_dir(cfg: DCCCLConfig, out: str | Path, force: bool = False) -> dict[str, Any]:
    """Train and write the run directory (atomically, by the main process only)."""
    trained, sc, log = train(cfg)
    metrics = {"method": METHOD, "results": evaluate(trained, sc), "sizes": sizes(trained.models),
               "world_size": context().world_size, "log": log}
    if context().is_main:
        with atomic_run_dir(out, force) as run:
            run.write_json("config.json", {"method": METHOD, "config": to_dict(cfg)})
            run.save_model("f_c", trained.models.f_c)
            run.save_model("g", trained.models.g)
            run.save_model("f_d", trained.models.f_d)
            run.save_model("f_d_oracle", trained.f_d_oracle)
            run.save_model("f_d_device_only", trained.f_d_device_only)
            run.write_json("metrics.json", metrics)
    return metrics


def load_run(path: str | Path) -> tuple[DCCCLConfig, TrainedDCCCL, RunDir]:
    """Rebuild a run's models from config.json and its checkpoints (no ImageNet weights needed)."""
    cfg, run = open_run(path, METHOD, DCCCLConfig)
    models = build_models(cfg, joint_num_classes(cfg.scenario), pretrained=False)
    run.load_model("f_c", models.f_c)
    run.load_model("g", models.g)
    run.load_model("f_d", models.f_d)
    f_d_oracle, f_d_device_only = copy.deepcopy(models.f_d), copy.deepcopy(models.f_d)
    run.load_model("f_d_oracle", f_d_oracle)
    run.load_model("f_d_device_only", f_d_device_only)
    for m in (models.f_c, models.g, models.f_d, f_d_oracle, f_d_device_only):
        m.eval()
    return cfg, TrainedDCCCL(models, f_d_oracle, f_d_device_only), run


def evaluate_run(path: str | Path) -> dict[str, Any]:
    cfg, trained, _ = load_run(path)
    sc = build_dcccl_scenario(cfg.scenario, cfg.seed)
    return {"method": METHOD, "results": evaluate(trained, sc), "sizes": sizes(trained.models)}
