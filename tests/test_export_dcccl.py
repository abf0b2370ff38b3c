"""`dcl export` of a DC-CCL run: the bundle contract, real-data validation, failure leaves nothing."""
import json

import numpy as np
import pytest
import torch
from conftest import assert_one_line_error, run_dcl
from safetensors.torch import load_file, save_file

from dcl_core.bundle import load_manifest
from exporters.runner import open_training

ARTIFACT_KEYS = {"name", "path", "format", "kind", "sha256", "bytes", "inputs", "outputs", "trainable", "loss",
                 "optimizer", "validation"}


def test_manifest_contract(bundle):
    out, raw, _ = bundle
    assert raw["format_version"] == 2 and raw["method"] == "dcccl" and raw["target"] == "host"
    assert raw["created"] and raw["tool_versions"]["executorch"] == "1.5.1"
    assert raw["tool_versions"]["onnxruntime-training"] == "1.19.2"
    (program,) = raw["programs"]  # DC-CCL ships one program
    assert program["name"] == "device_step" and program["extra"]["num_classes"] == 20
    kinds = {(a["format"], a["kind"]) for a in program["artifacts"]}
    for fmt in ("executorch", "onnx", "tflite"):
        assert {(fmt, "inference"), (fmt, "training")} <= kinds
    assert ("coreml", "inference") in kinds
    # Core ML cannot express the controlled step: recorded with its reason, never silently dropped
    assert [(e["format"], e["kind"]) for e in program["not_exported"]] == [("coreml", "training")]
    for a in program["artifacts"]:
        assert ARTIFACT_KEYS <= set(a)
        v = a["validation"]
        assert v["passed"] is True
        if a["format"] == "coreml":
            assert v["checked"] is False and "macOS" in v["reason"]
        elif a["kind"] == "inference":
            assert v["checked"] and v["max_abs_diff"] <= v["tolerance"] <= 1e-4
            assert v["inputs_checked"] == ["random", "given_0", "given_1"]  # random + real digit + real fashion
        else:
            assert v["checked"] and v["steps"] >= 10 and v["max_rel_loss_diff"] <= 1e-4
            assert v["max_rel_weight_diff"] <= 1e-4
            assert a["trainable"] and all(n.startswith("f_d.") for n in a["trainable"])  # f_d only; g frozen
            assert a["loss"] == "cross_entropy" and a["optimizer"]["name"] == "sgd"
    load_manifest(out)  # every file's sha256 verifies


@pytest.mark.parametrize("fmt", ["executorch", "onnx", "tflite"])
def test_trained_weights_come_back_and_import_into_the_run(bundle, tiny_run, tmp_path, fmt):
    """Train a few steps in the runtime, take f_d's weights out, load them into PyTorch."""
    out = bundle[0]
    manifest = load_manifest(out)
    art = next(a for a in manifest.artifacts if a.format == fmt and a.kind == "training")
    runner = open_training(fmt, out / art.path, art)
    shape = art.inputs[0].shape
    g = torch.Generator().manual_seed(0)
    for _ in range(3):
        runner.train_step({"x": torch.rand(shape, generator=g).numpy(),
                           "y": torch.randint(10, 20, (shape[0],), generator=g).numpy()})
    weights = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in runner.get_weights().items()}
    save_file(weights, str(tmp_path / "w.safetensors"))
    run = tmp_path / "run"
    import shutil

    shutil.copytree(tiny_run[0], run)
    proc = run_dcl("import-weights", str(run), str(tmp_path / "w.safetensors"), "--name", f"f_d_{fmt}")
    assert proc.returncode == 0, proc.stderr
    got = load_file(str(run / "checkpoints" / f"f_d_{fmt}.safetensors"))
    before = load_file(str(run / "checkpoints" / "f_d.safetensors"))
    changed = [k for k in art.trainable if not torch.equal(got[k.removeprefix("f_d.")], before[k.removeprefix("f_d.")])]
    assert changed  # training moved f_d, and what moved is what came back
    for k in art.trainable:
        assert torch.equal(got[k.removeprefix("f_d.")], weights[k].reshape(got[k.removeprefix("f_d.")].shape))


def test_export_unknown_formats_and_missing_run(tiny_run, tmp_path):
    assert_one_line_error(run_dcl("export", str(tiny_run[0]), "--target", "pixel-8", "--formats", "coreml",
                                  "--out", str(tmp_path / "b")), "does not run coreml")
    assert_one_line_error(run_dcl("export", str(tmp_path / "nope"), "--target", "host", "--out", str(tmp_path / "b")),
                          "does not exist")
    assert not (tmp_path / "b").exists()


def test_simulate_in_a_runtime_agrees_with_pytorch(tiny_run):
    """Every device's controlled step runs inside the ONNX Runtime training artifact, weights come
    back through the runtime, the cloud merges; the same simulation in PyTorch agrees."""
    proc = run_dcl("simulate", str(tiny_run[0]), "--runtime", "onnxruntime", "--devices", "2",
                   "--rounds", "1", "--epochs", "1", "--noise-floor", "--json")
    assert proc.returncode == 0, proc.stderr[-2000:]
    res = json.loads(proc.stdout)
    # the canonical format name, and PyTorch once more from a start 1 ulp away
    assert res["steps"] > 0 and set(res["accuracy"]) == {"pytorch", "onnx", "pytorch_1ulp"}
    assert res["union_gap"] <= 0.5
    union = {e: a["union_test"] for e, a in res["accuracy"].items()}
    assert res["noise_floor"] == pytest.approx(abs(union["pytorch_1ulp"] - union["pytorch"]))
    assert res["union_gap"] == pytest.approx(abs(union["onnx"] - union["pytorch"]))


def test_nudged_start_is_one_ulp_away_in_both_directions():
    from toolkit.methods.dcccl.simulate import nudged

    state = {"w": torch.randn(64, 32), "b": torch.randn(32), "frozen": torch.randn(8)}
    out = nudged(state, ["w", "b"], seed=3)
    assert torch.equal(out["frozen"], state["frozen"])
    for n in ("w", "b"):
        moved_up = out[n] > state[n]
        assert not torch.equal(out[n], state[n]) and (out[n] != state[n]).all()
        assert 0 < moved_up.sum() < moved_up.numel()  # some up, some down
        # exactly one representable float away: stepping back lands on the original
        back = torch.nextafter(out[n], torch.where(moved_up, torch.tensor(-float("inf")), torch.tensor(float("inf"))))
        assert torch.equal(back, state[n])
    assert torch.equal(nudged(state, ["w"], seed=3)["w"], out["w"])  # seeded


def test_noise_floor_is_refused_where_simulate_has_none(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"method": "iciia", "config": {}}))
    assert_one_line_error(run_dcl("simulate", str(tmp_path), "--runtime", "onnx", "--noise-floor"),
                          "iciia's simulate has no --noise-floor")
