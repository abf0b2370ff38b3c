"""`dcl simulate RUN --runtime R` for DC-CCL: the device rounds with every controlled step inside
the exported training artifact of a real runtime, weights returned through the runtime and
merged on the cloud, as a Flower app on the Simulation Engine (fleet.py's task; one client per
scenario device, every device in every round).

The same simulation runs with the PyTorch reference of the identical program (the gate's
reference step: same batches, same SGD, same frozen-BN semantics), so the two final accuracies
are comparable. Agreement within 0.5 union points was expected; over hundreds of SGD steps,
though, float32 rounding alone moves the result, and `--noise-floor` measures by how much: the
PyTorch reference once more, from start weights 1 ulp away.
"""
from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from exporters.formats import Format
from runtime_harness.fleet.flower import FleetSettings, RoundLog, run_simulation
from toolkit.methods.dcccl.fleet import PYTORCH, export_artifact, fleet_task
from toolkit.plugin import FleetOptions, Log

DEFAULT_ROUNDS = 2


@dataclass
class FleetResult:
    runtime: str
    devices: int
    rounds: int
    accuracy: dict[str, dict[str, float]] = field(default_factory=dict)  # engine -> split -> %
    seconds: dict[str, float] = field(default_factory=dict)
    steps: int = 0

    @property
    def union_gap(self) -> float:
        return abs(self.accuracy[self.runtime]["union_test"] - self.accuracy["pytorch"]["union_test"])

    @property
    def noise_floor(self) -> float | None:
        """|union gap| between PyTorch and PyTorch from a start 1 ulp away (None unless that ran)."""
        if NUDGED not in self.accuracy:
            return None
        return abs(self.accuracy[NUDGED]["union_test"] - self.accuracy["pytorch"]["union_test"])


NUDGED = "pytorch_1ulp"


def nudged(state: dict[str, torch.Tensor], names: list[str], seed: int) -> dict[str, torch.Tensor]:
    """`state` with each of `names` moved 1 ulp up or down per element (random, seeded): a start
    as far from the original as one float32 rounding, i.e. what runtimes differ by after a step."""
    g = torch.Generator().manual_seed(seed)
    out = dict(state)
    for n in names:
        w = state[n]
        up = torch.randint(0, 2, w.shape, generator=g, dtype=torch.bool)
        out[n] = torch.nextafter(w, torch.where(up, torch.tensor(float("inf")), torch.tensor(float("-inf"))))
    return out


def simulate(run_dir: str | Path, runtime: Format, options: FleetOptions, log: Log) -> FleetResult:
    fmt = runtime.name
    rounds = options.rounds or DEFAULT_ROUNDS
    # one client per device of the scenario: the run's device count unless --devices says otherwise
    fleet = FleetOptions(devices=options.devices, clients=options.devices, epochs=options.epochs)
    result = FleetResult(fmt, 0, rounds)
    with tempfile.TemporaryDirectory(prefix="dcl-simulate-") as tmp:
        bundle = Path(tmp) / "bundle"
        export_artifact(run_dir, fmt, bundle, log)
        engines = {PYTORCH: PYTORCH, fmt: fmt, **({NUDGED: PYTORCH} if options.noise_floor else {})}
        for engine, runtime_name in engines.items():
            t0 = time.perf_counter()
            task = fleet_task(run_dir, runtime_name, fleet, bundle if runtime_name != PYTORCH else None)
            result.devices = task.clients
            if engine == NUDGED:
                start = {n: torch.from_numpy(w) for n, w in task.start.items()}
                task.start = {n: w.numpy() for n, w in nudged(start, list(start), seed=0).items()}
            state = Path(tmp) / engine
            state.mkdir()
            log(f"{engine}: {rounds} rounds of {task.clients} devices (Flower simulation)")
            run = run_simulation(task, FleetSettings(rounds), RoundLog(state, rounds), log=log)
            result.accuracy[engine] = dict(run.rounds[-1].metrics)
            result.seconds[engine] = round(time.perf_counter() - t0, 1)
            if engine == fmt:
                result.steps = sum(r.steps for r in run.rounds)
    return result
