"""ICIIA's bundle: three programs.

- `classifier` (inference): backbone + ICIIA-T as one program. Inputs: x (1, 1, 28, 28) in
  [0, 1]; history (B-1, D), the app's ring buffer of its last B-1 `feature` outputs (any slot
  order); history_mask (B-1,), 1.0 for a filled slot, 0.0 for an empty one. Outputs: logits
  (1, 20), feature (1, D) of this image (the app writes it into the ring buffer after the call)
  and attended (1, D), the head's input (what `head_finetune` trains on). Exact for an empty,
  a partial and a full history (all three are in the gate's validation inputs, built with real
  test-client images through the app's ring buffer).
- `head_finetune` (inference + training): the per-client head fine-tune: ICIIA-T's last Linear
  on attended features, CE loss, SGD (the run's fine-tune lr and momentum unless `--lr`); one
  step = one batch of a client's first `finetune.shots` labelled images (the batch size).
  Training batches: real test clients' attended features and labels.
- `backbone` (inference): the bare backbone with its own classifier, so `dcl profile` measures
  ICIIA's overhead against it in the same run.
"""
from __future__ import annotations

import copy
from pathlib import Path

import torch

from exporters.api import ProgramSpec
from exporters.spec import TrainingSpec
from toolkit.methods.iciia.clients import Clients
from toolkit.methods.iciia.config import ICIIAConfig
from toolkit.methods.iciia.features import RingBuffer
from toolkit.methods.iciia.model import HeadProgram
from toolkit.methods.iciia.pipeline import (
    MAIN,
    TrainedICIIA,
    load_data,
    load_run,
    stream_outputs,
)

CLASSIFIER, HEAD, BACKBONE = "classifier", "head_finetune", "backbone"
PROGRAMS = (CLASSIFIER, HEAD, BACKBONE)
INPUT_NAMES = ["x", "history", "history_mask"]
OUTPUT_NAMES = ["logits", "feature", "attended"]
HEAD_INPUT = "attended"
TRAIN_BATCHES = 4
IMAGE = {"layout": "NCHW", "shape": [1, 1, 28, 28], "range": [0.0, 1.0], "channels": "grey"}


def history_cases(trained: TrainedICIIA, clients: Clients, cfg: ICIIAConfig, client: int = 0
                  ) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Real inputs of the classifier for an empty, a partly filled and a full (wrapped-around)
    ring buffer: one test client streamed through the app's RingBuffer with PyTorch features."""
    slots = cfg.attention.history
    own = clients.stream("test")[client]
    x = clients.images.x
    want = {0: None, max(1, slots // 3): None, min(len(own) - 1, slots + slots // 2 + 1): None}
    ring = RingBuffer(slots, trained.dim)
    with torch.no_grad():
        for t in range(max(want) + 1):
            img = x[own[t]: own[t] + 1]
            if t in want:
                want[t] = (img, *ring.inputs())
            ring.push(trained.backbone.extractor(img).numpy())
    return [v for v in want.values() if v is not None]


def classifier_program(trained: TrainedICIIA, clients: Clients, cfg: ICIIAConfig) -> ProgramSpec:
    cases = history_cases(trained, clients, cfg)
    return ProgramSpec(
        CLASSIFIER, trained.streaming(MAIN), cases[-1], INPUT_NAMES, OUTPUT_NAMES, validation_inputs=cases,
        extra={"num_classes": clients.num_classes, "input": IMAGE, "history": cfg.attention.history,
               "feature_dim": trained.dim, "variant": MAIN, "partitions": cfg.attention.partitions,
               "ring_buffer": "after each call write `feature` into slot (images seen) mod history and set "
                              "that slot's history_mask to 1.0; empty slots are 0.0 (their content is ignored)",
               "outputs": {"logits": "class scores", "feature": "this image's backbone feature (ring buffer)",
                           "attended": f"the head's input ({HEAD} trains on it)"}})


def head_training_spec(cfg: ICIIAConfig, bn: str = "frozen", lr: float | None = None) -> TrainingSpec:
    ft = cfg.finetune
    return TrainingSpec(trainable=["head."], loss="cross_entropy", optimizer="sgd", lr=ft.lr if lr is None else lr,
                        momentum=ft.momentum, weight_decay=ft.weight_decay, batch_size=ft.shots,
                        bn=bn)  # type: ignore[arg-type]


def head_batches(trained: TrainedICIIA, clients: Clients, feats: torch.Tensor, cfg: ICIIAConfig,
                 n: int = TRAIN_BATCHES) -> list[dict[str, torch.Tensor]]:
    """Each test client's first `shots` attended features (as streamed) and labels: one batch per client."""
    shots, test = cfg.finetune.shots, [c for c in clients.stream("test") if len(c) >= cfg.finetune.shots][:n]
    outs = stream_outputs(trained.variants[MAIN], feats, test, cfg.attention.history)
    return [{HEAD_INPUT: att[:shots].contiguous(), "y": clients.images.y[c[:shots]]}
            for (_, att), c in zip(outs, test)]


def head_program(trained: TrainedICIIA, clients: Clients, feats: torch.Tensor, cfg: ICIIAConfig,
                 bn: str = "frozen", lr: float | None = None) -> ProgramSpec:
    batches = head_batches(trained, clients, feats, cfg)
    return ProgramSpec(
        HEAD, HeadProgram(copy.deepcopy(trained.variants[MAIN].head)).eval(), (batches[0][HEAD_INPUT][:1],),
        [HEAD_INPUT], ["logits"], training=head_training_spec(cfg, bn, lr),
        validation_inputs=[(b[HEAD_INPUT][:1],) for b in batches[:2]], train_batches=batches,
        extra={"num_classes": clients.num_classes, "input": {HEAD_INPUT: f"(N, {trained.dim}) from {CLASSIFIER}"},
               "protocol": f"per client: {cfg.finetune.steps} steps on its first {cfg.finetune.shots} labelled images"})


def backbone_program(trained: TrainedICIIA, clients: Clients) -> ProgramSpec:
    test = clients.stream("test")
    x = clients.images.x
    real = [(x[test[0][0]: test[0][0] + 1],), (x[test[-1][-1]: test[-1][-1] + 1],)]
    return ProgramSpec(BACKBONE, trained.backbone.eval(), real[0], ["x"], ["logits"], validation_inputs=real,
                       extra={"num_classes": clients.num_classes, "input": IMAGE,
                              "role": f"the bare backbone, the reference for {CLASSIFIER}'s overhead"})


def recipe_programs(run_dir: str | Path, bn: str = "frozen", lr: float | None = None, log=lambda s: None
                    ) -> tuple[list[ProgramSpec], dict]:
    cfg, trained, _ = load_run(run_dir)
    clients, feats = load_data(cfg, trained, log)
    programs = [classifier_program(trained, clients, cfg), head_program(trained, clients, feats, cfg, bn, lr),
                backbone_program(trained, clients)]
    return programs, {"history": cfg.attention.history, "feature_dim": trained.dim}
