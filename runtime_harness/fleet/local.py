"""The two halves of a federated round that are not Flower's: one device's local training in a
runtime's training program, and the weighted average of state dicts (the controlled device
rounds of `dcl train`; the fleet's FedAvg is Flower's own).

A device opens a fresh training session each round, so optimizer state (momentum) never leaks
from one round or device to the next, as on real phones.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import numpy as np
import torch

from exporters.runner import TrainingRunner

Batch = dict[str, np.ndarray]


def weighted_average(states: Sequence[dict[str, torch.Tensor]], weights: Sequence[float]) -> dict[str, torch.Tensor]:
    """FedAvg of state dicts: floating-point entries averaged with `weights`; integer buffers
    (BatchNorm step counters) take the max."""
    total = float(sum(weights))
    out = {}
    for key in states[0]:
        ref = states[0][key]
        if ref.is_floating_point():
            out[key] = sum(s[key] * (w / total) for s, w in zip(states, weights)).to(ref.dtype)
        else:
            out[key] = torch.stack([s[key] for s in states]).max(0).values
    return out


def train_locally(open_runner: Callable[[], TrainingRunner], start: dict[str, np.ndarray],
                  batches: Iterable[Batch]) -> tuple[dict[str, np.ndarray], int]:
    """One device: a fresh session from `start`, one step per batch; its weights and step count."""
    runner = open_runner()
    runner.set_weights(start)
    steps = 0
    for batch in batches:
        runner.train_step(batch)
        steps += 1
    return runner.get_weights(), steps
