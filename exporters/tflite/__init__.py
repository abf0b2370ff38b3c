"""TFLite / LiteRT export: a TF rebuild of the PyTorch module, converted to builtin ops only.

`SUPPORTED_LAYERS` lists the torch module types the rebuild maps (see layers.LAYER_NOTES for
their limits); `SUPPORTED_OPS` the functional glue it translates inside traced forwards.
"""
import os

# TF's C++ INFO/WARNING lines (converter passes, SavedModel loading) would drown the export log;
# set before TensorFlow loads, and only if the user has not chosen a level.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from exporters.tflite.export import TFLiteExporter  # noqa: E402
from exporters.tflite.graph import SUPPORTED_OPS  # noqa: E402
from exporters.tflite.layers import LAYER_NOTES, SUPPORTED_LAYERS  # noqa: E402

__all__ = ["LAYER_NOTES", "SUPPORTED_LAYERS", "SUPPORTED_OPS", "TFLiteExporter"]
