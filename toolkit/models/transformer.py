"""A small transformer encoder classifier over a sequence of feature vectors (B, T, D): post-LN
encoder layers of torch's nn.MultiheadAttention and a GELU MLP, mean over the sequence, Linear.

The block is written out (not nn.TransformerEncoderLayer) so eval mode never takes PyTorch's
fused "fast path", whose single kernel no mobile runtime has; what runs is what users' attention
code runs: linear projections, batched matmuls, softmax, LayerNorm, GELU.
"""
from __future__ import annotations

import torch
from torch import nn


class EncoderLayer(nn.Module):
    def __init__(self, dim: int, heads: int, hidden: int, dropout: float = 0.1):
        super().__init__()
        self.attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.norm1 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, dim))
        self.norm2 = nn.LayerNorm(dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, _ = self.attn(x, x, x, need_weights=False)
        h = self.norm1(x + self.dropout(a))
        return self.norm2(h + self.dropout(self.mlp(h)))


class TransformerClassifier(nn.Module):
    def __init__(self, num_classes: int = 10, dim: int = 32, heads: int = 4, hidden: int = 64, layers: int = 2):
        super().__init__()
        self.layers = nn.Sequential(*(EncoderLayer(dim, heads, hidden) for _ in range(layers)))
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.layers(x).mean(1))

    @property
    def last_layer(self) -> nn.Linear:
        return self.head
