"""ICIIA end to end: clients, backbone, cached features, the ICIIA variants, the baselines, metrics.

Results (accuracy in percent over every image of the test clients, each client streamed in order
so image t attends to that client's previous up to B-1 images; `rest_acc`: only the images after
each client's first `finetune.shots`, the images the fine-tune baselines are evaluated on):
- backbone:           the backbone with its own classifier.
- finetune_last:      per test client, the backbone's classifier fine-tuned on that client's first
                      `shots` labelled images, evaluated on the rest of its stream.
- iciia_b:            ICIIA with dense projections (P = 1).
- iciia_t:            ICIIA-T, P = attention.partitions (the exported program).
- iciia_t_p{P}:       ICIIA-T for the other P of attention.sweep.
- iciia_t_noshuffle:  ICIIA-T without the feature shuffle.
- iciia_t_finetune_head: ICIIA-T with its head fine-tuned per client like finetune_last (what the
                      exported `head_finetune` program does on a phone).
Homogeneous control: the same test images dealt to clients without skew; ICIIA-T trained on the
same training images dealt the same way (and, for reference, the skew-trained ICIIA-T).
"""
from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from dcl_core.config import to_dict
from toolkit.data.imageset import ImageSet
from toolkit.distributed import context
from toolkit.methods.iciia.clients import NUM_CLASSES, Clients, build_clients
from toolkit.methods.iciia.config import FinetuneConfig, ICIIAConfig
from toolkit.methods.iciia.features import (
    ClientSets,
    SetLoss,
    cached_features,
    stream_sets,
)
from toolkit.methods.iciia.model import (
    ICIIA,
    BackboneProgram,
    FeatureExtractor,
    StreamingClassifier,
    count_flops,
    formula_macs,
    projection_params,
)
from toolkit.models import count_params, create_model
from toolkit.run import RunDir, atomic_run_dir, open_run
from toolkit.train import Supervised, check_finite_loss, check_finite_weights, fit, frozen, stage_log

METHOD = "iciia"
MAIN = "iciia_t"  # the variant the bundle exports
HOMOGENEOUS = "iciia_t_homogeneous"


@dataclass
class TrainedICIIA:
    backbone: BackboneProgram  # extractor + its own classifier
    variants: dict[str, ICIIA]

    @property
    def dim(self) -> int:
        return self.backbone.extractor.dim

    def streaming(self, variant: str = MAIN) -> StreamingClassifier:
        return StreamingClassifier(self.backbone.extractor, self.variants[variant]).eval()


# ----------------------------------------------------------------------------- construction


def build_backbone(cfg: ICIIAConfig, num_classes: int, pretrained: bool = True) -> BackboneProgram:
    torch.manual_seed(cfg.seed)
    kw = cfg.backbone.kwargs()
    if "pretrained" in kw:
        kw["pretrained"] = kw["pretrained"] and pretrained
    model = create_model(cfg.backbone.name, num_classes, **kw)
    classifier = model.last_layer
    return BackboneProgram(FeatureExtractor(model), classifier)


def variant_specs(cfg: ICIIAConfig) -> dict[str, tuple[int, bool]]:
    """Variant name -> (partitions P, shuffle)."""
    a = cfg.attention
    out = {"iciia_b": (1, True), MAIN: (a.partitions, True)}
    for p in a.sweep:
        if p not in (1, a.partitions):
            out[f"iciia_t_p{p}"] = (p, True)
    out["iciia_t_noshuffle"] = (a.partitions, False)
    out[HOMOGENEOUS] = (a.partitions, True)
    return out


def build_variant(cfg: ICIIAConfig, dim: int, num_classes: int, partitions: int, shuffle: bool, k: int) -> ICIIA:
    cfg.check_dim(dim)
    torch.manual_seed(cfg.seed * 1000 + 17 + k)
    a = cfg.attention
    return ICIIA(dim, num_classes, a.layers, a.heads, partitions, shuffle, a.dropout)


# ----------------------------------------------------------------------------- evaluation


@torch.no_grad()
def stream_outputs(model: ICIIA, feats: torch.Tensor, clients: list[torch.Tensor], history: int
                   ) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per client: (logits (n, C), attended (n, D)) of each image of its stream, in order."""
    model.eval()
    out = []
    for own in clients:
        tokens, valid = stream_sets(feats[own], history)
        attended = model.attend(tokens, valid)[:, 0]
        out.append((model.head(attended), attended))
    return out


def _acc(correct: list[torch.Tensor]) -> float:
    c = torch.cat(correct)
    return round(100.0 * c.float().mean().item(), 2) if len(c) else float("nan")


def score(logits: list[torch.Tensor], labels: list[torch.Tensor], shots: int) -> dict[str, float]:
    correct = [lg.argmax(-1) == y for lg, y in zip(logits, labels)]
    return {"test_acc": _acc(correct), "rest_acc": _acc([c[shots:] for c in correct])}


def finetune_heads(head: nn.Linear, inputs: list[torch.Tensor], labels: list[torch.Tensor], ft: FinetuneConfig
                   ) -> list[torch.Tensor]:
    """Per client: a copy of `head` trained on its first `shots` (inputs, labels) (full-batch SGD,
    `steps` steps); returns its logits on the rest of that client's stream."""
    out = []
    for x, y in zip(inputs, labels):
        h = copy.deepcopy(head).train()
        for p in h.parameters():
            p.requires_grad_(True)
        opt = torch.optim.SGD(h.parameters(), lr=ft.lr, momentum=ft.momentum, weight_decay=ft.weight_decay)
        xs, ys = x[:ft.shots].detach(), y[:ft.shots]
        for step in range(ft.steps):
            loss = F.cross_entropy(h(xs), ys)
            check_finite_loss(loss.item(), f"per-client fine-tuning (finetune) step {step + 1}/{ft.steps}", ft.lr)
            opt.zero_grad()
            loss.backward()
            opt.step()
        check_finite_weights(h.parameters(), "per-client fine-tuning (finetune)", ft.lr)
        with torch.no_grad():
            out.append(h(x[ft.shots:]))
    return out


def evaluate(trained: TrainedICIIA, clients: Clients, feats: torch.Tensor, cfg: ICIIAConfig) -> dict[str, Any]:
    y, hist, ft = clients.images.y, cfg.attention.history, cfg.finetune
    test = clients.stream("test")
    labels = [y[c] for c in test]
    shots = ft.shots
    classifier = trained.backbone.classifier.eval()
    with torch.no_grad():
        bb_logits = [classifier(feats[c]) for c in test]
    results: dict[str, dict[str, float]] = {"backbone": score(bb_logits, labels, shots)}
    ft_logits = finetune_heads(classifier, [feats[c] for c in test], labels, ft)
    rest = score(ft_logits, [lb[shots:] for lb in labels], 0)["test_acc"]
    results["finetune_last"] = {"test_acc": rest, "rest_acc": rest}
    outputs = {}
    for name, model in trained.variants.items():
        if name == HOMOGENEOUS:
            continue
        outputs[name] = stream_outputs(model, feats, test, hist)
        results[name] = score([o[0] for o in outputs[name]], labels, shots)
    head_logits = finetune_heads(trained.variants[MAIN].head, [o[1] for o in outputs[MAIN]], labels, ft)
    rest = score(head_logits, [lb[shots:] for lb in labels], 0)["test_acc"]
    results["iciia_t_finetune_head"] = {"test_acc": rest, "rest_acc": rest}

    homog = clients.homogeneous("test", cfg.seed + 9)
    hlabels = [y[c] for c in homog]
    with torch.no_grad():
        hb = [classifier(feats[c]) for c in homog]
    homogeneous = {
        "backbone": score(hb, hlabels, shots),
        "iciia_t": score([o[0] for o in stream_outputs(trained.variants[HOMOGENEOUS], feats, homog, hist)],
                         hlabels, shots),
        "iciia_t_skew_trained": score([o[0] for o in stream_outputs(trained.variants[MAIN], feats, homog, hist)],
                                      hlabels, shots),
    }
    return {"results": results, "homogeneous": homogeneous}


def cost(trained: TrainedICIIA, cfg: ICIIAConfig) -> dict[str, Any]:
    """ICIIA's overhead over the bare backbone per streamed image (B = history + 1 tokens), both
    measured: parameters counted, FLOPs from torch's FlopCounterMode (2 per multiply-add); beside
    the paper's formulas (weights of the 6 maps only; multiply-adds x 2)."""
    a, D = cfg.attention, trained.dim
    B = a.history + 1
    x, hist, mask = torch.zeros(1, 1, 28, 28), torch.zeros(B - 1, D), torch.ones(B - 1)
    bb = trained.backbone.eval()
    bb_params, bb_flops = count_params(bb), count_flops(bb, x)
    out: dict[str, Any] = {"backbone_params": bb_params, "backbone_flops": bb_flops, "tokens": B, "dim": D,
                           "layers": a.layers}
    per = {}
    for name, (p, _) in variant_specs(cfg).items():
        if name in (HOMOGENEOUS, "iciia_t_noshuffle"):
            continue
        prog = trained.streaming(name)
        params = count_params(prog) - bb_params
        flops = count_flops(prog, x, hist, mask) - bb_flops
        per[name] = {"partitions": p, "params": params, "flops": flops,
                     "params_pct": round(100.0 * params / bb_params, 2),
                     "flops_pct": round(100.0 * flops / bb_flops, 2),
                     "formula_params": projection_params(D, p, a.layers),
                     "formula_flops": 2 * formula_macs(D, p, a.layers, B)}
    return out | {k: per[MAIN][k] for k in ("params", "flops", "params_pct", "flops_pct", "formula_params",
                                              "formula_flops")} | {"variants": per}


# ----------------------------------------------------------------------------- training


def stream_accuracy(model: ICIIA, feats: torch.Tensor, y: torch.Tensor, clients: list[torch.Tensor],
                    history: int) -> float:
    outs = stream_outputs(model, feats, clients, history)
    return score([o[0] for o in outs], [y[c] for c in clients], 0)["test_acc"]


def train_variant(model: ICIIA, feats: torch.Tensor, y: torch.Tensor, train_clients: list[torch.Tensor],
                  val_clients: list[torch.Tensor], cfg: ICIIAConfig, seed: int, desc: str) -> dict[str, Any]:
    """SGD (constant lr, grad clip) over one-client batches; early stop on validation accuracy.
    Runs on `attention.threads` threads (its steps are tiny: one thread is ~4x faster than two)."""
    a = cfg.attention
    threads = torch.get_num_threads()
    if a.threads:
        torch.set_num_threads(a.threads)
    try:
        return _train_variant(model, feats, y, train_clients, val_clients, cfg, seed, desc)
    finally:
        torch.set_num_threads(threads)


def _train_variant(model: ICIIA, feats: torch.Tensor, y: torch.Tensor, train_clients: list[torch.Tensor],
                   val_clients: list[torch.Tensor], cfg: ICIIAConfig, seed: int, desc: str) -> dict[str, Any]:
    a = cfg.attention
    best, best_acc, best_epoch, stale, history = None, -1.0, 0, 0, []
    for epoch in range(a.max_epochs):
        data = ClientSets(feats, y, train_clients, a.history + 1, a.sets_per_batch, a.partial_history,
                          seed * 1000 + epoch)
        loss = fit(SetLoss(model), data, a.optim(), seed * 1000 + epoch, f"{desc} epoch {epoch + 1}/{a.max_epochs}",
                   distributed=False)[0]
        acc = stream_accuracy(model, feats, y, val_clients, a.history)
        history.append({"loss": round(loss, 4), "val_acc": acc})
        if acc > best_acc:
            best, best_acc, best_epoch, stale = copy.deepcopy(model.state_dict()), acc, epoch + 1, 0
        else:
            stale += 1
            if stale >= a.patience:
                break
    model.load_state_dict(best)
    model.eval()
    return {"best_epoch": best_epoch, "val_acc": best_acc, "epochs": history}


def train_backbone(backbone: BackboneProgram, clients: Clients, cfg: ICIIAConfig, log) -> dict[str, Any]:
    union = clients.union("train")
    data = clients.images.subset(union)
    if not cfg.backbone.frozen:
        return {"loss": fit(Supervised(backbone), data, cfg.backbone.train, cfg.seed + 1, "backbone")}
    frozen(backbone.extractor)
    feats = cached_features(cfg.backbone.name, backbone.extractor, clients.images.x, log)
    return {"loss": fit(Supervised(backbone.classifier), ImageSet(feats[union], data.y), cfg.backbone.train,
                        cfg.seed + 1, "backbone classifier")}


def train(cfg: ICIIAConfig, log=lambda s: None) -> tuple[TrainedICIIA, Clients, torch.Tensor, dict[str, Any]]:
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    t0 = time.perf_counter()
    clients = build_clients(cfg.clients, cfg.seed)
    backbone = build_backbone(cfg, clients.num_classes)
    record: dict[str, Any] = {"clients": clients.summary()}
    record["backbone"] = train_backbone(backbone, clients, cfg, log)
    frozen(backbone)
    t1 = time.perf_counter()
    feats = cached_features(cfg.backbone.name, backbone.extractor, clients.images.x, log)
    with torch.no_grad():  # the reference for the variants' validation accuracies
        val = clients.stream("val")
        record["backbone"]["val_acc"] = score([backbone.classifier(feats[c]) for c in val],
                                              [clients.images.y[c] for c in val], 0)["test_acc"]
    t2 = time.perf_counter()
    y, D = clients.images.y, backbone.extractor.dim
    variants: dict[str, ICIIA] = {}
    seconds = {}
    homog = {g: clients.homogeneous(g, cfg.seed + 7 + i) for i, g in enumerate(("train", "val"))}
    for k, (name, (p, shuffle)) in enumerate(variant_specs(cfg).items()):
        ts = time.perf_counter()
        model = build_variant(cfg, D, clients.num_classes, p, shuffle, k)
        tr, va = (homog["train"], homog["val"]) if name == HOMOGENEOUS else (clients.stream("train"),
                                                                              clients.stream("val"))
        record[name] = train_variant(model, feats, y, tr, va, cfg, cfg.seed + 11 + k, name)
        variants[name] = frozen(model)
        seconds[name] = round(time.perf_counter() - ts, 1)
    record["seconds"] = {"backbone": round(t1 - t0, 1), "features": round(t2 - t1, 1), **seconds}
    return TrainedICIIA(backbone, variants), clients, feats, record


def metrics_of(trained: TrainedICIIA, clients: Clients, feats: torch.Tensor, cfg: ICIIAConfig) -> dict[str, Any]:
    return {"method": METHOD, **evaluate(trained, clients, feats, cfg), "cost": cost(trained, cfg)}


def train_to_dir(cfg: ICIIAConfig, out: str | Path, force: bool = False, log=stage_log) -> dict[str, Any]:
    t0 = time.perf_counter()
    trained, clients, feats, record = train(cfg, log)
    metrics = metrics_of(trained, clients, feats, cfg)
    record["seconds"]["total"] = round(time.perf_counter() - t0, 1)
    metrics["log"] = record
    if context().is_main:
        with atomic_run_dir(out, force) as run:
            run.write_json("config.json", {"method": METHOD, "config": to_dict(cfg)})
            run.save_model("backbone", trained.backbone)
            for name, model in trained.variants.items():
                run.save_model(name, model)
            run.write_json("metrics.json", metrics)
    return metrics


def load_run(path: str | Path) -> tuple[ICIIAConfig, TrainedICIIA, RunDir]:
    """Rebuild a run's models from config.json and its checkpoints (no ImageNet weights needed)."""
    cfg, run = open_run(path, METHOD, ICIIAConfig)
    num_classes = NUM_CLASSES
    backbone = build_backbone(cfg, num_classes, pretrained=False)
    run.load_model("backbone", backbone)
    frozen(backbone)
    variants = {}
    for k, (name, (p, shuffle)) in enumerate(variant_specs(cfg).items()):
        variants[name] = frozen(run.load_model(name, build_variant(cfg, backbone.extractor.dim, num_classes,
                                                                     p, shuffle, k)))
    return cfg, TrainedICIIA(backbone, variants), run


def load_data(cfg: ICIIAConfig, trained: TrainedICIIA, log=lambda s: None) -> tuple[Clients, torch.Tensor]:
    """The run's clients (rebuilt from its config) and its backbone's features (cached)."""
    clients = build_clients(cfg.clients, cfg.seed)
    return clients, cached_features(cfg.backbone.name, trained.backbone.extractor, clients.images.x, log)


def evaluate_run(path: str | Path) -> dict[str, Any]:
    cfg, trained, _ = load_run(path)
    clients, feats = load_data(cfg, trained)
    return metrics_of(trained, clients, feats, cfg)
