"""The Exporter interface: one small class per format, registered by name.

An exporter turns a PyTorch module into files and an `Artifact` record (path, signature,
format-specific `details`); it does not validate (the one gate in exporters/gate.py does,
through the runtime's runner) and knows nothing about methods.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import torch
from torch import nn

from dcl_core.bundle import Artifact, Validation
from exporters.formats import get_format
from exporters.spec import TrainingSpec


@dataclass
class ExportJob:
    """What to export. `bundle` is the (temporary) bundle folder; write under it, return paths
    relative to it. Inputs are example tensors at the artifact's fixed shapes."""

    model: nn.Module
    inputs: tuple[torch.Tensor, ...]
    input_names: list[str]
    output_names: list[str]
    bundle: Path
    name: str
    # training only
    target: torch.Tensor | None = None
    target_name: str = "y"
    spec: TrainingSpec | None = None
    options: dict = field(default_factory=dict)


class Exporter(ABC):
    format: ClassVar[str]

    @abstractmethod
    def export_inference(self, job: ExportJob) -> Artifact:
        """Write the inference program; return its Artifact (no sha256/validation yet)."""

    @abstractmethod
    def export_training(self, job: ExportJob) -> Artifact:
        """Write the on-device training program for job.spec; return its Artifact."""

    def runnable_here(self, kind: str) -> tuple[bool, str]:
        """Whether this machine can run the artifact of `kind` for numeric validation, and why not."""
        return get_format(self.format).runs_here(kind)

    def validate_structure(self, artifact: Artifact, job: ExportJob) -> Validation:
        """Checks for formats that cannot run here (Core ML on Linux)."""
        raise NotImplementedError


def get_exporter(fmt: str) -> Exporter:
    return get_format(fmt).load_exporter()
