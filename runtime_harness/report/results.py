"""results.json: what one `dcl profile` run measured, typed, written atomically and read back
strictly (unknown keys or unlabelled numbers are refused, so a hand-edited or foreign file fails
loudly instead of producing a misleading report)."""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

from dcl_core.errors import DclError
from runtime_harness.devices.base import DeviceInfo
from runtime_harness.metrics import FILE_SIZE, Drift, LatencyStats, Measurement, Profile

FORMAT_VERSION = 1
MAX_STORED_SAMPLES = 5000  # statistics use every run; results.json keeps at most this many for plots
# A week: longer than any timed call or run `dcl profile` makes (--sustained stops at a day), so a
# larger duration read back is damage (1.8e19 s), not a measurement.
MAX_SECONDS = 7 * 24 * 3600.0
RESULTS_FILE = "results.json"
REPORT_FILE = "report.html"


def _now() -> str:
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat()


def _not_measured(unit: str) -> Measurement:
    return Measurement.unavailable(unit, "not measured")


@dataclass
class Parity:
    """An artifact's outputs on this device against a reference computed on the host (PyTorch
    eager on the same program where the caller gives it, else the same artifact in its host
    runtime), judged by the export gate's rule."""

    passed: bool
    reference: str  # "pytorch eager (host)" or "<format> (host)"
    reason: str = ""
    max_abs_diff: float | None = None  # inference
    tolerance: float | None = None  # inference: atol; training: relative error
    rtol: float | None = None
    steps: int | None = None  # training
    max_rel_loss_diff: float | None = None
    max_rel_weight_diff: float | None = None


@dataclass
class InstructionCount:
    """Guest instructions per inference call or training step under emulation: the median over
    `repeats` independent measurements, each the difference between two runs that differ only in
    their number of calls (so loading and the first call cancel out)."""

    count: int
    per: str  # "inference" or "training step"
    how: str
    repeats: list[int] = field(default_factory=list)
    spread: float = 0.0  # (max - min) / median of the repeats


@dataclass
class ArtifactResult:
    """One artifact's numbers on one device; a failed artifact keeps its identity and the reason."""

    name: str
    format: str
    kind: Literal["inference", "training"]
    sha256: str
    bytes: int
    threads: int = 1
    runtime: str = ""  # what ran it: "onnxruntime (python)", "benchmark_model", ...
    latency: LatencyStats | None = None  # per inference, or per training step
    load_s: float | None = None
    first_s: float | None = None
    warmup: LatencyStats | None = None
    batch_size: int | None = None
    per_sample_s: float | None = None  # training: step time / batch size
    peak_rss: Measurement = field(default_factory=lambda: _not_measured("bytes"))
    file_size: Measurement = field(default_factory=lambda: _not_measured("bytes"))
    energy: Measurement = field(default_factory=lambda: _not_measured("J"))  # per inference / per step
    drift: Drift | None = None
    samples_s: list[float] = field(default_factory=list)
    error: str = ""  # this artifact failed: the one-line reason (its numbers are absent)
    provenance: str = ""  # where the numbers come from when not a real device, e.g. "emulated:qemu-aarch64"
    parity: Parity | None = None  # off-host devices: outputs checked against the host
    instructions: InstructionCount | None = None  # emulated devices: the cost that does not depend on the host

    @property
    def per(self) -> str:
        return "training step" if self.kind == "training" else "inference"

    @staticmethod
    def file_size_of(nbytes: int) -> Measurement:
        """An artifact's size on disk as the report's measurement."""
        return Measurement(float(nbytes), "bytes", FILE_SIZE)

    @classmethod
    def from_profile(cls, name: str, fmt: str, kind: str, sha256: str, nbytes: int, profile: Profile,
                     peak_rss: Measurement, threads: int = 1, runtime: str = "") -> "ArtifactResult":
        """A host run: metrics.profile_inference / profile_training + host.peak_rss_of_artifact."""
        t = profile.timing
        return cls(name=name, format=fmt, kind=kind, sha256=sha256, bytes=nbytes, threads=threads,  # type: ignore[arg-type]
                   runtime=runtime or f"{fmt} (python bindings)", latency=t.runs, load_s=t.load_s, first_s=t.first_s,
                   warmup=t.warmup, batch_size=profile.batch_size, per_sample_s=profile.per_sample_s,
                   peak_rss=peak_rss, file_size=cls.file_size_of(nbytes), energy=profile.energy, drift=profile.drift,
                   samples_s=thin_samples(t.samples_s))

    @classmethod
    def from_android(cls, name: str, fmt: str, sha256: str, nbytes: int, run: Any, threads: int = 1) -> "ArtifactResult":
        """An adb run: devices.adb.AdbDevice.benchmark(...) -> AndroidRun."""
        t = run.timings
        return cls(name=name, format=fmt, kind="inference", sha256=sha256, bytes=nbytes, threads=threads,
                   runtime=run.tool, latency=run.latency, load_s=t.init_s, first_s=t.first_s,
                   warmup=(LatencyStats(n=0, mean_s=t.warmup_mean_s, source=run.latency.source,
                                        note=f"warm-up average printed by {run.tool}")
                           if t.warmup_mean_s is not None else None),
                   peak_rss=run.peak_rss, file_size=cls.file_size_of(nbytes), energy=run.energy, samples_s=thin_samples(t.samples_s))

    @classmethod
    def failed(cls, name: str, fmt: str, kind: str, sha256: str, nbytes: int, error: str) -> "ArtifactResult":
        return cls(name=name, format=fmt, kind=kind, sha256=sha256, bytes=nbytes, error=error,  # type: ignore[arg-type]
                   file_size=cls.file_size_of(nbytes))


def thin_samples(samples: list[float]) -> list[float]:
    """At most MAX_STORED_SAMPLES, evenly spaced and in run order (drift stays visible in plots)."""
    if len(samples) <= MAX_STORED_SAMPLES:
        return list(samples)
    step = len(samples) / MAX_STORED_SAMPLES
    return [samples[int(i * step)] for i in range(MAX_STORED_SAMPLES)]


@dataclass
class ProfileResults:
    """Everything one run wrote: the device, each artifact's result and the tools that ran them."""

    device: DeviceInfo
    artifacts: list[ArtifactResult] = field(default_factory=list)
    tool_versions: dict[str, str] = field(default_factory=dict)
    target: str = ""
    bundle: str = ""
    created: str = field(default_factory=_now)
    partial: bool = False  # the run stopped early (e.g. the device disconnected): not every artifact ran
    partial_reason: str = ""
    format_version: int = FORMAT_VERSION

    def mark_partial(self, reason: str) -> None:
        self.partial, self.partial_reason = True, reason

    def to_json(self) -> dict[str, Any]:
        """The header keys first, so a person opening the file sees what and where before numbers."""
        d = dataclasses.asdict(self)
        head = {k: d.pop(k) for k in ("format_version", "created", "partial", "partial_reason", "target", "bundle",
                                      "device", "tool_versions")}
        return {**head, **d}

    def write(self, path: str | Path) -> Path:
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_suffix(p.suffix + ".tmp")  # a crash mid-write never leaves half a results.json
        tmp.write_text(json.dumps(self.to_json(), indent=2) + "\n")
        tmp.replace(p)
        return p


def load_results(path: str | Path) -> ProfileResults:
    """Read a results.json strictly (unknown keys or unlabelled numbers are refused)."""
    from dcl_core.config import from_dict

    p = Path(path)
    if not p.is_file():
        raise DclError(f"{p} does not exist; pass a {RESULTS_FILE} written by `dcl profile`")
    try:
        raw = json.loads(p.read_text())
        if not isinstance(raw, dict):
            raise ValueError(f"it holds a JSON {type(raw).__name__}, not an object")
        if raw.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"format_version {raw.get('format_version')!r}, this dcl reads {FORMAT_VERSION}")
        results = from_dict(ProfileResults, raw, where=p.name)
        _check_quantities(results, p.name)
        return results
    except Exception as e:  # noqa: BLE001 - any parse problem is the same user error
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise DclError(f"{p} is not a readable dcl {RESULTS_FILE} ({msg}); re-run `dcl profile`") from None


def _check_quantities(obj: Any, where: str, seconds: bool = False) -> None:
    """Every number in a results.json is a duration, a count, a size or a ratio: >= 0 (and finite,
    the decoder's rule), and a duration (a field named *_s) at most MAX_SECONDS. A Measurement
    checks its own value (an energy net of idle power may be negative)."""
    from dcl_core.config import check_number

    if isinstance(obj, Measurement):
        return
    if dataclasses.is_dataclass(obj):
        for f in dataclasses.fields(obj):
            _check_quantities(getattr(obj, f.name), f"{where}.{f.name}", f.name.endswith("_s"))
    elif isinstance(obj, list):
        for i, item in enumerate(obj):
            _check_quantities(item, f"{where}[{i}]", seconds)
    elif isinstance(obj, (int, float)) and not isinstance(obj, bool):
        check_number(obj, where, ge=0, le=MAX_SECONDS if seconds else None)
