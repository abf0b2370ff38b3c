"""The official command-line benchmark tools that run artifacts on Android, where to find them
on this machine, how to call them and which parser reads their output.

dcl does not ship these binaries (each is built or downloaded per runtime version), so a missing
one is a user error that names the exact binary, where to obtain it and the folder to put it in.
"""
from __future__ import annotations

import os
import shlex
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from dcl_core.errors import DeviceError
from dcl_core.paths import PROJECT_ROOT
from exporters.formats import FORMATS
from runtime_harness.parsers import ToolTimings, parse_benchmark_model, parse_executor_runner, parse_ort_perf_test

DEFAULT_ABI = "arm64-v8a"


@dataclass(frozen=True)
class RunPlan:
    """How long to run: the same MLPerf-style knobs as on the host."""

    runs: int = 50
    warmup: int = 3
    min_duration_s: float = 1.0
    threads: int = 1


@dataclass(frozen=True)
class AndroidTool:
    fmt: str
    binary: str
    how_to_get: str
    # remote model path, remote result file, plan -> argument list (after the binary)
    args: Callable[[str, str, RunPlan], list[str]]
    parse: Callable[[str, str | None], ToolTimings]
    writes_result_file: bool = False
    libs: tuple[str, ...] = ()  # shared libraries a dynamically linked build needs next to it (globs)

    def command(self, remote_dir: str, model_name: str, plan: RunPlan) -> str:
        """The device shell command, run from `remote_dir` (libraries next to the binary)."""
        model = f"{remote_dir}/{model_name}"
        argv = [f"./{self.binary}", *self.args(model, self.result_path(remote_dir), plan)]
        return "LD_LIBRARY_PATH=. " + " ".join(shlex.quote(a) for a in argv)

    def result_path(self, remote_dir: str) -> str:
        return f"{remote_dir}/{self.binary}.result.txt"


def _litert_args(model: str, _result: str, p: RunPlan) -> list[str]:
    return [f"--graph={model}", f"--num_threads={p.threads}", f"--num_runs={p.runs}",
            f"--min_secs={p.min_duration_s:g}", f"--warmup_runs={p.warmup}"]


def _ort_args(model: str, result: str, p: RunPlan) -> list[str]:
    # -I generates inputs from the model's signature (no test-data folder), -m times -r N: N runs;
    # -x intra-op threads; -s prints min/max/p50/p90/p95/p99; the result file gets one line per
    # run (the full distribution, pulled back after the run).
    return ["-e", "cpu", "-I", "-s", "-m", "times", "-r", str(p.runs), "-x", str(p.threads), model, result]


def _et_args(model: str, _result: str, p: RunPlan) -> list[str]:
    # executor_runner has no warm-up or duration knob: runs+1 executions, the first kept apart.
    return [f"--model_path={model}", f"--num_executions={p.runs + 1}", f"--cpu_threads={p.threads}"]


# How each format's official benchmark binary (named by its descriptor in exporters.formats) is
# obtained, called and parsed.
_HOW: dict[str, tuple[str, Callable[[str, str, RunPlan], list[str]], Callable[[str, str | None], ToolTimings], dict]] = {
    "tflite": ("download the prebuilt android_aarch64_benchmark_model from the LiteRT releases "
               "(https://ai.google.dev/edge/litert/models/measurement) and rename it to benchmark_model",
               _litert_args, lambda out, _res: parse_benchmark_model(out), {}),
    "onnx": ("build onnxruntime_perf_test for Android (ORT build.sh --android --android_abi arm64-v8a "
             "--build_shared_lib; onnxruntime/test/perftest)",
             _ort_args, parse_ort_perf_test, {"writes_result_file": True, "libs": ("libonnxruntime*.so",)}),
    "executorch": ("build executor_runner with the Android NDK per the ExecuTorch docs (cmake -DANDROID_ABI=arm64-v8a "
                   "-DEXECUTORCH_BUILD_XNNPACK=ON, target executor_runner from examples/portable/executor_runner)",
                   _et_args, lambda out, _res: parse_executor_runner(out), {}),
}
TOOLS: dict[str, AndroidTool] = {
    fmt: AndroidTool(fmt, FORMATS[fmt].android_tool or "", how, args, parse, **extra)
    for fmt, (how, args, parse, extra) in _HOW.items()
}


def tools_dir(abi: str = DEFAULT_ABI) -> Path:
    """$DCL_ANDROID_TOOLS, else .cache/android-tools/<abi>/ in the project."""
    env = os.environ.get("DCL_ANDROID_TOOLS")
    return Path(env) if env else PROJECT_ROOT / ".cache" / "android-tools" / abi


def tool_for(fmt: str) -> AndroidTool:
    if fmt not in TOOLS:
        raise DeviceError(f"no Android command-line runner for format {fmt!r}; Android runs: {', '.join(TOOLS)}")
    return TOOLS[fmt]


def find_tool(fmt: str, folder: Path | None = None, abi: str = DEFAULT_ABI) -> tuple[AndroidTool, Path]:
    """The tool for `fmt` and its binary; DeviceError naming the binary, how to get it and where."""
    tool = tool_for(fmt)
    d = Path(folder) if folder else tools_dir(abi)
    p = d / tool.binary
    if not p.is_file():
        raise DeviceError(f"Android runner {tool.binary} for {fmt} ({abi}) not found in {d}/: {tool.how_to_get}, "
                          f"then put it at {p} (or point DCL_ANDROID_TOOLS at the folder that has it)")
    return tool, p


def shared_libs(tool: AndroidTool, binary: Path) -> list[Path]:
    """The tool's shared libraries found next to it (e.g. libonnxruntime.so of a shared-lib ORT
    build); a statically linked build has none, which is fine."""
    return sorted({q for pattern in tool.libs for q in binary.parent.glob(pattern) if q.is_file()})
