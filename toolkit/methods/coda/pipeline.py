"""CoDA end to end: cloud recommender, pool index, every evaluated device's request, filtering and
personalization, the baselines, metrics.

Results (AUC on each evaluated user's later interactions; `user_auc` = mean over users whose
later interactions hold both classes, `auc` = over all their interactions pooled):
- cloud_only:          the cloud recommender, no personalization.
- local_only:          fine-tuned on the device's own data (no augmentation).
- augment_unfiltered:  fine-tuned on local + every retrieved sample (no filtering).
- coda:                fine-tuned on local + the retrieved samples the classifier keeps.
Every personalized result starts from the same cloud weights with the same optimizer, epochs and
seed (device.py), so they differ only in their data.

metrics.json: `results.<name>` {user_auc, auc} over the evaluated users, `buckets.<label>.<name>`
the same (plus `users`) per bucket of local-sample count (config `data.buckets`: sparse users),
`log.data` the scenario, its cut-off and the local samples per device (median, p10, p90).

A run directory holds config.json, metrics.json, per_user.json (each evaluated user's AUCs and
counts), checkpoints (recommender, classifier: every device's start) and augmentation.safetensors
(the cloud's answer to each evaluated device's request: simulate.py replays exactly these).
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.numpy import load_file, save_file

from dcl_core.config import to_dict
from dcl_core.errors import CheckpointError
from toolkit.methods.coda.cloud import Cloud
from toolkit.methods.coda.config import CoDAConfig
from toolkit.methods.coda.data import Fleet, bucket_labels, bucket_of, build_fleet, load_movielens
from toolkit.methods.coda.device import (PERSONALIZED, Augmentation, Models, Opener, Outcome, pytorch_opener,
                                         request_augmentation, run_device)
from toolkit.methods.coda.matching import AnnIndex, retrieve
from toolkit.methods.coda.messages import AugmentRequest
from toolkit.methods.coda.model import (BCE, SampleClassifier, auc, build_classifier, build_recommender, predict,
                                        sample_keys)
from toolkit.models import count_params, state_bytes
from toolkit.run import RunDir, atomic_run_dir, open_run
from toolkit.train import fit, frozen, progress

METHOD = "coda"  # the registry key, written into every run's config.json and metrics
RESULTS = ("cloud_only", *PERSONALIZED)
MATCHING_CHECK_REQUESTS = 50  # requests whose retrieval is compared with exact search


def train_cloud(cfg: CoDAConfig, fleet: Fleet) -> tuple[Models, list[float]]:
    ml = fleet.ml
    model = build_recommender(cfg.model, ml.num_users, ml.num_items, ml.user_side, ml.item_side, cfg.seed)
    losses = fit(BCE(model), fleet.pool, cfg.cloud, cfg.seed + 1, "cloud recommender")
    frozen(model)
    return Models(model, build_classifier(model, cfg.filter.hidden, cfg.seed + 2)), losses


def personalize(cfg: CoDAConfig, models: Models, fleet: Fleet, users: list[int],
                augmentations: dict[int, Augmentation], open_runner: Opener, desc: str = "devices",
                results: tuple[str, ...] = PERSONALIZED) -> dict[int, Outcome]:
    return {u: run_device(fleet.devices[u], augmentations[u], models, cfg, open_runner, results)
            for u in progress(users, desc)}


def score(models: Models, fleet: Fleet, outcomes: dict[int, Outcome], edges: list[int] | None = None
          ) -> tuple[dict[str, dict[str, float]], dict]:
    """(results table, per-user records) from the devices' test-item scores. With bucket `edges`
    each record names its local-sample bucket (data.bucket_of)."""
    per_user: dict[str, dict[str, Any]] = {}
    scored: list[tuple[dict[str, Any], dict[str, np.ndarray], np.ndarray]] = []
    for u, o in outcomes.items():
        dev = fleet.devices[u]
        scores = {"cloud_only": predict(models.recommender, np.full(len(dev.test_items), u), dev.test_items)} | o.scores
        rec = {"local": o.local, "retrieved": o.retrieved, "kept": o.kept, "tau": round(o.tau, 6),
               "test": int(len(dev.test_items))}
        if edges is not None:
            rec["bucket"] = bucket_of(o.local, edges)
        for r in RESULTS:
            if r in scores:
                rec[r] = auc(dev.test_clicks, scores[r])
        per_user[str(u)] = rec
        scored.append((rec, scores, dev.test_clicks))
    return _figures(scored), per_user


def _figures(scored: list[tuple[dict[str, Any], dict[str, np.ndarray], np.ndarray]]) -> dict[str, dict[str, float]]:
    """Per result: user_auc (mean over users with both classes) and auc (pooled)."""
    y = np.concatenate([s[2] for s in scored]) if scored else np.zeros(0)
    results = {}
    for r in RESULTS:
        pooled = [s[1][r] for s in scored if r in s[1]]
        if not pooled:
            continue
        vals = [s[0][r] for s in scored if r in s[0] and np.isfinite(s[0][r])]
        results[r] = {"user_auc": round(float(np.mean(vals)), 4) if vals else float("nan"),
                      "auc": round(auc(y, np.concatenate(pooled)), 4)}
    return results


def bucket_results(models: Models, fleet: Fleet, outcomes: dict[int, Outcome], edges: list[int]
                   ) -> dict[str, dict[str, Any]]:
    """Sparse users: the results table per bucket of local-sample count (bucket label -> result ->
    {user_auc, auc, users}; `users` = the bucket's users with both classes in their test data).
    Buckets without such a user are left out."""
    out: dict[str, dict[str, Any]] = {}
    for label in bucket_labels(edges):
        part = {u: o for u, o in outcomes.items() if bucket_of(o.local, edges) == label}
        if not part:
            continue
        results, per_user = score(models, fleet, part)
        n = sum(1 for p in per_user.values() if np.isfinite(p.get("cloud_only", np.nan)))
        if n:
            out[label] = {r: v | {"users": n} for r, v in results.items()}
    return out


def matching_check(cloud: Cloud, fleet: Fleet, models: Models, cfg: CoDAConfig, users: list[int]) -> dict[str, Any]:
    """Latency of the index's requests and their agreement with exact search (same merge rule)."""
    exact = AnnIndex(_pool_keys(models, fleet, cfg), cfg.matching, kind="flat")
    captured: list[AugmentRequest] = []

    def capture(body: bytes) -> bytes:
        captured.append(AugmentRequest.from_bytes(body))
        return cloud.handle_augment(body)

    for u in users[:MATCHING_CHECK_REQUESTS]:
        request_augmentation(fleet.devices[u], models, cfg, capture, cloud.version)  # the real request path
    recalls, times = [], []
    for req in captured:
        lo, hi = np.searchsorted(cloud.pool_user, [req.user, req.user + 1])
        t0 = time.perf_counter()
        got = retrieve(cloud.index, cloud.pool_item, req.vectors, req.k, (int(lo), int(hi)))
        times.append(time.perf_counter() - t0)
        ref = retrieve(exact, cloud.pool_item, req.vectors, req.k, (int(lo), int(hi)))
        recalls.append(len(set(got.rows.tolist()) & set(ref.rows.tolist())) / max(len(ref.rows), 1))
    q = [len(r.vectors) for r in captured]
    return {"requests_checked": len(captured), "recall_vs_exact": round(float(np.mean(recalls)), 4) if recalls else None,
            "ms_per_request": round(1000 * float(np.mean(times)), 3) if times else None,
            "ms_per_query_vector": round(1000 * float(np.sum(times)) / max(sum(q), 1), 4) if times else None}


def _pool_keys(models: Models, fleet: Fleet, cfg: CoDAConfig) -> np.ndarray:
    p = fleet.pool
    return sample_keys(models.recommender, p.user, p.item, p.click, cfg.matching)


def run(cfg: CoDAConfig, models: Models | None = None, fleet: Fleet | None = None) -> dict[str, Any]:
    """The whole schedule; returns everything the run directory records."""
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    t0 = time.perf_counter()
    fleet = fleet or build_fleet(cfg.data, cfg.seed)
    log: dict[str, Any] = {"data": fleet.summary()}
    if models is None:
        models, log["cloud_loss"] = train_cloud(cfg, fleet)
    t1 = time.perf_counter()
    cloud = Cloud.build(cfg, models.recommender, models.classifier, fleet)
    t2 = time.perf_counter()
    users = fleet.eval_users(cfg.data, cfg.seed)
    augmentations = {u: request_augmentation(fleet.devices[u], models, cfg, cloud.handle_augment, cloud.version)
                     for u in progress(users, "augmentation requests")}
    t3 = time.perf_counter()
    outcomes = personalize(cfg, models, fleet, users, augmentations, pytorch_opener(models, cfg))
    t4 = time.perf_counter()
    results, per_user = score(models, fleet, outcomes, cfg.data.buckets)
    buckets = bucket_results(models, fleet, outcomes, cfg.data.buckets)
    matching = matching_check(cloud, fleet, models, cfg, users)
    o = list(outcomes.values())
    a = list(augmentations.values())
    matching |= {
        "index": cloud.index.kind, "pool": cloud.index.size, "key_dim": cloud.index.dim,
        "embedding": cfg.matching.embedding, "index_build_s": round(t2 - t1, 2),
        "mean_local": round(float(np.mean([x.local for x in o])), 2),
        "mean_retrieved": round(float(np.mean([x.retrieved for x in o])), 2),
        "mean_kept": round(float(np.mean([x.kept for x in o])), 2),
        "kept_share": round(float(np.sum([x.kept for x in o]) / max(np.sum([x.retrieved for x in o]), 1)), 4),
        "mean_tau": round(float(np.nanmean([x.tau for x in o])), 4),
        "mean_query_vectors": round(float(np.mean([x.queries for x in a])), 2),
        "request_bytes": round(float(np.mean([x.bytes_up for x in a])), 1),
        "batch_bytes": round(float(np.mean([x.bytes_down for x in a])), 1),
        "model_down_bytes": len(cloud.model_down().to_bytes()),
    }
    log["seconds"] = {"cloud": round(t1 - t0, 1), "index": round(t2 - t1, 1), "requests": round(t3 - t2, 1),
                      "devices": round(t4 - t3, 1), "total": round(time.perf_counter() - t0, 1)}
    sizes = {n: {"params": count_params(m), "bytes": state_bytes(m)} for n, m in
             (("recommender", models.recommender), ("sample_classifier", models.classifier))}
    metrics = {"method": METHOD, "scenario": cfg.data.scenario, "results": results, "buckets": buckets,
               "matching": matching, "sizes": sizes,
               "users": {"split": cfg.data.eval_split, "evaluated": len(users),
                         "with_both_classes": sum(1 for p in per_user.values() if np.isfinite(p.get("coda", np.nan)))},
               "log": log}
    return {"metrics": metrics, "per_user": per_user, "models": models, "augmentations": augmentations}


def save_augmentations(augmentations: dict[int, Augmentation]) -> dict[str, np.ndarray]:
    users = sorted(augmentations)
    lengths = [len(augmentations[u].items) for u in users]
    return {"users": np.array(users, dtype=np.int64), "offsets": np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
            "items": np.concatenate([augmentations[u].items for u in users] or [np.zeros(0, np.int64)]).astype(np.int64),
            "clicks": np.concatenate([augmentations[u].clicks for u in users] or [np.zeros(0, np.float32)]).astype(np.float32)}


def load_augmentations(path: Path) -> dict[int, Augmentation]:
    if not path.is_file():
        raise CheckpointError(f"{path} is missing; re-run `dcl train coda` to recreate the run")
    try:
        t = load_file(str(path))
        users, off = t["users"], t["offsets"]
        return {int(u): Augmentation(t["items"][off[i]:off[i + 1]], t["clicks"][off[i]:off[i + 1]])
                for i, u in enumerate(users)}
    except (SafetensorError, OSError, KeyError, IndexError) as e:
        raise CheckpointError(f"{path} is corrupt ({e}); re-run `dcl train coda`") from None


def train_to_dir(cfg: CoDAConfig, out: str | Path, force: bool = False) -> dict[str, Any]:
    res = run(cfg)
    with atomic_run_dir(out, force) as rd:
        rd.write_json("config.json", {"method": METHOD, "config": to_dict(cfg)})
        rd.save_model("recommender", res["models"].recommender)
        rd.save_model("classifier", res["models"].classifier)
        save_file(save_augmentations(res["augmentations"]), str(rd.path / "augmentation.safetensors"))
        rd.write_json("per_user.json", res["per_user"])
        rd.write_json("metrics.json", res["metrics"])
    return res["metrics"]


def load_run(path: str | Path) -> tuple[CoDAConfig, Models, RunDir]:
    cfg, rd = open_run(path, METHOD, CoDAConfig)
    ml = load_movielens()
    rec = build_recommender(cfg.model, ml.num_users, ml.num_items, ml.user_side, ml.item_side, cfg.seed)
    rd.load_model("recommender", rec)
    clf = SampleClassifier(rec.item.weight, rec.item_side.weight, cfg.filter.hidden)
    rd.load_model("classifier", clf)
    return cfg, Models(frozen(rec), frozen(clf)), rd


def load_cloud(run_dir: str | Path) -> Cloud:
    """The cloud side of a run (`dcl serve coda`): its models, the pool rebuilt from the data, the
    index rebuilt."""
    cfg, models, _ = load_run(run_dir)
    return Cloud.build(cfg, models.recommender, models.classifier, build_fleet(cfg.data, cfg.seed))


def evaluate_run(path: str | Path) -> dict[str, Any]:
    """Re-run the device side from the run's checkpoints and recorded augmentation batches."""
    cfg, models, rd = load_run(path)
    fleet = build_fleet(cfg.data, cfg.seed)
    augmentations = load_augmentations(rd.path / "augmentation.safetensors")
    users = sorted(augmentations)
    outcomes = personalize(cfg, models, fleet, users, augmentations, pytorch_opener(models, cfg))
    results, _ = score(models, fleet, outcomes)
    return {"method": METHOD, "results": results, "buckets": bucket_results(models, fleet, outcomes, cfg.data.buckets)}
