"""CoDA's two models, the sample keys used for matching, and AUC.

- `Recommender` (the cloud model, personalized on devices): user and item embeddings plus each
  side's constant features (looked up in frozen tables, so the phone feeds only ids) -> MLP ->
  one click logit. Inputs (user, item) int64 (B,), output (B,).
- `SampleClassifier` (trained on each phone, local = 1, retrieved = 0): sees only what a
  retrieved sample carries, (item, click): the item's cloud embedding and side features
  (frozen copies) and the click sign s = +1/-1, as cat(e, s * e, s) -> MLP -> logit. It never
  sees a user id: every local sample has the same one, so the id would separate the classes
  trivially and say nothing about which retrieved samples resemble this user's data.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from toolkit.methods.coda.config import MatchingConfig, ModelConfig

RECOMMENDER_INPUTS, CLASSIFIER_INPUTS, OUTPUTS = ["user", "item"], ["item", "click"], ["logit"]


class Recommender(nn.Module):
    def __init__(self, num_users: int, num_items: int, user_side: torch.Tensor, item_side: torch.Tensor,
                 dim: int = 16, hidden: list[int] | tuple[int, ...] = (64, 32)):
        super().__init__()
        self.user = nn.Embedding(num_users, dim)
        self.item = nn.Embedding(num_items, dim)
        nn.init.normal_(self.user.weight, std=0.05)
        nn.init.normal_(self.item.weight, std=0.05)
        self.user_side = nn.Embedding.from_pretrained(user_side.float().clone(), freeze=True)
        self.item_side = nn.Embedding.from_pretrained(item_side.float().clone(), freeze=True)
        layers: list[nn.Module] = []
        width = 2 * dim + user_side.shape[1] + item_side.shape[1]
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        self.tower = nn.Sequential(*layers)
        self.head = nn.Linear(width, 1)

    def features(self, user: torch.Tensor, item: torch.Tensor) -> torch.Tensor:
        """The last hidden layer (the sample's representation used for matching)."""
        x = torch.cat([self.user(user), self.item(item), self.user_side(user), self.item_side(item)], dim=-1)
        return self.tower(x)

    def forward(self, user: torch.Tensor, item: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(user, item)).squeeze(-1)

    @property
    def last_layer(self) -> nn.Linear:
        return self.head


# parameters that never train anywhere (constant feature tables)
RECOMMENDER_FROZEN = ["user_side.", "item_side."]
RECOMMENDER_TRAINABLE = ["user.", "item.", "tower.", "head."]


def build_recommender(cfg: ModelConfig, num_users: int, num_items: int, user_side: np.ndarray,
                      item_side: np.ndarray, seed: int) -> Recommender:
    torch.manual_seed(seed)
    return Recommender(num_users, num_items, torch.from_numpy(user_side), torch.from_numpy(item_side),
                       cfg.dim, list(cfg.hidden))


class SampleClassifier(nn.Module):
    def __init__(self, item_embedding: torch.Tensor, item_side: torch.Tensor, hidden: int = 16):
        super().__init__()
        self.item = nn.Embedding.from_pretrained(item_embedding.detach().float().clone(), freeze=True)
        self.item_side = nn.Embedding.from_pretrained(item_side.detach().float().clone(), freeze=True)
        width = item_embedding.shape[1] + item_side.shape[1]
        self.head = nn.Sequential(nn.Linear(2 * width + 1, hidden), nn.ReLU(), nn.Linear(hidden, 1))

    def forward(self, item: torch.Tensor, click: torch.Tensor) -> torch.Tensor:
        e = torch.cat([self.item(item), self.item_side(item)], dim=-1)
        s = (click * 2.0 - 1.0).unsqueeze(-1)
        return self.head(torch.cat([e, e * s, s], dim=-1)).squeeze(-1)

    @property
    def last_layer(self) -> nn.Linear:
        return self.head[-1]


CLASSIFIER_TRAINABLE, CLASSIFIER_FROZEN = ["head."], ["item.", "item_side."]


def build_classifier(recommender: Recommender, hidden: int, seed: int) -> SampleClassifier:
    """The classifier every device starts from (sent down with the model): the cloud's item
    embedding and side features, frozen, and a seeded head."""
    torch.manual_seed(seed)
    return SampleClassifier(recommender.item.weight, recommender.item_side.weight, hidden).eval()


class BCE(nn.Module):
    """The cloud objective for toolkit.train.fit: BCE-with-logits of the recommender."""

    def __init__(self, model: Recommender):
        super().__init__()
        self.model = model

    def forward(self, user: torch.Tensor, item: torch.Tensor, click: torch.Tensor) -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(self.model(user, item), click)


@torch.no_grad()
def predict(model: nn.Module, a: np.ndarray | torch.Tensor, b: np.ndarray | torch.Tensor,
            batch: int = 8192) -> np.ndarray:
    """Sigmoid outputs of a two-input model (recommender: user, item; classifier: item, click)."""
    model.eval()
    a, b = torch.as_tensor(np.asarray(a)), torch.as_tensor(np.asarray(b))
    return np.concatenate([torch.sigmoid(model(a[i:i + batch], b[i:i + batch])).numpy()
                           for i in range(0, len(a), batch)]) if len(a) else np.zeros(0, np.float32)


class KeyEncoder(nn.Module):
    """What a device computes its request from: (user, item, click) -> the sample's unit-norm
    matching key (config `matching.embedding`, `label_weight`), from the downloaded cloud
    recommender's fixed weights. The pool's keys on the cloud come from the same module, so the
    device's keys and the pool's live in one space. Inputs user int64, item int64, click float32
    (B,); output key float32 (B, key_dim).

    `portable`: normalize as x / sqrt(sum(x^2)) (ops every exporter translates; LiteRT has no
    vector norm) instead of F.normalize; the two differ by at most 1 float32 ulp. The exported
    program is portable; the host keeps F.normalize, so earlier runs' keys are reproduced bit
    for bit."""

    def __init__(self, recommender: Recommender, cfg: MatchingConfig, portable: bool = False):
        super().__init__()
        self.rec = recommender
        self.embedding, self.label_weight, self.portable = cfg.embedding, float(cfg.label_weight), portable

    def _unit(self, h: torch.Tensor) -> torch.Tensor:
        if self.portable:
            return h / torch.sqrt((h * h).sum(-1, keepdim=True)).clamp_min(1e-12)
        return F.normalize(h, dim=-1)

    def forward(self, user: torch.Tensor, item: torch.Tensor, click: torch.Tensor) -> torch.Tensor:
        m = self.rec
        if self.embedding == "hidden":
            h = m.features(user, item)
        elif self.embedding == "user":
            h = torch.cat([m.user(user), m.user_side(user)], dim=-1)
        else:
            h = torch.cat([m.item(item), m.item_side(item)], dim=-1)
        h = self._unit(h)
        if self.label_weight > 0:
            h = self._unit(torch.cat([h, (self.label_weight * (2 * click.float() - 1)).unsqueeze(-1)], dim=-1))
        return h


KEY_INPUTS, KEY_OUTPUTS = ["user", "item", "click"], ["key"]


@torch.no_grad()
def sample_keys(model: Recommender, user: torch.Tensor, item: torch.Tensor, click: torch.Tensor,
                cfg: MatchingConfig, batch: int = 16384) -> np.ndarray:
    """Unit-norm float32 keys of samples (matching.py searches them by inner product): the
    KeyEncoder in PyTorch."""
    model.eval()
    enc = KeyEncoder(model, cfg).eval()
    out = [enc(user[i:i + batch], item[i:i + batch], click[i:i + batch]).numpy().astype(np.float32)
           for i in range(0, len(user), batch)]
    return np.concatenate(out) if out else np.zeros((0, key_dim(model, cfg)), np.float32)


def key_dim(model: Recommender, cfg: MatchingConfig) -> int:
    base = {"hidden": model.head.in_features, "user": model.user.embedding_dim + model.user_side.embedding_dim,
            "item": model.item.embedding_dim + model.item_side.embedding_dim}[cfg.embedding]
    return base + (1 if cfg.label_weight > 0 else 0)


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """ROC AUC (Mann-Whitney, ties counted half); nan when one class is missing."""
    labels = np.asarray(labels) > 0.5
    scores = np.asarray(scores, dtype=np.float64)
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    _, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    ranks = (np.cumsum(counts) - (counts - 1) / 2.0)[inverse]  # 1-based, averaged over ties
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))
