"""An embedding-MLP click-through model (user and item embeddings -> MLP -> one logit).

The second model shape the exporters support (integer inputs, embedding gradients); CoDA's
recommender builds on it.
"""
from __future__ import annotations

import torch
from torch import nn


class EmbeddingMLP(nn.Module):
    def __init__(self, num_users: int, num_items: int, dim: int = 16, hidden: int = 32):
        super().__init__()
        self.user = nn.Embedding(num_users, dim)
        self.item = nn.Embedding(num_items, dim)
        self.mlp = nn.Sequential(nn.Linear(2 * dim, hidden), nn.ReLU(), nn.Linear(hidden, 1))

    def forward(self, user: torch.Tensor, item: torch.Tensor) -> torch.Tensor:
        """user, item: int64 (B,) -> click logits (B,)."""
        return self.mlp(torch.cat([self.user(user), self.item(item)], dim=-1)).squeeze(-1)

    @property
    def last_layer(self) -> nn.Linear:
        return self.mlp[-1]
