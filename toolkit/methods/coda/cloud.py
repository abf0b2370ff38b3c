"""The cloud side of CoDA without a transport: the global pool, its index, and one handler per
message (bytes in, bytes out). The pipeline calls it in-process; service.py puts it behind HTTP.
Both see exactly the bytes a phone would send and receive.

What a request may name is bounded by what the cloud knows (messages.py bounds the rest): a user
must be one of the fleet's devices (every kept user; each has local data in the pool), weights
must name parameters of the two programs with their element counts, and at most
`MAX_METRIC_NAMES` distinct metric names are ever tracked. The state kept per update is O(1): the
devices' metrics are running totals per name (`Totals`), the users seen a set of known users, and
returned weights are checked and dropped (this method does not aggregate them). So memory is
bounded by the fleet and the name bound, however many updates arrive, and the summary is
O(#metric names) to compute.
"""
from __future__ import annotations

import hashlib
import threading
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from toolkit.methods.coda.config import CoDAConfig
from toolkit.methods.coda.data import Fleet
from toolkit.methods.coda.matching import AnnIndex, retrieve
from toolkit.methods.coda.messages import (Ack, AugmentBatch, AugmentRequest, Limits, MessageError, ModelDown,
                                           UpdateUp)
from toolkit.methods.coda.model import Recommender, SampleClassifier, key_dim, sample_keys


MAX_METRIC_NAMES = 64  # distinct metric names the cloud tracks (a device reports a handful)


@dataclass
class Totals:
    """The devices' metrics as running totals: fixed-size state, O(1) per value, O(#names) to read."""

    max_names: int = MAX_METRIC_NAMES
    updates: int = 0
    users: set[int] = field(default_factory=set)  # only known users get here: bounded by the fleet
    count: Counter = field(default_factory=Counter)
    total: dict[str, float] = field(default_factory=dict)

    def add(self, user: int, metrics: dict[str, float]) -> None:
        new = [k for k in metrics if k not in self.total]
        if len(self.total) + len(new) > self.max_names:
            raise MessageError(f"update_up.metrics: the cloud tracks at most {self.max_names} metric names "
                               f"({len(self.total)} so far); {len(new)} new ones are refused")
        for k, v in metrics.items():
            self.count[k] += 1
            self.total[k] = self.total.get(k, 0.0) + v  # |v| <= Limits.max_number: no overflow
        self.updates += 1
        self.users.add(user)

    def mean(self) -> dict[str, float]:
        return {k: self.total[k] / self.count[k] for k in sorted(self.total)}


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
    users: frozenset[int] = frozenset()  # the fleet's devices; empty: every user with samples in the pool
    totals: Totals = field(default_factory=Totals)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _weights: dict[str, int] = field(default_factory=dict)  # parameter -> element count, both programs

    def __post_init__(self) -> None:
        if not self.users:
            self.users = frozenset(np.unique(self.pool_user).tolist())
        for m in (self.recommender, self.classifier):
            self._weights |= {k: int(v.numel()) for k, v in m.state_dict().items()}

    @staticmethod
    def build(cfg: CoDAConfig, recommender: Recommender, classifier: SampleClassifier, fleet: Fleet) -> "Cloud":
        pool = fleet.pool
        keys = sample_keys(recommender, pool.user, pool.item, pool.click, cfg.matching)
        index = AnnIndex(keys, cfg.matching, seed=cfg.seed)
        return Cloud(cfg, recommender, classifier, pool.user.numpy(), pool.item.numpy(),
                     pool.click.numpy().astype(np.uint8), index, model_version(recommender),
                     max_k=max(cfg.matching.retrieve_max, 1), users=frozenset(fleet.devices))

    def _known(self, user: int, where: str) -> None:
        if user not in self.users:
            raise MessageError(f"{where}: user {str(user)[:24]} is not a device of this cloud's fleet "
                               f"({len(self.users):,} devices)")

    # -- handlers (typed)
    def augment(self, req: AugmentRequest) -> AugmentBatch:
        if req.model_version != self.version:
            raise MessageError(f"augment_request made with model {req.model_version!r}, the cloud serves "
                               f"{self.version!r}; fetch the model again (GET /v1/model)")
        self._known(req.user, "augment_request.user")
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
        self._known(up.user, "update_up.user")
        for name, w in up.weights.items():
            if self._weights.get(name) != w.size:
                raise MessageError(f"update_up.weights[{name}]: not a parameter of the served programs, or "
                                   f"{w.size:,} elements where it has {self._weights.get(name, 0):,}")
        with self._lock:  # the weights are dropped here: nothing of them is kept
            self.totals.add(up.user, up.metrics)
            return Ack(True, self.totals.updates)

    def summary(self) -> dict[str, Any]:
        """O(#metric names): cheap enough to answer on the event loop after any number of updates."""
        with self._lock:
            t = self.totals
            return {"model_version": self.version, "pool": int(len(self.pool_item)), "index": self.index.kind,
                    "updates": t.updates, "users": len(t.users), "mean": t.mean()}

    # -- bytes in, bytes out (what a transport calls)
    def handle_augment(self, body: bytes) -> bytes:
        return self.augment(AugmentRequest.from_bytes(body, self.limits)).to_bytes()

    def handle_update(self, body: bytes) -> bytes:
        return self.receive(UpdateUp.from_bytes(body, self.limits)).to_bytes()
