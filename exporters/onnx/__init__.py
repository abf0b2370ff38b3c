"""ONNX / ONNX Runtime: `.onnx` inference models and ORT training artifacts, and their runners."""
