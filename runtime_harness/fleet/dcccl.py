"""`dcl simulate dcccl`: DC-CCL's device rounds with every controlled step inside the exported
training artifact of a real runtime, weights returned through the runtime, merged on the cloud.

The same simulation runs in PyTorch with the identical program (the gate's reference step:
same batches, same SGD, same frozen-BN semantics), so the two final accuracies are comparable;
the issue's bar is agreement within 0.5 points.

Start point: the run's trained f_d, i.e. further rounds on devices. (An exported training
program carries f_d's BatchNorm statistics as constants and only its parameters train, so the
simulation must start from the f_d the artifact was exported from.) g stays frozen. Each
device-round opens a fresh training session, so optimizer state does not leak between devices.
"""
from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from exporters.methods.dcccl import device_program, training_spec
from exporters.validate import reference_training
from runtime_harness.runners import open_training
from toolkit.data.imageset import ImageSet
from toolkit.data.scenarios import build_dcccl_scenario
from toolkit.errors import ConfigError
from toolkit.methods.dcccl import Fused, load_run
from toolkit.methods.dcccl.rounds import average_states
from toolkit.train import accuracy, progress

RUNTIMES = {"executorch": "executorch", "onnxruntime": "onnx", "litert": "tflite"}


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


def _device_batches(data: ImageSet, batch: int, epochs: int, seed: int) -> list[dict[str, torch.Tensor]]:
    out = []
    for e in range(epochs):
        perm = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed * 1000 + e))
        for i in range(len(data) // batch):
            idx = perm[i * batch:(i + 1) * batch]
            out.append({"x": data.x[idx], "y": data.y[idx]})
    return out


def simulate(run_dir: str | Path, runtime: str, devices: int, rounds: int, epochs: int | None = None,
             log=print) -> FleetResult:
    if runtime not in RUNTIMES:
        raise ConfigError(f"unknown runtime {runtime!r}; choose one of: {', '.join(RUNTIMES)}")
    fmt = RUNTIMES[runtime]
    cfg, model, _ = device_program(run_dir)
    cfg.scenario.num_devices = devices
    sc = build_dcccl_scenario(cfg.scenario, cfg.seed)
    spec = training_spec(cfg)
    epochs = epochs or cfg.device.epochs
    _, trained, _ = load_run(run_dir)
    init = {k: v.clone() for k, v in trained.models.f_d.state_dict().items()}
    names = spec.trainable_names(model)

    with tempfile.TemporaryDirectory(prefix="dcl-fleet-") as tmp:
        from exporters.api import export

        log(f"exporting the {fmt} training artifact (verified) ...")
        manifest = export(model, (sc.device_test.x[:1],), formats=[fmt], out_dir=Path(tmp) / "bundle",
                          training=spec, method="dcccl", name="dcccl", input_names=["x"], output_names=["logits"],
                          train_batches=_device_batches(sc.devices[0], spec.batch_size, 1, 0)[:4], log=log)
        art = next(a for a in manifest.artifacts if a.kind == "training")
        path = Path(tmp) / "bundle" / art.path
        result = FleetResult(runtime, devices, rounds)
        for engine in ("pytorch", runtime):
            t0 = time.perf_counter()
            f_d = trained.models.f_d
            f_d.load_state_dict(init)
            for r in progress(range(rounds), f"{engine}: rounds"):
                states, weights = [], []
                for k, data in enumerate(sc.devices):
                    batches = _device_batches(data, spec.batch_size, epochs, cfg.seed * 7919 + r * 101 + k)
                    if engine == "pytorch":
                        _, w = reference_training(Fused(trained.models.g, f_d), spec, batches, "y", len(batches))
                    else:
                        runner = open_training(fmt, path, art, threads=1)
                        program = dict(Fused(trained.models.g, f_d).named_parameters())
                        runner.set_weights({n: program[n].detach().numpy().copy() for n in names})
                        for b in batches:
                            runner.train_step({kk: vv.numpy() for kk, vv in b.items()})
                        w = {n: torch.from_numpy(np.asarray(v)).float() for n, v in runner.get_weights().items()}
                        result.steps += len(batches)
                    state = dict(f_d.state_dict())
                    state.update({n[len("b."):]: w[n].reshape(state[n[len("b."):]].shape) for n in names})
                    states.append(state)
                    weights.append(len(data))
                f_d.load_state_dict(average_states(states, weights))
            served = Fused(trained.models.f_c, f_d).eval()
            result.accuracy[engine] = {
                "cloud_test": round(accuracy(served, sc.cloud_test), 2),
                "device_test": round(accuracy(served, sc.device_test), 2),
                "union_test": round(accuracy(served, ImageSet.concat(sc.cloud_test, sc.device_test)), 2),
            }
            result.seconds[engine] = round(time.perf_counter() - t0, 1)
    return result
