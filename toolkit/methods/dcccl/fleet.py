"""DC-CCL's device rounds as a fleet task (runtime_harness/fleet/flower.py), for `dcl fleet` and
`dcl simulate`.

Each client is one phone: it opens the run's exported training artifact in the chosen runtime
(or the PyTorch reference program), trains `f_d` on its own shard from the merged weights it was
sent, and returns weights and its sample count; the cloud averages them by sample count (FedAvg,
as the controlled device rounds do) and scores the served model `f_c (+) f_d` after each round.

Clients: the run's device data (the scenario's devices, concatenated) split into N shards by a
seeded permutation. When N equals the scenario's device count, client k holds exactly device k's
data. A training artifact has a fixed batch size, so a shard smaller than one batch is filled up
to a batch by wrapping around the permutation (clients then share samples).

Start point: the run's trained f_d, i.e. further rounds on devices. (An exported training
program carries f_d's BatchNorm statistics as constants and only its parameters train, so the
rounds must start from the f_d the artifact was exported from.) g stays frozen.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from dcl_core.bundle import load_manifest
from exporters.api import ProgramSpec, export
from exporters.reference import PyTorchTraining
from exporters.runner import open_training
from runtime_harness.fleet.flower import ClientResult, FleetTask
from runtime_harness.fleet.local import train_locally
from toolkit.data.imageset import ImageSet
from toolkit.methods.dcccl.export import DEVICE_PART, INPUT_NAMES, OUTPUT_NAMES, PROGRAM, phone_program, training_spec
from toolkit.methods.dcccl.model import device_program, served
from toolkit.methods.dcccl.pipeline import load_run
from toolkit.methods.dcccl.scenario import build_dcccl_scenario
from toolkit.plugin import FleetOptions, Log
from toolkit.train import accuracy

PYTORCH = "pytorch"
HEADLINE = "union_test"


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


def device_batches(data: ImageSet, batch: int, epochs: int, seed: int) -> list[dict[str, np.ndarray]]:
    """One client's batches for a round: `epochs` seeded shuffles of its data, whole batches only."""
    out = []
    for e in range(epochs):
        perm = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed * 1000 + e))
        for i in range(len(data) // batch):
            idx = perm[i * batch:(i + 1) * batch]
            out.append({"x": data.x[idx].numpy(), "y": data.y[idx].numpy()})
    return out


def batch_seed(seed: int, server_round: int, client: int) -> int:
    """The seed of a client's batches in a round (rounds counted from 1)."""
    return seed * 7919 + (server_round - 1) * 101 + client


def export_artifact(run_dir: str | Path, runtime: str, dest: Path, log: Log) -> None:
    """The run's `f_d` training program exported (and verified) for `runtime` into bundle `dest`."""
    cfg, model, _ = phone_program(run_dir)
    sc = build_dcccl_scenario(cfg.scenario, cfg.seed)
    spec = training_spec(cfg)
    log(f"exporting the {runtime} training artifact (verified) ...")
    first = [{k: torch.from_numpy(v) for k, v in b.items()}
             for b in device_batches(sc.devices[0], spec.batch_size, 1, 0)[:4]]
    export([ProgramSpec(PROGRAM, model, (sc.device_test.x[:1],), INPUT_NAMES, OUTPUT_NAMES, training=spec,
                        train_batches=first)], [runtime], dest, log=log)


def fleet_task(run_dir: str | Path, runtime: str, options: FleetOptions, bundle: Path | None) -> FleetTask:
    """The DC-CCL task for `options.clients` clients in `runtime` ("pytorch": the reference),
    whose training artifact `export_artifact` wrote into `bundle`. `options.devices` sets the
    scenario's device count (default: the run's)."""
    cfg, model, _ = phone_program(run_dir)
    if options.devices:
        cfg.scenario.num_devices = options.devices
    sc = build_dcccl_scenario(cfg.scenario, cfg.seed)
    spec = training_spec(cfg)
    epochs = options.epochs or cfg.device.epochs
    clients = options.clients or len(sc.devices)
    _, trained, _ = load_run(run_dir)
    f_d, g = trained.models.f_d, trained.models.g
    names = spec.trainable_names(model)
    prefix = f"{DEVICE_PART}."
    program = dict(device_program(g, f_d).named_parameters())
    start = {n: program[n].detach().numpy().copy() for n in names}
    parts = shards(ImageSet.concat(*sc.devices), clients, spec.batch_size, cfg.seed, list(sc.devices))
    union = ImageSet.concat(sc.cloud_test, sc.device_test)

    if runtime == PYTORCH:
        def opener():
            return PyTorchTraining(device_program(g, f_d), spec, threads=1)
    else:
        manifest = load_manifest(bundle)
        art = next(a for a in manifest.artifacts if a.kind == "training")

        def opener():
            return open_training(runtime, bundle / art.path, art, threads=1)

    def client_round(cid: int, server_round: int, model_down, _answer) -> ClientResult:
        batches = device_batches(parts[cid], spec.batch_size, epochs, batch_seed(cfg.seed, server_round, cid))
        weights, steps = train_locally(opener, model_down, batches)
        return ClientResult({"steps": steps}, len(parts[cid]), weights)

    def evaluate(weights, _client_metrics) -> dict[str, float]:
        state = dict(f_d.state_dict())
        state.update({n[len(prefix):]: torch.from_numpy(np.asarray(weights[n])).reshape(state[n[len(prefix):]].shape)
                      for n in names})
        f_d.load_state_dict(state)
        model_served = served(trained.models.f_c, f_d).eval()
        return {"cloud_test": round(accuracy(model_served, sc.cloud_test), 2),
                "device_test": round(accuracy(model_served, sc.device_test), 2),
                HEADLINE: round(accuracy(model_served, union), 2)}

    return FleetTask(start=start, client_round=client_round, evaluate=evaluate, clients=clients, headline=HEADLINE)
