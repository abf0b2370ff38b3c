"""dcl_et_runner: the ExecuTorch C++ runtime without Python, as an app on a phone links it.

Built with CMake against the executorch wheel's own `include/`, `share/cmake` and `lib/` (no
ExecuTorch source checkout): `python -m exporters.executorch.native` (the set-up runs it). The
binary is cached outside the work tree, in a folder named by the hash of what it is built from
(this folder's sources, the executorch version, the machine), so a fresh clone with the same pins
reuses it. It carries no run path: whoever starts it puts the wheel's `lib/` on the library path
(`command()`), so one binary serves every virtual environment with the same executorch.

What it prints and how it trains: see dcl_et_runner.cpp. The harness runs and parses it
(runtime_harness/devices/native.py); nothing here imports the harness.
"""
from __future__ import annotations

import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from dcl_core.bundle import Artifact
from dcl_core.errors import BundleError, ExportError
from dcl_core.paths import build_cache_dir

SOURCE_DIR = Path(__file__).resolve().parent
SOURCES = ("dcl_et_runner.cpp", "CMakeLists.txt")
BINARY = "dcl_et_runner"
RUNTIME = "executorch (native runner)"


def wheel_dir() -> Path:
    """The installed executorch package folder (include/, lib/, share/cmake)."""
    import importlib.util

    spec = importlib.util.find_spec("executorch")
    if spec is None or not spec.submodule_search_locations:
        raise ExportError("executorch is not installed; run `make setup`")
    return Path(list(spec.submodule_search_locations)[0])


def build_key() -> str:
    h = hashlib.sha256()
    for name in SOURCES:
        h.update(name.encode() + b"\0" + (SOURCE_DIR / name).read_bytes() + b"\0")
    h.update(f"executorch=={metadata.version('executorch')}|{sys.platform}|{platform.machine()}".encode())
    return h.hexdigest()[:16]


def binary_path() -> Path:
    return build_cache_dir() / "dcl_et_runner" / build_key() / BINARY


@dataclass(frozen=True)
class Located:
    binary: Path | None
    why: str = ""  # why there is none


def locate() -> Located:
    """The built runner for the installed executorch, or why there is none (one line)."""
    path = binary_path()
    if path.is_file() and os.access(path, os.X_OK):
        return Located(path)
    return Located(None, f"the native ExecuTorch runner is not built for executorch "
                         f"{metadata.version('executorch')} ({path} is missing); run `make setup`")


def command(binary: Path, args: list[str]) -> tuple[list[str], dict[str, str]]:
    """argv and environment that start the runner against this environment's executorch libraries."""
    lib = str(wheel_dir() / "lib")
    env = dict(os.environ)
    env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (lib, env.get("LD_LIBRARY_PATH", "")) if p)
    return [str(binary), *args], env


def build(log=print) -> Path:
    """Configure and build the runner into the cache (no-op when the keyed binary exists). The
    build happens in a temporary folder beside the target and is renamed into place, so a build
    that fails or is interrupted never leaves a binary that looks usable."""
    target = binary_path()
    if target.is_file():
        return target
    for tool in ("cmake", "c++"):
        if shutil.which(tool) is None:
            raise ExportError(f"building the native ExecuTorch runner needs {tool}; install it "
                              "(Debian: apt-get install cmake g++)")
    target.parent.parent.mkdir(parents=True, exist_ok=True)
    log(f"building the native ExecuTorch runner into {target.parent}")
    with tempfile.TemporaryDirectory(dir=target.parent.parent, prefix=".build-") as tmp:
        steps = (["cmake", "-S", str(SOURCE_DIR), "-B", tmp, "-DCMAKE_BUILD_TYPE=Release",
                  f"-Dexecutorch_DIR={wheel_dir() / 'share' / 'cmake'}"],
                 ["cmake", "--build", tmp, "--parallel", "2"])
        for argv in steps:
            p = subprocess.run(argv, capture_output=True, text=True)
            if p.returncode != 0:
                errors = [ln for ln in (p.stdout + p.stderr).splitlines() if "error" in ln.lower()]
                raise ExportError(f"building the native ExecuTorch runner failed: "
                                  f"{(errors or (p.stdout + p.stderr).strip().splitlines() or ['?'])[0]}")
        staged = Path(tmp) / "stage"
        staged.mkdir()
        shutil.copy2(Path(tmp) / BINARY, staged / BINARY)
        try:
            staged.rename(target.parent)
        except OSError:  # another build finished first: its binary is as good as ours
            if not target.is_file():
                raise
    return target



def program_args(path: Path, art: Artifact) -> list[str]:
    """The runner's arguments naming the artifact's program (and its external weights), its method
    and, for a training artifact, the optimizer the manifest records."""
    from exporters.executorch.runner import artifact_files  # the one place the file layout is read

    program, data = artifact_files(path, art)
    args = [f"--model={program}", f"--method={art.details.get('method', 'forward')}",
            f"--mode={'train' if art.kind == 'training' else 'infer'}"]
    if data is not None:
        args.append(f"--data={data}")
    if art.kind == "training":
        opt = art.optimizer or {}
        if opt.get("name", "sgd") != "sgd":
            raise BundleError(f"the native ExecuTorch runner trains with SGD only; {art.name} asks for "
                              f"{opt.get('name')!r}")
        args += [f"--lr={float(opt.get('lr', 0.01))!r}", f"--momentum={float(opt.get('momentum', 0.0))!r}",
                 f"--dampening={float(opt.get('dampening', 0.0))!r}",
                 f"--weight-decay={float(opt.get('weight_decay', 0.0))!r}",
                 f"--nesterov={int(bool(opt.get('nesterov', False)))}"]
    return args
