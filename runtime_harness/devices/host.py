"""This machine as a profiling device: its fingerprint, and peak memory per artifact measured in
a fresh process.

Peak RSS is a high-water mark, so it is taken in a new Python process that first becomes an
"empty runner" (runner module and runtime imported, inputs built), whose RSS is the baseline;
then the peak mark is reset, the artifact is loaded and run once, and the new peak minus the
baseline is what the artifact costs. Resetting matters: importing a runtime can peak far above
its resting size (thread pools, BLAS buffers) and would otherwise hide a small model entirely.
"""
from __future__ import annotations

import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from dcl_core.paths import PROJECT_ROOT
from runtime_harness.devices.base import DeviceInfo
from runtime_harness.metrics import RU_MAXRSS, Measurement

RAPL = Path("/sys/class/powercap/intel-rapl:0/energy_uj")


def has_rapl() -> bool:
    """Whether package energy counters are readable (they are not on this host, nor in most VMs)."""
    try:
        int(RAPL.read_text())
        return True
    except (OSError, ValueError):
        return False


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith(("model name", "hardware", "cpu model")):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def host_info() -> DeviceInfo:
    return DeviceInfo(
        kind="host", serial=socket.gethostname(), model="host", soc=_cpu_model(),
        abi=platform.machine(), os_version=f"{platform.system()} {platform.release()}",
        fingerprint=platform.platform(), is_emulator=False, manufacturer="",
        extra={"cpus": str(os.cpu_count()), "python": platform.python_version(),
               "rapl": "readable" if has_rapl() else "absent"})


# The fresh process: run `setup` (imports, the runtime, inputs: an empty runner), take its RSS as the
# baseline, reset the peak-RSS mark (Linux: "5" > /proc/self/clear_refs, so transient import peaks
# do not hide the load), run `load`, read the peak. Prints 'DCL-RSS <base_kb> <peak_kb> <how>'.
_DRIVER = r"""
import resource, sys
def _status_kb(key):
    try:
        for line in open("/proc/self/status"):
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None
def _maxrss_kb():
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r // 1024 if sys.platform == "darwin" else r  # bytes on macOS, KiB on Linux
setup, load, mode = sys.argv[1], sys.argv[2], sys.argv[3]
sys.argv = [sys.argv[0], *sys.argv[4:]]
ns = {"__name__": "__dcl_rss__"}
exec(compile(open(setup).read(), "setup", "exec"), ns)
reset = False
try:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    reset = True
except OSError:
    pass
base = _status_kb("VmRSS") if reset else _maxrss_kb()
if mode == "load":
    exec(compile(open(load).read(), "load", "exec"), ns)
peak = _status_kb("VmHWM") if reset else _maxrss_kb()
print("DCL-RSS", base, peak, "hwm-reset" if reset else "ru_maxrss")
"""


def _run_driver(setup: Path, load: Path, mode: str, args: list[str], timeout_s: float,
                env: dict[str, str] | None) -> tuple[tuple[int, int, str] | None, str]:
    p = subprocess.run([sys.executable, "-c", _DRIVER, str(setup), str(load), mode, *args], capture_output=True,
                       text=True, cwd=PROJECT_ROOT, timeout=timeout_s, env={**os.environ, **(env or {})})
    for line in p.stdout.splitlines():
        if line.startswith("DCL-RSS "):
            _, base, peak, how = line.split()
            return (int(base), int(peak), how), ""
    lines = [ln for ln in (p.stderr or p.stdout).strip().splitlines() if ln.strip()]
    return None, (lines[-1] if lines else f"exit {p.returncode}")


def peak_rss_fresh_process(setup_code: str, load_code: str, args: list[str] | None = None,
                           timeout_s: float = 600.0, env: dict[str, str] | None = None) -> Measurement:
    """Peak RSS that `load_code` adds in a fresh Python process on top of `setup_code` (the empty
    runner: imports, runtime, inputs). On Linux the peak mark is reset after setup, so a transient
    import peak cannot hide the artifact; elsewhere two processes are compared by ru_maxrss. A
    failing process gives `unavailable` with its last error line (the report shows why)."""
    with tempfile.TemporaryDirectory() as tmp:
        setup, load = Path(tmp) / "setup.py", Path(tmp) / "load.py"
        setup.write_text(setup_code)
        load.write_text(load_code)
        res, err = _run_driver(setup, load, "load", args or [], timeout_s, env)
        if res is None:
            return Measurement.unavailable("bytes", f"the fresh process loading the artifact failed: {err}")
        base, peak, how = res
        if how != "hwm-reset":  # no resettable peak: compare with a process that only does the setup
            res0, err = _run_driver(setup, load, "setup", args or [], timeout_s, env)
            if res0 is None:
                return Measurement.unavailable("bytes", f"the empty-runner baseline process failed: {err}")
            base = res0[1]
    delta = max(peak - base, 0) * 1024
    how_note = ("VmHWM after loading and running once, minus VmRSS of the same fresh process as an empty runner "
                "(peak mark reset via /proc/self/clear_refs)" if how == "hwm-reset" else
                "ru_maxrss of a fresh process that loads and runs once, minus that of an empty-runner process")
    return Measurement(float(delta), "bytes", RU_MAXRSS, note=(
        f"{how_note}: {peak / 1024:.1f} MiB - {base / 1024:.1f} MiB" + ("; clamped at 0" if peak < base else "")))


_RUNNER_SETUP = """
import json, sys
import numpy as np
spec = json.load(open(sys.argv[1]))
from exporters.formats import get_format
get_format(spec["fmt"]).load_runner()  # the runtime itself belongs to the empty runner
if spec["inputs_npz"]:
    inputs = dict(np.load(spec["inputs_npz"]))
else:
    inputs = {s["name"]: np.zeros(s["shape"], dtype=s["dtype"]) for s in spec["artifact"]["inputs"]}
"""
_RUNNER_LOAD = """
from exporters.runner import open_inference, open_training
if spec["kind"] == "training":
    open_training(spec["fmt"], spec["path"], spec["artifact"], spec["threads"]).train_step(inputs)
else:
    open_inference(spec["fmt"], spec["path"], spec["artifact"], spec["threads"]).infer(inputs)
"""


def peak_rss_of_artifact(fmt: str, path: str | Path, artifact: dict[str, Any], kind: str = "inference",
                         threads: int = 1, inputs_npz: str | Path | None = None,
                         timeout_s: float = 600.0) -> Measurement:
    """Fresh-process peak RSS of one bundle artifact with its runner (`artifact` is its manifest
    record as a dict; inputs are zeros of the manifest's input specs unless an .npz is given)."""
    spec = {"fmt": fmt, "path": str(path), "artifact": artifact, "kind": kind, "threads": threads,
            "inputs_npz": str(inputs_npz) if inputs_npz else ""}
    with tempfile.TemporaryDirectory() as tmp:
        f = Path(tmp) / "spec.json"
        f.write_text(json.dumps(spec))
        m = peak_rss_fresh_process(_RUNNER_SETUP, _RUNNER_LOAD, [str(f)], timeout_s)
    if m.value is None:
        return Measurement.unavailable("bytes", f"{fmt} artifact {Path(path).name}: {m.reason}")
    m.note = f"{fmt} runner: {m.note}"
    return m
