"""`dcl fleet --deploy`: Flower's Deployment Engine on loopback, a SuperLink and three SuperNode
processes over TLS. One deployment of three rounds meets both faults: after round 1 a SuperNode
process (with the ClientApp it started) is killed, and round 2 goes on with the other two; after
round 2 the SuperLink is killed, and dcl stops with one line saying how to resume, keeping the
two rounds. `--resume` runs round 3 on a fresh deployment, and the final weights equal the
in-process reference loop over the same rounds and clients within float32 rounding."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import ROOT, run_dcl

pytest.importorskip("flwr")

NODES, ROUNDS = 3, 3


def _wait_for(path: Path, pattern: str, proc: subprocess.Popen, timeout: float = 300) -> re.Match:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = re.search(pattern, path.read_text())
        if found:
            return found
        assert proc.poll() is None, path.read_text()
        time.sleep(0.5)
    raise AssertionError(f"no {pattern!r} within {timeout} s: {path.read_text()}")


def _pid(pattern: str) -> int:
    out = subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True).stdout.split()
    assert len(out) == 1, (pattern, out)
    return int(out[0])


@pytest.fixture(scope="module")
def stopped_and_resumed(tiny_run, tmp_path_factory):
    run_dir = tiny_run[0]
    out = tmp_path_factory.mktemp("fleet") / "deployed"
    err = out.parent / "stderr.txt"
    args = ["fleet", str(run_dir), "--runtime", "pytorch", "--deploy", "--supernodes", str(NODES),
            "--rounds", str(ROUNDS), "--out", str(out)]
    with open(err, "w") as stderr:
        proc = subprocess.Popen([sys.executable, "-m", "toolkit", *args], cwd=ROOT, stdout=subprocess.PIPE,
                                stderr=stderr, text=True, env=dict(os.environ, DCL_NO_PROGRESS="1"))
        try:
            port = _wait_for(err, r"SuperLink on port (\d+)", proc).group(1)
            launched = [subprocess.run(["pgrep", "-af", "--", port], capture_output=True, text=True).stdout]
            _wait_for(err, r"round 1/3", proc)
            os.killpg(_pid(f"superlink 127.0.0.1:{port} .*partition-id=0 "), signal.SIGKILL)  # node and its ClientApp
            _wait_for(err, r"round 2/3", proc)
            os.kill(_pid(f"flower-superlink .*--port {port} "), signal.SIGKILL)
            proc.wait(120)
            leftovers = subprocess.run(["pgrep", "-af", "--", f"127.0.0.1:{port}"], capture_output=True, text=True).stdout
        finally:
            if proc.poll() is None:
                proc.kill()
    stopped = {"rc": proc.returncode, "stderr": err.read_text(), "record": json.loads((out / "fleet.json").read_text()),
               "launched": launched[0], "leftovers": leftovers}
    resumed = run_dcl(*args, "--resume", "--json")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    return stopped, json.loads(resumed.stdout), out


def test_killed_supernode_leaves_the_round_to_the_others(stopped_and_resumed):
    stopped, _, _ = stopped_and_resumed
    first, second = stopped["record"]["rounds"]
    assert (first["clients"], first["failed"]) == (NODES, 0)
    # the dead node is either sampled (its message fails after the missed heartbeats) or, once
    # the SuperLink has marked it offline, no longer sampled; either way two clients merge
    assert second["clients"] == NODES - 1 and second["failed"] in (0, 1)


def test_superlink_stop_keeps_the_rounds_and_says_how_to_resume(stopped_and_resumed):
    stopped, _, out = stopped_and_resumed
    assert stopped["rc"] != 0 and "Traceback" not in stopped["stderr"]
    (line,) = [ln for ln in stopped["stderr"].splitlines() if ln.startswith("dcl: error")]
    assert "SuperLink stopped" in line and "after round 2 of 3" in line and "--resume" in line
    assert stopped["record"]["complete"] is False and [r["round"] for r in stopped["record"]["rounds"]] == [1, 2]
    # TLS on loopback, and no key material left behind
    assert "--ssl-certfile" in stopped["launched"] and "--root-certificates" in stopped["launched"]
    assert not (out / "deployment" / "tls").exists()
    assert stopped["leftovers"] == ""  # no Flower process of the deployment outlives dcl


def test_resume_ends_where_the_reference_loop_does(stopped_and_resumed, tiny_run):
    from runtime_harness.fleet.flower import read_weights
    from runtime_harness.fleet.local import weighted_average
    from toolkit.methods.dcccl.fleet import fleet_task
    from toolkit.plugin import FleetOptions

    _, resumed, out = stopped_and_resumed
    assert resumed["engine"] == "flower-deployment" and resumed["clients"] == NODES
    assert [(r["round"], r["clients"]) for r in resumed["rounds"]] == [(1, 3), (2, 2), (3, 3)]
    assert all(0 <= r["accuracy"] <= 100 for r in resumed["rounds"])
    assert json.loads((out / "fleet.json").read_text())["complete"] is True

    task = fleet_task(tiny_run[0], "pytorch", FleetOptions(clients=NODES), None)
    weights = task.start
    for rnd, members in ((1, [0, 1, 2]), (2, [1, 2]), (3, [0, 1, 2])):  # node 0 was gone in round 2
        results = [task.client_round(k, rnd, weights, {}) for k in members]
        merged = weighted_average([{n: torch.from_numpy(w) for n, w in r.weights.items()} for r in results],
                                  [r.size for r in results])
        weights = {n: v.numpy() for n, v in merged.items()}
    final = read_weights(out / "weights.safetensors")
    assert set(final) == set(weights)
    for name, ref in weights.items():
        np.testing.assert_allclose(final[name], ref, rtol=1e-6, atol=1e-7)
    assert any(not np.array_equal(weights[n], task.start[n]) for n in weights)  # it trained
