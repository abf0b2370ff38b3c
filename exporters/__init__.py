"""Exporters: PyTorch programs -> verified inference and on-device training artifacts.

One package per format (exporter + runner) behind `exporters.base.Exporter` and
`exporters.runner`, one descriptor per format (`exporters.formats`), one validation gate
(`exporters.gate`), one bundle contract (`dcl_core.bundle`). Names below load on first use, so
importing a light module (e.g. `exporters.formats`) does not import torch.
"""
from typing import Any

_LAZY = {"TensorSpec": "exporters.spec", "TrainingSpec": "exporters.spec", "ProgramSpec": "exporters.api",
         "export": "exporters.api", "export_model": "exporters.api"}


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'exporters' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(_LAZY[name]), name)


__all__ = list(_LAZY)
