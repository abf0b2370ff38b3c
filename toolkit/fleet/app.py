"""The Flower app of a deployment (`dcl fleet --deploy`): what the SuperLink's ServerApp process
and each SuperNode's ClientApp process load (named in flower_app/pyproject.toml). Both build the
method's fleet task from the run config dcl submits: the run, the runtime, the bundle holding the
verified training artifact(s); a client takes its shard from its node config's partition-id."""
from __future__ import annotations

from functools import cache
from pathlib import Path

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from dcl_core.errors import DclError
from runtime_harness.fleet.flower import (FleetSettings, FleetTask, RoundLog, client_app, quiet_flower_logger, read_weights,
                                          serve)
from toolkit.plugin import FleetOptions
from toolkit.registry import method_of_run


@cache
def _task(run_dir: str, runtime: str, bundle: str, clients: int, devices: int, epochs: int,
          start_weights: str) -> FleetTask:
    options = FleetOptions(devices=devices or None, epochs=epochs or None, clients=clients)
    task = method_of_run(run_dir).fleet_task(Path(run_dir), runtime, options, Path(bundle) if bundle else None)
    if start_weights:
        task.start = read_weights(Path(start_weights))
    return task


def task_of(context: Context) -> FleetTask:
    c = context.run_config
    return _task(str(c["run-dir"]), str(c["runtime"]), str(c["bundle"]), int(c["clients"]), int(c["devices"]),
                 int(c["epochs"]), str(c["start-weights"]))


server = ServerApp()


@server.main()
def main(grid: Grid, context: Context) -> None:
    quiet_flower_logger()
    c = context.run_config
    rounds = RoundLog(Path(str(c["state-dir"])), int(c["first-round"]) + int(c["rounds"]) - 1)
    try:
        settings = FleetSettings(rounds=int(c["rounds"]), fraction=float(c["fraction"]), min_clients=int(c["min-clients"]),
                                 first_round=int(c["first-round"]), wait_for_all=True)
        serve(grid, task_of(context), settings, rounds, log=lambda line: None)
    except DclError as e:
        rounds.fail(str(e))
    except Exception as e:  # noqa: BLE001 - the app runs in Flower's process: dcl reads the reason from the state
        rounds.fail(f"{type(e).__name__}: {e}")
        raise


client = client_app(task_of)
