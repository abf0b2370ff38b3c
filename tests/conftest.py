"""Shared fixtures. Tests run the real data and models, scaled down to seconds."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("DCL_NO_PROGRESS", "1")
# Two test workers share two cores: one compute thread each (torch's OpenMP pool, inherited by the
# subprocesses tests start) instead of two that spin against each other (13% less user CPU on
# the ONNX, ExecuTorch and TFLite export tests).
os.environ.setdefault("OMP_NUM_THREADS", "1")

# A DC-CCL config small enough for a test (seconds), exercising every stage of the schedule.
TINY_TOML = """
[dcccl]
seed = 3
threads = 1
rounds = 1
cloud_copy_merge = true
cloud_copy_samples = 256
finetune_samples = 256

[dcccl.split]
widths = [16, 32, 64]
ratio = 3.0

[dcccl.mimic_model]
name = "mobilecnn_xs"

[dcccl.scenario]
num_devices = 2
cloud_train_limit = 1024
device_train_per_device = 256
overlap_per_device = 32
cloud_val = 256
test_limit = 256

[dcccl.cloud]
epochs = 4
batch_size = 64

[dcccl.mimic.optim]
epochs = 1
batch_size = 64

[dcccl.device]
epochs = 1
batch_size = 32

[dcccl.finetune]
epochs = 1
batch_size = 64
"""


@pytest.fixture
def tiny_config(tmp_path: Path) -> Path:
    p = tmp_path / "tiny.toml"
    p.write_text(TINY_TOML)
    return p


def run_dcl(*args: str, env: dict | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run the real `dcl` entry point in a subprocess (what a user runs)."""
    full_env = dict(os.environ, DCL_NO_PROGRESS="1", **(env or {}))
    return subprocess.run([sys.executable, "-m", "toolkit", *args], capture_output=True, text=True,
                          cwd=ROOT, env=full_env, timeout=timeout)


def assert_one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> None:
    """A user error: non-zero exit, no traceback, one line on stderr naming the problem."""
    assert proc.returncode != 0, proc.stdout
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [l for l in proc.stderr.strip().splitlines() if l.strip()]
    assert len(lines) == 1, proc.stderr
    for n in needles:
        assert n in lines[0], lines[0]


def built_once(tmp_path_factory, name: str, build) -> Path:
    """An expensive session result made once for all pytest-xdist workers: the first worker to
    need it runs `build(folder)` in the workers' common temporary folder under a file lock, the
    others wait and reuse it (the pattern pytest-xdist documents for session fixtures)."""
    from filelock import FileLock

    base = tmp_path_factory.getbasetemp()
    root = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    folder = root / name
    with FileLock(str(root / f"{name}.lock")):
        if not (folder / ".built").is_file():
            folder.mkdir(exist_ok=True)
            build(folder)
            (folder / ".built").touch()
    return folder


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """One tiny DC-CCL run shared by every test that needs a run directory: (path, metrics)."""
    import json

    def build(tmp: Path) -> None:
        (tmp / "tiny.toml").write_text(TINY_TOML)
        proc = run_dcl("train", "dcccl", "--config", str(tmp / "tiny.toml"), "--out", str(tmp / "run"), "--json")
        assert proc.returncode == 0, proc.stderr[-3000:]
        (tmp / "printed.json").write_text(proc.stdout)

    tmp = built_once(tmp_path_factory, "dcccl-tiny", build)
    return tmp / "run", json.loads((tmp / "printed.json").read_text())


@pytest.fixture(scope="session")
def bundle(tiny_run, tmp_path_factory):
    """The tiny run exported for host in every format, as a user runs it (no --json, so its
    progress lines go to stderr): (bundle path, its manifest, the command's stderr)."""
    import json

    def build(tmp: Path) -> None:
        proc = run_dcl("export", str(tiny_run[0]), "--target", "host", "--out", str(tmp / "host"))
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert proc.stdout.startswith(f"bundle written to {tmp / 'host'}"), proc.stdout
        (tmp / "stderr.txt").write_text(proc.stderr)

    tmp = built_once(tmp_path_factory, "dcccl-tiny-bundle", build)
    return tmp / "host", json.loads((tmp / "host" / "manifest.json").read_text()), (tmp / "stderr.txt").read_text()


def export_bn_train_external(out_dir: Path):
    """fused_cnn's training program with batch-statistics BN, written as .pte + .ptd (external
    weights): (example, its spec, the Artifact). Used by the exporter's and the native runner's tests."""
    import dataclasses

    from exporters.base import ExportJob
    from exporters.executorch.exporter import ExecuTorchExporter
    from toolkit.models.examples import fused_cnn

    ex = fused_cnn()
    spec = dataclasses.replace(ex.spec, bn="train")
    b0 = ex.batches[0]
    job = ExportJob(ex.model, (b0["x"],), ["x"], ["logits"], out_dir, "cnn_train", target=b0["y"], spec=spec,
                    options={"external_weights": True})
    return ex, spec, ExecuTorchExporter().export_training(job)


# The files that take longest, first: pytest-xdist hands whole files to its two workers in
# collection order, so the short ones fill in at the end instead of one long file running alone.
LONGEST_FIRST = ("test_corpus.py", "test_fleet_deploy.py", "test_arm64.py", "test_native_runner.py",
                 "test_fleet_flower.py", "test_iciia.py", "test_export_dcccl.py", "test_coda.py")


def pytest_collection_modifyitems(session, config, items):
    rank = {name: k for k, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: order within a file kept
