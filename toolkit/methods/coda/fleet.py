"""CoDA's device side as a fleet task (runtime_harness/fleet/flower.py), for `dcl fleet`.

A round, per client (one evaluated user's phone, which holds the run's model):
1. request (Flower `query` message): the phone computes its local samples' keys with the
   bundle's `key_encoder` artifact (PyTorch: the run's recommender), summarises them and sends an
   augment_request, the same msgpack message `dcl serve coda` takes (bytes in a uint8 array);
2. answer (cloud): the run's cloud (pool of pre-cut-off interactions, ANN index) checks the
   request against its schema and limits and retrieves the augmentation batch; a request it
   refuses is counted as refused and that client sits the round out;
3. train (Flower `train` message, with the batch): the phone trains its sample classifier in the
   `sample_classifier` training artifact, keeps the retrieved samples that look like its own,
   fine-tunes the recommender on local + kept samples in the `recommender` training artifact, and
   scores its later interactions: its AUC (and the cloud-only model's) go up, never its data.
The cloud reports the mean per-user AUC (`user_auc`, this task's accuracy) beside cloud-only's.
Clients: the seeded sample of evaluated users `dcl simulate` takes (the first N of it).
"""
from __future__ import annotations

from functools import cache
from pathlib import Path

import numpy as np

from dcl_core.bundle import load_manifest
from exporters.api import export
from exporters.runner import open_inference, open_training
from runtime_harness.fleet.flower import ClientResult, FleetTask
from toolkit.methods.coda.cloud import Cloud, model_version
from toolkit.methods.coda.data import build_fleet
from toolkit.methods.coda.device import (KEY_ENCODER, augmentation_from, augmentation_request, pytorch_opener,
                                         run_device)
from toolkit.methods.coda.export import bundle_programs
from toolkit.methods.coda.model import auc, predict
from toolkit.methods.coda.pipeline import load_augmentations, load_run
from toolkit.methods.coda.simulate import DEFAULT_DEVICES, runtime_keys
from toolkit.plugin import FleetOptions, Log

PYTORCH = "pytorch"
HEADLINE = "user_auc"


def export_artifact(run_dir: str | Path, runtime: str, dest: Path, log: Log) -> None:
    """The run's three programs exported (and verified) for `runtime` into bundle `dest`."""
    programs, _ = bundle_programs(run_dir)
    log(f"exporting the {runtime} artifacts of the three programs (verified) ...")
    export(programs, [runtime], dest, method="coda", log=log)


def fleet_users(run_dir: str | Path, count: int) -> list[int]:
    """The evaluated users `dcl simulate` samples (seeded), the first `count` of them."""
    cfg, _, rd = load_run(run_dir)
    fleet = build_fleet(cfg.data, cfg.seed)
    augs = load_augmentations(rd.path / "augmentation.safetensors")
    eligible = [u for u in sorted(augs) if len(set(fleet.devices[u].test_clicks.tolist())) == 2]
    chosen = np.random.default_rng(cfg.seed + 99).choice(eligible, min(count, len(eligible)), replace=False)
    return sorted(int(u) for u in chosen)


@cache  # module level, out of the task: Ray ships the task to its workers, the cloud stays here
def cloud_of(run_dir: str) -> Cloud:
    """The run's cloud (pool of its interactions before the cut-off, ANN index), built once."""
    cfg, models, _ = load_run(run_dir)
    return Cloud.build(cfg, models.recommender, models.classifier, build_fleet(cfg.data, cfg.seed))


def fleet_task(run_dir: str | Path, runtime: str, options: FleetOptions, bundle: Path | None) -> FleetTask:
    cfg, models, _ = load_run(run_dir)
    if options.epochs:
        cfg.finetune.epochs = cfg.filter.optim.epochs = options.epochs
    fleet = build_fleet(cfg.data, cfg.seed)
    users = fleet_users(run_dir, options.clients or DEFAULT_DEVICES)
    version = model_version(models.recommender)  # the model the phone holds
    sessions: dict[str, object] = {}  # per client process: its key encoder session

    if runtime == PYTORCH:
        opener, keys_of = pytorch_opener(models, cfg), None
    else:
        arts = {p.name: p.artifacts for p in load_manifest(bundle).programs}

        def artifact(program: str, kind: str):
            return next(a for a in arts[program] if a.kind == kind)

        def opener(program: str):
            art = artifact(program, "training")
            return open_training(runtime, bundle / art.path, art, threads=1)

        def keys_of(user, items, clicks):
            if "keys" not in sessions:
                art = artifact(KEY_ENCODER, "inference")
                sessions["keys"] = runtime_keys(open_inference(runtime, bundle / art.path, art, threads=1), [], None)
            return sessions["keys"](user, items, clicks)

    def request(cid: int, _round: int, _model) -> dict[str, np.ndarray]:
        req, _ = augmentation_request(fleet.devices[users[cid]], models, cfg, version, keys_of)
        return {"augment_request": np.frombuffer(req, dtype=np.uint8)}

    def answer(req: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        body = np.asarray(req["augment_request"], dtype=np.uint8).tobytes()
        return {"augment_batch": np.frombuffer(cloud_of(str(run_dir)).handle_augment(body), dtype=np.uint8)}

    def client_round(cid: int, _round: int, _model, reply: dict[str, np.ndarray]) -> ClientResult:
        dev = fleet.devices[users[cid]]
        aug = augmentation_from(dev, np.asarray(reply["augment_batch"], dtype=np.uint8).tobytes())
        out = run_device(dev, aug, models, cfg, opener, ("coda",))
        cloud_only = predict(models.recommender, np.full(len(dev.test_items), dev.user), dev.test_items)
        return ClientResult({"coda": auc(dev.test_clicks, out.scores["coda"]), "cloud_only": auc(dev.test_clicks, cloud_only),
                             "retrieved": out.retrieved, "kept": out.kept, "steps": out.steps}, out.local)

    def evaluate(_weights, replies: list[dict[str, float]]) -> dict[str, float]:
        def mean(key: str) -> float:
            vals = [r[key] for r in replies if np.isfinite(r[key])]
            return round(float(np.mean(vals)), 4) if vals else float("nan")
        return {HEADLINE: mean("coda"), "cloud_only_user_auc": mean("cloud_only"), "users": float(len(replies)),
                "kept": float(sum(r["kept"] for r in replies)), "retrieved": float(sum(r["retrieved"] for r in replies))}

    return FleetTask(start={}, client_round=client_round, evaluate=evaluate, clients=len(users), headline=HEADLINE,
                     trains=False, request=request, answer=answer)
