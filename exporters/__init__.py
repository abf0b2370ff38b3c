"""Exporters: PyTorch module -> verified inference and on-device training artifacts.

One module per format behind `exporters.base.Exporter`, one validation gate
(`exporters.validate`), one bundle contract (`exporters.manifest`).
"""
from exporters.spec import TensorSpec, TrainingSpec


def export(*args, **kwargs):
    from exporters.api import export as _export

    return _export(*args, **kwargs)


__all__ = ["TensorSpec", "TrainingSpec", "export"]
