"""TFLite / LiteRT export: the model's torch.export graph translated op by op to TF, converted to
builtin ops only (training programs included).

`SUPPORTED_OPS` lists the Core ATen ops (after decompositions) the translator maps; any other op
fails the export with its name and source line.
"""
import os

# TF's C++ INFO/WARNING lines (converter passes, SavedModel loading) would drown the export log;
# set before TensorFlow loads, and only if the user has not chosen a level.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from exporters.tflite.aten import SUPPORTED_OPS  # noqa: E402
from exporters.tflite.export import TFLiteExporter  # noqa: E402

__all__ = ["SUPPORTED_OPS", "TFLiteExporter"]
