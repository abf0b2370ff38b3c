"""A format's native runner on this machine: the runtime as an app links it, no Python inside.

The runner process does everything it measures itself (load, first run, warm-up, the timed runs
under the same "at least N runs and T seconds" rule, CPU time, the memory high-water mark), so
load time and peak memory are the runtime's own, not an interpreter's. Inputs cross the process
boundary as raw tensors in files (never pickled); outputs and trained weights come back the same
way when asked for (`dump`).
"""
from __future__ import annotations

import dataclasses
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dcl_core.bundle import Artifact
from dcl_core.errors import BundleError, DeviceError
from exporters.formats import get_format
from exporters.runner import feed
from runtime_harness import metrics
from runtime_harness.metrics import TOOL_REPORTED, VMHWM, Measurement, Profile, TimingResult, latency_stats
from runtime_harness.parsers import NativeRunnerOutput, parse_dcl_et_runner


@dataclass
class NativePlan:
    runs: int = 20
    warmup: int = 3
    min_duration_s: float = 0.0
    threads: int = 1
    timeout_s: float = 900.0
    extra_args: tuple[str, ...] = ()  # passed through, e.g. "--etdump=<file>" (bench/et_training_profile.py)


@dataclass
class NativeRun:
    output: NativeRunnerOutput
    runtime: str  # what ran it, e.g. "executorch (native runner)"
    dumped: dict[str, np.ndarray]  # outputs ("output_<i>") or trained weights (PyTorch names)


def native_runner_of(fmt: str) -> Any:
    """The format's native runner module, or a BundleError when it has none."""
    module = get_format(fmt).load_native_runner()
    if module is None:
        raise BundleError(f"{get_format(fmt).display} has no native runner")
    return module


@dataclass(frozen=True)
class Launcher:
    """How to start a runner built for another architecture: its toolchain (which binary, which
    libraries) and the emulator command in front of it, e.g. ["qemu-aarch64", "-L", ROOT]."""

    toolchain: Any
    prefix: tuple[str, ...]
    runtime: str  # what the results say ran it


def run_native(path: Path, art: Artifact, inputs: dict[str, np.ndarray], plan: NativePlan,
               dump: bool = False, launcher: Launcher | None = None) -> NativeRun:
    """Run an artifact in its format's native runner (on this machine, or through `launcher`). A
    runner that is not built, or that refuses the artifact, is one BundleError line; a hung runner
    is killed at plan.timeout_s."""
    native = native_runner_of(art.format)
    tc = launcher.toolchain if launcher else None
    found = native.locate(tc)
    if found.binary is None:
        raise BundleError(found.why)
    with tempfile.TemporaryDirectory(prefix="dcl-native-") as tmp:
        args = native.program_args(path, art)
        for i, (name, value) in enumerate(feed(inputs, art.inputs, f"the {art.format} program").items()):
            file = Path(tmp) / f"input_{i}.bin"
            value.tofile(file)  # raw, in the dtype and order the artifact declares
            args.append(f"--input={file}")
        args += [f"--runs={plan.runs}", f"--warmup={plan.warmup}", f"--min-secs={plan.min_duration_s:g}",
                 f"--threads={plan.threads}", *plan.extra_args]
        if dump:
            args.append(f"--dump={tmp}")
        argv, env = native.command(found.binary, args, tc)
        if launcher is not None:  # the library path is the guest's, not the emulator's own
            argv = [*launcher.prefix, "-E", f"LD_LIBRARY_PATH={env.pop('LD_LIBRARY_PATH')}", *argv]
        try:
            p = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=plan.timeout_s)
        except subprocess.TimeoutExpired:
            raise DeviceError(f"the native runner did not finish {art.name} within {plan.timeout_s:g} s") from None
        if p.returncode != 0:
            errors = [ln[len("DCL-ERROR "):] for ln in p.stderr.splitlines() if ln.startswith("DCL-ERROR ")]
            why = errors[-1] if errors else f"exit status {p.returncode}"
            raise BundleError(f"the native runner could not run {art.name}: {why}")
        out = parse_dcl_et_runner(p.stdout)
        dumped = _read_dump(Path(tmp), art, out) if dump else {}
    if not out.timings.samples_s:
        raise BundleError(f"the native runner printed no timings for {art.name}")
    return NativeRun(out, launcher.runtime if launcher else native.RUNTIME, dumped)


def _read_dump(folder: Path, art: Artifact, out: NativeRunnerOutput) -> dict[str, np.ndarray]:
    if art.kind == "training":
        to_torch = dict(art.details.get("parameters", {}))
        unknown = [n for n, _ in out.params if n not in to_torch]
        if unknown:
            raise BundleError(f"the native runner trained {unknown[:3]}, which the manifest does not map to "
                              "PyTorch names; re-run `dcl export`")
        return {to_torch[n]: np.fromfile(folder / f"param_{i}.bin", np.float32).reshape(shape)
                for i, (n, shape) in enumerate(out.params)}
    dtypes = {"Float": np.float32, "Long": np.int64, "Int": np.int32}
    return {f"output_{i}": np.fromfile(folder / f"output_{i}.bin", dtypes.get(t, np.float32)).reshape(shape)
            for i, (t, shape) in enumerate(out.outputs)}


def profile_native(path: Path, art: Artifact, inputs: dict[str, np.ndarray], plan: NativePlan,
                   target: Any, sustained_s: float = 0.0) -> tuple[Profile, Measurement, str]:
    """Latency, load, CPU-time energy estimate and peak memory of one artifact, all from the runner
    process. With `sustained_s`, the timed runs last at least that long and their drift is kept."""
    if sustained_s > 0:
        plan = dataclasses.replace(plan, min_duration_s=max(plan.min_duration_s, sustained_s))
    run = run_native(path, art, inputs, plan)
    o, t = run.output, run.output.timings
    note = f"per-run times from {t.tool}'s own steady clock"
    samples = t.samples_s
    timing = TimingResult(first_s=t.first_s or samples[0],
                          warmup=latency_stats(o.warmup_s, TOOL_REPORTED, note) if o.warmup_s else None,
                          runs=latency_stats(samples, TOOL_REPORTED, note), samples_s=samples,
                          cpu_s=o.cpu_s if o.cpu_s is not None else float("nan"),
                          wall_s=o.wall_s if o.wall_s is not None else sum(samples), load_s=t.init_s)
    per = "inference" if art.kind == "inference" else "training step"
    energy = (metrics.estimate_energy(timing.cpu_per_run_s, target, per) if target is not None and o.cpu_s is not None
              else Measurement.unavailable("J", "no target power figure or no CPU time to estimate energy from"))
    batch = metrics.batch_size_of(inputs) if art.kind == "training" else None
    drift = metrics.drift_from_durations(samples, max(sustained_s / 10.0, 1.0)) if sustained_s > 0 else None
    profile = Profile(art.kind, timing, energy, batch_size=batch,
                      per_sample_s=timing.runs.mean_s / batch if batch else None, drift=drift)
    return profile, _peak_rss(o), run.runtime


def _peak_rss(o: NativeRunnerOutput) -> Measurement:
    if o.rss_peak_kb is None or o.rss_base_kb is None:
        return Measurement.unavailable("bytes", "the native runner printed no memory record")
    delta = max(o.rss_peak_kb - o.rss_base_kb, 0)
    how = ("VmHWM of the runner process after loading and every run, minus its VmRSS before loading "
           "(peak mark reset via /proc/self/clear_refs)" if o.rss_how == "hwm-reset" else
           "peak RSS (getrusage) of the runner process, minus its RSS before loading")
    return Measurement(float(delta * 1024), "bytes", VMHWM if o.rss_how == "hwm-reset" else metrics.RU_MAXRSS,
                       note=f"{how}: {o.rss_peak_kb / 1024:.1f} MiB - {o.rss_base_kb / 1024:.1f} MiB; the whole "
                            f"process (runtime libraries included) peaked at {o.rss_peak_kb / 1024:.1f} MiB")
