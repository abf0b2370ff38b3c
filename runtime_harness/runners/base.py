"""The one interface every runtime's runner implements (host side, Python bindings).

Inputs and outputs are numpy arrays keyed by the names in the manifest. Weights crossing the
boundary are always keyed by the PyTorch parameter name and laid out as in PyTorch (e.g. conv
weights OIHW), so the gate and `dcl import-weights` never care which runtime produced them.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path

import numpy as np


class InferenceRunner(ABC):
    format: str = ""

    @abstractmethod
    def infer(self, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
        """Run once; returns the outputs in manifest order."""


class TrainingRunner(ABC):
    format: str = ""

    @abstractmethod
    def train_step(self, inputs: dict[str, np.ndarray]) -> float:
        """One forward/backward/optimizer step on a batch (model inputs + the target); the loss."""

    @abstractmethod
    def get_weights(self) -> dict[str, np.ndarray]:
        """Current trainable weights, PyTorch names and layouts."""

    def set_weights(self, weights: dict[str, np.ndarray]) -> None:
        """Replace trainable weights (PyTorch names and layouts). Needed by fleet simulation."""
        raise NotImplementedError(f"{type(self).__name__} cannot set weights")

    def gradients(self) -> dict[str, np.ndarray] | None:
        """Gradients of the last step where the runtime exposes them (PyTorch names), else None."""
        return None


def artifact_path(path: str | Path) -> Path:
    return Path(path)
