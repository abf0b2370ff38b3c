"""The one runner contract every runtime implements (host side, Python bindings).

- One record: runners take the manifest's `Artifact` (a JSON dict is decoded strictly first).
- One way to feed: `feed(inputs, specs)` orders inputs as the artifact declares them and casts
  them to its dtypes; a missing input is a BundleError naming it.
- Inputs and outputs are numpy arrays keyed by the names in the manifest. Weights crossing the
  boundary are always keyed by the PyTorch parameter name and laid out as in PyTorch (e.g. conv
  weights OIHW), so the gate and `dcl import-weights` never care which runtime produced them.
- Only DclErrors escape: a runtime that fails to load or run an artifact surfaces as one line.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

import numpy as np

from dcl_core.bundle import Artifact, TensorSpec, artifact_from_json
from dcl_core.errors import BundleError, DclError
from exporters.formats import get_format


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


def as_artifact(artifact: Artifact | dict[str, Any]) -> Artifact:
    """The Artifact record, from itself or from its manifest JSON (as crossing a process boundary)."""
    return artifact if isinstance(artifact, Artifact) else artifact_from_json(artifact)


def feed(inputs: dict[str, np.ndarray], specs: list[TensorSpec], who: str) -> dict[str, np.ndarray]:
    """`inputs` in the order of `specs`, contiguous and cast to each spec's dtype."""
    missing = [s.name for s in specs if s.name not in inputs]
    if missing:
        raise BundleError(f"{who} needs inputs {missing} (it takes {[s.name for s in specs]}); got {sorted(inputs)}")
    return {s.name: np.ascontiguousarray(inputs[s.name], dtype=np.dtype(s.dtype)) for s in specs}


def open_inference(fmt: str, path: str | Path, artifact: Artifact | dict, threads: int = 1) -> InferenceRunner:
    return _open(fmt, "inference", path, artifact, threads)


def open_training(fmt: str, path: str | Path, artifact: Artifact | dict, threads: int = 1) -> TrainingRunner:
    return _open(fmt, "training", path, artifact, threads)


def _open(fmt: str, kind: str, path: str | Path, artifact: Artifact | dict, threads: int):
    module = get_format(fmt).load_runner()
    opener = module.open_inference if kind == "inference" else module.open_training
    try:
        return opener(Path(path), as_artifact(artifact), threads)
    except DclError:
        raise
    except Exception as e:  # noqa: BLE001 - a runtime's own exception types differ per runtime
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise BundleError(f"{fmt} could not load {kind} artifact {Path(path).name}: {first}; "
                          "re-run `dcl export` (or check the runtime's version)") from None
