"""The device rounds as a Flower app on the Simulation Engine (Ray): the merged weights equal the
in-process reference loop's within float32 rounding, a client with NaN weights or a malformed
request is refused and the round goes on, a client that crashes is left out; the same app on a
Ray cluster named by RAY_ADDRESS; CoDA's app through `dcl fleet --json`. (DC-CCL's app through
the CLI: tests/test_fleet_deploy.py and `dcl simulate` in tests/test_export_dcccl.py; ICIIA's:
tests/test_iciia.py.)"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from conftest import run_dcl
from exporters.reference import PyTorchTraining
from exporters.spec import TrainingSpec
from runtime_harness.fleet.flower import ClientResult, FleetSettings, FleetTask, RoundLog, check_update, run_simulation
from runtime_harness.fleet.local import train_locally, weighted_average

pytest.importorskip("flwr")

CLIENTS = 4


def _toy_task(poisoned: set[int] = frozenset(), crashing: set[int] = frozenset(), bad_request: set[int] = frozenset(),
              from_round: int = 1, seen: list | None = None) -> FleetTask:
    """Four clients training a small linear classifier in PyTorch (the reference runtime), each
    asking the cloud first (a request step, as CoDA's augmentation); the poisoned, crashing and
    bad-request clients misbehave from round `from_round` on; `seen` collects the merged weights
    the cloud evaluates after each round."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 3)).eval()
    spec = TrainingSpec(trainable=["*"], loss="cross_entropy", lr=0.1, momentum=0.9, batch_size=8)
    rng = np.random.default_rng(0)
    data = [[{"x": rng.random((8, 6), dtype=np.float32), "y": rng.integers(0, 3, 8).astype(np.int64)}
             for _ in range(2)] for _ in range(CLIENTS)]
    start = {n: p.detach().numpy().copy() for n, p in model.named_parameters()}

    def batches(cid: int, server_round: int):
        if cid in crashing and server_round >= from_round:
            raise RuntimeError(f"client {cid} crashed")
        if cid in poisoned and server_round >= from_round:
            return [{"x": np.full((8, 6), np.nan, np.float32), "y": b["y"]} for b in data[cid]]
        return data[cid]

    def client_round(cid: int, server_round: int, model_down, _answer) -> ClientResult:
        weights, steps = train_locally(lambda: PyTorchTraining(model, spec, threads=1), model_down,
                                       batches(cid, server_round))
        return ClientResult({"steps": steps}, 10 + cid, weights)

    def evaluate(weights: dict[str, np.ndarray], _client_metrics) -> dict[str, float]:
        if seen is not None:
            seen.append(weights)
        return {"norm": float(sum(np.abs(v).sum() for v in weights.values()))}

    def request(cid: int, server_round: int, _model) -> dict[str, np.ndarray]:
        bad = cid in bad_request and server_round >= from_round
        return {"n": np.array([np.nan if bad else cid], np.float32)}

    def answer(req: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if not np.all(np.isfinite(req["n"])):
            raise ValueError("the request is not finite")
        return {"ok": np.ones(1, np.float32)}

    return FleetTask(start=start, client_round=client_round, evaluate=evaluate, clients=CLIENTS, headline="norm",
                     request=request, answer=answer)


def reference_round(task: FleetTask, start: dict[str, np.ndarray], server_round: int) -> dict[str, np.ndarray]:
    """The in-process loop the Flower app replaced: every client trains in turn, the cloud averages
    by sample count."""
    states, sizes = [], []
    for k in range(CLIENTS):
        result = task.client_round(k, server_round, start, {})
        states.append({n: torch.from_numpy(w) for n, w in result.weights.items()})
        sizes.append(result.size)
    return {n: v.numpy() for n, v in weighted_average(states, sizes).items()}


def test_check_update_names_shapes_and_finite_values():
    ref = {"w": np.zeros((2, 3), np.float32)}
    assert check_update({"w": np.ones((2, 3), np.float32)}, ref) == ""
    assert "not finite" in check_update({"w": np.full((2, 3), np.inf, np.float32)}, ref)
    assert "shape" in check_update({"w": np.ones((3, 2), np.float32)}, ref)
    assert "names differ" in check_update({"v": np.ones((2, 3), np.float32)}, ref)


@pytest.fixture(scope="module")
def two_rounds(tmp_path_factory):
    """One simulation (one Ray start): round 1 with every client well, round 2 with client 1
    returning NaN weights, client 2 crashing and client 3 sending a request the cloud refuses."""
    said: list[str] = []
    seen: list[dict[str, np.ndarray]] = []
    run = run_simulation(_toy_task(poisoned={1}, crashing={2}, bad_request={3}, from_round=2, seen=seen),
                         FleetSettings(rounds=2),
                         RoundLog(tmp_path_factory.mktemp("rounds"), 2), log=said.append)
    return run, seen, said


def test_merged_weights_equal_the_in_process_engine(two_rounds):
    run, seen, _ = two_rounds
    task = _toy_task()
    reference = reference_round(task, task.start, 1)
    after_round_1 = seen[0]
    assert set(after_round_1) == set(reference)
    for name, ref in reference.items():
        np.testing.assert_allclose(after_round_1[name], ref, rtol=1e-6, atol=1e-7)
    assert not np.allclose(after_round_1["0.weight"], task.start["0.weight"])  # it trained
    r = run.rounds[0]
    assert (r.round, r.clients, r.refused, r.failed, r.steps) == (1, CLIENTS, 0, 0, 2 * CLIENTS)
    assert r.accuracy == r.metrics["norm"]


def test_nan_update_and_bad_request_are_refused_and_a_crash_left_out(two_rounds):
    run, _, said = two_rounds
    r = run.rounds[1]
    assert (r.round, r.clients, r.refused, r.failed) == (2, CLIENTS - 3, 2, 1)
    assert any("refused the update" in s and "not finite" in s for s in said), said
    assert any("refused the request" in s and "not finite" in s for s in said), said
    assert all(np.all(np.isfinite(v)) for v in run.weights.values())


def test_coda_fleet_asks_filters_and_fine_tunes_in_a_runtime(tmp_path_factory):
    """CoDA on the Simulation Engine: each client computes its request with the ONNX Runtime key
    encoder, the cloud answers it, the client filters and fine-tunes in the training artifacts;
    the mean per-user AUC is the run's own (PyTorch, recorded augmentation) within 0.005."""
    from test_coda import tiny_run_dir
    from toolkit.methods.coda.fleet import fleet_users

    run, _ = tiny_run_dir(tmp_path_factory)
    proc = run_dcl("fleet", str(run), "--runtime", "onnx", "--clients", "2", "--json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    (r,) = json.loads(proc.stdout)["rounds"]
    assert (r["clients"], r["refused"], r["failed"]) == (2, 0, 0) and r["metrics"]["retrieved"] > 0
    recorded = json.loads((run / "per_user.json").read_text())
    expected = float(np.mean([recorded[str(u)]["coda"] for u in fleet_users(run, 2)]))
    assert abs(r["accuracy"] - expected) <= 0.005, (r, expected)


def test_resume_refuses_a_crafted_fleet_folder_in_one_line(tiny_run, tmp_path):
    """--resume reads a dcl fleet output back: wrong record fields or a corrupt weights file are one
    line and change nothing."""
    from conftest import assert_one_line_error
    from dcl_core.outputs import atomic_output

    out = tmp_path / "fleet"
    with atomic_output(out, "fleet") as tmp:
        (tmp / "fleet.json").write_text(json.dumps({
            "method": "dcccl", "runtime": "pytorch", "engine": "flower-simulation", "clients": 2, "planned_rounds": 2,
            "fraction": 1.0, "min_clients": 1, "epochs": 0, "devices": 0, "complete": False,
            "rounds": [{"round": 1, "evil": "__import__('os')"}]}))
        (tmp / "weights.safetensors").write_bytes(b"\x00 not a safetensors file")
    before = sorted((p.name, p.read_bytes()) for p in out.iterdir())
    proc = run_dcl("fleet", str(tiny_run[0]), "--runtime", "pytorch", "--clients", "2", "--out", str(out), "--resume")
    assert_one_line_error(proc, "is corrupt", "--resume")
    assert sorted((p.name, p.read_bytes()) for p in out.iterdir()) == before


def _evaluate_with(_data, evaluate, weights, metrics):
    return evaluate(weights, metrics)


def test_the_same_app_runs_on_a_ray_cluster_named_by_ray_address(tmp_path, monkeypatch):
    """A Ray cluster started as a user starts one (`ray start --head`); RAY_ADDRESS points the
    simulation at it: the merged weights are the reference loop's, and the cluster outlives the
    run (dcl only disconnected from it)."""
    import dataclasses
    import functools
    import os
    import shutil
    import signal
    import socket
    import subprocess
    import sys
    import tempfile
    from pathlib import Path

    import cloudpickle

    from runtime_harness.fleet.flower import SharedTask, client_app, start_ray

    def free_port() -> int:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]

    port = free_port()
    temp = tempfile.mkdtemp(prefix="dclray", dir="/tmp")  # short: Ray's socket paths must fit
    ray_cli = Path(sys.executable).with_name("ray")
    started = subprocess.run([str(ray_cli), "start", "--head", "--node-ip-address", "127.0.0.1", "--port", str(port),
                              "--ray-client-server-port", str(free_port()), "--num-cpus", "2",
                              "--include-dashboard", "false", "--disable-usage-stats",
                              "--temp-dir", temp], capture_output=True, text=True, timeout=120)
    try:
        assert started.returncode == 0, started.stderr[-2000:]
        monkeypatch.setenv("RAY_ADDRESS", f"127.0.0.1:{port}")
        seen: list[dict[str, np.ndarray]] = []
        task = _toy_task(seen=seen)
        # the ClientApp Flower sends with every message carries a reference, not the clients' data
        start_ray(None)
        heavy = dataclasses.replace(task, evaluate=functools.partial(_evaluate_with, np.zeros(4_000_000), task.evaluate))
        assert len(cloudpickle.dumps(client_app(SharedTask(heavy)))) < 100_000
        run = run_simulation(task, FleetSettings(rounds=1), RoundLog(tmp_path, 1), log=lambda *a: None)
        # it ran on the cluster: this process connected to it as a driver (its log is in the cluster's folder)
        assert list(Path(temp).glob(f"session_*/logs/python-core-driver-*_{os.getpid()}.log"))
        assert run.rounds[0].clients == CLIENTS
        task = _toy_task()
        for name, ref in reference_round(task, task.start, 1).items():
            np.testing.assert_allclose(seen[0][name], ref, rtol=1e-6, atol=1e-7)
        alive = subprocess.run([str(ray_cli), "status", "--address", f"127.0.0.1:{port}"], capture_output=True,
                               text=True, timeout=60)
        assert alive.returncode == 0 and "/2.0 CPU" in alive.stdout, alive.stdout  # still up, idle
    finally:  # stop only this cluster (`ray stop` stops every Ray on the machine): each of its
        # processes keeps a log file open under its temp dir (this one too, while connected)
        import ray

        ray.shutdown()
        for proc in Path("/proc").glob("[0-9]*"):
            try:
                if int(proc.name) != os.getpid() and any(os.readlink(fd).startswith(temp)
                                                          for fd in (proc / "fd").iterdir()):
                    os.kill(int(proc.name), signal.SIGKILL)
            except OSError:
                pass
        shutil.rmtree(temp, ignore_errors=True)
