"""Device rounds: every device trains its copy of f_d, returns weights (not data), the cloud merges.

The same function simulates the mimic-controlled method, the oracle (controlled by the true f_c)
and the device-only baseline (no control), so the three differ in exactly one argument.
"""
from __future__ import annotations

import copy

from torch import nn

from runtime_harness.fleet.local import weighted_average
from toolkit.methods.dcccl.config import DCCCLConfig
from toolkit.methods.dcccl.objectives import Controlled
from toolkit.methods.dcccl.scenario import Scenario
from toolkit.train import Supervised, fit, progress


def device_objective(f_d: nn.Module, control: nn.Module | None) -> nn.Module:
    return Supervised(f_d) if control is None else Controlled(f_d, control)


def run_rounds(f_d: nn.Module, control: nn.Module | None, f_c: nn.Module | None, scenario: Scenario,
               cfg: DCCCLConfig, tag: str) -> list[dict]:
    """Train `f_d` in place over cfg.rounds rounds on all devices; returns per-round logs.

    control: g (mimic), f_c (oracle) or None (device-only). f_c is needed for the optional
    cloud-side copy and last-layer fine-tune, which use the cloud's own data and the true f_c.
    """
    log = []
    for r in progress(range(cfg.rounds), f"{tag}: rounds", leave=False):
        global_state = copy.deepcopy(f_d.state_dict())
        states, weights, losses = [], [], []
        for k, data in enumerate(scenario.devices):
            local = copy.deepcopy(f_d)
            local.load_state_dict(global_state)
            # simulated devices run identically in every process (no DDP)
            hist = fit(device_objective(local, control), data, cfg.device,
                       seed=cfg.seed * 7919 + r * 101 + k, desc=f"{tag} r{r + 1} dev{k}", distributed=False)
            states.append(local.state_dict())
            weights.append(len(data))
            losses.append(hist[-1])
        merged = weighted_average(states, weights)
        entry = {"round": r + 1, "device_loss": losses}
        if control is not None and cfg.cloud_copy_merge and f_c is not None:
            cloud_copy = copy.deepcopy(f_d)
            cloud_copy.load_state_dict(global_state)
            data = scenario.cloud_train.take(cfg.cloud_copy_samples, cfg.seed + 31 * r)
            entry["cloud_copy_loss"] = fit(Controlled(cloud_copy, f_c), data, cfg.device,
                                           seed=cfg.seed + 17 * r, desc=f"{tag} r{r + 1} cloud copy")[-1]
            merged = weighted_average([merged, cloud_copy.state_dict()], [0.5, 0.5])
        f_d.load_state_dict(merged)
        if control is not None and cfg.finetune.epochs > 0 and f_c is not None:
            entry["finetune_loss"] = finetune_last_layer(f_d, f_c, scenario, cfg, r, tag)[-1]
        log.append(entry)
    return log


def finetune_last_layer(f_d: nn.Module, f_c: nn.Module, scenario: Scenario, cfg: DCCCLConfig, r: int,
                        tag: str) -> list[float]:
    """Fine-tune only f_d's classifier on cloud data with the true fused loss, BN stats frozen."""
    head = list(f_d.last_layer.parameters())
    body = [p for p in f_d.parameters() if all(p is not h for h in head)]
    for p in body:
        p.requires_grad_(False)
    try:
        data = scenario.cloud_train.take(cfg.finetune_samples, cfg.seed + 53 * r)
        return fit(Controlled(f_d, f_c), data, cfg.finetune, seed=cfg.seed + 13 * r,
                   desc=f"{tag} r{r + 1} last layer", train_mode=False, params=head)
    finally:
        for p in body:
            p.requires_grad_(True)
