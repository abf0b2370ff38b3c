"""`dcl profile` end to end: host measurement of a real bundle, adb through the fake adb, bad input."""
import json
import shutil
import sys
from pathlib import Path

import pytest
from conftest import assert_one_line_error, run_dcl

FAKE = Path(__file__).parent / "fake_adb.py"


@pytest.fixture(scope="module")
def host_profile(bundle, tmp_path_factory):
    out = tmp_path_factory.mktemp("profile")
    proc = run_dcl("profile", str(bundle[0]), "--device", "host", "--runs", "10", "--duration", "0.1",
                   "--out", str(out), "--json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, json.loads(proc.stdout)


def test_host_profile_measures_every_artifact_and_the_baseline(host_profile, bundle):
    out, res = host_profile
    (program,) = json.loads((bundle[0] / "manifest.json").read_text())["programs"]
    by_name = {a["name"]: a for a in res["artifacts"]}
    eager = {"device_step_pytorch_eager", "device_step_pytorch_eager_train"}  # the program's baseline
    assert set(by_name) == {a["name"] for a in program["artifacts"]} | eager
    assert res["device"]["kind"] == "host" and res["partial"] is False
    for a in program["artifacts"]:
        r = by_name[a["name"]]
        assert r["sha256"] == a["sha256"]
        if a["format"] == "coreml":
            assert "macOS" in r["error"]
            continue
        assert not r["error"] and r["latency"]["n"] >= 10 and 0 < r["latency"]["p50_s"] <= r["latency"]["p99_s"]
        assert r["energy"]["source"] == "estimated:model" and r["energy"]["value"] > 0  # host: no RAPL
        assert r["peak_rss"]["source"].startswith("measured") and r["peak_rss"]["value"] > 0
        if a["kind"] == "training":
            assert r["per_sample_s"] == pytest.approx(r["latency"]["mean_s"] / r["batch_size"])
    assert (out / "results.json").is_file() and "<svg" in (out / "report.html").read_text()


def test_compare_two_results(host_profile, tmp_path):
    out, _ = host_profile
    shutil.copy(out / "results.json", tmp_path / "b.json")
    proc = run_dcl("profile", "--compare", str(out / "results.json"), str(tmp_path / "b.json"))
    assert proc.returncode == 0, proc.stderr
    assert "device_step_onnx" in proc.stdout and "1.00" in proc.stdout


def test_corrupt_bundle_is_one_line(bundle, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(bundle[0], bad)
    target = next(p for p in bad.iterdir() if p.suffix == ".tflite")
    target.write_bytes(target.read_bytes()[:-10] + b"0123456789")
    assert_one_line_error(run_dcl("profile", str(bad), "--out", str(tmp_path / "p")), "sha256")


def _fake_adb(tmp_path: Path, scenario: str) -> dict:
    exe = tmp_path / "adb"
    exe.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{FAKE}" "$@"\n')
    exe.chmod(0o755)
    tools = tmp_path / "tools" / "arm64-v8a"
    tools.mkdir(parents=True)
    for n in ("benchmark_model", "onnxruntime_perf_test", "executor_runner", "libonnxruntime.so"):
        (tools / n).write_bytes(b"\x7fELF stand-in")
    return {"DCL_ADB": str(exe), "FAKE_ADB_STATE": str(tmp_path / "state"), "FAKE_ADB_SCENARIO": scenario,
            "DCL_ANDROID_TOOLS": str(tmp_path / "tools" / "arm64-v8a")}


def test_adb_profile_on_a_phone(bundle, tmp_path):
    env = _fake_adb(tmp_path, "phone")
    proc = run_dcl("profile", str(bundle[0]), "--device", "37211FDJH000BC", "--out", str(tmp_path / "p"), "--json",
                   env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    res = json.loads(proc.stdout)
    assert res["device"]["kind"] == "phone" and "Pixel 8" in res["device"]["model"]
    inference = [a for a in res["artifacts"] if a["kind"] == "inference" and a["format"] != "coreml"]
    assert inference and all(not a["error"] and a["latency"]["mean_s"] > 0 for a in inference)
    assert all(a["energy"]["source"] in ("measured:power-rails", "measured:battery") for a in inference)
    training = [a for a in res["artifacts"] if a["kind"] == "training"]
    assert training and all("android_demo" in a["error"] for a in training)  # said, not faked


@pytest.mark.parametrize("scenario, needle", [("unauthorized", "unauthorized"), ("no_devices", "37211FDJH000BC")])
def test_adb_bad_device_is_one_line(bundle, tmp_path, scenario, needle):
    env = _fake_adb(tmp_path, scenario)
    assert_one_line_error(run_dcl("profile", str(bundle[0]), "--device", "37211FDJH000BC", "--out",
                                  str(tmp_path / "p"), env=env), needle)


def test_adb_disconnect_saves_partial_results(bundle, tmp_path):
    env = _fake_adb(tmp_path, "disconnect_always")
    proc = run_dcl("profile", str(bundle[0]), "--device", "37211FDJH000BC", "--out", str(tmp_path / "p"), env=env)
    # progress lines came first (the run had started); the error is one line, no traceback
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    errors = [l for l in proc.stderr.splitlines() if l.startswith("dcl: error:")]
    assert len(errors) == 1 and "disconnected" in errors[0] and "partial results saved" in errors[0]
    res = json.loads((tmp_path / "p" / "results.json").read_text())
    assert res["partial"] is True and res["partial_reason"]
