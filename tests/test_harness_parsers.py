"""Parsers on samples of the real tools' output (tests/data/android/; the format source of each
sample is listed in its README)."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from runtime_harness.parsers import (
    parse_adb_devices,
    parse_adb_version,
    parse_benchmark_model,
    parse_dcl_et_runner,
    parse_dumpsys_battery,
    parse_executor_runner,
    parse_getprop,
    parse_ort_perf_test,
    parse_powerstats,
    parse_proc_status,
    parse_wrapper_output,
    proc_stat_cpu_s,
    vm_hwm_bytes,
)

DATA = Path(__file__).parent / "data" / "android"


def read(name: str) -> str:
    return (DATA / name).read_text()


def _fake_adb():
    spec = importlib.util.spec_from_file_location("fake_adb", Path(__file__).parent / "fake_adb.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


# ---------------------------------------------------------------------------------------------
# benchmark tools

def test_litert_benchmark_model():
    t = parse_benchmark_model(read("benchmark_model_pixel8.txt"))
    assert t.init_s == pytest.approx(3436e-6) and t.first_s == pytest.approx(2917e-6)
    assert t.warmup_mean_s == pytest.approx(2650.25e-6) and t.mean_s == pytest.approx(2611.14e-6)
    # the regular run's Stat line (the warm-up one comes first)
    assert t.n == 383 and t.min_s == pytest.approx(2549e-6) and t.max_s == pytest.approx(2913e-6)
    assert t.std_s == pytest.approx(41e-6)
    assert t.memory_bytes == int(5.33 * 2**20) and "approximate" in t.memory_note
    L = t.latency()
    assert L.source == "measured:tool" and L.p50_s is None and "p50/p90/p99" in L.note  # never invented


def test_litert_edge_formats():
    same = "INFO: count=1 curr=2917\n\nINFO: Inference timings in us: Init: 3436, First inference: 2917, " \
           "Warmup (avg): 2917, Inference (avg): 2.61114e+06\n"
    t = parse_benchmark_model(same)
    assert t.n == 1 and t.min_s == t.max_s == pytest.approx(2917e-6) and t.std_s == 0
    assert t.mean_s == pytest.approx(2.61114)  # C++ streams print big values in scientific notation
    peak = "INFO: Overall peak memory footprint (MB) via periodic monitoring: 9.5\n"
    assert parse_benchmark_model(peak).memory_bytes == int(9.5 * 2**20)
    assert not parse_benchmark_model("ERROR: Could not open '/data/local/tmp/dcl/x.tflite'.\n").ok


def test_onnxruntime_perf_test_with_and_without_its_result_file():
    out = read("onnxruntime_perf_test_pixel8.txt")
    t = parse_ort_perf_test(out)
    assert t.init_s == pytest.approx(0.0412873) and t.first_s == pytest.approx(0.003)
    assert t.n == 50 and t.mean_s == pytest.approx(0.504477e-3)
    assert t.min_s == pytest.approx(0.000487291) and t.max_s == pytest.approx(0.000613542)
    assert t.p50_s == pytest.approx(0.000502136) and t.p90_s == pytest.approx(0.000518218)
    assert t.p99_s == pytest.approx(0.000613542)
    assert t.memory_bytes == 31682560 and t.samples_s == []
    L = t.latency()
    assert L.p50_s == pytest.approx(0.000502136) and L.note.startswith("summary printed by")

    t = parse_ort_perf_test(out, read("onnxruntime_perf_test_result_pixel8.txt"))
    assert len(t.samples_s) == 50  # the stats block appended to the file is not mistaken for runs
    L = t.latency()
    assert L.n == 50 and L.mean_s == pytest.approx(0.504477e-3, rel=1e-4)
    assert L.min_s == pytest.approx(0.000487291) and L.max_s == pytest.approx(0.000613542)


def test_executor_runner_posix_log_with_iterations():
    t = parse_executor_runner(read("executor_runner_pixel8.txt"))
    assert t.init_s == pytest.approx(3.672135e-3)
    assert t.first_s == pytest.approx(2.690312e-3)  # the cold first execution is kept apart
    assert t.n == 50 and len(t.samples_s) == 50
    assert 2.3e-3 < t.mean_s < 2.5e-3
    assert t.outputs == ["output 0: sizes=[1, 10]"]


def test_executor_runner_android_logcat_total_only():
    t = parse_executor_runner(read("executor_runner_logcat_pixel8.txt"))
    assert t.n == 51 and t.mean_s == pytest.approx(123.456e-3 / 51)
    assert t.samples_s == [] and t.latency().p50_s is None


def test_dcl_et_runner_training_output():
    o = parse_dcl_et_runner(read("dcl_et_runner_train_host.txt"))
    t = o.timings
    assert t.tool == "dcl_et_runner" and t.init_s == pytest.approx(5.6137e-3)
    assert t.first_s == pytest.approx(35.3442e-3) and len(t.samples_s) == 3 and t.n == 3
    assert t.samples_s[-1] == pytest.approx(32.3539e-3)
    assert o.warmup_s == [pytest.approx(32.9319e-3)]
    assert o.cpu_s == pytest.approx(0.095595) and o.wall_s == pytest.approx(0.095613)
    assert (o.rss_base_kb, o.rss_peak_kb, o.rss_how) == (4976, 25932, "hwm-reset")
    assert o.losses[:2] == [pytest.approx(5.70217466), pytest.approx(5.43588591)] and len(o.losses) == 5
    assert len(o.params) == 23 and o.params[0] == ("model.f_d.features.0.0.weight", [8, 1, 3, 3])
    assert o.params[-1] == ("model.f_d.classifier.bias", [20]) and o.outputs == []


def test_dcl_et_runner_on_noise_is_empty():
    o = parse_dcl_et_runner("I 00:00:00.000524 executorch:cpuinfo_utils.cpp:71] Reading file\nDCL-RSS x y z\n")
    assert o.timings.samples_s == [] and o.rss_peak_kb is None and o.losses == []


# ---------------------------------------------------------------------------------------------
# Android system output

def test_dumpsys_battery():
    usb = parse_dumpsys_battery(read("dumpsys_battery_pixel8_usb.txt"))
    assert usb.usb_powered and not usb.ac_powered and usb.status == 2 and usb.charging
    assert usb.level == 79 and usb.voltage_mv == 4137 and usb.temperature_c == pytest.approx(30.1)
    assert usb.technology == "Li-ion" and usb.present is True
    wifi = parse_dumpsys_battery(read("dumpsys_battery_pixel8_wireless_adb.txt"))
    assert not wifi.charging and wifi.status == 3
    emu = parse_dumpsys_battery(read("dumpsys_battery_emulator.txt"))
    assert emu.ac_powered and emu.level == 100 and emu.voltage_mv == 5000


def test_proc_status_and_stat():
    status = read("proc_status_benchmark_model_pixel8.txt")
    assert vm_hwm_bytes(status) == 38912 * 1024
    p = parse_proc_status(status)
    assert p["Name"] == "benchmark_model" and p["VmRSS"] == "38104 kB" and p["Threads"] == "2"
    assert vm_hwm_bytes("Name:\tx\n") is None
    assert proc_stat_cpu_s(read("proc_stat_benchmark_model_pixel8.txt")) == pytest.approx(2.0)
    odd = "77 (a) b (c) R 1 77 77 0 -1 0 0 0 0 0 150 50 0 0 20 0 1 0 1 1 1"
    assert proc_stat_cpu_s(odd) == pytest.approx(2.0)  # comm with spaces and parentheses
    assert proc_stat_cpu_s("") is None


def test_getprop():
    p = parse_getprop(read("getprop_pixel8.txt"))
    assert p["ro.product.model"] == "Pixel 8" and p["ro.soc.model"] == "Tensor G3"
    assert p["ro.board.platform"] == "zuma" and p["ro.product.cpu.abi"] == "arm64-v8a"
    assert p["ro.build.version.release"] == "14" and p["ro.product.cpu.abilist32"] == ""
    assert "ro.kernel.qemu" not in p
    e = parse_getprop(read("getprop_emulator.txt"))
    assert e["ro.kernel.qemu"] == "1" and e["ro.boot.qemu"] == "1" and e["ro.hardware"] == "ranchu"
    assert e["ro.product.model"] == "sdk_gphone64_x86_64"


def test_adb_devices_l():
    d = {e.serial: e for e in parse_adb_devices(read("adb_devices_multi.txt"))}
    assert list(d) == ["37211FDJH000BC", "emulator-5554", "R5CW31XXXXX", "0A081FDD4003HM", "192.168.1.23:37215",
                       "9B0AY1MZ8E"]
    assert d["37211FDJH000BC"].state == "device" and d["37211FDJH000BC"].attrs["model"] == "Pixel_8"
    assert d["37211FDJH000BC"].attrs["usb"] == "1-1" and d["37211FDJH000BC"].attrs["transport_id"] == "3"
    assert d["emulator-5554"].attrs["product"] == "sdk_gphone64_x86_64"
    assert d["R5CW31XXXXX"].state == "unauthorized" and d["0A081FDD4003HM"].state == "offline"
    assert d["9B0AY1MZ8E"].state == "no permissions" and d["9B0AY1MZ8E"].attrs["transport_id"] == "7"
    assert parse_adb_devices("List of devices attached\n\n") == []


def test_adb_version():
    assert parse_adb_version("Android Debug Bridge version 1.0.41\nVersion 34.0.5-10900879\nInstalled as /x\n") \
        == "1.0.41 (34.0.5-10900879)"
    assert parse_adb_version("Android Debug Bridge version 1.0.41\nVersion 29.0.6-debian\n") == "1.0.41 (29.0.6-debian)"
    assert parse_adb_version("") == "unknown"


def test_powerstats_energy_meter():
    before = parse_powerstats(read("powerstats_pixel8_before.txt"))
    after = parse_powerstats(read("powerstats_pixel8_after.txt"))
    assert len(before) == 16 and set(before) == set(after)
    assert before["[S2M_VDD_CPUCL2]:CPU(BIG)"] == pytest.approx(5830512.81)
    assert after["[S2M_VDD_CPUCL2]:CPU(BIG)"] - before["[S2M_VDD_CPUCL2]:CPU(BIG)"] == pytest.approx(2412.6)
    assert "CPUCL2" not in before  # the energy-consumer section is not the meter
    delta = ("============= PowerStats HAL 2.0 energy meter ==============\nElapsed time: 2031 ms\n"
             "  %32s   %18s (%14s)\n" % ("Channel", "Cumulative Energy", "Delta   ")
             + "  %32s   %14.2f mWs (%14.2f)\n" % ("[S5M_VDD_INT]:INT", 2210557.07, 208.3)
             + "========== End of PowerStats HAL 2.0 energy meter ==========\n")
    assert parse_powerstats(delta) == {"[S5M_VDD_INT]:INT": pytest.approx(2210557.07)}
    assert parse_powerstats("Can't find service: android.hardware.power.stats.IPowerStats/default\n") == {}


def test_wrapper_output_sections():
    fake = _fake_adb()
    text = "\n".join(fake.expand(read("run_benchmark_model_pixel8.txt").splitlines()))
    w = parse_wrapper_output(text)
    assert w.rc == 0 and w.t0 == pytest.approx(52311.84) and w.t1 == pytest.approx(52313.87)
    assert w.battery_status == "Charging" and len(w.samples) == 28
    assert w.samples[0].current_ua == 624069 and w.samples[0].voltage_uv == 4147132
    assert vm_hwm_bytes(w.status) == 38912 * 1024 and proc_stat_cpu_s(w.stat) == pytest.approx(2.0)
    assert parse_benchmark_model(w.tool_output).n == 383
    assert len(parse_powerstats(w.rails_before)) == 16
    empty = parse_wrapper_output("DCL-SAMPLES-BEGIN\n1.0 NA NA\nDCL-SAMPLES-END\n")
    assert empty.rc is None and empty.samples == []
