"""The native ExecuTorch runner (exporters/executorch/native, C++ against the wheel's libraries):
its inference and training match PyTorch, `dcl profile` uses it by default and labels it, the
Python bindings stay one flag away, and bad input stops it with one line."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

import exporters
from conftest import export_bn_train_external, run_dcl
from dcl_core.bundle import Manifest
from dcl_core.errors import BundleError
from exporters.executorch import native
from exporters.gate import reference_training
from runtime_harness.devices.native import NativePlan, run_native
from runtime_harness.profile import ProfilePlan, profile_bundle
from toolkit.models.examples import fused_cnn

ATOL, RTOL = 1e-4, 1e-5


@pytest.fixture(scope="module")
def cnn(tmp_path_factory) -> tuple[object, Path, Manifest]:
    native.build(log=lambda *a: None)  # the set-up built it already; a no-op then
    ex, out = fused_cnn(), tmp_path_factory.mktemp("native") / "bundle"
    m = exporters.export_model(ex.model, ex.inputs, formats=["executorch"], out_dir=out, training=ex.spec,
                               input_names=ex.input_names, output_names=ex.output_names,
                               train_batches=ex.batches, log=lambda *a: None)
    return ex, out, m


def _artifact(m: Manifest, kind: str):
    return next(a for a in m.artifacts if a.kind == kind)


def test_inference_matches_pytorch(cnn):
    ex, out, m = cnn
    art = _artifact(m, "inference")
    x = torch.rand(1, 1, 28, 28, generator=torch.Generator().manual_seed(7))
    run = run_native(out / art.path, art, {"x": x.numpy()}, NativePlan(runs=3, warmup=1), dump=True)
    with torch.no_grad():
        ref = ex.model(x).numpy()
    got = run.dumped["output_0"]
    assert got.shape == ref.shape
    assert np.all(np.abs(got - ref) <= ATOL + RTOL * np.abs(ref)), np.max(np.abs(got - ref))
    assert run.runtime == "executorch (native runner)"
    assert len(run.output.timings.samples_s) == 3 and run.output.timings.init_s is not None


def _check_training(model, spec, art, path: Path, batch: dict[str, torch.Tensor], steps: int = 10) -> None:
    run = run_native(path, art, {k: v.numpy() for k, v in batch.items()}, NativePlan(runs=steps - 1, warmup=0),
                     dump=True)
    ref_losses, ref_weights = reference_training(model, spec, [batch], "y", steps)
    got = run.output.losses
    assert len(got) == steps
    assert max(abs(a - b) / max(abs(b), 1.0) for a, b in zip(got, ref_losses)) <= 1e-4, (got, ref_losses)
    assert ref_losses[-1] < ref_losses[0]  # it trained: the comparison is not between two constants
    assert set(run.dumped) == set(ref_weights)
    for name, ref in ref_weights.items():
        r = ref.numpy()
        assert np.max(np.abs(run.dumped[name] - r)) / max(np.max(np.abs(r)), 1e-6) <= 1e-4, name


def test_training_steps_match_pytorch(cnn):
    """Forward/backward in the C++ runtime, the SGD step (momentum 0.9) in the runner: ten steps'
    losses and the final weights as PyTorch computes them."""
    ex, out, m = cnn
    art = _artifact(m, "training")
    _check_training(ex.model, ex.spec, art, out / art.path, ex.batches[0])


def test_training_with_external_weights_and_batch_statistics(tmp_path):
    """The .pte + .ptd layout (weights in the data file) and train-mode BatchNorm."""
    ex, spec, art = export_bn_train_external(tmp_path)
    assert art.details["data"]
    _check_training(ex.model, spec, art, tmp_path / art.path, ex.batches[0])


def test_profile_uses_the_native_runner_and_labels_both(cnn, tmp_path):
    _, out, _ = cnn
    plan = ProfilePlan(runs=5, min_duration_s=0.0, warmup=1)
    native_res = profile_bundle(out, "host", tmp_path / "native", plan, log=lambda *a: None)
    assert {a.kind for a in native_res.artifacts} == {"inference", "training"}
    for a in native_res.artifacts:  # the Python-bindings label: test_cli_flag_selects_the_python_bindings
        assert not a.error, a.error
        assert a.runtime == "executorch (native runner)"
        assert a.load_s is not None and a.load_s > 0 and a.latency.n >= 5
        assert a.peak_rss.available and a.energy.available
    for a in native_res.artifacts:
        assert "python" not in a.runtime
        assert a.peak_rss.source == "measured:vmhwm" and "VmHWM of the runner process" in a.peak_rss.note
        assert a.latency.source == "measured:tool"
    saved = json.loads((tmp_path / "native" / "results.json").read_text())
    assert {a["runtime"] for a in saved["artifacts"]} == {"executorch (native runner)"}


def test_profile_falls_back_to_the_bindings_when_the_runner_is_not_built(cnn, tmp_path, monkeypatch):
    _, out, _ = cnn
    monkeypatch.setenv("DCL_BUILD_CACHE", str(tmp_path / "empty-cache"))
    said: list[str] = []
    res = profile_bundle(out, "host", tmp_path / "p", ProfilePlan(runs=3, min_duration_s=0.0, warmup=0),
                         log=said.append)
    assert {a.runtime for a in res.artifacts} == {"executorch (python bindings)"}
    assert any("not built" in s and "make setup" in s for s in said), said


def test_cli_flag_selects_the_python_bindings(cnn, tmp_path):
    _, out, _ = cnn
    proc = run_dcl("profile", str(out), "--runs", "3", "--duration", "0", "--python-bindings", "--out",
                   str(tmp_path / "p"), "--json")
    assert proc.returncode == 0, proc.stderr[-2000:]
    arts = json.loads(proc.stdout)["artifacts"]
    assert {a["runtime"] for a in arts} == {"executorch (python bindings)"} and len(arts) == 2
    for a in arts:
        assert not a["error"] and a["load_s"] > 0 and a["latency"]["n"] >= 3 and a["peak_rss"]["value"] is not None


def test_a_corrupt_program_is_one_line(cnn, tmp_path):
    _, out, m = cnn
    art = _artifact(m, "inference")
    bad = tmp_path / "bad.pte"
    bad.write_bytes(b"not a program" * 100)
    with pytest.raises(BundleError, match=r"native runner could not run .*cannot load program"):
        run_native(bad, art, {"x": np.zeros((1, 1, 28, 28), np.float32)}, NativePlan(runs=1, warmup=0))


@pytest.mark.parametrize("args, needle", [
    (["--model=x.pte", "--bogus=1"], "unknown argument --bogus"),
    (["--model=x.pte", "--runs=0"], "--runs needs a whole number"),
    (["--model=x.pte", "--lr=nan"], "--lr needs a finite number"),
    (["--mode=train"], "--model=<program.pte> is required"),
    (["--model=x.pte", "positional"], "arguments are --name=value"),
])
def test_runner_refuses_bad_arguments(args, needle):
    found = native.locate()
    assert found.binary is not None, found.why
    argv, env = native.command(found.binary, args)
    p = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=60)
    assert p.returncode == 2
    errors = [ln for ln in p.stderr.splitlines() if ln.startswith("DCL-ERROR")]
    assert len(errors) == 1 and needle in errors[0], p.stderr


def test_an_input_of_the_wrong_size_is_refused(cnn, tmp_path):
    _, out, m = cnn
    art = _artifact(m, "inference")
    x = tmp_path / "x.bin"
    np.zeros(5, np.float32).tofile(x)
    found = native.locate()
    argv, env = native.command(found.binary, [*native.program_args(out / art.path, art), f"--input={x}"])
    p = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=60)
    assert p.returncode == 2 and "has 20 bytes, input 0 needs 3136" in p.stderr


def test_the_build_is_keyed_by_its_sources(monkeypatch, tmp_path):
    key = native.build_key()
    assert native.binary_path().parent.name == key
    src = tmp_path / "src"
    src.mkdir()
    for name in native.SOURCES:
        (src / name).write_bytes((native.SOURCE_DIR / name).read_bytes())
    monkeypatch.setattr(native, "SOURCE_DIR", src)
    assert native.build_key() == key
    (src / "dcl_et_runner.cpp").write_text((src / "dcl_et_runner.cpp").read_text() + "\n// changed\n")
    assert native.build_key() != key
