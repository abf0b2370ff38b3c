"""`dcl simulate RUN --runtime R` for CoDA: the device side of CoDA for a seeded sample of the
run's evaluated users, with every device step inside the runtime's exported artifacts:

1. request: each local sample's key comes from the runtime's `key_encoder` inference artifact
   (one sample per call, as a phone keys samples when they arrive); the request built from those
   keys goes, as bytes, to the run's cloud (rebuilt in-process: pool, keys, index, the same
   handler `dcl serve coda` runs), and its augmentation batch comes back;
2. fine filtering: the sample classifier trains in `sample_classifier`'s training artifact;
3. personalization: the recommender is fine-tuned in `recommender`'s training artifact,
each user in fresh sessions started from the downloaded weights (device.py, the same code the
pipeline runs on the PyTorch reference program).

The weights each runtime returns (get_weights, PyTorch names) are loaded into the PyTorch
modules for the forward passes that score: P(local) for the keep rule, and P(click) on the later
interactions for AUC. (A phone runs those passes with its inference program; the exported
inference artifacts carry fixed weights, and the gate holds them to PyTorch within 1e-4.)

The same users run through the PyTorch reference, replaying the run's recorded augmentation
batches (what `dcl train` computed with the PyTorch key encoder); CoDA's per-user and overall AUC
must agree within 0.005. The record also says how far the runtime's keys are from PyTorch's and
for how many users the runtime's request brought back exactly the recorded batch.
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from dcl_core.errors import ConfigError
from exporters.api import export
from exporters.base import get_exporter
from exporters.formats import Format
from exporters.runner import InferenceRunner, open_inference, open_training
from toolkit.plugin import FleetOptions, Log
from toolkit.methods.coda.cloud import Cloud
from toolkit.methods.coda.data import build_fleet
from toolkit.methods.coda.device import (CLASSIFIER, KEY_ENCODER, RECOMMENDER, KeyFn, pytorch_keys, pytorch_opener,
                                         request_augmentation)
from toolkit.methods.coda.export import bundle_programs
from toolkit.methods.coda.pipeline import load_augmentations, load_run, personalize, score
from toolkit.train import progress

DEFAULT_DEVICES = 6
TOLERANCE = 0.005  # AUC


def runtime_keys(runner: InferenceRunner, diffs: list[float], reference: KeyFn | None) -> KeyFn:
    """The key encoder in a runtime: one local sample per call (the artifact's batch of 1). With a
    `reference` (the PyTorch key encoder), each call's largest difference from it is appended to
    `diffs`."""
    def keys_of(user: np.ndarray, items: np.ndarray, clicks: np.ndarray) -> np.ndarray:
        out = np.stack([np.asarray(runner.infer({"user": user[i:i + 1], "item": items[i:i + 1],
                                                 "click": clicks[i:i + 1]})[0], dtype=np.float32).reshape(-1)
                        for i in range(len(user))]) if len(user) else np.zeros((0, 0), np.float32)
        if len(user) and reference is not None:
            diffs.append(float(np.max(np.abs(out - reference(user, items, clicks)))))
        return out
    return keys_of


def simulate(run_dir: str | Path, runtime: Format, options: FleetOptions, log: Log) -> dict[str, Any]:
    """The fleet's record: per-engine results, steps and seconds, the gaps and whether they agree."""
    fmt = runtime.name
    ok, why = get_exporter(fmt).runnable_here("training")
    if not ok:
        raise ConfigError(f"{fmt} training artifacts cannot run on this machine ({why}); simulate with another runtime")
    cfg, models, rd = load_run(run_dir)
    recorded_epochs = options.epochs is None
    if options.epochs:
        cfg.finetune.epochs = cfg.filter.optim.epochs = options.epochs
    fleet = build_fleet(cfg.data, cfg.seed)
    augs = load_augmentations(rd.path / "augmentation.safetensors")
    eligible = [u for u in sorted(augs) if len(set(fleet.devices[u].test_clicks.tolist())) == 2]
    n = min(options.devices or DEFAULT_DEVICES, len(eligible))
    users = sorted(np.random.default_rng(cfg.seed + 99).choice(eligible, n, replace=False).tolist())
    results, seconds, steps = {}, {}, {}
    with tempfile.TemporaryDirectory(prefix="dcl-coda-sim-") as tmp:
        log(f"exporting the {fmt} artifacts of the three programs (verified) ...")
        programs, _ = bundle_programs(run_dir)
        root = Path(tmp) / "bundle"
        manifest = export(programs, [fmt], root, method="coda", log=log)
        arts = {}
        for p in manifest.programs:
            kind = "inference" if p.name == KEY_ENCODER else "training"
            art = next((a for a in p.artifacts if a.kind == kind), None)
            if art is None:
                raise ConfigError(f"{fmt} cannot express program {p.name}'s {kind}: "
                                  f"{p.not_exported[0]['reason'] if p.not_exported else 'no artifact'}")
            arts[p.name] = art
        log("rebuilding the run's cloud (pool keys, index) to answer the runtime's requests ...")
        cloud = Cloud.build(cfg, models.recommender, models.classifier, fleet)
        diffs: list[float] = []
        encoder = runtime_keys(open_inference(fmt, root / arts[KEY_ENCODER].path, arts[KEY_ENCODER], threads=1),
                               diffs, pytorch_keys(models, cfg))
        t0 = time.perf_counter()
        rt_augs = {u: request_augmentation(fleet.devices[u], models, cfg, cloud.handle_augment, cloud.version, encoder)
                   for u in progress(users, f"{fmt}: requests")}
        request_s = time.perf_counter() - t0
        same = sum(1 for u in users if np.array_equal(rt_augs[u].items, augs[u].items)
                   and np.array_equal(rt_augs[u].clicks, augs[u].clicks))
        engines = {"pytorch": (pytorch_opener(models, cfg), augs),
                   fmt: (lambda program: open_training(fmt, root / arts[program].path, arts[program], threads=1), rt_augs)}
        for engine, (opener, engine_augs) in engines.items():
            t0 = time.perf_counter()
            outcomes = personalize(cfg, models, fleet, users, engine_augs, opener, f"{engine}: devices", ("coda",))
            results[engine], per_user = score(models, fleet, outcomes)
            seconds[engine] = round(time.perf_counter() - t0 + (request_s if engine == fmt else 0.0), 1)
            steps[engine] = sum(o.steps for o in outcomes.values())
            if engine == "pytorch":
                kept = {u: o.kept for u, o in outcomes.items()}
                pt_user = {u: per_user[str(u)]["coda"] for u in users}
    gap_user = abs(results[fmt]["coda"]["user_auc"] - results["pytorch"]["coda"]["user_auc"])
    gap_all = abs(results[fmt]["coda"]["auc"] - results["pytorch"]["coda"]["auc"])
    record: dict[str, Any] = {"runtime": fmt, "users": users, "results": results, "seconds": seconds,
                              "steps": steps, "runtime_steps": steps[fmt], "kept": kept, "user_auc_gap": round(gap_user, 6),
                              "auc_gap": round(gap_all, 6), "tolerance": TOLERANCE,
                              "agrees": bool(gap_user <= TOLERANCE and gap_all <= TOLERANCE),
                              "programs": {KEY_ENCODER: "inference", CLASSIFIER: "training", RECOMMENDER: "training"},
                              "requests": {"key_encoder_calls": sum(fleet.devices[u].local_items.size for u in users),
                                           "max_key_diff": float(max(diffs)) if diffs else None,
                                           "same_batch_as_recorded": same, "users": len(users)}}
    if recorded_epochs:
        run_rec = rd.read_json("per_user.json")
        diffs_auc = [abs(pt_user[u] - run_rec[str(u)]["coda"]) for u in users if str(u) in run_rec]
        record["pytorch_vs_run_max_gap"] = round(float(max(diffs_auc)), 6) if diffs_auc else None
    return record
