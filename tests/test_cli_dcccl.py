"""`dcl train dcccl` and `dcl eval` end to end on a tiny config (real data, real models)."""
import json
import shutil

import pytest
from safetensors.torch import load_file
from conftest import assert_one_line_error, run_dcl

RESULT_KEYS = {"cloud_only", "device_only", "dcccl_mimic", "dcccl_oracle"}


def test_train_writes_the_documented_run(tiny_run):
    out, printed = tiny_run
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["method"] == "dcccl" and set(metrics["results"]) == RESULT_KEYS
    for r in metrics["results"].values():
        # both test sets are capped at 256 images (test_limit): the union's accuracy is their mean
        assert abs(r["union_test"] - (r["cloud_test"] + r["device_test"]) / 2) <= 0.01, r
    # the cloud model never saw a device class: it gets none of the device test set right
    assert metrics["results"]["cloud_only"]["device_test"] == 0.0
    assert printed["results"] == metrics["results"]
    s = metrics["sizes"]
    assert s["down_to_device_bytes"] == s["f_d"]["bytes"] + s["g"]["bytes"]
    assert s["up_to_cloud_bytes"] == s["f_d"]["bytes"] and s["f_c"]["params"] > s["f_d"]["params"]
    for name in ("f_c", "g", "f_d", "f_d_oracle", "f_d_device_only"):
        assert (out / "checkpoints" / f"{name}.safetensors").is_file()
    # the byte counts are what the checkpoints hold, and the ratio is theirs: (f_d + g) / f_c
    for name in ("f_c", "g", "f_d"):
        tensors = load_file(str(out / "checkpoints" / f"{name}.safetensors")).values()
        assert s[name]["bytes"] == sum(t.numel() * t.element_size() for t in tensors)
    # (above 1 here: the tiny config's f_c is small; the documented runs' ratios are 0.29 and 0.0077)
    assert s["down_vs_cloud"] == (s["f_d"]["bytes"] + s["g"]["bytes"]) / s["f_c"]["bytes"]
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["method"] == "dcccl" and cfg["config"]["split"]["ratio"] == 3.0
    assert not list(out.parent.glob(".run.tmp-*"))  # the temp dir was renamed, not left behind


def test_results_are_sane_for_each_baseline(tiny_run):
    r = tiny_run[1]["results"]
    # f_c never saw a digit and has no logits for digit classes; f_d alone saw few fashion images
    assert r["cloud_only"]["device_test"] == 0.0
    assert r["cloud_only"]["cloud_test"] > 25.0  # well above the 10% of chance after 64 steps
    assert r["device_only"]["device_test"] > r["cloud_only"]["device_test"]


def test_eval_reproduces_the_metrics(tiny_run):
    out, printed = tiny_run
    proc = run_dcl("eval", str(out), "--json")
    assert proc.returncode == 0, proc.stderr
    again = json.loads(proc.stdout)
    for name in RESULT_KEYS:
        for k in ("cloud_test", "device_test", "union_test"):
            assert again["results"][name][k] == pytest.approx(printed["results"][name][k], abs=1e-6)
    table = run_dcl("eval", str(out))
    assert "dcccl_mimic" in table.stdout and "union_test" in table.stdout
    assert f"(f_d + g) / f_c: {printed['sizes']['down_vs_cloud']:.3g}" in table.stdout


def test_eval_missing_run_dir_is_one_line(tmp_path):
    assert_one_line_error(run_dcl("eval", str(tmp_path / "nope")), "does not exist")


def test_eval_missing_checkpoint_is_one_line(tiny_run, tmp_path):
    out = tmp_path / "copy"
    shutil.copytree(tiny_run[0], out)
    (out / "checkpoints" / "g.safetensors").unlink()
    assert_one_line_error(run_dcl("eval", str(out)), "g.safetensors", "missing")


def test_eval_corrupt_checkpoint_is_one_line(tiny_run, tmp_path):
    out = tmp_path / "copy"
    shutil.copytree(tiny_run[0], out)
    (out / "checkpoints" / "f_c.safetensors").write_bytes(b"\x80\x04not a checkpoint")
    assert_one_line_error(run_dcl("eval", str(out)), "f_c.safetensors", "corrupt")


def test_eval_corrupt_config_is_one_line(tiny_run, tmp_path):
    out = tmp_path / "copy"
    shutil.copytree(tiny_run[0], out)
    (out / "config.json").write_text("{ not json")
    assert_one_line_error(run_dcl("eval", str(out)), "config.json")


def test_import_weights_roundtrip_and_errors(tiny_run, tmp_path):
    import numpy as np
    from safetensors.torch import save_file

    out = tmp_path / "copy"
    shutil.copytree(tiny_run[0], out)
    f_d = load_file(str(out / "checkpoints" / "f_d.safetensors"))
    # what a runtime returns: trainable parameters of the device program, "f_d."-prefixed
    returned = {f"f_d.{k}": v + 0.5 for k, v in f_d.items() if "running" not in k and "num_batches" not in k}
    save_file(returned, str(tmp_path / "w.safetensors"))
    proc = run_dcl("import-weights", str(out), str(tmp_path / "w.safetensors"))
    assert proc.returncode == 0, proc.stderr
    got = load_file(str(out / "checkpoints" / "f_d_imported.safetensors"))
    for k, v in returned.items():
        assert (got[k.removeprefix("f_d.")] == v).all()
    assert (got["features.0.1.running_mean"] == f_d["features.0.1.running_mean"]).all()

    np.savez(tmp_path / "w.npz", **{k: v.numpy() for k, v in returned.items()})
    assert run_dcl("import-weights", str(out), str(tmp_path / "w.npz"), "--name", "npz").returncode == 0

    bad = dict(returned)
    bad["f_d.classifier.weight"] = bad["f_d.classifier.weight"][:, :3].contiguous()
    save_file(bad, str(tmp_path / "bad.safetensors"))
    assert_one_line_error(run_dcl("import-weights", str(out), str(tmp_path / "bad.safetensors")), "shape")
    assert_one_line_error(run_dcl("import-weights", str(out), str(tmp_path / "none.safetensors")), "does not exist")
