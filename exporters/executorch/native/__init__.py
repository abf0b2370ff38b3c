"""dcl_et_runner: the ExecuTorch C++ runtime without Python, as an app on a phone links it.

Built with CMake against the executorch wheel's own `include/`, `share/cmake` and `lib/` (no
ExecuTorch source checkout): `python -m exporters.executorch.native` (the set-up runs it). The
binary is cached outside the work tree, in a folder named by the hash of what it is built from
(this folder's sources, the executorch version, the machine), so a fresh clone with the same pins
reuses it. The same sources cross-compile for another architecture (`Toolchain`: aarch64 with
Debian's g++-aarch64-linux-gnu against the aarch64 executorch wheel; the arm64 device builds it).
It carries no run path: whoever starts it puts the wheel's `lib/` on the library path
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


@dataclass(frozen=True)
class Toolchain:
    """What the runner is built for: an architecture, the executorch package of that
    architecture (its headers and libraries) and the C++ compiler that targets it."""

    arch: str  # platform.machine() spelling: x86_64, aarch64
    executorch: Path  # the executorch package folder of that architecture
    compiler: str = "c++"

    @property
    def cross(self) -> bool:
        return self.arch != platform.machine()


def host_toolchain() -> Toolchain:
    return Toolchain(platform.machine(), wheel_dir())


def cross_toolchain(arch: str, executorch: Path) -> Toolchain:
    """Debian's cross compiler for `arch` (g++-aarch64-linux-gnu), against that arch's wheel."""
    return Toolchain(arch, executorch, f"{arch}-linux-gnu-g++")


def build_key(tc: Toolchain | None = None) -> str:
    tc = tc or host_toolchain()
    h = hashlib.sha256()
    for name in SOURCES:
        h.update(name.encode() + b"\0" + (SOURCE_DIR / name).read_bytes() + b"\0")
    h.update(f"executorch=={metadata.version('executorch')}|{sys.platform}|{tc.arch}|{tc.compiler}".encode())
    return h.hexdigest()[:16]


def binary_path(tc: Toolchain | None = None) -> Path:
    return build_cache_dir() / "dcl_et_runner" / build_key(tc) / BINARY


@dataclass(frozen=True)
class Located:
    binary: Path | None
    why: str = ""  # why there is none


def locate(tc: Toolchain | None = None) -> Located:
    """The built runner (for this machine, or for `tc`), or why there is none (one line)."""
    path = binary_path(tc)
    if path.is_file() and os.access(path, os.X_OK):
        return Located(path)
    arch = tc.arch if tc else platform.machine()
    return Located(None, f"the native ExecuTorch runner is not built for executorch "
                         f"{metadata.version('executorch')} on {arch} ({path} is missing); run `make setup`")


def command(binary: Path, args: list[str], tc: Toolchain | None = None) -> tuple[list[str], dict[str, str]]:
    """argv and environment that start the runner against its architecture's executorch
    libraries (for a cross build the caller prefixes its emulator)."""
    lib = str((tc.executorch if tc else wheel_dir()) / "lib")
    env = dict(os.environ)
    env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (lib, env.get("LD_LIBRARY_PATH", "")) if p)
    return [str(binary), *args], env


def build(tc: Toolchain | None = None, log=print) -> Path:
    """Configure and build the runner into the cache (no-op when the keyed binary exists). The
    build happens in a temporary folder beside the target and is renamed into place, so a build
    that fails or is interrupted never leaves a binary that looks usable."""
    tc = tc or host_toolchain()
    target = binary_path(tc)
    if target.is_file():
        return target
    for tool in ("cmake", tc.compiler):
        if shutil.which(tool) is None:
            raise ExportError(f"building the native ExecuTorch runner needs {tool}; install it (Debian: apt-get "
                              f"install cmake {'g++-' + tc.arch.replace('_', '-') + '-linux-gnu' if tc.cross else 'g++'})")
    target.parent.parent.mkdir(parents=True, exist_ok=True)
    log(f"building the native ExecuTorch runner for {tc.arch} into {target.parent}")
    cross = (["-DCMAKE_SYSTEM_NAME=Linux", f"-DCMAKE_SYSTEM_PROCESSOR={tc.arch}"] if tc.cross else [])
    with tempfile.TemporaryDirectory(dir=target.parent.parent, prefix=".build-") as tmp:
        steps = (["cmake", "-S", str(SOURCE_DIR), "-B", tmp, "-DCMAKE_BUILD_TYPE=Release",
                  f"-DCMAKE_CXX_COMPILER={tc.compiler}", *cross,
                  f"-Dexecutorch_DIR={tc.executorch / 'share' / 'cmake'}"],
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
