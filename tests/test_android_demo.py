"""The Android demo app, checked without the Android toolchain: Maven compiles every Kotlin source
of android_demo/ against the runtimes' classes (TFLite's real AARs, ONNX Runtime's Java API,
ExecuTorch's API sources; see android_demo/README.md) and Robolectric's android-all, then runs the
JUnit tests of its non-UI classes on a real bundle `dcl bundle` put into a copy of the app: hash
checks, a corrupted artifact and unknown format versions refused, the parser against
dcl_core/manifest.schema.json, the training loop on a fake runtime, and the app's ONNX Runtime code
on the real artifact against PyTorch's logits computed here. The weights file the Kotlin training
loop wrote must load with `dcl import-weights`, and its benchmark result with the harness's reader.

Needs `mvn` and the Maven dependencies fetched by scripts/setup_android.sh (the build runs offline).
"""
from __future__ import annotations

import json
import shutil
import subprocess
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import ROOT, run_dcl

DEMO = ROOT / "android_demo"
pytestmark = pytest.mark.skipif(shutil.which("mvn") is None,
                                reason="mvn is not installed (apt-get install maven; then scripts/setup_android.sh)")


def _app_copy(tmp: Path) -> Path:
    """The parts of android_demo/ that `dcl bundle` looks at (the real app is not written to)."""
    app = tmp / "app_copy"
    (app / "app" / "src" / "main").mkdir(parents=True)
    shutil.copy(DEMO / "settings.gradle.kts", app)
    shutil.copy(DEMO / "app" / "src" / "main" / "AndroidManifest.xml", app / "app" / "src" / "main")
    return app


def _pytorch_logits(run_dir: Path, x: np.ndarray) -> np.ndarray:
    from toolkit.methods.dcccl.export import device_step_program

    model = device_step_program(run_dir).model.eval()
    with torch.no_grad():
        return np.stack([model(torch.from_numpy(x[i:i + 1].copy()))[0].numpy() for i in range(len(x))])


@pytest.fixture(scope="module")
def jvm_run(bundle, tiny_run, tmp_path_factory):
    from toolkit.apps import bundle_into_app

    tmp = tmp_path_factory.mktemp("android_demo")
    app = _app_copy(tmp)
    summary = bundle_into_app(bundle[0], app)
    assets = Path(summary["assets"])
    index = json.loads((assets / "samples" / "index.json").read_text())
    xs = next(t for t in index["programs"]["device_step"]["tensors"] if t["name"] == "x")
    x = np.frombuffer((assets / xs["file"]).read_bytes(), dtype="<f4").reshape(xs["shape"])[:3]
    expected = tmp / "expected.json"
    expected.write_text(json.dumps({"artifact": "device_step_onnx", "tolerance": 1e-4,
                                    "logits": _pytorch_logits(tiny_run[0], x).tolist()}))
    out, reports = tmp / "out", tmp / "surefire-reports"  # fresh: no report of an earlier run can count
    t0 = time.monotonic()
    proc = subprocess.run(["mvn", "-q", "-o", "-B", "-f", str(DEMO / "pom.xml"), "test", f"-Ddcl.bundle={assets}",
                           f"-Ddcl.expected={expected}", f"-Ddcl.out={out}", f"-Ddcl.reports={reports}"],
                          capture_output=True, text=True, timeout=900)
    return proc, out, time.monotonic() - t0, summary, reports


def _reports(folder: Path) -> dict[str, dict[str, int]]:
    out = {}
    for f in folder.glob("TEST-*.xml"):
        r = ET.parse(f).getroot()
        out[r.get("name")] = {k: int(r.get(k)) for k in ("tests", "failures", "errors", "skipped")}
    return out


def test_maven_compiles_the_app_and_its_jvm_tests_pass(jvm_run):
    proc, out, seconds, summary, folder = jvm_run
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-6000:]
    reports = _reports(folder)
    assert {"org.dcl.demo.core.BundleTest", "org.dcl.demo.core.TrainingLoopTest",
            "org.dcl.demo.runtime.OrtInferenceTest"} <= set(reports), reports
    assert all(r["failures"] == 0 and r["errors"] == 0 for r in reports.values()), reports
    # every test ran except the ORT training refusal, which runs only for a host-step artifact
    assert sum(r["tests"] for r in reports.values()) >= 14
    assert reports["org.dcl.demo.core.BundleTest"]["skipped"] == 0
    assert reports["org.dcl.demo.core.TrainingLoopTest"]["skipped"] == 0
    assert summary["platform"] == "android" and len(summary["artifacts"]) == 6
    print(f"maven compile + JVM tests: {seconds:.1f} s")


def test_ort_code_of_the_app_matches_pytorch_on_the_jvm(jvm_run):
    proc, out, *_ = jvm_run
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    worst = float((out / "ort_jvm_max_abs_diff.txt").read_text())  # written only when the comparison ran
    assert worst <= 1e-4


def test_weights_the_kotlin_loop_wrote_load_with_import_weights(jvm_run, tiny_run, tmp_path):
    proc, out, *_ = jvm_run
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    run = tmp_path / "run"
    shutil.copytree(tiny_run[0], run)
    p = run_dcl("import-weights", str(run), str(out / "weights.safetensors"), "--name", "f_d_android")
    assert p.returncode == 0, p.stderr


def test_benchmark_result_the_app_writes_reads_in_the_harness(jvm_run):
    from runtime_harness.devices.app import parse_app_result

    proc, out, *_ = jvm_run
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    r = parse_app_result((out / "dcl_benchmark.json").read_text())
    assert r.kind == "training" and r.latency.n == 5 and r.batch_size == 32 and len(r.losses) == 8
