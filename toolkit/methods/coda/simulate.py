"""`dcl simulate RUN --runtime R` for CoDA: the device side of CoDA for a seeded sample of the
run's evaluated users, with every training step inside the runtime's exported training artifacts:
the sample classifier trains in `sample_classifier`'s artifact, the recommender is personalized
in `recommender`'s, each user in fresh sessions started from the downloaded weights (device.py,
the same code the pipeline runs on the PyTorch reference program). Each device replays the
cloud's recorded augmentation batch for it (augmentation.safetensors).

The weights each runtime returns (get_weights, PyTorch names) are loaded into the PyTorch
modules for the forward passes that score: P(local) for the keep rule, and P(click) on the later
interactions for AUC. (A phone runs those passes with its inference program; the exported
inference artifacts carry fixed weights, and the gate holds them to PyTorch within 1e-4.)

The same users run through the PyTorch reference of the identical programs; CoDA's per-user and
overall AUC must agree within 0.005 (and the PyTorch engine reproduces the run's recorded
per-user AUCs, since it is the code path `dcl train` ran).
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
from exporters.runner import open_training
from toolkit.plugin import FleetOptions, Log
from toolkit.methods.coda.data import build_fleet
from toolkit.methods.coda.device import pytorch_opener
from toolkit.methods.coda.export import bundle_programs
from toolkit.methods.coda.pipeline import load_augmentations, load_run, personalize, score

DEFAULT_DEVICES = 6
TOLERANCE = 0.005  # AUC


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
        log(f"exporting the {fmt} training artifacts of both programs (verified) ...")
        programs, _ = bundle_programs(run_dir)
        manifest = export(programs, [fmt], Path(tmp) / "bundle", method="coda", log=log)
        arts = {}
        for p in manifest.programs:
            art = next((a for a in p.artifacts if a.kind == "training"), None)
            if art is None:
                raise ConfigError(f"{fmt} cannot express program {p.name}'s training: "
                                  f"{p.not_exported[0]['reason'] if p.not_exported else 'no artifact'}")
            arts[p.name] = art
        root = Path(tmp) / "bundle"
        openers = {"pytorch": pytorch_opener(models, cfg),
                   fmt: lambda program: open_training(fmt, root / arts[program].path, arts[program], threads=1)}
        for engine, opener in openers.items():
            t0 = time.perf_counter()
            outcomes = personalize(cfg, models, fleet, users, augs, opener, f"{engine}: devices", ("coda",))
            results[engine], per_user = score(models, fleet, outcomes)
            seconds[engine] = round(time.perf_counter() - t0, 1)
            steps[engine] = sum(o.steps for o in outcomes.values())
            if engine == "pytorch":
                kept = {u: o.kept for u, o in outcomes.items()}
                pt_user = {u: per_user[str(u)]["coda"] for u in users}
    gap_user = abs(results[fmt]["coda"]["user_auc"] - results["pytorch"]["coda"]["user_auc"])
    gap_all = abs(results[fmt]["coda"]["auc"] - results["pytorch"]["coda"]["auc"])
    record: dict[str, Any] = {"runtime": fmt, "users": users, "results": results, "seconds": seconds,
                              "steps": steps, "runtime_steps": steps[fmt], "kept": kept, "user_auc_gap": round(gap_user, 6),
                              "auc_gap": round(gap_all, 6), "tolerance": TOLERANCE,
                              "agrees": bool(gap_user <= TOLERANCE and gap_all <= TOLERANCE)}
    if recorded_epochs:
        run_rec = rd.read_json("per_user.json")
        diffs = [abs(pt_user[u] - run_rec[str(u)]["coda"]) for u in users if str(u) in run_rec]
        record["pytorch_vs_run_max_gap"] = round(float(max(diffs)), 6) if diffs else None
    return record
