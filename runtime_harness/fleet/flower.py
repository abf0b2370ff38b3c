"""The device-cloud loop as a Flower app: a ServerApp whose strategy is the method's cloud side, a
ClientApp that is one phone running the method's device side in a real runtime.

Method-agnostic: a method hands over a `FleetTask` (the model sent down each round, what one
client does with it, how the cloud answers a client's request and scores a round), and this
module runs it on either of Flower's engines:
- Simulation Engine (`run_simulation`): virtual clients as Ray actors on this machine, or on a
  Ray cluster given its address;
- Deployment Engine (`serve` and `client_app`, used by the app dcl submits with `flwr run`; see
  deploy.py): a SuperLink and one SuperNode process per client.

A round, in Flower messages (weights as ArrayRecords, numpy arrays that Flower serialises with
np.save and allow_pickle=False; metrics as MetricRecords; no client data ever leaves its
ClientApp):
1. if the task has a request step (CoDA's augmentation request): a `query` message with the model
   to each sampled client, which answers with its request; the cloud answers each request;
2. a `train` message with the model (and the cloud's answer) to each sampled client, which
   replies with its metrics, its sample count and, if the task trains, its new weights;
3. the strategy (FedAvg by sample count with a guard) merges: a reply whose weights are not finite
   or not shaped like the model is refused and logged, a client that did not reply (crashed,
   killed, timed out) is counted as failed, and the round goes on with the others;
4. the cloud scores the round (`task.evaluate`) and the round is recorded (`RoundLog`: the
   per-round records and the weights after it, so a stopped run can resume from its last round).
"""
from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from dcl_core.errors import DclError
from dcl_core.imports import without

# Flower reports usage over the network unless told not to: nothing leaves this machine.
os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")

ENGINE_SIMULATION = "flower-simulation"
WEIGHTED_BY = "num-examples"
Weights = dict[str, np.ndarray]


@dataclass
class ClientResult:
    """What one client sends back after a round (never its data)."""

    metrics: dict[str, float]
    size: int  # samples it holds: its FedAvg weight
    weights: Weights | None = None  # its trained weights, if the task trains on devices


@dataclass
class FleetTask:
    """What a method gives the fleet; nothing in it is Flower-specific."""

    start: Weights  # the model sent down in the first round (PyTorch names)
    client_round: Callable[[int, int, Weights, Weights], ClientResult]  # (client, round, model, answer)
    evaluate: Callable[[Weights, list[dict[str, float]]], dict[str, float]]  # (merged model, clients' metrics)
    clients: int
    headline: str  # the metric of `evaluate` reported as a round's accuracy
    trains: bool = True  # clients return weights that the cloud averages
    request: Callable[[int, int, Weights], Weights] | None = None  # client: (client, round, model) -> request
    answer: Callable[[Weights], Weights] | None = None  # cloud: a client's request -> its answer


@dataclass
class FleetSettings:
    rounds: int
    fraction: float = 1.0  # share of the clients sampled per round
    min_clients: int = 1  # the fewest replies a round goes on with
    first_round: int = 1  # > 1 when resuming: the rounds before it are done
    wait_for_all: bool = False  # deployment: wait until every client has connected before round 1
    connect_timeout_s: float = 300.0


@dataclass
class RoundRecord:
    round: int
    clients: int  # replies merged
    refused: int  # replies refused by the guard (non-finite or wrong names/shapes, bad request)
    failed: int  # sampled clients that did not reply (crashed, killed, disconnected, timed out)
    accuracy: float  # the task's headline metric after the round
    metrics: dict[str, float] = field(default_factory=dict)  # the cloud's evaluation after the round
    seconds: float = 0.0
    steps: int = 0  # training steps the merged clients ran (their "steps" metric)


@dataclass
class FleetRun:
    engine: str
    clients: int  # clients in the federation
    rounds: list[RoundRecord] = field(default_factory=list)
    weights: Weights = field(default_factory=dict)  # after the last recorded round

    def to_json(self) -> dict:
        return {"engine": self.engine, "clients": self.clients, "rounds": [asdict(r) for r in self.rounds]}


class RoundLog:
    """The rounds of one fleet run as files in `folder`, written by the ServerApp after each round
    (whichever process it runs in) and read by dcl: rounds.json (the records) and
    weights.safetensors (the model after the last round). A failure of the app is recorded too."""

    ROUNDS, WEIGHTS, FAILED = "rounds.json", "weights.safetensors", "failed.txt"

    def __init__(self, folder: str | Path, total: int):
        self.folder, self.total = Path(folder), total

    def add(self, record: RoundRecord, weights: Weights) -> None:
        from safetensors.numpy import save_file

        tmp = self.folder / f".{self.WEIGHTS}.tmp"
        save_file({k: np.ascontiguousarray(v) for k, v in weights.items()}, str(tmp))
        tmp.replace(self.folder / self.WEIGHTS)
        records = [*self.rounds(), asdict(record)]
        tmp = self.folder / f".{self.ROUNDS}.tmp"
        tmp.write_text(json.dumps(records, indent=1))
        tmp.replace(self.folder / self.ROUNDS)  # last: a round is recorded once its weights are

    def rounds(self) -> list[dict]:
        path = self.folder / self.ROUNDS
        return json.loads(path.read_text()) if path.is_file() else []

    def weights(self) -> Weights:
        return read_weights(self.folder / self.WEIGHTS)

    def fail(self, why: str) -> None:
        (self.folder / self.FAILED).write_text(why)

    def failure(self) -> str | None:
        path = self.folder / self.FAILED
        return path.read_text() if path.is_file() else None

    def finished(self) -> bool:
        done = self.rounds()
        return self.failure() is not None or bool(done and done[-1]["round"] >= self.total)

    def run(self, engine: str, clients: int) -> FleetRun:
        records = [RoundRecord(**r) for r in self.rounds()]
        return FleetRun(engine, clients, records, self.weights() if records else {})


def read_weights(path: Path) -> Weights:
    """Weights a RoundLog wrote (safetensors: tensors only, nothing executable)."""
    from safetensors.numpy import load_file

    return load_file(str(path))


def check_update(weights: Weights, reference: Weights) -> str:
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


def to_record(weights: Weights):
    """Weights as a Flower ArrayRecord (each array np.save'd, allow_pickle=False, by Flower)."""
    from flwr.app import Array, ArrayRecord

    return ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in weights.items()})


def from_record(record) -> Weights:
    return {k: v.numpy() for k, v in record.items()}


# -- the ClientApp: one phone
def client_app(task_of: Callable[[object], FleetTask]):
    """The ClientApp; `task_of(context)` gives the task (built once per process by the caller)."""
    from flwr.app import Context, Message, MetricRecord, RecordDict
    from flwr.clientapp import ClientApp

    app = ClientApp()

    def where(msg: Message, context: Context) -> tuple[FleetTask, int, int, Weights]:
        config = msg.content["config"]
        absolute = int(config["first-round"]) - 1 + int(config["server-round"])
        return task_of(context), int(context.node_config["partition-id"]), absolute, from_record(msg.content["arrays"])

    @app.query()
    def query(msg: Message, context: Context) -> Message:
        task, cid, rnd, model = where(msg, context)
        return Message(content=RecordDict({"request": to_record(task.request(cid, rnd, model))}), reply_to=msg)

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        task, cid, rnd, model = where(msg, context)
        answer = from_record(msg.content["answer"]) if "answer" in msg.content else {}
        result = task.client_round(cid, rnd, model, answer)
        reply = {"metrics": MetricRecord({WEIGHTED_BY: result.size, **result.metrics})}
        if result.weights is not None:
            reply["arrays"] = to_record(result.weights)
        return Message(content=RecordDict(reply), reply_to=msg)

    return app


# -- the ServerApp: the cloud
def _strategy(task: FleetTask, settings: FleetSettings, log):
    from flwr.app import Message, MessageType, RecordDict
    from flwr.serverapp.strategy import FedAvg

    class GuardedFedAvg(FedAvg):
        """FedAvg by sample count that first answers the clients' requests (if the task has a
        request step) and refuses replies it cannot merge."""

        counts: dict[int, tuple[int, int, int]] = {}  # round -> (merged, refused, failed)
        client_metrics: dict[int, list[dict[str, float]]] = {}
        current = None  # the model sent down this round (kept when clients return no weights)
        pre_failed = pre_refused = 0
        first_problem = ""  # the first reason a reply was lost this round, for the error line

        def note(self, problem: str, server_round: int) -> None:
            self.first_problem = self.first_problem or problem
            log(f"  round {settings.first_round - 1 + server_round}: {problem}")

        def configure_train(self, server_round, arrays, config, grid) -> Iterable[Message]:
            config["first-round"] = settings.first_round
            messages = list(super().configure_train(server_round, arrays, config, grid))
            self.current, self.pre_failed, self.pre_refused, self.first_problem = arrays, 0, 0, ""
            if task.request is None:
                return messages
            queries = [Message(RecordDict({"arrays": arrays, "config": config}), m.metadata.dst_node_id,
                               MessageType.QUERY) for m in messages]
            answered = []
            for reply in grid.send_and_receive(queries):
                node = reply.metadata.src_node_id
                if reply.has_error():
                    self.pre_failed += 1
                    self.note(f"node {node} failed before training: {reply.error.reason}", server_round)
                    continue
                try:
                    answer = task.answer(from_record(reply.content["request"]))
                except (DclError, KeyError, ValueError) as e:
                    self.pre_refused += 1
                    self.note(f"refused the request of node {node}: {e}", server_round)
                    continue
                answered.append(Message(RecordDict({"arrays": arrays, "config": config, "answer": to_record(answer)}),
                                        node, MessageType.TRAIN))
            return answered

        def aggregate_train(self, server_round: int, replies: Iterable):
            kept, refused, failed, metrics = [], self.pre_refused, self.pre_failed, []
            for msg in replies:
                node = msg.metadata.src_node_id
                if msg.has_error():
                    failed += 1
                    self.note(f"node {node} failed: {msg.error.reason}", server_round)
                    continue
                why = check_update(from_record(msg.content["arrays"]), task.start) if task.trains else ""
                if why:
                    refused += 1
                    self.note(f"refused the update of node {node}: {why}", server_round)
                    continue
                kept.append(msg)
                metrics.append({k: float(v) for k, v in msg.content["metrics"].items()})
            self.counts[server_round] = (len(kept), refused, failed)
            self.client_metrics[server_round] = metrics
            if task.trains:
                return super().aggregate_train(server_round, kept)
            return self.current, None

    if settings.wait_for_all:  # deployment: nodes come and go, so a round takes whoever is there
        sample, available = settings.min_clients, settings.min_clients
    else:  # simulation: the sample size fixed up front, not a share of the nodes registered so far
        sample, available = max(settings.min_clients, math.ceil(settings.fraction * task.clients)), task.clients
    return GuardedFedAvg(fraction_train=settings.fraction, fraction_evaluate=0.0, min_train_nodes=sample,
                         min_available_nodes=available, weighted_by_key=WEIGHTED_BY)


def serve(grid, task: FleetTask, settings: FleetSettings, rounds: RoundLog, log=print) -> None:
    """The ServerApp's main: the strategy's rounds, each recorded in `rounds` after the cloud's
    evaluation."""
    from flwr.app import ArrayRecord, ConfigRecord, MetricRecord

    strategy = _strategy(task, settings, log)
    last = settings.first_round + settings.rounds - 1
    clock = [time.perf_counter()]

    def evaluate(server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        if server_round == 0:  # Flower's look at the start model: already scored by the run
            return None
        merged, refused, failed = strategy.counts.get(server_round, (0, 0, 0))
        absolute = settings.first_round - 1 + server_round
        if merged < settings.min_clients:
            why = (f"round {absolute}: {merged} client(s) replied usably, fewer than the minimum {settings.min_clients}"
                   f" ({strategy.first_problem or 'no client replied'})")
            rounds.fail(why)
            raise DclError(why)
        weights = from_record(arrays)
        replies = strategy.client_metrics.get(server_round, [])
        metrics = task.evaluate(weights, replies)
        now = time.perf_counter()
        rounds.add(RoundRecord(absolute, merged, refused, failed, float(metrics.get(task.headline, float("nan"))),
                               metrics, round(now - clock[0], 2), int(sum(r.get("steps", 0) for r in replies))), weights)
        clock[0] = now
        log(f"  round {absolute}/{last}: {merged} clients, " + ", ".join(f"{k} {v:.2f}" for k, v in metrics.items()))
        return MetricRecord(metrics)

    if settings.wait_for_all:
        deadline = time.monotonic() + settings.connect_timeout_s
        while len(list(grid.get_node_ids())) < task.clients:
            if time.monotonic() > deadline:
                raise DclError(f"only {len(list(grid.get_node_ids()))} of {task.clients} SuperNodes connected "
                               f"within {settings.connect_timeout_s:.0f} s")
            time.sleep(0.5)
    strategy.start(grid=grid, initial_arrays=to_record(task.start), num_rounds=settings.rounds,
                   train_config=ConfigRecord({}), evaluate_fn=evaluate)


def quiet_flower_logger() -> None:
    """Flower sets its logger to DEBUG when imported; FLWR_LOG_LEVEL (dcl's quiet default: ERROR)
    then applies to its console handler only, so the logger itself follows it here too."""
    if os.environ.get("FLWR_LOG_LEVEL"):
        logging.getLogger("flwr").setLevel(os.environ["FLWR_LOG_LEVEL"].upper())


class SharedTask:
    """The task as one object in Ray's object store, for the ClientApp. Flower's Ray backend sends
    the ClientApp (and so whatever its task function holds) with every message: holding the task
    itself would serialise all clients' data once per message (184 MB for DC-CCL's quick run).
    This holds a reference instead, and each worker process fetches the task once."""

    _fetched: dict[str, FleetTask] = {}  # per worker process: the task of the current simulation

    def __init__(self, task: FleetTask):
        import ray

        self.ref = ray.put(task)

    def __call__(self, _context) -> FleetTask:
        import ray

        key = self.ref.hex()
        if key not in self._fetched:
            self._fetched.clear()  # a worker outliving its simulation keeps only the newest task
            self._fetched[key] = ray.get(self.ref)
        return self._fetched[key]


def import_flower_simulation() -> None:
    """Import Flower's simulation package without TensorFlow, which it imports whenever it is
    installed (as it is here, for the LiteRT converter) only for a GPU-memory option dcl never
    sets: about 4 s of CPU in every process, each Ray worker included. Also Ray's worker set-up
    hook."""
    with without("tensorflow"):
        import flwr.simulation  # noqa: F401


def start_ray(ray_address: str | None) -> None:
    """Ray, started (or joined, given a cluster's address or Ray's own RAY_ADDRESS variable) as
    Flower's Ray backend would, so the task can go into its object store before the simulation
    starts; Flower then reuses it and shuts it down (or disconnects from the cluster) at the end."""
    import sys

    import ray

    if ray.is_initialized():
        return
    address = ray_address or os.environ.get("RAY_ADDRESS") or None
    # without an address, a Ray of its own on this machine ("local"), even if a `ray start`
    # cluster runs here (Ray would otherwise join that one)
    where = {"address": address} if address else {"address": "local", "num_cpus": os.cpu_count() or 1}
    # Ray's workers get this process's import path (Flower does the same when it starts Ray)
    path = os.pathsep.join([*sys.path, *filter(None, [os.environ.get("PYTHONPATH")])])
    os.environ["PYTHONPATH"] = path
    hook = f"{__name__}.{import_flower_simulation.__name__}"
    ray.init(runtime_env={"env_vars": {"PYTHONPATH": path}, "worker_process_setup_hook": hook},
             include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR, **where)


def run_simulation(task: FleetTask, settings: FleetSettings, rounds: RoundLog, ray_address: str | None = None,
                   log=print) -> FleetRun:
    """The app on Flower's Simulation Engine (Ray): `task.clients` virtual clients, a share
    `settings.fraction` of them sampled per round. Returns the recorded rounds and final weights."""
    from flwr.app import Context
    from flwr.serverapp import Grid, ServerApp

    import_flower_simulation()
    from flwr.simulation import run_simulation as flower_run

    quiet_flower_logger()
    server = ServerApp()

    @server.main()
    def main(grid: Grid, context: Context) -> None:
        serve(grid, task, settings, rounds, log)

    import ray

    start_ray(ray_address)
    try:
        flower_run(server_app=server, client_app=client_app(SharedTask(task)), num_supernodes=task.clients,
                   backend_name="ray", backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0}})
    finally:
        if ray.is_initialized():  # Flower shuts Ray down when its backend stops, not when it fails to start
            ray.shutdown()
    if rounds.failure():
        raise DclError(f"the Flower simulation stopped: {rounds.failure()}")
    run = rounds.run(ENGINE_SIMULATION, task.clients)
    done = len(run.rounds) and run.rounds[-1].round
    if done != settings.first_round + settings.rounds - 1:
        raise DclError(f"the Flower simulation stopped after round {done or 0} of "
                       f"{settings.first_round + settings.rounds - 1}; run with -v to see Flower's log")
    return run
