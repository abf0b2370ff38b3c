"""ICIIA's device side as a fleet task (runtime_harness/fleet/flower.py), for `dcl fleet`.

ICIIA adapts without on-device training, so a round is: the model down, per-client accuracy up.
The model a client runs is the bundle's verified `classifier` program (backbone, attention
plug-in and head; in PyTorch, the run's own modules), which every client opens once, so no
weights travel in the round's messages. Each client is one test client of the run (never seen
in training): it streams its images one at a time through the program, keeping the ring buffer
of its last B-1 features outside the program as an app does, and sends back its accuracy and
image count. The cloud reports the accuracy over all streamed images (`accuracy`, the figure
`dcl train` reports as test_acc) and the mean of the clients' accuracies. Every round repeats
the same streams, so one round is the default.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from dcl_core.bundle import load_manifest
from exporters.api import export
from exporters.runner import open_inference
from runtime_harness.fleet.flower import ClientResult, FleetTask
from toolkit.methods.iciia.export import classifier_program
from toolkit.methods.iciia.features import RingBuffer
from toolkit.methods.iciia.pipeline import MAIN, load_data, load_run, stream_outputs
from toolkit.plugin import FleetOptions, Log

PYTORCH = "pytorch"
HEADLINE = "accuracy"


def stream_in_runtime(runner, x: np.ndarray, own: list[int], history: int, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """One client's stream through a runtime's classifier artifact, image by image, with the ring
    buffer of its last features kept outside the program: (logits (n, C), features (n, D))."""
    ring = RingBuffer(history, dim)
    logits, features = [], []
    for i in own:
        lg, feature, _ = runner.infer({"x": x[i:i + 1], "history": ring.slots, "history_mask": ring.mask()})
        logits.append(np.asarray(lg).reshape(-1))
        features.append(np.asarray(feature).reshape(-1))
        ring.push(feature)
    return np.stack(logits), np.stack(features)


def export_artifact(run_dir: str | Path, runtime: str, dest: Path, log: Log) -> None:
    """The run's classifier program exported (and verified) for `runtime` into bundle `dest`."""
    cfg, trained, _ = load_run(run_dir)
    clients, _ = load_data(cfg, trained, log)
    log(f"exporting the {runtime} classifier program (verified) ...")
    export([classifier_program(trained, clients, cfg)], [runtime], dest, method="iciia", log=log)


def fleet_task(run_dir: str | Path, runtime: str, options: FleetOptions, bundle: Path | None) -> FleetTask:
    """One client per test client of the run (the first `options.clients` of them, default all)."""
    cfg, trained, _ = load_run(run_dir)
    clients, feats = load_data(cfg, trained)
    test = clients.stream("test")[: options.clients or None]
    x = clients.images.x.numpy()

    session: dict[str, object] = {}  # one per client process, opened on its first round

    def runner():
        if not session:
            art = next(a for a in load_manifest(bundle).artifacts if a.kind == "inference")
            session["runner"] = open_inference(runtime, bundle / art.path, art, threads=1)
        return session["runner"]

    def client_round(cid: int, _round: int, _model, _answer) -> ClientResult:
        own = test[cid]
        if runtime == PYTORCH:
            logits = stream_outputs(trained.variants[MAIN], feats, [own], cfg.attention.history)[0][0]
        else:
            logits = torch.from_numpy(stream_in_runtime(runner(), x, own.tolist(), cfg.attention.history,
                                                        trained.dim)[0])
        correct = int((logits.argmax(-1) == clients.images.y[own]).sum())
        return ClientResult({"correct": correct, "images": len(own)}, len(own))

    def evaluate(_weights, replies: list[dict[str, float]]) -> dict[str, float]:
        images = sum(r["images"] for r in replies)
        return {HEADLINE: round(100.0 * sum(r["correct"] for r in replies) / max(images, 1), 2),
                "client_mean": round(float(np.mean([100.0 * r["correct"] / r["images"] for r in replies])), 2)
                if replies else float("nan"),
                "images": float(images)}

    return FleetTask(start={}, client_round=client_round, evaluate=evaluate, clients=len(test), headline=HEADLINE,
                     trains=False)
