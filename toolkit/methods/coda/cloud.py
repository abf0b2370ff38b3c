"""The cloud side of CoDA without a transport: the global pool, its index, and one handler per
message (bytes in, bytes out). The pipeline calls it in-process; service.py puts it behind HTTP.
Both see exactly the bytes a phone would send and receive.
"""
from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from toolkit.methods.coda.config import CoDAConfig
from toolkit.methods.coda.data import Fleet
from toolkit.methods.coda.matching import AnnIndex, retrieve
from toolkit.methods.coda.messages import (Ack, AugmentBatch, AugmentRequest, Limits, MessageError, ModelDown,
                                           UpdateUp)
from toolkit.methods.coda.model import Recommender, SampleClassifier, key_dim, sample_keys


def model_version(model: torch.nn.Module) -> str:
    """A content hash of the weights: requests made with other weights' keys are refused."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


@dataclass
class Cloud:
    cfg: CoDAConfig
    recommender: Recommender
    classifier: SampleClassifier
    pool_user: np.ndarray  # int64 (N,), sorted
    pool_item: np.ndarray
    pool_click: np.ndarray  # uint8
    index: AnnIndex
    version: str
    limits: Limits = field(default_factory=Limits)
    max_k: int = 2048
    max_queries: int = 1024
    updates: list[dict[str, float]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @staticmethod
    def build(cfg: CoDAConfig, recommender: Recommender, classifier: SampleClassifier, fleet: Fleet) -> "Cloud":
        pool = fleet.pool
        keys = sample_keys(recommender, pool.user, pool.item, pool.click, cfg.matching)
        index = AnnIndex(keys, cfg.matching, seed=cfg.seed)
        return Cloud(cfg, recommender, classifier, pool.user.numpy(), pool.item.numpy(),
                     pool.click.numpy().astype(np.uint8), index, model_version(recommender),
                     max_k=max(cfg.matching.retrieve_max, 1))

    # -- handlers (typed)
    def augment(self, req: AugmentRequest) -> AugmentBatch:
        if req.model_version != self.version:
            raise MessageError(f"augment_request made with model {req.model_version!r}, the cloud serves "
                               f"{self.version!r}; fetch the model again (GET /v1/model)")
        dim = key_dim(self.recommender, self.cfg.matching)
        q = req.vectors
        if q.shape[0] < 1 or q.shape[0] > self.max_queries or q.shape[1] != dim:
            raise MessageError(f"augment_request.vectors: expected 1..{self.max_queries} vectors of dimension {dim}, "
                               f"got shape {list(q.shape)}")
        if not 1 <= req.k <= self.max_k:
            raise MessageError(f"augment_request.k: must be in 1..{self.max_k}, got {req.k}")
        lo, hi = np.searchsorted(self.pool_user, [req.user, req.user + 1])
        got = retrieve(self.index, self.pool_item, q, req.k, (int(lo), int(hi)) if hi > lo else None)
        return AugmentBatch(req.request_id, self.version, self.pool_item[got.rows], self.pool_click[got.rows],
                            got.similarity)

    def model_down(self) -> ModelDown:
        def tensors(m: torch.nn.Module) -> dict[str, np.ndarray]:
            return {k: v.detach().numpy() for k, v in m.state_dict().items()}

        f, m = self.cfg.filter, self.cfg.matching
        settings: dict[str, Any] = {
            "tau_rule": f.tau_rule, "tau_quantile": f.tau_quantile, "tau_fixed": f.tau_fixed,
            "retrieve_ratio": m.retrieve_ratio, "retrieve_min": m.retrieve_min, "retrieve_max": m.retrieve_max,
            "max_queries": m.max_queries, "embedding": m.embedding, "label_weight": m.label_weight}
        return ModelDown(self.version, {"recommender": tensors(self.recommender),
                                        "sample_classifier": tensors(self.classifier)}, settings)

    def receive(self, up: UpdateUp) -> Ack:
        if up.model_version != self.version:
            raise MessageError(f"update_up for model {up.model_version!r}, the cloud serves {self.version!r}")
        with self._lock:
            self.updates.append(dict(up.metrics) | {"user": float(up.user)})
            return Ack(True, len(self.updates))

    def summary(self) -> dict[str, Any]:
        with self._lock:
            ups = list(self.updates)
        keys = sorted({k for u in ups for k in u if k != "user"})
        return {"model_version": self.version, "pool": int(len(self.pool_item)), "index": self.index.kind,
                "updates": len(ups), "users": len({u["user"] for u in ups}),
                "mean": {k: float(np.mean([u[k] for u in ups if k in u])) for k in keys}}

    # -- bytes in, bytes out (what a transport calls)
    def handle_augment(self, body: bytes) -> bytes:
        return self.augment(AugmentRequest.from_bytes(body, self.limits)).to_bytes()

    def handle_update(self, body: bytes) -> bytes:
        return self.receive(UpdateUp.from_bytes(body, self.limits)).to_bytes()


def load_cloud(run_dir: str | Path) -> Cloud:
    """The cloud side of a run: its models, the pool rebuilt from the data, the index rebuilt."""
    from toolkit.methods.coda.data import build_fleet
    from toolkit.methods.coda.pipeline import load_run

    cfg, models, _ = load_run(run_dir)
    fleet = build_fleet(cfg.data, cfg.seed)
    return Cloud.build(cfg, models.recommender, models.classifier, fleet)
