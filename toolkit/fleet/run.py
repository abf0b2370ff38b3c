"""`dcl fleet RUN`: a method's device rounds as a Flower app, written as a dcl output folder.

The output (default RUN/fleet-RUNTIME, or RUN/fleet-RUNTIME-deploy) holds fleet.json (the
settings and one record per round: accuracy, clients merged, refused, failed, the cloud's
metrics, seconds), weights.safetensors (the model after the last round), bundle/ (the verified
training artifact(s) every client opened) and, for a deployment, every process's log.

A run that stops part-way (the SuperLink went away) keeps its completed rounds: the output is
written with `"complete": false`, and `--resume` continues from the round after the last one,
with the same settings, into the same folder. Client batches depend only on (seed, round, client),
so a resumed run ends where an uninterrupted one would.
"""
from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

from dcl_core.errors import ConfigError, DclError
from dcl_core.outputs import atomic_output
from runtime_harness.fleet.deploy import ENGINE_DEPLOYMENT, Deployment, SuperLinkLost
from runtime_harness.fleet.flower import (ENGINE_SIMULATION, FleetRun, FleetSettings, RoundLog, RoundRecord, read_weights,
                                          run_simulation)
from toolkit.plugin import FleetOptions, Log
from toolkit.registry import method_of_run

FLEET = "fleet"  # the output's kind
RECORD = "fleet.json"
APP = Path(__file__).parent / "flower_app"
PYTORCH = "pytorch"


@dataclass
class FleetPlan:
    """What the user asked for; a resumed run must ask for the same."""

    method: str
    runtime: str
    engine: str
    clients: int
    planned_rounds: int  # in all, counting rounds done before a resume
    fraction: float
    min_clients: int
    epochs: int  # 0: the run's
    devices: int  # 0: the run's


def default_out(run_dir: Path, runtime: str, deploy: bool) -> Path:
    return run_dir / f"fleet-{runtime}{'-deploy' if deploy else ''}"


def run_fleet(run_dir: Path, runtime: str, options: FleetOptions, log: Log, *, supernodes: int | None = None,
              tls: bool = True, out: Path | None = None, force: bool = False, resume: bool = False,
              min_clients: int = 1) -> tuple[FleetRun, Path]:
    """Run (or resume) the fleet; returns the run and its output folder."""
    method = method_of_run(run_dir)
    deploy = supernodes is not None
    if deploy and options.clients not in (None, supernodes):
        raise ConfigError(f"a deployment has one client per SuperNode: drop --clients or set it to {supernodes}")
    clients = supernodes if deploy else options.clients or method.fleet_clients
    if clients and min_clients > clients:
        raise ConfigError(f"--min-clients {min_clients} is more than the {clients} clients")
    plan = FleetPlan(method.name, runtime, ENGINE_DEPLOYMENT if deploy else ENGINE_SIMULATION, clients,
                     options.rounds or method.fleet_rounds, options.fraction, min_clients, options.epochs or 0,
                     options.devices or 0)
    out = Path(out) if out else default_out(Path(run_dir), runtime, deploy)
    done: list[dict] = []
    if resume:
        done = _resumable(out, plan)
        log(f"resuming from round {done[-1]['round'] + 1} ({out})")
    first = len(done) + 1
    settings = FleetSettings(plan.planned_rounds - len(done), plan.fraction, min_clients, first, wait_for_all=deploy)
    options = FleetOptions(devices=plan.devices or None, epochs=plan.epochs or None, clients=clients or None,
                           fraction=plan.fraction)
    lost: SuperLinkLost | None = None
    with atomic_output(out, FLEET, force or resume, containers=[run_dir], note=log) as tmp:
        rounds = RoundLog(tmp, plan.planned_rounds)
        if done:
            (tmp / RoundLog.ROUNDS).write_text(json.dumps(done))
            shutil.copy2(out / RoundLog.WEIGHTS, tmp / RoundLog.WEIGHTS)
        bundle = tmp / "bundle"
        if runtime != PYTORCH:
            method.fleet_export(Path(run_dir), runtime, bundle, log)
        start = tmp / RoundLog.WEIGHTS  # resuming: the weights after the last completed round, read before any new one
        if deploy:
            lost = _deploy(Path(run_dir).resolve(), plan, settings, tmp, bundle, start if done else None, rounds, tls, log)
        else:
            task = method.fleet_task(Path(run_dir), runtime, options, bundle if runtime != PYTORCH else None)
            plan.clients = task.clients  # a method's default may be "all its clients"
            if done:
                task.start = read_weights(start)
            run_simulation(task, settings, rounds, log=log)
        recorded = rounds.rounds()
        if not recorded:
            raise lost or DclError("the fleet recorded no round")
        complete = recorded[-1]["round"] >= plan.planned_rounds
        (tmp / RECORD).write_text(json.dumps({**asdict(plan), "complete": complete, "rounds": recorded}, indent=1) + "\n")
        (tmp / RoundLog.ROUNDS).unlink()
    run = _read(out, plan)
    if lost is not None:
        raise DclError(f"{lost} after round {run.rounds[-1].round} of {plan.planned_rounds}; the completed rounds are in {out}; "
                       f"finish with the same command plus --resume")
    return run, out


def _deploy(run_dir: Path, plan: FleetPlan, settings: FleetSettings, tmp: Path, bundle: Path, start: Path | None,
            rounds: RoundLog, tls: bool, log: Log) -> SuperLinkLost | None:
    work = tmp / "deployment"
    shown = [len(rounds.rounds())]

    def progress() -> None:
        recorded = rounds.rounds()
        for r in recorded[shown[0]:]:
            log(f"  round {r['round']}/{plan.planned_rounds}: {r['clients']} clients, {r['failed']} failed, "
                f"{r['refused']} refused, accuracy {r['accuracy']:.2f}")
        shown[0] = len(recorded)

    config = {"run-dir": str(run_dir), "runtime": plan.runtime, "bundle": str(bundle) if plan.runtime != PYTORCH else "",
              "state-dir": str(tmp), "clients": plan.clients, "devices": plan.devices, "epochs": plan.epochs,
              "rounds": settings.rounds, "first-round": settings.first_round, "fraction": plan.fraction,
              "min-clients": plan.min_clients, "start-weights": str(start) if start else ""}
    log(f"starting a Flower SuperLink and {plan.clients} SuperNodes on 127.0.0.1 ({'TLS' if tls else 'no TLS'}) ...")
    lost = None
    try:
        with Deployment(APP, plan.clients, work, lambda k: {"partition-id": k, "num-partitions": plan.clients},
                        tls=tls) as deployment:
            log(f"  SuperLink on port {deployment.port}; submitting the app with `flwr run`")
            deployment.submit(config, done=rounds.finished, poll=progress)
    except SuperLinkLost as e:
        lost = e
    finally:
        # keep the logs, not the key material or Flower's unpacked copy of the app
        shutil.rmtree(work / "tls", ignore_errors=True)
        shutil.rmtree(work / "flwr-home", ignore_errors=True)
    failure = rounds.failure()
    if failure:
        raise DclError(f"the fleet's ServerApp failed: {failure}")
    return lost


def _resumable(out: Path, plan: FleetPlan) -> list[dict]:
    path = out / RECORD
    if not path.is_file():
        raise ConfigError(f"nothing to resume: {path} does not exist; run without --resume")
    try:
        record = json.loads(path.read_text())
    except ValueError:
        raise ConfigError(f"{path} is corrupt; run without --resume into another folder") from None
    if record.get("complete"):
        raise ConfigError(f"the fleet in {out} already completed all its rounds; run without --resume (add --force to redo it)")
    differs = [k for k, v in asdict(plan).items()
               if record.get(k) != v and not (k == "clients" and v == 0)]  # 0: the method's default, all
    if differs:
        raise ConfigError(f"--resume needs the settings of the stopped run; these differ: "
                          + ", ".join(f"{k} (was {record.get(k)!r}, now {getattr(plan, k)!r})" for k in differs))
    if not record.get("rounds") or not (out / RoundLog.WEIGHTS).is_file():
        raise ConfigError(f"{out} holds no completed round to resume from; run without --resume")
    try:  # what the folder holds is checked before it is trusted: records, then tensors
        rounds = [asdict(RoundRecord(**r)) for r in record["rounds"]]
        read_weights(out / RoundLog.WEIGHTS)
    except Exception:  # noqa: BLE001 - a wrong field (TypeError) or a bad safetensors file alike
        raise ConfigError(f"{out} is corrupt (its rounds or weights do not read); run without --resume "
                          "into another folder") from None
    return rounds


def _read(out: Path, plan: FleetPlan) -> FleetRun:
    record = json.loads((out / RECORD).read_text())
    return FleetRun(plan.engine, plan.clients, [RoundRecord(**r) for r in record["rounds"]],
                    read_weights(out / RoundLog.WEIGHTS))
