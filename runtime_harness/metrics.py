"""What the harness measures and how numbers become statistics.

Every number that leaves this module is either a `LatencyStats` (timings, with the clock that took
them) or a `Measurement` (a value, its unit and its *source*). A source is `measured:<how>`,
`estimated:<how>` or `unavailable` (then the value is None and `reason` says why): the point is
that an energy figure estimated from a power model can never be mistaken for a measured one.

Timing follows MLPerf's rule of "at least N queries and at least T seconds": one timed first run
(cold caches, lazy init), a few untimed-for-stats warm-up runs, then measured runs until both the
run count and the minimum duration are reached.
"""
from __future__ import annotations

import math
import re
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import numpy as np

# measured:<how> / estimated:<how> / unavailable -- the only label shapes a number may carry.
_SOURCE_RE = re.compile(r"^(?:(?:measured|estimated):[a-z0-9][a-z0-9_.-]*|unavailable)$")

# Sources used across the harness (documented here so reports and tests agree on spelling).
WALL_CLOCK = "measured:wall-clock"      # time.perf_counter around each call (host)
TOOL_REPORTED = "measured:tool"         # the on-device tool's own timer (benchmark_model, ...)
RU_MAXRSS = "measured:ru_maxrss"        # getrusage peak RSS of a fresh process (host)
VMHWM = "measured:vmhwm"                # /proc/PID/status VmHWM of the tool process (Android, native runner)
FILE_SIZE = "measured:file-size"
POWER_RAILS = "measured:power-rails"    # on-device power monitors (ODPM) via the PowerStats HAL
BATTERY = "measured:battery"            # battery current x voltage sampled from sysfs
ESTIMATED = "estimated:model"           # CPU time x documented power figure of the target
UNAVAILABLE = "unavailable"

# A last-window median this much slower than the first one is reported as likely throttling.
THROTTLE_RATIO = 1.10


@dataclass
class Measurement:
    value: float | None
    unit: str
    source: str
    reason: str = ""  # why the value is unavailable
    note: str = ""  # how it was obtained: formula, tool, caveats
    flags: list[str] = field(default_factory=list)  # e.g. "charging"

    def __post_init__(self) -> None:
        # Enforced at construction so no code path can produce an unlabelled number.
        if not _SOURCE_RE.match(self.source):
            raise ValueError(f"measurement source {self.source!r} is not measured:<how>, estimated:<how> or unavailable")
        if self.source == UNAVAILABLE:
            if self.value is not None:
                raise ValueError("an unavailable measurement cannot carry a value")
            if not self.reason:
                raise ValueError("an unavailable measurement needs a reason")
        elif self.value is None:
            raise ValueError(f"a {self.source} measurement needs a value (use unavailable with a reason)")
        elif not math.isfinite(self.value):
            raise ValueError(f"a {self.source} measurement must be finite, got {self.value}")

    @staticmethod
    def unavailable(unit: str, reason: str) -> "Measurement":
        return Measurement(None, unit, UNAVAILABLE, reason=reason)

    @property
    def available(self) -> bool:
        return self.value is not None

    def label(self, scale: float = 1.0, unit: str | None = None, digits: int = 3) -> str:
        """'1.23 mJ [measured:power-rails, charging]' or 'unavailable (emulator battery is simulated)'."""
        if self.value is None:
            return f"unavailable ({self.reason})"
        tags = ", ".join([self.source, *self.flags])
        return f"{self.value * scale:.{digits}g} {unit or self.unit} [{tags}]"


@dataclass
class LatencyStats:
    """Summary of per-run times in seconds. Percentiles are None where the tool does not report them
    (LiteRT's benchmark_model prints only count/min/max/avg/std): absent, never invented."""

    n: int
    mean_s: float
    std_s: float | None = None
    min_s: float | None = None
    max_s: float | None = None
    p50_s: float | None = None
    p90_s: float | None = None
    p99_s: float | None = None
    source: str = WALL_CLOCK
    note: str = ""


def percentile(samples: Sequence[float], p: float) -> float:
    """Nearest-rank percentile: always a latency that was actually observed (MLPerf LoadGen style),
    so p99 of 100 runs is the 99th fastest run, not an interpolation between two runs. That is
    numpy's "inverted_cdf" method (the k-th smallest with k = ceil(p/100 * n), at least 1), not its
    default linear interpolation."""
    if len(samples) == 0:
        raise ValueError("percentile of no samples")
    return float(np.percentile(samples, p, method="inverted_cdf"))


def latency_stats(samples_s: Sequence[float], source: str = WALL_CLOCK, note: str = "") -> LatencyStats:
    """p50/p90/p99 (nearest rank), mean, population std (as benchmark_model computes it, so host and
    device numbers compare), min and max of per-run seconds."""
    if len(samples_s) == 0:
        raise ValueError("latency statistics need at least one sample")
    s = sorted(float(x) for x in samples_s)
    return LatencyStats(n=len(s), mean_s=statistics.fmean(s), std_s=statistics.pstdev(s), min_s=s[0], max_s=s[-1],
                        p50_s=percentile(s, 50), p90_s=percentile(s, 90), p99_s=percentile(s, 99),
                        source=source, note=note)


@dataclass
class TimingResult:
    first_s: float  # the first call after load: lazy init, cold caches
    warmup: LatencyStats | None
    runs: LatencyStats
    samples_s: list[float]  # every measured run, in order
    cpu_s: float  # process CPU time (all threads) over the measured runs
    wall_s: float  # wall time over the measured runs
    load_s: float | None = None

    @property
    def cpu_per_run_s(self) -> float:
        return self.cpu_s / max(self.runs.n, 1)


def time_runs(fn: Callable[[], Any], runs: int = 50, min_duration_s: float = 1.0, warmup: int = 3,
              max_duration_s: float | None = None, load_s: float | None = None,
              clock: Callable[[], float] = time.perf_counter,
              cpu_clock: Callable[[], float] = time.process_time) -> TimingResult:
    """First run, `warmup` runs, then measured runs until >= `runs` runs AND >= `min_duration_s`
    seconds (MLPerf-style), stopping early only at `max_duration_s` (after at least one run)."""
    if runs < 1:
        raise ValueError("runs must be >= 1")
    t = clock()
    fn()
    first_s = clock() - t

    warm: list[float] = []
    for _ in range(max(warmup, 0)):
        t = clock()
        fn()
        warm.append(clock() - t)

    samples: list[float] = []
    c0, w0 = cpu_clock(), clock()
    while True:
        t = clock()
        fn()
        samples.append(clock() - t)
        elapsed = clock() - w0
        if len(samples) >= runs and elapsed >= min_duration_s:
            break
        if max_duration_s is not None and elapsed >= max_duration_s:
            break
    wall_s, cpu_s = clock() - w0, cpu_clock() - c0
    return TimingResult(first_s=first_s, warmup=latency_stats(warm) if warm else None, runs=latency_stats(samples),
                        samples_s=samples, cpu_s=cpu_s, wall_s=wall_s, load_s=load_s)


# ---------------------------------------------------------------------------------------------
# Sustained mode: does the device slow down when it keeps running (thermal throttling)?

@dataclass
class Drift:
    duration_s: float
    window_s: float
    n: int
    windows: list[list[float]]  # [window start s, median latency s, runs in window]
    first_median_s: float | None
    last_median_s: float | None
    ratio: float | None  # last / first window median; > 1 means it got slower
    throttling_suspected: bool
    threshold: float = THROTTLE_RATIO


def drift_from_samples(starts_s: Sequence[float], durations_s: Sequence[float], window_s: float,
                       threshold: float = THROTTLE_RATIO) -> Drift:
    """Median latency per time window and the last/first window ratio. Medians, not means, so one
    scheduling hiccup does not read as throttling."""
    if len(starts_s) != len(durations_s):
        raise ValueError("starts and durations differ in length")
    if window_s <= 0:
        raise ValueError("window_s must be > 0")
    buckets: dict[int, list[float]] = {}
    for t, d in zip(starts_s, durations_s):
        buckets.setdefault(int(t // window_s), []).append(float(d))
    windows = [[k * window_s, statistics.median(v), float(len(v))] for k, v in sorted(buckets.items())]
    duration = (max(starts_s) + durations_s[int(np.argmax(starts_s))]) if starts_s else 0.0
    if len(windows) < 2:
        return Drift(duration, window_s, len(durations_s), windows, None, None, None, False, threshold)
    first, last = windows[0][1], windows[-1][1]
    ratio = last / first if first > 0 else None
    return Drift(duration, window_s, len(durations_s), windows, first, last, ratio,
                 bool(ratio is not None and ratio > threshold), threshold)


def drift_from_durations(durations_s: Sequence[float], window_s: float,
                         threshold: float = THROTTLE_RATIO) -> Drift:
    """Drift of back-to-back runs known only by their durations (an on-device tool's per-run times,
    e.g. onnxruntime_perf_test's result file): each run starts when the previous one ended."""
    starts = np.concatenate([[0.0], np.cumsum(durations_s)[:-1]]).tolist() if len(durations_s) else []
    return drift_from_samples(starts, durations_s, window_s, threshold)


def run_sustained(fn: Callable[[], Any], duration_s: float, window_s: float | None = None,
                  clock: Callable[[], float] = time.perf_counter) -> Drift:
    """Call `fn` back to back for `duration_s` seconds and report drift across windows
    (default: 10 windows, at least 1 s each)."""
    window = window_s or max(duration_s / 10.0, 1.0)
    starts, durs = [], []
    t0 = clock()
    while True:
        t = clock()
        fn()
        e = clock()
        starts.append(t - t0)
        durs.append(e - t)
        if e - t0 >= duration_s:
            break
    return drift_from_samples(starts, durs, window)


# ---------------------------------------------------------------------------------------------
# Energy. Per unit of work (one inference or one training step), in joules, always labelled.

class _HasPower(Protocol):
    key: str
    cpu_power_w: float


def estimate_energy(cpu_s_per_op: float, target: _HasPower, per: str = "inference") -> Measurement:
    """`estimated:model`: CPU seconds per op x the target's documented `cpu_power_w`. Used where no
    power can be measured (this host has no RAPL); the note carries the formula and its inputs."""
    if target.cpu_power_w <= 0:
        return Measurement.unavailable("J", f"target {target.key!r} documents no cpu_power_w to estimate energy from")
    value = cpu_s_per_op * target.cpu_power_w
    return Measurement(value, "J", ESTIMATED, note=(
        f"energy per {per} = CPU time per {per} ({cpu_s_per_op:.4g} s, all threads) x cpu_power_w "
        f"{target.cpu_power_w:g} W of target '{target.key}' (exporters/targets.toml); a model, not a measurement"))


def emulator_energy(unit: str = "J") -> Measurement:
    return Measurement.unavailable(unit, "emulator battery is simulated")


@dataclass
class BatterySample:
    t_s: float  # device uptime
    current_ua: float  # /sys/class/power_supply/battery/current_now (microamps)
    voltage_uv: float  # /sys/class/power_supply/battery/voltage_now (microvolts)


def battery_energy(samples: Sequence[BatterySample], latency_s: float, charging: bool, per: str = "inference",
                   idle_w: float | None = None) -> Measurement:
    """`measured:battery`: average |I| x V over the run (trapezoid over the sample times) x mean
    latency. The sign convention of current_now differs between vendors, hence |I|. On external
    power the battery current mixes charger input and load: the number is kept but flagged."""
    good = sorted((s for s in samples if math.isfinite(s.current_ua) and math.isfinite(s.voltage_uv)),
                  key=lambda s: s.t_s)
    if len(good) < 2:
        return Measurement.unavailable("J", f"only {len(good)} battery sample(s) during the run; need at least 2 "
                                            f"(run longer: `dcl profile --duration`)")
    p = [abs(s.current_ua) * 1e-6 * s.voltage_uv * 1e-6 for s in good]
    t = [s.t_s for s in good]
    span = t[-1] - t[0]
    avg_w = (float(np.trapezoid(p, t)) / span) if span > 0 else statistics.fmean(p)
    net_w = avg_w - idle_w if idle_w is not None else avg_w
    note = (f"avg battery power {avg_w:.3f} W (|current_now| x voltage_now, {len(good)} samples over {span:.2f} s)"
            + (f" minus idle {idle_w:.3f} W" if idle_w is not None else ", whole device, no idle baseline subtracted")
            + f" x mean latency {latency_s:.4g} s per {per}")
    flags = []
    if charging:
        flags.append("charging")
        note += "; device was on external power: battery current mixes charger input and load, unreliable"
    return Measurement(net_w * latency_s, "J", BATTERY, note=note, flags=flags)


def rails_energy(before_mws: dict[str, float], after_mws: dict[str, float], window_s: float, latency_s: float,
                 per: str = "inference", idle_w: float | None = None) -> Measurement:
    """`measured:power-rails`: the on-device power monitor rails (the PowerStats HAL energy meter,
    which Perfetto's android.power data source also reads), cumulative mWs read before and after
    the run. Average rail power over the window x mean latency."""
    common = sorted(set(before_mws) & set(after_mws))
    if not common:
        return Measurement.unavailable("J", "no power rails readable on this device")
    if window_s <= 0:
        return Measurement.unavailable("J", "power rail window has no duration")
    deltas = {r: after_mws[r] - before_mws[r] for r in common}
    if any(d < 0 for d in deltas.values()):
        return Measurement.unavailable("J", "a power rail counter went backwards during the run (reset)")
    total_mj = sum(deltas.values())
    avg_w = total_mj / 1000.0 / window_s
    net_w = avg_w - idle_w if idle_w is not None else avg_w
    top = sorted(deltas.items(), key=lambda kv: -kv[1])[:3]
    share = ", ".join(f"{r} {100 * d / total_mj:.0f}%" for r, d in top) if total_mj > 0 else "all zero"
    note = (f"avg power {avg_w:.3f} W summed over {len(common)} rails during {window_s:.2f} s"
            + (f" minus idle {idle_w:.3f} W" if idle_w is not None else " (no idle baseline subtracted)")
            + f" x mean latency {latency_s:.4g} s per {per}; top rails: {share}")
    return Measurement(net_w * latency_s, "J", POWER_RAILS, note=note)


# ---------------------------------------------------------------------------------------------
# One artifact on the host: the helpers the `dcl profile` loop calls.

@dataclass
class Profile:
    kind: Literal["inference", "training"]
    timing: TimingResult  # per inference, or per training step
    energy: Measurement  # per inference, or per training step
    batch_size: int | None = None
    per_sample_s: float | None = None  # training: mean step time / batch size
    drift: Drift | None = None


def batch_size_of(batch: dict[str, np.ndarray]) -> int:
    first = next(iter(batch.values()))
    return int(first.shape[0]) if getattr(first, "ndim", 0) else 1


def _energy(timing: TimingResult, target: _HasPower | None, per: str) -> Measurement:
    if target is None:
        return Measurement.unavailable("J", "no target power figure given for an estimate and nothing measurable")
    return estimate_energy(timing.cpu_per_run_s, target, per)


def profile_inference(open_runner: Callable[[], Any], inputs: dict[str, np.ndarray], runs: int = 50,
                      min_duration_s: float = 1.0, warmup: int = 3, target: _HasPower | None = None,
                      sustained_s: float = 0.0, max_duration_s: float | None = None) -> Profile:
    """Load (timed) with `open_runner()`, then time `runner.infer(inputs)`. Energy is
    `estimated:model` from CPU time when a target is given (the host has nothing to measure)."""
    t = time.perf_counter()
    runner = open_runner()
    load_s = time.perf_counter() - t
    timing = time_runs(lambda: runner.infer(inputs), runs, min_duration_s, warmup, max_duration_s, load_s)
    drift = run_sustained(lambda: runner.infer(inputs), sustained_s) if sustained_s > 0 else None
    return Profile("inference", timing, _energy(timing, target, "inference"), drift=drift)


def profile_training(open_runner: Callable[[], Any], batch: dict[str, np.ndarray], runs: int = 20,
                     min_duration_s: float = 1.0, warmup: int = 2, target: _HasPower | None = None,
                     batch_size: int | None = None, sustained_s: float = 0.0,
                     max_duration_s: float | None = None) -> Profile:
    """Time `runner.train_step(batch)`: time per step and per sample (step / batch size)."""
    t = time.perf_counter()
    runner = open_runner()
    load_s = time.perf_counter() - t
    timing = time_runs(lambda: runner.train_step(batch), runs, min_duration_s, warmup, max_duration_s, load_s)
    bs = batch_size or batch_size_of(batch)
    drift = run_sustained(lambda: runner.train_step(batch), sustained_s) if sustained_s > 0 else None
    return Profile("training", timing, _energy(timing, target, "training step"), batch_size=bs,
                   per_sample_s=timing.runs.mean_s / bs, drift=drift)
