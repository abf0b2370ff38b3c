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
class AndroidTool:
    """The runtime's official command-line benchmark binary on Android: how to get it, how to call
    it (`args`: str.format templates of {model}, {result}, {runs}, {runs_plus_one}, {threads},
    {min_secs}, {warmup}) and which parser of runtime_harness.parsers reads its output."""

    binary: str
    how_to_get: str
    args: tuple[str, ...]
    parser: str  # a key of runtime_harness.parsers.TOOL_PARSERS
    writes_result_file: bool = False
    libs: tuple[str, ...] = ()  # shared libraries a dynamically linked build needs next to it (globs)
    logcat_tag: str | None = None  # the runtime logs its timings to logcat under this tag

    def argv(self, model: str, result: str, runs: int, warmup: int, min_secs: float, threads: int) -> list[str]:
        values = {"model": model, "result": result, "runs": runs, "runs_plus_one": runs + 1, "warmup": warmup,
                  "min_secs": f"{min_secs:g}", "threads": threads}
        return [a.format(**values) for a in self.args]

    def result_path(self, remote_dir: str) -> str:
        return f"{remote_dir}/{self.binary}.result.txt"


@dataclass(frozen=True)
class Format:
    name: str  # canonical name, used in manifests and on the command line
    display: str  # what a person reads in tables
    aliases: tuple[str, ...]  # other names users type (the runtime's name, its file extension)
    exporter: str  # "module:Class" of the Exporter
    runner: str  # module with open_inference(path, artifact, threads) / open_training(...)
    inference_tolerance: float  # the gate's absolute part: |runtime - pytorch| <= this + inference_rtol * |pytorch|
    training_tolerance: float  # relative loss and weight error the gate accepts
    # sys.platform values whose Python bindings can run the artifacts (the gate and the host
    # profiler run them there; elsewhere the artifact is validated structurally)
    host_platforms: tuple[str, ...]
    devices: tuple[str, ...]  # where the runtime runs: "android", "ios", ...
    demo_app: str  # the demo app that embeds this format's artifacts: "android" or "ios"
    packages: tuple[str, ...]  # PyPI distributions whose versions a manifest records
    color: str  # report colour
    loggers: tuple[str, ...]  # Python loggers of its libraries, quiet unless `dcl -v`
    native_noise: tuple[str, ...] = ()  # regexes of the native lines its libraries write to fd 2
    android_tool: AndroidTool | None = None  # required when "android" is in devices
    runs_where: str = ""  # how to run it when the host cannot, for error messages
    # the gate's relative part, per element: float32 programs with large outputs (a 1280-wide
    # feature with values near 20) differ from PyTorch by more than any fixed absolute bound
    inference_rtol: float = 1e-5
    # why its training artifacts cannot run from Python even where its inference can ("" if they can)
    no_host_training: str = ""
    # module of a native (C++) runner, as an app links the runtime: locate(), command(),
    # program_args(); the host profile prefers it to the Python bindings ("" if none)
    native_runner: str = ""

    def __post_init__(self) -> None:
        check_format(self)

    def runs_here(self, kind: str = "inference") -> tuple[bool, str]:
        """Whether this machine can run the format's artifacts of `kind` ("inference" or "training")
        from Python, and if not, why (one line)."""
        if sys.platform not in self.host_platforms:
            where = " or ".join({"darwin": "macOS", "linux": "Linux"}.get(p, p) for p in self.host_platforms)
            return False, f"{self.display} runs only on {where} (this machine is {sys.platform}){self.runs_where}"
        if kind == "training" and self.no_host_training:
            return False, self.no_host_training
        return True, ""

    def load_exporter(self) -> Any:
        module, cls = self.exporter.split(":")
        return getattr(importlib.import_module(module), cls)()

    def load_runner(self) -> Any:
        return importlib.import_module(self.runner)

    def load_native_runner(self) -> Any | None:
        return importlib.import_module(self.native_runner) if self.native_runner else None


DEMO_APPS = ("android", "ios")


def check_format(f: Format) -> None:
    """Every fact a format must state, like a typed enum forcing every branch: a descriptor that
    leaves one out fails here, naming the field."""
    def need(ok: bool, field: str, why: str) -> None:
        if not ok:
            raise TypeError(f"format {f.name!r}: field {field!r} {why}")

    for field in ("name", "display", "exporter", "runner", "color"):
        need(bool(getattr(f, field)), field, "must not be empty")
    need(":" in f.exporter, "exporter", "must be 'module:Class'")
    need(f.inference_tolerance > 0 and f.training_tolerance > 0, "inference_tolerance", "must be > 0")
    need(0 <= f.inference_rtol < 1e-2, "inference_rtol", "must be in [0, 0.01)")
    for field in ("host_platforms", "devices", "packages", "loggers"):
        need(bool(getattr(f, field)), field, "must name at least one")
    need(f.demo_app in DEMO_APPS and f.demo_app in f.devices, "demo_app", f"must be one of {DEMO_APPS} and in devices")
    need(f.android_tool is not None or "android" not in f.devices, "android_tool",
         "is required for a format that runs on android (the harness's adb path runs it)")


# One entry per format; every list and table elsewhere derives from these.
FORMATS: dict[str, Format] = {f.name: f for f in (
    Format("executorch", "ExecuTorch", ("et", "pte"), "exporters.executorch.exporter:ExecuTorchExporter",
           "exporters.executorch.runner", 1e-4, 1e-4, ("linux", "darwin"), ("android", "ios"), "android",
           ("executorch",), "#1f77b4", loggers=("executorch", "torchao"),
           native_noise=(r"\[[A-Za-z0-9_]+\.(?:cpp|cc|h):\d+\] ",),  # ET_LOG: "[cpuinfo_utils.cpp:71] ..."
           android_tool=AndroidTool(
               "executor_runner",
               "build executor_runner with the Android NDK per the ExecuTorch docs (cmake -DANDROID_ABI=arm64-v8a "
               "-DEXECUTORCH_BUILD_XNNPACK=ON, target executor_runner from examples/portable/executor_runner)",
               # no warm-up or duration knob: runs+1 executions, the first kept apart
               ("--model_path={model}", "--num_executions={runs_plus_one}", "--cpu_threads={threads}"),
               "executor_runner", logcat_tag="ExecuTorch"),
           native_runner="exporters.executorch.native"),
    Format("onnx", "ONNX Runtime", ("onnxruntime", "ort"), "exporters.onnx.exporter:OnnxExporter",
           "exporters.onnx.runner", 1e-4, 1e-4, ("linux", "darwin", "win32"), ("android", "ios"), "android",
           ("onnx", "onnxscript", "onnxruntime-training"), "#ff7f0e", loggers=("onnxscript", "onnx_ir"),
           android_tool=AndroidTool(
               "onnxruntime_perf_test",
               "build onnxruntime_perf_test for Android (ORT build.sh --android --android_abi arm64-v8a "
               "--build_shared_lib; onnxruntime/test/perftest)",
               # -I inputs from the model's signature, -m times -r N: N runs, -x intra-op threads, -s
               # percentiles; the result file gets one line per run (pulled back after the run)
               ("-e", "cpu", "-I", "-s", "-m", "times", "-r", "{runs}", "-x", "{threads}", "{model}", "{result}"),
               "onnxruntime_perf_test", writes_result_file=True, libs=("libonnxruntime*.so",))),
    Format("tflite", "TFLite/LiteRT", ("litert",), "exporters.tflite.exporter:TFLiteExporter",
           "exporters.tflite.runner", 1e-4, 1e-4, ("linux", "darwin"), ("android", "ios"), "android",
           ("tensorflow-cpu", "ai-edge-litert"), "#2ca02c", loggers=("tensorflow", "absl", "jax", "h5py"),
           native_noise=(r"INFO: Created TensorFlow Lite \w+ delegate",),
           android_tool=AndroidTool(
               "benchmark_model",
               "download the prebuilt android_aarch64_benchmark_model from the LiteRT releases "
               "(https://ai.google.dev/edge/litert/models/measurement) and rename it to benchmark_model",
               ("--graph={model}", "--num_threads={threads}", "--num_runs={runs}", "--min_secs={min_secs}",
                "--warmup_runs={warmup}"),
               "benchmark_model")),
    Format("coreml", "Core ML", ("mlpackage", "mlmodel"), "exporters.coreml.exporter:CoreMLExporter",
           "exporters.coreml.runner", 1e-4, 1e-4, ("darwin",), ("ios",), "ios",
           ("coremltools",), "#9467bd", loggers=("coremltools",), runs_where="; run it on a Mac or in the ios_demo app",
           no_host_training="Core ML updates models only through MLUpdateTask (Swift/Objective-C), which "
                            "coremltools does not expose to Python; the iOS app runs it"),
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


def formats_of_app(app: str) -> tuple[str, ...]:
    """The formats a demo app embeds ("android": ExecuTorch, ONNX Runtime, LiteRT; "ios": Core ML)."""
    return tuple(f.name for f in FORMATS.values() if f.demo_app == app)


def all_packages() -> tuple[str, ...]:
    """Every package whose version a bundle or a results file records."""
    pkgs = list(COMMON_PACKAGES)
    for f in FORMATS.values():
        pkgs += [p for p in f.packages if p not in pkgs]
    return tuple(pkgs)


def tool_versions() -> dict[str, str]:
    from dcl_core.bundle import tool_versions as versions_of

    return versions_of(all_packages())
