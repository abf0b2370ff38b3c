"""The generic fleet engine: virtual devices that each step a runtime's training program on
their own batches, hand back weights (never data), and a weighted average on the cloud.

Method-agnostic: a method supplies a runner factory (a runtime's training artifact, or the
PyTorch reference program for the same run), start weights under PyTorch names, and each
device's batches; the engine runs one round and returns the merged weights. Every device opens
a fresh training session, so optimizer state (momentum) never leaks from one device to the next,
as on real phones.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

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


@dataclass
class RoundResult:
    weights: dict[str, np.ndarray]  # the merged weights, PyTorch names
    steps: int  # training steps run on all devices


def fleet_round(open_runner: Callable[[], TrainingRunner], start: dict[str, np.ndarray],
                device_batches: Sequence[Iterable[Batch]], sizes: Sequence[float]) -> RoundResult:
    """Every device trains from `start` on its batches; the cloud merges by `sizes` (sample counts)."""
    states, steps = [], 0
    for batches in device_batches:
        weights, n = train_locally(open_runner, start, batches)
        states.append({k: torch.from_numpy(np.asarray(v, dtype=np.float32)) for k, v in weights.items()})
        steps += n
    merged = weighted_average(states, list(sizes))
    return RoundResult({k: v.numpy() for k, v in merged.items()}, steps)
