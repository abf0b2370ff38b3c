"""`dcl fleet` at scale: client-rounds per second and peak memory of Flower's Simulation Engine
(Ray) at N = 10, 100 and 1,000 virtual clients, in PyTorch (the reference program) and the
runtimes' exported training artifacts (`--runtimes`); then two rounds on the Deployment Engine
with 4 SuperNode processes (TLS on loopback) against the simulation of the same 4 clients
(`--deploy-runtimes`). All in this one run, on one DC-CCL run (default: a fresh `dcl train dcccl
--quick`).

Each configuration is the real CLI (`dcl fleet ... --json`) in a subprocess. Measured:
- round seconds: the fleet's own record of its rounds (the ServerApp's clock, from the first
  message sent to the merged model scored), without start-up; client-rounds/s = clients / that.
  The clients share the run's device data (N shards), so a round's training work is about the same
  at every N: steps/s (the clients' SGD steps per round second) shows what the per-client overhead
  of Flower and Ray costs as N grows;
- wall seconds: the whole command, start-up (Ray or the processes, the export) included;
- peak memory: the largest sum of resident memory (VmRSS) over the command's process tree,
  sampled every 0.25 s (Ray's workers and Flower's processes included; shared pages count once
  per process, so this overstates what is unique).
Growth with N is reported as ratios to N = 10 of the same runtime. Prints the tables and writes
bench/fleet_scaling.json. A benchmark, not a test: it reports what it measured.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from tabulate import tabulate

ROOT = Path(__file__).resolve().parents[1]


def tree_rss_mb(root: int) -> float:
    """Resident memory of `root` and all its descendants, MiB (Linux /proc)."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            fields = {ln.split(":")[0]: ln.split(":", 1)[1] for ln in (entry / "status").read_text().splitlines() if ":" in ln}
        except OSError:
            continue
        pid = int(entry.name)
        children.setdefault(int(fields["PPid"]), []).append(pid)
        rss[pid] = int(fields.get("VmRSS", "0 kB").split()[0])
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        total += rss.get(pid, 0)
        todo.extend(children.get(pid, []))
    return total / 1024


def measure(args: list[str]) -> dict:
    """One `dcl ...` command: its JSON, wall seconds and peak process-tree memory."""
    proc = subprocess.Popen([sys.executable, "-m", "toolkit", *args, "--json"], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=dict(os.environ, DCL_NO_PROGRESS="1"))
    peak = [0.0]

    def sample() -> None:
        while proc.poll() is None:
            peak[0] = max(peak[0], tree_rss_mb(proc.pid))
            time.sleep(0.25)

    t0 = time.perf_counter()
    watcher = threading.Thread(target=sample, daemon=True)
    watcher.start()
    out, err = proc.communicate()
    wall = time.perf_counter() - t0
    watcher.join()
    if proc.returncode != 0:
        raise SystemExit(f"dcl {' '.join(args)} failed: {err.strip().splitlines()[-1] if err.strip() else proc.returncode}")
    return {"result": json.loads(out), "wall_s": round(wall, 1), "peak_rss_mb": round(peak[0])}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", help="a DC-CCL run (default: train a quick one)")
    ap.add_argument("--clients", default="10,100,1000")
    ap.add_argument("--runtimes", default="pytorch,onnx", help="runtimes of the scaling part")
    ap.add_argument("--deploy-runtimes", default="onnx", help="runtimes of the deployment comparison ('': none)")
    ap.add_argument("--supernodes", type=int, default=4)
    ap.add_argument("--epochs", default="1", help="local epochs per round in the deployment comparison")
    ap.add_argument("--out", default=str(ROOT / "bench" / "fleet_scaling.json"))
    a = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="dcl-bench-fleet-") as tmp:
        run = a.run
        if run is None:
            run = str(Path(tmp) / "run")
            subprocess.run([sys.executable, "-m", "toolkit", "train", "dcccl", "--quick", "--out", run], cwd=ROOT,
                           check=True, capture_output=True)
        rows, record = [], {"run": run, "scaling": [], "deployment": []}
        for runtime in a.runtimes.split(","):
            base = None
            for n in (int(c) for c in a.clients.split(",") if c):  # --clients "": the deployment part only
                m = measure(["fleet", run, "--runtime", runtime, "--clients", str(n), "--rounds", "1",
                             "--out", str(Path(tmp) / f"sim-{runtime}-{n}")])
                (r,) = m["result"]["rounds"]
                entry = {"runtime": runtime, "clients": n, "merged": r["clients"], "round_s": r["seconds"],
                         "client_rounds_per_s": round(n / r["seconds"], 2), "steps": r["steps"],
                         "steps_per_s": round(r["steps"] / r["seconds"], 1), "wall_s": m["wall_s"],
                         "peak_rss_mb": m["peak_rss_mb"], "accuracy": r["accuracy"]}
                base = base or entry
                entry["round_s_per_client_vs_10"] = round((entry["round_s"] / n) / (base["round_s"] / base["clients"]), 2)
                entry["peak_rss_vs_10"] = round(entry["peak_rss_mb"] / base["peak_rss_mb"], 2)
                record["scaling"].append(entry)
                rows.append(list(entry.values()))
                print(f"{runtime} N={n}: {entry['client_rounds_per_s']} client-rounds/s, {entry['peak_rss_mb']} MiB",
                      file=sys.stderr)
        if rows:
            print(tabulate(rows, headers=list(record["scaling"][0]), tablefmt="github"))
        k, deploy_rows, deployed = a.supernodes, [], [r for r in a.deploy_runtimes.split(",") if r]
        for runtime in deployed:
            for engine, extra in (("simulation", ["--clients", str(k)]), ("deployment", ["--deploy", "--supernodes", str(k)])):
                m = measure(["fleet", run, "--runtime", runtime, "--rounds", "2", "--epochs", a.epochs, *extra,
                             "--out", str(Path(tmp) / f"{engine}-{runtime}")])
                seconds = [r["seconds"] for r in m["result"]["rounds"]]
                entry = {"runtime": runtime, "engine": m["result"]["engine"], "clients": k, "round_1_s": seconds[0],
                         "round_2_s": seconds[1], "wall_s": m["wall_s"], "peak_rss_mb": m["peak_rss_mb"],
                         "union_test": m["result"]["rounds"][-1]["accuracy"]}
                record["deployment"].append(entry)
                deploy_rows.append(list(entry.values()))
        for runtime in deployed:
            sim, dep = (e for e in record["deployment"] if e["runtime"] == runtime)
            record.setdefault("deployment_vs_simulation_round_2", {})[runtime] = round(dep["round_2_s"] / sim["round_2_s"], 2)
        if deploy_rows:
            print()
            print(tabulate(deploy_rows, headers=list(record["deployment"][0]), tablefmt="github"))
            print(f"\nround 2, deployment / simulation: {record['deployment_vs_simulation_round_2']}")
    record["run"] = a.run or "a fresh `dcl train dcccl --quick`"
    Path(a.out).write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()
