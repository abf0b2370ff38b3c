"""The adb path, against a fake `adb` (tests/fake_adb.py) that replays transcripts of what a Pixel 8
and an emulator print: connection checks, fingerprints, benchmark runs with each official tool, energy
labels, retry on disconnect, partial results, and a missing runner. The on-device wrapper script
itself is also executed for real here with /bin/sh, with a stand-in tool."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from dcl_core.errors import DclError, DeviceError
from dcl_core.paths import PROJECT_ROOT
from exporters.targets import get_target
from runtime_harness.devices.adb import AdbDevice
from runtime_harness.devices.tools import RunPlan, find_tool, tool_for, tools_dir
from runtime_harness.parsers import parse_benchmark_model, parse_wrapper_output, proc_stat_cpu_s, vm_hwm_bytes
from runtime_harness.report.results import ArtifactResult, ProfileResults, load_results
from runtime_harness.report.write import write_outputs

FAKE = Path(__file__).parent / "fake_adb.py"
PIXEL = "37211FDJH000BC"
PLAN = RunPlan(runs=50, warmup=3, min_duration_s=1.0, threads=1)


class Fake:
    def __init__(self, state: Path, monkeypatch: pytest.MonkeyPatch):
        self.state, self.mp = state, monkeypatch

    def scenario(self, name: str) -> None:
        self.mp.setenv("FAKE_ADB_SCENARIO", name)

    def calls(self) -> list[list[str]]:
        p = self.state / "calls.jsonl"
        return [json.loads(line) for line in p.read_text().splitlines()] if p.exists() else []


@pytest.fixture
def fake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Fake:
    exe = tmp_path / "adb"
    exe.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{FAKE}" "$@"\n')
    exe.chmod(0o755)
    monkeypatch.setenv("DCL_ADB", str(exe))
    monkeypatch.setenv("FAKE_ADB_STATE", str(tmp_path / "state"))
    monkeypatch.setenv("FAKE_ADB_SCENARIO", "phone")
    monkeypatch.delenv("DCL_ANDROID_TOOLS", raising=False)
    return Fake(tmp_path / "state", monkeypatch)


@pytest.fixture
def tools(tmp_path: Path) -> Path:
    """Stand-in tool binaries per ABI (their bytes are pushed, never run: the fake replays)."""
    root = tmp_path / "android-tools"
    for abi, names in (("arm64-v8a", ["benchmark_model", "onnxruntime_perf_test", "executor_runner"]),
                       ("x86_64", ["benchmark_model"])):
        (root / abi).mkdir(parents=True)
        for n in names:
            (root / abi / n).write_bytes(b"\x7fELF stand-in for " + n.encode())
    (root / "arm64-v8a" / "libonnxruntime.so").write_bytes(b"\x7fELF lib")
    return root


@pytest.fixture
def models(tmp_path: Path) -> dict[str, Path]:
    out = {}
    for fmt, ext in (("tflite", "tflite"), ("onnx", "onnx"), ("executorch", "pte")):
        out[fmt] = tmp_path / f"mobilecnn_xs_inference.{ext}"
        out[fmt].write_bytes(b"model bytes " + fmt.encode())
    return out


def one_line(e: BaseException) -> str:
    msg = str(e)
    assert "\n" not in msg and msg.strip() == msg and msg, repr(msg)
    return msg


# ---------------------------------------------------------------------------------------------
# connection and identity

def test_phone_fingerprint(fake):
    d = AdbDevice(PIXEL).fingerprint()
    assert (d.kind, d.model, d.manufacturer) == ("phone", "Pixel 8", "Google")
    assert d.soc == "Tensor G3 (zuma)" and d.abi == "arm64-v8a" and d.os_version == "Android 14" and d.sdk == "34"
    assert not d.is_emulator and d.fingerprint.startswith("google/shiba/shiba:14/")
    assert d.extra["transport"] == "usb" and d.extra["board_platform"] == "zuma"
    assert AdbDevice(PIXEL).adb_version() == "1.0.41 (34.0.5-10900879)"


def test_emulator_fingerprint_and_the_only_device_is_picked(fake):
    fake.scenario("emulator")
    dev = AdbDevice()  # no --device: the single connected one
    d = dev.fingerprint()
    assert dev.serial == "emulator-5554"
    assert d.kind == "emulator" and d.is_emulator and d.abi == "x86_64" and d.model == "sdk_gphone64_x86_64"
    assert d.soc.startswith("emulated")


@pytest.mark.parametrize("scenario,serial,needles", [
    ("phone", "XYZ123", ["'XYZ123' is not connected", f"{PIXEL} (device)", "adb devices"]),
    ("unauthorized", PIXEL, ["unauthorized", "Allow USB debugging"]),
    ("offline", "emulator-5554", ["offline", "re-plug", "restart it"]),
    ("no_devices", None, ["no Android device connected"]),
])
def test_bad_connections_are_one_line_device_errors(fake, scenario, serial, needles):
    fake.scenario(scenario)
    with pytest.raises(DeviceError) as e:
        AdbDevice(serial).fingerprint()
    msg = one_line(e.value)
    for n in needles:
        assert n in msg, msg
    assert isinstance(e.value, DclError) and e.value.exit_code != 0  # the CLI prints it alone, exits non-zero


def test_unauthorized_mid_command_is_reported_as_such(fake):
    fake.scenario("unauthorized")
    with pytest.raises(DeviceError) as e:
        AdbDevice(PIXEL).shell("getprop")  # adb itself answers "adb: device unauthorized."
    assert "unauthorized" in one_line(e.value)


def test_missing_adb_executable(fake, monkeypatch, tmp_path):
    monkeypatch.setenv("DCL_ADB", str(tmp_path / "no-such-adb"))
    with pytest.raises(DeviceError) as e:
        AdbDevice(PIXEL).check()
    assert "adb not found" in one_line(e.value) and "DCL_ADB" in str(e.value)


# ---------------------------------------------------------------------------------------------
# runs with each tool

def test_litert_run_on_the_pixel(fake, tools, models):
    dev = AdbDevice(PIXEL, retry_delay_s=0)
    r = dev.benchmark("tflite", models["tflite"], PLAN, tools / "arm64-v8a", target=get_target("pixel-8"))
    assert r.tool == "benchmark_model" and r.latency.n == 383
    assert r.latency.mean_s == pytest.approx(2611.14e-6) and r.latency.source == "measured:tool"
    assert r.timings.init_s == pytest.approx(3.436e-3) and r.timings.first_s == pytest.approx(2.917e-3)
    assert r.peak_rss.source == "measured:vmhwm" and r.peak_rss.value == 38912 * 1024
    # the Pixel 8 has on-device power monitors: rails win over the (charging) battery
    assert r.energy.source == "measured:power-rails" and r.energy.flags == []
    assert r.energy.value == pytest.approx(4546.9e-3 / 2.03 * 2611.14e-6, rel=1e-4)  # 4546.9 mWs over 16 rails
    assert r.battery is not None and r.battery.charging
    calls = [" ".join(c) for c in fake.calls()]
    d = "/data/local/tmp/dcl"
    for expected in [f"-s {PIXEL} shell mkdir -p {d}", f"-s {PIXEL} shell chmod 755 {d}/benchmark_model",
                     f"-s {PIXEL} shell sh {d}/run_benchmark_model.sh", f"-s {PIXEL} shell rm -rf {d}"]:
        assert expected in calls, calls
    pushed = {c[-1] for c in fake.calls() if "push" in c}
    assert pushed == {f"{d}/benchmark_model", f"{d}/mobilecnn_xs_inference.tflite", f"{d}/run_benchmark_model.sh"}
    assert calls[-1] == f"-s {PIXEL} shell rm -rf {d}"  # cleaned up last
    script = (fake.state / "device" / d.lstrip("/") / "run_benchmark_model.sh").read_text()
    assert f"./benchmark_model --graph={d}/mobilecnn_xs_inference.tflite --num_threads=1 --num_runs=50" in script
    assert "IPowerStats/default" in script and "/proc/$P/status" in script


def test_ort_run_pulls_its_result_file_for_every_run(fake, tools, models):
    r = AdbDevice(PIXEL).benchmark("onnx", models["onnx"], PLAN, tools / "arm64-v8a")
    assert r.tool == "onnxruntime_perf_test" and r.latency.n == 50 and len(r.timings.samples_s) == 50
    assert r.latency.p50_s is not None and r.latency.note.startswith("per-run times")
    assert r.peak_rss.value == 33408 * 1024 and "31682560" in r.peak_rss.note  # the tool's own figure kept
    assert r.energy.source == "measured:power-rails"
    calls = fake.calls()
    assert ["-s", PIXEL, "push", str(tools / "arm64-v8a" / "libonnxruntime.so"),
            "/data/local/tmp/dcl/libonnxruntime.so"] in calls
    assert any(c[2:4] == ["pull", "/data/local/tmp/dcl/onnxruntime_perf_test.result.txt"] for c in calls)


def test_executorch_run(fake, tools, models):
    r = AdbDevice(PIXEL).benchmark("executorch", models["executorch"], PLAN, tools / "arm64-v8a")
    assert r.tool == "executor_runner" and r.latency.n == 50 and r.timings.first_s == pytest.approx(2.690312e-3)
    assert r.timings.outputs == ["output 0: sizes=[1, 10]"]
    script = (fake.state / "device/data/local/tmp/dcl/run_executor_runner.sh").read_text()
    assert "--num_executions=51" in script and "logcat -d" in script


def test_battery_energy_on_usb_is_flagged_charging(fake, tools, models):
    r = AdbDevice(PIXEL).benchmark("tflite", models["tflite"], PLAN, tools / "arm64-v8a", energy_sources=("battery",))
    assert r.energy.source == "measured:battery" and r.energy.flags == ["charging"]
    assert r.energy.value > 0 and "external power" in r.energy.note


def test_estimated_energy_only_when_nothing_is_measurable_and_a_target_is_given(fake, tools, models):
    r = AdbDevice(PIXEL).benchmark("tflite", models["tflite"], PLAN, tools / "arm64-v8a", energy_sources=(),
                                   target=get_target("pixel-8"))
    assert r.energy.source == "estimated:model" and "cpu_power_w 2.2 W" in r.energy.note
    # CPU time per inference = latency x utilisation (2.0 s CPU over a 2.03 s window)
    assert r.energy.value == pytest.approx(2611.14e-6 * 2.0 / 2.03 * 2.2, rel=1e-3)
    none = AdbDevice(PIXEL).benchmark("tflite", models["tflite"], PLAN, tools / "arm64-v8a", energy_sources=())
    assert none.energy.source == "unavailable" and none.energy.reason


def test_emulator_energy_is_unavailable_and_its_abi_picks_the_tools(fake, tools, models, monkeypatch):
    fake.scenario("emulator")
    monkeypatch.setenv("DCL_ANDROID_TOOLS", str(tools / "x86_64"))
    r = AdbDevice("emulator-5554").benchmark("tflite", models["tflite"], PLAN, target=get_target("pixel-8"))
    assert r.energy.source == "unavailable" and r.energy.reason == "emulator battery is simulated"
    assert r.latency.mean_s == pytest.approx(7043.9e-6) and r.peak_rss.value == 41216 * 1024
    assert not any(c[-1] == "dumpsys battery" for c in fake.calls())  # its battery is not even asked


# ---------------------------------------------------------------------------------------------
# missing runner

def test_missing_runner_names_the_binary_where_to_get_it_and_the_folder(fake, tools, models):
    (tools / "arm64-v8a" / "executor_runner").unlink()
    with pytest.raises(DeviceError) as e:
        AdbDevice(PIXEL).benchmark("executorch", models["executorch"], PLAN, tools / "arm64-v8a")
    msg = one_line(e.value)
    assert "executor_runner" in msg and str(tools / "arm64-v8a") in msg and "ExecuTorch" in msg and "NDK" in msg
    assert not any("push" in c for c in fake.calls())  # nothing touched on the device


@pytest.mark.parametrize("fmt,binary,hint", [("tflite", "benchmark_model", "android_aarch64_benchmark_model"),
                                             ("onnx", "onnxruntime_perf_test", "--android"),
                                             ("executorch", "executor_runner", "ExecuTorch docs")])
def test_each_missing_tool_says_how_to_obtain_it(tmp_path, monkeypatch, fmt, binary, hint):
    monkeypatch.setenv("DCL_ANDROID_TOOLS", str(tmp_path / "empty"))
    with pytest.raises(DeviceError) as e:
        find_tool(fmt)
    msg = one_line(e.value)
    assert binary in msg and hint in msg and str(tmp_path / "empty") in msg and "DCL_ANDROID_TOOLS" in msg


def test_default_tools_folder_is_per_abi(monkeypatch):
    monkeypatch.delenv("DCL_ANDROID_TOOLS", raising=False)
    assert tools_dir() == PROJECT_ROOT / ".cache" / "android-tools" / "arm64-v8a"
    assert tools_dir("x86_64") == PROJECT_ROOT / ".cache" / "android-tools" / "x86_64"
    with pytest.raises(DeviceError):
        tool_for("coreml")


# ---------------------------------------------------------------------------------------------
# disconnects

def test_a_disconnect_is_retried_once(fake, tools, models):
    fake.scenario("disconnect_once")
    r = AdbDevice(PIXEL, retry_delay_s=0).benchmark("tflite", models["tflite"], PLAN, tools / "arm64-v8a")
    assert r.latency.n == 383
    calls = [" ".join(c) for c in fake.calls()]
    assert calls.count(f"-s {PIXEL} shell sh /data/local/tmp/dcl/run_benchmark_model.sh") == 2
    assert f"-s {PIXEL} wait-for-device" in calls


def test_a_second_disconnect_is_a_clear_error_and_partial_results_are_saved(fake, tools, models, tmp_path):
    dev = AdbDevice(PIXEL, retry_delay_s=0)
    results = ProfileResults(device=dev.fingerprint(), target="pixel-8", tool_versions={"adb": dev.adb_version()})
    # what the profile loop does: artifacts one after another, saving what it has when one fails
    first = dev.benchmark("tflite", models["tflite"], PLAN, tools / "arm64-v8a")
    results.artifacts.append(ArtifactResult.from_android("mobilecnn_xs_inference", "tflite", "ab" * 32, 12,
                                                         first))
    fake.scenario("disconnect_always")
    with pytest.raises(DeviceError) as e:
        dev.benchmark("onnx", models["onnx"], PLAN, tools / "arm64-v8a")
    msg = one_line(e.value)
    assert "disconnected" in msg and "retry" in msg and PIXEL in msg and "reconnect" in msg
    runs = [c for c in fake.calls() if c[-1] == "sh /data/local/tmp/dcl/run_onnxruntime_perf_test.sh"]
    assert len(runs) == 2  # one retry, no more
    results.mark_partial(msg)
    j, h = write_outputs(results, tmp_path / "out")
    back = load_results(j)
    assert back.partial and "disconnected" in back.partial_reason and len(back.artifacts) == 1
    assert back.artifacts[0].energy.source == "measured:power-rails" and back.device.kind == "phone"
    assert back == results
    assert "PARTIAL RESULTS" in h.read_text()


# ---------------------------------------------------------------------------------------------
# the on-device wrapper script, executed for real (POSIX sh) with a stand-in tool

def _standin_tool(folder: Path, name: str, body: str) -> None:
    p = folder / name
    p.write_text(f"#!{sys.executable}\n{body}")
    p.chmod(0o755)


def test_the_wrapper_script_runs_and_reports_vmhwm_cpu_and_exit(tmp_path):
    sample = (Path(__file__).parent / "data/android/benchmark_model_pixel8.txt").read_text()
    _standin_tool(tmp_path, "benchmark_model",
                  "import sys, time\nx = bytearray(64 * 2**20)\nfor i in range(0, len(x), 4096): x[i] = 1\n"
                  "t = time.time()\nwhile time.time() - t < 0.3: pass\n"
                  f"sys.stdout.write({sample!r})\nprint('argv', sys.argv[1:], file=sys.stderr)\n")
    script = AdbDevice("x", remote_dir=str(tmp_path)).wrapper_script(tool_for("tflite"), "m.tflite", PLAN, rails=True)
    (tmp_path / "run.sh").write_text(script)
    out = subprocess.run(["sh", str(tmp_path / "run.sh")], capture_output=True, text=True, timeout=60).stdout
    w = parse_wrapper_output(out)
    assert w.rc == 0 and w.t1 >= w.t0
    assert vm_hwm_bytes(w.status) >= 64 * 2**20  # the tool's own peak, read from /proc/PID/status
    assert proc_stat_cpu_s(w.stat) is not None
    assert parse_benchmark_model(w.tool_output).n == 383
    assert f"--graph={tmp_path}/m.tflite" in w.tool_output  # argv reached the tool
    assert w.samples == []  # no battery on this host: NA samples are dropped, not zeros

    _standin_tool(tmp_path, "benchmark_model", "import sys, time\ntime.sleep(0.2)\nprint('ERROR: bad model')\n"
                                               "sys.exit(3)\n")
    w = parse_wrapper_output(subprocess.run(["sh", str(tmp_path / "run.sh")], capture_output=True, text=True,
                                            timeout=60).stdout)
    assert w.rc == 3 and "ERROR: bad model" in w.tool_output


def test_a_failing_tool_is_one_line_with_its_last_words(fake, tools, models, monkeypatch):
    # the device answers the run with benchmark_model's real refusal (exit 1); all else is replayed
    monkeypatch.setattr(AdbDevice, "shell", _shell_returning(
        AdbDevice.shell, "DCL-TOOL-BEGIN\nINFO: STARTING!\nERROR: Could not open "
        "'/data/local/tmp/dcl/mobilecnn_xs_inference.tflite'.\nDCL-TOOL-END\nDCL-EXIT 1\n"))
    with pytest.raises(DeviceError) as e:
        AdbDevice(PIXEL).benchmark("tflite", models["tflite"], PLAN, tools / "arm64-v8a")
    msg = one_line(e.value)
    assert "benchmark_model failed" in msg and "exit 1" in msg and "Could not open" in msg
    assert fake.calls()[-1][-1] == "rm -rf /data/local/tmp/dcl"  # cleaned up even so


def _shell_returning(real, text: str):
    def shell(self, command: str, check: bool = True) -> str:
        return text if command.startswith("sh /data/local/tmp/dcl/run_") else real(self, command, check)
    return shell


# ---------------------------------------------------------------------------------------------
# training steps through the demo app's benchmark entry point (runtime_harness/devices/app.py)

def _train_artifact(name: str = "device_step_executorch_train", sha: str | None = None):
    from dcl_core.bundle import Artifact

    result = json.loads((Path(__file__).parent / "data" / "android" / "app_benchmark_result_pixel8.json").read_text())
    return Artifact(name=name, path=f"{name}.pte", format="executorch", kind="training",
                    sha256=sha or result["sha256"], bytes=84048)


def test_training_steps_run_through_the_demo_app(fake):
    from runtime_harness.devices.app import RESULT_PATH, AppBenchmark, to_artifact_result

    fake.scenario("phone_with_app")
    art = _train_artifact()
    run = AppBenchmark(AdbDevice(PIXEL), poll_s=0).run(art, runs=20, warmup=3, threads=1)
    assert run.kind == "training" and run.batch_size == 32 and run.latency.n == 20
    assert run.latency.source == "measured:app-clock" and 0.003 < run.latency.mean_s < 0.006
    assert len(run.losses) == 24 and run.warmup.n == 3
    calls = [" ".join(c) for c in fake.calls()]
    assert (f"-s {PIXEL} shell am start -W -S -n org.dcl.demo/.ui.BenchmarkActivity --es artifact {art.name} "
            f"--ei runs 20 --ei warmup 3 --ei threads 1") in calls
    assert calls.index(f"-s {PIXEL} shell rm -f {RESULT_PATH}") < calls.index(next(c for c in calls if " am start " in c))
    assert calls.count(f"-s {PIXEL} shell cat {RESULT_PATH}") == 2  # polled until the app wrote it
    r = to_artifact_result(art, run)
    assert r.kind == "training" and not r.error and r.per_sample_s == pytest.approx(run.latency.mean_s / 32)
    assert r.runtime == "android_demo app (executorch-android)" and not r.peak_rss.available


def test_demo_app_missing_or_holding_another_bundle_is_one_line(fake):
    from runtime_harness.devices.app import AppBenchmark, AppNotReady

    with pytest.raises(AppNotReady) as e:  # the plain phone has no demo app installed
        AppBenchmark(AdbDevice(PIXEL), poll_s=0).run(_train_artifact(), 5, 1, 1)
    assert "not installed" in one_line(e.value) and "dcl bundle" in one_line(e.value)
    fake.scenario("phone_with_app")
    with pytest.raises(AppNotReady) as e:
        AppBenchmark(AdbDevice(PIXEL), poll_s=0).run(_train_artifact(sha="0" * 64), 5, 1, 1)
    assert "different bundle" in one_line(e.value)


def test_profile_measures_training_through_the_app_and_goes_on_without_it(fake, tools, models, tmp_path):
    from runtime_harness.profile import ProfilePlan, _adb_artifact

    fake.scenario("phone_with_app")
    art = _train_artifact()
    plan = ProfilePlan(runs=20, warmup=3, min_duration_s=0.1, threads=1)
    r = _adb_artifact(AdbDevice(PIXEL), tmp_path, art, plan)
    assert not r.error and r.latency.n == 20 and r.batch_size == 32
    fake.scenario("phone")  # no app: this artifact says so, the profile is not stopped
    r = _adb_artifact(AdbDevice(PIXEL), tmp_path, art, plan)
    assert r.error.startswith("not measured:") and "android_demo" in r.error


def test_app_result_parser_refuses_foreign_and_failed_results():
    from runtime_harness.devices.app import AppNotReady, parse_app_result

    good = json.loads((Path(__file__).parent / "data" / "android" / "app_benchmark_result_pixel8.json").read_text())
    for bad, needle in (("not json", "not JSON"), (json.dumps({**good, "version": 9}), "rebuild"),
                        (json.dumps({**good, "error": "no artifact named 'x' in the manifest"}), "no artifact named"),
                        (json.dumps({k: v for k, v in good.items() if k != "samples_s"}), "samples_s")):
        with pytest.raises(DeviceError) as e:
            parse_app_result(bad)
        assert needle in one_line(e.value)
    with pytest.raises(AppNotReady):
        parse_app_result(json.dumps({**good, "error": "boom"}))
