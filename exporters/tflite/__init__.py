"""TFLite / LiteRT export: the model's torch.export graph translated op by op to TF, converted to
builtin ops only (training programs included).

`SUPPORTED_OPS` lists the Core ATen ops (after decompositions) the translator maps; any other op
fails the export with its name and source line.

The exporter (and TensorFlow with it) is imported only when asked for: the runner
(`exporters.tflite.runner`) needs the LiteRT interpreter alone, and importing TensorFlow on the
way to it cost seconds of every runner's load (3.3 s on a quiet 2-core host, measured).
"""
import os
from typing import Any

# TF's C++ INFO/WARNING lines (converter passes, SavedModel loading) would drown the export log;
# set before TensorFlow loads, and only if the user has not chosen a level.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

__all__ = ["SUPPORTED_OPS", "TFLiteExporter"]


def __getattr__(name: str) -> Any:
    if name == "SUPPORTED_OPS":
        from exporters.tflite.aten import SUPPORTED_OPS

        return SUPPORTED_OPS
    if name == "TFLiteExporter":
        from exporters.tflite.exporter import TFLiteExporter

        return TFLiteExporter
    raise AttributeError(f"module 'exporters.tflite' has no attribute {name!r}")
