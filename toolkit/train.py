"""Shared training loops, used by every method on the cloud and by simulated devices.

`fit` trains an *objective*: a module whose forward(*batch) returns the scalar loss and whose
trainable parameters are exactly the ones that should learn (frozen teachers/controls live inside
it with requires_grad=False), over any `Batchable` data set (images and labels, recommender
interactions, cached features). The same loop serves every method's cloud steps, distillation,
simulated device steps and fine-tuning, and runs unchanged under torchrun:

- Batching is a seeded permutation per epoch cut into global batches of `batch_size`; under DDP
  rank r takes every world_size-th sample of each global batch. So the set of samples per step is
  the same as in one process, and DDP's gradient averaging of equal-sized per-rank means equals
  the single-process mean. The last incomplete batch is dropped for the same reason.
- BatchNorm: on GPUs the objective's BN layers become SyncBatchNorm; on CPU (gloo) PyTorch has no
  synchronised BN, so each process normalises with its own half of the batch (documented).
"""
from __future__ import annotations

import math
import os
import sys
from dataclasses import dataclass
from typing import Iterable, Literal, Protocol

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from dcl_core.config import bounded
from dcl_core.errors import ConfigError
from toolkit.data.imageset import ImageSet
from toolkit.distributed import context


class Batchable(Protocol):
    """A data set `fit` can train on: its length and the tensors of a batch of indices."""

    def __len__(self) -> int: ...

    def batch(self, index: torch.Tensor) -> tuple[torch.Tensor, ...]: ...


@dataclass
class OptimConfig:
    optimizer: Literal["sgd", "adam"] = "sgd"
    lr: float = bounded(0.01, gt=0)
    momentum: float = bounded(0.9, ge=0, lt=1)
    weight_decay: float = bounded(5e-4, ge=0)
    epochs: int = bounded(1, ge=0, le=10_000)  # 0 only where a stage is optional (fine-tuning: off)
    batch_size: int = bounded(64, ge=1, le=2**20)
    # constant; cosine (to 0 over all steps); step (x0.1 after half the epochs: the authors'
    # "Adam 1e-3 then 1e-4" for the mimic)
    schedule: Literal["constant", "cosine", "step"] = "constant"
    grad_clip: float = bounded(0.0, ge=0)  # 0: off


def progress_enabled() -> bool:
    return context().is_main and os.environ.get("DCL_NO_PROGRESS", "") not in ("1", "true")


def stage_log(message: str) -> None:
    """One line per stage on stderr, shown when progress is (the main process, not silenced)."""
    if progress_enabled():
        print(message, file=sys.stderr, flush=True)


def progress(iterable: Iterable, desc: str, total: int | None = None, leave: bool = False):
    """A progress bar on a terminal; on a file or a pipe (a log, CI) a line at each quarter, so a
    log gets a few lines per stage instead of thousands of carriage-return updates."""
    if progress_enabled() and not sys.stderr.isatty():
        return LineProgress(iterable, desc, total)
    return tqdm(iterable, desc=desc, total=total, leave=leave, disable=not progress_enabled(),
                file=sys.stderr, dynamic_ncols=True)


class LineProgress:
    """tqdm's iteration and set_postfix for a non-terminal: one line at 25/50/75/100%."""

    STEPS = 4

    def __init__(self, iterable: Iterable, desc: str, total: int | None = None):
        self._iterable, self._desc = iterable, desc
        self._total = total if total is not None else (len(iterable) if hasattr(iterable, "__len__") else None)
        self._postfix = ""

    def set_postfix(self, **values: object) -> None:
        self._postfix = ", ".join(f"{k} {v}" for k, v in values.items())

    def __iter__(self):
        total, shown, done = self._total, 0, 0
        for item in self._iterable:
            yield item
            done += 1
            if total and done * self.STEPS // total > shown:
                shown = done * self.STEPS // total
                tail = f" ({self._postfix})" if self._postfix else ""
                print(f"{self._desc}: {done}/{total} ({100 * done // total}%){tail}", file=sys.stderr, flush=True)
        if not total:
            print(f"{self._desc}: {done} done", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- objectives


def frozen(module: nn.Module) -> nn.Module:
    """Freeze a module in eval mode (BN statistics fixed, no gradients)."""
    module.eval()
    for p in module.parameters():
        p.requires_grad_(False)
    return module


class Supervised(nn.Module):
    """CE(model(x), y)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(self.model(x), y)


class Distill(nn.Module):
    """Logit distillation of a frozen teacher into a student: MSE on logits, or KL at temperature T."""

    def __init__(self, student: nn.Module, teacher: nn.Module, loss: Literal["mse", "kl"] = "mse",
                 temperature: float = 4.0):
        super().__init__()
        self.student = student
        self.teacher = frozen(teacher)
        self.loss = loss
        self.temperature = temperature

    def train(self, mode: bool = True) -> "Distill":
        super().train(mode)
        self.teacher.eval()
        return self

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        with torch.no_grad():
            t = self.teacher(x)
        s = self.student(x)
        if self.loss == "mse":
            return F.mse_loss(s, t)
        T = self.temperature
        return F.kl_div(F.log_softmax(s / T, -1), F.log_softmax(t / T, -1), log_target=True,
                        reduction="batchmean") * T * T


# ----------------------------------------------------------------------------- loops


def _optimizer(params: list[nn.Parameter], cfg: OptimConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def _lr_at(cfg: OptimConfig, step: int, total: int) -> float:
    if cfg.schedule == "cosine":
        return cfg.lr * 0.5 * (1 + math.cos(math.pi * step / max(total, 1)))
    if cfg.schedule == "step":
        return cfg.lr * (0.1 if step >= total // 2 else 1.0)
    return cfg.lr


def fit(objective: nn.Module, data: Batchable, cfg: OptimConfig, seed: int, desc: str = "train",
        distributed: bool = True, train_mode: bool = True,
        params: list[nn.Parameter] | None = None) -> list[float]:
    """Train `objective` on `data`; returns the mean loss of each epoch.

    distributed: use DDP when running under torchrun (cloud loops); simulated device loops pass
    False so every process runs them identically. train_mode=False keeps BatchNorm statistics
    frozen (last-layer fine-tuning). `params` restricts what trains (default: all that require grad).
    """
    ctx = context()
    use_ddp = distributed and ctx.enabled
    world, rank = (ctx.world_size, ctx.rank) if use_ddp else (1, 0)
    if cfg.batch_size % world:
        raise ConfigError(f"batch_size {cfg.batch_size} is not divisible by the {world} processes")
    trainable = params if params is not None else [p for p in objective.parameters() if p.requires_grad]
    if not trainable:
        raise ConfigError(f"{desc}: nothing to train (every parameter is frozen)")
    model: nn.Module = objective
    if use_ddp:
        if ctx.device.type == "cuda":
            objective = nn.SyncBatchNorm.convert_sync_batchnorm(objective).to(ctx.device)
        model = nn.parallel.DistributedDataParallel(objective, find_unused_parameters=params is not None)
    opt = _optimizer(trainable, cfg)
    steps_per_epoch = len(data) // cfg.batch_size
    total, step, history = steps_per_epoch * cfg.epochs, 0, []
    objective.train(train_mode)
    local = cfg.batch_size // world
    for epoch in range(cfg.epochs):
        perm = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed * 1_000 + epoch))
        running, bar = 0.0, progress(range(steps_per_epoch), f"{desc} {epoch + 1}/{cfg.epochs}")
        for i in bar:
            idx = perm[i * cfg.batch_size:(i + 1) * cfg.batch_size][rank::world]
            tensors = [t.to(ctx.device) for t in data.batch(idx)]
            assert tensors[0].shape[0] == local
            for group in opt.param_groups:
                group["lr"] = _lr_at(cfg, step, total)
            loss = model(*tensors)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(trainable, cfg.grad_clip)
            opt.step()
            running += loss.item()
            step += 1
            if not use_ddp and not math.isfinite(running):
                break  # diverged: no use finishing the epoch (under DDP every rank must reach the all_reduce)
            if i % 20 == 0:
                bar.set_postfix(loss=f"{running / (i + 1):.4f}")
        epoch_loss = torch.tensor(running / max(steps_per_epoch, 1))
        if use_ddp:  # report the global mean, not this rank's half-batch mean
            torch.distributed.all_reduce(epoch_loss)
            epoch_loss /= world
        history.append(epoch_loss.item())
        check_finite_loss(history[-1], f"{desc} epoch {epoch + 1}/{cfg.epochs}", cfg.lr)
    check_finite_weights(trainable, desc, cfg.lr)
    objective.eval()
    return history


def check_finite_loss(loss: float, where: str, lr: float) -> None:
    """Stop a diverged training loop with one line: nan or inf never reaches a run's metrics (where
    it read as a bad but valid result) and the caller's atomic output leaves nothing behind."""
    if not math.isfinite(loss):
        raise ConfigError(f"training diverged: the loss became {loss} in {where}; "
                          f"lower its learning rate (now {lr:g}; a huge weight_decay or temperature diverges too) "
                          "and train again; nothing was written")


def check_finite_weights(params: Iterable[torch.Tensor], where: str, lr: float) -> None:
    """The same stop for weights: a last step can leave nan or inf weights behind a finite loss."""
    if not all(torch.isfinite(p).all() for p in params):
        check_finite_loss(float("nan"), f"{where} (the weights after its last step)", lr)


@torch.no_grad()
def predict_logits(model: nn.Module, data: ImageSet, batch_size: int = 1000) -> torch.Tensor:
    model.eval()
    dev = context().device
    return torch.cat([model(data.x[i:i + batch_size].to(dev)).cpu() for i in range(0, len(data), batch_size)])


def accuracy(model: nn.Module, data: ImageSet, batch_size: int = 1000) -> float:
    """Top-1 accuracy in percent."""
    if len(data) == 0:
        return float("nan")
    pred = predict_logits(model, data, batch_size).argmax(-1)
    return 100.0 * (pred == data.y).float().mean().item()
