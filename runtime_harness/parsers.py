"""Parsers for what real tools print: adb, getprop, dumpsys, /proc, and the three official runtime
benchmark tools. Each parser takes the text exactly as the tool printed it and returns records;
the formats (and where each comes from in the tools' sources) are listed in
tests/data/android/README.md next to samples of each format.

Parsers never raise on unexpected lines (tools add log noise between versions); a parser that
finds none of what it needs returns empty fields and the caller decides whether that is an error.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable

from runtime_harness.metrics import TOOL_REPORTED, BatterySample, LatencyStats, latency_stats

_NUM = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"  # C++ ostream prints 2.65e+06 for big values


def _f(pattern: str, text: str, flags: int = 0) -> float | None:
    m = re.search(pattern, text, flags)
    return float(m.group(1)) if m else None


# ---------------------------------------------------------------------------------------------
# adb / Android system

@dataclass
class AdbDeviceEntry:
    serial: str
    state: str  # device | unauthorized | offline | recovery | sideload | bootloader | no permissions ...
    attrs: dict[str, str] = field(default_factory=dict)  # usb / product / model / device / transport_id


def parse_adb_devices(text: str) -> list[AdbDeviceEntry]:
    """`adb devices -l`: 'SERIAL<spaces>STATE [devpath] [product:x model:y device:z] transport_id:n'.
    Daemon start-up chatter ('* daemon ...') and the header are skipped."""
    out = []
    for line in text.splitlines():
        line = line.rstrip()
        if not line.strip() or line.startswith("*") or line.startswith("List of devices"):
            continue
        if line.startswith(("adb:", "error:")):
            continue
        # 'no permissions (missing udev rules? ...); see [url]' is a multi-word state; others are one word
        m = re.match(r"^(\S+)\s+(no permissions.*?)((?:\s+(?:usb|product|model|device|transport_id):\S+)*)$", line) \
            or re.match(r"^(\S+)\s+(\S+)(.*)$", line)
        if not m:
            continue
        serial, state, rest = m.groups()
        state = "no permissions" if state.startswith("no permissions") else state
        attrs: dict[str, str] = {}
        for tok in rest.split():
            if ":" in tok:
                k, v = tok.split(":", 1)
                attrs[k] = v
        out.append(AdbDeviceEntry(serial, state, attrs))
    return out


def parse_getprop(text: str) -> dict[str, str]:
    """`getprop` with no arguments: '[ro.product.model]: [Pixel 8]' per line."""
    return {m.group(1): m.group(2) for m in re.finditer(r"^\[([^\]]+)\]: \[(.*)\]\s*$", text, re.M)}


def parse_adb_version(text: str) -> str:
    """`adb version` -> 'Android Debug Bridge version 1.0.41 (34.0.5-10900879)'."""
    proto = re.search(r"Android Debug Bridge version (\S+)", text)
    ver = re.search(r"^Version (\S+)", text, re.M)
    if not proto:
        return "unknown"
    return f"{proto.group(1)} ({ver.group(1)})" if ver else proto.group(1)


@dataclass
class BatteryState:
    ac_powered: bool = False
    usb_powered: bool = False
    wireless_powered: bool = False
    dock_powered: bool = False
    status: int | None = None  # BatteryManager.BATTERY_STATUS_*: 2 charging, 3 discharging, 5 full
    level: int | None = None
    voltage_mv: int | None = None
    temperature_c: float | None = None
    technology: str = ""
    present: bool | None = None
    raw: dict[str, str] = field(default_factory=dict)

    @property
    def on_external_power(self) -> bool:
        return self.ac_powered or self.usb_powered or self.wireless_powered or self.dock_powered

    @property
    def charging(self) -> bool:
        """On a charger at all (status 2 charging or 5 full on power): either way the battery current
        is not the device's draw."""
        return self.on_external_power or self.status == 2


def parse_dumpsys_battery(text: str) -> BatteryState:
    """`dumpsys battery` ('Current Battery Service state:' then '  key: value' lines)."""
    raw = {m.group(1).strip(): m.group(2).strip() for m in re.finditer(r"^\s+([A-Za-z][A-Za-z ]*?): (.*)$", text, re.M)}

    def b(k: str) -> bool:
        return raw.get(k, "false").lower() == "true"

    def i(k: str) -> int | None:
        try:
            return int(raw[k])
        except (KeyError, ValueError):
            return None

    temp = i("temperature")
    return BatteryState(ac_powered=b("AC powered"), usb_powered=b("USB powered"), wireless_powered=b("Wireless powered"),
                        dock_powered=b("Dock powered"), status=i("status"), level=i("level"), voltage_mv=i("voltage"),
                        temperature_c=temp / 10.0 if temp is not None else None, technology=raw.get("technology", ""),
                        present=(b("present") if "present" in raw else None), raw=raw)


def parse_proc_status(text: str) -> dict[str, str]:
    """/proc/PID/status: 'Key:\\tvalue' lines."""
    return {m.group(1): m.group(2).strip() for m in re.finditer(r"^([A-Za-z_()]+):\s*(.*)$", text, re.M)}


def vm_hwm_bytes(status_text: str) -> int | None:
    """Peak resident set (VmHWM, 'high water mark') in bytes, or None if absent."""
    m = re.search(r"^VmHWM:\s+(\d+)\s*kB", status_text, re.M)
    return int(m.group(1)) * 1024 if m else None


def proc_stat_cpu_s(stat_text: str, clk_tck: int = 100) -> float | None:
    """utime + stime of /proc/PID/stat in seconds (USER_HZ is 100 on Android and Linux). The comm
    field may contain spaces and parentheses, so split after its last ')'."""
    if ")" not in stat_text:
        return None
    fields = stat_text.rsplit(")", 1)[1].split()
    try:
        return (int(fields[11]) + int(fields[12])) / clk_tck  # fields 14, 15 of the full line
    except (IndexError, ValueError):
        return None


def parse_powerstats(text: str) -> dict[str, float]:
    """`dumpsys android.hardware.power.stats.IPowerStats/default` (PowerStats HAL 2.0): the
    'energy meter' section, '[RAIL]:Subsystem   12345.67 mWs' per channel (plus '(delta)' when
    dumped with the `delta` argument). Returns cumulative mWs per channel; {} if there is none."""
    m = re.search(r"=+ PowerStats HAL 2\.0 energy meter =+\n(.*?)(?:=+ End of PowerStats HAL 2\.0 energy meter|\Z)",
                  text, re.S)
    if not m:
        return {}
    out = {}
    for line in m.group(1).splitlines():
        r = re.match(rf"^\s*(\S.*?)\s+({_NUM}) mWs", line)
        if r:
            out[r.group(1)] = float(r.group(2))
    return out


# ---------------------------------------------------------------------------------------------
# The runtimes' official benchmark tools

@dataclass
class ToolTimings:
    """What a runtime's benchmark tool reported, in seconds and bytes. Fields the tool does not
    print stay None."""

    tool: str
    n: int | None = None
    mean_s: float | None = None
    std_s: float | None = None
    min_s: float | None = None
    max_s: float | None = None
    p50_s: float | None = None
    p90_s: float | None = None
    p99_s: float | None = None
    init_s: float | None = None  # model load / session creation
    first_s: float | None = None
    warmup_mean_s: float | None = None
    samples_s: list[float] = field(default_factory=list)  # per-run times when the tool gives them
    memory_bytes: int | None = None  # the tool's own memory figure (see memory_note)
    memory_note: str = ""
    outputs: list[str] = field(default_factory=list)  # executor_runner's printed output shapes

    @property
    def ok(self) -> bool:
        return self.mean_s is not None and (self.n or 0) > 0

    def latency(self) -> LatencyStats:
        """Our statistics when the tool gave every run, else what the tool itself summarised."""
        if len(self.samples_s) >= 1:
            return latency_stats(self.samples_s, TOOL_REPORTED, note=f"per-run times from {self.tool}")
        if self.mean_s is None:
            raise ValueError(f"{self.tool} output has no inference timing")
        missing = [k for k in ("p50", "p90", "p99") if getattr(self, f"{k}_s") is None]
        note = f"summary printed by {self.tool}" + (f"; it does not report {'/'.join(missing)}" if missing else "")
        return LatencyStats(n=self.n or 0, mean_s=self.mean_s, std_s=self.std_s, min_s=self.min_s, max_s=self.max_s,
                            p50_s=self.p50_s, p90_s=self.p90_s, p99_s=self.p99_s, source=TOOL_REPORTED, note=note)


def _stat_lines(text: str) -> list[dict[str, float]]:
    """tflite::benchmark Stat lines: 'count=50 first=.. curr=.. min=.. max=.. avg=.. std=..' or
    'count=1 curr=2917' (all same)."""
    out = []
    for line in text.splitlines():
        if re.search(r"\bcount=\d+", line):
            out.append({k: float(v) for k, v in re.findall(rf"\b(count|first|curr|min|max|avg|std)=({_NUM})", line)})
    return out


def parse_benchmark_model(text: str) -> ToolTimings:
    """LiteRT `benchmark_model` (tensorflow/lite/tools/benchmark/benchmark_model.cc): times in us."""
    t = ToolTimings("benchmark_model")
    m = re.search(rf"Inference timings in us: Init: ({_NUM}), First inference: ({_NUM}), "
                  rf"Warmup \(avg\): ({_NUM}), Inference \(avg\): ({_NUM})", text)
    stats = _stat_lines(text)
    if m:
        t.init_s, t.first_s, t.warmup_mean_s, t.mean_s = (float(x) * 1e-6 for x in m.groups())
    if stats:
        reg = stats[-1]  # warm-up Run() prints its Stat first, the regular Run() last
        t.n = int(reg["count"])
        if "min" in reg:
            t.min_s, t.max_s, t.std_s = reg["min"] * 1e-6, reg["max"] * 1e-6, reg.get("std", 0.0) * 1e-6
        else:  # all runs took the same time
            t.min_s = t.max_s = reg["curr"] * 1e-6
            t.std_s = 0.0
        if t.mean_s is None:
            t.mean_s = reg.get("avg", reg.get("curr", 0.0)) * 1e-6
    peak = _f(rf"Overall peak memory footprint \(MB\) via periodic monitoring: ({_NUM})", text)
    overall = _f(rf"Memory footprint delta from the start of the tool \(MB\): init={_NUM} overall=({_NUM})", text)
    if peak is not None:
        t.memory_bytes, t.memory_note = int(peak * 1024 * 1024), "benchmark_model peak footprint (periodic monitoring)"
    elif overall is not None:
        t.memory_bytes = int(overall * 1024 * 1024)
        t.memory_note = "benchmark_model footprint delta from the tool's start (approximate, by its own note)"
    return t


def parse_ort_perf_test(text: str, result_file: str | None = None) -> ToolTimings:
    """ORT `onnxruntime_perf_test` (onnxruntime/test/perftest/performance_runner.cc). With the
    result file (one 'model,time_s,peak_bytes,cpu%,run' line per run) every run's time is known."""
    t = ToolTimings("onnxruntime_perf_test")
    t.init_s = _f(rf"Session creation time cost: ({_NUM}) s", text)
    first_ms = _f(rf"First inference time cost: ({_NUM}) ms", text)
    t.first_s = first_ms * 1e-3 if first_ms is not None else None
    avg_ms = _f(rf"Average inference time cost: ({_NUM}) ms", text)
    t.mean_s = avg_ms * 1e-3 if avg_ms is not None else None
    n = _f(r"Total inference requests: (\d+)", text)
    t.n = int(n) if n is not None else None
    for key, attr in (("Min", "min_s"), ("Max", "max_s"), ("P50", "p50_s"), ("P90", "p90_s"), ("P99", "p99_s")):
        setattr(t, attr, _f(rf"^{key} Latency: ({_NUM}) s", text, re.M))
    peak = _f(r"Peak working set size: ?(\d+) bytes", text) or _f(r"Peak working set size:(\d+)", text)
    if peak is not None:
        t.memory_bytes, t.memory_note = int(peak), "onnxruntime_perf_test peak working set (getrusage ru_maxrss)"
    if result_file:
        for line in result_file.splitlines():
            parts = line.split(",")
            if len(parts) == 5:
                try:
                    t.samples_s.append(float(parts[1]))
                except ValueError:
                    pass
        if t.samples_s and t.n is None:
            t.n = len(t.samples_s)
    return t


def parse_executor_runner(text: str) -> ToolTimings:
    """ExecuTorch `executor_runner` (examples/portable/executor_runner/executor_runner.cpp): ET_LOG
    lines (stderr on the posix PAL, logcat tag ExecuTorch on the android PAL) and the outputs on
    stdout. Newer versions log every iteration; then the first is kept apart as the cold run."""
    t = ToolTimings("executor_runner")
    load_ms = _f(rf"Model loaded in ({_NUM}) ms\.", text)
    t.init_s = load_ms * 1e-3 if load_ms is not None else None
    iters = [float(x) * 1e-3 for x in re.findall(rf"Iteration \d+ of \d+: ({_NUM}) ms", text)]
    m = re.search(rf"Model executed successfully (\d+) time\(s\) in ({_NUM}) ms\.", text)
    if iters:
        t.first_s = iters[0]
        t.samples_s = iters[1:] if len(iters) > 1 else iters
        t.n = len(t.samples_s)
        t.mean_s = sum(t.samples_s) / len(t.samples_s)
    elif m:
        t.n = int(m.group(1))
        t.mean_s = float(m.group(2)) * 1e-3 / max(t.n, 1)  # includes the first (cold) execution
    t.outputs = [f"output {i}: sizes=[{s}]" for i, s in re.findall(r"Output\w* (\d+): tensor\(sizes=\[([^\]]*)\]", text)]
    return t


@dataclass
class NativeRunnerOutput:
    """dcl's native ExecuTorch runner (exporters/executorch/native): executor_runner's timing lines
    plus its own DCL- records."""

    timings: ToolTimings
    warmup_s: list[float] = field(default_factory=list)
    cpu_s: float | None = None  # process CPU time over the measured runs (all threads)
    wall_s: float | None = None  # wall time over the measured runs
    rss_base_kb: int | None = None  # before loading (after the peak mark was reset)
    rss_peak_kb: int | None = None  # the peak after loading and every run
    rss_how: str = ""  # hwm-reset (Linux /proc) or ru_maxrss
    losses: list[float] = field(default_factory=list)  # training: every step's loss, in order
    params: list[tuple[str, list[int]]] = field(default_factory=list)  # training: name, shape
    outputs: list[tuple[str, list[int]]] = field(default_factory=list)  # inference: dtype, shape


def _shape(text: str) -> list[int]:
    return [int(d) for d in text.split(",") if d]


def parse_dcl_et_runner(text: str) -> NativeRunnerOutput:
    out = NativeRunnerOutput(parse_executor_runner(text))
    out.timings.tool = "dcl_et_runner"
    out.warmup_s = [float(x) * 1e-3 for x in re.findall(rf"^DCL-WARMUP \d+ ({_NUM})$", text, re.M)]
    out.cpu_s, out.wall_s = _f(rf"^DCL-CPU ({_NUM})$", text, re.M), _f(rf"^DCL-WALL ({_NUM})$", text, re.M)
    m = re.search(r"^DCL-RSS (\d+) (\d+) ([\w-]+)$", text, re.M)
    if m:
        out.rss_base_kb, out.rss_peak_kb, out.rss_how = int(m.group(1)), int(m.group(2)), m.group(3)
    out.losses = [float(v) for v in re.findall(rf"^DCL-LOSS \d+ ({_NUM}|nan|-?inf)$", text, re.M)]
    out.params = [(n, _shape(d)) for n, d in re.findall(r"^DCL-PARAM \d+ (\S+) ([\d,]*)$", text, re.M)]
    out.outputs = [(t, _shape(d)) for t, d in re.findall(r"^DCL-OUTPUT \d+ (\w+) ([\d,]*)$", text, re.M)]
    return out


# ---------------------------------------------------------------------------------------------
# The harness's own on-device wrapper (runtime_harness/devices/adb.py writes it)

@dataclass
class WrapperOutput:
    tool_output: str = ""
    rc: int | None = None
    t0: float | None = None  # device uptime when the tool started
    t1: float | None = None  # ... and when it ended
    samples: list[BatterySample] = field(default_factory=list)
    status: str = ""  # last /proc/PID/status snapshot of the tool
    stat: str = ""  # last /proc/PID/stat snapshot
    battery_status: str = ""  # /sys/class/power_supply/battery/status at start
    rails_before: str = ""
    rails_after: str = ""
    logcat: str = ""  # executor_runner on the android PAL logs to logcat (tag ExecuTorch)


def _section(text: str, name: str) -> str:
    m = re.search(rf"^DCL-{name}-BEGIN\n(.*?)^DCL-{name}-END$", text, re.S | re.M)
    return m.group(1) if m else ""


# The parser of each official benchmark tool, by the name a format descriptor gives
# (exporters.formats.AndroidTool.parser): output text, optional result file -> timings.
TOOL_PARSERS: dict[str, Callable[[str, str | None], ToolTimings]] = {
    "benchmark_model": lambda out, _result: parse_benchmark_model(out),
    "onnxruntime_perf_test": parse_ort_perf_test,
    "executor_runner": lambda out, _result: parse_executor_runner(out),
}


def parse_wrapper_output(text: str) -> WrapperOutput:
    w = WrapperOutput()
    w.tool_output = _section(text, "TOOL")
    w.status, w.stat = _section(text, "STATUS"), _section(text, "STAT").strip()
    w.rails_before, w.rails_after = _section(text, "RAILS0"), _section(text, "RAILS1")
    w.battery_status = _section(text, "BATTERY").strip()
    w.logcat = _section(text, "LOGCAT")
    w.t0, w.t1 = _f(rf"^DCL-T0 ({_NUM})", text, re.M), _f(rf"^DCL-T1 ({_NUM})", text, re.M)
    rc = _f(r"^DCL-EXIT (\d+)", text, re.M)
    w.rc = int(rc) if rc is not None else None
    for line in _section(text, "SAMPLES").splitlines():
        parts = line.split()
        if len(parts) == 3:
            try:
                w.samples.append(BatterySample(float(parts[0]), float(parts[1]), float(parts[2])))
            except ValueError:
                pass  # 'NA' where the kernel exposes no current_now / voltage_now
    return w
