"""PyTorch eager as a runner: the baseline every runtime is compared with (and a reference
implementation of the runner interface). Artifacts are not involved: it wraps a module."""
from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn

from exporters.runner import InferenceRunner, TrainingRunner
from exporters.spec import TrainingSpec, loss_fn


def set_train_modes(model: nn.Module, spec: TrainingSpec, trainable: list[str]) -> None:
    """The reference program's modes: eval everywhere except the BatchNorms that
    `TrainingSpec.batch_statistics_layers` selects."""
    model.eval()
    for name in spec.batch_statistics_layers(model, trainable):
        model.get_submodule(name).train()


class PyTorchInference(InferenceRunner):
    format = "pytorch"

    def __init__(self, model: nn.Module, threads: int = 1):
        torch.set_num_threads(threads)
        self.model = model.eval()

    @torch.no_grad()
    def infer(self, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
        out = self.model(*(torch.from_numpy(np.ascontiguousarray(v)) for v in inputs.values()))
        return [out.numpy()] if isinstance(out, torch.Tensor) else [o.numpy() for o in out]


class PyTorchTraining(TrainingRunner):
    """The PyTorch reference of a TrainingSpec: what every runtime's training artifact must match."""

    format = "pytorch"

    def __init__(self, model: nn.Module, spec: TrainingSpec, target_name: str = "y", threads: int = 1):
        torch.set_num_threads(threads)
        self.model = copy.deepcopy(model)
        self.names = spec.trainable_names(self.model)
        self.params = dict(self.model.named_parameters())
        for n, p in self.params.items():
            p.requires_grad_(n in self.names)
        set_train_modes(self.model, spec, self.names)
        self.opt = torch.optim.SGD([self.params[n] for n in self.names], lr=spec.lr, momentum=spec.momentum,
                                   weight_decay=spec.weight_decay)
        self.loss = loss_fn(spec.loss)
        self.target_name = target_name

    def train_step(self, inputs: dict[str, np.ndarray]) -> float:
        t = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in inputs.items()}
        y = t.pop(self.target_name)
        loss = self.loss(self.model(*t.values()), y)
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()
        return float(loss.item())

    def get_weights(self) -> dict[str, np.ndarray]:
        return {n: self.params[n].detach().numpy().copy() for n in self.names}

    def set_weights(self, weights: dict[str, np.ndarray]) -> None:
        with torch.no_grad():
            for n, w in weights.items():
                self.params[n].copy_(torch.from_numpy(np.asarray(w)))

    def gradients(self) -> dict[str, np.ndarray]:
        return {n: self.params[n].grad.numpy().copy() for n in self.names if self.params[n].grad is not None}
