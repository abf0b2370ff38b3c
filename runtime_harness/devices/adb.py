"""An Android phone or emulator driven through the `adb` executable.

Everything goes through one process boundary, `adb ...`, so the tests can put a fake `adb` that
replays transcripts of device output in its place and exercise exactly the code a real device gets.
The executable is `adb` on PATH, or $DCL_ADB, or the `adb` argument.

One run: check the connection and authorization, fingerprint the device, push the tool, its
libraries, the artifact and a small shell wrapper to /data/local/tmp/dcl, run the wrapper (which
samples the battery and keeps the tool's last /proc/PID/status while it runs), parse, pull the
tool's result file, clean up. A disconnect mid-command is retried once, then a one-line error.
"""
from __future__ import annotations

import os
import re
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from dcl_core.bundle import sha256_file
from dcl_core.errors import DeviceError
from runtime_harness import metrics
from runtime_harness.devices.base import DeviceInfo
from runtime_harness.devices.tools import AndroidTool, RunPlan, find_tool, parse_tool_output, shared_libs, tool_command
from runtime_harness.metrics import LatencyStats, Measurement
from runtime_harness.parsers import (
    AdbDeviceEntry,
    BatteryState,
    ToolTimings,
    WrapperOutput,
    parse_adb_devices,
    parse_adb_version,
    parse_dumpsys_battery,
    parse_getprop,
    parse_powerstats,
    parse_wrapper_output,
    proc_stat_cpu_s,
    vm_hwm_bytes,
)

REMOTE_DIR = "/data/local/tmp/dcl"
POWERSTATS = "android.hardware.power.stats.IPowerStats/default"
# adb's own error lines (stderr) that mean the device went away under us
_DISCONNECT = re.compile(r"^(?:adb|error): (?:device offline|no devices/emulators found|device '[^']*' not found|"
                         r"device still connecting|closed|protocol fault|connection reset)", re.M)
_UNAUTHORIZED = re.compile(r"^(?:adb|error): device unauthorized", re.M)


def _first_line(text: str) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return lines[0] if lines else ""


@dataclass
class AndroidRun:
    """One artifact benchmarked on a device by its runtime's tool."""

    tool: str
    tool_sha256: str
    timings: ToolTimings
    latency: LatencyStats
    peak_rss: Measurement
    energy: Measurement
    battery: BatteryState | None
    output: str  # the tool's own output, for the record


class AdbDevice:
    def __init__(self, serial: str | None = None, adb: str | None = None, remote_dir: str = REMOTE_DIR,
                 retry_delay_s: float = 2.0, timeout_s: float = 900.0):
        self.adb = adb or os.environ.get("DCL_ADB", "adb")
        self.serial = serial
        self.remote_dir = remote_dir
        self.retry_delay_s = retry_delay_s
        self.timeout_s = timeout_s
        self._info: DeviceInfo | None = None

    # -- process boundary ----------------------------------------------------------------------
    def _exec(self, args: list[str], timeout: float | None = None) -> subprocess.CompletedProcess:
        cmd = [self.adb, *args]
        try:
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout or self.timeout_s)
        except FileNotFoundError:
            raise DeviceError(f"adb not found ({self.adb}); install Android platform-tools or set DCL_ADB "
                              f"to the adb executable") from None
        except subprocess.TimeoutExpired:
            raise DeviceError(f"`adb {' '.join(args)[:80]}` timed out after {timeout or self.timeout_s:g} s on "
                              f"{self.serial or 'the device'}; check the device and re-run") from None
        # devices before Android 7 answer `adb shell` with CRLF line ends
        p.stdout = p.stdout.replace("\r\n", "\n")
        p.stderr = p.stderr.replace("\r\n", "\n")
        return p

    def _adb(self, *args: str, check: bool = True, retry: bool = True) -> str:
        """`adb -s SERIAL args...` -> stdout. A disconnect is retried once after `wait-for-device`;
        a second one is a DeviceError (the caller saves what it has and marks it partial)."""
        what = " ".join(args)[:60]
        for attempt in (1, 2):
            p = self._exec(["-s", self.serial or "", *args] if self.serial else list(args))
            # adb's own errors are on stderr (old versions: the last stdout line); never the tool's output
            tail = (p.stdout.strip().splitlines() or [""])[-1]
            err = p.stderr if p.stderr.strip() or p.returncode == 0 else tail
            if _UNAUTHORIZED.search(err):
                raise DeviceError(self._unauthorized_msg())
            if p.returncode != 0 and _DISCONNECT.search(err):
                if attempt == 1 and retry:
                    time.sleep(self.retry_delay_s)
                    if self.serial:  # returns as soon as it is back; bounded so a gone device fails
                        try:
                            self._exec(["-s", self.serial, "wait-for-device"], timeout=60)
                        except DeviceError:
                            pass  # the retry below fails with the real adb error
                    continue
                raise DeviceError(f"device {self.serial} disconnected during `adb {what}` "
                                  f"({_first_line(_DISCONNECT.search(err).group(0))}) and the one retry failed too; "
                                  f"reconnect it (`adb devices` should list it as 'device') and re-run")
            if check and p.returncode != 0:
                raise DeviceError(f"`adb {what}` failed on {self.serial}: "
                                  f"{_first_line(p.stderr) or _first_line(p.stdout) or f'exit {p.returncode}'}")
            return p.stdout
        raise AssertionError("unreachable")

    def _unauthorized_msg(self) -> str:
        return (f"device {self.serial} is unauthorized: unlock it and accept the 'Allow USB debugging?' prompt "
                f"(revoke USB debugging authorizations and re-plug if none shows), then re-run")

    # -- connection and identity ---------------------------------------------------------------
    def devices(self) -> list[AdbDeviceEntry]:
        p = self._exec(["devices", "-l"])
        if p.returncode != 0:
            raise DeviceError(f"`adb devices -l` failed: {_first_line(p.stderr) or f'exit {p.returncode}'}")
        return parse_adb_devices(p.stdout)

    def check(self) -> AdbDeviceEntry:
        """The device's `adb devices -l` entry; DeviceError with a remedy unless it is ready."""
        entries = self.devices()
        listed = ", ".join(f"{e.serial} ({e.state})" for e in entries) or "none"
        if self.serial is None:
            ready = [e for e in entries if e.state == "device"]
            if not entries:
                raise DeviceError("no Android device connected (`adb devices` lists none); plug in a phone with USB "
                                  "debugging on or start an emulator, then re-run")
            if len(entries) > 1:
                raise DeviceError(f"several Android devices connected ({listed}); pick one with --device SERIAL")
            self.serial = (ready or entries)[0].serial
        match = [e for e in entries if e.serial == self.serial]
        if not match:
            raise DeviceError(f"device {self.serial!r} is not connected (adb devices lists: {listed}); "
                              f"check the serial with `adb devices`")
        e = match[0]
        if e.state == "unauthorized":
            raise DeviceError(self._unauthorized_msg())
        if e.state == "offline":
            raise DeviceError(f"device {self.serial} is offline: re-plug the cable (or `adb reconnect`; for an "
                              f"emulator, restart it), then re-run")
        if e.state.startswith("no permissions"):
            raise DeviceError(f"device {self.serial} has no permissions: add a udev rule for it (Linux) or run the "
                              f"adb server as a user allowed to open USB devices, then re-run")
        if e.state != "device":
            raise DeviceError(f"device {self.serial} is in state '{e.state}'; boot it to Android, then re-run")
        return e

    def fingerprint(self) -> DeviceInfo:
        """Model, SoC, ABI, Android version and emulator-or-not from `getprop`."""
        if self._info is not None:
            return self._info
        entry = self.check()
        p = parse_getprop(self._adb("shell", "getprop"))
        is_emu = (p.get("ro.kernel.qemu") == "1" or p.get("ro.boot.qemu") == "1"
                  or p.get("ro.hardware") in ("ranchu", "goldfish") or (self.serial or "").startswith("emulator-"))
        soc_model, platform = p.get("ro.soc.model", ""), p.get("ro.board.platform", "")
        soc = f"{soc_model} ({platform})" if soc_model and platform and platform.lower() != soc_model.lower() \
            else (soc_model or platform or p.get("ro.hardware", "unknown"))
        if is_emu:
            soc = f"emulated ({p.get('ro.hardware', 'ranchu')})"
        self._info = DeviceInfo(
            kind="emulator" if is_emu else "phone", serial=self.serial or "", model=p.get("ro.product.model", "unknown"),
            soc=soc, abi=p.get("ro.product.cpu.abi", "unknown"),
            os_version=f"Android {p.get('ro.build.version.release', '?')}",
            fingerprint=p.get("ro.build.fingerprint", ""), is_emulator=is_emu,
            manufacturer=p.get("ro.product.manufacturer", ""), sdk=p.get("ro.build.version.sdk", ""),
            extra={k: v for k, v in {
                "device": p.get("ro.product.device", ""), "hardware": p.get("ro.hardware", ""),
                "board_platform": platform, "abilist": p.get("ro.product.cpu.abilist", ""),
                "transport": "usb" if "usb" in entry.attrs else ("tcp" if ":" in (self.serial or "") else ""),
            }.items() if v})
        return self._info

    def adb_version(self) -> str:
        p = self._exec(["version"])
        return parse_adb_version(p.stdout)

    # -- files and commands --------------------------------------------------------------------
    def shell(self, command: str, check: bool = True) -> str:
        return self._adb("shell", command, check=check)

    def push(self, local: Path, remote: str) -> None:
        self._adb("push", str(local), remote)

    def pull(self, remote: str, local: Path) -> Path:
        self._adb("pull", remote, str(local))
        return local

    def cleanup(self) -> None:
        """Remove our folder; never masks the error that brought us here (device may be gone)."""
        try:
            self._adb("shell", f"rm -rf {self.remote_dir}", check=False, retry=False)
        except DeviceError:
            pass

    def battery(self) -> BatteryState:
        return parse_dumpsys_battery(self.shell("dumpsys battery"))

    # -- one benchmark -------------------------------------------------------------------------
    def wrapper_script(self, tool: AndroidTool, model_name: str, plan: RunPlan, rails: bool) -> str:
        """The POSIX sh (mksh/toybox) script run on the device: battery status, rails before/after,
        the tool in the background, a 50 ms loop sampling current/voltage and the tool's
        /proc/PID/status (VmHWM) and /proc/PID/stat (CPU time), then everything between markers."""
        d = self.remote_dir
        rails_dump = (lambda tag: f"echo DCL-{tag}-BEGIN; dumpsys {POWERSTATS} 2>&1; echo DCL-{tag}-END") \
            if rails else (lambda tag: ":")
        logcat = (f"echo DCL-LOGCAT-BEGIN; logcat -d -v brief -T \"$LOGT\" -s {tool.logcat_tag}:I 2>&1; "
                  "echo DCL-LOGCAT-END" if tool.logcat_tag else ":")
        return "\n".join([
            "# written by dcl (runtime_harness/devices/adb.py); safe to delete",
            f"cd {d} || exit 97",
            "B=/sys/class/power_supply/battery",
            "echo DCL-BATTERY-BEGIN; cat $B/status 2>/dev/null; echo DCL-BATTERY-END",
            rails_dump("RAILS0"),
            "LOGT=$(date '+%m-%d %H:%M:%S.000')",
            "echo \"DCL-T0 $(cut -d' ' -f1 /proc/uptime)\"",
            f"{tool_command(tool, d, model_name, plan)} > tool.out 2>&1 &",
            "P=$!",
            "S=; T=",
            ": > samples.txt",
            "while kill -0 $P 2>/dev/null; do",
            "  X=$(cat /proc/$P/status 2>/dev/null) && [ -n \"$X\" ] && S=$X",
            "  Y=$(cat /proc/$P/stat 2>/dev/null) && [ -n \"$Y\" ] && T=$Y",
            "  echo \"$(cut -d' ' -f1 /proc/uptime) $(cat $B/current_now 2>/dev/null || echo NA)"
            " $(cat $B/voltage_now 2>/dev/null || echo NA)\" >> samples.txt",
            "  sleep 0.05",
            "done",
            "wait $P",
            "R=$?",
            "echo \"DCL-T1 $(cut -d' ' -f1 /proc/uptime)\"",
            rails_dump("RAILS1"),
            "echo DCL-TOOL-BEGIN; cat tool.out; echo; echo DCL-TOOL-END",
            logcat,
            "echo DCL-SAMPLES-BEGIN; cat samples.txt; echo DCL-SAMPLES-END",
            "echo DCL-STATUS-BEGIN; echo \"$S\"; echo DCL-STATUS-END",
            "echo DCL-STAT-BEGIN; echo \"$T\"; echo DCL-STAT-END",
            "echo \"DCL-EXIT $R\"",
            ""])

    def benchmark(self, fmt: str, model: Path, plan: RunPlan = RunPlan(), tools_folder: Path | None = None,
                  energy_sources: tuple[str, ...] = ("power-rails", "battery"), target=None,
                  keep: bool = False) -> AndroidRun:
        """Run one inference artifact with its runtime's official tool and measure it.

        energy_sources: tried in order ("power-rails", "battery"); if none works and `target`
        (with cpu_power_w) is given, `estimated:model` from the tool's CPU time; on an emulator
        always `unavailable` (its battery is simulated)."""
        info = self.fingerprint()
        tool, binary = find_tool(fmt, tools_folder, abi=info.abi)  # before touching the device
        model = Path(model)
        d = self.remote_dir
        try:
            self.shell(f"mkdir -p {d}")
            for lib in shared_libs(tool, binary):
                self.push(lib, f"{d}/{lib.name}")
            self.push(binary, f"{d}/{tool.binary}")
            self.push(model, f"{d}/{model.name}")
            with tempfile.TemporaryDirectory() as tmp:
                script = Path(tmp) / f"run_{tool.binary}.sh"
                script.write_text(self.wrapper_script(tool, model.name, plan, rails="power-rails" in energy_sources
                                                      and not info.is_emulator))
                self.push(script, f"{d}/{script.name}")
                self.shell(f"chmod 755 {d}/{tool.binary}")
                batt = None if info.is_emulator else self.battery()
                w = parse_wrapper_output(self.shell(f"sh {d}/{script.name}", check=False))
                result_text = None
                if tool.writes_result_file and w.rc == 0:
                    local = self.pull(tool.result_path(d), Path(tmp) / "result.txt")
                    result_text = local.read_text() if local.is_file() else None
            timings = parse_tool_output(tool, w.tool_output + "\n" + w.logcat, result_text)
            if w.rc is None:
                raise DeviceError(f"{tool.binary} on {self.serial}: the run wrapper printed no exit status "
                                  f"(killed? out of storage in {d}?); re-run")
            if w.rc != 0 or not timings.ok:
                last = _first_line("\n".join(w.tool_output.strip().splitlines()[-1:])) or "no output"
                raise DeviceError(f"{tool.binary} failed on {self.serial} (exit {w.rc}) for {model.name}: {last}")
        finally:
            if not keep:
                self.cleanup()
        latency = timings.latency()
        return AndroidRun(tool=tool.binary, tool_sha256=sha256_file(binary), timings=timings, latency=latency,
                          peak_rss=self._peak_rss(w, timings), energy=self._energy(w, batt, latency, energy_sources,
                                                                                    target),
                          battery=batt, output=w.tool_output)

    @staticmethod
    def _peak_rss(w: WrapperOutput, t: ToolTimings) -> Measurement:
        hwm = vm_hwm_bytes(w.status)
        tool_note = f"; the tool itself reported {t.memory_bytes} bytes ({t.memory_note})" if t.memory_bytes else ""
        if hwm is None:
            return Measurement.unavailable("bytes", "the tool exited before /proc/PID/status could be read "
                                                    "(run longer)" + tool_note)
        return Measurement(float(hwm), "bytes", metrics.VMHWM,
                           note="VmHWM of the tool process: absolute peak RSS including the runtime library" + tool_note)

    def _energy(self, w: WrapperOutput, batt: BatteryState | None, latency: LatencyStats,
                sources: tuple[str, ...], target) -> Measurement:
        info = self.fingerprint()
        if info.is_emulator:
            return metrics.emulator_energy()
        why = []
        window = (w.t1 - w.t0) if w.t0 is not None and w.t1 is not None else 0.0
        for src in sources:
            if src == "power-rails":
                before, after = parse_powerstats(w.rails_before), parse_powerstats(w.rails_after)
                m = metrics.rails_energy(before, after, window, latency.mean_s) if before and after else \
                    Measurement.unavailable("J", "no PowerStats HAL energy meter on this device")
            elif src == "battery":
                charging = (batt.charging if batt else False) or w.battery_status in ("Charging", "Full")
                m = metrics.battery_energy(w.samples, latency.mean_s, charging)
            else:
                raise ValueError(f"unknown energy source {src!r}")
            if m.available:
                return m
            why.append(f"{src}: {m.reason}")
        cpu = proc_stat_cpu_s(w.stat)
        if target is not None and cpu is not None and window > 0:
            est = metrics.estimate_energy(latency.mean_s * cpu / window, target)
            est.note += (f"; CPU time per inference = mean latency x the tool's CPU utilisation ({cpu:.2f} s CPU in "
                         f"{window:.2f} s); nothing measurable: " + "; ".join(why))
            return est
        return Measurement.unavailable("J", "; ".join(why) or "no energy source requested")
