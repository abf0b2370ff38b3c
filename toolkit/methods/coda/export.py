"""CoDA's bundle: three programs. Two have inference and on-device training artifacts, one is
inference only:

- `sample_classifier`: inputs item int64 (B,), click float32 (B,) -> logit (B,), P(local) =
  sigmoid(logit). Training: BCE-with-logits (local 1, retrieved 0), the head trains, the item
  embedding and side-feature tables (the cloud's) stay frozen inside the program.
- `recommender`: inputs user int64 (B,), item int64 (B,) -> click logit (B,). Training: BCE-with-
  logits on local + kept samples; the run's `finetune_trainable` parameters train, embeddings
  included (their gradients are part of the program), the side-feature tables stay frozen.
- `key_encoder` (inference only): inputs user int64 (B,), item int64 (B,), click float32 (B,) ->
  key float32 (B, key_dim), the unit-norm matching key of a local sample (model.KeyEncoder, the
  cloud recommender's fixed weights): what a phone computes its augmentation request from.
The two trained programs: SGD with the run's device hyper-parameters (momentum, no weight decay; `dcl export --lr`
overrides both learning rates). Core ML trains what it can express: the dense layers (its
backpropagation stops at the concatenation of the embeddings); the manifest records which.
Validation uses real data of the run: an evaluated user's local, retrieved and later samples
(every program, the key encoder included, passes the same verification gate).
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import torch

from exporters.api import ProgramSpec
from toolkit.methods.coda.data import build_fleet
from toolkit.methods.coda.device import (CLASSIFIER, KEY_ENCODER, RECOMMENDER, Models, schedule, training_specs)
from toolkit.methods.coda.filtering import classifier_data
from toolkit.methods.coda.model import (CLASSIFIER_INPUTS, KEY_INPUTS, KEY_OUTPUTS, OUTPUTS, RECOMMENDER_INPUTS,
                                        KeyEncoder, key_dim)
from toolkit.methods.coda.pipeline import load_augmentations, load_run

TRAIN_BATCHES = 4  # distinct real batches cycled through the gate's steps


def _t(a: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a)).to(dtype)


def bundle_programs(run_dir: str | Path, lr: float | None = None) -> tuple[list[ProgramSpec], dict]:
    cfg, models, rd = load_run(run_dir)
    fleet = build_fleet(cfg.data, cfg.seed)
    augs = load_augmentations(rd.path / "augmentation.safetensors")
    user = next((u for u in sorted(augs) if len(augs[u].items) > 0), sorted(augs)[0])
    dev, aug = fleet.devices[user], augs[user]
    specs = training_specs(cfg)
    if lr is not None:
        specs = {k: dataclasses.replace(v, lr=lr) for k, v in specs.items()}
    return [classifier_program(models, specs[CLASSIFIER], dev, aug),
            recommender_program(models, specs[RECOMMENDER], dev, aug),
            key_encoder_program(models, cfg.matching, dev)], {
        "example_user": int(user), "tau_rule": cfg.filter.tau_rule, "tau_quantile": cfg.filter.tau_quantile,
        "tau_fixed": cfg.filter.tau_fixed, "scenario": cfg.data.scenario}


def classifier_program(models: Models, spec, dev, aug) -> ProgramSpec:
    inputs, y = classifier_data(dev.local_items, dev.local_clicks, aug.items, aug.clicks)
    batches = [{"item": _t(inputs["item"][i], torch.int64), "click": _t(inputs["click"][i], torch.float32),
                "y": _t(y[i], torch.float32)} for i in schedule(len(y), spec.batch_size, 1, 0)[:TRAIN_BATCHES]]
    local = (_t(dev.local_items[:1], torch.int64), _t(dev.local_clicks[:1], torch.float32))
    other = [(_t(aug.items[:1], torch.int64), _t(aug.clicks[:1], torch.float32))] if len(aug.items) else []
    return ProgramSpec(CLASSIFIER, models.classifier, local, CLASSIFIER_INPUTS, OUTPUTS, training=spec,
                       validation_inputs=[local, *other], train_batches=batches,
                       extra={"inputs": {"item": "int64 item index (B,)", "click": "float32 0/1 (B,)"},
                              "output": "logit (B,); P(local) = sigmoid(logit)",
                              "target": "float32: 1 for the device's own samples, 0 for retrieved ones"})


def recommender_program(models: Models, spec, dev, aug) -> ProgramSpec:
    items = np.concatenate([dev.local_items, aug.items]).astype(np.int64)
    clicks = np.concatenate([dev.local_clicks, aug.clicks]).astype(np.float32)
    users = np.full(len(items), dev.user, dtype=np.int64)
    batches = [{"user": _t(users[i], torch.int64), "item": _t(items[i], torch.int64), "y": _t(clicks[i], torch.float32)}
               for i in schedule(len(items), spec.batch_size, 1, 0)[:TRAIN_BATCHES]]
    example = (_t(np.array([dev.user]), torch.int64), _t(dev.test_items[:1], torch.int64))
    other = (_t(np.array([dev.user]), torch.int64), _t(dev.local_items[:1], torch.int64))
    return ProgramSpec(RECOMMENDER, models.recommender, example, RECOMMENDER_INPUTS, OUTPUTS, training=spec,
                       validation_inputs=[example, other], train_batches=batches,
                       extra={"inputs": {"user": "int64 user index (B,)", "item": "int64 item index (B,)"},
                              "output": "click logit (B,); P(click) = sigmoid(logit)",
                              "target": "float32 click 0/1"})


def key_encoder(models: Models, matching) -> KeyEncoder:
    return KeyEncoder(models.recommender, matching, portable=True).eval()


def key_encoder_program(models: Models, matching, dev) -> ProgramSpec:
    """Inference only, batch 1 (a phone keys each local sample as it arrives)."""
    n = len(dev.local_items)
    example = (_t(np.array([dev.user]), torch.int64), _t(dev.local_items[:1], torch.int64),
               _t(dev.local_clicks[:1], torch.float32))
    others = [(_t(np.array([dev.user]), torch.int64), _t(dev.local_items[i:i + 1], torch.int64),
               _t(dev.local_clicks[i:i + 1], torch.float32)) for i in sorted({n // 2, n - 1})]
    return ProgramSpec(KEY_ENCODER, key_encoder(models, matching), example, KEY_INPUTS, KEY_OUTPUTS,
                       validation_inputs=others,
                       extra={"inputs": {"user": "int64 user index (1,)", "item": "int64 item index (1,)",
                                         "click": "float32 0/1 (1,)"},
                              "output": f"key float32 (1, {key_dim(models.recommender, matching)}): the local "
                                        f"sample's unit-norm matching key ({matching.embedding}, label weight "
                                        f"{matching.label_weight}); a request sends these or their k-means centroids"})
