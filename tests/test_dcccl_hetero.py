"""Heterogeneous mode: the pre-trained EfficientNet-Lite0 as f_c, small CNNs as f_d and g."""
import json

from conftest import run_dcl


def test_hetero_mode_trains_with_pretrained_efficientnet(tmp_path):
    cfg = tmp_path / "hetero.toml"
    cfg.write_text("""
[dcccl]
mode = "hetero"
threads = 1
rounds = 1
[dcccl.cloud_model]
name = "efficientnet_lite0"
image_size = 32
[dcccl.device_model]
name = "mobilecnn_xs"
[dcccl.mimic_model]
name = "mobilecnn_xs"
[dcccl.scenario]
num_devices = 1
cloud_train_limit = 256
device_train_per_device = 128
cloud_val = 64
test_limit = 64
[dcccl.cloud]
epochs = 1
batch_size = 32
[dcccl.mimic.optim]
epochs = 1
batch_size = 32
[dcccl.device]
epochs = 1
batch_size = 32
""")
    out = tmp_path / "run"
    proc = run_dcl("train", "dcccl", "--config", str(cfg), "--out", str(out), "--json")
    assert proc.returncode == 0, proc.stderr[-2000:]
    m = json.loads(proc.stdout)
    s = m["sizes"]
    assert s["f_c"]["params"] > 3_000_000  # the real EfficientNet-Lite0 backbone
    # the phone receives well under 1% of the cloud model's bytes (two ~14 kB CNNs vs ~13.7 MB)
    assert s["down_vs_cloud"] == (s["f_d"]["bytes"] + s["g"]["bytes"]) / s["f_c"]["bytes"] < 0.01
    again = run_dcl("eval", str(out), "--json")  # rebuilt without ImageNet weights, from the checkpoint
    assert again.returncode == 0, again.stderr[-2000:]
    assert json.loads(again.stdout)["results"] == {k: {kk: vv for kk, vv in v.items()} for k, v in m["results"].items()}
