"""The device rounds as a Flower app on the Simulation Engine (Ray): the merged weights equal the
in-process engine's within float32 rounding, a client with NaN weights is refused and the round
goes on, a client that crashes is left out, and `dcl fleet --json` reports rounds and clients."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from conftest import run_dcl
from exporters.reference import PyTorchTraining
from exporters.spec import TrainingSpec
from runtime_harness.fleet.engine import fleet_round
from runtime_harness.fleet.flower import FleetTask, check_update, run_simulation

pytest.importorskip("flwr")

CLIENTS = 4


def _toy_task(poisoned: set[int] = frozenset(), crashing: set[int] = frozenset(), from_round: int = 1,
              seen: list | None = None) -> FleetTask:
    """Four clients training a small linear classifier in PyTorch (the reference runtime); the
    poisoned and crashing clients misbehave from round `from_round` on; `seen` collects the merged
    weights the cloud evaluates after each round."""
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

    def evaluate(weights: dict[str, np.ndarray]) -> dict[str, float]:
        if seen is not None:
            seen.append(weights)
        return {"norm": float(sum(np.abs(v).sum() for v in weights.values()))}

    return FleetTask(start=start, open_runner=lambda: PyTorchTraining(model, spec, threads=1),
                     client_batches=batches, client_size=lambda cid: 10 + cid, evaluate=evaluate, clients=CLIENTS)


def test_check_update_names_shapes_and_finite_values():
    ref = {"w": np.zeros((2, 3), np.float32)}
    assert check_update({"w": np.ones((2, 3), np.float32)}, ref) == ""
    assert "not finite" in check_update({"w": np.full((2, 3), np.inf, np.float32)}, ref)
    assert "shape" in check_update({"w": np.ones((3, 2), np.float32)}, ref)
    assert "names differ" in check_update({"v": np.ones((2, 3), np.float32)}, ref)


@pytest.fixture(scope="module")
def two_rounds():
    """One simulation (one Ray start): round 1 with every client well, round 2 with client 1
    returning NaN weights and client 2 crashing."""
    said: list[str] = []
    seen: list[dict[str, np.ndarray]] = []
    run = run_simulation(_toy_task(poisoned={1}, crashing={2}, from_round=2, seen=seen), rounds=2, log=said.append)
    return run, seen, said


def test_merged_weights_equal_the_in_process_engine(two_rounds):
    run, seen, _ = two_rounds
    task = _toy_task()
    reference = fleet_round(task.open_runner, task.start, [task.client_batches(k, 1) for k in range(CLIENTS)],
                            [task.client_size(k) for k in range(CLIENTS)])
    after_round_1 = seen[1]  # seen[0]: the start weights, evaluated before round 1
    assert set(after_round_1) == set(reference.weights)
    for name, ref in reference.weights.items():
        np.testing.assert_allclose(after_round_1[name], ref, rtol=1e-6, atol=1e-7)
    assert not np.allclose(after_round_1["0.weight"], task.start["0.weight"])  # it trained
    assert (run.rounds[0].round, run.rounds[0].clients, run.rounds[0].refused, run.rounds[0].failed) == (1, CLIENTS, 0, 0)


def test_nan_update_is_refused_and_a_crash_left_out(two_rounds):
    run, _, said = two_rounds
    r = run.rounds[1]
    assert (r.round, r.clients, r.refused, r.failed) == (2, CLIENTS - 2, 1, 1)
    assert any("refused the update" in s and "not finite" in s for s in said), said
    assert all(np.all(np.isfinite(v)) for v in run.weights.values())


def test_cli_fleet_json(tiny_run):
    proc = run_dcl("fleet", str(tiny_run[0]), "--runtime", "pytorch", "--clients", "3", "--rounds", "1", "--json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(proc.stdout)
    assert res["engine"] == "flower-simulation" and res["clients"] == 3
    (r,) = res["rounds"]
    assert r["clients"] == 3 and r["refused"] == 0 and r["failed"] == 0
    assert 0 < r["metrics"]["union_test"] <= 100
