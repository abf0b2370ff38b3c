"""Cloud-side loops run unchanged under torchrun (2 processes, gloo on CPU) and agree with one process."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import ROOT, TINY_TOML
from safetensors.torch import load_file

WORKER = Path(__file__).with_name("ddp_fit_worker.py")
ENV = dict(os.environ, DCL_NO_PROGRESS="1", OMP_NUM_THREADS="1", PYTHONPATH=f"{ROOT}:{ROOT / 'tests'}")


def _torchrun(*args: str) -> subprocess.CompletedProcess:
    # --standalone: a local rendezvous on a free loopback port
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *args]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=ENV, timeout=600)


def test_two_process_ddp_fit_equals_single_process(tmp_path):
    """Frozen BN statistics (train_mode=False) make the math identical: same samples per global
    step, DDP's mean of equal-sized per-rank mean gradients = the single process's mean."""
    single = subprocess.run([sys.executable, str(WORKER), str(tmp_path / "one"), "eval"], capture_output=True,
                            text=True, cwd=ROOT, env=ENV, timeout=600)
    assert single.returncode == 0, single.stderr[-2000:]
    multi = _torchrun(str(WORKER), str(tmp_path / "two"), "eval")
    assert multi.returncode == 0, multi.stderr[-3000:]
    one, two = load_file(str(tmp_path / "one.safetensors")), load_file(str(tmp_path / "two.safetensors"))
    meta = json.loads((tmp_path / "two.json").read_text())
    assert meta["world"] == 2
    for k in one:
        assert torch.allclose(one[k].float(), two[k].float(), atol=1e-5, rtol=1e-4), k
    losses = json.loads((tmp_path / "one.json").read_text())["loss"]
    assert losses[-1] < losses[0]  # it trained
    assert losses == pytest.approx(meta["loss"], rel=1e-4)


def test_two_process_ddp_fit_with_batch_statistics_stays_close(tmp_path):
    """Train-mode BN: on CPU each process normalises with its half of the batch (no SyncBatchNorm
    on gloo), so results are close, not identical."""
    single = subprocess.run([sys.executable, str(WORKER), str(tmp_path / "one"), "train"], capture_output=True,
                            text=True, cwd=ROOT, env=ENV, timeout=600)
    assert single.returncode == 0, single.stderr[-2000:]
    multi = _torchrun(str(WORKER), str(tmp_path / "two"), "train")
    assert multi.returncode == 0, multi.stderr[-3000:]
    a = json.loads((tmp_path / "one.json").read_text())["loss"]
    b = json.loads((tmp_path / "two.json").read_text())["loss"]
    assert a[-1] < a[0] and b[-1] < b[0]
    assert b == pytest.approx(a, rel=0.1)


def test_dcl_train_runs_under_torchrun(tmp_path):
    cfg = tmp_path / "tiny.toml"
    cfg.write_text(TINY_TOML)
    out = tmp_path / "run"
    proc = _torchrun("-m", "toolkit", "train", "dcccl", "--config", str(cfg), "--out", str(out), "--json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["world_size"] == 2 and set(metrics["results"]) == {
        "cloud_only", "device_only", "dcccl_mimic", "dcccl_oracle"}
    assert metrics["results"]["cloud_only"]["cloud_test"] > 25.0
