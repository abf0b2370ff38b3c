"""The device-cloud loop as a Flower app: a ServerApp whose strategy is the method's cloud side, a
ClientApp that is one phone running an exported training artifact in a real runtime.

Method-agnostic, like engine.py: a method hands over a `FleetTask` (start weights under PyTorch
names, how a client opens its runtime's training program, each client's batches, how the cloud
scores merged weights). Weights cross between ServerApp and ClientApp as Flower ArrayRecords
(numpy arrays serialised with np.save, allow_pickle=False) and metrics as MetricRecords; no
client data ever leaves its ClientApp.

`run_simulation` runs the app on Flower's Simulation Engine (Ray backend: virtual clients as Ray
actors on this machine, or a Ray cluster given its address). The strategy is FedAvg by sample
count with a guard: a reply whose weights are not finite or do not have the start weights'
names and shapes is refused, logged, and left out of the average; the round goes on with the
others (a crashed or killed client is a failed reply, which FedAvg already leaves out).
"""
from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np

from dcl_core.errors import DclError
from exporters.runner import TrainingRunner
from runtime_harness.fleet.engine import Batch, train_locally

# Flower reports usage over the network unless told not to: nothing leaves this machine.
os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")

ENGINE_SIMULATION = "flower-simulation"
WEIGHTED_BY = "num-examples"


@dataclass
class FleetTask:
    """What a method gives the fleet: everything a client or the cloud needs, nothing Flower-specific."""

    start: dict[str, np.ndarray]  # the weights clients train from in round 1, PyTorch names
    open_runner: Callable[[], TrainingRunner]  # a fresh training session in the chosen runtime
    client_batches: Callable[[int, int], list[Batch]]  # (client id, round) -> that client's batches
    client_size: Callable[[int], int]  # samples a client holds (its FedAvg weight)
    evaluate: Callable[[dict[str, np.ndarray]], dict[str, float]]  # merged weights -> metrics (cloud side)
    clients: int


@dataclass
class RoundRecord:
    round: int
    clients: int  # replies merged
    refused: int  # replies refused by the guard (non-finite or wrong names/shapes)
    failed: int  # clients that did not reply (crashed, killed, timed out)
    metrics: dict[str, float] = field(default_factory=dict)  # the cloud's evaluation after merging
    seconds: float = 0.0


@dataclass
class FleetRun:
    engine: str
    clients: int  # clients in the federation
    rounds: list[RoundRecord] = field(default_factory=list)
    weights: dict[str, np.ndarray] = field(default_factory=dict)  # after the last round

    def to_json(self) -> dict:
        return {"engine": self.engine, "clients": self.clients,
                "rounds": [vars(r) for r in self.rounds]}


def check_update(weights: dict[str, np.ndarray], reference: dict[str, np.ndarray]) -> str:
    """Why a client's weights cannot be merged ("" if they can): the names and shapes of the
    start weights, finite values."""
    missing, extra = sorted(set(reference) - set(weights)), sorted(set(weights) - set(reference))
    if missing or extra:
        return f"names differ (missing {missing[:3]}, unexpected {extra[:3]})"
    for name, ref in reference.items():
        w = np.asarray(weights[name])
        if w.shape != ref.shape:
            return f"{name} has shape {w.shape}, expected {ref.shape}"
        if not np.all(np.isfinite(w)):
            return f"{name} is not finite"
    return ""


def to_record(weights: dict[str, np.ndarray]):
    """Weights as a Flower ArrayRecord (each array np.save'd, allow_pickle=False, by Flower)."""
    from flwr.app import Array, ArrayRecord

    return ArrayRecord({k: Array(np.ascontiguousarray(v, dtype=np.float32)) for k, v in weights.items()})


def from_record(record) -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in record.items()}


def _client_app(task: FleetTask):
    from flwr.app import Context, Message, MetricRecord, RecordDict
    from flwr.clientapp import ClientApp

    app = ClientApp()

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        cid = int(context.node_config["partition-id"])
        server_round = int(msg.content["config"]["server-round"])
        start = from_record(msg.content["arrays"])
        weights, steps = train_locally(task.open_runner, start, task.client_batches(cid, server_round))
        reply = RecordDict({"arrays": to_record(weights),
                            "metrics": MetricRecord({WEIGHTED_BY: task.client_size(cid), "steps": steps})})
        return Message(content=reply, reply_to=msg)

    return app


def _strategy(task: FleetTask, fraction: float, min_clients: int, log):
    from flwr.serverapp.strategy import FedAvg

    class GuardedFedAvg(FedAvg):
        """FedAvg that refuses replies whose weights are not finite or not shaped like the model."""

        counts: dict[int, tuple[int, int, int]] = {}  # round -> (merged, refused, failed)

        def aggregate_train(self, server_round: int, replies: Iterable):
            kept, refused, failed = [], 0, 0
            for msg in replies:
                if msg.has_error():  # crashed, killed or timed out: FedAvg leaves it out
                    failed += 1
                    log(f"  round {server_round}: node {msg.metadata.src_node_id} failed: {msg.error.reason}")
                    continue
                why = check_update(from_record(msg.content["arrays"]), task.start)
                if why:
                    refused += 1
                    log(f"  round {server_round}: refused the update of node {msg.metadata.src_node_id}: {why}")
                    continue
                kept.append(msg)
            self.counts[server_round] = (len(kept), refused, failed)
            return super().aggregate_train(server_round, kept)

    # the sample size fixed up front: FedAvg otherwise takes `fraction` of the nodes registered
    # when the round starts, which on a loaded machine can be fewer than all of them
    sample = max(min_clients, math.ceil(fraction * task.clients))
    return GuardedFedAvg(fraction_train=fraction, fraction_evaluate=0.0, min_train_nodes=sample,
                         min_available_nodes=task.clients, weighted_by_key=WEIGHTED_BY)


def run_simulation(task: FleetTask, rounds: int, fraction: float = 1.0, min_clients: int = 1,
                   ray_address: str | None = None, log=print) -> FleetRun:
    """The app on Flower's Simulation Engine (Ray): `task.clients` virtual clients, `fraction` of
    them sampled per round. Returns the per-round record and the final weights."""
    from flwr.app import ArrayRecord, ConfigRecord, Context, MetricRecord
    from flwr.serverapp import Grid, ServerApp
    from flwr.simulation import run_simulation as flower_run

    # Flower sets its logger to DEBUG when imported; FLWR_LOG_LEVEL (dcl's quiet default: ERROR)
    # then applies to its console handler only, so the logger itself follows it here too
    if os.environ.get("FLWR_LOG_LEVEL"):
        logging.getLogger("flwr").setLevel(os.environ["FLWR_LOG_LEVEL"].upper())
    run = FleetRun(ENGINE_SIMULATION, task.clients)
    strategy = _strategy(task, fraction, min_clients, log)
    server = ServerApp()
    t_round = [time.perf_counter()]

    def evaluate(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        weights = from_record(arrays)
        metrics = task.evaluate(weights)
        if server_round > 0:
            now = time.perf_counter()
            merged, refused, failed = strategy.counts.get(server_round, (0, 0, 0))
            run.rounds.append(RoundRecord(server_round, merged, refused, failed, metrics, round(now - t_round[0], 2)))
            t_round[0] = now
            log(f"  round {server_round}/{rounds}: {', '.join(f'{k} {v:.2f}' for k, v in metrics.items())}")
        run.weights = weights
        return MetricRecord(metrics)

    @server.main()
    def main(grid: Grid, context: Context) -> None:
        strategy.start(grid=grid, initial_arrays=to_record(task.start), num_rounds=rounds,
                       train_config=ConfigRecord({}), evaluate_fn=evaluate)

    backend = {"client_resources": {"num_cpus": 1, "num_gpus": 0.0},
               "init_args": {"include_dashboard": False, "log_to_driver": False, "logging_level": logging.ERROR,
                             **({"address": ray_address} if ray_address else {"num_cpus": os.cpu_count() or 1})}}
    flower_run(server_app=server, client_app=_client_app(task), num_supernodes=task.clients,
               backend_name="ray", backend_config=backend)
    if len(run.rounds) != rounds:
        raise DclError(f"the Flower simulation stopped after {len(run.rounds)} of {rounds} rounds; "
                       "run with -v to see Flower's log")
    return run
