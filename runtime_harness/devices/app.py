"""Training steps (and inference) timed on a phone by the android_demo app's benchmark entry point.

Android's command-line tools run inference only, so `dcl profile --device SERIAL` measures training
artifacts through the demo app (android_demo/, which must hold the same bundle: `dcl bundle BUNDLE
--app android_demo`, then build and install it). Over adb, like devices/adb.py (one process boundary,
replayed by tests/fake_adb.py):

  adb shell pm path org.dcl.demo                                   installed?
  adb shell rm -f RESULT                                           no stale result
  adb shell am start -W -S -n org.dcl.demo/.ui.BenchmarkActivity --es artifact NAME --ei runs N
                  --ei warmup W --ei threads T                     run it
  adb shell cat RESULT                                             polled until the app wrote it

RESULT is /sdcard/Android/data/org.dcl.demo/files/dcl_benchmark.json (format "dcl-app-benchmark",
version 1, written by android_demo's core/Benchmark.kt): per-step seconds from the app's own clock,
load and first-step time, batch size, the losses, the artifact's sha256 (checked against the bundle
being profiled) or the app's one-line error.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

from dcl_core.bundle import Artifact
from dcl_core.errors import DeviceError
from runtime_harness.metrics import LatencyStats, Measurement, latency_stats

PACKAGE = "org.dcl.demo"
ACTIVITY = f"{PACKAGE}/.ui.BenchmarkActivity"
RESULT_PATH = f"/sdcard/Android/data/{PACKAGE}/files/dcl_benchmark.json"
RESULT_FORMAT, RESULT_VERSION = "dcl-app-benchmark", 1
APP_CLOCK = "measured:app-clock"  # System.nanoTime() around each call, inside the app
INSTALL_HINT = ("install the demo app with the same bundle: `dcl bundle BUNDLE --app android_demo`, then build and "
                "install android_demo/ from Android Studio")


class AppNotReady(DeviceError):
    """The app is missing, holds another bundle, or reported its own error: this artifact fails, the
    profile goes on (a disconnect stays a plain DeviceError and stops the run, as for the tools)."""


@dataclass
class AppRun:
    """What the app's benchmark entry point wrote for one artifact."""

    artifact: str
    sha256: str
    format: str
    kind: str
    runtime: str
    threads: int
    batch_size: int
    load_s: float
    first_s: float
    latency: LatencyStats
    warmup: LatencyStats | None
    samples_s: list[float]
    losses: list[float] = field(default_factory=list)


def parse_app_result(text: str) -> AppRun:
    """The app's result file -> AppRun; DeviceError (one line) for a foreign, broken or failed result."""
    try:
        r: dict[str, Any] = json.loads(text)
    except ValueError:
        raise DeviceError(f"the demo app's result {RESULT_PATH} is not JSON; re-run (or reinstall the app)") from None
    if not isinstance(r, dict) or r.get("format") != RESULT_FORMAT or r.get("version") != RESULT_VERSION:
        raise AppNotReady(f"the demo app's result is not a {RESULT_FORMAT} v{RESULT_VERSION} file; "
                          f"rebuild the app from this dcl's android_demo/")
    if r.get("error"):
        raise AppNotReady(f"the demo app could not run {r.get('artifact') or 'the artifact'}: {r['error']}")
    try:
        samples = [float(x) for x in r["samples_s"]]
        warm = [float(x) for x in r.get("warmup_s", [])]
        return AppRun(artifact=r["artifact"], sha256=r.get("sha256", ""), format=r["artifact_format"], kind=r["kind"],
                      runtime=r.get("runtime", ""), threads=int(r.get("threads", 1)), batch_size=int(r["batch_size"]),
                      load_s=float(r["load_s"]), first_s=float(r["first_s"]),
                      latency=latency_stats(samples, APP_CLOCK, "the demo app's clock around each call"),
                      warmup=latency_stats(warm, APP_CLOCK, "warm-up runs") if warm else None,
                      samples_s=samples, losses=[float(x) for x in r.get("losses", [])])
    except (KeyError, TypeError, ValueError) as e:
        raise DeviceError(f"the demo app's result lacks or garbles {e}; rebuild the app from this dcl's android_demo/") from None


class AppBenchmark:
    """Drives the installed demo app on one device (an AdbDevice: its shell and retry rules)."""

    def __init__(self, adb, poll_s: float = 1.0, timeout_s: float = 600.0):
        self.adb, self.poll_s, self.timeout_s = adb, poll_s, timeout_s

    def run(self, art: Artifact, runs: int, warmup: int, threads: int) -> AppRun:
        self.adb.fingerprint()
        if "package:" not in self.adb.shell(f"pm path {PACKAGE}", check=False):
            raise AppNotReady(f"the dcl demo app ({PACKAGE}) is not installed on {self.adb.serial}; {INSTALL_HINT}")
        self.adb.shell(f"rm -f {RESULT_PATH}", check=False)
        out = self.adb.shell(f"am start -W -S -n {ACTIVITY} --es artifact {art.name} --ei runs {runs} "
                             f"--ei warmup {warmup} --ei threads {threads}", check=False)
        if "Error:" in out or "Exception" in out:
            line = next(ln for ln in out.splitlines() if "Error:" in ln or "Exception" in ln).strip()
            raise AppNotReady(f"could not start the demo app's benchmark on {self.adb.serial}: {line}; {INSTALL_HINT}")
        deadline = time.monotonic() + self.timeout_s
        while True:
            text = self.adb.shell(f"cat {RESULT_PATH}", check=False)
            if text.lstrip().startswith("{"):
                break
            if time.monotonic() > deadline:
                raise DeviceError(f"the demo app wrote no result for {art.name} within {self.timeout_s:g} s on "
                                  f"{self.adb.serial}; check `adb logcat -s DclBenchmark` and re-run")
            time.sleep(self.poll_s)
        run = parse_app_result(text)
        if run.artifact != art.name or (run.sha256 and run.sha256 != art.sha256):
            raise AppNotReady(f"the demo app on {self.adb.serial} holds a different bundle ({run.artifact} "
                              f"sha256 {run.sha256[:12]}..., the profiled bundle has {art.sha256[:12]}...); {INSTALL_HINT}")
        return run


def to_artifact_result(art: Artifact, run: AppRun):
    """An ArtifactResult for the report: per training step (or inference) from the app's clock."""
    from runtime_harness.report.results import ArtifactResult, thin_samples

    per_sample = run.latency.mean_s / run.batch_size if art.kind == "training" and run.batch_size else None
    return ArtifactResult(
        name=art.name, format=art.format, kind=art.kind, sha256=art.sha256, bytes=art.bytes,  # type: ignore[arg-type]
        threads=run.threads, runtime=f"android_demo app ({run.runtime})", latency=run.latency, load_s=run.load_s,
        first_s=run.first_s, warmup=run.warmup, batch_size=run.batch_size, per_sample_s=per_sample,
        peak_rss=Measurement.unavailable("bytes", "not sampled: the app runs in its own process, which adb's shell "
                                                  "cannot read /proc of on Android 7+"),
        file_size=ArtifactResult.file_size_of(art.bytes),
        energy=Measurement.unavailable("J", "not measured for app runs"),
        samples_s=thin_samples(run.samples_s))


__all__ = ["ACTIVITY", "AppBenchmark", "AppNotReady", "AppRun", "PACKAGE", "RESULT_PATH", "parse_app_result", "to_artifact_result"]
