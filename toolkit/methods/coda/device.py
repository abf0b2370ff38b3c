"""The device side of CoDA, written against the runner contract (exporters.runner.TrainingRunner),
so one code path runs on the cloud's PyTorch reference program (the pipeline) and inside a
runtime's exported training artifact (simulate.py):

1. request: keys of the local samples (the key encoder: the downloaded cloud model's last hidden
   layer, in the bundle's `key_encoder` inference program on a phone) are summarized and sent as
   an augmentation request; the augmentation batch comes back.
   Retrieved samples whose item the device already holds are dropped (device side: the cloud
   never learns which items those are).
2. fine filtering: the sample classifier trains from its downloaded start (local 1, retrieved
   0); retrieved samples with P(local) >= tau are kept (filtering.py).
3. personalization: the recommender trains from the cloud weights on local + kept samples, the
   kept ones re-keyed to this user (a retrieved sample stands for what this user would do).
The baselines run the same step on local data only, and on local + every retrieved sample.

Every training program uses fixed-size batches (an exported artifact has static shapes): each
epoch is a seeded permutation cut into ceil(n / batch) batches, the last one topped up from the
start of the permutation, so every sample is seen every epoch.
"""
from __future__ import annotations

import copy
import uuid
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
from torch import nn

from exporters.reference import PyTorchTraining
from exporters.runner import TrainingRunner
from exporters.spec import TrainingSpec
from toolkit.methods.coda.config import CoDAConfig, DeviceOptim
from toolkit.methods.coda.data import Device
from toolkit.methods.coda.filtering import classifier_data, keep_rule
from toolkit.methods.coda.matching import augmentation_size, summarize
from toolkit.methods.coda.messages import AugmentBatch, AugmentRequest
from toolkit.methods.coda.model import (CLASSIFIER_FROZEN, CLASSIFIER_TRAINABLE, RECOMMENDER_FROZEN,
                                        RECOMMENDER_TRAINABLE, Recommender, SampleClassifier, predict, sample_keys)

CLASSIFIER, RECOMMENDER, KEY_ENCODER = "sample_classifier", "recommender", "key_encoder"  # the bundle's programs
PERSONALIZED = ("local_only", "augment_unfiltered", "coda")  # results trained on the device

Opener = Callable[[str], TrainingRunner]  # program name -> a fresh training session
# the key encoder: (user, item, click) arrays of the local samples -> their keys (n, key_dim)
KeyFn = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]


def training_spec(opt: DeviceOptim, program: str, trainable: list[str] | None = None) -> TrainingSpec:
    trainable, frozen = ((CLASSIFIER_TRAINABLE, CLASSIFIER_FROZEN) if program == CLASSIFIER
                         else (trainable or RECOMMENDER_TRAINABLE, RECOMMENDER_FROZEN))
    return TrainingSpec(trainable=list(trainable), frozen=list(frozen), loss="bce_with_logits", optimizer="sgd",
                        lr=opt.lr, momentum=opt.momentum, weight_decay=0.0, batch_size=opt.batch_size)


def training_specs(cfg: CoDAConfig) -> dict[str, TrainingSpec]:
    return {CLASSIFIER: training_spec(cfg.filter.optim, CLASSIFIER), RECOMMENDER: training_spec(cfg.finetune, RECOMMENDER, cfg.finetune_trainable)}


@dataclass
class Models:
    recommender: Recommender  # the cloud model
    classifier: SampleClassifier  # every device's classifier start

    def templates(self) -> dict[str, nn.Module]:
        return {CLASSIFIER: self.classifier, RECOMMENDER: self.recommender}


def pytorch_opener(models: Models, cfg: CoDAConfig) -> Opener:
    specs, templates = training_specs(cfg), models.templates()
    threads = torch.get_num_threads()
    return lambda program: PyTorchTraining(templates[program], specs[program], threads=threads)


def schedule(n: int, batch: int, epochs: int, seed: int) -> list[np.ndarray]:
    """Index batches of exactly `batch` rows (see the module docstring)."""
    out = []
    rng = np.random.default_rng(seed)
    for _ in range(epochs):
        perm = rng.permutation(n)
        steps = -(-n // batch)
        wrapped = np.concatenate([perm] * (-(-(steps * batch) // n)))
        out += [wrapped[i * batch:(i + 1) * batch] for i in range(steps)]
    return out


def start_weights(template: nn.Module, spec: TrainingSpec) -> dict[str, np.ndarray]:
    params = dict(template.named_parameters())
    return {n: params[n].detach().numpy().copy() for n in spec.trainable_names(template)}


def train_program(open_runner: Opener, program: str, template: nn.Module, spec: TrainingSpec, opt: DeviceOptim,
                  inputs: dict[str, np.ndarray], y: np.ndarray, seed: int) -> tuple[dict[str, np.ndarray], int]:
    """A fresh session from the downloaded weights, `opt.epochs` over (inputs, y); (weights, steps)."""
    runner = open_runner(program)
    runner.set_weights(start_weights(template, spec))
    steps = 0
    for idx in schedule(len(y), opt.batch_size, opt.epochs, seed):
        runner.train_step({k: v[idx] for k, v in inputs.items()} | {"y": y[idx]})
        steps += 1
    return runner.get_weights(), steps


def with_weights(template: nn.Module, weights: dict[str, np.ndarray]) -> nn.Module:
    model = copy.deepcopy(template)
    params = dict(model.named_parameters())
    with torch.no_grad():
        for n, w in weights.items():
            params[n].copy_(torch.from_numpy(np.asarray(w, dtype=np.float32)).reshape(params[n].shape))
    return model.eval()


# ----------------------------------------------------------------------------- request


@dataclass
class Augmentation:
    items: np.ndarray  # int64, after dropping items the device already holds
    clicks: np.ndarray  # float32
    bytes_up: int = 0
    bytes_down: int = 0
    queries: int = 0


def pytorch_keys(models: Models, cfg: CoDAConfig) -> KeyFn:
    """The key encoder in PyTorch (the reference the pipeline runs)."""
    return lambda user, items, clicks: sample_keys(models.recommender, torch.from_numpy(user),
                                                   torch.from_numpy(items), torch.from_numpy(clicks), cfg.matching)


def augmentation_request(dev: Device, models: Models, cfg: CoDAConfig, version: str,
                         keys_of: KeyFn | None = None) -> tuple[bytes, int]:
    """The request's bytes and its number of query vectors: the local samples' keys from
    `keys_of` (the key encoder: PyTorch by default, a runtime's `key_encoder` artifact in
    simulate.py), summarized (matching.summarize)."""
    n = len(dev.local_items)
    keys_of = keys_of or pytorch_keys(models, cfg)
    keys = np.asarray(keys_of(np.full(n, dev.user, dtype=np.int64), dev.local_items.astype(np.int64),
                              dev.local_clicks.astype(np.float32)), dtype=np.float32)
    queries = summarize(keys, cfg.matching.max_queries, cfg.matching.kmeans_iters, cfg.seed + dev.user)
    k = augmentation_size(n, cfg.matching)
    return AugmentRequest(uuid.UUID(int=(cfg.seed << 32) + dev.user).hex, dev.user, version, k, queries).to_bytes(), len(queries)


def augmentation_from(dev: Device, reply: bytes) -> Augmentation:
    """The augmentation batch decoded; retrieved samples of items the device already holds dropped."""
    batch = AugmentBatch.from_bytes(reply)
    fresh = ~np.isin(batch.items, dev.local_items)
    return Augmentation(batch.items[fresh].astype(np.int64), batch.clicks[fresh].astype(np.float32), 0, len(reply))


def request_augmentation(dev: Device, models: Models, cfg: CoDAConfig, ask: Callable[[bytes], bytes],
                         version: str, keys_of: KeyFn | None = None) -> Augmentation:
    """Build the request, send it through `ask` (bytes -> bytes), decode the batch."""
    req, queries = augmentation_request(dev, models, cfg, version, keys_of)
    aug = augmentation_from(dev, ask(req))
    aug.bytes_up, aug.queries = len(req), queries
    return aug


# ----------------------------------------------------------------------------- device round


@dataclass
class Outcome:
    user: int
    local: int
    retrieved: int
    kept: int
    tau: float
    steps: int
    scores: dict[str, np.ndarray] = field(default_factory=dict)  # result -> P(click) on the test items


def device_seed(cfg: CoDAConfig, user: int, stage: int) -> int:
    return (cfg.seed * 1_000_003 + user) * 10 + stage


def run_device(dev: Device, aug: Augmentation, models: Models, cfg: CoDAConfig, open_runner: Opener,
               results: tuple[str, ...] = PERSONALIZED) -> Outcome:
    specs = training_specs(cfg)
    n = len(dev.local_items)
    user_col = lambda m: np.full(m, dev.user, dtype=np.int64)  # noqa: E731
    out = Outcome(dev.user, n, len(aug.items), 0, float("nan"), 0)

    kept_items, kept_clicks = aug.items, aug.clicks
    if "coda" in results:
        if len(aug.items):
            inputs, y = classifier_data(dev.local_items, dev.local_clicks, aug.items, aug.clicks)
            w, steps = train_program(open_runner, CLASSIFIER, models.classifier, specs[CLASSIFIER], cfg.filter.optim,
                                     inputs, y, device_seed(cfg, dev.user, 1))
            out.steps += steps
            clf = with_weights(models.classifier, w)
            f = keep_rule(predict(clf, dev.local_items, dev.local_clicks), predict(clf, aug.items, aug.clicks),
                          cfg.filter)
            kept_items, kept_clicks, out.tau = aug.items[f.keep], aug.clicks[f.keep], f.tau
        out.kept = len(kept_items)

    data = {"local_only": (dev.local_items, dev.local_clicks),
            "augment_unfiltered": (np.concatenate([dev.local_items, aug.items]),
                                   np.concatenate([dev.local_clicks, aug.clicks])),
            "coda": (np.concatenate([dev.local_items, kept_items]), np.concatenate([dev.local_clicks, kept_clicks]))}
    for name in results:  # one seed for every variant: the same data gives the same model
        items, clicks = data[name]
        w, steps = train_program(open_runner, RECOMMENDER, models.recommender, specs[RECOMMENDER], cfg.finetune,
                                 {"user": user_col(len(items)), "item": items.astype(np.int64)},
                                 clicks.astype(np.float32), device_seed(cfg, dev.user, 2))
        out.steps += steps
        out.scores[name] = predict(with_weights(models.recommender, w), user_col(len(dev.test_items)), dev.test_items)
    return out
