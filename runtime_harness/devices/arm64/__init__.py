"""The `arm64` device: the artifacts run as aarch64 code under qemu user-mode emulation.

Not a phone: no phone's caches, clocks, thermal limits or NPU, and wall time under emulation says
nothing about a phone's. What it does show is that each artifact computes the same thing on ARM
(NEON kernels, not AVX; other XNNPACK and runtime code paths), and a cost that does not depend
on the host's load: the guest instructions of one inference call or one training step, counted
by a small qemu TCG plugin (insn_count.c).

The environment, made once by the set-up (`python -m runtime_harness.devices.arm64`) and cached
outside the work tree under a folder named by the hash of its recipe (below):
- an arm64 Debian root file system (mmdebstrap, variant `extract`: packages unpacked, no scripts
  run, so no binfmt or root-in-a-chroot is needed) with Python 3.11, the version the aarch64
  wheels are built for;
- the aarch64 wheels of the runtimes at the host's pinned versions (executorch for its C++
  libraries and headers, ai-edge-litert, onnxruntime inference: onnxruntime-training has no
  aarch64 wheel), installed with pip's --platform/--target into /opt/dcl/site of the root;
- dcl_et_runner cross-compiled for aarch64 (Debian's g++-aarch64-linux-gnu against that
  executorch wheel), the same sources as the host's runner;
- the plugin, built against qemu's plugin header (from the Debian source of the installed qemu).
"""
from __future__ import annotations

import hashlib
import platform
import shutil
import subprocess
import sys
import tarfile
import tempfile
import urllib.request
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from dcl_core.errors import DeviceError
from dcl_core.paths import build_cache_dir

HERE = Path(__file__).resolve().parent
SUITE = "bookworm"  # Debian 12: Python 3.11, as the host's and the cp311 wheels
MIRROR = "http://deb.debian.org/debian"
PACKAGES = ("python3.11", "libstdc++6", "libgomp1")
# the runtimes, at the versions the host runs (pyproject pins them); executorch only for its libraries
WHEELS = ("numpy", "ai-edge-litert", "onnxruntime")
NO_DEPS_WHEELS = ("executorch",)
PLATFORMS = ("manylinux_2_28_aarch64", "manylinux_2_27_aarch64", "manylinux_2_17_aarch64", "manylinux2014_aarch64")
# qemu's plugin API header, from the Debian source of qemu 7.2 (bookworm's qemu-user)
QEMU_SOURCE = ("http://deb.debian.org/debian/pool/main/q/qemu/qemu_7.2+dfsg.orig.tar.xz",
               "91aca71520040edc40b8d437aa3004dae614f58e286cf653ee8996c07af2962f")
QEMU = "qemu-aarch64"
# The emulated core: a Cortex-A76, the big core of phones such as the Pixel 6 and 7 (ARMv8.2-A with
# dot product), and the /proc/cpuinfo the guest reads, which must describe it. qemu-user 7.2 passes
# the host's own /proc/cpuinfo through, and the cpuinfo library in the LiteRT wheel crashes
# (SIGSEGV while creating the interpreter) parsing an x86 one; with -L, qemu serves the root's file.
# The guest sees one CPU (/sys/devices/system/cpu/{possible,present,online} = 0, as dcl runs it
# single-threaded): ONNX Runtime's cpuinfo aborts when /proc/cpuinfo and /sys disagree on the count.
CPU = "cortex-a76"
CPUINFO = """processor\t: 0
BogoMIPS\t: 50.00
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp
CPU implementer\t: 0x41
CPU architecture: 8
CPU variant\t: 0x4
CPU part\t: 0xd0b
CPU revision\t: 1

"""
SITE = "opt/dcl/site"
PROVENANCE = "emulated:qemu-aarch64"


def _host_version(dist: str) -> str:
    # onnxruntime-training provides the host's `onnxruntime`; on ARM the inference wheel of the same version
    name = "onnxruntime-training" if dist == "onnxruntime" else dist
    return metadata.version(name)


def wheel_pins() -> list[str]:
    return [f"{d}=={_host_version(d)}" for d in WHEELS + NO_DEPS_WHEELS]


def recipe() -> str:
    """Everything the environment is made from; its hash names the cached folder."""
    from exporters.executorch import native

    parts = [f"suite={SUITE}", f"mirror={MIRROR}", f"packages={','.join(PACKAGES)}", f"wheels={','.join(wheel_pins())}",
             f"platforms={','.join(PLATFORMS)}", f"qemu={QEMU_SOURCE[1]}", f"host={platform.machine()}",
             f"cpu={CPU}", CPUINFO, "cpus=0",
             (HERE / "insn_count.c").read_text(), *(
                 (native.SOURCE_DIR / n).read_text() for n in native.SOURCES)]
    return "\n".join(parts)


def env_dir() -> Path:
    return build_cache_dir() / "arm64" / hashlib.sha256(recipe().encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Arm64Env:
    root: Path  # the arm64 root file system

    @property
    def site(self) -> Path:
        return self.root / SITE

    @property
    def python(self) -> Path:
        return self.root / "usr" / "bin" / "python3.11"

    @property
    def plugin(self) -> Path:
        return self.root.parent / "libdcl_insn.so"

    @property
    def executorch(self) -> Path:
        return self.site / "executorch"

    def toolchain(self):
        from exporters.executorch import native

        return native.cross_toolchain("aarch64", self.executorch)

    def qemu(self, count_file: Path) -> list[str]:
        """The emulator command in front of a guest program, counting its instructions into count_file."""
        return [QEMU, "-cpu", CPU, "-L", str(self.root), "-plugin", f"{self.plugin},out={count_file}"]


def locate() -> Arm64Env:
    """The environment for the current recipe, or a DeviceError saying how to make it."""
    if shutil.which(QEMU) is None:
        raise DeviceError(f"the arm64 device needs {QEMU} (Debian: apt-get install qemu-user); run `make setup`")
    root = env_dir() / "rootfs"
    env = Arm64Env(root)
    if not (env.python.is_file() and env.plugin.is_file() and (root.parent / "READY").is_file()):
        raise DeviceError(f"the arm64 environment is not made ({env_dir()} is missing or incomplete); run `make setup`")
    return env


def _run(argv: list[str], what: str, **kw) -> None:
    p = subprocess.run(argv, capture_output=True, text=True, **kw)
    if p.returncode != 0:
        lines = [ln for ln in (p.stderr or p.stdout).strip().splitlines() if ln.strip()]
        raise DeviceError(f"{what} failed: {lines[-1] if lines else f'exit {p.returncode}'}")


def build(log=print) -> Arm64Env:
    """Make the environment (no-op when the keyed folder is complete). Built in a temporary folder
    beside it and renamed into place, so an interrupted build never looks complete."""
    final = env_dir()
    if (final / "READY").is_file():
        return Arm64Env(final / "rootfs")
    for tool, package in (("mmdebstrap", "mmdebstrap"), (QEMU, "qemu-user"), ("aarch64-linux-gnu-g++", "g++-aarch64-linux-gnu"),
                          ("cc", "gcc")):
        if shutil.which(tool) is None:
            raise DeviceError(f"making the arm64 environment needs {tool} (Debian: apt-get install {package})")
    final.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=final.parent, prefix=".build-") as tmp:
        stage = Path(tmp) / "env"
        stage.mkdir()
        env = Arm64Env(stage / "rootfs")
        log(f"making the arm64 root file system (Debian {SUITE}, {', '.join(PACKAGES)})")
        _run(["mmdebstrap", "--variant=extract", "--arch=arm64", f"--include={','.join(PACKAGES)}", SUITE,
              str(env.root), MIRROR], "mmdebstrap")
        (env.root / "proc").mkdir(exist_ok=True)
        (env.root / "proc" / "cpuinfo").write_text(CPUINFO)
        cpus = env.root / "sys" / "devices" / "system" / "cpu"
        cpus.mkdir(parents=True, exist_ok=True)
        for name in ("possible", "present", "online"):
            (cpus / name).write_text("0\n")
        log(f"installing the aarch64 wheels: {', '.join(wheel_pins())}")
        platforms = [a for p in PLATFORMS for a in ("--platform", p)]
        pip = [sys.executable, "-m", "pip", "install", "-q", "--only-binary=:all:", "--python-version", "3.11",
               "--implementation", "cp", "--abi", "cp311", *platforms, "--target", str(env.site)]
        n = len(WHEELS)
        _run([*pip, *wheel_pins()[:n]], "installing the aarch64 wheels")
        _run([*pip, "--no-deps", *wheel_pins()[n:]], "installing the aarch64 executorch wheel")
        _build_plugin(env.plugin, Path(tmp), log)
        from exporters.executorch import native

        native.build(env.toolchain(), log=log)  # keyed by its own sources and toolchain
        (stage / "RECIPE").write_text(recipe())
        (stage / "READY").write_text("complete\n")
        try:
            stage.rename(final)
        except OSError:  # made by another process meanwhile
            if not (final / "READY").is_file():
                raise
    return Arm64Env(final / "rootfs")


def _build_plugin(out: Path, tmp: Path, log) -> None:
    url, sha = QEMU_SOURCE
    log("building the instruction-count plugin against qemu 7.2's plugin header")
    archive = tmp / "qemu.tar.xz"
    with urllib.request.urlopen(url, timeout=300) as r, open(archive, "wb") as f:
        shutil.copyfileobj(r, f)
    if hashlib.sha256(archive.read_bytes()).hexdigest() != sha:
        raise DeviceError(f"{url} does not have the pinned sha256 {sha}")
    with tarfile.open(archive) as t:
        member = next((m for m in t.getmembers() if m.name.endswith("include/qemu/qemu-plugin.h")), None)
        if member is None:
            raise DeviceError(f"{url} holds no include/qemu/qemu-plugin.h")
        (tmp / "qemu-plugin.h").write_bytes(t.extractfile(member).read())
    _run(["cc", "-shared", "-fPIC", "-O2", "-Wall", f"-I{tmp}", str(HERE / "insn_count.c"), "-o", str(out)],
         "building the instruction-count plugin")
