"""The official command-line benchmark tools that run artifacts on Android, where to find them
on this machine, how to call them and which parser reads their output.

dcl does not ship these binaries (each is built or downloaded per runtime version), so a missing
one is a user error that names the exact binary, where to obtain it and the folder to put it in.
"""
from __future__ import annotations

import os
import shlex
from dataclasses import dataclass
from pathlib import Path

from dcl_core.errors import DeviceError
from dcl_core.paths import PROJECT_ROOT
from exporters.formats import FORMATS, AndroidTool
from runtime_harness.parsers import TOOL_PARSERS, ToolTimings

DEFAULT_ABI = "arm64-v8a"


@dataclass(frozen=True)
class RunPlan:
    """How long to run: the same MLPerf-style knobs as on the host."""

    runs: int = 50
    warmup: int = 3
    min_duration_s: float = 1.0
    threads: int = 1


def tool_command(tool: AndroidTool, remote_dir: str, model_name: str, plan: RunPlan) -> str:
    """The device shell command, run from `remote_dir` (libraries next to the binary)."""
    model = f"{remote_dir}/{model_name}"
    argv = [f"./{tool.binary}", *tool.argv(model, tool.result_path(remote_dir), plan.runs, plan.warmup,
                                           plan.min_duration_s, plan.threads)]
    return "LD_LIBRARY_PATH=. " + " ".join(shlex.quote(a) for a in argv)


def parse_tool_output(tool: AndroidTool, output: str, result_file: str | None) -> ToolTimings:
    """The tool's timings, by the parser its format descriptor names."""
    return TOOL_PARSERS[tool.parser](output, result_file)


# Each format's official benchmark binary, from its descriptor (exporters.formats).
TOOLS: dict[str, AndroidTool] = {f.name: f.android_tool for f in FORMATS.values() if f.android_tool is not None}


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
