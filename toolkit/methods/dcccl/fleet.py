"""`dcl fleet RUN` for DC-CCL: the device rounds as a Flower app (runtime_harness/fleet/flower.py).

Each client is one phone: it opens the run's exported training artifact in the chosen runtime
(or the PyTorch reference program), trains `f_d` on its own shard from the merged weights it was
sent, and returns weights and its sample count; the cloud averages them by sample count (FedAvg,
as the controlled device rounds do) and scores the served model `f_c (+) f_d` after each round.

Clients: the run's device data (the scenario's devices, concatenated) split into N shards by a
seeded permutation. When N equals the run's device count, client k holds exactly device k's data,
as `dcl simulate` does. A training artifact has a fixed batch size, so a shard smaller than one
batch is filled up to a batch by wrapping around the permutation (clients then share samples).
"""
from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from exporters.api import ProgramSpec, export
from exporters.reference import PyTorchTraining
from exporters.runner import open_training
from runtime_harness.fleet.flower import FleetTask
from toolkit.data.imageset import ImageSet
from toolkit.methods.dcccl.export import DEVICE_PART, INPUT_NAMES, OUTPUT_NAMES, PROGRAM, phone_program, training_spec
from toolkit.methods.dcccl.model import device_program, served
from toolkit.methods.dcccl.pipeline import load_run
from toolkit.methods.dcccl.scenario import build_dcccl_scenario
from toolkit.methods.dcccl.simulate import _device_batches
from toolkit.train import accuracy

PYTORCH = "pytorch"


def shards(data: ImageSet, clients: int, batch: int, seed: int, devices: list[ImageSet]) -> list[ImageSet]:
    """N client shards: the devices themselves when N is their count, else a seeded split of all
    their data, each at least one batch (wrapping around when there are too few samples)."""
    if clients == len(devices):
        return list(devices)
    perm = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))
    size = max(len(data) // clients, batch)
    out = []
    for k in range(clients):
        idx = perm[torch.arange(k * size, k * size + size) % len(data)]
        out.append(ImageSet(data.x[idx], data.y[idx]))
    return out


@contextlib.contextmanager
def fleet_task(run_dir: str | Path, runtime: str, clients: int, epochs: int | None, log) -> Iterator[FleetTask]:
    """The DC-CCL task for `clients` clients in `runtime` ("pytorch" for the reference); the
    exported artifact lives as long as the context."""
    cfg, model, _ = phone_program(run_dir)
    sc = build_dcccl_scenario(cfg.scenario, cfg.seed)
    spec = training_spec(cfg)
    epochs = epochs or cfg.device.epochs
    _, trained, _ = load_run(run_dir)
    f_d, g = trained.models.f_d, trained.models.g
    names = spec.trainable_names(model)
    prefix = f"{DEVICE_PART}."
    program = dict(device_program(g, f_d).named_parameters())
    start = {n: program[n].detach().numpy().copy() for n in names}
    parts = shards(ImageSet.concat(*sc.devices), clients, spec.batch_size, cfg.seed, list(sc.devices))
    union = ImageSet.concat(sc.cloud_test, sc.device_test)

    def evaluate(weights: dict[str, np.ndarray]) -> dict[str, float]:
        state = dict(f_d.state_dict())
        state.update({n[len(prefix):]: torch.from_numpy(np.asarray(weights[n])).reshape(state[n[len(prefix):]].shape)
                      for n in names})
        f_d.load_state_dict(state)
        model_served = served(trained.models.f_c, f_d).eval()
        return {"cloud_test": round(accuracy(model_served, sc.cloud_test), 2),
                "device_test": round(accuracy(model_served, sc.device_test), 2),
                "union_test": round(accuracy(model_served, union), 2)}

    def batches(cid: int, server_round: int) -> list[dict[str, np.ndarray]]:
        # the seed rule of `dcl simulate` (round r, device k), rounds counted from 0 there
        return _device_batches(parts[cid], spec.batch_size, epochs, cfg.seed * 7919 + (server_round - 1) * 101 + cid)

    with tempfile.TemporaryDirectory(prefix="dcl-fleet-") as tmp:
        if runtime == PYTORCH:
            def opener():
                return PyTorchTraining(device_program(g, f_d), spec, threads=1)
        else:
            log(f"exporting the {runtime} training artifact (verified) ...")
            first = [{k: torch.from_numpy(v) for k, v in b.items()}
                     for b in _device_batches(sc.devices[0], spec.batch_size, 1, 0)[:4]]
            manifest = export([ProgramSpec(PROGRAM, model, (sc.device_test.x[:1],), INPUT_NAMES, OUTPUT_NAMES,
                                           training=spec, train_batches=first)], [runtime], Path(tmp) / "bundle", log=log)
            art = next(a for a in manifest.artifacts if a.kind == "training")
            path = Path(tmp) / "bundle" / art.path

            def opener():
                return open_training(runtime, path, art, threads=1)

        yield FleetTask(start=start, open_runner=opener, client_batches=batches,
                        client_size=lambda cid: len(parts[cid]), evaluate=evaluate, clients=clients)
