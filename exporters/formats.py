"""One descriptor per artifact format: everything dcl knows about a format, in one record.

Every list and table elsewhere (exporter and runner lookup, gate tolerances, where a runtime
runs, the Android command-line tool, the versions recorded in manifests and results, report
colours, CLI choices) derives from `FORMATS`, in the spirit of qai_hub_models' `TargetRuntime`.
Adding a format = its package (exporter + runner) + one `Format` entry here.
"""
from __future__ import annotations

import importlib
import sys
from dataclasses import dataclass
from typing import Any

from dcl_core.errors import ExportError

# Tools every bundle records besides the format's own packages.
COMMON_PACKAGES = ("dcl", "torch", "numpy")


@dataclass(frozen=True)
class Format:
    name: str  # canonical name, used in manifests and on the command line
    display: str  # what a person reads in tables
    aliases: tuple[str, ...]  # other names users type (the runtime's name, its file extension)
    exporter: str  # "module:Class" of the Exporter
    runner: str  # module with open_inference(path, artifact, threads) / open_training(...)
    inference_tolerance: float  # max |runtime - pytorch| the gate accepts
    training_tolerance: float  # relative loss and weight error the gate accepts
    # sys.platform values whose Python bindings can run the artifacts (the gate and the host
    # profiler run them there; elsewhere the artifact is validated structurally)
    host_platforms: tuple[str, ...]
    devices: tuple[str, ...]  # where apps run it: "android", "ios", ...
    packages: tuple[str, ...]  # PyPI distributions whose versions a manifest records
    color: str  # report colour
    android_tool: str | None = None  # the runtime's official benchmark binary on Android
    runs_where: str = ""  # how to run it when the host cannot, for error messages

    def runs_here(self) -> tuple[bool, str]:
        """Whether this machine can run the format's artifacts, and if not, why (one line)."""
        if sys.platform in self.host_platforms:
            return True, ""
        where = " or ".join({"darwin": "macOS", "linux": "Linux"}.get(p, p) for p in self.host_platforms)
        return False, f"{self.display} runs only on {where} (this machine is {sys.platform}){self.runs_where}"

    def load_exporter(self) -> Any:
        module, cls = self.exporter.split(":")
        return getattr(importlib.import_module(module), cls)()

    def load_runner(self) -> Any:
        return importlib.import_module(self.runner)


FORMATS: dict[str, Format] = {f.name: f for f in (
    Format("executorch", "ExecuTorch", ("et", "pte"), "exporters.executorch.exporter:ExecuTorchExporter",
           "exporters.executorch.runner", 1e-4, 1e-4, ("linux", "darwin"), ("android", "ios"),
           ("executorch",), "#1f77b4", android_tool="executor_runner"),
    Format("onnx", "ONNX Runtime", ("onnxruntime", "ort"), "exporters.onnx.exporter:OnnxExporter",
           "exporters.onnx.runner", 1e-4, 1e-4, ("linux", "darwin", "win32"), ("android", "ios"),
           ("onnx", "onnxscript", "onnxruntime-training"), "#ff7f0e", android_tool="onnxruntime_perf_test"),
    Format("tflite", "TFLite/LiteRT", ("litert",), "exporters.tflite.export:TFLiteExporter",
           "exporters.tflite.runner", 1e-4, 1e-4, ("linux", "darwin"), ("android", "ios"),
           ("tensorflow-cpu", "ai-edge-litert"), "#2ca02c", android_tool="benchmark_model"),
    Format("coreml", "Core ML", ("mlpackage", "mlmodel"), "exporters.coreml.exporter:CoreMLExporter",
           "exporters.coreml.runner", 1e-4, 1e-4, ("darwin",), ("ios",),
           ("coremltools",), "#9467bd", runs_where="; run it on a Mac or in the ios_demo app"),
)}

PYTORCH_COLOR = "#7f7f7f"  # the eager baseline in reports


def get_format(name: str) -> Format:
    """The descriptor for a canonical name or an alias (case-insensitive); one clear line if unknown."""
    key = name.strip().lower()
    for f in FORMATS.values():
        if key == f.name or key in f.aliases:
            return f
    known = ", ".join(f"{f.name} ({', '.join(f.aliases)})" for f in FORMATS.values())
    raise ExportError(f"unknown format {name!r}; known formats: {known}")


def format_names() -> list[str]:
    return list(FORMATS)


def all_packages() -> tuple[str, ...]:
    """Every package whose version a bundle or a results file records."""
    pkgs = list(COMMON_PACKAGES)
    for f in FORMATS.values():
        pkgs += [p for p in f.packages if p not in pkgs]
    return tuple(pkgs)


def tool_versions() -> dict[str, str]:
    from dcl_core.bundle import tool_versions as versions_of

    return versions_of(all_packages())
