"""Frozen-backbone features, cached on disk, and the token sets ICIIA trains and streams on.

- Features are computed once per (backbone weights, images) and cached as .npy under
  `cache_dir()/iciia_features/`, keyed by a hash of the backbone's name and state and of the
  images; a re-evaluation (`dcl eval`) or a second run with the same frozen extractor reads them.
- Streaming sets (`stream_sets`): image t of a client's stream is the target token 0; tokens
  1..B-1 are the features of images t-1, t-2, ..., t-B+1 of the same client; slots before the
  stream's start are empty (masked). This is exactly what a phone's ring buffer of the last B-1
  features holds when image t arrives (order is irrelevant: ICIIA has no positional encoding).
- Training sets (`ClientSets`): one epoch cuts each training client's images (a fresh seeded
  permutation) into sets of B; every token is a target attending to the other B-1, which is the
  serving situation with a full history. A share of the sets keeps only a random number of its
  tokens (the rest masked), like a partly filled history. One batch = `sets_per_batch` sets of ONE
  client, as one `fit` item.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dcl_core.paths import cache_dir


def _digest(h: hashlib._Hash, t: torch.Tensor) -> None:
    h.update(str((tuple(t.shape), str(t.dtype))).encode())
    h.update(t.detach().contiguous().cpu().numpy().tobytes())


def feature_key(name: str, extractor: nn.Module, images: torch.Tensor) -> str:
    h = hashlib.sha256(name.encode())
    for k, v in extractor.state_dict().items():
        h.update(k.encode())
        _digest(h, v)
    _digest(h, images)
    return h.hexdigest()[:24]


def features_cache_dir() -> Path:
    return cache_dir() / "iciia_features"


@torch.no_grad()
def extract(extractor: nn.Module, images: torch.Tensor, batch: int = 500) -> torch.Tensor:
    extractor.eval()
    return torch.cat([extractor(images[i:i + batch]) for i in range(0, len(images), batch)])


def cached_features(name: str, extractor: nn.Module, images: torch.Tensor, log=None) -> torch.Tensor:
    """Features (N, D) of `images`, from the cache when this backbone already computed them."""
    path = features_cache_dir() / f"{feature_key(name, extractor, images)}.npy"
    if path.is_file():
        try:
            feats = torch.from_numpy(np.load(path))
            if feats.shape[0] == images.shape[0]:
                return feats
        except (OSError, ValueError):
            pass  # a damaged cache entry: recompute it
    if log:
        log(f"computing {name} features of {len(images):,} images (cached in {path.parent})")
    feats = extract(extractor, images)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.npy")
        np.save(tmp, feats.numpy())
        tmp.replace(path)
    except OSError:
        pass  # the cache is an optimisation only
    return feats


def stream_sets(feats: torch.Tensor, history: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One client's stream (n, D) -> tokens (n, B, D) and valid (n, B): row t holds image t, then
    its up to `history` predecessors, newest first; missing predecessors are zero and invalid."""
    n = feats.shape[0]
    idx = torch.arange(n).unsqueeze(1) - torch.arange(history + 1).unsqueeze(0)  # (n, B)
    valid = (idx >= 0).to(feats.dtype)
    return feats[idx.clamp(min=0)] * valid.unsqueeze(-1), valid


class ClientSets:
    """One epoch of ICIIA training batches (a `toolkit.train.Batchable` of batch size 1): item i is
    `sets` sets of B images of one client: tokens (1, S, B, D), valid (1, S, B), labels (1, S, B)."""

    def __init__(self, feats: torch.Tensor, labels: torch.Tensor, clients: list[torch.Tensor], tokens: int,
                 sets: int, partial: float, seed: int):
        g = torch.Generator().manual_seed(seed)
        self.feats, self.labels = feats, labels
        self.items: list[tuple[torch.Tensor, torch.Tensor]] = []
        for own in clients:
            perm = own[torch.randperm(len(own), generator=g)]
            n_sets = -(-len(perm) // tokens)
            pad = n_sets * tokens - len(perm)
            idx = torch.cat([perm, perm[:1].expand(pad)]).view(n_sets, tokens)
            valid = torch.ones(n_sets, tokens)
            if pad:
                valid[-1, tokens - pad:] = 0
            for s in range(n_sets):  # a partly filled history: keep the first k tokens only
                if float(torch.rand(1, generator=g)) < partial:
                    k = int(torch.randint(1, tokens, (1,), generator=g))
                    valid[s, k:] = 0
            for i in range(0, n_sets, sets):
                self.items.append((idx[i:i + sets], valid[i:i + sets]))

    def __len__(self) -> int:
        return len(self.items)

    def batch(self, index: torch.Tensor) -> tuple[torch.Tensor, ...]:
        idx, valid = self.items[int(index[0])]
        return self.feats[idx].unsqueeze(0), valid.unsqueeze(0), self.labels[idx].unsqueeze(0)


class SetLoss(nn.Module):
    """Cross-entropy over every valid token of a batch of sets (the `fit` objective)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, tokens: torch.Tensor, valid: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        tokens, valid, labels = tokens[0], valid[0], labels[0]
        logits = self.model(tokens * valid.unsqueeze(-1), valid)  # (S, B, C)
        ce = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), reduction="none")
        w = valid.flatten()
        return (ce * w).sum() / w.sum()


class RingBuffer:
    """The phone's history: the features of the client's last `slots` images (B - 1), written
    round-robin, with a 1/0 mask of the filled slots. This lives in the app, outside the exported
    program, which takes (slots, mask) as its `history` and `history_mask` inputs."""

    def __init__(self, slots: int, dim: int):
        self.slots = np.zeros((slots, dim), dtype=np.float32)
        self.seen = 0

    def mask(self) -> np.ndarray:
        n = len(self.slots)
        return (np.arange(n) < min(self.seen, n)).astype(np.float32)

    def push(self, feature: np.ndarray) -> None:
        self.slots[self.seen % len(self.slots)] = np.asarray(feature, dtype=np.float32).reshape(-1)
        self.seen += 1

    def inputs(self) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.from_numpy(self.slots.copy()), torch.from_numpy(self.mask())
