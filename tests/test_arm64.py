"""The arm64 device: a small model's inference and training artifacts run as aarch64 code under
qemu (ExecuTorch in the cross-compiled native runner, LiteRT through its aarch64 wheel), match
PyTorch on the host, and their guest instruction counts repeat within 1%. The set-up makes the
environment (scripts/setup.sh); a missing one is one line naming `make setup`."""
from __future__ import annotations

import copy
import dataclasses
import json

import pytest
import torch

import exporters
from conftest import assert_one_line_error, run_dcl
from dcl_core.errors import DeviceError
from runtime_harness.devices import arm64
from runtime_harness.devices.arm64.device import Arm64Plan, profile_artifact
from runtime_harness.profile import Baseline
from toolkit.models.examples import fused_cnn

PLAN = Arm64Plan(steps=3, calls=(2, 4), repeats=2)


@pytest.fixture(scope="module")
def env():
    return arm64.locate()  # made by the set-up; a DeviceError here means `make setup` was not run


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    ex = fused_cnn()
    out = tmp_path_factory.mktemp("arm64") / "bundle"
    m = exporters.export_model(ex.model, ex.inputs, formats=["executorch", "tflite"], out_dir=out, training=ex.spec,
                               input_names=ex.input_names, output_names=ex.output_names,
                               train_batches=ex.batches, log=lambda *a: None)
    return ex, out, m


def _inputs(ex, kind: str) -> dict:
    if kind == "training":
        return {k: v.numpy() for k, v in ex.batches[0].items()}
    return {"x": ex.inputs[0].numpy()}


# The repeat check on ExecuTorch (a native process per run, quick); LiteRT (a Python process in the
# guest per run, the slowest part of this file) is counted once, its parity checked the same.
COUNTED_TWICE = [("executorch", "inference"), ("executorch", "training")]


@pytest.fixture(scope="module")
def results(env, small):
    ex, out, m = small
    base = Baseline(ex.model, ex.spec)
    once = dataclasses.replace(PLAN, repeats=1)
    return {(a.format, a.kind): profile_artifact(env, out, a, _inputs(ex, a.kind), base,
                                                 PLAN if (a.format, a.kind) in COUNTED_TWICE else once)
            for a in m.artifacts}


@pytest.mark.parametrize("fmt", ["executorch", "tflite"])
@pytest.mark.parametrize("kind", ["inference", "training"])
def test_runs_on_arm_and_matches_pytorch(results, fmt, kind):
    r = results[(fmt, kind)]
    assert not r.error, r.error
    assert r.provenance == "emulated:qemu-aarch64" and "qemu-aarch64" in r.runtime
    assert ("native runner" in r.runtime) == (fmt == "executorch")
    p = r.parity
    assert p.passed, p.reason
    assert p.reference == "pytorch eager (host)"
    if kind == "inference":
        assert p.max_abs_diff is not None and p.max_abs_diff <= 1e-4
    else:
        assert p.steps == PLAN.steps and p.max_rel_loss_diff <= 1e-4 and p.max_rel_weight_diff <= 1e-4
    # what the emulator cannot say is not reported as if it could
    assert r.latency is None and not r.peak_rss.available and not r.energy.available


@pytest.mark.parametrize("key", COUNTED_TWICE)
def test_instruction_counts_repeat_within_one_percent(results, key):
    n = results[key].instructions
    assert len(n.repeats) == PLAN.repeats and n.count > 10_000
    assert (max(n.repeats) - min(n.repeats)) / n.count <= 0.01, n.repeats
    assert n.per == ("training step" if key[1] == "training" else "inference")


def test_training_costs_more_instructions_than_inference(results):
    for fmt in ("executorch", "tflite"):  # a batch of 8 forward + backward vs one forward
        assert results[(fmt, "training")].instructions.count > results[(fmt, "inference")].instructions.count


def test_a_different_reference_fails_parity(env, small):
    """Parity can fail: against a model whose weights differ, the gate's rule refuses the outputs."""
    ex, out, m = small
    other = copy.deepcopy(ex.model)
    with torch.no_grad():
        for p in other.parameters():
            p.mul_(1.01)
    art = next(a for a in m.artifacts if a.format == "executorch" and a.kind == "inference")
    r = profile_artifact(env, out, art, _inputs(ex, "inference"), Baseline(other), Arm64Plan(repeats=1))
    assert not r.parity.passed and "pytorch" in r.parity.reason.lower()


@pytest.fixture(scope="module")
def inference_only(small, tmp_path_factory):
    """The CNN's ExecuTorch inference artifact alone: the CLI path, kept quick."""
    ex, _, _ = small
    out = tmp_path_factory.mktemp("arm64_cli") / "bundle"
    m = exporters.export_model(ex.model, ex.inputs, formats=["executorch"], out_dir=out, input_names=ex.input_names,
                               output_names=ex.output_names, log=lambda *a: None)
    return ex, out, m


def test_cli_profile_on_arm64_without_a_model_compares_with_the_host_runtime(inference_only, tmp_path):
    _, out, m = inference_only
    proc = run_dcl("profile", str(out), "--device", "arm64", "--out", str(tmp_path / "p"), "--json")
    assert proc.returncode == 0, proc.stderr[-2000:]
    res = json.loads(proc.stdout)
    assert res["device"]["kind"] == "arm64" and res["device"]["is_emulator"] is True
    assert {a["name"] for a in res["artifacts"]} == {a.name for a in m.artifacts}
    for a in res["artifacts"]:
        assert not a["error"], a["error"]
        assert a["parity"]["passed"] and a["parity"]["reference"] == f"{a['format']} (host)"
        assert a["instructions"]["count"] > 0 and "qemu" in a["instructions"]["how"]
        assert a["provenance"] == "emulated:qemu-aarch64"
    page = (tmp_path / "p" / "report.html").read_text()
    assert "Parity and instruction counts (emulated:qemu-aarch64)" in page and "not a phone" in page


def test_missing_environment_is_one_line(inference_only, tmp_path, monkeypatch):
    _, out, _ = inference_only
    monkeypatch.setenv("DCL_BUILD_CACHE", str(tmp_path / "empty"))
    with pytest.raises(DeviceError, match="make setup"):
        arm64.locate()
    proc = run_dcl("profile", str(out), "--device", "arm64", "--out", str(tmp_path / "p"),
                   env={"DCL_BUILD_CACHE": str(tmp_path / "empty")})
    assert_one_line_error(proc, "arm64 environment is not made")
    assert not (tmp_path / "p").exists()
