"""`dcl simulate RUN --runtime R` for DC-CCL: the device rounds with every controlled step inside
the exported training artifact of a real runtime, weights returned through the runtime and
merged on the cloud (runtime_harness.fleet's engine).

The same simulation runs with the PyTorch reference of the identical program (the gate's
reference step: same batches, same SGD, same frozen-BN semantics), so the two final accuracies
are comparable. Agreement within 0.5 union points was expected; over hundreds of SGD steps,
though, float32 rounding alone moves the result, and `--noise-floor` measures by how much: the
PyTorch reference once more, from start weights 1 ulp away.

Start point: the run's trained f_d, i.e. further rounds on devices. (An exported training
program carries f_d's BatchNorm statistics as constants and only its parameters train, so the
simulation must start from the f_d the artifact was exported from.) g stays frozen.
"""
from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from exporters.api import ProgramSpec, export
from exporters.formats import Format
from exporters.reference import PyTorchTraining
from exporters.runner import open_training
from runtime_harness.fleet.engine import fleet_round
from toolkit.data.imageset import ImageSet
from toolkit.plugin import FleetOptions, Log
from toolkit.methods.dcccl.export import DEVICE_PART, INPUT_NAMES, OUTPUT_NAMES, PROGRAM, phone_program, training_spec
from toolkit.methods.dcccl.model import device_program, served
from toolkit.methods.dcccl.pipeline import load_run
from toolkit.methods.dcccl.scenario import build_dcccl_scenario
from toolkit.train import accuracy, progress

DEFAULT_DEVICES, DEFAULT_ROUNDS = 2, 2


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


def _device_batches(data: ImageSet, batch: int, epochs: int, seed: int) -> list[dict[str, np.ndarray]]:
    out = []
    for e in range(epochs):
        perm = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed * 1000 + e))
        for i in range(len(data) // batch):
            idx = perm[i * batch:(i + 1) * batch]
            out.append({"x": data.x[idx].numpy(), "y": data.y[idx].numpy()})
    return out


def simulate(run_dir: str | Path, runtime: Format, options: FleetOptions, log: Log) -> FleetResult:
    fmt = runtime.name
    devices = options.devices or DEFAULT_DEVICES
    rounds = options.rounds or DEFAULT_ROUNDS
    cfg, model, _ = phone_program(run_dir)
    cfg.scenario.num_devices = devices
    sc = build_dcccl_scenario(cfg.scenario, cfg.seed)
    spec = training_spec(cfg)
    epochs = options.epochs or cfg.device.epochs
    _, trained, _ = load_run(run_dir)
    f_d = trained.models.f_d
    init = {k: v.clone() for k, v in f_d.state_dict().items()}
    names = spec.trainable_names(model)
    prefix = f"{DEVICE_PART}."

    with tempfile.TemporaryDirectory(prefix="dcl-fleet-") as tmp:
        log(f"exporting the {fmt} training artifact (verified) ...")
        first = [{k: torch.from_numpy(v) for k, v in b.items()}
                 for b in _device_batches(sc.devices[0], spec.batch_size, 1, 0)[:4]]
        manifest = export([ProgramSpec(PROGRAM, model, (sc.device_test.x[:1],), INPUT_NAMES, OUTPUT_NAMES,
                                       training=spec, train_batches=first)],
                          [fmt], Path(tmp) / "bundle", log=log)
        art = next(a for a in manifest.artifacts if a.kind == "training")
        path = Path(tmp) / "bundle" / art.path

        def reference() -> PyTorchTraining:
            return PyTorchTraining(device_program(trained.models.g, f_d), spec, threads=torch.get_num_threads())

        openers = {"pytorch": reference, fmt: lambda: open_training(fmt, path, art, threads=1)}
        starts = dict.fromkeys(openers, init)
        if options.noise_floor:
            openers[NUDGED] = reference
            starts[NUDGED] = nudged(init, [n[len(prefix):] for n in names], cfg.seed)
        result = FleetResult(runtime.name, devices, rounds)
        for engine, opener in openers.items():
            t0 = time.perf_counter()
            f_d.load_state_dict(starts[engine])
            for r in progress(range(rounds), f"{engine}: rounds"):
                program = dict(device_program(trained.models.g, f_d).named_parameters())
                start = {n: program[n].detach().numpy().copy() for n in names}
                batches = [_device_batches(data, spec.batch_size, epochs, cfg.seed * 7919 + r * 101 + k)
                           for k, data in enumerate(sc.devices)]
                merged = fleet_round(opener, start, batches, [len(d) for d in sc.devices])
                if engine == fmt:
                    result.steps += merged.steps
                state = dict(f_d.state_dict())
                state.update({n[len(prefix):]: torch.from_numpy(merged.weights[n]).reshape(state[n[len(prefix):]].shape)
                              for n in names})
                f_d.load_state_dict(state)
            model_served = served(trained.models.f_c, f_d).eval()
            result.accuracy[engine] = {
                "cloud_test": round(accuracy(model_served, sc.cloud_test), 2),
                "device_test": round(accuracy(model_served, sc.device_test), 2),
                "union_test": round(accuracy(model_served, ImageSet.concat(sc.cloud_test, sc.device_test)), 2),
            }
            result.seconds[engine] = round(time.perf_counter() - t0, 1)
    return result
